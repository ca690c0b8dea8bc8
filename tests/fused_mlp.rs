//! The fused MLP ops (`linear_gelu`, `linear_residual`, the whole block `mlp_residual`,
//! `Mlp::forward_residual`): f64 gradient checks, bit-for-bit agreement on the CPU with the
//! composed ops they replaced (`linear` then `gelu`, `linear` then `add`), and the same ops
//! on the PTX interpreter, where `mlp_residual`'s backward must launch the GELU-derivative
//! GEMM epilogue and must not keep the activation alive.

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

/// `mlp_residual` with and without each bias, as `[x, w1, (b1), w2, (b2), r]`.
const MLP_VARIANTS: [(&str, Op, Op, [bool; 2]); 4] = [
    (
        "both biases",
        |t| t[0].mlp_residual(&t[1], Some(&t[2]), &t[3], Some(&t[4]), &t[5]),
        |t| {
            t[0].linear_gelu(&t[1], Some(&t[2]))?
                .linear_residual(&t[3], Some(&t[4]), &t[5])
        },
        [true, true],
    ),
    (
        "no biases",
        |t| t[0].mlp_residual(&t[1], None, &t[2], None, &t[3]),
        |t| t[3].add(&t[0].linear(&t[1], None)?.gelu()?.linear(&t[2], None)?),
        [false, false],
    ),
    (
        "fc1 bias only",
        |t| t[0].mlp_residual(&t[1], Some(&t[2]), &t[3], None, &t[4]),
        |t| {
            t[4].add(
                &t[0]
                    .linear(&t[1], Some(&t[2]))?
                    .gelu()?
                    .linear(&t[3], None)?,
            )
        },
        [true, false],
    ),
    (
        "fc2 bias only",
        |t| t[0].mlp_residual(&t[1], None, &t[2], Some(&t[3]), &t[4]),
        |t| {
            t[0].linear_gelu(&t[1], None)?
                .linear_residual(&t[2], Some(&t[3]), &t[4])
        },
        [false, true],
    ),
];

/// The inputs of an MLP variant for `x_shape` (last axis `in`), hidden and output widths.
fn mlp_inputs<E: Element>(
    x_shape: &[usize],
    hidden: usize,
    out_f: usize,
    biases: [bool; 2],
    seed: u64,
) -> Vec<Tensor<E>> {
    let in_f = *x_shape.last().unwrap();
    let mut r_shape = x_shape.to_vec();
    *r_shape.last_mut().unwrap() = out_f;
    let mut v = vec![
        rnd::<E>(x_shape, seed),
        rnd::<E>(&[hidden, in_f], seed + 1).mul_scalar(0.3).unwrap(),
    ];
    if biases[0] {
        v.push(rnd::<E>(&[hidden], seed + 2));
    }
    v.push(
        rnd::<E>(&[out_f, hidden], seed + 3)
            .mul_scalar(0.3)
            .unwrap(),
    );
    if biases[1] {
        v.push(rnd::<E>(&[out_f], seed + 4));
    }
    v.push(rnd::<E>(&r_shape, seed + 5));
    v
}

#[test]
fn mlp_residual_matches_the_composed_ops_bit_for_bit() {
    // Odd widths on one thread; a 1-D input; a wide block on the parallel GEMM and GELU
    // paths; in != out (the residual is the output's, not the input's, shape).
    let shapes: [(&[usize], usize, usize); 4] = [
        (&[3, 5, 7], 13, 7),
        (&[9], 22, 9),
        (&[2, 3, 4, 6], 10, 5),
        (&[4, 64, 96], 384, 96),
    ];
    for (seed, (x_shape, hidden, out_f)) in shapes.into_iter().enumerate() {
        for (name, fused, composed, biases) in MLP_VARIANTS {
            let inputs = mlp_inputs::<f32>(x_shape, hidden, out_f, biases, 30 + 10 * seed as u64);
            assert_same_bits(
                fused,
                composed,
                &inputs,
                &format!("mlp_residual {name} {x_shape:?} -> {hidden} -> {out_f}"),
            );
        }
    }
}

#[test]
fn mlp_residual_computes_only_the_gradients_asked_for() {
    let (name, fused, composed, biases) = MLP_VARIANTS[0];
    let inputs = mlp_inputs::<f32>(&[3, 5, 8], 12, 8, biases, 60);
    // Each input alone wants a gradient, then every pair with the residual.
    for want in 0..inputs.len() {
        let run = |f: Op| {
            let leaves: Vec<Tensor<f32>> = inputs
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let t = t.copy().unwrap();
                    if i == want {
                        t.requires_grad_()
                    } else {
                        t
                    }
                })
                .collect();
            let y = f(&leaves).unwrap();
            y.mul(&rnd::<f32>(y.shape(), 61))
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            leaves
                .iter()
                .map(|t| t.grad().map(|g| bits(&g)))
                .collect::<Vec<_>>()
        };
        let (a, b) = (run(fused), run(composed));
        assert!(a[want].is_some(), "{name}: input {want} got no gradient");
        for (i, g) in a.iter().enumerate() {
            assert_eq!(g.is_some(), i == want, "{name}: input {i} (wanted {want})");
        }
        assert_eq!(a, b, "{name}: gradient of input {want} alone");
    }
}

#[test]
fn mlp_residual_gradients_match_central_differences_in_f64() {
    let cfg = GradCheck::default();
    for (x_shape, hidden, out_f) in [(&[2usize, 3, 4][..], 6usize, 4usize), (&[5], 7, 3)] {
        let both = mlp_inputs::<f64>(x_shape, hidden, out_f, [true, true], 70);
        check_gradients(
            |t| t[0].mlp_residual(&t[1], Some(&t[2]), &t[3], Some(&t[4]), &t[5]),
            &both,
            cfg,
        )
        .unwrap();
        let none = mlp_inputs::<f64>(x_shape, hidden, out_f, [false, false], 80);
        check_gradients(
            |t| t[0].mlp_residual(&t[1], None, &t[2], None, &t[3]),
            &none,
            cfg,
        )
        .unwrap();
    }
    // Transposed weight views: the GEMMs read them in place.
    let t = mlp_inputs::<f64>(&[2, 3, 4], 6, 4, [false, false], 90);
    let (w1t, w2t) = (
        t[1].t().unwrap().copy().unwrap(),
        t[2].t().unwrap().copy().unwrap(),
    );
    check_gradients(
        |t| t[0].mlp_residual(&t[1].t()?, None, &t[2].t()?, None, &t[3]),
        &[t[0].clone(), w1t, w2t, t[3].clone()],
        cfg,
    )
    .unwrap();
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
    // mlp_residual names the layer whose operand is wrong, and every shape.
    let (w1, w2) = (rnd::<f32>(&[6, 4], 6), rnd::<f32>(&[3, 6], 7));
    let r = rnd::<f32>(&[2, 3], 8);
    for (what, e, fragments) in [
        (
            "fc1 weight",
            x.mlp_residual(&rnd::<f32>(&[6, 5], 9), None, &w2, None, &r),
            &["fc1", "in-features", "[6, 5]"][..],
        ),
        (
            "fc1 bias",
            x.mlp_residual(&w1, Some(&rnd::<f32>(&[4], 10)), &w2, None, &r),
            &["fc1", "bias", "[4]"][..],
        ),
        (
            "fc2 weight",
            x.mlp_residual(&w1, None, &rnd::<f32>(&[3, 5], 11), None, &r),
            &["fc2", "in-features", "[3, 5]"][..],
        ),
        (
            "fc2 bias",
            x.mlp_residual(&w1, None, &w2, Some(&rnd::<f32>(&[6], 12)), &r),
            &["fc2", "bias"][..],
        ),
        (
            "residual",
            x.mlp_residual(&w1, None, &w2, None, &rnd::<f32>(&[2, 4], 13)),
            &["fc2", "residual", "[2, 4]"][..],
        ),
    ] {
        let e = e.unwrap_err().to_string();
        assert!(e.starts_with("mlp_residual"), "{what}: {e}");
        for f in fragments {
            assert!(e.contains(f), "{what}: {e} lacks {f}");
        }
    }
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
    // The whole block: 70 rows, hidden 130 (3 tiles), 40 in and out; every variant.
    for (name, fused, _, biases) in MLP_VARIANTS {
        same_on(
            device,
            &format!("mlp_residual {name}"),
            fused,
            &mlp_inputs::<f32>(&[2, 35, 40], 130, 40, biases, 25),
            1e-5,
        );
    }
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

/// The PTX interpreter behind a driver that records the kernels launched, registered as a
/// device of its own (whose live bytes the registry counts).
#[cfg(feature = "ptx-sim")]
mod recording {
    use std::sync::Mutex;

    use tarflow::gpu::{Driver, Forward, KernelArg, LaunchConfig, PtxModule, PtxSim};
    use tarflow::Result;

    #[derive(Default)]
    pub struct Recording {
        sim: PtxSim,
        launches: Mutex<Vec<String>>,
    }

    impl Recording {
        /// Forgets the launches so far and returns them.
        pub fn take_launches(&self) -> Vec<String> {
            std::mem::take(&mut *self.launches.lock().unwrap())
        }
    }

    impl Forward for Recording {
        fn inner(&self) -> &dyn Driver {
            &self.sim
        }
        fn name(&self) -> String {
            "recording ptx-sim".to_string()
        }
        fn launch(
            &self,
            module: &PtxModule,
            kernel: &str,
            config: LaunchConfig,
            args: &[KernelArg],
        ) -> Result<()> {
            self.launches.lock().unwrap().push(kernel.to_string());
            self.sim.launch(module, kernel, config, args)
        }
    }
}

/// On a device, `mlp_residual`'s backward computes `(g W2) * gelu'(pre)` with one launch of
/// `gemm_f32_gelu_grad` where the composed ops launch a GEMM and an elementwise kernel, and
/// between forward and backward it keeps one `[rows, hidden]` tensor less alive (the
/// activation) than `linear_gelu` + `linear_residual`.
#[cfg(feature = "ptx-sim")]
#[test]
fn mlp_residual_backward_launches_the_gelu_grad_epilogue_and_keeps_no_activation() {
    use std::sync::Arc;
    use tarflow::gpu::registry;
    use tarflow::Device;
    // An ordinal no other test of this file uses.
    let device = Device::Cuda(7);
    let rec = Arc::new(recording::Recording::default());
    registry::register(device, rec.clone()).unwrap();
    let (name, fused, composed, biases) = MLP_VARIANTS[0];
    let (rows, hidden) = (2 * 9, 24);
    let inputs: Vec<Tensor<f32>> = mlp_inputs::<f32>(&[2, 9, 8], hidden, 8, biases, 40)
        .iter()
        .map(|t| t.to_device(device).unwrap().requires_grad_())
        .collect();
    let proj = rnd::<f32>(&[2, 9, 8], 41).to_device(device).unwrap();
    // Live bytes while the graph is alive, the backward's launches, the gradients' bits.
    let live = || tarflow::gpu::memory_stats(device).unwrap().live_bytes as usize;
    let run = |f: Op| {
        let before = live();
        let loss = f(&inputs).unwrap().mul(&proj).unwrap().sum_all().unwrap();
        let kept = live() - before;
        rec.take_launches();
        let wrt: Vec<&Tensor<f32>> = inputs.iter().collect();
        let grads = tarflow::autograd::grad(&loss, &wrt).unwrap();
        let launches = rec.take_launches();
        let bits: Vec<Vec<u32>> = grads
            .iter()
            .map(|g| {
                g.try_to_vec()
                    .unwrap()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect()
            })
            .collect();
        (kept, launches, bits)
    };
    let (kept_f, launches_f, bits_f) = run(fused);
    let (kept_c, launches_c, bits_c) = run(composed);
    registry::unregister(device);
    let count = |l: &[String], k: &str| l.iter().filter(|n| *n == k).count();
    assert_eq!(
        count(&launches_f, "gemm_f32_gelu_grad"),
        1,
        "{name}: {launches_f:?}"
    );
    assert_eq!(
        count(&launches_c, "gemm_f32_gelu_grad"),
        0,
        "{name}: {launches_c:?}"
    );
    // The composed backward's extra elementwise launch is gone; the fused one launches the
    // GELU once more (recomputing the activation for fc2's weight gradient).
    assert_eq!(
        count(&launches_f, "binary_f32") + 1,
        count(&launches_c, "binary_f32"),
        "{name}: fused {launches_f:?}, composed {launches_c:?}"
    );
    assert_eq!(
        count(&launches_f, "unary_f32"),
        count(&launches_c, "unary_f32") + 1
    );
    assert_eq!(
        kept_c - kept_f,
        rows * hidden * 4,
        "{name}: bytes kept alive by the graph"
    );
    // And the epilogue changes no bit: the same kernels' arithmetic in one launch.
    assert_eq!(bits_f, bits_c, "{name}: gradients");
}

/// Under bf16 products on a device, the MLP's epilogues run inside the tensor-core GEMMs:
/// `mlp_residual`'s forward launches `gemm_bf16_nt_gelu` and `gemm_bf16_nt_residual` (the
/// weights are read as stored, `[out, in]`) and no elementwise kernel, its backward launches
/// `gemm_bf16_nn_gelu_grad`, and the output and
/// every gradient have the bits of the composed ops (`linear`, `gelu`, `linear`, `add`), which
/// run the product and the elementwise kernels one after the other.
#[cfg(feature = "ptx-sim")]
#[test]
fn under_bf16_the_mlp_epilogues_run_in_the_tensor_core_gemms_with_the_composed_bits() {
    use std::sync::Arc;
    use tarflow::backend::{matmul_precision, Precision};
    use tarflow::gpu::registry;
    use tarflow::Device;
    // An ordinal no other test of this file uses.
    let device = Device::Cuda(6);
    let rec = Arc::new(recording::Recording::default());
    registry::register(device, rec.clone()).unwrap();
    let _bf16 = matmul_precision(Precision::Bf16);
    let fused: Op = |t| t[0].mlp_residual(&t[1], Some(&t[2]), &t[3], Some(&t[4]), &t[5]);
    let composed: Op = |t| {
        t[5].add(
            &t[0]
                .linear(&t[1], Some(&t[2]))?
                .gelu()?
                .linear(&t[3], Some(&t[4]))?,
        )
    };
    // Rows and features ragged against the 64 x 64 tile; 70 > 64 features in.
    let inputs: Vec<Tensor<f32>> = mlp_inputs::<f32>(&[3, 29, 70], 136, 70, [true, true], 50)
        .iter()
        .map(|t| t.to_device(device).unwrap().requires_grad_())
        .collect();
    let proj = rnd::<f32>(&[3, 29, 70], 51).to_device(device).unwrap();
    let bits = common::bits;
    let run = |f: Op| {
        rec.take_launches();
        let y = f(&inputs).unwrap();
        let forward = rec.take_launches();
        let loss = y.mul(&proj).unwrap().sum_all().unwrap();
        rec.take_launches();
        let wrt: Vec<&Tensor<f32>> = inputs.iter().collect();
        let grads = tarflow::autograd::grad(&loss, &wrt).unwrap();
        let backward = rec.take_launches();
        let mut all = vec![bits(&y)];
        all.extend(grads.iter().map(bits));
        (forward, backward, all)
    };
    let (fwd_f, bwd_f, bits_f) = run(fused);
    let (fwd_c, bwd_c, bits_c) = run(composed);
    registry::unregister(device);
    let count = |l: &[String], k: &str| l.iter().filter(|n| *n == k).count();
    for (k, launches, n) in [
        ("gemm_bf16_nt_gelu", &fwd_f, 1),
        ("gemm_bf16_nt_residual", &fwd_f, 1),
        ("unary_f32", &fwd_f, 0),
        ("binary_f32", &fwd_f, 0),
        ("gemm_bf16_nn_gelu_grad", &bwd_f, 1),
        ("gemm_bf16_nt_gelu", &fwd_c, 0),
        ("gemm_bf16_nt_residual", &fwd_c, 0),
        ("gemm_bf16_nn_gelu_grad", &bwd_c, 0),
    ] {
        assert_eq!(count(launches, k), n, "{k}: {launches:?}");
    }
    // No product in any other kernel, and every conversion reads its operand in the order
    // it is stored: the weight gradients' `g^T x` are `tn` products.
    assert_eq!(fwd_f.len(), 6, "{fwd_f:?}");
    assert_eq!(count(&bwd_f, "gemm_bf16_tn"), 2, "{bwd_f:?}");
    // Each layer's output gradient is converted to bf16 once for its two products (the
    // data and the weight gradient), besides the weights and fc2's recomputed activation:
    // g2, W2, act, gp, W1 fused; g2, W2, gh, W1 composed (whose second linear keeps the
    // activation's bf16 copy from the forward).
    let conversions = |l: &[String]| count(l, "strided_copy_f32_bf16");
    assert_eq!(conversions(&bwd_f), 5, "{bwd_f:?}");
    assert_eq!(conversions(&bwd_c), 4, "{bwd_c:?}");
    assert_eq!(bits_f, bits_c, "output and gradients");
}
