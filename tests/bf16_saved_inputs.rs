//! The linear-family ops (`linear`, `linear_gelu`, `linear_residual`, `mlp_residual`) under
//! bf16 training precision on a GPU device keep their input for the weight gradient as the
//! bf16 copy their forward GEMM made, not as the f32 tensor.
//!
//! - Every gradient of each op is bit for bit what the f32-saved path computes: an explicit
//!   recomputation from the f32 input with the public ops under the same bf16 guard
//!   (`g^T.matmul(x2)` converts `x2` to bf16 again, as the backward did before it kept the
//!   forward's copy), and the bf16 path is taken (the f32 precision gives other bits).
//! - Memory: on a counting device of its own, dropping the caller's input after the forward
//!   frees its f32 bytes under bf16 (the node holds `rows * ld * 2` bytes of bf16 instead)
//!   and frees nothing under f32, where the node keeps the input itself.
//!
//! The bit-equality body runs on `ptx-sim` and, in the `_cuda` twin, on `cuda:0` where a
//! driver loads.
#![cfg(feature = "ptx-sim")]

use std::sync::Arc;

use tarflow::backend::{matmul_precision, Precision};
use tarflow::gpu::{memory_stats, registry, PtxSim};
use tarflow::{Device, Result, Rng, Tensor};

/// Sizes of every case: `[2, 5, 20]` inputs (10 rows of 20 features: bf16 rows padded to
/// 24, and 10 rows padded to 16 where they are the reduced dimension of the weight
/// gradient), 12 outputs, a hidden layer of 36.
const X_SHAPE: [usize; 3] = [2, 5, 20];
const ROWS: usize = 10;
const IN: usize = 20;
const OUT: usize = 12;
const HIDDEN: usize = 36;

fn rnd(shape: &[usize], seed: u64, scale: f64) -> Tensor<f32> {
    Tensor::randn(shape, 0.0, scale, &mut Rng::new(seed))
}

fn bits(t: &Tensor<f32>) -> Vec<u32> {
    t.try_to_vec()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

/// Gradients of every input from the inputs and the output's gradient.
type Reference = fn(&[Tensor<f32>], &Tensor<f32>) -> Vec<Tensor<f32>>;

/// One op of the family: its name, the shapes of its inputs after `x`, and how it runs.
struct Case {
    name: &'static str,
    shapes: Vec<Vec<usize>>,
    run: fn(&[Tensor<f32>]) -> Result<Tensor<f32>>,
    /// The gradients of every input (in order) from the output's gradient `g`, recomputed
    /// from the f32 inputs with the public ops (see [`reference`]).
    reference: Reference,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "linear",
            shapes: vec![vec![OUT, IN], vec![OUT]],
            run: |t| t[0].linear(&t[1], Some(&t[2])),
            reference: |t, g| {
                let (gx, gw, gb) = linear_reference(&t[0], &t[1], g);
                vec![gx, gw, gb]
            },
        },
        Case {
            name: "linear_gelu",
            shapes: vec![vec![OUT, IN], vec![OUT]],
            run: |t| t[0].linear_gelu(&t[1], Some(&t[2])),
            reference: |t, g| {
                let pre = x2(&t[0]).linear(&t[1], Some(&t[2])).unwrap();
                let gp = gelu_grad(&rows(g), &pre);
                let (gx, gw, gb) = linear_reference(&t[0], &t[1], &gp);
                vec![gx, gw, gb]
            },
        },
        Case {
            name: "linear_residual",
            shapes: vec![vec![OUT, IN], vec![OUT], vec![2, 5, OUT]],
            run: |t| t[0].linear_residual(&t[1], Some(&t[2]), &t[3]),
            reference: |t, g| {
                let (gx, gw, gb) = linear_reference(&t[0], &t[1], g);
                vec![gx, gw, gb, g.clone()]
            },
        },
        Case {
            name: "mlp_residual",
            shapes: vec![
                vec![HIDDEN, IN],
                vec![HIDDEN],
                vec![IN, HIDDEN],
                vec![IN],
                X_SHAPE.to_vec(),
            ],
            run: |t| t[0].mlp_residual(&t[1], Some(&t[2]), &t[3], Some(&t[4]), &t[5]),
            reference: |t, g| {
                let g2 = rows(g);
                let pre = x2(&t[0]).linear(&t[1], Some(&t[2])).unwrap();
                let gw2 = g2.t().unwrap().matmul(&pre.gelu().unwrap()).unwrap();
                let gb2 = g2.sum(&[0], false).unwrap();
                let gp = gelu_grad(&g2.matmul(&t[3]).unwrap(), &pre);
                let (gx, gw1, gb1) = linear_reference(&t[0], &t[1], &gp);
                vec![gx, gw1, gb1, gw2, gb2, g.clone()]
            },
        },
    ]
}

/// `t` as `[rows, features]`.
fn rows(t: &Tensor<f32>) -> Tensor<f32> {
    let n = *t.shape().last().unwrap();
    t.reshape(&[t.numel() / n, n]).unwrap()
}

/// The input as the ops flatten it, `[rows, in]`, off the graph.
fn x2(x: &Tensor<f32>) -> Tensor<f32> {
    rows(&x.detach())
}

/// A linear layer's gradients `(g w, g^T x, column sums of g)` from its output's gradient
/// `g` with the f32 input: the weight gradient converts `x` to bf16 afresh, as the backward
/// did when it kept the f32 input.
fn linear_reference(
    x: &Tensor<f32>,
    w: &Tensor<f32>,
    g: &Tensor<f32>,
) -> (Tensor<f32>, Tensor<f32>, Tensor<f32>) {
    let g2 = rows(g);
    let gx = g2.matmul(w).unwrap().reshape(x.shape()).unwrap();
    let gw = g2.t().unwrap().matmul(&x2(x)).unwrap();
    let gb = g2.sum(&[0], false).unwrap();
    (gx, gw, gb)
}

/// `g * gelu'(pre)`, by `gelu`'s own backward.
fn gelu_grad(g: &Tensor<f32>, pre: &Tensor<f32>) -> Tensor<f32> {
    let leaf = pre.detach().requires_grad_();
    let y = leaf.gelu().unwrap().mul(g).unwrap().sum_all().unwrap();
    tarflow::autograd::grad(&y, &[&leaf])
        .unwrap()
        .remove(0)
        .detach()
}

/// The case's inputs on `device`: `x` then the others, leaves that want gradients.
fn inputs(case: &Case, device: Device) -> Vec<Tensor<f32>> {
    let mut shapes = vec![X_SHAPE.to_vec()];
    shapes.extend(case.shapes.iter().cloned());
    shapes
        .iter()
        .enumerate()
        .map(|(i, s)| {
            // Weights scaled as an initialiser would, so the GELU sees moderate values.
            let scale = if s.len() == 2 { 0.25 } else { 1.0 };
            let t = rnd(s, 10 + i as u64, scale).to_device(device).unwrap();
            t.requires_grad_()
        })
        .collect()
}

/// The bits of every input's gradient of `sum(op(inputs) * proj)` at `precision`, and
/// those of the reference recomputation of the same gradients under the same precision.
fn op_and_reference(case: &Case, device: Device, precision: Precision) -> [Vec<Vec<u32>>; 2] {
    let _p = matmul_precision(precision);
    let xs = inputs(case, device);
    let y = (case.run)(&xs).unwrap();
    let proj = rnd(y.shape(), 99, 1.0).to_device(device).unwrap();
    let loss = y.mul(&proj).unwrap().sum_all().unwrap();
    let wrt: Vec<&Tensor<f32>> = xs.iter().collect();
    let grads = tarflow::autograd::grad(&loss, &wrt).unwrap();
    let detached: Vec<Tensor<f32>> = xs.iter().map(|t| t.detach()).collect();
    // Off the graph: the detached inputs record nothing.
    let want = (case.reference)(&detached, &proj);
    [
        grads.iter().map(bits).collect(),
        want.iter().map(bits).collect(),
    ]
}

fn gradients_match_the_f32_saved_path(device: Device) {
    for case in cases() {
        let [got, want] = op_and_reference(&case, device, Precision::Bf16);
        assert_eq!(got.len(), want.len(), "{}: gradient count", case.name);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g, w, "{} on {device}: gradient of input {i}", case.name);
        }
        // The bf16 path was taken: the weight gradient's bits are not the f32 ones.
        let [f32_grads, _] = op_and_reference(&case, device, Precision::F32);
        assert_ne!(
            got[1], f32_grads[1],
            "{} on {device}: bf16 gave the f32 weight gradient",
            case.name
        );
    }
}

#[test]
fn gradients_under_bf16_are_those_of_the_f32_saved_input() {
    gradients_match_the_f32_saved_path(Device::PtxSim);
}

#[test]
fn gradients_under_bf16_are_those_of_the_f32_saved_input_cuda() {
    match registry::driver(Device::Cuda(0)) {
        Ok(_) => gradients_match_the_f32_saved_path(Device::Cuda(0)),
        Err(e) => eprintln!("cuda:0 skipped: {e}"),
    }
}

/// A PTX interpreter of this test's own, as `cuda:{ordinal}`, so that its byte counts are
/// this test's alone.
fn private_device(ordinal: usize) -> Device {
    let device = Device::Cuda(ordinal);
    registry::register(device, Arc::new(PtxSim::new())).unwrap();
    device
}

fn live(device: Device) -> usize {
    memory_stats(device).unwrap().live_bytes as usize
}

/// Bytes of the bf16 copy of a `[ROWS, IN]` input: rows padded to a multiple of 8.
const BF16_INPUT_BYTES: usize = ROWS * IN.div_ceil(8) * 8 * 2;

/// For each op: its input `x` is another op's output (`2 * x0`, whose backward keeps
/// nothing of it); the bytes the forward leaves alive (for `linear`: the output and what
/// the node keeps), then those dropping the caller's `x` frees; and the backward still
/// works after it. Returns nothing: it asserts.
fn dropping_the_input(device: Device, precision: Precision) {
    let _p = matmul_precision(precision);
    let bf16 = precision == Precision::Bf16;
    for case in cases() {
        let mut xs = inputs(&case, device);
        let x0 = xs.remove(0);
        let before = live(device);
        let x = x0.mul_scalar(2.0).unwrap();
        assert_eq!(live(device) - before, ROWS * IN * 4, "{}: x", case.name);
        let mut operands = vec![x.clone()];
        operands.extend(xs.iter().cloned());
        let y = (case.run)(&operands).unwrap();
        drop(operands);
        if case.name == "linear" {
            // The output, and under bf16 the input's bf16 copy; nothing else stays.
            let kept = if bf16 { BF16_INPUT_BYTES } else { 0 };
            assert_eq!(
                live(device) - before,
                ROWS * IN * 4 + ROWS * OUT * 4 + kept,
                "linear under {precision}: bytes alive after the forward"
            );
        }
        let held = live(device);
        drop(x);
        let freed = held - live(device);
        let expect = if bf16 { ROWS * IN * 4 } else { 0 };
        assert_eq!(
            freed, expect,
            "{} under {precision}: bytes freed by dropping the input",
            case.name
        );
        let loss = y.sum_all().unwrap();
        let grads = tarflow::autograd::grad(&loss, &[&x0, &xs[0]]).unwrap();
        assert_eq!(
            grads[1].shape(),
            xs[0].shape(),
            "{}: weight grad",
            case.name
        );
        drop((loss, y, grads));
        assert_eq!(live(device), before, "{}: the graph is gone", case.name);
    }
}

#[test]
fn under_bf16_the_node_keeps_the_bf16_copy_and_the_f32_input_is_freed() {
    dropping_the_input(private_device(111), Precision::Bf16);
}

#[test]
fn under_f32_the_node_keeps_the_input_itself() {
    dropping_the_input(private_device(112), Precision::F32);
}
