#!/usr/bin/env bash
# The GPU check: on a machine with an NVIDIA GPU (PyTorch for the ceilings; no Rust needed),
# from the repository root, with the bundle that scripts/gpu-check/prepare.sh built in
# gpu-check-bundle/:
#
#   OUT=/path/for/results scripts/gpu-check/run.sh [--dry-run]
#
# Steps, each under `timeout` and within one overall budget (GPU_CHECK_BUDGET_S, default
# 450 s, so that the whole call stays under 8 minutes):
#   1. the GPU's facts (nvidia-smi, nvcc, the driver);
#   2. every bundled test binary with --test-threads=1 (gpu_kernels whole: each test runs on
#      the interpreter and on cuda:0; elsewhere the tests named as CUDA variants);
#   3. `tarflow bench --kernels --device cuda` as a table and as JSON;
#   4. PyTorch at the same shapes (scripts/gpu-check/torch_ceilings.py) for the ceilings;
#   5. end to end: `tarflow train --preset imagenet64 --device cuda` (bf16) on a synthetic
#      pack, and the MNIST run cut to 500 steps, its checkpoint scored on cuda and the CPU;
#   6. the whole model at ImageNet64's shape (p2 C768 T8 K8), `tarflow bench --device cuda`
#      (its sampling row twice: launch by launch, then in launch batches, one CUDA graph per
#      position; the bf16 step also with TARFLOW_WGMMA=1, the warpgroup GEMM tiles, and with
#      TARFLOW_WGMMA=tma, the large products and the attention forward and backward on
#      the warp-specialized TMA kernels)
#      and the PyTorch eager peer (scripts/gpu-check/torch_tarflow.py: bf16 autocast, flash
#      SDPA, KV-cached sampling) at the same batch (MODEL_BATCH, default 16; sampling
#      SAMPLE_BATCH, default 4), then the peer
#      at batch 64 as the issue's reference step, and the bytes its bf16 training forward
#      saves for the backward (--activations) at MODEL_BATCH (`tarflow bench --device cuda`
#      reports its own activation and peak bytes in its table; it runs again in bf16, plain
#      and with --recompute mlp, or as RECOMPUTES says);
#   7. compute-sanitizer over the kernel tests, with the time left.
# GPU_CHECK_STEPS, a list of groups (facts tests kernels ceilings e2e-in64 e2e-mnist model-f32
# model-bf16 torch-model torch-activations sanitizer), runs only those: a second, shorter call
# after a fix. A step that fails is recorded and the next one runs. The report, $OUT/gpu-report.md, says
# what ran and what failed, with the tables ready for docs/performance.md; raw output goes
# to $OUT/logs/. Exit status 0 when every step passed, 1 otherwise (the report is written
# either way). --dry-run checks the bundle against its manifest and writes the report of
# what would run.
set -uo pipefail

cd "$(dirname "$0")/../.." || exit 1
BUNDLE=${BUNDLE:-gpu-check-bundle}
OUT=${OUT:-gpu-check-out}
BUDGET_S=${GPU_CHECK_BUDGET_S:-450}
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
# Raw output; GPU_CHECK_LOGS puts it elsewhere (the device tool brings back only a few files
# from $OUT: the folder is also packed into $OUT/logs.tar.gz at the end).
LOGS=${GPU_CHECK_LOGS:-$OUT/logs}
mkdir -p "$OUT" "$LOGS"
REPORT=$OUT/gpu-report.md
STEPS=$LOGS/steps.tsv
: >"$STEPS"
T0=$SECONDS
FAILED=0

# record NAME STATUS SECONDS LOG NOTE
record() {
    printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" >>"$STEPS"
    echo "[$(date -u +%H:%M:%S)] $1: $2 ($3 s) $5" >&2
    case $2 in ok | dry-run) ;; *) FAILED=1 ;; esac
}

# Whether the group GROUP (set before each part below) is to run.
GROUP=
wanted() {
    [ -z "${GPU_CHECK_STEPS:-}" ] || [[ " $GPU_CHECK_STEPS " == *" $GROUP "* ]]
}

# step NAME LIMIT_S LOG COMMAND...: runs COMMAND under timeout (capped by the time left),
# stdout and stderr to $LOGS/LOG; returns the command's status (1, unrecorded, when GROUP is
# not wanted).
step() {
    local name=$1 limit=$2 log=$3
    shift 3
    wanted || return 1
    if [ "$DRY" = 1 ]; then
        echo "$*" >"$LOGS/$log"
        record "$name" dry-run 0 "$log" "would run: $*"
        return 0
    fi
    local left=$((BUDGET_S - (SECONDS - T0)))
    if [ "$left" -lt 15 ]; then
        record "$name" SKIPPED 0 "$log" "the ${BUDGET_S} s budget is spent"
        return 1
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    local t=$SECONDS rc
    timeout --kill-after=10 "$limit" "$@" >"$LOGS/$log" 2>&1
    rc=$?
    local dt=$((SECONDS - t)) status=ok note=""
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        status=TIMEOUT note="stopped after $limit s"
    elif [ "$rc" -ne 0 ]; then
        status=FAILED note="exit $rc: $(grep -v '^\s*$' "$LOGS/$log" | tail -n 2 | tr '\n\t' '  ' | cut -c1-300)"
    fi
    record "$name" "$status" "$dt" "$log" "$note"
    return "$rc"
}

# 1. The machine.
facts() {
    echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "host: $(uname -srm)"
    nvidia-smi --query-gpu=index,name,driver_version,memory.total,clocks.max.sm,clocks.max.memory,power.limit --format=csv
    nvidia-smi || return 1
    command -v nvcc >/dev/null && nvcc --version | tail -n 2
    return 0
}
export -f facts
GROUP=facts
step facts 30 facts.txt bash -c facts

# 2. The tests.
# Every file of the manifest, with its size and hash (a partial copy fails here, not later).
check_bundle() {
    local m=$BUNDLE/MANIFEST.md n=0 path bytes sha f
    if [ ! -f "$m" ]; then
        echo "no $m: run scripts/gpu-check/prepare.sh on the build machine and bring $BUNDLE"
        return 1
    fi
    while IFS='|' read -r _ path bytes sha _; do
        path=${path// /} bytes=${bytes// /} sha=${sha// /}
        [[ "$bytes" =~ ^[0-9]+$ ]] || continue
        f=$BUNDLE/$path
        if [ ! -f "$f" ]; then
            echo "$f is missing"
            return 1
        fi
        if [ "$(stat -c %s "$f")" != "$bytes" ] || [ "$(sha256sum "$f" | cut -c1-16)" != "$sha" ]; then
            echo "$f differs from $m"
            return 1
        fi
        n=$((n + 1))
    done <"$m"
    if [ "$n" -eq 0 ]; then
        echo "$m lists no file"
        return 1
    fi
    echo "$n files match $m"
}
t=$SECONDS
if [ -f "$BUNDLE/payload.tar.xz" ] && [ ! -d "$BUNDLE/tests" ]; then
    xz -dc "$BUNDLE/payload.tar.xz" | tar -C "$BUNDLE" -xf - >"$LOGS/unpack.txt" 2>&1 ||
        record unpack FAILED 0 unpack.txt "$(tail -n 1 "$LOGS/unpack.txt")"
fi
if check_bundle >"$LOGS/bundle.txt" 2>&1; then
    record bundle ok $((SECONDS - t)) bundle.txt "$(cat "$LOGS/bundle.txt")"
else
    record bundle FAILED $((SECONDS - t)) bundle.txt "$(tail -n 1 "$LOGS/bundle.txt")"
fi
GROUP=tests
for list in "$BUNDLE"/tests/*.txt; do
    [ -e "$list" ] || continue
    label=$(basename "$list" .txt)
    exe=$BUNDLE/tests/$label
    [ -x "$exe" ] || chmod +x "$exe" 2>/dev/null
    if [ "$(head -n 1 "$list")" = "*" ]; then
        filter=()
    else
        mapfile -t names <"$list"
        filter=(--exact "${names[@]}")
    fi
    # The kernel tests' interpreter halves ran in CI: here the GPU halves alone.
    step "test $label" 150 "test-$label.txt" env TARFLOW_TEST_GPU_ONLY=1 "$exe" \
        --test-threads=1 --nocapture "${filter[@]}"
    # A test that could not open the GPU still passes (on the interpreter, or having done
    # nothing): say so. The kernel tests print `cuda: skipped: ...`, the `_on_cuda` twins
    # `cuda:0 skipped: ...` (libtest prints a test's output on the line of its name).
    if grep -Eq 'cuda(:[0-9]+)?:? skipped' "$LOGS/test-$label.txt" 2>/dev/null; then
        record "cuda in $label" FAILED 0 "test-$label.txt" "$(grep -m1 -Eo 'cuda(:[0-9]+)?:? skipped.*' "$LOGS/test-$label.txt" | cut -c1-300)"
    fi
done

# 3. The kernel table.
TARFLOW=$BUNDLE/bin/tarflow
[ -x "$TARFLOW" ] || chmod +x "$TARFLOW" 2>/dev/null
GROUP=kernels
if step "bench --kernels --device cuda" 180 bench-kernels.txt "$TARFLOW" bench --kernels --device cuda; then
    step "bench --kernels --device cuda --json" 180 bench-kernels.json "$TARFLOW" bench --kernels --device cuda --json
elif wanted; then
    record "bench --kernels --device cuda --json" SKIPPED 0 bench-kernels.json "the table failed above"
fi

# 4. PyTorch on the same card.
GROUP=ceilings
step "PyTorch ceilings" 150 torch-ceilings.txt python3 scripts/gpu-check/torch_ceilings.py --json "$LOGS/torch-ceilings.json"

# 5. End to end: the command-line program trains, evaluates and samples on the GPU. ImageNet64's
# preset in bf16 on a synthetic pack (1,280 random images of 3x64x64: the pipeline, not the
# data set), 10 steps at batch 64 recomputing each layer's MLP half (without it, about 115 GiB
# of activations: 4x the 29.5 GB measured at batch 16), then its evaluation and a grid of 4
# samples; then the default MNIST run in f32, cut to 500 steps, whose bits/dim and grid compare
# with the same command on the CPU.
E2E=${GPU_CHECK_WORK:-/tmp/gpu-check-work}
rm -rf "$E2E"
mkdir -p "$E2E"
printf 'samples_per_class = 1\neval_images = 64\n' >"$E2E/in64.toml"
GROUP=e2e-in64
if step "pack --synthetic 1280 --preset imagenet64" 60 e2e-pack.txt "$TARFLOW" pack \
    --synthetic 1280 --preset imagenet64 --out "$E2E/in64.pack"; then
    # No --recompute: the trainer picks the least that fits the card (mlp at batch 64 on an
    # H200) and says so in the log.
    step "train --preset imagenet64 --device cuda --precision bf16 (10 steps)" 150 e2e-train-in64.txt \
        "$TARFLOW" train --preset imagenet64 --config "$E2E/in64.toml" --data "$E2E/in64.pack" \
        --device cuda --precision bf16 --steps 10 --warmup-steps 2 --batch-size 64 \
        --eval-every 10 --sample-every 10 --checkpoint-every 10 --out "$E2E/in64" --quiet
elif wanted; then
    record "train --preset imagenet64 --device cuda" SKIPPED 0 e2e-train-in64.txt "no pack"
fi
GROUP=e2e-mnist
step "train --device cuda (MNIST, 500 steps)" 120 e2e-train-mnist.txt "$TARFLOW" train \
    --device cuda --steps 500 --eval-every 500 --sample-every 500 --checkpoint-every 500 \
    --out "$E2E/mnist" --quiet
# The trained checkpoint scored on both devices with the same draws: the forward on the GPU
# against the CPU's, on 500 test images.
ckpt=$(ls "$E2E"/mnist/model-*.safetensors 2>/dev/null | tail -n 1)
if [ -n "$ckpt" ]; then
    for dev in cuda cpu; do
        step "eval --device $dev (the MNIST checkpoint)" 60 "e2e-eval-mnist-$dev.txt" "$TARFLOW" eval \
            --checkpoint "$ckpt" --limit 500 --draws 1 --device "$dev"
    done
fi
for run in in64 mnist; do
    for f in "$E2E/$run"/samples-*.png "$E2E/$run/metrics.jsonl"; do
        [ -f "$f" ] && cp "$f" "$LOGS/e2e-$run-$(basename "$f")"
    done
done

# 6. The whole model, ours and PyTorch's, at ImageNet64's shape.
# Sampling (SAMPLE_BATCH images, default 4) is the slow row: ours prints each row as it is
# measured, so a stopped run keeps the training step's.
MODEL_BATCH=${MODEL_BATCH:-16}
SAMPLE_BATCH=${SAMPLE_BATCH:-4}
GROUP=model-f32
# Each bench also runs every workload once more under a launch profile (--profile-kernels):
# per kernel its launches and device time, and the run's wall time against its kernels'.
step "bench --device cuda (ImageNet64 model)" 150 bench-model.txt "$TARFLOW" bench --device cuda \
    --preset imagenet64 --batch "$MODEL_BATCH" --sample-batch "$SAMPLE_BATCH" --repeats 2 \
    --profile-kernels
# The training step in mixed precision, plain and recomputing each layer's MLP half (what
# the issue's time and memory targets compare with PyTorch's bf16 autocast step).
GROUP=model-bf16
for r in ${RECOMPUTES:-none mlp}; do
    step "bench --device cuda --precision bf16 --recompute $r" 90 "bench-model-bf16-$r.txt" \
        "$TARFLOW" bench --device cuda --preset imagenet64 --batch "$MODEL_BATCH" \
        --sample-batch 1 --repeats 2 --precision bf16 --recompute "$r" --profile-kernels
done
# The same step with the bf16 products on Hopper's warpgroup tiles (off by default until this
# check has compared them on hardware; the wgmma tests above ran first).
step "bench --device cuda --precision bf16 --recompute none, TARFLOW_WGMMA=1" 90 \
    bench-model-bf16-wgmma.txt env TARFLOW_WGMMA=1 "$TARFLOW" bench --device cuda \
    --preset imagenet64 --batch "$MODEL_BATCH" --sample-batch 1 --repeats 2 --precision bf16 \
    --recompute none --profile-kernels
step "bench --device cuda --precision bf16 --recompute none, TARFLOW_WGMMA=tma" 90 \
    bench-model-bf16-tma.txt env TARFLOW_WGMMA=tma "$TARFLOW" bench --device cuda \
    --preset imagenet64 --batch "$MODEL_BATCH" --sample-batch 1 --repeats 2 --precision bf16 \
    --recompute none --profile-kernels
GROUP=torch-model
step "PyTorch TarFlow (ImageNet64 model)" 120 torch-tarflow.txt python3 scripts/gpu-check/torch_tarflow.py \
    --batch "$MODEL_BATCH" --sample-batch "$SAMPLE_BATCH" --repeats 3 --json "$LOGS/torch-tarflow.json"
step "PyTorch TarFlow train step, batch 64" 60 torch-tarflow-64.txt python3 scripts/gpu-check/torch_tarflow.py \
    --batch 64 --sample-batch 0 --repeats 3 --json "$LOGS/torch-tarflow-64.json"
GROUP=torch-activations
step "PyTorch TarFlow activations, batch $MODEL_BATCH" 60 torch-activations.txt python3 scripts/gpu-check/torch_tarflow.py \
    --batch "$MODEL_BATCH" --activations --json "$LOGS/torch-activations.json"

# 7. compute-sanitizer (where the machine has it) over the kernel tests, with what time is left:
# memcheck over all of them, racecheck over the attention kernels (shared-memory tiles).
GROUP=sanitizer
SANITIZER=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)
if [ -n "$SANITIZER" ]; then
    step "compute-sanitizer memcheck: gpu_kernels" 120 sanitizer-memcheck.txt "$SANITIZER" \
        --tool memcheck --error-exitcode 3 "$BUNDLE/tests/gpu_kernels" --test-threads=1
    step "compute-sanitizer racecheck: gpu_kernels attention" 120 sanitizer-racecheck.txt "$SANITIZER" \
        --tool racecheck --error-exitcode 3 "$BUNDLE/tests/gpu_kernels" --test-threads=1 attention
elif wanted; then
    record compute-sanitizer SKIPPED 0 sanitizer-memcheck.txt "not installed here"
fi

# The report.
{
    echo "# GPU check, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    [ "$DRY" = 1 ] && echo "Dry run: nothing below was executed." && echo
    echo "Bundle: $(grep -m1 '^- commit' "$BUNDLE/MANIFEST.md" 2>/dev/null | sed 's/^- //' || echo 'missing')"
    echo "$(grep -m1 '^- built' "$BUNDLE/MANIFEST.md" 2>/dev/null | sed 's/^- //');" \
        "$(grep -m1 '^- needs' "$BUNDLE/MANIFEST.md" 2>/dev/null | sed 's/^- //'), this machine has" \
        "$(ldd --version 2>/dev/null | head -n 1 | grep -o '[0-9.]*$')"
    echo
    echo "## Steps"
    echo
    echo "| step | status | s | log | note |"
    echo "|---|---|---:|---|---|"
    while IFS=$'\t' read -r name status secs log note; do
        echo "| $name | $status | $secs | logs/$log | ${note//|/\\|} |"
    done <"$STEPS"
    echo
    echo "Total: $((SECONDS - T0)) s."
    echo
    echo "## The GPU"
    echo
    echo '```text'
    sed -n '1,6p' "$LOGS/facts.txt" 2>/dev/null
    echo '```'
    echo
    echo "## Tests"
    echo
    echo "| binary | result |"
    echo "|---|---|"
    for f in "$LOGS"/test-*.txt; do
        [ -e "$f" ] || continue
        result=$(grep -h '^test result:' "$f" | tail -n 1)
        # The names libtest lists, indented, under its last "failures:" heading.
        failed=$(awk '/^failures:$/ { f = 1; n = 0; next } f && /^    [^ ]/ { names[n++] = $1 }
            /^test result:/ { for (i = 0; i < n && i < 20; i++) printf "`%s` ", names[i]; n = 0 }' "$f")
        echo "| $(basename "$f" .txt | sed 's/^test-//') | ${result:-no result (see the log)}${failed:+; failed: $failed} |"
    done
    echo
    echo "## End to end on the GPU"
    echo
    for log in e2e-train-in64 e2e-train-mnist e2e-eval-mnist-cuda e2e-eval-mnist-cpu; do
        echo "\`$log\`, its last lines:"
        echo
        echo '```text'
        tail -n 15 "$LOGS/$log.txt" 2>/dev/null
        echo '```'
        echo
    done
    echo "## \`tarflow bench --kernels --device cuda\`"
    echo
    echo '```text'
    cat "$LOGS/bench-kernels.txt" 2>/dev/null
    echo '```'
    echo
    echo "## PyTorch on the same GPU"
    echo
    cat "$LOGS/torch-ceilings.txt" 2>/dev/null
    echo
    echo "## The whole model at ImageNet64's shape: \`tarflow bench --device cuda\`, batch $MODEL_BATCH"
    echo
    echo "Each table is followed by the launch profile of one more run of each workload (--profile-kernels)."
    echo
    echo '```text'
    cat "$LOGS/bench-model.txt" 2>/dev/null
    echo '```'
    echo
    echo "The training step in bf16, recomputing nothing, then each layer's MLP half:"
    echo
    echo '```text'
    cat "$LOGS/bench-model-bf16-none.txt" "$LOGS/bench-model-bf16-mlp.txt" 2>/dev/null
    echo '```'
    echo
    echo "The bf16 step recomputing nothing with the warpgroup (wgmma) tiles (TARFLOW_WGMMA=1):"
    echo
    echo '```text'
    cat "$LOGS/bench-model-bf16-wgmma.txt" 2>/dev/null
    echo '```'
    echo
    echo "The same with the large products, the split weight gradients and the attention forward and backward on the TMA kernels (TARFLOW_WGMMA=tma):"
    echo
    echo '```text'
    cat "$LOGS/bench-model-bf16-tma.txt" 2>/dev/null
    echo '```'
    echo
    echo "## The PyTorch eager peer (scripts/gpu-check/torch_tarflow.py), batch $MODEL_BATCH, then 64"
    echo
    cat "$LOGS/torch-tarflow.txt" 2>/dev/null
    echo
    cat "$LOGS/torch-tarflow-64.txt" 2>/dev/null
    echo
    echo "What its bf16 training forward saves for the backward, batch $MODEL_BATCH:"
    echo
    echo '```text'
    cat "$LOGS/torch-activations.txt" 2>/dev/null
    echo '```'
    for f in "$LOGS"/sanitizer-*.txt; do
        [ -e "$f" ] || continue
        echo
        echo "## $(basename "$f" .txt), its last lines"
        echo
        echo '```text'
        grep -v '^test .* ok$' "$f" | tail -n 25
        echo '```'
    done
} >"$REPORT"
tar -czf "$OUT/logs.tar.gz" -C "$LOGS" . 2>/dev/null
echo "report: $REPORT" >&2
exit "$FAILED"
