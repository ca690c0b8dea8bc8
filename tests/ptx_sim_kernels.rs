//! Whole kernels compiled by nvcc (tests/ptx-fixtures/*.cu -> *.ptx) run through the PTX
//! interpreter via the `Driver` trait, against Rust references. Shapes are ragged and span
//! at least three tiles or blocks so that a missing barrier would show.
#![cfg(feature = "ptx-sim")]

mod common;

use common::gpu::{download, upload};
use common::worst;
use tarflow::gpu::{Driver, KernelArg, LaunchConfig, PtxModule, PtxSim};

const VEC_ADD: PtxModule = PtxModule {
    name: "vec_add",
    ptx: include_str!("ptx-fixtures/vec_add.ptx"),
};
const BLOCK_REDUCE: PtxModule = PtxModule {
    name: "block_reduce",
    ptx: include_str!("ptx-fixtures/block_reduce.ptx"),
};
const ROWS: PtxModule = PtxModule {
    name: "rows",
    ptx: include_str!("ptx-fixtures/rows.ptx"),
};
const GEMM: PtxModule = PtxModule {
    name: "gemm_tiled",
    ptx: include_str!("ptx-fixtures/gemm_tiled.ptx"),
};
const MMA: PtxModule = PtxModule {
    name: "mma_bf16",
    ptx: include_str!("ptx-fixtures/mma_bf16.ptx"),
};

/// Deterministic values in [-1, 1) (a small LCG; no dependence on the crate's RNG).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Largest relative error, NaN-safe (a NaN anywhere makes it NaN, which fails `<`).
fn max_rel_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    worst(
        got.iter()
            .zip(want)
            .map(|(&g, &w)| (g as f64 - w).abs() / (1.0 + w.abs())),
    )
}

#[test]
fn vec_add_grid_stride_matches_reference() {
    let d = PtxSim::new();
    let n = 1000; // ragged against 3 CTAs x 128 threads: the grid-stride loop runs 3 rounds
    let (a, b) = (values(n, 1), values(n, 2));
    let (pa, pb) = (upload::<f32>(&d, &a), upload::<f32>(&d, &b));
    let py = d.alloc(n * 4).unwrap();
    d.launch(
        &VEC_ADD,
        "vec_add",
        LaunchConfig::linear(3, 128),
        &[
            KernelArg::Ptr(pa),
            KernelArg::Ptr(pb),
            KernelArg::Ptr(py),
            KernelArg::U32(n as u32),
        ],
    )
    .unwrap();
    let y = download::<f32>(&d, py, n);
    for i in 0..n {
        assert_eq!(y[i].to_bits(), (a[i] + b[i]).to_bits(), "element {i}");
    }
    let c = d.last_counters().unwrap();
    assert_eq!(c.global_bytes_read, 2 * 4 * n as u64);
    assert_eq!(c.global_bytes_written, 4 * n as u64);
    assert_eq!(c.ctas, 3);
    assert!(c.fp32 > 0 && c.memory > 0 && c.control > 0);
}

#[test]
fn block_sum_matches_fixed_order_reference() {
    let d = PtxSim::new();
    let (n, block) = (1000usize, 256usize);
    let blocks = n.div_ceil(block);
    let x = values(n, 3);
    let px = upload::<f32>(&d, &x);
    let pout = d.alloc(blocks * 4).unwrap();
    d.launch(
        &BLOCK_REDUCE,
        "block_sum",
        LaunchConfig::linear(blocks as u32, block as u32),
        &[
            KernelArg::Ptr(px),
            KernelArg::Ptr(pout),
            KernelArg::U32(n as u32),
        ],
    )
    .unwrap();
    let got = download::<f32>(&d, pout, blocks);
    // The same order as the kernel: butterfly within each warp, then over the warp sums.
    let bfly = |mut v: [f32; 32]| {
        for o in [16, 8, 4, 2, 1] {
            let prev = v;
            for (l, x) in v.iter_mut().enumerate() {
                *x = prev[l] + prev[l ^ o];
            }
        }
        v[0]
    };
    for (b, &g) in got.iter().enumerate() {
        let mut partial = [0f32; 32];
        for (w, p) in partial.iter_mut().enumerate().take(block / 32) {
            let mut v = [0f32; 32];
            for (l, e) in v.iter_mut().enumerate() {
                let i = b * block + w * 32 + l;
                *e = if i < n { x[i] } else { 0.0 };
            }
            *p = bfly(v);
        }
        assert_eq!(g.to_bits(), bfly(partial).to_bits(), "block {b}");
    }
    let c = d.last_counters().unwrap();
    assert!(c.sync > 0, "shuffles and barriers are counted");
}

#[test]
fn atomics_accumulate_sum_and_max() {
    let d = PtxSim::new();
    let n = 700;
    let x: Vec<f32> = values(n, 4).iter().map(|v| v.abs()).collect();
    let px = upload::<f32>(&d, &x);
    let psum = upload::<f32>(&d, &[0.0]);
    let pmax = upload::<f32>(&d, &[0.0]);
    d.launch(
        &BLOCK_REDUCE,
        "atomic_sum_max",
        LaunchConfig::linear(3, 256),
        &[
            KernelArg::Ptr(px),
            KernelArg::Ptr(psum),
            KernelArg::Ptr(pmax),
            KernelArg::U32(n as u32),
        ],
    )
    .unwrap();
    let sum = download::<f32>(&d, psum, 1)[0] as f64;
    let max = download::<f32>(&d, pmax, 1)[0];
    let want: f64 = x.iter().map(|&v| v as f64).sum();
    assert!((sum - want).abs() < 1e-4 * want, "sum {sum} vs {want}");
    let want_max = x.iter().cloned().fold(0.0f32, f32::max);
    assert_eq!(max.to_bits(), want_max.to_bits());
}

fn softmax_ref(x: &[f32], rows: usize, cols: usize) -> Vec<f64> {
    let mut out = vec![0.0; rows * cols];
    for r in 0..rows {
        let row = &x[r * cols..(r + 1) * cols];
        let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let s: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
        for c in 0..cols {
            out[r * cols + c] = (row[c] as f64 - m).exp() / s;
        }
    }
    out
}

#[test]
fn softmax_rows_match_reference() {
    let d = PtxSim::new();
    let (rows, cols) = (7usize, 100usize); // 4 column strides of 32, ragged; 2 CTAs of 4 warps
    let x: Vec<f32> = values(rows * cols, 5).iter().map(|v| 8.0 * v).collect();
    let px = upload::<f32>(&d, &x);
    let py = d.alloc(rows * cols * 4).unwrap();
    d.launch(
        &ROWS,
        "softmax_rows",
        LaunchConfig::linear(2, 128),
        &[
            KernelArg::Ptr(px),
            KernelArg::Ptr(py),
            KernelArg::U32(rows as u32),
            KernelArg::U32(cols as u32),
        ],
    )
    .unwrap();
    let y = download::<f32>(&d, py, rows * cols);
    let err = max_rel_err(&y, &softmax_ref(&x, rows, cols));
    assert!(err < 1e-6, "softmax max error {err}");
    assert!(
        d.last_counters().unwrap().sfu > 0,
        "ex2.approx counts as SFU"
    );
}

#[test]
fn layer_norm_rows_match_reference() {
    let d = PtxSim::new();
    let (rows, cols) = (5usize, 70usize);
    let x: Vec<f32> = values(rows * cols, 6)
        .iter()
        .map(|v| 3.0 * v + 0.5)
        .collect();
    let w = values(cols, 7);
    let b = values(cols, 8);
    let eps = 1e-5f32;
    let (px, pw, pb) = (
        upload::<f32>(&d, &x),
        upload::<f32>(&d, &w),
        upload::<f32>(&d, &b),
    );
    let py = d.alloc(rows * cols * 4).unwrap();
    d.launch(
        &ROWS,
        "layer_norm_rows",
        LaunchConfig::linear(3, 64),
        &[
            KernelArg::Ptr(px),
            KernelArg::Ptr(pw),
            KernelArg::Ptr(pb),
            KernelArg::Ptr(py),
            KernelArg::U32(rows as u32),
            KernelArg::U32(cols as u32),
            KernelArg::F32(eps),
        ],
    )
    .unwrap();
    let y = download::<f32>(&d, py, rows * cols);
    let mut want = vec![0.0; rows * cols];
    for r in 0..rows {
        let row: Vec<f64> = x[r * cols..(r + 1) * cols]
            .iter()
            .map(|&v| v as f64)
            .collect();
        let mean = row.iter().sum::<f64>() / cols as f64;
        let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / cols as f64;
        let rstd = 1.0 / (var + eps as f64).sqrt();
        for c in 0..cols {
            want[r * cols + c] = (row[c] - mean) * rstd * w[c] as f64 + b[c] as f64;
        }
    }
    let err = max_rel_err(&y, &want);
    assert!(err < 1e-5, "layer_norm max error {err}");
}

fn gemm_ref(a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k)
                .map(|p| a[i * k + p] as f64 * b[p * n + j] as f64)
                .sum();
        }
    }
    c
}

/// Runs the tiled GEMM and checks it; returns the launch's seconds.
fn run_gemm_tiled(d: &PtxSim, kernel: &str, m: usize, n: usize, k: usize) -> tarflow::Result<f64> {
    let (a, b) = (values(m * k, 9), values(k * n, 10));
    let (pa, pb) = (upload::<f32>(d, &a), upload::<f32>(d, &b));
    let pc = d.alloc(m * n * 4)?;
    let t = std::time::Instant::now();
    d.launch(
        &GEMM,
        kernel,
        LaunchConfig {
            grid: (n.div_ceil(16) as u32, m.div_ceil(16) as u32, 1),
            block: (16, 16, 1),
            shared_bytes: 0,
        },
        &[
            KernelArg::Ptr(pa),
            KernelArg::Ptr(pb),
            KernelArg::Ptr(pc),
            KernelArg::U32(m as u32),
            KernelArg::U32(n as u32),
            KernelArg::U32(k as u32),
        ],
    )?;
    let secs = t.elapsed().as_secs_f64();
    let c = download::<f32>(d, pc, m * n);
    let err = max_rel_err(&c, &gemm_ref(&a, &b, m, n, k));
    assert!(err < 1e-5, "{kernel} max error {err}");
    Ok(secs)
}

#[test]
fn tiled_gemm_on_ragged_shapes_matches_reference() {
    let d = PtxSim::new();
    // K = 53: four k-tiles, the last ragged; M and N ragged against 16.
    run_gemm_tiled(&d, "gemm_tiled", 37, 21, 53).unwrap();
    let c = d.last_counters().unwrap();
    assert_eq!(c.ctas, 3 * 2);
    // Worked by hand: a warp covers two tile rows. A-tile stores (row stride 16 words) hit
    // all 32 banks once; the reads are broadcasts or 16 consecutive words. The B-tile stores
    // (row stride 17 words) touch words 17 r + tx and 17 (r + 1) + tx for tx < 16, i.e.
    // banks 17 r .. 17 r + 15 and 17 r + 17 .. 17 r + 32, so bank 17 r mod 32 is hit twice:
    // one extra wavefront per warp store.
    // 8 warps x 4 k-tiles x 6 CTAs = 192.
    assert_eq!(c.shared_bank_conflicts, 8 * 4 * 6);
}

fn bf16_bits(v: f32) -> u16 {
    half::bf16::from_f32(v).to_bits()
}

/// Runs the bf16 mma GEMM: its output, the reference, and the launch's seconds.
fn run_mma(d: &PtxSim, m: usize, n: usize, k: usize) -> (Vec<f32>, Vec<f64>, f64) {
    let a: Vec<u16> = values(m * k, 11).iter().map(|&v| bf16_bits(v)).collect();
    let b: Vec<u16> = values(k * n, 12).iter().map(|&v| bf16_bits(v)).collect();
    let pa = d.alloc(a.len() * 2).unwrap();
    d.upload(pa, bytemuck::cast_slice(&a)).unwrap();
    let pb = d.alloc(b.len() * 2).unwrap();
    d.upload(pb, bytemuck::cast_slice(&b)).unwrap();
    let pc = d.alloc(m * n * 4).unwrap();
    let t = std::time::Instant::now();
    d.launch(
        &MMA,
        "mma_bf16_gemm",
        LaunchConfig {
            grid: (n.div_ceil(16) as u32, m.div_ceil(32) as u32, 1),
            block: (128, 1, 1),
            shared_bytes: 0,
        },
        &[
            KernelArg::Ptr(pa),
            KernelArg::Ptr(pb),
            KernelArg::Ptr(pc),
            KernelArg::U32(m as u32),
            KernelArg::U32(n as u32),
            KernelArg::U32(k as u32),
        ],
    )
    .unwrap();
    let secs = t.elapsed().as_secs_f64();
    let af: Vec<f32> = a
        .iter()
        .map(|&h| half::bf16::from_bits(h).to_f32())
        .collect();
    let bf: Vec<f32> = b
        .iter()
        .map(|&h| half::bf16::from_bits(h).to_f32())
        .collect();
    (
        download::<f32>(d, pc, m * n),
        gemm_ref(&af, &bf, m, n, k),
        secs,
    )
}

#[test]
fn bf16_mma_gemm_with_ldmatrix_and_cp_async_matches_reference() {
    let d = PtxSim::new();
    // K = 104: four k-tiles of 32 (the last one partial), so the double buffer is reused
    // twice; M = 45 and N = 24 are ragged against the 32 x 16 CTA tile.
    let (got, want, _) = run_mma(&d, 45, 24, 104);
    let err = max_rel_err(&got, &want);
    assert!(err < 1e-5, "mma gemm max error {err}");
    let c = d.last_counters().unwrap();
    assert!(c.tensor > 0 && c.memory > 0);
}

#[test]
fn pack_bf16x2_puts_the_first_source_in_the_upper_half() {
    let d = PtxSim::new();
    let x = [1.0f32, -2.0, 1.0 + 1.0 / 256.0, f32::NAN, 3.0e38, -0.0];
    let px = upload::<f32>(&d, &x);
    let pout = d.alloc(3 * 4).unwrap();
    d.launch(
        &MMA,
        "pack_bf16x2",
        LaunchConfig::linear(1, 32),
        &[KernelArg::Ptr(px), KernelArg::Ptr(pout), KernelArg::U32(3)],
    )
    .unwrap();
    let mut out = [0u32; 3];
    d.download(pout, bytemuck::cast_slice_mut(&mut out))
        .unwrap();
    // __floats2bfloat162_rn(lo, hi) compiles to cvt.rn.bf16x2.f32 d, hi, lo.
    assert_eq!(out[0], 0xc000_3f80, "{:08x}", out[0]);
    // 1 + 2^-8 is exactly halfway between bf16 1.0 and 1.0078125: ties to even (1.0);
    // NaN becomes the canonical 0x7fff.
    assert_eq!(out[1], 0x7fff_3f80, "{:08x}", out[1]);
    // 3e38 rounds to bf16 0x7f62; -0.0 keeps its sign.
    assert_eq!(out[2], 0x8000_7f62, "{:08x}", out[2]);
}

/// CPU time of this thread in seconds (Linux: /proc/thread-self/schedstat), so that the
/// figure does not depend on how loaded the machine is; None elsewhere.
fn thread_cpu_seconds() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: f64 = s.split_whitespace().next()?.parse().ok()?;
    Some(ns * 1e-9)
}

/// Throughput figure for docs/ptx-interpreter.md, not a check: run with
/// `cargo test --release --test ptx_sim_kernels -- --ignored --nocapture`.
#[test]
#[ignore]
fn measure_interpreter_speed_on_the_gemm_fixtures() {
    let d = PtxSim::new();
    let report = |what: &str, wall: f64, cpu: f64, d: &PtxSim| {
        let n = d.last_counters().unwrap().warp_instructions() as f64;
        println!(
            "{what}: {n} warp-instructions, wall {wall:.3} s, cpu {cpu:.3} s, {:.2} M warp-instructions per cpu-second",
            n / cpu / 1e6
        );
    };
    for (m, n, k) in [(128, 128, 128), (256, 256, 256)] {
        let c0 = thread_cpu_seconds().unwrap_or(0.0);
        let (got, want, wall) = run_mma(&d, m, n, k);
        let cpu = thread_cpu_seconds().unwrap_or(0.0) - c0;
        assert!(max_rel_err(&got, &want) < 1e-5);
        // The CPU time includes the host reference; the launch dominates it.
        report(&format!("bf16 mma GEMM {m}x{n}x{k}"), wall, cpu, &d);
        let c0 = thread_cpu_seconds().unwrap_or(0.0);
        let wall = run_gemm_tiled(&d, "gemm_tiled", m, n, k).unwrap();
        let cpu = thread_cpu_seconds().unwrap_or(0.0) - c0;
        report(&format!("f32 tiled GEMM {m}x{n}x{k}"), wall, cpu, &d);
    }
}

#[test]
fn dynamic_shared_memory_is_sized_by_the_launch() {
    let d = PtxSim::new();
    let (n, block) = (300usize, 128u32);
    let x: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let px = upload::<f32>(&d, &x);
    let pout = d.alloc(12).unwrap();
    let cfg = |bytes| LaunchConfig {
        grid: (3, 1, 1),
        block: (block, 1, 1),
        shared_bytes: bytes,
    };
    let args = [
        KernelArg::Ptr(px),
        KernelArg::Ptr(pout),
        KernelArg::U32(n as u32),
    ];
    d.launch(
        &BLOCK_REDUCE,
        "block_sum_dynamic",
        cfg(block / 32 * 4),
        &args,
    )
    .unwrap();
    let got = download::<f32>(&d, pout, 3);
    for (b, &g) in got.iter().enumerate() {
        let want: f32 = (b * 128..((b + 1) * 128).min(n)).map(|i| i as f32).sum();
        assert_eq!(g, want, "block {b}");
    }
    // Without the dynamic bytes, warp 0's partial lands past the end of shared memory.
    let msg = d
        .launch(&BLOCK_REDUCE, "block_sum_dynamic", cfg(0), &args)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("outside the CTA's"), "{msg}");
}
