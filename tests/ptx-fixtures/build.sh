#!/bin/sh
# Regenerates the committed PTX of the interpreter's test fixtures from their CUDA sources.
# Needs nvcc 13 on PATH (see docs/ptx-interpreter.md); the output is deterministic. A source
# whose first line is `// ptx-arch: compute_NN` is compiled for that virtual architecture,
# the others for compute_80.
set -eu
cd "$(dirname "$0")"
for cu in *.cu; do
    arch="$(sed -n '1s|^// ptx-arch: \(compute_[0-9a-z]*\)$|\1|p' "$cu")"
    nvcc -ptx -arch="${arch:-compute_80}" -O3 "$cu" -o "${cu%.cu}.ptx"
done
