#!/usr/bin/env python3
"""Make the interoperability fixture of tests/interop.rs with the official TarFlow code.

    PYTHONPATH=/path/to/torch python make_fixture.py --ml-tarflow /path/to/ml-tarflow \
        --out tests/fixtures/ml-tarflow

`--ml-tarflow` is a checkout of github.com/apple/ml-tarflow (its `transformer_flow.py` is
imported from there; none of it is copied here). Two tiny models are built with a fixed seed
and every weight randomised (the official init zeroes the output projections, which would
test nothing):

- `nvp`: the affine variant (nvp=True), 3 classes;
- `additive`: the volume-preserving variant (nvp=False), unconditional, with a random `var`
  buffer (the learned prior variance its sampler uses).

Both: 8x8 RGB images, patch 2 (16 tokens of 12 values), width 8, 2 blocks of 2 layers, MLP
expansion 4. The official `Model` always builds heads of 64 (the default of `MetaBlock`'s
`head_dim`, which `Model` does not pass); to keep the fixture small that default is set to 4
before the models are built, so the official constructor makes 2 heads of 4.

Written to --out: `{nvp,additive}.pth` (official state dicts), `{nvp,additive}.safetensors`
(converted by convert.py) and `reference.safetensors`: the input images, fixed noise, and what
the official code computed in float64 (and float32, suffix `_f32`) for them: latents z and
log-determinants of `Model.forward`, samples of `Model.reverse` without guidance, with
classifier-free guidance (constant and annealed, and with the null-class branch also at an
attention temperature, as the official sampler does when both are set), with
attention-temperature guidance, and
the notebook's denoising step. The metadata entry `cases` describes every case as JSON. For
the float64 numbers the official code's casts to float32 (LayerNorm and exp run in float32
there, for bfloat16 autocast) are made no-ops, so nothing rounds to float32.
"""

import argparse
import contextlib
import json
import pathlib
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import convert  # noqa: E402

CHANNELS, SIZE, PATCH, WIDTH, BLOCKS, LAYERS, HEAD = 3, 8, 2, 8, 2, 2, 4
SIGMA = 0.07


def with_head_dim(tf, head_dim):
    """`Model` does not pass a head size to `MetaBlock`, whose default is 64: set that default."""
    init = tf.MetaBlock.__init__
    names = init.__code__.co_varnames[1 : init.__code__.co_argcount]
    defaults = list(init.__defaults__)
    defaults[names.index("head_dim") - (len(names) - len(defaults))] = head_dim
    init.__defaults__ = tuple(defaults)


def build(tf, nvp, num_classes, seed):
    torch.manual_seed(seed)
    m = tf.Model(CHANNELS, SIZE, PATCH, WIDTH, BLOCKS, LAYERS, nvp=nvp, num_classes=num_classes)
    heads = {mod.num_heads for mod in m.modules() if isinstance(mod, tf.Attention)}
    assert heads == {WIDTH // HEAD}, heads
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith("proj_out.weight"):
                p.copy_(0.03 * torch.randn_like(p))
            elif name.endswith("proj_out.bias"):
                p.copy_(0.02 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.copy_(0.4 * torch.randn_like(p))
        if not nvp:
            m.var.copy_(0.5 + torch.rand_like(m.var))
    return m.eval()


def denoise(model, x, y, sigma):
    """The official notebook's denoising step (lr = batch * pixels * sigma^2)."""
    x = x.clone().detach().requires_grad_(True)
    z, _, logdets = model(x, y)
    loss = model.get_loss(z, logdets)
    (g,) = torch.autograd.grad(loss, [x])
    lr = x.shape[0] * SIZE * SIZE * CHANNELS * sigma**2
    return (x - lr * g).detach()


@contextlib.contextmanager
def float64_throughout(dtype):
    """The official code computes LayerNorm and exp in float32 (`x.float()`, for bfloat16
    autocast); a float64 reference must not round there, so `.float()` of a float64 tensor
    is made the identity while it runs."""
    if dtype != torch.float64:
        yield
        return
    orig = torch.Tensor.float
    torch.Tensor.float = lambda self, *a, **k: self if self.dtype == torch.float64 else orig(self, *a, **k)
    try:
        yield
    finally:
        torch.Tensor.float = orig


def run_cases(model, x, noise, y, y_null, cases, dtype):
    """Every case on `model` in `dtype`: name -> tensor."""
    m = model.to(dtype)
    x, noise = x.to(dtype), noise.to(dtype)
    out = {}
    for name, c in cases.items():
        if c["kind"] == "forward":
            labels = {"y": y, "y_null": y_null, "none": None}[c["labels"]]
            with torch.no_grad():
                z, _, logdets = m(x, labels)
            out[name + "_z"] = z
            out[name + "_logdet"] = logdets.expand(x.shape[0]) if logdets.dim() == 0 else logdets
        elif c["kind"] == "reverse":
            labels = {"y": y, "none": None}[c["labels"]]
            with torch.no_grad():
                s = m.reverse(noise.clone(), labels, guidance=c["guidance"], attn_temp=c["attn_temp"],
                              annealed_guidance=c["anneal"])
            out[name] = s
        elif c["kind"] == "denoise":
            labels = {"y": y, "none": None}[c["labels"]]
            out[name] = denoise(m, out[c["of"]], labels, c["sigma"])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ml-tarflow", required=True, help="checkout of apple/ml-tarflow")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    sys.path.insert(0, a.ml_tarflow)
    import transformer_flow as tf  # the official model

    with_head_dim(tf, HEAD)

    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(1234)
    x = torch.rand(2, CHANNELS, SIZE, SIZE, dtype=torch.float64) * 2 - 1
    tokens = (SIZE // PATCH) ** 2
    noise = torch.randn(2, tokens, CHANNELS * PATCH * PATCH, dtype=torch.float64)
    y = torch.tensor([0, 2])
    y_null = torch.tensor([-1, 1])  # -1: the dropped label (mean class embedding)

    models = {
        "nvp": (True, 3, {
            "nvp_fwd": {"kind": "forward", "labels": "y"},
            "nvp_fwd_null": {"kind": "forward", "labels": "y_null"},
            "nvp_sample": {"kind": "reverse", "labels": "y", "guidance": 0.0, "attn_temp": 1.0, "anneal": False},
            "nvp_cfg": {"kind": "reverse", "labels": "y", "guidance": 1.5, "attn_temp": 1.0, "anneal": False},
            "nvp_cfg_anneal": {"kind": "reverse", "labels": "y", "guidance": 2.0, "attn_temp": 1.0, "anneal": True},
            "nvp_cfg_temp": {"kind": "reverse", "labels": "y", "guidance": 1.5, "attn_temp": 0.7, "anneal": False},
            "nvp_denoised": {"kind": "denoise", "labels": "y", "of": "nvp_sample", "sigma": SIGMA},
        }),
        "additive": (False, 0, {
            "add_fwd": {"kind": "forward", "labels": "none"},
            "add_sample": {"kind": "reverse", "labels": "none", "guidance": 0.0, "attn_temp": 1.0, "anneal": False},
            "add_temp": {"kind": "reverse", "labels": "none", "guidance": 1.0, "attn_temp": 0.6, "anneal": False},
        }),
    }
    tensors = {"x": x, "noise": noise, "y": y.double(), "y_null": y_null.double()}
    all_cases = {}
    for seed, (name, (nvp, classes, cases)) in enumerate(models.items()):
        model = build(tf, nvp, classes, seed)
        torch.save(model.state_dict(), out / f"{name}.pth")
        st = str(out / f"{name}.safetensors")
        convert.to_safetensors(model.state_dict(), st, CHANNELS, HEAD, SIGMA)
        # The reverse conversion gives a state dict the official model loads, unchanged.
        back = build(tf, nvp, classes, seed + 100)
        back.load_state_dict(convert.to_state_dict(st))
        for (k, v), (k2, v2) in zip(model.state_dict().items(), back.state_dict().items()):
            assert k == k2 and torch.equal(v.float(), v2.float()), k
        for dtype, suffix in [(torch.float64, ""), (torch.float32, "_f32")]:
            with float64_throughout(dtype):
                results = run_cases(model, x, noise, y, y_null, cases, dtype)
            for k, v in results.items():
                if suffix and k.endswith("_logdet"):
                    continue
                tensors[k + suffix] = v.detach().double().contiguous()
        for k, c in cases.items():
            all_cases[k] = dict(c, model=name)
    meta = {"cases": json.dumps(all_cases, sort_keys=True), "torch": torch.__version__}
    save_file(tensors, str(out / "reference.safetensors"), metadata=meta)
    for k in sorted(tensors):
        t = tensors[k]
        print(f"{k:24s} {list(t.shape)} first {t.flatten()[:3].tolist()}")


if __name__ == "__main__":
    main()
