//! The CUDA math library as nvcc inlines it (tests/ptx-fixtures/math_zoo.cu): expf, logf,
//! tanhf, erff, GELU, powf, sinf/cosf (including the Payne-Hanek path with its `.local`
//! array), rounding functions, 16-bit conversions and bf16x2 arithmetic, each against an
//! f64 reference within CUDA's documented ulp bounds.
#![cfg(feature = "ptx-sim")]

mod common;

use common::worst;
use tarflow::gpu::{Driver, KernelArg, LaunchConfig, PtxModule, PtxSim};

const ZOO: PtxModule = PtxModule {
    name: "math_zoo",
    ptx: include_str!("ptx-fixtures/math_zoo.ptx"),
};
const COLS: usize = 24;

fn erf(x: f64) -> f64 {
    libm::erf(x)
}

fn reference(v: f32, i: usize) -> [f64; COLS] {
    let x = v as f64;
    let a = (v.abs()) as f64;
    let a32 = v.abs();
    let gelu_erf = 0.5 * x * (1.0 + erf(x * std::f64::consts::FRAC_1_SQRT_2));
    let inner = 0.7978845608 * (x + 0.044715 * x * x * x);
    let gelu_tanh = 0.5 * x * (1.0 + inner.tanh());
    let bf = half::bf16::from_f32(v).to_f32() as f64;
    let hf = half::f16::from_f32(v).to_f32() as f64;
    let ints = ((v * 1000.0) as i32) as f64 + ((a32 * 1000.0) as u32) as f64;
    let rounds =
        ((v * 3.0).floor() + (v * 5.0).ceil() + (v * 7.0).round_ties_even() + (v * 9.0).trunc())
            as f64;
    [
        x.exp(),
        x.exp(),
        (a + 1.0).ln(),
        (a + 1.0).ln(),
        x.tanh(),
        erf(x),
        a.sqrt(),
        1.0 / (a + 1.0).sqrt(),
        (1.0f32 / (v + 3.0)) as f64,
        x / (a + 2.0),
        x.max(0.0) + x.min(0.0) * 0.5,
        2f64.copysign(x),
        rounds,
        bf,
        hf,
        ints,
        gelu_erf,
        gelu_tanh,
        a.ln_1p(),
        (a + 0.5).powf(1.5),
        x.sin() + x.cos(),
        0.0,
        ((i / 7) + (i % 5)) as f64,
        x.exp2() + (a + 1.0).log2(),
    ]
}

#[test]
fn math_library_functions_match_f64_references() {
    let mut x: Vec<f32> = (0..200).map(|i| (i as f32 - 100.0) * 0.041).collect();
    // Specials and a large argument that sends sinf/cosf down the slow path.
    x.extend_from_slice(&[0.0, -0.0, 20.0, -20.0, 1e-3, 2.0e5, -3.1e5]);
    let n = x.len();
    let d = PtxSim::new();
    let px = d.alloc(n * 4).unwrap();
    d.upload(px, bytemuck::cast_slice(&x)).unwrap();
    let py = d.alloc(n * COLS * 4).unwrap();
    d.launch(
        &ZOO,
        "math_zoo",
        LaunchConfig::linear(n.div_ceil(64) as u32, 64),
        &[
            KernelArg::Ptr(px),
            KernelArg::Ptr(py),
            KernelArg::U32(n as u32),
        ],
    )
    .unwrap();
    let mut y = vec![0f32; n * COLS];
    d.download(py, bytemuck::cast_slice_mut(&mut y)).unwrap();
    // Relative error bounds per column (CUDA's documented ulp bounds with some margin;
    // exact operations get 0).
    let tol: [f64; COLS] = [
        1e-6, 1e-5, 1e-6, 1e-6, 1e-6, 1e-6, 0.0, 1e-6, 0.0, 1e-6, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
        2e-6, 2e-6, 1e-6, 2e-6, 1e-6, 0.0, 0.0, 1e-6,
    ];
    for col in 0..COLS {
        let errs = (0..n).map(|i| {
            let (g, w) = (y[i * COLS + col] as f64, reference(x[i], i)[col]);
            if w.is_infinite() || g.is_infinite() {
                if g == w {
                    0.0
                } else {
                    f64::INFINITY
                }
            } else if tol[col] == 0.0 {
                // Exact columns: the f32 result must equal the reference rounded to f32.
                if g == (w as f32) as f64 {
                    0.0
                } else {
                    f64::INFINITY
                }
            } else {
                (g - w).abs() / (1.0 + w.abs())
            }
        });
        let e = worst(errs);
        assert!(e <= tol[col], "column {col}: error {e} above {}", tol[col]);
    }
}

#[test]
fn bf16x2_arithmetic_rounds_each_half_once() {
    let a: Vec<f32> = (0..64).map(|i| (i as f32 - 31.5) * 0.0371).collect();
    let b: Vec<f32> = (0..64).map(|i| 1.0 - (i as f32) * 0.0177).collect();
    let bits = |v: &[f32]| -> Vec<u16> {
        v.iter()
            .map(|&x| half::bf16::from_f32(x).to_bits())
            .collect()
    };
    let (ab, bb) = (bits(&a), bits(&b));
    let pairs = 32;
    let d = PtxSim::new();
    let pa = d.alloc(128).unwrap();
    d.upload(pa, bytemuck::cast_slice(&ab)).unwrap();
    let pb = d.alloc(128).unwrap();
    d.upload(pb, bytemuck::cast_slice(&bb)).unwrap();
    let pout = d.alloc(128).unwrap();
    let psum = d.alloc(128).unwrap();
    d.launch(
        &ZOO,
        "bf16x2_ops",
        LaunchConfig::linear(1, 64),
        &[
            KernelArg::Ptr(pa),
            KernelArg::Ptr(pb),
            KernelArg::Ptr(pout),
            KernelArg::Ptr(psum),
            KernelArg::U32(pairs),
        ],
    )
    .unwrap();
    let mut out = vec![0u16; 64];
    d.download(pout, bytemuck::cast_slice_mut(&mut out))
        .unwrap();
    let mut sums = vec![0f32; 32];
    d.download(psum, bytemuck::cast_slice_mut(&mut sums))
        .unwrap();
    let bf = |x: f64| half::bf16::from_f64(x);
    for i in 0..64 {
        let (x, y) = (
            half::bf16::from_bits(ab[i]).to_f64(),
            half::bf16::from_bits(bb[i]).to_f64(),
        );
        // __hmul2 = fma(a, b, -0.0); __hfma2 rounds a*b + p once; __hadd2 = fma(p, 1.0, q).
        let p = bf(x * y);
        let q = bf(x * y + p.to_f64());
        let want = bf(p.to_f64() + q.to_f64());
        assert_eq!(out[i], want.to_bits(), "element {i}");
        if i % 2 == 1 {
            let qlo = bf(half::bf16::from_bits(ab[i - 1]).to_f64()
                * half::bf16::from_bits(bb[i - 1]).to_f64());
            let qlo = bf(half::bf16::from_bits(ab[i - 1]).to_f64()
                * half::bf16::from_bits(bb[i - 1]).to_f64()
                + qlo.to_f64());
            assert_eq!(sums[i / 2], qlo.to_f32() + q.to_f32(), "pair {}", i / 2);
        }
    }
}
