//! `ptx/elementwise.cu`: every unary and binary op code against the CPU's tensor ops (the
//! backward codes against the CPU's autograd), over transposed and broadcast views.

use tarflow::gpu::kernels::{binary_f32, unary_f32, BinaryOp, UnaryOp};
use tarflow::gpu::Driver;
use tarflow::{Rng, Tensor};

use crate::harness::*;

/// Ops the kernel computes with IEEE-exact operations in the CPU's order (bit-exact), and
/// the rest (CUDA's libm, or an erf polynomial whose bits depend on the CPU's FMA path):
/// relative tolerance.
fn unary_tolerance(op: UnaryOp) -> Option<(f64, f64)> {
    use UnaryOp::*;
    match op {
        Neg | Sqrt | Square | Relu | Abs | Clamp { .. } | AddScalar(_) | MulScalar(_) | NonZero => {
            None
        }
        Gelu if cpu_fuses() => None,
        _ => Some((1e-5, 1e-7)),
    }
}

/// Whether the CPU ops take their fused-multiply-add path (src/ops/simd.rs: x86-64 with AVX2
/// and FMA), the one whose GELU polynomial the kernel reproduces bit for bit.
fn cpu_fuses() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Backward codes built from IEEE-exact operations in the CPU's order match the CPU's
/// autograd bit for bit; those through CUDA's libm (exp in softplus', tanh, powf) within a
/// tolerance.
fn grad_exact(op: BinaryOp) -> bool {
    use BinaryOp::*;
    match op {
        SoftplusBackward | GeluTanhBackward | PowBackward(_) => false,
        GeluBackward => cpu_fuses(),
        _ => true,
    }
}

/// The CPU op for `op` with the scalar parameters used below.
fn cpu_unary(op: UnaryOp, x: &Tensor<f32>) -> Tensor<f32> {
    use UnaryOp::*;
    let y = match op {
        Neg => x.neg(),
        Exp => x.exp(),
        Log => x.log(),
        Sqrt => x.sqrt(),
        Square => x.square(),
        Tanh => x.tanh(),
        Sigmoid => x.sigmoid(),
        Softplus => x.softplus(),
        Gelu => x.gelu(),
        GeluTanh => x.gelu_tanh(),
        Relu => x.relu(),
        Abs => x.abs(),
        PowScalar(p) => x.powf(p),
        Clamp { lo, hi } => x.clamp(lo, hi),
        AddScalar(s) => x.add_scalar(s),
        MulScalar(s) => x.mul_scalar(s),
        // No public tensor op: the 0/1 mask from its definition.
        NonZero => Tensor::from_vec(
            x.to_vec()
                .iter()
                .map(|&v| if v != 0.0 { 1.0 } else { 0.0 })
                .collect(),
            x.shape(),
        ),
    };
    y.unwrap()
}

const POW: f32 = 1.75;
const LO: f32 = -0.5;
const HI: f32 = 1.25;
const SCALAR: f32 = -2.625;

/// Every unary op, with the scalar parameters used below.
fn unary_ops() -> Vec<UnaryOp> {
    UnaryOp::EVERY
        .iter()
        .map(|&op| match op {
            UnaryOp::PowScalar(_) => UnaryOp::PowScalar(POW as f64),
            UnaryOp::Clamp { .. } => UnaryOp::Clamp {
                lo: LO as f64,
                hi: HI as f64,
            },
            UnaryOp::AddScalar(_) => UnaryOp::AddScalar(SCALAR as f64),
            UnaryOp::MulScalar(_) => UnaryOp::MulScalar(SCALAR as f64),
            op => op,
        })
        .collect()
}

/// Edge inputs every op sees: NaN, infinities, signed zeros, subnormals, values where
/// exp overflows or underflows, the erf polynomial's split points and clamp's bounds.
const SPECIALS: [f32; 17] = [
    f32::NAN,
    f32::INFINITY,
    f32::NEG_INFINITY,
    0.0,
    -0.0,
    1.0e-40,
    -1.0e-40,
    100.0,
    -100.0,
    20.0,
    -20.0,
    0.5,
    -0.5,
    1.25,
    2.5,
    -2.5,
    4.0,
];

/// The same for ops defined on positive inputs (0 and infinity included).
const POSITIVE_SPECIALS: [f32; 7] = [f32::NAN, f32::INFINITY, 0.0, 1.0e-40, 1.0e30, 1.0, 4.0];

/// Inputs inside the op's domain: positive for log, sqrt and powf.
fn positive_domain(op: UnaryOp) -> bool {
    matches!(op, UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::PowScalar(_))
}

fn unary_all(d: &dyn Driver) {
    let mut rng = Rng::new(21);
    // A [37, 29] matrix read transposed: the kernel walks a [29, 37] view with strides
    // (1, 29), over five CTAs, the last ragged.
    let (r, c) = (37usize, 29usize);
    let raw = uniform(&mut rng, r * c, -6.0, 6.0);
    for op in unary_ops() {
        let mut xs: Vec<f32> = if positive_domain(op) {
            raw.iter().map(|v| v.abs() + 1e-3).collect()
        } else {
            raw.clone()
        };
        let specials: &[f32] = if positive_domain(op) {
            &POSITIVE_SPECIALS
        } else {
            &SPECIALS
        };
        xs[..specials.len()].copy_from_slice(specials);
        let x = Tensor::from_vec(xs.clone(), &[r, c]).unwrap();
        let want = cpu_unary(op, &x.t().unwrap()).to_vec();
        let src = upload::<f32>(d, &xs);
        let out = poisoned_f32(d, r * c);
        unary_f32(d, op, out, src, &[1, c as isize], &[c, r]).unwrap();
        let got = download::<f32>(d, out, r * c);
        let what = format!("unary {op:?} on {}", d.name());
        match unary_tolerance(op) {
            None => assert_bits(&what, &got, &want),
            Some((rel, abs)) => assert_close(&what, &got, &wide(&want), rel, abs),
        }
    }
    // One element, and an empty launch that must not write.
    let src = upload::<f32>(d, &[4.0]);
    let out = poisoned_f32(d, 2);
    unary_f32(d, UnaryOp::Sqrt, out, src, &[1], &[1]).unwrap();
    unary_f32(d, UnaryOp::Sqrt, out.offset(4), src, &[1, 1], &[3, 0]).unwrap();
    let got = download::<f32>(d, out, 2);
    assert_eq!(got[0], 2.0);
    assert!(got[1].is_nan(), "an empty unary launch wrote {}", got[1]);
}

/// The forward binary ops over a broadcast of `a` `[7, 1, 33]` and a transposed `b`
/// `[1, 9, 33]` (stored `[33, 9]`), against the CPU's broadcasting ops.
fn binary_forward(d: &dyn Driver) {
    let mut rng = Rng::new(22);
    let (p, q, s) = (7usize, 9usize, 33usize);
    let mut a_s = normal(&mut rng, p * s);
    let mut b_s = normal(&mut rng, s * q);
    // A tie for maximum's tie rule, NaN on either side, an infinity and a zero divisor.
    b_s[0] = a_s[0];
    b_s[1] = f32::NAN;
    a_s[2] = f32::NAN;
    b_s[3] = f32::INFINITY;
    b_s[4] = 0.0;
    let a = Tensor::from_vec(a_s.clone(), &[p, 1, s]).unwrap();
    let b = Tensor::from_vec(b_s.clone(), &[s, q])
        .unwrap()
        .t()
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let (da, db) = (upload::<f32>(d, &a_s), upload::<f32>(d, &b_s));
    let shape = [p, q, s];
    let a_strides = [s as isize, 0, 1];
    let b_strides = [0isize, 1, q as isize];
    let n = p * q * s;
    let launch = |op: BinaryOp| {
        let out = poisoned_f32(d, n);
        binary_f32(d, op, out, da, &a_strides, db, &b_strides, &shape).unwrap();
        download::<f32>(d, out, n)
    };
    let cpu: [(BinaryOp, Tensor<f32>); 5] = [
        (BinaryOp::Add, a.add(&b).unwrap()),
        (BinaryOp::Sub, a.sub(&b).unwrap()),
        (BinaryOp::Mul, a.mul(&b).unwrap()),
        (BinaryOp::Div, a.div(&b).unwrap()),
        (BinaryOp::Maximum, a.maximum(&b).unwrap()),
    ];
    for (op, want) in cpu {
        assert_bits(
            &format!("binary {op:?} on {}", d.name()),
            &launch(op),
            &want.to_vec(),
        );
    }
    // The gradient masks of maximum and div's divisor gradient, from the broadcast operands.
    let ab = a.broadcast_to(&shape).unwrap().to_vec();
    let bb = b.broadcast_to(&shape).unwrap().to_vec();
    let mask: Vec<f64> = ab
        .iter()
        .zip(&bb)
        .map(|(x, y)| if x >= y { 1.0 } else { 0.0 })
        .collect();
    assert_close("GeMask", &launch(BinaryOp::GeMask), &mask, 0.0, 0.0);
    let eq: Vec<f64> = ab
        .iter()
        .zip(&bb)
        .map(|(x, y)| if x == y { 1.0 } else { 0.0 })
        .collect();
    assert!(eq.contains(&1.0), "the tie at element 0 is an equal pair");
    assert_close("EqMask", &launch(BinaryOp::EqMask), &eq, 0.0, 0.0);
    let select = |keep_nonzero: bool| -> Vec<f64> {
        ab.iter()
            .zip(&bb)
            .map(|(&x, &m)| {
                if (m != 0.0) == keep_nonzero {
                    x as f64
                } else {
                    0.0
                }
            })
            .collect()
    };
    assert_close(
        "SelectIfNonZero",
        &launch(BinaryOp::SelectIfNonZero),
        &select(true),
        0.0,
        0.0,
    );
    assert_close(
        "SelectIfZero",
        &launch(BinaryOp::SelectIfZero),
        &select(false),
        0.0,
        0.0,
    );
    let one_minus: Vec<f64> = ab
        .iter()
        .zip(&bb)
        .map(|(&x, &y)| x as f64 * (1.0 - y as f64))
        .collect();
    assert_close(
        "MulOneMinus",
        &launch(BinaryOp::MulOneMinus),
        &one_minus,
        1e-6,
        1e-7,
    );
    let div_b: Vec<f64> = ab
        .iter()
        .zip(&bb)
        .map(|(&x, &y)| -(x as f64) / (y as f64 * y as f64))
        .collect();
    assert_close(
        "DivRhsBackward",
        &launch(BinaryOp::DivRhsBackward),
        &div_b,
        1e-5,
        1e-6,
    );
}

/// Each `*Backward` code against the CPU's autograd of its unary op: `a = g`, `b` the saved input
/// or output, both read through transposed strides.
fn binary_grads(d: &dyn Driver) {
    let mut rng = Rng::new(23);
    let (r, c) = (19usize, 27usize);
    let raw = uniform(&mut rng, r * c, -4.0, 4.0);
    let gs = normal(&mut rng, r * c);
    let grads: [(BinaryOp, UnaryOp, bool); 12] = [
        (BinaryOp::LogBackward, UnaryOp::Log, false),
        (BinaryOp::SqrtBackward, UnaryOp::Sqrt, true),
        (BinaryOp::SquareBackward, UnaryOp::Square, false),
        (BinaryOp::TanhBackward, UnaryOp::Tanh, true),
        (BinaryOp::SigmoidBackward, UnaryOp::Sigmoid, true),
        (BinaryOp::SoftplusBackward, UnaryOp::Softplus, false),
        (BinaryOp::GeluBackward, UnaryOp::Gelu, false),
        (BinaryOp::GeluTanhBackward, UnaryOp::GeluTanh, false),
        (BinaryOp::ReluBackward, UnaryOp::Relu, false),
        (BinaryOp::AbsBackward, UnaryOp::Abs, false),
        (
            BinaryOp::PowBackward(POW as f64),
            UnaryOp::PowScalar(POW as f64),
            false,
        ),
        (
            BinaryOp::ClampBackward {
                lo: LO as f64,
                hi: HI as f64,
            },
            UnaryOp::Clamp {
                lo: LO as f64,
                hi: HI as f64,
            },
            false,
        ),
    ];
    for (op, fwd, from_output) in grads {
        let mut xs: Vec<f32> = if positive_domain(fwd) {
            raw.iter().map(|v| v.abs() + 1e-2).collect()
        } else {
            raw.clone()
        };
        if !positive_domain(fwd) {
            // relu and abs at their kink, clamp at its bounds.
            xs[..3].copy_from_slice(&[0.0, LO, HI]);
        }
        let x = Tensor::from_vec(xs.clone(), &[r, c])
            .unwrap()
            .requires_grad_();
        let xt = x.t().unwrap();
        let y = cpu_unary(fwd, &xt);
        let g = Tensor::from_vec(gs.clone(), &[c, r]).unwrap();
        y.backward_with(&g).unwrap();
        // x.grad is [r, c]; the kernel writes the [c, r] view's order.
        let want = x.grad().unwrap().t().unwrap().to_vec();
        let saved = if from_output {
            y.t().unwrap().to_vec()
        } else {
            xs.clone()
        };
        let (dg, dsaved) = (upload::<f32>(d, &gs), upload::<f32>(d, &saved));
        let out = poisoned_f32(d, r * c);
        binary_f32(
            d,
            op,
            out,
            dg,
            &[r as isize, 1],
            dsaved,
            &[1, c as isize],
            &[c, r],
        )
        .unwrap();
        let got = download::<f32>(d, out, r * c);
        let what = format!("{op:?} on {}", d.name());
        if grad_exact(op) {
            assert_bits(&what, &got, &want);
        } else {
            assert_close(&what, &got, &wide(&want), 1e-5, 1e-6);
        }
    }
}

#[test]
fn unary_f32_every_op_matches_cpu() {
    on_each_device(unary_all);
}

#[test]
fn binary_f32_forward_ops_broadcast_like_cpu() {
    on_each_device(binary_forward);
}

#[test]
fn binary_f32_grad_ops_match_cpu_autograd() {
    on_each_device(binary_grads);
}
