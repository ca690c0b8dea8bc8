#!/usr/bin/env bash
# Training activation memory, tarflow against PyTorch eager, at the same shapes and batch:
#   tarflow: `tarflow bench --device D --precision P --json`, the training row's
#            memory.activation_bytes (device bytes live once the loss is computed, minus
#            those before the forward) and memory.peak_bytes;
#   PyTorch: `scripts/gpu-check/torch_tarflow.py --activations` (the bytes of the storages
#            autograd saves in one training forward, each once, parameters and batch apart).
# Prints one Markdown table (shape, batch, precision, both counts, their ratio).
#
# Usage: scripts/activation-memory.sh [--device ptx-sim|cuda[:N]] [--torch-device cpu|cuda]
#                                     [--batch N] [--shapes tiny|tiny-k4|h64|both|imagenet64]
#                                     [--recompute none|mlp|layer|all]
#   --device        where tarflow runs the step (default ptx-sim: the PTX interpreter, slow
#                   but exact in bytes; the counts do not depend on the device)
#   --torch-device  where PyTorch runs it (default cpu; autocast bf16 works there)
#   --batch         images per step (default 8)
#   --shapes        tiny: 1x28x28 p4 C64 T2 K1 (49 tokens, 1 head of 64);
#                   h64:  3x16x16 p2 C128 T2 K1 (64 tokens, 2 heads of 64, an ImageNet64-like
#                         layout at a size the interpreter finishes in minutes);
#                   tiny-k4: tiny with 4 layers per block (the per-layer share of the bytes
#                         nearer a deep model's);
#                   both (the default: tiny and h64);
#                   imagenet64: 3x64x64 p2 C768 T8 K8 (for a GPU: far too slow on ptx-sim)
#   --recompute     what tarflow's layers recompute in the backward (`bench --recompute`);
#                   all runs each of none, mlp and layer against the same PyTorch count
#                   (default none)
# Environment: TARFLOW (the binary; default target/release/tarflow, built if missing; with
# --device cuda a `--features cuda` build such as gpu-check-bundle/bin/tarflow), PYTHON
# (default python3) and PYTHONPATH (where torch is, e.g. /work/pytorch).
# Both models are unconditional (tarflow gets --classes 0, as the PyTorch peer has no labels).
set -euo pipefail
cd "$(dirname "$0")/.."

device=ptx-sim torch_device=cpu batch=8 shapes=both recompute=none
while [ $# -gt 0 ]; do
    case "$1" in
        --device) device=$2; shift 2 ;;
        --torch-device) torch_device=$2; shift 2 ;;
        --batch) batch=$2; shift 2 ;;
        --shapes) shapes=$2; shift 2 ;;
        --recompute) recompute=$2; shift 2 ;;
        -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
        *) echo "activation-memory.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$shapes" in
    tiny) names=(tiny) ;;
    tiny-k4) names=(tiny-k4) ;;
    h64) names=(h64) ;;
    both) names=(tiny h64) ;;
    imagenet64) names=(imagenet64) ;;
    *) echo "activation-memory.sh: --shapes $shapes: expected tiny, tiny-k4, h64, both or imagenet64" >&2; exit 2 ;;
esac
case "$recompute" in
    none | mlp | layer) recomputes=("$recompute") ;;
    all) recomputes=(none mlp layer) ;;
    *) echo "activation-memory.sh: --recompute $recompute: expected none, mlp, layer or all" >&2; exit 2 ;;
esac

TARFLOW=${TARFLOW:-target/release/tarflow}
PYTHON=${PYTHON:-python3}
if [ ! -x "$TARFLOW" ]; then
    cargo build --release --quiet
fi

# name -> the shape flags both programs take (tarflow's preset tiny underneath).
shape_flags() {
    case "$1" in
        tiny) echo "--image-size 28 --patch-size 4 --width 64 --blocks 2 --layers 1" ;;
        tiny-k4) echo "--image-size 28 --patch-size 4 --width 64 --blocks 2 --layers 4" ;;
        h64) echo "--image-size 16 --patch-size 2 --width 128 --blocks 2 --layers 1" ;;
        imagenet64) echo "--image-size 64 --patch-size 2 --width 768 --blocks 8 --layers 8" ;;
    esac
}
channels() {
    case "$1" in
        tiny | tiny-k4) echo 1 ;;
        h64 | imagenet64) echo 3 ;;
    esac
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "date: $(date -u '+%Y-%m-%d %H:%M UTC'); tarflow on $device, PyTorch on $torch_device, batch $batch"
echo
echo "| shape | precision | recompute | tarflow activations | tarflow peak | PyTorch saved for backward | PyTorch / tarflow |"
echo "|---|---|---|---:|---:|---:|---:|"
for name in "${names[@]}"; do
    # shellcheck disable=SC2046 # the flags are words
    set -- $(shape_flags "$name")
    for precision in f32 bf16; do
        theirs=$tmp/torch-$name-$precision.json
        "$PYTHON" scripts/gpu-check/torch_tarflow.py --preset tiny "$@" --device "$torch_device" \
            --precision "$precision" --batch "$batch" --activations --json "$theirs" > /dev/null
        for r in "${recomputes[@]}"; do
        ours=$tmp/ours-$name-$precision-$r.json
        "$TARFLOW" bench --preset tiny "$@" --channels "$(channels "$name")" --classes 0 \
            --device "$device" --precision "$precision" --recompute "$r" --batch "$batch" \
            --sample-batch 1 --repeats 1 --json > "$ours"
        "$PYTHON" - "$ours" "$theirs" "$precision" "$r" <<'EOF'
import json, sys
ours, theirs = (json.load(open(p)) for p in sys.argv[1:3])
c = ours["config"]
m = next(r["memory"] for r in ours["results"] if "memory" in r)
t = theirs["activation_bytes"]
mib = lambda b: f"{b / 2**20:.2f} MiB"
shape = f"{c['channels']}x{c['image_size']}x{c['image_size']} p{c['patch_size']} C{c['width']} T{c['blocks']} K{c['layers_per_block']}"
print(f"| {shape} | {sys.argv[3]} | {sys.argv[4]} | {mib(m['activation_bytes'])} | {mib(m['peak_bytes'])} | {mib(t)} | {t / m['activation_bytes']:.2f}x |")
EOF
        done
    done
done
