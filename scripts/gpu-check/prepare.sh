#!/usr/bin/env bash
# Builds, on a machine with Rust (no GPU needed), everything the GPU check runs, and collects
# it into one folder that travels to the GPU machine:
#
#   gpu-check-bundle/
#     bin/tarflow            the CLI with the `cuda` feature (stripped)
#     tests/<label>          each test binary that has CUDA tests (stripped); the label is
#                            the test target's name, `lib-<crate>` for the library's unit tests
#     tests/<label>.txt      the CUDA tests of that binary, one per line ("*" = all of them)
#     MANIFEST.md            commit, toolchain, sizes and sha256 of every file
#     payload.tar.xz         bin/ and tests/ packed (run.sh unpacks it; the stripped binaries
#                            are about 76 MiB, packed about 16)
#
# A test binary is taken whole when it is gpu_kernels (every test there runs on each
# device that opens, cuda included); from any other binary, the tests named as CUDA
# variants: a `::` segment of the name is `cuda` or ends in `_cuda`. Binaries without
# such a test are left out. The bundle, packed, must stay under LIMIT_MIB (default 60 MiB,
# so that it fits the 64 MiB a device call carries).
#
# Usage, from the repository root:  scripts/gpu-check/prepare.sh
set -euo pipefail

cd "$(git rev-parse --show-toplevel)"
BUNDLE=${BUNDLE:-gpu-check-bundle}
LIMIT_MIB=${LIMIT_MIB:-60}
CUDA_TEST='(^|::)cuda(::|$)|_cuda(::|$)'
WHOLE_TARGETS=' gpu_kernels '

rm -rf "$BUNDLE"
mkdir -p "$BUNDLE/bin" "$BUNDLE/tests"

echo "== cargo build --release --features cuda (the tarflow binary)" >&2
cargo build --release --features cuda --bin tarflow >&2
cp target/release/tarflow "$BUNDLE/bin/tarflow"

echo "== cargo test --release --features cuda --no-run" >&2
messages=$(mktemp)
trap 'rm -f "$messages"' EXIT
cargo test --release --features cuda --no-run --message-format=json >"$messages"

# "target-name kind path" of every test executable the build produced.
python3 - "$messages" >"$BUNDLE/.executables" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["target"]["name"], m["target"]["kind"][0], m["executable"])
PY

taken=0
while read -r name kind exe; do
    # A lib and a bin target can share a name: tell their unit-test binaries apart.
    label=$name
    [ "$kind" = test ] || label="$kind-$name"
    if [[ "$WHOLE_TARGETS" == *" $name "* ]]; then
        echo "*" >"$BUNDLE/tests/$label.txt"
    else
        tests=$("$exe" --list --format terse 2>/dev/null | sed -n 's/: test$//p' | grep -E "$CUDA_TEST" || true)
        if [ -z "$tests" ]; then
            continue
        fi
        printf '%s\n' "$tests" >"$BUNDLE/tests/$label.txt"
    fi
    cp "$exe" "$BUNDLE/tests/$label"
    taken=$((taken + 1))
    if [ "$(head -n 1 "$BUNDLE/tests/$label.txt")" = "*" ]; then
        echo "   $label: every test" >&2
    else
        echo "   $label: $(grep -c . "$BUNDLE/tests/$label.txt") CUDA test(s)" >&2
    fi
done <"$BUNDLE/.executables"
rm -f "$BUNDLE/.executables"
if [ "$taken" -eq 0 ]; then
    echo "prepare: no test binary with CUDA tests was built" >&2
    exit 1
fi

for f in "$BUNDLE"/bin/* "$BUNDLE"/tests/*; do
    [[ "$f" == *.txt ]] || strip --strip-all "$f"
done

{
    echo "# GPU check bundle"
    echo
    echo "- commit: $(git rev-parse HEAD)$(git diff --quiet HEAD -- . ':!gpu-check-bundle' || echo ' (with uncommitted changes)')"
    echo "- built: $(date -u '+%Y-%m-%d %H:%M UTC') on $(uname -m), $(rustc --version)"
    echo "- build: \`cargo build --release --features cuda\`, \`cargo test --release --features cuda --no-run\`, stripped"
    echo "- needs: glibc >= $(for f in "$BUNDLE"/bin/* "$BUNDLE"/tests/*; do [[ "$f" == *.txt ]] || objdump -T "$f"; done | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -n 1) (dynamically linked; libcuda is loaded at run time)"
    echo
    echo "| file | bytes | sha256 |"
    echo "|---|---:|---|"
    for f in "$BUNDLE"/bin/* "$BUNDLE"/tests/*; do
        echo "| ${f#"$BUNDLE"/} | $(stat -c %s "$f") | $(sha256sum "$f" | cut -c1-16) |"
    done
} >"$BUNDLE/MANIFEST.md"

unpacked=$(du -sb "$BUNDLE" | cut -f1)
tar -C "$BUNDLE" -cf - bin tests | xz -T0 -6 >"$BUNDLE/payload.tar.xz"
rm -rf "$BUNDLE/bin" "$BUNDLE/tests"
bytes=$(du -sb "$BUNDLE" | cut -f1)
echo "== $BUNDLE: $taken test binaries + tarflow, $((unpacked / 1024 / 1024)) MiB, packed $((bytes / 1024 / 1024)) MiB ($bytes bytes)" >&2
if [ "$bytes" -gt $((LIMIT_MIB * 1024 * 1024)) ]; then
    echo "prepare: $BUNDLE is $bytes bytes, over the ${LIMIT_MIB} MiB limit" >&2
    exit 1
fi
