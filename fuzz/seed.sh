#!/usr/bin/env bash
# Recreates the seed corpora in fuzz/corpus/<target>/ (git-ignored) from small valid inputs,
# so every target starts from files that get past its format checks:
#   checkpoint    a tiny-preset checkpoint (tarflow init)
#   resume        state files of 2-step one-block tiny-preset runs, without and with EMA
#                 (tarflow train; the target's model file has the same config)
#   tensors       safetensors files of every stored dtype, with metadata, zero-sized and
#                 unsupported-dtype tensors, and a real encode output (tarflow encode)
#   idx           raw and gzipped IDX image and label files
#   cifar         a two-record CIFAR-10 batch
#   image_folder  PNGs (gray, RGB, RGBA, 16-bit, palette) and JPEGs (RGB, gray), each after
#                 the target's leading size/colour selector byte
#   views         none needed (short byte strings)
#   cli_args      the README's command lines, one argument per NUL-separated field
# Needs python3 (standard library only) and builds the release binary. Run from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet
BIN=$PWD/target/release/tarflow
C=$PWD/fuzz/corpus
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$C"/{checkpoint,resume,tensors,idx,cifar,image_folder,views,cli_args}

"$BIN" init --preset tiny --out "$C/checkpoint/tiny.safetensors" >/dev/null

for ema in "" "--ema 0.99"; do
  # shellcheck disable=SC2086 # ema is empty or two words
  "$BIN" train --preset tiny --steps 2 --eval-every 1000 --sample-every 1000 \
    --checkpoint-every 2 --blocks 1 $ema --out "$TMP/run" --quiet >/dev/null
  cp "$TMP/run/state-0000002.safetensors" "$C/resume/state${ema:+-ema}.safetensors"
  rm -rf "$TMP/run"
done

python3 - "$C" "$TMP" <<'PY'
import gzip, json, os, struct, sys, zlib

corpus, tmp = sys.argv[1], sys.argv[2]

def put(target, name, data):
    with open(os.path.join(corpus, target, name), "wb") as f:
        f.write(data)

def safetensors(tensors, metadata=None):
    """tensors: list of (name, dtype, shape, raw bytes), stored in that order."""
    header, data = {}, b""
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if metadata is not None:
        header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data

vals = [0.0, 1.0, -1.0, 0.5, -0.25, 3.0]
packs = {
    "F64": struct.pack("<6d", *vals),
    "F32": struct.pack("<6f", *vals),
    "F16": struct.pack("<6e", *vals),
    "BF16": b"".join(struct.pack("<f", v)[2:] for v in vals),
    "I64": struct.pack("<6q", 0, 1, -1, 255, -7, 2**40),
    "I32": struct.pack("<6i", 0, 1, -1, 255, -7, 2**30),
    "U8": bytes([0, 1, 127, 128, 254, 255]),
    "I8": struct.pack("<6b", 0, 1, -1, 127, -128, 5),
    "BOOL": bytes([0, 1, 1, 0, 0, 1]),
}
for dtype, raw in packs.items():
    put("tensors", dtype.lower() + ".safetensors", safetensors([("x", dtype, [2, 3], raw)]))
put("tensors", "mixed-meta.safetensors", safetensors(
    [("x", "F32", [1, 1, 2, 3], packs["F32"]), ("labels", "I64", [1], struct.pack("<q", 3)),
     ("empty", "F64", [0, 4], b"")], {"format": "pt", "note": "seed"}))
put("tensors", "scalar.safetensors", safetensors([("s", "F64", [], struct.pack("<d", 2.5))]))
put("tensors", "none.safetensors", safetensors([]))
# An encode input for the real output below: one blank 28x28 digit in [-1, 1].
x = safetensors([("x", "F32", [1, 1, 28, 28], struct.pack("<784f", *([-1.0] * 784)))])
with open(os.path.join(tmp, "x.safetensors"), "wb") as f:
    f.write(x)

def idx(dims, payload):
    """An unsigned-byte (type 0x08) IDX file."""
    return bytes([0, 0, 0x08, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + payload

images = idx([2, 3, 4], bytes(range(24)))
labels = idx([2], bytes([3, 7]))
put("idx", "images.idx", images)
put("idx", "labels.idx", labels)
put("idx", "images.idx.gz", gzip.compress(images, mtime=0))
put("idx", "labels.idx.gz", gzip.compress(labels, mtime=0))

put("cifar", "batch.bin", bytes([1]) + bytes(i % 256 for i in range(3072))
    + bytes([9]) + bytes((255 - i) % 256 for i in range(3072)))

def png(w, h, color_type, depth, rows, palette=None):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + \
            struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff)
    raw = b"".join(b"\0" + r for r in rows)
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth,
                                                             color_type, 0, 0, 0))
    if palette:
        out += chunk(b"PLTE", palette)
    return out + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")

# Selector byte: bit 0 picks RGB, bits 1-3 and 4-7 the target height and width.
put("image_folder", "gray.png", b"\x00" + png(5, 3, 0, 8, [bytes(range(r * 5, r * 5 + 5)) for r in range(3)]))
put("image_folder", "rgb.png", b"\x13" + png(6, 4, 2, 8, [bytes((r * 40 + c) % 256 for c in range(18)) for r in range(4)]))
put("image_folder", "rgba.png", b"\x25" + png(4, 4, 6, 8, [bytes([10, 200, 30, 128] * 4)] * 4))
put("image_folder", "gray16.png", b"\x02" + png(3, 3, 0, 16, [struct.pack(">3H", r, 30000, 65535) for r in range(3)]))
put("image_folder", "palette.png", b"\x11" + png(4, 2, 3, 8, [bytes([0, 1, 2, 1])] * 2, b"\xff\x00\x00\x00\xff\x00\x00\x00\xff"))
PY

# JPEGs written by the image crate's encoder (6x4 RGB at quality 90, 5x3 gray at 75).
{ printf '\x13'; base64 -d <<<'/9j/4AAQSkZJRgABAgAAAQABAAD/wAARCAAEAAYDAREAAhEBAxEB/9sAQwADAgIDAgIDAwMDBAMDBAUIBQUEBAUKBwcGCAwKDAwLCgsLDQ4SEA0OEQ4LCxAWEBETFBUVFQwPFxgWFBgSFBUU/9sAQwEDBAQFBAUJBQUJFA0LDRQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQU/8QAHwAAAQUBAQEBAQEAAAAAAAAAAAECAwQFBgcICQoL/8QAtRAAAgEDAwIEAwUFBAQAAAF9AQIDAAQRBRIhMUEGE1FhByJxFDKBkaEII0KxwRVS0fAkM2JyggkKFhcYGRolJicoKSo0NTY3ODk6Q0RFRkdISUpTVFVWV1hZWmNkZWZnaGlqc3R1dnd4eXqDhIWGh4iJipKTlJWWl5iZmqKjpKWmp6ipqrKztLW2t7i5usLDxMXGx8jJytLT1NXW19jZ2uHi4+Tl5ufo6erx8vP09fb3+Pn6/8QAHwEAAwEBAQEBAQEBAQAAAAAAAAECAwQFBgcICQoL/8QAtREAAgECBAQDBAcFBAQAAQJ3AAECAxEEBSExBhJBUQdhcRMiMoEIFEKRobHBCSMzUvAVYnLRChYkNOEl8RcYGRomJygpKjU2Nzg5OkNERUZHSElKU1RVVldYWVpjZGVmZ2hpanN0dXZ3eHl6goOEhYaHiImKkpOUlZaXmJmaoqOkpaanqKmqsrO0tba3uLm6wsPExcbHyMnK0tPU1dbX2Nna4uPk5ebn6Onq8vP09fb3+Pn6/9oADAMBAAIRAxEAPwDL1Dxlqnmf6+vz6lgaFtj9XyDwf4Q9l/u35f5H/9k='; } >"$C/image_folder/rgb.jpg"
{ printf '\x00'; base64 -d <<<'/9j/4AAQSkZJRgABAgAAAQABAAD/wAALCAADAAUBAREA/9sAQwAIBgYHBgUIBwcHCQkICgwUDQwLCwwZEhMPFB0aHx4dGhwcICQuJyAiLCMcHCg3KSwwMTQ0NB8nOT04MjwuMzQy/8QAHwAAAQUBAQEBAQEAAAAAAAAAAAECAwQFBgcICQoL/8QAtRAAAgEDAwIEAwUFBAQAAAF9AQIDAAQRBRIhMUEGE1FhByJxFDKBkaEII0KxwRVS0fAkM2JyggkKFhcYGRolJicoKSo0NTY3ODk6Q0RFRkdISUpTVFVWV1hZWmNkZWZnaGlqc3R1dnd4eXqDhIWGh4iJipKTlJWWl5iZmqKjpKWmp6ipqrKztLW2t7i5usLDxMXGx8jJytLT1NXW19jZ2uHi4+Tl5ufo6erx8vP09fb3+Pn6/9oACAEBAAA/AO50DwP4Z+wD/iTW3bsf8a//2Q=='; } >"$C/image_folder/gray.jpg"

"$BIN" init --preset tiny --out "$TMP/m.safetensors" >/dev/null
"$BIN" encode --checkpoint "$TMP/m.safetensors" --input "$TMP/x.safetensors" \
  --output "$C/tensors/encode-output.safetensors" >/dev/null

# Command lines as a user types them (the program name is added by the target).
i=0
while read -r line; do
  i=$((i + 1))
  # shellcheck disable=SC2086 # split the line into its words
  printf '%s\0' $line | head -c -1 >"$C/cli_args/readme-$i"
done <<'ARGS'
train
train --preset mnist-likelihood --patch-size 2 --width 64 --steps 9000 --lr 2e-3
train --preset tiny --steps 2 --eval-every 1000 --sample-every 1000 --ema 0.99 --out run
train --resume run --steps 60
train --device cpu --hflip --label-dropout 0.1 --keep-checkpoints 3 --warmup-steps 10
eval --checkpoint model.safetensors --draws 4 --batch-size 64
sample --checkpoint model.safetensors --num 8 --cfg 1.5 --denoise --out grid.png
sample --checkpoint m.safetensors --num 4 --class 3 --attn-temp 0.9 --attn-weight 1.5 --seed 7
init --preset mnist --out model.safetensors --randomize-output 1e-2
audit --preset tiny --dtype f64 --samples 2
audit --checkpoint model.safetensors
encode --checkpoint model.safetensors --input x.safetensors --output z.safetensors
decode --checkpoint model.safetensors --input z.safetensors --output x.safetensors
bench --preset mnist --repeats 10 --batch 16
bench --kernels --json
bench --patch-size 2 --width 64 --image-size 32
ARGS

for d in "$C"/*/; do
  echo "$(basename "$d"): $(find "$d" -type f | wc -l) seed file(s)"
done
