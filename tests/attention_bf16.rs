//! Fused attention under bf16 training precision (`backend::matmul_precision(Bf16)`) on a
//! GPU device: the forward runs the bf16 tensor-core kernels when `Dh == Dv` is 64 or 128,
//! the op saves q, k, v and the output as bf16 copies, and the backward reads those.
//!
//! - Against the CPU's f32 op on inputs already rounded to bf16, both layouts the model uses
//!   (`attention` on `[B, H, N, D]` and `attention_qkv` on a fused projection), causal and
//!   not, ragged token counts: outputs and input gradients within bf16-sized errors, and not
//!   the f32 device path's bits (the bf16 path is taken).
//! - Head dims the bf16 kernels do not take fall back to f32: the f32 device path's bits.
//! - The backward reads only what the forward saved: overwriting the f32 projection after
//!   the forward leaves the bf16 gradients unchanged (the f32 path, which reads the
//!   projection in place, changes); and the f32 projection is freed when the model drops
//!   it (the graph holds it by its node), which the device's live bytes show.
//!
//! Each body runs on `ptx-sim` and, in the `_cuda` twin, on `cuda:0` where a driver loads.

mod common;

use half::bf16;
use tarflow::backend::{matmul_precision, Precision};
use tarflow::ops::attention::{attention, attention_qkv, AttentionOptions};
use tarflow::{Device, Result, Rng, Tensor};

/// Outputs and gradients of one run: the output, then one gradient per input.
type Run = (Vec<f32>, Vec<Vec<f32>>);

type Case = dyn Fn(&[Tensor<f32>]) -> Result<Tensor<f32>>;

/// Standard normal values rounded to bf16, so the bf16 kernels see exactly the CPU's inputs.
fn bf16_exact(shape: &[usize], seed: u64) -> Tensor<f32> {
    let t = Tensor::<f32>::randn(shape, 0.0, 1.0, &mut Rng::new(seed));
    let v = t
        .to_vec()
        .iter()
        .map(|&x| bf16::from_f32(x).to_f32())
        .collect();
    Tensor::from_vec(v, shape).unwrap()
}

/// `f` on `device` at `precision` (held over the forward and the backward, as the trainer
/// does), the inputs fresh leaves there; backpropagates a fixed random projection of the
/// output.
fn run(device: Device, precision: Precision, f: &Case, inputs: &[Tensor<f32>]) -> Run {
    let _p = matmul_precision(precision);
    let xs: Vec<Tensor<f32>> = inputs
        .iter()
        .map(|t| t.to_device(device).unwrap().detach().requires_grad_())
        .collect();
    let y = f(&xs).unwrap();
    assert_eq!(y.device(), device, "the output left {device}");
    let proj = Tensor::<f32>::randn(y.shape(), 0.0, 1.0, &mut Rng::new(99));
    let proj = proj.to_device(device).unwrap();
    y.mul(&proj).unwrap().sum_all().unwrap().backward().unwrap();
    let grads = xs
        .iter()
        .map(|x| {
            x.grad()
                .expect("every input gets a gradient")
                .try_to_vec()
                .unwrap()
        })
        .collect();
    (y.try_to_vec().unwrap(), grads)
}

/// Largest `|got - want|` relative to the largest `|want|` (NaN-safe: a NaN gives NaN).
fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = common::worst(want.iter().map(|&v| (v as f64).abs())).max(1e-30);
    common::worst(
        got.iter()
            .zip(want)
            .map(|(&a, &b)| (a as f64 - b as f64).abs()),
    ) / scale
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn opts(causal: bool, dh: usize) -> AttentionOptions {
    AttentionOptions {
        causal,
        scale: 1.0 / (dh as f64).sqrt(),
        temperature: 0.8,
    }
}

/// Bound on the error of the bf16 path relative to each tensor's largest magnitude. Its
/// error is the rounding of `P` to bf16 in the forward (relative 2^-9 per term) and of the
/// output to bf16 in the backward's `D = sum dO o`; measured at most 2.2e-3 over these
/// cases, where a wrong index or a dropped term gives errors of order 1.
const BF16_TOL: f64 = 5e-3;

/// The bf16 path against the CPU's f32 op on the same (bf16-exact) inputs, and not the f32
/// device path's bits.
fn follows_cpu(device: Device, name: &str, f: &Case, inputs: &[Tensor<f32>]) {
    let cpu = run(Device::Cpu, Precision::F32, f, inputs);
    let dev = run(device, Precision::Bf16, f, inputs);
    let dev_f32 = run(device, Precision::F32, f, inputs);
    let mut pairs = vec![("output".to_string(), &dev.0, &cpu.0)];
    for (i, (g, c)) in dev.1.iter().zip(&cpu.1).enumerate() {
        pairs.push((format!("gradient {i}"), g, c));
    }
    for (what, got, want) in pairs {
        let e = rel_err(got, want);
        println!("{name} on {device}: {what} relative error {e:.2e}");
        assert!(
            e <= BF16_TOL,
            "{name} on {device}: {what} differs from the CPU by {e:.3e} (bound {BF16_TOL:.0e})"
        );
    }
    assert_ne!(
        bits(&dev.0),
        bits(&dev_f32.0),
        "{name} on {device}: the bf16 precision gave the f32 output bit for bit"
    );
    for (i, (g, g32)) in dev.1.iter().zip(&dev_f32.1).enumerate() {
        assert_ne!(
            bits(g),
            bits(g32),
            "{name} on {device}: bf16 gave the f32 gradient {i} bit for bit"
        );
    }
}

fn heads_case(causal: bool, dh: usize) -> Box<Case> {
    Box::new(move |x: &[Tensor<f32>]| attention(&x[0], &x[1], &x[2], None, opts(causal, dh)))
}

fn qkv_case(causal: bool, heads: usize, dh: usize) -> Box<Case> {
    Box::new(move |x: &[Tensor<f32>]| attention_qkv(&x[0], heads, None, opts(causal, dh)))
}

fn bf16_attention_follows_cpu(device: Device) {
    // 70 queries over 100 keys: three query tiles of 32 in the backward, two of 64 in the
    // bf16 forward, ragged; causal with offset 30, and not.
    let (b, h, nq, nk, d) = (2, 2, 70, 100, 64);
    let inputs = [
        bf16_exact(&[b, h, nq, d], 1),
        bf16_exact(&[b, h, nk, d], 2),
        bf16_exact(&[b, h, nk, d], 3),
    ];
    for causal in [true, false] {
        let name = format!("attention causal={causal} [2, 2, 70|100, 64]");
        follows_cpu(device, &name, &*heads_case(causal, d), &inputs);
    }
    // The model's layout: a fused [B, N, 3 C] projection, two heads of 64, N = 77.
    let (n, heads) = (77, 2);
    let qkv = [bf16_exact(&[b, n, 3 * heads * d], 4)];
    for causal in [true, false] {
        let name = format!("attention_qkv causal={causal} [2, 77, 384]");
        follows_cpu(device, &name, &*qkv_case(causal, heads, d), &qkv);
    }
}

#[test]
fn bf16_attention_on_the_ptx_interpreter_follows_cpu() {
    bf16_attention_follows_cpu(Device::PtxSim);
}

#[test]
fn bf16_attention_follows_cpu_on_cuda() {
    match tarflow::gpu::registry::driver(Device::Cuda(0)) {
        Ok(_) => bf16_attention_follows_cpu(Device::Cuda(0)),
        Err(e) => eprintln!("cuda:0 skipped: {e}"),
    }
}

/// Head dims the bf16 kernels do not take (32, and 64 with values of 32) run the f32
/// kernels under bf16 precision too: the f32 device path's bits, output and gradients.
fn other_dims_fall_back_to_f32(device: Device) {
    let (b, h, n) = (1, 2, 70);
    let cases: Vec<(String, Box<Case>, Vec<Tensor<f32>>)> = vec![
        (
            "attention dh = dv = 32".into(),
            heads_case(true, 32),
            vec![
                bf16_exact(&[b, h, n, 32], 5),
                bf16_exact(&[b, h, n, 32], 6),
                bf16_exact(&[b, h, n, 32], 7),
            ],
        ),
        (
            "attention dh = 64, dv = 32".into(),
            heads_case(false, 64),
            vec![
                bf16_exact(&[b, h, n, 64], 8),
                bf16_exact(&[b, h, n, 64], 9),
                bf16_exact(&[b, h, n, 32], 10),
            ],
        ),
        (
            "attention_qkv dh = 32".into(),
            qkv_case(true, 2, 32),
            vec![bf16_exact(&[b, n, 3 * 2 * 32], 11)],
        ),
    ];
    for (name, f, inputs) in cases {
        let bf = run(device, Precision::Bf16, &*f, &inputs);
        let f32s = run(device, Precision::F32, &*f, &inputs);
        assert_eq!(bits(&bf.0), bits(&f32s.0), "{name} on {device}: output");
        for (i, (g, g32)) in bf.1.iter().zip(&f32s.1).enumerate() {
            assert_eq!(bits(g), bits(g32), "{name} on {device}: gradient {i}");
        }
    }
}

#[test]
fn other_head_dims_fall_back_to_f32_on_the_ptx_interpreter() {
    other_dims_fall_back_to_f32(Device::PtxSim);
}

#[test]
fn other_head_dims_fall_back_to_f32_on_cuda() {
    match tarflow::gpu::registry::driver(Device::Cuda(0)) {
        Ok(_) => other_dims_fall_back_to_f32(Device::Cuda(0)),
        Err(e) => eprintln!("cuda:0 skipped: {e}"),
    }
}

/// The gradient of a fused projection through `attention_qkv`, with the projection's
/// values overwritten (in place, on the device) between the forward and the backward when
/// `overwrite`.
fn qkv_grad(device: Device, precision: Precision, x: &Tensor<f32>, overwrite: bool) -> Vec<f32> {
    let _p = matmul_precision(precision);
    let qkv = x.to_device(device).unwrap().detach().requires_grad_();
    let y = attention_qkv(&qkv, 2, None, opts(true, 64)).unwrap();
    let proj = Tensor::<f32>::randn(y.shape(), 0.0, 1.0, &mut Rng::new(98));
    let loss = y
        .mul(&proj.to_device(device).unwrap())
        .unwrap()
        .sum_all()
        .unwrap();
    if overwrite {
        qkv.assign(&bf16_exact(x.shape(), 12)).unwrap();
    }
    loss.backward().unwrap();
    qkv.grad().unwrap().try_to_vec().unwrap()
}

/// Under bf16 the node keeps its own bf16 copies and none of the f32 projection: its
/// gradient does not see the projection change after the forward. The f32 node reads the
/// projection in place, so there the same change shows (the check can fail).
fn backward_reads_only_the_saved_copies(device: Device) {
    let x = bf16_exact(&[1, 70, 3 * 2 * 64], 13);
    let bf = qkv_grad(device, Precision::Bf16, &x, false);
    let bf_over = qkv_grad(device, Precision::Bf16, &x, true);
    assert!(bf.iter().all(|v| v.is_finite()), "bf16 gradient not finite");
    assert_eq!(
        bits(&bf_over),
        bits(&bf),
        "on {device}: the bf16 backward read the f32 projection after the forward"
    );
    let f = qkv_grad(device, Precision::F32, &x, false);
    let f_over = qkv_grad(device, Precision::F32, &x, true);
    assert_ne!(
        bits(&f_over),
        bits(&f),
        "on {device}: the f32 backward did not see the overwritten projection"
    );
}

#[test]
fn backward_reads_only_the_saved_copies_on_the_ptx_interpreter() {
    backward_reads_only_the_saved_copies(Device::PtxSim);
}

#[test]
fn backward_reads_only_the_saved_copies_on_cuda() {
    match tarflow::gpu::registry::driver(Device::Cuda(0)) {
        Ok(_) => backward_reads_only_the_saved_copies(Device::Cuda(0)),
        Err(e) => eprintln!("cuda:0 skipped: {e}"),
    }
}

/// Live device bytes freed by dropping the caller's handle on a fused projection after the
/// attention forward (at `precision`, on a private interpreter device that counts them).
fn bytes_freed_by_dropping_the_projection(ordinal: usize, precision: Precision) -> u64 {
    use std::sync::Arc;
    use tarflow::gpu::{memory_stats, registry, PtxSim};
    let device = Device::Cuda(ordinal);
    registry::register(device, Arc::new(PtxSim::new())).unwrap();
    let _p = matmul_precision(precision);
    let x = bf16_exact(&[1, 70, 64], 21)
        .to_device(device)
        .unwrap()
        .requires_grad_();
    let w = bf16_exact(&[64, 3 * 2 * 64], 22)
        .to_device(device)
        .unwrap()
        .requires_grad_();
    // An op's output, as in the model: nothing but the attention node needs it later.
    let qkv = x.matmul(&w).unwrap();
    let y = attention_qkv(&qkv, 2, None, opts(true, 64)).unwrap();
    let before = memory_stats(device).unwrap().live_bytes;
    drop(qkv);
    let after = memory_stats(device).unwrap().live_bytes;
    y.sum_all().unwrap().backward().unwrap();
    assert!(w.grad().is_some());
    before - after
}

/// The graph holds an op's inputs by their nodes, not their storage, so under bf16 (the node
/// kept bf16 copies) the f32 projection is freed as soon as the caller drops it; under f32
/// the node still needs it.
#[test]
fn under_bf16_the_graph_does_not_keep_the_f32_projection() {
    let qkv_bytes = 70 * 3 * 2 * 64 * 4;
    assert_eq!(
        bytes_freed_by_dropping_the_projection(201, Precision::Bf16),
        qkv_bytes
    );
    assert_eq!(
        bytes_freed_by_dropping_the_projection(202, Precision::F32),
        0
    );
}

/// Live device bytes a training forward of one attention half leaves (`r + attn(x)` with
/// the residual in the output projection's epilogue, or composed of `forward` and `add`), on
/// a private interpreter device under bf16.
fn bytes_after_the_attention_half(ordinal: usize, fused: bool) -> u64 {
    use std::sync::Arc;
    use tarflow::gpu::{memory_stats, registry, PtxSim};
    use tarflow::nn::attention::CausalSelfAttention;
    let device = Device::Cuda(ordinal);
    registry::register(device, Arc::new(PtxSim::new())).unwrap();
    let _p = matmul_precision(Precision::Bf16);
    let layer = CausalSelfAttention::<f32>::new(128, 64, &mut Rng::new(23))
        .unwrap()
        .to_device(device)
        .unwrap();
    let leaf = |seed| {
        bf16_exact(&[2, 21, 128], seed)
            .to_device(device)
            .unwrap()
            .requires_grad_()
    };
    let (x, r) = (leaf(24), leaf(25));
    let before = memory_stats(device).unwrap().live_bytes;
    let y = if fused {
        layer.forward_residual(&x, &r, 1.0).unwrap()
    } else {
        r.add(&layer.forward(&x, 1.0).unwrap()).unwrap()
    };
    let kept = memory_stats(device).unwrap().live_bytes - before;
    y.sum_all().unwrap().backward().unwrap();
    assert!(layer.out_weight.grad().is_some() && x.grad().is_some());
    kept
}

/// Under bf16 the attention keeps a bf16 copy of its output for its backward, and the output
/// projection a bf16 copy of its input for the weight gradient: the same values. The fused
/// attention half (`forward_residual`, the model's) keeps one copy for both; the composed
/// form, whose projection converts its input again, keeps two. (The gradients are the same
/// bits either way: `tests/device_ops.rs`, `attention_residual_is_the_composed_sum`.)
#[test]
fn the_output_projection_shares_the_attentions_bf16_copy() {
    let copy_bytes = 2 * 21 * 128 * 2;
    assert_eq!(
        bytes_after_the_attention_half(203, false) - bytes_after_the_attention_half(204, true),
        copy_bytes
    );
}
