#!/usr/bin/env python3
"""The peer for `tarflow bench --device cuda`: a TarFlow written in PyTorch eager, timed on
the same card at the same shape, so that the GPU check can put the two side by side.

The model follows the project's definition (docs/architecture.md): patches in row-major order,
T flow blocks alternating between the identity and a flip of the tokens, each with an input
projection, learned positions, K pre-norm causal Transformer layers (head dim 64, MLP ratio 4,
exact GELU), a zero-initialised output projection to (alpha, mu), the shift by one token, and
z = (x - mu) exp(-alpha). It is written for speed the way a PyTorch user would write it:
`F.scaled_dot_product_attention(is_causal=True)` (flash attention) for training, bf16
autocast with f32 master weights, fused AdamW; KV-cached sampling with preallocated caches,
one token per step through every layer, under bf16 autocast.

Rows: a training step (forward, loss, backward, AdamW; peak memory of the step), the forward
log-likelihood, KV-cached sampling. Times are CUDA-event medians after a warm-up (wall-clock
medians on the CPU). Prints a Markdown table; --json also writes the rows.

The default shape is ImageNet64's p2 C768 T8 K8 at batch 64 (sampling: --sample-batch
images, no guidance). `--preset tiny --device cpu` runs a small model on the CPU, which is how
the script is tested where no GPU is; `tiny` is `tarflow bench --preset tiny --classes 0`
(1x28x28 p4 C64 T2 K1). --channels, --image-size, --patch-size, --width, --blocks and --layers override a
preset's shape as they do for `tarflow bench`.

--activations instead counts what one training forward (and the loss) keeps for the backward,
under the same autocast, on any device: every tensor autograd saves goes through
torch.autograd.graph.saved_tensors_hooks, and the bytes of the storages behind them are added
up, each storage once (q, k and v are views of one qkv product; a tensor saved by two ops is
kept once). Storages that exist before the forward (the parameters and the batch) are not
activations and are reported apart. Under bf16 autocast the bf16 copies of the weights that
the linears save are new storages, so they count, as they cost memory. On CUDA the live
bytes after the loss minus those before the forward are printed too (what `tarflow bench`
calls the activations on a device)."""

import argparse
import json
import math
import sys
import time

PRESETS = {
    # channels, image size, patch, width, blocks, layers per block
    "imagenet64": (3, 64, 2, 768, 8, 8),
    "tiny": (1, 28, 4, 64, 2, 1),
}


def build(torch, channels, image_size, patch, width, blocks, layers, head_dim=64):
    nn = torch.nn
    F = torch.nn.functional
    n_tok = (image_size // patch) ** 2
    d_tok = channels * patch * patch
    heads = width // head_dim

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1 = nn.LayerNorm(width)
            self.qkv = nn.Linear(width, 3 * width)
            self.out = nn.Linear(width, width)
            self.norm2 = nn.LayerNorm(width)
            self.fc1 = nn.Linear(width, 4 * width)
            self.fc2 = nn.Linear(4 * width, width)

        def split(self, h):
            b, n, _ = h.shape
            q, k, v = self.qkv(self.norm1(h)).view(b, n, 3, heads, head_dim).unbind(2)
            return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

        def mlp(self, h):
            return h + self.fc2(F.gelu(self.fc1(self.norm2(h))))

        def forward(self, h):
            b, n, _ = h.shape
            q, k, v = self.split(h)
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            h = h + self.out(o.transpose(1, 2).reshape(b, n, width))
            return self.mlp(h)

        def step(self, h, cache, pos):
            # One token for every image: append its keys and values, attend to the prefix.
            b = h.shape[0]
            q, k, v = self.split(h)
            cache[0][:, :, pos : pos + 1] = k
            cache[1][:, :, pos : pos + 1] = v
            o = F.scaled_dot_product_attention(
                q, cache[0][:, :, : pos + 1], cache[1][:, :, : pos + 1]
            )
            h = h + self.out(o.transpose(1, 2).reshape(b, 1, width))
            return self.mlp(h)

    class Block(nn.Module):
        def __init__(self, flip):
            super().__init__()
            self.flip = flip
            self.proj_in = nn.Linear(d_tok, width)
            self.pos = nn.Parameter(torch.randn(n_tok, width) * 0.01)
            self.layers = nn.ModuleList(Layer() for _ in range(layers))
            self.proj_out = nn.Linear(width, 2 * d_tok)
            nn.init.zeros_(self.proj_out.weight)

        def order(self, x):
            return x.flip(1) if self.flip else x

        def forward(self, x):
            x = self.order(x)
            h = self.proj_in(x) + self.pos
            for layer in self.layers:
                h = layer(h)
            p = self.proj_out(h).float()
            p = torch.cat([torch.zeros_like(p[:, :1]), p[:, :-1]], dim=1)
            alpha, mu = p[..., :d_tok], p[..., d_tok:]
            z = (x - mu) * torch.exp(-alpha)
            return self.order(z), -alpha.sum(dim=(1, 2))

        @torch.no_grad()
        def reverse(self, z, dtype):
            z = self.order(z)
            b = z.shape[0]
            caches = [
                [torch.empty(b, heads, n_tok, head_dim, device=z.device, dtype=dtype) for _ in range(2)]
                for _ in self.layers
            ]
            x = torch.empty_like(z)
            x[:, 0] = z[:, 0]
            for i in range(n_tok - 1):
                h = self.proj_in(x[:, i : i + 1]) + self.pos[i : i + 1]
                for layer, cache in zip(self.layers, caches):
                    h = layer.step(h, cache, i)
                p = self.proj_out(h).float()[:, 0]
                x[:, i + 1] = z[:, i + 1] * torch.exp(p[:, :d_tok]) + p[:, d_tok:]
            return self.order(x)

    class Flow(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList(Block(t % 2 == 1) for t in range(blocks))

        def tokens(self, img):
            b = img.shape[0]
            g = image_size // patch
            t = img.view(b, channels, g, patch, g, patch).permute(0, 2, 4, 1, 3, 5)
            return t.reshape(b, g * g, d_tok)

        def forward(self, img):
            x = self.tokens(img)
            logdet = torch.zeros(img.shape[0], device=img.device)
            for blk in self.blocks:
                x, ld = blk(x)
                logdet = logdet + ld
            return x, logdet

        def loss(self, img):
            z, logdet = self(img)
            return 0.5 * z.pow(2).mean() - logdet.mean() / (n_tok * d_tok)

        def reverse(self, z, dtype):
            for blk in reversed(self.blocks):
                z = blk.reverse(z, dtype)
            return z

        def sample(self, n, dtype):
            dev = self.blocks[0].pos.device
            return self.reverse(torch.randn(n, n_tok, d_tok, device=dev), dtype)

    return Flow(), n_tok, d_tok


def saved_for_backward(torch, model, x, autocast):
    """The storages one training forward and loss save for the backward, each once: a dict of
    `activations` (bytes, storages, bytes by dtype), `inputs` (bytes of saved parameter and
    batch storages, which exist before the forward) and, on CUDA, `live_bytes` (allocated
    after the loss minus before the forward)."""
    before = {q.untyped_storage().data_ptr() for q in model.parameters()}
    before.add(x.untyped_storage().data_ptr())
    seen = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() != 0:
            seen.setdefault(st.data_ptr(), (st.nbytes(), str(t.dtype).replace("torch.", "")))
        return t

    cuda = x.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated(x.device)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with autocast():
            loss = model.loss(x)
    live = torch.cuda.memory_allocated(x.device) - base if cuda else None
    by_dtype = {}
    for ptr, (n, dt) in seen.items():
        if ptr not in before:
            by_dtype[dt] = by_dtype.get(dt, 0) + n
    out = {
        "activation_bytes": sum(by_dtype.values()),
        "activation_storages": sum(1 for ptr in seen if ptr not in before),
        "activation_bytes_by_dtype": by_dtype,
        "saved_input_bytes": sum(n for ptr, (n, _) in seen.items() if ptr in before),
        "live_bytes": live,
    }
    # Frees the graph and what it saved.
    loss.backward()
    model.zero_grad(set_to_none=True)
    return out


def report_activations(torch, model, x, autocast, args, shape):
    r = saved_for_backward(torch, model, x, autocast)
    kinds = ", ".join(f"{dt} {n}" for dt, n in sorted(r["activation_bytes_by_dtype"].items()))
    print(
        f"PyTorch {torch.__version__} eager, {args.precision}, on {args.device}: TarFlow {shape}, batch {args.batch}\n"
        f"saved for the backward: {r['activation_bytes']} bytes in {r['activation_storages']} storages "
        f"({kinds}); parameters and the batch saved too: {r['saved_input_bytes']} bytes (not counted)"
        + (f"\nlive after the loss minus before the forward: {r['live_bytes']} bytes" if r["live_bytes"] is not None else "")
    )
    print(f"activation_bytes {r['activation_bytes']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"preset": args.preset, "shape": shape, "batch": args.batch, "precision": args.precision, **r}, f, indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="imagenet64")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--sample-batch", type=int, default=16, help="0: no sampling row")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sample-repeats", type=int, default=1)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", choices=["bf16", "f32"], default="bf16")
    ap.add_argument("--json", help="also write the rows to this file")
    for flag, help_ in [
        ("--channels", "image channels"),
        ("--image-size", "image height and width"),
        ("--patch-size", "patch side p"),
        ("--width", "model width C"),
        ("--blocks", "flow blocks T"),
        ("--layers", "Transformer layers per block K"),
    ]:
        ap.add_argument(flag, type=int, help=f"{help_} [default: the preset's]")
    ap.add_argument(
        "--activations",
        action="store_true",
        help="count the bytes one training forward saves for the backward, then stop (no timings)",
    )
    args = ap.parse_args()

    try:
        import torch
    except ImportError as e:
        sys.exit(f"torch_tarflow: PyTorch is not installed ({e})")
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    if cuda and not torch.cuda.is_available():
        sys.exit(f"torch_tarflow: PyTorch {torch.__version__} sees no CUDA device")
    torch.manual_seed(0)
    c, s, p, w, t, k = PRESETS[args.preset]
    c, s, p, w, t, k = (
        v if v is not None else d
        for v, d in zip(
            (args.channels, args.image_size, args.patch_size, args.width, args.blocks, args.layers), (c, s, p, w, t, k)
        )
    )
    if s % p or w % 64:
        sys.exit(f"torch_tarflow: image size {s} must be a multiple of the patch {p}, width {w} of 64")
    model, n_tok, d_tok = build(torch, c, s, p, w, t, k)
    model = model.to(dev)
    # The output projections start at zero; give them small weights so the flow is not the
    # identity, with the standard deviation `tarflow bench` uses (0.02 up to width 128, then
    # falling as 1/width: at ImageNet64's width 0.02 overflows the forward).
    with torch.no_grad():
        for blk in model.blocks:
            blk.proj_out.weight.normal_(0.0, 0.02 * min(1.0, 128 / w))
    params = sum(q.numel() for q in model.parameters())
    # The peer must be a working flow: the KV-cached inverse, in f32, undoes the forward.
    with torch.no_grad():
        x1 = torch.rand(1, c, s, s, device=dev) * 2 - 1
        z1, _ = model(x1)
        err = (model.reverse(z1, torch.float32) - model.tokens(x1)).abs().max().item()
    if not err < 1e-3:
        sys.exit(f"torch_tarflow: the KV-cached inverse misses the forward's input by {err:.3e}")
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    autocast = lambda: torch.autocast(dev.type, dtype=dtype, enabled=args.precision == "bf16")
    opt = torch.optim.AdamW(
        model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=1e-4, **({"fused": True} if cuda else {})
    )
    x = torch.rand(args.batch, c, s, s, device=dev) * 2 - 1
    if args.activations:
        report_activations(torch, model, x, autocast, args, f"{c}x{s}x{s} p{p} C{w} T{t} K{k}")
        return
    print(
        f"PyTorch {torch.__version__} eager, {args.precision}, on {torch.cuda.get_device_name(dev) if cuda else 'the CPU'}: "
        f"TarFlow {c}x{s}x{s} p{p} C{w} T{t} K{k} ({params / 1e6:.1f} M parameters); "
        f"the f32 inverse undoes the forward within {err:.1e}\n"
    )

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def timed(fn, repeats, warmup=1):
        for _ in range(warmup):
            fn()
        sync()
        times = []
        for _ in range(max(1, repeats)):
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        times.sort()
        m = len(times)
        return (times[(m - 1) // 2] + times[m // 2]) / 2, times[0], times[-1]

    rows = []

    def row(name, batch, fn, repeats, memory=False):
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
            base = torch.cuda.memory_allocated(dev)
        try:
            med, lo, hi = timed(fn, repeats)
        except Exception as e:  # one failing workload must not hide the others
            rows.append({"workload": name, "batch": batch, "error": str(e)})
            return
        r = {"workload": name, "batch": batch, "median_s": med, "min_s": lo, "max_s": hi, "images_per_s": batch / med}
        if cuda and memory:
            r["peak_extra_gib"] = (torch.cuda.max_memory_allocated(dev) - base) / 2**30
        rows.append(r)

    def train_step():
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = model.loss(x)
        loss.backward()
        opt.step()
        if not math.isfinite(loss.item()):
            raise RuntimeError(f"non-finite loss {loss.item()}")

    def forward_nll():
        with torch.no_grad(), autocast():
            model(x)

    row("train step (fwd+bwd+AdamW)", args.batch, train_step, args.repeats, memory=True)
    row("forward NLL", args.batch, forward_nll, args.repeats)
    if args.sample_batch > 0:
        with autocast():
            row(
                "sample (KV cache)",
                args.sample_batch,
                lambda: model.sample(args.sample_batch, dtype),
                args.sample_repeats,
                memory=True,
            )

    print("| workload | batch | median s | min s | max s | images/s | peak memory beyond weights |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['workload']} | {r['batch']} | error: {r['error'][:200]} | | | | |")
            continue
        mem = f"{r['peak_extra_gib']:.2f} GiB" if "peak_extra_gib" in r else ""
        print(
            f"| {r['workload']} | {r['batch']} | {r['median_s']:.4f} | {r['min_s']:.4f} | "
            f"{r['max_s']:.4f} | {r['images_per_s']:.1f} | {mem} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"preset": args.preset, "precision": args.precision, "rows": rows}, f, indent=1)
    if any("error" in r for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
