//! Fused ops at the sizes the TarFlow model uses: softmax rows of attention, layer norms of the
//! residual stream, attention forward and forward + backward (fused and, for scale, the
//! composed reference), and one KV-cached decode step.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use tarflow::ops::attention::{
    attention, attention_decode, attention_reference, AttentionOptions, KvCache,
};
use tarflow::{no_grad, Rng, Tensor};

fn randn(shape: &[usize], seed: u64) -> Tensor<f32> {
    Tensor::randn(shape, 0.0, 1.0, &mut Rng::new(seed))
}

fn softmax(c: &mut Criterion) {
    let x = randn(&[64 * 2 * 49, 49], 1);
    c.bench_function("softmax/fwd [6272,49]", |b| {
        b.iter(|| black_box(x.softmax(-1).unwrap()))
    });
    let xg = x.requires_grad_();
    let g = randn(&[64 * 2 * 49, 49], 2);
    c.bench_function("softmax/fwd+bwd [6272,49]", |b| {
        b.iter(|| {
            xg.softmax(-1).unwrap().backward_with(&g).unwrap();
            xg.zero_grad();
        })
    });
}

fn layer_norm(c: &mut Criterion) {
    for (rows, d) in [(64 * 49, 128), (32 * 64, 256)] {
        let x = randn(&[rows, d], 3);
        let w = randn(&[d], 4).requires_grad_();
        let bias = randn(&[d], 5).requires_grad_();
        c.bench_function(&format!("layer_norm/fwd [{rows},{d}]"), |b| {
            let _g = no_grad();
            b.iter(|| black_box(x.layer_norm(Some(&w), Some(&bias), 1e-5).unwrap()))
        });
        let xg = x.requires_grad_();
        let g = randn(&[rows, d], 6);
        c.bench_function(&format!("layer_norm/fwd+bwd [{rows},{d}]"), |b| {
            b.iter(|| {
                xg.layer_norm(Some(&w), Some(&bias), 1e-5)
                    .unwrap()
                    .backward_with(&g)
                    .unwrap();
                for t in [&xg, &w, &bias] {
                    t.zero_grad();
                }
            })
        });
    }
}

fn attention_benches(c: &mut Criterion) {
    for (bsz, h, n, dh) in [(64, 2, 49, 64), (32, 4, 64, 64)] {
        let shape = [bsz, h, n, dh];
        let (q, k, v) = (randn(&shape, 7), randn(&shape, 8), randn(&shape, 9));
        let opts = AttentionOptions {
            causal: true,
            scale: 1.0 / (dh as f32).sqrt() as f64,
            temperature: 1.0,
        };
        let tag = format!("B={bsz},H={h},N={n},Dh={dh}");
        c.bench_function(&format!("attention/fwd {tag}"), |b| {
            b.iter(|| black_box(attention(&q, &k, &v, None, opts).unwrap()))
        });
        let (qg, kg, vg) = (q.requires_grad_(), k.requires_grad_(), v.requires_grad_());
        let g = randn(&shape, 10);
        c.bench_function(&format!("attention/fwd+bwd {tag}"), |b| {
            b.iter(|| {
                attention(&qg, &kg, &vg, None, opts)
                    .unwrap()
                    .backward_with(&g)
                    .unwrap();
                for t in [&qg, &kg, &vg] {
                    t.zero_grad();
                }
            })
        });
        c.bench_function(&format!("attention_reference/fwd+bwd {tag}"), |b| {
            b.iter(|| {
                attention_reference(&qg, &kg, &vg, None, opts)
                    .unwrap()
                    .backward_with(&g)
                    .unwrap();
                for t in [&qg, &kg, &vg] {
                    t.zero_grad();
                }
            })
        });
    }
}

fn decode(c: &mut Criterion) {
    let (bsz, h, len, dh) = (16, 2, 48, 64);
    let mut cache = KvCache::<f32>::new(bsz, h, 64, dh).unwrap();
    cache
        .append(
            &randn(&[bsz, h, len, dh], 11),
            &randn(&[bsz, h, len, dh], 12),
        )
        .unwrap();
    let q = randn(&[bsz, h, 1, dh], 13);
    let opts = AttentionOptions {
        causal: true,
        scale: 0.125,
        temperature: 1.0,
    };
    c.bench_function("attention_decode B=16,H=2,len=48,Dh=64", |b| {
        b.iter(|| black_box(attention_decode(&q, &cache, opts).unwrap()))
    });
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = softmax, layer_norm, attention_benches, decode
}
criterion_main!(benches);
