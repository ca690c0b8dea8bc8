#!/usr/bin/env python3
"""An official-format TarFlow checkpoint of a given shape with random weights, to time our
sampler on a model of the official AFHQ checkpoint's exact shape without downloading it.

    PYTHONPATH=/path/to/torch python random_checkpoint.py --ml-tarflow /path/to/ml-tarflow \
        --out afhq_random.pth   # defaults: the AFHQ run, 256x256x3, patch 8, 768, 8 blocks of 8

The official constructor builds the model (its init, then the zero output projections
perturbed so the flow is not a pure shift); convert.py turns the .pth into safetensors.
"""

import argparse
import sys

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ml-tarflow", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--img-size", type=int, default=256)
    ap.add_argument("--channel-size", type=int, default=3)
    ap.add_argument("--patch-size", type=int, default=8)
    ap.add_argument("--channels", type=int, default=768)
    ap.add_argument("--blocks", type=int, default=8)
    ap.add_argument("--layers-per-block", type=int, default=8)
    ap.add_argument("--num-classes", type=int, default=3)
    a = ap.parse_args()
    sys.path.insert(0, a.ml_tarflow)
    import transformer_flow as tf

    torch.manual_seed(0)
    m = tf.Model(a.channel_size, a.img_size, a.patch_size, a.channels, a.blocks, a.layers_per_block,
                 nvp=True, num_classes=a.num_classes)
    with torch.no_grad():
        for b in m.blocks:
            b.proj_out.weight.normal_(0.0, 0.002)
    torch.save(m.state_dict(), a.out)
    print(f"wrote {a.out}: {sum(p.numel() for p in m.parameters())} parameters")


if __name__ == "__main__":
    main()
