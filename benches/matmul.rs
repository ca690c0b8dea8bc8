//! f32 matrix products through the tensor API (`matmul`, and `linear` with the weight as
//! `[out, in]`) against the crate's GEMM (`tarflow::ops::gemm::sgemm`) and matrixmultiply's
//! `sgemm`, each called directly on the same shapes.
//! Criterion reports throughput in elements/s where one element is one flop (2*M*N*K).
//!
//! `cargo bench --bench matmul -- --quick` runs the Criterion groups;
//! `cargo bench --bench matmul -- --table [--json]` instead measures this machine's peak and
//! prints `tarflow::bench::run_kernel_benches` as a table (and JSON), as recorded in
//! `docs/performance.md`.

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use tarflow::bench::kernels::{sgemm_row_major, Sgemm, MATMUL_SHAPES};
use tarflow::{Rng, Tensor};

fn matmul(c: &mut Criterion) {
    let mut rng = Rng::new(1);
    for &(m, k, n) in &MATMUL_SHAPES {
        let a = Tensor::<f32>::randn(&[m, k], 0.0, 1.0, &mut rng);
        let b = Tensor::<f32>::randn(&[k, n], 0.0, 1.0, &mut rng);
        let w = b.t().unwrap().contiguous().unwrap();
        // Fixes matrixmultiply's thread count (read once per process) before the baseline.
        let _ = a.matmul(&b).unwrap();
        let (av, bv) = (a.to_vec(), b.to_vec());
        let mut out = vec![0f32; m * n];
        let id = format!("{m}x{k}x{n}");
        let mut g = c.benchmark_group("matmul");
        g.throughput(Throughput::Elements(2 * (m * n * k) as u64));
        g.sample_size(20);
        g.bench_function(BenchmarkId::new("tensor_matmul", &id), |bch| {
            bch.iter(|| a.matmul(&b).unwrap())
        });
        g.bench_function(BenchmarkId::new("tensor_linear", &id), |bch| {
            bch.iter(|| a.linear(&w, None).unwrap())
        });
        g.bench_function(BenchmarkId::new("gemm_direct", &id), |bch| {
            bch.iter(|| sgemm_row_major(Sgemm::Ours, m, k, n, &av, &bv, &mut out))
        });
        g.bench_function(BenchmarkId::new("sgemm_direct", &id), |bch| {
            bch.iter(|| sgemm_row_major(Sgemm::MatrixMultiply, m, k, n, &av, &bv, &mut out))
        });
        g.finish();
    }
}

criterion_group!(benches, matmul);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--table") {
        use tarflow::bench::{format_table, measure_peak, run_kernel_benches};
        use tarflow::bench::{BenchConfig, PeakConfig};
        let quick = args.iter().any(|a| a == "--quick");
        let peak = measure_peak(&if quick {
            PeakConfig::quick()
        } else {
            PeakConfig::default()
        });
        println!("{peak:#?}");
        let cfg = if quick {
            BenchConfig::quick()
        } else {
            BenchConfig::default()
        };
        let results = run_kernel_benches(&peak, &cfg);
        print!("{}", format_table(&results));
        if args.iter().any(|a| a == "--json") {
            println!(
                "{}",
                serde_json::to_string_pretty(&(peak, results)).expect("plain data")
            );
        }
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
