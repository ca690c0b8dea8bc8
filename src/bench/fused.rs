//! Timings of the fused kernels (softmax, layer_norm, attention, KV-cache decode) at TarFlow
//! shapes, for `tarflow bench --kernels`.

use super::kernels::{BenchConfig, KernelResult};
use super::peak::Peak;
use super::time_it;
use crate::autograd::no_grad;
use crate::error::Result;
use crate::ops::attention::{attention, attention_decode, AttentionOptions, KvCache};
use crate::rng::Rng;
use crate::tensor::Tensor;

fn randn(shape: &[usize], seed: u64) -> Tensor<f32> {
    Tensor::randn(shape, 0.0, 1.0, &mut Rng::new(seed))
}

/// Attention FLOPs (QK^T and PV, dense) for `[b, h, n, dh]`.
fn attention_flops(b: usize, h: usize, n: usize, dh: usize) -> f64 {
    4.0 * (b * h * n * n * dh) as f64
}

/// Times the fused kernels at TarFlow shapes: softmax, layer norm and causal attention
/// (forward, and forward + backward) and one KV-cache decode step. Uses only `cfg`'s
/// `warmup` and `repeats`; the shapes are fixed.
pub fn bench_fused(peak: &Peak, cfg: &BenchConfig) -> Result<Vec<KernelResult>> {
    let (w, r) = (cfg.warmup, cfg.repeats);
    let mut out = Vec::new();
    let e = std::mem::size_of::<f32>();

    // Softmax over attention-score rows: 64 images x 2 heads x 49 queries, 49 keys.
    let x = randn(&[64 * 2 * 49, 49], 1);
    let t = time_it(w, r, || {
        let _g = no_grad();
        x.softmax(-1).map(|_| ())
    });
    out.push(KernelResult::memory(
        "softmax",
        "6272x49",
        t,
        2 * x.numel() * e,
        peak,
    ));

    for (rows, c) in [(64 * 49, 128), (32 * 64, 256)] {
        let x = randn(&[rows, c], 2).requires_grad_();
        let g = Tensor::<f32>::ones(&[c]).requires_grad_();
        let b = Tensor::<f32>::zeros(&[c]).requires_grad_();
        let shape = format!("{rows}x{c}");
        let t = time_it(w, r, || {
            let _n = no_grad();
            x.layer_norm(Some(&g), Some(&b), 1e-5).map(|_| ())
        });
        out.push(KernelResult::memory(
            "layer_norm fwd",
            &shape,
            t,
            2 * rows * c * e,
            peak,
        ));
        let t = time_it(w, r, || -> Result<()> {
            x.zero_grad();
            x.layer_norm(Some(&g), Some(&b), 1e-5)?
                .sum_all()?
                .backward()
        });
        out.push(KernelResult::memory(
            "layer_norm f+b",
            &shape,
            t,
            5 * rows * c * e,
            peak,
        ));
    }

    let opts = |dh: usize| AttentionOptions {
        causal: true,
        scale: 1.0 / (dh as f64).sqrt(),
        temperature: 1.0,
    };
    for (b, h, n, dh) in [(64, 2, 49, 64), (32, 4, 64, 64)] {
        let q = randn(&[b, h, n, dh], 3).requires_grad_();
        let k = randn(&[b, h, n, dh], 4).requires_grad_();
        let v = randn(&[b, h, n, dh], 5).requires_grad_();
        let shape = format!("{b}x{h}x{n}x{dh}");
        let flops = attention_flops(b, h, n, dh);
        let t = time_it(w, r, || {
            let _g = no_grad();
            attention(&q, &k, &v, None, opts(dh)).map(|_| ())
        });
        out.push(KernelResult::compute(
            "attention fwd",
            &shape,
            t,
            flops,
            peak,
        ));
        let t = time_it(w, r, || -> Result<()> {
            for p in [&q, &k, &v] {
                p.zero_grad();
            }
            attention(&q, &k, &v, None, opts(dh))?.sum_all()?.backward()
        });
        out.push(KernelResult::compute(
            "attention f+b",
            &shape,
            t,
            3.0 * flops,
            peak,
        ));
    }

    // One decode step: 16 images x 2 heads against a 48-position cache.
    let (b, h, len, dh) = (16, 2, 48, 64);
    let mut cache = KvCache::<f32>::new(b, h, len + 1, dh).expect("a small cache");
    cache.append(&randn(&[b, h, len, dh], 6), &randn(&[b, h, len, dh], 7))?;
    let q = randn(&[b, h, 1, dh], 8);
    let t = time_it(w, r, || attention_decode(&q, &cache, opts(dh)).map(|_| ()));
    out.push(KernelResult::memory(
        "decode step",
        format!("{b}x{h}x{len}x{dh}"),
        t,
        2 * b * h * len * dh * e,
        peak,
    ));
    Ok(out)
}
