//! Speed of the PTX interpreter on production kernels, launched through the typed wrappers of
//! `tarflow::gpu::kernels` on a `PtxSim`. Throughput is in warp-instructions (the launch's
//! `last_counters()`), so criterion's "elem/s" reads as warp-instructions per second.
//!
//! `cargo bench --bench ptx_sim` (add a name, e.g. `gemm_bf16`, to run one).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tarflow::gpu::kernels::{
    gemm_bf16, gemm_f32, layer_norm_fwd_f32, reduce_rows_f32, unary_f32, Bf16Layout, GemmBf16,
    GemmF32, ReduceOp, UnaryOp,
};
use tarflow::gpu::{DevicePtr, Driver, PtxSim};

/// Deterministic values in [-1, 1) (a 64-bit LCG), so every run interprets the same data.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn upload_f32(d: &PtxSim, v: &[f32]) -> DevicePtr {
    let p = d.alloc(v.len() * 4).expect("alloc");
    d.upload(p, bytemuck::cast_slice(v)).expect("upload");
    p
}

fn upload_bf16(d: &PtxSim, v: &[f32]) -> DevicePtr {
    let bits: Vec<u16> = v
        .iter()
        .map(|&x| half::bf16::from_f32(x).to_bits())
        .collect();
    let p = d.alloc(bits.len() * 2).expect("alloc");
    d.upload(p, bytemuck::cast_slice(&bits)).expect("upload");
    p
}

/// Runs `launch` once to read its warp-instruction count, then benchmarks it.
fn bench_launch(c: &mut Criterion, name: &str, d: &PtxSim, launch: impl Fn()) {
    launch();
    let counters = d.last_counters().expect("the launch succeeded");
    // The counters are part of the interpreter's contract: printed so that a change to the
    // interpreter can be checked to leave them as they were (`-- --test` runs just this).
    eprintln!("{name}: {counters:?}");
    let n = counters.warp_instructions();
    let mut g = c.benchmark_group("ptx_sim");
    g.sample_size(10);
    g.throughput(Throughput::Elements(n));
    g.bench_function(name, |b| b.iter(&launch));
    g.finish();
}

fn gemm(c: &mut Criterion) {
    let d = PtxSim::new();
    let s = 256usize;
    let a = values(s * s, 1);
    let b = values(s * s, 2);
    let out = d.alloc(s * s * 4).expect("alloc");
    let (pa, pb) = (upload_f32(&d, &a), upload_f32(&d, &b));
    let f32_gemm = GemmF32 {
        m: s,
        n: s,
        k: s,
        batch: 1,
        c: out,
        c_rs: s,
        c_bs: 0,
        a: pa,
        a_rs: s,
        a_cs: 1,
        a_bs: 0,
        b: pb,
        b_rs: s,
        b_cs: 1,
        b_bs: 0,
        bias: None,
        alpha: 1.0,
        beta: 0.0,
    };
    bench_launch(c, "gemm_f32_256", &d, || {
        gemm_f32(&d, &f32_gemm).expect("gemm_f32")
    });
    let (ha, hb) = (upload_bf16(&d, &a), upload_bf16(&d, &b));
    let bf16_gemm = GemmBf16 {
        layout: Bf16Layout::NN,
        m: s,
        n: s,
        k: s,
        batch: 1,
        c: out,
        ldc: s,
        c_bs: 0,
        a: ha,
        lda: s,
        a_bs: 0,
        b: hb,
        ldb: s,
        b_bs: 0,
        bias: None,
        alpha: 1.0,
        beta: 0.0,
    };
    bench_launch(c, "gemm_bf16_nn_256", &d, || {
        gemm_bf16(&d, &bf16_gemm).expect("gemm_bf16")
    });
}

fn rows(c: &mut Criterion) {
    let d = PtxSim::new();
    let (rows, dim) = (1024usize, 256usize);
    let x = upload_f32(&d, &values(rows * dim, 3));
    let w = upload_f32(&d, &values(dim, 4));
    let b = upload_f32(&d, &values(dim, 5));
    let y = d.alloc(rows * dim * 4).expect("alloc");
    let stats = d.alloc(rows * 2 * 4).expect("alloc");
    bench_launch(c, "layer_norm_fwd_1024x256", &d, || {
        layer_norm_fwd_f32(&d, y, Some(stats), x, Some(w), Some(b), rows, dim, 1e-5)
            .expect("layer_norm_fwd_f32")
    });
    let sums = d.alloc(rows * 4).expect("alloc");
    bench_launch(c, "reduce_rows_sum_1024x256", &d, || {
        reduce_rows_f32(&d, ReduceOp::Sum, sums, x, rows, dim, 1.0, false).expect("reduce_rows")
    });
}

fn elementwise(c: &mut Criterion) {
    let d = PtxSim::new();
    let n = 1usize << 20;
    let x = upload_f32(&d, &values(n, 6));
    let out = d.alloc(n * 4).expect("alloc");
    bench_launch(c, "unary_gelu_1M", &d, || {
        unary_f32(&d, UnaryOp::Gelu, out, x, &[1], &[n]).expect("unary_f32")
    });
}

criterion_group!(benches, gemm, rows, elementwise);
criterion_main!(benches);
