#!/usr/bin/env python3
"""What this GPU reaches through PyTorch (cuBLAS, PyTorch's own kernels, flash SDPA), at the
shapes `tarflow bench --kernels --device cuda` uses, so that the two tables of one GPU check
can be read side by side. Prints a Markdown table; --json also writes the rows as JSON.

Times are CUDA-event medians over repeats after a warm-up. GB/s counts each byte that must
move once (read inputs, write outputs); TFLOP/s counts an FMA as 2 flops. Causal attention
counts half of 4 * B * H * T^2 * D for the forward and 2.5 times that for the backward (the
FlashAttention papers' convention)."""

import argparse
import json
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", help="also write the rows to this file")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()

    try:
        import torch
        import torch.nn.functional as F
    except ImportError as e:
        sys.exit(f"torch_ceilings: PyTorch is not installed ({e})")
    if not torch.cuda.is_available():
        sys.exit(f"torch_ceilings: PyTorch {torch.__version__} sees no CUDA device")

    dev = torch.device("cuda")
    torch.manual_seed(0)
    print(
        f"PyTorch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"{torch.cuda.get_device_name(dev)}, {args.repeats} repeats per row\n"
    )

    def timed(fn, warmup=3):
        for _ in range(warmup):
            fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(max(1, args.repeats)):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        times.sort()
        return times[len(times) // 2], times[0], times[-1]

    rows = []

    def row(name, shape, fn, flops=None, nbytes=None):
        try:
            med, lo, hi = timed(fn)
        except Exception as e:  # one failing workload must not hide the others
            rows.append({"workload": name, "shape": shape, "error": str(e)})
            return
        r = {"workload": name, "shape": shape, "median_s": med, "min_s": lo, "max_s": hi}
        if flops:
            r["tflops"] = flops / med / 1e12
        if nbytes:
            r["gbps"] = nbytes / med / 1e9
        rows.append(r)
        torch.cuda.empty_cache()

    n = 4096
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    row("matmul bf16 (cuBLAS)", f"{n}x{n}x{n}", lambda: a @ b.t(), flops=2 * n**3)
    del a, b

    n = 2048
    torch.backends.cuda.matmul.allow_tf32 = False
    a = torch.randn(n, n, device=dev)
    b = torch.randn(n, n, device=dev)
    row("matmul f32, no TF32 (cuBLAS)", f"{n}x{n}x{n}", lambda: a @ b.t(), flops=2 * n**3)
    del a, b

    n = 256 << 20
    x = torch.randn(n, device=dev)
    y = torch.empty_like(x)
    row("copy f32 (device to device)", f"[{n}]", lambda: y.copy_(x), nbytes=8 * n)
    del x, y

    n = 64 << 20
    x = torch.randn(n, device=dev)
    y = torch.empty_like(x)
    row("exp f32", f"[{n}]", lambda: torch.exp(x, out=y), nbytes=8 * n)
    del x, y

    r, c = 65536, 1024
    x = torch.randn(r, c, device=dev)
    row("softmax rows f32", f"[{r}, {c}]", lambda: torch.softmax(x, dim=-1), nbytes=8 * r * c)
    row("sum over rows f32", f"[{r}, {c}]", lambda: x.sum(dim=0), nbytes=4 * (r * c + c))
    del x

    r, c = 65536, 768
    x = torch.randn(r, c, device=dev)
    w = torch.randn(c, device=dev)
    bias = torch.randn(c, device=dev)
    row(
        "layer_norm fwd f32",
        f"[{r}, {c}]",
        lambda: F.layer_norm(x, (c,), w, bias, 1e-5),
        nbytes=4 * (2 * r * c + 2 * c),
    )
    del x, w, bias

    bsz, t, h, d = 64, 1024, 12, 64
    q, k, v = (
        torch.randn(bsz, h, t, d, device=dev, dtype=torch.bfloat16, requires_grad=True)
        for _ in range(3)
    )
    g = torch.randn(bsz, h, t, d, device=dev, dtype=torch.bfloat16)
    fwd_flops = 4 * bsz * h * t * t * d / 2

    def sdpa_fwd():
        with torch.no_grad():
            F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def sdpa_fwd_bwd():
        # Fresh gradients each time: accumulating into old ones would add three adds.
        q.grad = k.grad = v.grad = None
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        out.backward(g)

    shape = f"B{bsz} T{t} H{h} D{d} causal bf16"
    row("SDPA fwd", shape, sdpa_fwd, flops=fwd_flops)
    row("SDPA fwd+bwd", shape, sdpa_fwd_bwd, flops=3.5 * fwd_flops)

    print("| workload | shape | median ms | min ms | max ms | TFLOP/s | GB/s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['workload']} | {r['shape']} | failed: {r['error'][:120]} | | | | |")
            continue
        tf = f"{r['tflops']:.1f}" if "tflops" in r else "-"
        gb = f"{r['gbps']:.0f}" if "gbps" in r else "-"
        print(
            f"| {r['workload']} | {r['shape']} | {r['median_s'] * 1e3:.3f} | "
            f"{r['min_s'] * 1e3:.3f} | {r['max_s'] * 1e3:.3f} | {tf} | {gb} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "rows": rows}, f, indent=1)
    if any("error" in r for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
