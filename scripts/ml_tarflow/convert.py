#!/usr/bin/env python3
"""Convert checkpoints of the official TarFlow code (github.com/apple/ml-tarflow) between
PyTorch `.pth` state dicts and safetensors.

    python convert.py afhq_model_8_768_8_8_0.07.pth afhq.safetensors
    python convert.py --reverse theirs.safetensors model.pth

Forward (.pth -> .safetensors): every tensor keeps its official name, stored as F32. The
causal masks (`blocks.{t}.attn_mask`) are dropped after checking that each is the lower
triangle of ones the model always builds. The metadata entry `ml_tarflow.config` holds the
model's configuration as JSON (read from the tensor shapes; the image channels, the head
dimension and the noise sigma cannot be read from shapes, see --channels, --head-dim and
--noise-std). `tarflow import --from ml-tarflow` reads the result.

Reverse (.safetensors -> .pth): a file in the official names (e.g. from `tarflow export --to
ml-tarflow`) becomes a state dict that the official `Model.load_state_dict` accepts; the
causal masks are rebuilt.

Needs torch and safetensors (pip install torch safetensors); nothing of the official code.
"""

import argparse
import json
import math
import re
import sys

import torch
from safetensors.torch import load_file, save_file

CONFIG_KEY = "ml_tarflow.config"
MASK = re.compile(r"^blocks\.(\d+)\.attn_mask$")


def infer_config(sd, channels, head_dim, noise_std):
    """The model configuration the official `Model` was built with, from tensor shapes."""
    blocks = sorted({int(k.split(".")[1]) for k in sd if k.startswith("blocks.")})
    if not blocks or blocks != list(range(len(blocks))):
        raise ValueError(f"no consecutive blocks.N.* tensors found (blocks {blocks})")
    layers = sorted({int(k.split(".")[3]) for k in sd if k.startswith("blocks.0.attn_blocks.")})
    if not layers:
        raise ValueError("no blocks.0.attn_blocks.K.* tensors found")
    width, token_dim = sd["blocks.0.proj_in.weight"].shape
    num_patches = sd["blocks.0.pos_embed"].shape[0]
    if token_dim % channels:
        raise ValueError(f"token size {token_dim} is not a multiple of {channels} channels")
    patch = math.isqrt(token_dim // channels)
    side = math.isqrt(num_patches)
    if patch * patch * channels != token_dim or side * side != num_patches:
        raise ValueError(
            f"{num_patches} patches of {token_dim} values do not form square images of "
            f"{channels} channels with square patches"
        )
    out_rows = sd["blocks.0.proj_out.weight"].shape[0]
    if out_rows not in (token_dim, 2 * token_dim):
        raise ValueError(f"blocks.0.proj_out.weight has {out_rows} rows, expected {token_dim} or {2 * token_dim}")
    hidden = sd["blocks.0.attn_blocks.0.mlp.main.0.weight"].shape[0]
    ce = sd.get("blocks.0.class_embed")
    if width % head_dim:
        raise ValueError(f"width {width} is not a multiple of the head dimension {head_dim}")
    return {
        "channels": channels,
        "image_size": side * patch,
        "patch_size": patch,
        "width": width,
        "blocks": len(blocks),
        "layers_per_block": len(layers),
        "head_dim": head_dim,
        "mlp_ratio": hidden // width,
        "num_classes": 0 if ce is None else ce.shape[0],
        "nvp": out_rows == 2 * token_dim,
        "noise_std": noise_std,
    }


def noise_from_name(path):
    """The noise sigma in an official checkpoint name (`..._model_P_C_T_K_0.07.pth`), or None."""
    m = re.search(r"_model_\d+_\d+_\d+_\d+_(\d+\.\d+)\.pth$", path)
    return float(m.group(1)) if m else None


def to_safetensors(state_dict, out, channels=3, head_dim=64, noise_std=None):
    """Writes an official state dict as safetensors with the config in the metadata."""
    sd = {}
    for k, v in state_dict.items():
        m = MASK.match(k)
        if m:
            n = v.shape[0]
            if not torch.equal(v.float().cpu(), torch.tril(torch.ones(n, n))):
                raise ValueError(f"{k} is not a causal mask")
            continue
        sd[k] = v.detach().float().cpu().contiguous()
    cfg = infer_config(sd, channels, head_dim, noise_std)
    save_file(sd, out, metadata={CONFIG_KEY: json.dumps(cfg, sort_keys=True)})
    return cfg


def to_state_dict(path):
    """Reads an official-named safetensors file back into a state dict with its masks."""
    sd = load_file(path)
    n = sd["blocks.0.pos_embed"].shape[0]
    blocks = {int(k.split(".")[1]) for k in sd if k.startswith("blocks.")}
    for t in sorted(blocks):
        sd[f"blocks.{t}.attn_mask"] = torch.tril(torch.ones(n, n))
    return sd


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("--reverse", action="store_true", help="safetensors -> .pth")
    ap.add_argument("--channels", type=int, default=3, help="image channels (3 for RGB)")
    ap.add_argument("--head-dim", type=int, default=64, help="attention head size (64 in the official code)")
    ap.add_argument("--noise-std", type=float, default=None,
                    help="training noise sigma [default: read from an official file name]")
    a = ap.parse_args()
    if a.reverse:
        torch.save(to_state_dict(a.input), a.output)
        print(f"wrote {a.output}")
        return
    sd = torch.load(a.input, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]
    noise = a.noise_std if a.noise_std is not None else noise_from_name(a.input)
    cfg = to_safetensors(sd, a.output, a.channels, a.head_dim, noise)
    print(f"wrote {a.output}: {json.dumps(cfg, sort_keys=True)}")


if __name__ == "__main__":
    sys.exit(main())
