//! Elementwise and reduction kernels on ~1 MiB (parallel) and 16 KiB (single-thread) f32
//! tensors. Throughput is in bytes that must move at least once per call.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tarflow::{Rng, Tensor};

fn elementwise(c: &mut Criterion) {
    let mut rng = Rng::new(3);
    for n in [1usize << 18, 1 << 12] {
        let a = Tensor::<f32>::randn(&[n], 0.0, 1.0, &mut rng);
        let b = Tensor::<f32>::randn(&[n], 0.0, 1.0, &mut rng);
        let kib = n * 4 / 1024;
        let mut g = c.benchmark_group(format!("elementwise_{kib}KiB"));
        let bytes = |arrays: usize| Throughput::Bytes((arrays * n * 4) as u64);
        g.throughput(bytes(3));
        g.bench_function(BenchmarkId::new("add", n), |bch| {
            bch.iter(|| a.add(&b).unwrap())
        });
        g.bench_function(BenchmarkId::new("mul", n), |bch| {
            bch.iter(|| a.mul(&b).unwrap())
        });
        g.throughput(bytes(2));
        g.bench_function(BenchmarkId::new("gelu", n), |bch| bch.iter(|| a.gelu()));
        g.throughput(bytes(1));
        g.bench_function(BenchmarkId::new("sum", n), |bch| bch.iter(|| a.sum_all()));
        g.finish();
    }
}

criterion_group!(benches, elementwise);
criterion_main!(benches);
