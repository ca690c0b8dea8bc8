#!/bin/sh
# Regenerates the committed PTX of the interpreter's test fixtures from their CUDA sources.
# Needs nvcc 13 on PATH (see docs/ptx-interpreter.md); the output is deterministic.
set -eu
cd "$(dirname "$0")"
for cu in *.cu; do
    nvcc -ptx -arch=compute_80 -O3 "$cu" -o "${cu%.cu}.ptx"
done
