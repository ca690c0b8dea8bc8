//! The fused MLP halves (`linear_gelu`, `linear_residual`, `Mlp::forward_residual`): f64
//! gradient checks, bit-for-bit agreement on the CPU with the composed ops they replaced
//! (`linear` then `gelu`, `linear` then `add`), and the same ops on the PTX interpreter.

mod common;

use tarflow::gradcheck::{check_gradients, GradCheck};
use tarflow::nn::Mlp;
use tarflow::{Element, Result, Rng, Tensor};

fn rnd<E: Element>(shape: &[usize], seed: u64) -> Tensor<E> {
    Tensor::randn(shape, 0.0, 1.0, &mut Rng::new(seed))
}

fn bits<E: Element>(t: &Tensor<E>) -> Vec<u64> {
    t.to_f64_vec().iter().map(|v| v.to_bits()).collect()
}

type Op = fn(&[Tensor<f32>]) -> Result<Tensor<f32>>;

/// Output bits and the bits of every input's gradient of `sum(f(inputs) * proj)`.
fn run_bits(f: Op, inputs: &[Tensor<f32>]) -> Vec<Vec<u64>> {
    let leaves: Vec<Tensor<f32>> = inputs
        .iter()
        .map(|t| t.copy().unwrap().requires_grad_())
        .collect();
    let y = f(&leaves).unwrap();
    let proj = rnd::<f32>(y.shape(), 99);
    y.mul(&proj).unwrap().sum_all().unwrap().backward().unwrap();
    let mut out = vec![bits(&y)];
    out.extend(leaves.iter().map(|t| bits(&t.grad().unwrap())));
    out
}

fn assert_same_bits(fused: Op, composed: Op, inputs: &[Tensor<f32>], what: &str) {
    let (a, b) = (run_bits(fused, inputs), run_bits(composed, inputs));
    assert_eq!(a[0], b[0], "{what}: output");
    for i in 1..a.len() {
        assert_eq!(a[i], b[i], "{what}: gradient of input {}", i - 1);
    }
}

#[test]
fn linear_gelu_and_linear_residual_match_the_composed_ops_bit_for_bit() {
    // [2, 5, 24] -> 40: one thread; [4, 64, 96] -> 384: the parallel GEMM and GELU paths.
    for (x_shape, out_f, seed) in [([2usize, 5, 24], 40usize, 1u64), ([4, 64, 96], 384, 2)] {
        let in_f = x_shape[2];
        let x = rnd::<f32>(&x_shape, seed);
        let w = rnd::<f32>(&[out_f, in_f], seed + 1)
            .mul_scalar(0.2)
            .unwrap();
        let b = rnd::<f32>(&[out_f], seed + 2);
        let r = rnd::<f32>(&[x_shape[0], x_shape[1], out_f], seed + 3);
        let what = format!("{x_shape:?} -> {out_f}");
        assert_same_bits(
            |t| t[0].linear_gelu(&t[1], Some(&t[2])),
            |t| t[0].linear(&t[1], Some(&t[2]))?.gelu(),
            &[x.clone(), w.clone(), b.clone()],
            &format!("linear_gelu {what}"),
        );
        assert_same_bits(
            |t| t[0].linear_gelu(&t[1], None),
            |t| t[0].linear(&t[1], None)?.gelu(),
            &[x.clone(), w.clone()],
            &format!("linear_gelu without bias {what}"),
        );
        assert_same_bits(
            |t| t[0].linear_residual(&t[1], Some(&t[2]), &t[3]),
            |t| t[3].add(&t[0].linear(&t[1], Some(&t[2]))?),
            &[x.clone(), w.clone(), b.clone(), r.clone()],
            &format!("linear_residual {what}"),
        );
    }
}

#[test]
fn the_fused_mlp_with_residual_is_bit_identical_to_the_composed_one() {
    let mlp = Mlp::<f32>::new(32, 4, &mut Rng::new(5));
    let x = rnd::<f32>(&[3, 7, 32], 6);
    let h = rnd::<f32>(&[3, 7, 32], 7);
    let params: Vec<Tensor<f32>> = mlp.parameters().into_iter().map(|(_, t)| t).collect();
    let fused = mlp.forward_residual(&x, &h).unwrap();
    let composed = h
        .add(
            &x.linear(&params[0], Some(&params[1]))
                .unwrap()
                .gelu()
                .unwrap()
                .linear(&params[2], Some(&params[3]))
                .unwrap(),
        )
        .unwrap();
    assert_eq!(bits(&fused), bits(&composed));
    let r = rnd::<f32>(&[3, 7, 32], 8);
    let wrt: Vec<&Tensor<f32>> = params.iter().collect();
    let gf = tarflow::autograd::grad(&fused.mul(&r).unwrap().sum_all().unwrap(), &wrt).unwrap();
    let gc = tarflow::autograd::grad(&composed.mul(&r).unwrap().sum_all().unwrap(), &wrt).unwrap();
    for (i, (a, b)) in gf.iter().zip(&gc).enumerate() {
        assert_eq!(bits(a), bits(b), "parameter {i}");
    }
    // forward() (no residual) is the fused first half and a plain linear.
    let plain = mlp.forward(&x).unwrap();
    assert_eq!(bits(&plain.add(&h).unwrap()), bits(&composed));
}

#[test]
fn fused_linear_gradients_match_central_differences_in_f64() {
    let x = rnd::<f64>(&[2, 3, 4], 10);
    let w = rnd::<f64>(&[5, 4], 11);
    let b = rnd::<f64>(&[5], 12);
    let r = rnd::<f64>(&[2, 3, 5], 13);
    let cfg = GradCheck::default();
    check_gradients(
        |t| t[0].linear_gelu(&t[1], Some(&t[2])),
        &[x.clone(), w.clone(), b.clone()],
        cfg,
    )
    .unwrap();
    // A transposed weight view: the GEMM reads it in place.
    check_gradients(
        |t| t[0].linear_gelu(&t[1].t()?, None),
        &[x.clone(), rnd::<f64>(&[4, 5], 14)],
        cfg,
    )
    .unwrap();
    check_gradients(
        |t| t[0].linear_residual(&t[1], Some(&t[2]), &t[3]),
        &[x.clone(), w.clone(), b, r],
        cfg,
    )
    .unwrap();
}

#[test]
fn bad_fused_linear_inputs_are_errors_naming_the_op() {
    let x = rnd::<f32>(&[2, 4], 1);
    let w = rnd::<f32>(&[3, 5], 2);
    let e = x.linear_gelu(&w, None).unwrap_err().to_string();
    assert!(e.starts_with("linear_gelu") && e.contains("[3, 5]"), "{e}");
    let w = rnd::<f32>(&[3, 4], 3);
    let e = x
        .linear_gelu(&w, Some(&rnd::<f32>(&[4], 4)))
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("linear_gelu") && e.contains("bias"), "{e}");
    let e = x
        .linear_residual(&w, None, &rnd::<f32>(&[2, 4], 5))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("linear_residual") && e.contains("residual"),
        "{e}"
    );
}

/// The op on `device` against the CPU, outputs and every input gradient, within `tol` of
/// each tensor's largest CPU magnitude.
#[cfg(feature = "ptx-sim")]
fn same_on(device: tarflow::Device, name: &str, f: Op, inputs: &[Tensor<f32>], tol: f64) {
    use tarflow::Device;
    let run = |dev: Device| {
        let leaves: Vec<Tensor<f32>> = inputs
            .iter()
            .map(|t| t.to_device(dev).unwrap().detach().requires_grad_())
            .collect();
        let y = f(&leaves).unwrap();
        assert_eq!(y.device(), dev, "{name}: output left the device");
        let proj = rnd::<f32>(y.shape(), 77).to_device(dev).unwrap();
        y.mul(&proj).unwrap().sum_all().unwrap().backward().unwrap();
        let mut out = vec![y.try_to_vec().unwrap()];
        out.extend(
            leaves
                .iter()
                .map(|t| t.grad().unwrap().try_to_vec().unwrap()),
        );
        out
    };
    let (c, g) = (run(Device::Cpu), run(device));
    for (i, (a, b)) in g.iter().zip(&c).enumerate() {
        let scale = common::worst(b.iter().map(|&v| (v as f64).abs())).max(1e-30);
        let e = common::worst(a.iter().zip(b).map(|(&p, &q)| (p as f64 - q as f64).abs()));
        assert!(
            e <= tol * scale,
            "{name} on {device}: tensor {i} (0 = output) differs by {e:.3e} (scale {scale:.3e})"
        );
    }
}

#[cfg(feature = "ptx-sim")]
fn fused_linears_on(device: tarflow::Device) {
    // 70 rows x 130 outputs: 2 x 3 tiles of 64, both ragged; k = 40 spans three k-tiles.
    let x = rnd::<f32>(&[2, 35, 40], 20);
    let w = rnd::<f32>(&[130, 40], 21).mul_scalar(0.2).unwrap();
    let b = rnd::<f32>(&[130], 22);
    let r = rnd::<f32>(&[2, 35, 130], 23);
    same_on(
        device,
        "linear_gelu",
        |t| t[0].linear_gelu(&t[1], Some(&t[2])),
        &[x.clone(), w.clone(), b.clone()],
        1e-5,
    );
    same_on(
        device,
        "linear_residual",
        |t| t[0].linear_residual(&t[1], Some(&t[2]), &t[3]),
        &[x.clone(), w.clone(), b, r],
        1e-5,
    );
    // A transposed weight and no bias.
    same_on(
        device,
        "linear_gelu of w^T",
        |t| t[0].linear_gelu(&t[1].t()?, None),
        &[x, rnd::<f32>(&[40, 130], 24)],
        1e-5,
    );
}

#[cfg(feature = "ptx-sim")]
#[test]
fn fused_linears_on_ptx_sim_match_the_cpu() {
    fused_linears_on(tarflow::Device::PtxSim);
}

#[cfg(feature = "ptx-sim")]
#[test]
fn fused_linears_on_cuda_match_the_cpu_cuda() {
    match tarflow::gpu::registry::driver(tarflow::Device::Cuda(0)) {
        Ok(_) => fused_linears_on(tarflow::Device::Cuda(0)),
        Err(e) => eprintln!("cuda:0 skipped: {e}"),
    }
}
