//! The fused affine coupling (`Tensor::affine_coupling` and its inverse): f64 gradient checks,
//! and bit-for-bit agreement with the composed ops it replaced in `FlowBlock::forward`
//! (shift by concat, soft clip, sub, neg, exp, mul, sum, neg), values and gradients.

mod common;

use tarflow::gradcheck::{check_gradients, GradCheck};
use tarflow::model::{FlowBlock, TarFlow, TarFlowConfig};
use tarflow::{Element, Result, Rng, Tensor};

fn rnd<E: Element>(shape: &[usize], seed: u64) -> Tensor<E> {
    Tensor::randn(shape, 0.0, 1.0, &mut Rng::new(seed))
}

/// `z` and `logdet` as one vector, for checks that take a single output.
fn packed<E: Element>(z: &Tensor<E>, logdet: &Tensor<E>) -> Result<Tensor<E>> {
    Tensor::concat(&[&z.reshape(&[z.numel()])?, logdet], 0)
}

/// The composed coupling `FlowBlock::forward` ran before the fused op.
fn composed<E: Element>(
    xp: &Tensor<E>,
    alpha: &Tensor<E>,
    mu: &Tensor<E>,
    clip: Option<f64>,
) -> Result<(Tensor<E>, Tensor<E>)> {
    let alpha = match clip {
        Some(a) => alpha.soft_clip(a)?,
        None => alpha.clone(),
    };
    let alpha = FlowBlock::shift(&alpha)?;
    let mu = FlowBlock::shift(mu)?;
    let z = xp.sub(&mu)?.mul(&alpha.neg()?.exp()?)?;
    let logdet = alpha.sum(&[1, 2], false)?.neg()?;
    Ok((z, logdet))
}

fn bits<E: Element>(t: &Tensor<E>) -> Vec<u64> {
    t.to_f64_vec().iter().map(|v| v.to_bits()).collect()
}

/// Runs one coupling on fresh leaves and returns the output bits and the bits of the
/// gradients of `sum(z * r) + sum(logdet * s)` for `x` and the projection output.
fn run_bits(
    dims: [usize; 3],
    clip: Option<f64>,
    fused: bool,
) -> (Vec<u64>, Vec<u64>, Vec<u64>, Vec<u64>) {
    let [b, l, d] = dims;
    let x = rnd::<f32>(&[b, l, d], 11).requires_grad_();
    let out = rnd::<f32>(&[b, l, 2 * d], 12)
        .mul_scalar(2.5)
        .unwrap()
        .requires_grad_();
    let xp = x.flip(1).unwrap();
    let (alpha, mu) = (out.narrow(2, 0, d).unwrap(), out.narrow(2, d, d).unwrap());
    let (z, logdet) = if fused {
        xp.affine_coupling(&alpha, &mu, clip).unwrap()
    } else {
        composed(&xp, &alpha, &mu, clip).unwrap()
    };
    let r = rnd::<f32>(&[b, l, d], 13);
    let s = rnd::<f32>(&[b], 14);
    let loss = z
        .mul(&r)
        .unwrap()
        .sum_all()
        .unwrap()
        .add(&logdet.mul(&s).unwrap().sum_all().unwrap())
        .unwrap();
    loss.backward().unwrap();
    (
        bits(&z),
        bits(&logdet),
        bits(&x.grad().unwrap()),
        bits(&out.grad().unwrap()),
    )
}

#[test]
fn fused_coupling_matches_the_composed_ops_bit_for_bit() {
    // Small shapes run on one thread; 4 x 64 x 160 = 40960 elements take the parallel paths
    // of both the fused kernel and the composed ops; 3 x 5 x 13 has a log-det sum with a
    // remainder after the 8 accumulators.
    for dims in [[2, 4, 3], [3, 5, 13], [1, 1, 4], [4, 64, 160]] {
        for clip in [None, Some(1.5), Some(4.0)] {
            let a = run_bits(dims, clip, true);
            let b = run_bits(dims, clip, false);
            let what = format!("{dims:?} clip {clip:?}");
            assert_eq!(a.0, b.0, "{what}: z");
            assert_eq!(a.1, b.1, "{what}: logdet");
            assert_eq!(a.2, b.2, "{what}: dx");
            assert_eq!(a.3, b.3, "{what}: d(alpha, mu)");
        }
    }
}

#[test]
fn fused_coupling_gradients_match_central_differences_in_f64() {
    for clip in [None, Some(1.5)] {
        let x = rnd::<f64>(&[2, 4, 3], 1);
        let alpha = rnd::<f64>(&[2, 4, 3], 2).mul_scalar(0.7).unwrap();
        let mu = rnd::<f64>(&[2, 4, 3], 3);
        let rep = check_gradients(
            |t| {
                let (z, ld) = t[0].affine_coupling(&t[1], &t[2], clip)?;
                packed(&z, &ld)
            },
            &[x.clone(), alpha.clone(), mu.clone()],
            GradCheck::default(),
        )
        .unwrap_or_else(|e| panic!("clip {clip:?}: {e}"));
        assert!(rep.checked > 0);
        // Strided operands: flipped tokens, parameters narrowed out of one projection.
        let proj = rnd::<f64>(&[2, 4, 6], 4);
        check_gradients(
            |t| {
                let xp = t[0].flip(1)?;
                let (a, m) = (t[1].narrow(2, 0, 3)?, t[1].narrow(2, 3, 3)?);
                let (z, ld) = xp.affine_coupling(&a, &m, clip)?;
                packed(&z, &ld)
            },
            &[x.clone(), proj],
            GradCheck::default(),
        )
        .unwrap_or_else(|e| panic!("strided, clip {clip:?}: {e}"));
    }
}

#[test]
fn only_the_log_det_or_only_z_gets_gradients_through() {
    let x = rnd::<f64>(&[2, 3, 2], 5).requires_grad_();
    let alpha = rnd::<f64>(&[2, 3, 2], 6).requires_grad_();
    let mu = rnd::<f64>(&[2, 3, 2], 7).requires_grad_();
    let (_, ld) = x.affine_coupling(&alpha, &mu, Some(2.0)).unwrap();
    let g = tarflow::autograd::grad(&ld.sum_all().unwrap(), &[&x, &alpha, &mu]).unwrap();
    // d logdet / d alpha_raw = -clip'(alpha) on every row but the last; x and mu: 0.
    let a = alpha.to_vec();
    let ga = g[1].to_vec();
    for (k, (&v, &gv)) in a.iter().zip(&ga).enumerate() {
        let row = (k / 2) % 3;
        let t = (v / 2.0).tanh();
        let want = if row == 2 { 0.0 } else { -(1.0 - t * t) };
        assert!((gv - want).abs() < 1e-12, "dalpha[{k}] = {gv}, want {want}");
    }
    assert!(g[0].to_vec().iter().all(|&v| v == 0.0));
    assert!(g[2].to_vec().iter().all(|&v| v == 0.0));
    let (z, _) = x.affine_coupling(&alpha, &mu, None).unwrap();
    let g = tarflow::autograd::grad(&z.sum_all().unwrap(), &[&x]).unwrap();
    assert!(g[0].to_vec().iter().all(|v| v.is_finite() && *v > 0.0));
}

#[test]
fn the_block_forward_is_bit_identical_to_the_composed_coupling() {
    // The model path: FlowBlock::forward (fused) against params + shift + composed ops on
    // the same block, values and the gradients of every block parameter and of x.
    for clip in [None, Some(3.0)] {
        let cfg = TarFlowConfig {
            channels: 1,
            image_size: 8,
            patch_size: 2,
            width: 32,
            blocks: 2,
            layers_per_block: 1,
            head_dim: 16,
            mlp_ratio: 2,
            num_classes: 0,
            noise_sigma: 0.1,
            alpha_clip: clip,
            additive: false,
        };
        let m = TarFlow::<f32>::new(cfg, 3).unwrap();
        m.randomize_output_projections(0.3, 4).unwrap();
        let blk = &m.blocks[1]; // flipped
        let x = rnd::<f32>(&[3, 16, 4], 8).requires_grad_();
        let (z, ld) = blk.forward(&x, None, 1.0).unwrap();
        let xp = blk.permute_seq(&x).unwrap();
        let p = blk.params(&xp, None, 1.0).unwrap();
        let alpha = FlowBlock::shift(&p.alpha).unwrap();
        let mu = FlowBlock::shift(&p.mu).unwrap();
        let zc = blk
            .permute_seq(
                &xp.sub(&mu)
                    .unwrap()
                    .mul(&alpha.neg().unwrap().exp().unwrap())
                    .unwrap(),
            )
            .unwrap();
        let ldc = alpha.sum(&[1, 2], false).unwrap().neg().unwrap();
        assert_eq!(bits(&z), bits(&zc), "clip {clip:?}: z");
        assert_eq!(bits(&ld), bits(&ldc), "clip {clip:?}: logdet");
        let r = rnd::<f32>(&[3, 16, 4], 9);
        let loss = |z: &Tensor<f32>, ld: &Tensor<f32>| {
            z.mul(&r)
                .unwrap()
                .sum_all()
                .unwrap()
                .sub(&ld.sum_all().unwrap())
                .unwrap()
        };
        let params: Vec<Tensor<f32>> = blk.parameters().into_iter().map(|(_, t)| t).collect();
        let mut wrt: Vec<&Tensor<f32>> = params.iter().collect();
        wrt.push(&x);
        let gf = tarflow::autograd::grad(&loss(&z, &ld), &wrt).unwrap();
        let gc = tarflow::autograd::grad(&loss(&zc, &ldc), &wrt).unwrap();
        for (i, (a, b)) in gf.iter().zip(&gc).enumerate() {
            assert_eq!(bits(a), bits(b), "clip {clip:?}: gradient {i}");
        }
    }
}

#[test]
fn inverse_with_guidance_matches_the_formula_and_inverts_the_coupling() {
    let (b, l, d) = (2, 5, 3);
    let z = rnd::<f32>(&[b, l, d], 20);
    let (a, m) = (rnd::<f32>(&[b, l, d], 21), rnd::<f32>(&[b, l, d], 22));
    let (au, mu_u) = (rnd::<f32>(&[b, l, d], 23), rnd::<f32>(&[b, l, d], 24));
    let w = 0.75;
    let x = z
        .affine_coupling_inverse(&a, &m, Some((&au, &mu_u, w)))
        .unwrap();
    // The sampler's formula, composed: p + w * (p - p_u), then z * exp(a) + m.
    let guided = |p: &Tensor<f32>, pu: &Tensor<f32>| p.add(&p.sub(pu)?.mul_scalar(w)?);
    let (ag, mg) = (guided(&a, &au).unwrap(), guided(&m, &mu_u).unwrap());
    let want = z.mul(&ag.exp().unwrap()).unwrap().add(&mg).unwrap();
    assert_eq!(bits(&x), bits(&want));
    // Without guidance it undoes the forward coupling (given the shifted parameters).
    let xs = rnd::<f64>(&[b, l, d], 25);
    let (a64, m64) = (rnd::<f64>(&[b, l, d], 26), rnd::<f64>(&[b, l, d], 27));
    let (zf, _) = xs.affine_coupling(&a64, &m64, Some(2.0)).unwrap();
    let a_s = FlowBlock::shift(&a64.soft_clip(2.0).unwrap()).unwrap();
    let m_s = FlowBlock::shift(&m64).unwrap();
    let back = zf.affine_coupling_inverse(&a_s, &m_s, None).unwrap();
    let e = common::worst(
        back.to_vec()
            .iter()
            .zip(xs.to_vec())
            .map(|(p, q)| (p - q).abs()),
    );
    assert!(e < 1e-12, "roundtrip error {e:e}");
}

#[test]
fn bad_coupling_inputs_are_errors_naming_the_op() {
    let t = rnd::<f32>(&[2, 3, 4], 1);
    let other = rnd::<f32>(&[2, 3, 5], 2);
    let e = t.affine_coupling(&other, &t, None).unwrap_err().to_string();
    assert!(
        e.starts_with("affine_coupling") && e.contains("[2, 3, 5]"),
        "{e}"
    );
    let flat = rnd::<f32>(&[6, 4], 3);
    let e = flat
        .affine_coupling(&flat, &flat, None)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("affine_coupling"), "{e}");
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let e = t
            .affine_coupling(&t, &t, Some(bad))
            .unwrap_err()
            .to_string();
        assert!(e.contains("affine_coupling") && e.contains("clip"), "{e}");
    }
    let e = t
        .affine_coupling_inverse(&t, &other, None)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("affine_coupling_inverse"), "{e}");
    let e = t
        .affine_coupling_inverse(&t, &t, Some((&t, &t, f64::NAN)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("guidance"), "{e}");
}

/// The guided inverse on `device` as a sampler calls it: z read with its tokens flipped,
/// alpha and mu narrowed out of `[B, L, 2D]` projections, the result written into slot 1 of
/// a `[2, B, L, D]` buffer of sevens. Returns the whole buffer and the allocating form's
/// result, both on the host.
fn inverse_into_slot(device: tarflow::Device) -> (Vec<f32>, Vec<f32>) {
    let (b, l, d) = (3, 37, 11);
    let on = |t: Tensor<f32>| t.to_device(device).unwrap();
    let z = on(rnd(&[b, l, d], 60)).flip(1).unwrap();
    let (pc, pu) = (on(rnd(&[b, l, 2 * d], 61)), on(rnd(&[b, l, 2 * d], 62)));
    let half = |t: &Tensor<f32>, k: usize| t.narrow(2, k * d, d).unwrap();
    let (a, m, au, mu_u) = (half(&pc, 0), half(&pc, 1), half(&pu, 0), half(&pu, 1));
    let buf = on(Tensor::full(&[2, b, l, d], 7.0));
    let slot = buf.narrow(0, 1, 1).unwrap().reshape(&[b, l, d]).unwrap();
    let guide = Some((&au, &mu_u, 0.8));
    z.affine_coupling_inverse_into(&a, &m, guide, &slot)
        .unwrap();
    let fresh = z.affine_coupling_inverse(&a, &m, guide).unwrap();
    (buf.try_to_vec().unwrap(), fresh.try_to_vec().unwrap())
}

#[test]
fn the_inverse_writes_into_a_slot_and_nowhere_else() {
    let (buf, fresh) = inverse_into_slot(tarflow::Device::Cpu);
    let n = fresh.len();
    assert!(buf[..n].iter().all(|&v| v == 7.0), "slot 0 was written");
    assert_eq!(
        bits(&Tensor::from_vec(buf[n..].to_vec(), &[n]).unwrap()),
        bits(&Tensor::from_vec(fresh, &[n]).unwrap())
    );
    // What the destination must be.
    let t = rnd::<f32>(&[2, 3, 4], 63);
    let out = Tensor::<f32>::zeros(&[2, 3, 4]);
    let err = |out: &Tensor<f32>| {
        t.affine_coupling_inverse_into(&t, &t, None, out)
            .unwrap_err()
            .to_string()
    };
    for (bad, why) in [
        (Tensor::zeros(&[2, 4, 3]), "shape"),
        (
            Tensor::zeros(&[3, 2, 4]).permute(&[1, 0, 2]).unwrap(),
            "contiguous",
        ),
        (Tensor::zeros(&[2, 3, 4]).requires_grad_(), "gradient"),
        (t.clone(), "share storage"),
    ] {
        let e = err(&bad);
        assert!(
            e.starts_with("affine_coupling_inverse_into") && e.contains(why),
            "{e}"
        );
    }
    t.affine_coupling_inverse_into(&t, &t, None, &out).unwrap();
}

/// The largest `|a - b| / (1 + |b|)`.
#[cfg(feature = "ptx-sim")]
fn worst_rel(a: &[f32], b: &[f32]) -> f64 {
    common::worst(
        a.iter()
            .zip(b)
            .map(|(&p, &q)| (p as f64 - q as f64).abs() / (1.0 + (q as f64).abs())),
    )
}

/// The op on `device` against the CPU: outputs, and the gradients of one random projection
/// of them for every input, within `tol` of each tensor's largest CPU magnitude.
#[cfg(feature = "ptx-sim")]
fn same_on_device(device: tarflow::Device, clip: Option<f64>) {
    use tarflow::Device;
    let (b, l, d) = (3, 37, 11);
    let x = rnd::<f32>(&[b, l, d], 40);
    let proj = rnd::<f32>(&[b, l, 2 * d], 41).mul_scalar(2.0).unwrap();
    let run = |dev: Device| {
        let x = x.to_device(dev).unwrap().detach().requires_grad_();
        let p = proj.to_device(dev).unwrap().detach().requires_grad_();
        let xp = x.flip(1).unwrap();
        let (a, m) = (p.narrow(2, 0, d).unwrap(), p.narrow(2, d, d).unwrap());
        let (z, ld) = xp.affine_coupling(&a, &m, clip).unwrap();
        assert_eq!(z.device(), dev);
        let y = packed(&z, &ld).unwrap();
        let r = rnd::<f32>(y.shape(), 42).to_device(dev).unwrap();
        y.mul(&r).unwrap().sum_all().unwrap().backward().unwrap();
        let (gx, gp) = (x.grad().unwrap(), p.grad().unwrap());
        assert_eq!(gx.device(), dev, "the gradient left the device");
        (
            y.try_to_vec().unwrap(),
            gx.try_to_vec().unwrap(),
            gp.try_to_vec().unwrap(),
        )
    };
    let (c, g) = (run(Device::Cpu), run(device));
    for (what, a, b) in [
        ("output", &g.0, &c.0),
        ("dx", &g.1, &c.1),
        ("dproj", &g.2, &c.2),
    ] {
        let scale = common::worst(b.iter().map(|&v| (v as f64).abs())).max(1e-30);
        let e = common::worst(a.iter().zip(b).map(|(&p, &q)| (p as f64 - q as f64).abs()));
        assert!(
            e <= 1e-5 * scale,
            "affine_coupling (clip {clip:?}) on {device}: {what} differs by {e:.3e}"
        );
    }
    // The guided inverse.
    let t = |s: u64| rnd::<f32>(&[b, l, d], s);
    let (z, a, m, au, mu_u) = (t(50), t(51), t(52), t(53), t(54));
    let want = z
        .affine_coupling_inverse(&a, &m, Some((&au, &mu_u, 0.8)))
        .unwrap()
        .to_vec();
    let on = |t: &Tensor<f32>| t.to_device(device).unwrap();
    let got = on(&z)
        .affine_coupling_inverse(&on(&a), &on(&m), Some((&on(&au), &on(&mu_u), 0.8)))
        .unwrap();
    assert_eq!(got.device(), device);
    let got = got.try_to_vec().unwrap();
    let e = worst_rel(&got, &want);
    assert!(
        e <= 1e-5,
        "affine_coupling_inverse on {device}: differs by {e:.3e}"
    );
    // Into a slot, on the sampler's views.
    let ((gb, gf), (cb, _)) = (inverse_into_slot(device), inverse_into_slot(Device::Cpu));
    assert!(
        gb[..gf.len()].iter().all(|&v| v == 7.0),
        "{device}: slot 0 was written"
    );
    let e = worst_rel(&gb, &cb);
    assert!(
        e <= 1e-5,
        "affine_coupling_inverse_into on {device}: differs by {e:.3e}"
    );
    assert_eq!(
        &gb[gf.len()..],
        &gf[..],
        "{device}: into and allocating forms differ"
    );
}

#[cfg(feature = "ptx-sim")]
#[test]
fn fused_coupling_on_ptx_sim_matches_the_cpu() {
    for clip in [None, Some(1.5)] {
        same_on_device(tarflow::Device::PtxSim, clip);
    }
}

#[cfg(feature = "ptx-sim")]
#[test]
fn fused_coupling_on_cuda_matches_the_cpu_cuda() {
    match tarflow::gpu::registry::driver(tarflow::Device::Cuda(0)) {
        Ok(_) => {
            for clip in [None, Some(1.5)] {
                same_on_device(tarflow::Device::Cuda(0), clip);
            }
        }
        Err(e) => eprintln!("cuda:0 skipped: {e}"),
    }
}
