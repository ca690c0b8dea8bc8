//! Central-difference gradient checks (f64) for every differentiable op in `src/ops`, and the
//! error messages of every shape check.
//!
//! Inputs are drawn so each op is checked where it is differentiable: kinks (relu, abs,
//! clamp, maximum, max) are kept at least a few tenths away from the sample points, since a
//! central difference straddling a kink measures the average of two one-sided slopes.

// Inputs are always written as a list, `&[a.clone()]` as well as `&[a.clone(), b]`, so
// one-input and many-input checks read alike.
#![allow(clippy::cloned_ref_to_slice_refs)]

use tarflow::gradcheck::{check_gradients, GradCheck};
use tarflow::{Error, Result, Rng, Tensor};

type T = Tensor<f64>;
type Op = dyn Fn(&[T]) -> Result<T>;

fn randn(shape: &[usize], seed: u64) -> T {
    Tensor::randn(shape, 0.0, 1.0, &mut Rng::new(seed))
}

fn from(v: &[f64], shape: &[usize]) -> T {
    Tensor::from_slice(v, shape).unwrap()
}

/// Values in `[lo, hi)`.
fn uniform(shape: &[usize], lo: f64, hi: f64, seed: u64) -> T {
    Tensor::rand(shape, lo, hi, &mut Rng::new(seed))
}

/// Values whose magnitude is at least `gap` (random sign), for ops with a kink at 0.
fn away_from_zero(shape: &[usize], gap: f64, seed: u64) -> T {
    let mut rng = Rng::new(seed);
    let v = (0..shape.iter().product::<usize>())
        .map(|_| {
            let m = gap + rng.uniform();
            if rng.uniform() < 0.5 {
                -m
            } else {
                m
            }
        })
        .collect();
    Tensor::from_vec(v, shape).unwrap()
}

/// Distinct values (a shuffled, spread-out ramp) so max/maximum never tie.
fn distinct(shape: &[usize], seed: u64) -> T {
    let n: usize = shape.iter().product();
    let mut rng = Rng::new(seed);
    let mut v: Vec<f64> = (0..n).map(|i| i as f64 * 0.37 - n as f64 * 0.15).collect();
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    Tensor::from_vec(v, shape).unwrap()
}

#[track_caller]
fn check(name: &str, f: impl Fn(&[T]) -> Result<T>, inputs: &[T]) {
    check_with(name, f, inputs, GradCheck::default());
}

#[track_caller]
fn check_with(name: &str, f: impl Fn(&[T]) -> Result<T>, inputs: &[T], cfg: GradCheck) {
    match check_gradients(f, inputs, cfg) {
        Ok(rep) => assert!(rep.checked > 0 || inputs.iter().all(|t| t.numel() == 0)),
        Err(e) => panic!("{name}: {e}"),
    }
}

// ------------------------------------------------------------------ binary

#[test]
fn binary_ops_broadcast_both_ways() {
    let shapes: &[(&[usize], &[usize])] = &[
        (&[3, 4], &[3, 4]),
        (&[3, 4], &[4]),
        (&[4], &[3, 4]),
        (&[2, 1, 4], &[3, 1]),
        (&[3, 1], &[2, 1, 4]),
        (&[], &[2, 3]),
        (&[2, 3], &[]),
    ];
    for (i, &(sa, sb)) in shapes.iter().enumerate() {
        let seed = 10 * i as u64;
        let a = randn(sa, seed);
        let b = randn(sb, seed + 1);
        let pos = uniform(sb, 0.5, 2.0, seed + 2);
        let ctx = format!("{sa:?} op {sb:?}");
        check(
            &format!("add {ctx}"),
            |x| x[0].add(&x[1]),
            &[a.clone(), b.clone()],
        );
        check(
            &format!("sub {ctx}"),
            |x| x[0].sub(&x[1]),
            &[a.clone(), b.clone()],
        );
        check(
            &format!("mul {ctx}"),
            |x| x[0].mul(&x[1]),
            &[a.clone(), b.clone()],
        );
        check(
            &format!("div {ctx}"),
            |x| x[0].div(&x[1]),
            &[a.clone(), pos],
        );
    }
}

#[test]
fn binary_op_with_itself() {
    // Both operands are the same tensor: the two contributions must add up.
    let a = uniform(&[2, 3], 0.5, 2.0, 3);
    check("mul self", |x| x[0].mul(&x[0]), &[a.clone()]);
    check("div self", |x| x[0].div(&x[0].exp().unwrap()), &[a.clone()]);
    check("sub self", |x| x[0].sub(&x[0].square().unwrap()), &[a]);
}

#[test]
fn maximum_away_from_ties() {
    let a = randn(&[3, 4], 20);
    let d = away_from_zero(&[3, 4], 0.2, 21);
    let b = a.add(&d).unwrap();
    check("maximum", |x| x[0].maximum(&x[1]), &[a.clone(), b.clone()]);
    // Broadcast: a row against a matrix.
    let row = from(&[-3.0, 0.1, 0.9, 5.0], &[4]);
    let m = from(
        &[
            -1.0, 0.5, 0.2, 3.0, 0.3, -0.4, 2.0, 6.0, -5.0, 1.5, -2.0, 4.5,
        ],
        &[3, 4],
    );
    check(
        "maximum broadcast",
        |x| x[0].maximum(&x[1]),
        &[row.clone(), m.clone()],
    );
    check("maximum broadcast rev", |x| x[0].maximum(&x[1]), &[m, row]);
}

#[test]
fn scalar_ops() {
    let a = randn(&[2, 3], 30);
    check(
        "add_scalar",
        |x| Ok(x[0].add_scalar(1.5).unwrap()),
        &[a.clone()],
    );
    check(
        "mul_scalar",
        |x| Ok(x[0].mul_scalar(-2.5).unwrap()),
        &[a.clone()],
    );
    check(
        "div_scalar",
        |x| Ok(x[0].div_scalar(0.3).unwrap()),
        &[a.clone()],
    );
    check(
        "rsub_scalar",
        |x| Ok(x[0].rsub_scalar(2.0).unwrap()),
        &[a.clone()],
    );
    check("neg", |x| Ok(x[0].neg().unwrap()), &[a]);
}

// ------------------------------------------------------------------ unary

#[test]
fn smooth_unary_ops() {
    let a = randn(&[3, 4], 40);
    let pos = uniform(&[3, 4], 0.2, 3.0, 41);
    check("exp", |x| Ok(x[0].exp().unwrap()), &[a.clone()]);
    check("log", |x| Ok(x[0].log().unwrap()), &[pos.clone()]);
    check("sqrt", |x| Ok(x[0].sqrt().unwrap()), &[pos.clone()]);
    check("square", |x| Ok(x[0].square().unwrap()), &[a.clone()]);
    check("tanh", |x| Ok(x[0].tanh().unwrap()), &[a.clone()]);
    check(
        "sigmoid",
        |x| Ok(x[0].sigmoid().unwrap()),
        &[a.mul_scalar(3.0).unwrap()],
    );
    check(
        "gelu",
        |x| Ok(x[0].gelu().unwrap()),
        &[a.mul_scalar(2.0).unwrap()],
    );
    check(
        "gelu_tanh",
        |x| Ok(x[0].gelu_tanh().unwrap()),
        &[a.mul_scalar(2.0).unwrap()],
    );
    check("powf 2.5", |x| Ok(x[0].powf(2.5).unwrap()), &[pos.clone()]);
    check(
        "powf -1.5",
        |x| Ok(x[0].powf(-1.5).unwrap()),
        &[pos.clone()],
    );
    check(
        "powf 3 (negative base)",
        |x| Ok(x[0].powf(3.0).unwrap()),
        &[a.clone()],
    );
    check(
        "soft_clip",
        |x| Ok(x[0].soft_clip(1.5).unwrap()),
        &[a.mul_scalar(3.0).unwrap()],
    );
}

#[test]
fn softplus_and_sigmoid_at_large_magnitude() {
    let big = from(
        &[-60.0, -35.0, -12.0, -0.5, 0.0, 0.5, 12.0, 35.0, 60.0],
        &[9],
    );
    check("softplus", |x| Ok(x[0].softplus().unwrap()), &[big.clone()]);
    check("sigmoid", |x| Ok(x[0].sigmoid().unwrap()), &[big.clone()]);
    // No overflow to inf/NaN in the forward either.
    let y = big.softplus().unwrap();
    assert!(y.all_finite());
    let v = y.to_vec();
    assert!((v[8] - 60.0).abs() < 1e-12 && v[0] > 0.0 && v[0] < 1e-25);
}

#[test]
fn kinked_unary_ops_away_from_kinks() {
    let a = away_from_zero(&[3, 4], 0.1, 50);
    check("relu", |x| Ok(x[0].relu().unwrap()), &[a.clone()]);
    check("abs", |x| Ok(x[0].abs().unwrap()), &[a.clone()]);
    // Bounds at +-0.95 and +-0.5 stay at least 0.05 from every sample, which are |x| >= 0.1
    // and placed so some lie inside and some outside.
    let c = from(&[-2.0, -0.7, -0.3, 0.0, 0.2, 0.45, 0.6, 1.3], &[8]);
    check("clamp", |x| Ok(x[0].clamp(-0.5, 0.95).unwrap()), &[c]);
}

#[test]
fn unary_ops_on_strided_views() {
    // Kernels read through layouts; the gradient must land on the right elements.
    let a = randn(&[3, 4], 55);
    check(
        "exp of transpose",
        |x| Ok(x[0].t()?.exp().unwrap()),
        &[a.clone()],
    );
    check(
        "gelu of flip",
        |x| Ok(x[0].flip(1)?.gelu().unwrap()),
        &[a.clone()],
    );
    check(
        "tanh of broadcast",
        |x| {
            Ok(x[0]
                .narrow(0, 1, 1)?
                .broadcast_to(&[2, 3, 4])?
                .tanh()
                .unwrap())
        },
        &[a],
    );
}

// ------------------------------------------------------------------ reductions

#[test]
fn sum_and_mean_over_axis_sets() {
    let a = randn(&[2, 3, 4], 60);
    let axis_sets: &[&[isize]] = &[&[], &[0], &[1], &[2], &[-1], &[0, 2], &[1, 2], &[0, 1, 2]];
    for axes in axis_sets {
        for keep in [false, true] {
            check(
                &format!("sum {axes:?} keepdim={keep}"),
                |x| x[0].sum(axes, keep),
                &[a.clone()],
            );
            check(
                &format!("mean {axes:?} keepdim={keep}"),
                |x| x[0].mean(axes, keep),
                &[a.clone()],
            );
        }
    }
    check("sum_all", |x| Ok(x[0].sum_all().unwrap()), &[a.clone()]);
    check("mean_all", |x| Ok(x[0].mean_all().unwrap()), &[a.clone()]);
    // Reducing a permuted view exercises the strided reduction paths.
    check(
        "sum of permuted",
        |x| x[0].permute(&[2, 0, 1])?.sum(&[1], false),
        &[a],
    );
}

#[test]
fn max_over_axis_sets() {
    let a = distinct(&[2, 3, 4], 70);
    let axis_sets: &[&[isize]] = &[&[0], &[1], &[2], &[0, 2], &[1, 2], &[0, 1, 2]];
    for axes in axis_sets {
        for keep in [false, true] {
            check(
                &format!("max {axes:?} keepdim={keep}"),
                |x| x[0].max(axes, keep),
                &[a.clone()],
            );
        }
    }
    check("max of transposed", |x| x[0].t()?.max(&[-1], false), &[a]);
}

#[test]
fn sum_to_shapes() {
    let a = randn(&[2, 3, 4], 80);
    for target in [
        &[3, 4][..],
        &[1, 4],
        &[3, 1],
        &[2, 1, 4],
        &[1, 1, 1],
        &[],
        &[4],
    ] {
        check(
            &format!("sum_to {target:?}"),
            |x| x[0].sum_to(target),
            &[a.clone()],
        );
    }
}

// ------------------------------------------------------------------ matmul and linear

#[test]
fn matmul_shapes_and_layouts() {
    let cases: &[(&[usize], &[usize])] = &[
        (&[3, 4], &[4, 5]),
        (&[2, 3, 4], &[2, 4, 5]),
        (&[2, 3, 4], &[4, 5]),
        (&[4, 5], &[2, 5, 3]),
        (&[2, 1, 3, 4], &[3, 4, 2]),
        (&[1, 4], &[4, 1]),
    ];
    for (i, &(sa, sb)) in cases.iter().enumerate() {
        let a = randn(sa, 90 + i as u64);
        let b = randn(sb, 190 + i as u64);
        check(
            &format!("matmul {sa:?} x {sb:?}"),
            |x| x[0].matmul(&x[1]),
            &[a, b],
        );
    }
    // Transposed operands (read in place with swapped strides).
    let at = randn(&[2, 4, 3], 95);
    let bt = randn(&[2, 5, 4], 96);
    check(
        "matmul a^T b^T",
        |x| x[0].t()?.matmul(&x[1].t()?),
        &[at.clone(), bt.clone()],
    );
    check(
        "matmul a^T b",
        |x| x[0].t()?.matmul(&x[1]),
        &[at, randn(&[4, 5], 97)],
    );
    // A narrowed (non-unit row stride) and a flipped operand.
    check(
        "matmul narrow x flip",
        |x| x[0].narrow(1, 1, 4)?.matmul(&x[1].flip(0)?),
        &[randn(&[3, 6], 98), randn(&[4, 2], 99)],
    );
    // Same tensor on both sides.
    check(
        "matmul a a^T",
        |x| x[0].matmul(&x[0].t()?),
        &[randn(&[3, 4], 100)],
    );
}

#[test]
fn linear_variants() {
    let x3 = randn(&[2, 3, 4], 110);
    let w = randn(&[5, 4], 111);
    let b = randn(&[5], 112);
    check(
        "linear bias 3-D",
        |x| x[0].linear(&x[1], Some(&x[2])),
        &[x3.clone(), w.clone(), b.clone()],
    );
    check(
        "linear no bias 3-D",
        |x| x[0].linear(&x[1], None),
        &[x3.clone(), w.clone()],
    );
    check(
        "linear 2-D",
        |x| x[0].linear(&x[1], Some(&x[2])),
        &[randn(&[3, 4], 113), w.clone(), b.clone()],
    );
    check(
        "linear 1-D",
        |x| x[0].linear(&x[1], Some(&x[2])),
        &[randn(&[4], 114), w.clone(), b.clone()],
    );
    // The weight stored as [in, out] and passed as a transposed view.
    let w_io = randn(&[4, 5], 115);
    check(
        "linear transposed weight",
        |x| x[0].linear(&x[1].t()?, Some(&x[2])),
        &[x3.clone(), w_io, b.clone()],
    );
    // A non-contiguous input (its reshape to rows needs a copy).
    check(
        "linear permuted input",
        |x| x[0].permute(&[1, 0, 2])?.linear(&x[1], None),
        &[x3, w],
    );
}

// ------------------------------------------------------------------ views

#[test]
fn view_ops() {
    let a = randn(&[2, 3, 4], 120);
    let cases: Vec<(&str, Box<Op>)> = vec![
        ("reshape", Box::new(|x: &[T]| x[0].reshape(&[6, 4]))),
        (
            "reshape inferred",
            Box::new(|x: &[T]| x[0].reshape(&[usize::MAX, 2])),
        ),
        (
            "reshape of permuted (copies)",
            Box::new(|x: &[T]| x[0].permute(&[2, 0, 1])?.reshape(&[8, 3])),
        ),
        ("permute", Box::new(|x: &[T]| x[0].permute(&[2, 0, 1]))),
        ("transpose", Box::new(|x: &[T]| x[0].transpose(0, 2))),
        ("t", Box::new(|x: &[T]| x[0].t())),
        ("narrow", Box::new(|x: &[T]| x[0].narrow(2, 1, 2))),
        ("narrow middle", Box::new(|x: &[T]| x[0].narrow(1, 1, 1))),
        (
            "broadcast_to",
            Box::new(|x: &[T]| x[0].narrow(1, 0, 1)?.broadcast_to(&[3, 2, 5, 4])),
        ),
        ("unsqueeze", Box::new(|x: &[T]| x[0].unsqueeze(1))),
        ("unsqueeze end", Box::new(|x: &[T]| x[0].unsqueeze(-1))),
        (
            "squeeze",
            Box::new(|x: &[T]| x[0].narrow(1, 2, 1)?.squeeze(1)),
        ),
        ("flip", Box::new(|x: &[T]| x[0].flip(1))),
        ("flip twice", Box::new(|x: &[T]| x[0].flip(0)?.flip(2))),
        (
            "contiguous",
            Box::new(|x: &[T]| Ok(x[0].t()?.contiguous().unwrap())),
        ),
        ("copy", Box::new(|x: &[T]| Ok(x[0].copy().unwrap()))),
        (
            "copy of view",
            Box::new(|x: &[T]| Ok(x[0].flip(2)?.copy().unwrap())),
        ),
    ];
    for (name, f) in cases {
        check(name, f, &[a.clone()]);
    }
}

#[test]
fn view_chain_then_compute() {
    // Several views between leaf and a nonlinear op: each backward must compose.
    let a = randn(&[4, 6], 130);
    check(
        "chain",
        |x| {
            x[0].t()?
                .narrow(0, 1, 4)?
                .flip(1)?
                .reshape(&[2, 2, 4])?
                .unsqueeze(0)?
                .permute(&[3, 1, 0, 2])?
                .tanh()
                .unwrap()
                .sum(&[0], false)
        },
        &[a],
    );
}

// ------------------------------------------------------------------ index ops

#[test]
fn concat_and_stack() {
    let a = randn(&[2, 3], 140);
    let b = randn(&[2, 1], 141);
    let c = randn(&[2, 4], 142);
    check(
        "concat axis 1",
        |x| Tensor::concat(&[&x[0], &x[1], &x[2]], 1),
        &[a.clone(), b.clone(), c.clone()],
    );
    check(
        "concat axis 0",
        |x| Tensor::concat(&[&x[0], &x[1].t()?], 0),
        &[a.clone(), randn(&[3, 5], 143)],
    );
    check(
        "concat same tensor twice",
        |x| Tensor::concat(&[&x[0], &x[0]], -1),
        &[a.clone()],
    );
    let d = randn(&[2, 3], 144);
    for axis in [0, 1, 2, -1] {
        check(
            &format!("stack axis {axis}"),
            |x| Tensor::stack(&[&x[0], &x[1]], axis),
            &[a.clone(), d.clone()],
        );
    }
}

#[test]
fn index_select_and_gather() {
    let a = randn(&[4, 3], 150);
    check(
        "index_select rows repeated",
        |x| x[0].index_select(0, &[2, 0, 2, 3, 2]),
        &[a.clone()],
    );
    check(
        "index_select cols",
        |x| x[0].index_select(1, &[1, 1, 0]),
        &[a.clone()],
    );
    check(
        "index_select of transposed",
        |x| x[0].t()?.index_select(1, &[3, 3, 1]),
        &[a.clone()],
    );
    check(
        "index_select empty",
        |x| x[0].index_select(0, &[]),
        &[a.clone()],
    );
    // take_along_axis with repeats along the gathered axis.
    check(
        "gather axis 1",
        |x| x[0].gather(1, &[0, 2, 2, 1, 1, 1, 2, 0, 0, 0, 2, 2], &[4, 3]),
        &[a.clone()],
    );
    check(
        "gather axis 0",
        |x| x[0].gather(0, &[3, 0, 1, 3, 3, 3], &[2, 3]),
        &[a],
    );
}

#[test]
fn where_and_masked_fill() {
    let cond = from(&[1.0, 0.0, 0.0, 1.0], &[4]);
    let a = randn(&[3, 4], 160);
    let b = randn(&[3, 1], 161);
    check(
        "where_cond broadcast",
        |x| Tensor::where_cond(&cond, &x[0], &x[1]),
        &[a.clone(), b.clone()],
    );
    check(
        "where_cond scalar branch",
        |x| Tensor::where_cond(&cond, &x[0], &x[1]),
        &[randn(&[], 162), a.clone()],
    );
    let mask = from(
        &[0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0],
        &[3, 4],
    );
    check(
        "masked_fill",
        |x| x[0].masked_fill(&mask, -5.0),
        &[a.clone()],
    );
    check(
        "masked_fill broadcast mask",
        |x| x[0].masked_fill(&cond, 0.25),
        &[a],
    );
}

// ------------------------------------------------------------------ a composite

#[test]
fn mlp_block_composite() {
    // Linear -> GELU -> Linear -> mean: the block the benchmarks time.
    let cfg = GradCheck {
        rtol: 1e-5,
        atol: 1e-6,
        ..GradCheck::default()
    };
    check_with(
        "mlp",
        |x| {
            x[0].linear(&x[1], Some(&x[2]))?
                .gelu()
                .unwrap()
                .linear(&x[3], Some(&x[4]))
        },
        &[
            randn(&[2, 3, 4], 170),
            randn(&[8, 4], 171).mul_scalar(0.5).unwrap(),
            randn(&[8], 172),
            randn(&[4, 8], 173).mul_scalar(0.5).unwrap(),
            randn(&[4], 174),
        ],
        cfg,
    );
}

// ------------------------------------------------------------------ errors

#[track_caller]
fn expect_err<X: std::fmt::Debug>(r: Result<X>, op: &str, fragments: &[&str]) {
    let e = match r {
        Ok(v) => panic!("{op}: expected an error, got {v:?}"),
        Err(e) => e,
    };
    let msg = e.to_string();
    assert!(
        msg.starts_with(op),
        "message {msg:?} does not start with the op {op:?}"
    );
    for f in fragments {
        assert!(msg.contains(f), "message {msg:?} does not mention {f:?}");
    }
}

#[test]
fn shape_errors_name_op_and_shapes() {
    let a = randn(&[2, 3], 1);
    let b = randn(&[4], 2);
    expect_err(a.add(&b), "add", &["[2, 3]", "[4]", "f64"]);
    expect_err(a.sub(&b), "sub", &["[2, 3]", "[4]"]);
    expect_err(a.mul(&b), "mul", &["[2, 3]", "[4]"]);
    expect_err(a.div(&b), "div", &["[2, 3]", "[4]"]);
    expect_err(a.maximum(&b), "maximum", &["[2, 3]", "[4]"]);

    let m = randn(&[4, 5], 3);
    expect_err(a.matmul(&m), "matmul", &["[2, 3]", "[4, 5]", "inner"]);
    expect_err(
        randn(&[2, 2, 3], 4).matmul(&randn(&[3, 3, 1], 5)),
        "matmul",
        &["[2, 2, 3]", "[3, 3, 1]", "batch"],
    );
    expect_err(b.matmul(&m), "matmul", &["[4]", "[4, 5]"]);

    let w = randn(&[5, 4], 6);
    expect_err(a.linear(&w, None), "linear", &["[2, 3]", "[5, 4]"]);
    expect_err(
        randn(&[2, 4], 7).linear(&w, Some(&randn(&[4], 8))),
        "linear",
        &["[2, 4]", "[5, 4]", "[4]", "bias"],
    );
    expect_err(a.linear(&randn(&[3], 9), None), "linear", &["[3]"]);

    expect_err(a.reshape(&[4, 2]), "reshape", &["[2, 3]", "[4, 2]"]);
    expect_err(a.reshape(&[usize::MAX, 4]), "reshape", &["[2, 3]"]);
    // Sizes whose product overflows are an error, not a panic or a wrapped size.
    expect_err(a.reshape(&[usize::MAX / 2, 4]), "reshape", &["[2, 3]"]);
    expect_err(a.reshape(&[1 << 62, 8, 3]), "reshape", &["[2, 3]"]);
    expect_err(
        a.reshape(&[usize::MAX, 1 << 40, 1 << 40]),
        "reshape",
        &["[2, 3]"],
    );
    expect_err(a.permute(&[0, 0]), "permute", &["[2, 3]", "[0, 0]"]);
    expect_err(a.permute(&[0]), "permute", &["[2, 3]"]);
    expect_err(b.t(), "t", &["[4]"]);
    expect_err(a.narrow(1, 2, 2), "narrow", &["[2, 3]", "2..4"]);
    expect_err(a.narrow(2, 0, 1), "narrow", &["axis 2"]);
    expect_err(a.transpose(0, 5), "transpose", &["axis 5"]);
    expect_err(
        a.broadcast_to(&[2, 4]),
        "broadcast_to",
        &["[2, 3]", "[2, 4]"],
    );
    expect_err(a.broadcast_to(&[3]), "broadcast_to", &["[2, 3]", "[3]"]);
    expect_err(a.squeeze(0), "squeeze", &["[2, 3]"]);
    expect_err(a.unsqueeze(3), "unsqueeze", &["axis 3"]);
    expect_err(a.flip(-3), "flip", &["axis -3"]);

    expect_err(a.sum(&[2], false), "sum", &["axis 2"]);
    expect_err(a.sum(&[1, -1], false), "sum", &["repeated"]);
    expect_err(a.mean(&[3], false), "mean", &["axis 3"]);
    expect_err(a.max(&[0, 0], false), "max", &["repeated"]);
    expect_err(a.sum_to(&[3, 2]), "sum_to", &["[2, 3]", "[3, 2]"]);
    expect_err(a.sum_to(&[1, 2, 3]), "sum_to", &["[2, 3]", "[1, 2, 3]"]);

    expect_err(Tensor::concat(&[&a, &b], 0), "concat", &["[2, 3]", "[4]"]);
    expect_err(
        Tensor::concat(&[&a, &randn(&[3, 3], 10)], 1),
        "concat",
        &["[2, 3]", "[3, 3]"],
    );
    expect_err(Tensor::<f64>::concat(&[], 0), "concat", &["no tensors"]);
    expect_err(
        Tensor::stack(&[&a, &randn(&[3, 2], 11)], 0),
        "stack",
        &["[2, 3]", "[3, 2]"],
    );
    expect_err(Tensor::<f64>::stack(&[], 0), "stack", &["no tensors"]);
    expect_err(a.index_select(1, &[0, 3]), "index_select", &["3", "size 3"]);
    expect_err(
        a.gather(1, &[0, 1], &[1, 2]),
        "gather",
        &["[2, 3]", "[1, 2]"],
    );
    expect_err(a.gather(1, &[0, 3], &[2, 1]), "gather", &["index 3"]);
    expect_err(
        Tensor::where_cond(&randn(&[4], 12), &a, &a),
        "where",
        &["[4]", "[2, 3]"],
    );
    expect_err(
        a.masked_fill(&randn(&[4], 13), 0.0),
        "masked_fill",
        &["[2, 3]", "[4]"],
    );
    expect_err(
        a.masked_fill(&randn(&[2, 2, 3], 14), 0.0),
        "masked_fill",
        &["[2, 3]"],
    );
    expect_err(
        Tensor::<f64>::from_vec(vec![1.0; 5], &[2, 3]),
        "from_vec",
        &["[2, 3]", "5"],
    );
    expect_err(a.item(), "item", &["[2, 3]"]);
}

#[test]
fn backward_errors() {
    let a = randn(&[2, 3], 1).requires_grad_();
    let e = a.exp().unwrap().backward().unwrap_err();
    assert!(matches!(e, Error::Autograd(_)), "{e}");
    assert!(e.to_string().contains("[2, 3]"), "{e}");
    let plain = randn(&[], 2);
    let e = plain.exp().unwrap().backward().unwrap_err();
    assert!(e.to_string().contains("requires_grad"), "{e}");
    let e = a
        .exp()
        .unwrap()
        .backward_with(&randn(&[3, 2], 3))
        .unwrap_err();
    assert!(e.to_string().starts_with("backward"), "{e}");
}
