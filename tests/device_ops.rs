//! Each op on a GPU device against the same op on the CPU, forward and backward, over the
//! layouts that stress the dispatch: transposed, flipped, broadcast and narrowed operands,
//! reductions over inner and scattered axes, softmax over a middle axis, repeated indices.
//! One body per case runs on `ptx-sim` (always) and on `cuda:0` where a driver loads.

mod common;

use tarflow::ops::attention::{attention, attention_append, attention_qkv, AttentionOptions};
use tarflow::{Device, Result, Rng, Tensor};

type Case = fn(&[Tensor<f32>]) -> Result<Tensor<f32>>;

/// Runs `f` on `inputs` on the CPU and on `device` (inputs moved there as fresh leaves),
/// backpropagates the same random projection of the output on both, and compares the
/// outputs and every input gradient (relative to each tensor's largest CPU magnitude).
fn same_on(device: Device, name: &str, f: Case, inputs: &[Tensor<f32>], tol: f64) {
    let leaves = |d: Device| -> Vec<Tensor<f32>> {
        inputs
            .iter()
            .map(|t| t.to_device(d).unwrap().detach().requires_grad_())
            .collect()
    };
    let (xc, xg) = (leaves(Device::Cpu), leaves(device));
    let (yc, yg) = (f(&xc).unwrap(), f(&xg).unwrap());
    assert_eq!(yg.device(), device, "{name}: output left the device");
    assert_eq!(yc.shape(), yg.shape(), "{name}");
    let proj = Tensor::<f32>::randn(yc.shape(), 0.0, 1.0, &mut Rng::new(5));
    yc.mul(&proj)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let pg = proj.to_device(device).unwrap();
    yg.mul(&pg).unwrap().sum_all().unwrap().backward().unwrap();
    let cmp = |what: &str, g: &Tensor<f32>, c: &Tensor<f32>| {
        let (g, c) = (g.try_to_vec().unwrap(), c.to_vec());
        let scale = common::worst(c.iter().map(|&v| (v as f64).abs())).max(1e-30);
        let e = common::worst(g.iter().zip(&c).map(|(&a, &b)| (a as f64 - b as f64).abs()));
        assert!(
            e <= tol * scale,
            "{name} on {device}: {what} differs by {e:.3e} (scale {scale:.3e})"
        );
    };
    cmp("output", &yg, &yc);
    for (i, (a, b)) in xg.iter().zip(&xc).enumerate() {
        match (a.grad(), b.grad()) {
            (Some(ga), Some(gb)) => {
                assert_eq!(ga.device(), device, "{name}: gradient {i} left the device");
                cmp(&format!("gradient {i}"), &ga, &gb)
            }
            (None, None) => {}
            _ => panic!("{name}: gradient {i} exists on one device only"),
        }
    }
}

fn rnd(shape: &[usize], seed: u64) -> Tensor<f32> {
    Tensor::randn(shape, 0.0, 1.0, &mut Rng::new(seed))
}

fn all_ops(device: Device) {
    let a = rnd(&[3, 4, 5], 1);
    let b = rnd(&[4, 1], 2);
    let m = rnd(&[6, 7], 3);
    let cases: Vec<(&str, Case, Vec<Tensor<f32>>)> = vec![
        (
            "unary chain on a transposed view",
            |t| {
                t[0].permute(&[2, 0, 1])?
                    .tanh()?
                    .exp()?
                    .mul_scalar(0.5)?
                    .gelu()
            },
            vec![a.clone()],
        ),
        (
            "softplus, sigmoid, abs, clamp, powf on a flipped view",
            |t| {
                let x = t[0].flip(1)?;
                x.softplus()?
                    .add(&x.sigmoid()?)?
                    .add(&x.abs()?.add_scalar(0.1)?.powf(1.5)?)?
                    .add(&x.clamp(-0.5, 0.5)?)
            },
            vec![a.clone()],
        ),
        (
            "broadcast binary ops",
            |t| {
                t[0].mul(&t[1])?
                    .sub(&t[1])?
                    .div(&t[1].square()?.add_scalar(1.0)?)?
                    .maximum(&t[1])
            },
            vec![a.clone(), b.clone()],
        ),
        (
            "sum over scattered axes, mean, max",
            |t| {
                let s = t[0].sum(&[0, 2], true)?;
                let mx = t[0].max(&[1], true)?;
                t[0].mul(&s)?.add(&mx)?.mean(&[-1], false)
            },
            vec![a.clone()],
        ),
        (
            "softmax over a middle axis and log_softmax over the last",
            |t| t[0].softmax(1)?.add(&t[0].log_softmax(-1)?),
            vec![a.clone()],
        ),
        (
            "matmul with broadcast batch and a transposed operand",
            |t| t[0].matmul(&t[1].t()?.unsqueeze(0)?),
            vec![rnd(&[2, 6, 7], 4), m.clone()],
        ),
        (
            "linear with bias on a narrowed input",
            |t| t[0].narrow(1, 1, 5)?.linear(&t[1], Some(&t[2])),
            vec![rnd(&[9, 7], 5), rnd(&[3, 5], 6), rnd(&[3], 7)],
        ),
        (
            "mlp_residual (GELU' in the backward's data-gradient GEMM)",
            |t| t[0].mlp_residual(&t[1], Some(&t[2]), &t[3], Some(&t[4]), &t[5]),
            vec![
                rnd(&[2, 5, 6], 14),
                rnd(&[11, 6], 15),
                rnd(&[11], 16),
                rnd(&[4, 11], 17),
                rnd(&[4], 18),
                rnd(&[2, 5, 4], 19),
            ],
        ),
        (
            "layer_norm with and without affine parameters",
            |t| {
                let y = t[0].layer_norm(Some(&t[1]), Some(&t[2]), 1e-5)?;
                y.add(&t[0].t()?.layer_norm(None, None, 1e-5)?.t()?)
            },
            vec![rnd(&[7, 7], 8), rnd(&[7], 9), rnd(&[7], 10)],
        ),
        (
            "concat, narrow (pad in backward), where and masked_fill",
            |t| {
                let c = Tensor::concat(&[&t[0], &t[0].narrow(0, 1, 2)?], 0)?;
                let mask = c.sub(&c.mean_all()?)?.relu()?;
                c.masked_fill(&mask, -3.0)
            },
            vec![m.clone()],
        ),
        (
            "index_select with repeated indices",
            |t| t[0].index_select(0, &[2, 0, 2, 5, 2]),
            vec![m.clone()],
        ),
        (
            "causal attention (fused kernels on a device)",
            |t| {
                let opts = AttentionOptions {
                    causal: true,
                    scale: 0.5,
                    temperature: 1.3,
                };
                attention(&t[0], &t[1], &t[2], None, opts)
            },
            vec![
                rnd(&[2, 2, 9, 4], 11),
                rnd(&[2, 2, 9, 4], 12),
                rnd(&[2, 2, 9, 4], 13),
            ],
        ),
        (
            "causal attention, fewer queries than keys, two tiles, a flipped and a transposed operand (fused)",
            |t| {
                let opts = AttentionOptions {
                    causal: true,
                    scale: 0.25,
                    temperature: 0.8,
                };
                let q = t[0].flip(2)?;
                let k = t[1].permute(&[0, 2, 1, 3])?;
                attention(&q, &k, &t[2], None, opts)
            },
            vec![
                rnd(&[1, 2, 37, 16], 14),
                rnd(&[1, 45, 2, 16], 15),
                rnd(&[1, 2, 45, 8], 16),
            ],
        ),
        (
            "attention with a mask tensor (composed on a device)",
            |t| {
                let opts = AttentionOptions {
                    causal: false,
                    scale: 0.5,
                    temperature: 1.0,
                };
                // A constant pattern hiding about a third of the keys (no query loses all).
                let bits = (0..9 * 11usize)
                    .map(|i| if i.is_multiple_of(3) { 1.0 } else { 0.0 })
                    .collect();
                let mask = Tensor::from_vec(bits, &[9, 11])?.to_device(t[0].device())?;
                attention(&t[0], &t[1], &t[2], Some(&mask), opts)
            },
            vec![
                rnd(&[2, 2, 9, 4], 17),
                rnd(&[2, 2, 11, 4], 18),
                rnd(&[2, 2, 11, 4], 19),
            ],
        ),
        (
            "causal attention_qkv from a fused projection (fused kernels)",
            |t| {
                let opts = AttentionOptions {
                    causal: true,
                    scale: 0.35,
                    temperature: 1.2,
                };
                attention_qkv(&t[0], 2, None, opts)
            },
            vec![rnd(&[2, 41, 3 * 2 * 8], 21)],
        ),
        (
            "non-causal attention_qkv (fused kernels)",
            |t| {
                let opts = AttentionOptions {
                    causal: false,
                    scale: 0.35,
                    temperature: 1.0,
                };
                attention_qkv(&t[0], 3, None, opts)
            },
            vec![rnd(&[1, 13, 3 * 3 * 4], 22)],
        ),
    ];
    for (name, f, inputs) in cases {
        same_on(device, name, f, &inputs, 2e-5);
    }
}

#[test]
fn ops_on_the_ptx_interpreter_match_cpu() {
    all_ops(Device::PtxSim);
}

#[test]
fn ops_match_cpu_on_cuda() {
    match tarflow::gpu::registry::driver(Device::Cuda(0)) {
        Ok(_) => all_ops(Device::Cuda(0)),
        Err(e) => eprintln!("cuda:0 skipped: {e}"),
    }
}

/// One query over a long key cache with no gradient, as a KV-cached sampling step asks for:
/// on a device this runs the decode kernels (keys split into chunks of 256, merged in order),
/// here over three chunks with a ragged last one, from caches laid out `[N, B, H, Dh]` as the
/// sampler keeps them.
fn one_query_over_a_cache(device: Device) {
    let (n, b, h, dh) = (600, 3, 2, 16);
    let (kc, vc) = (rnd(&[n, b, h, dh], 31), rnd(&[n, b, h, dh], 32));
    let q = rnd(&[b, h, 1, dh], 33);
    let _g = tarflow::autograd::no_grad();
    for (causal, temperature, len) in [(false, 1.0, n), (true, 0.7, 257), (false, 1.3, 1)] {
        let opts = AttentionOptions {
            causal,
            scale: 0.25,
            temperature,
        };
        let run = |d: Device| -> Vec<f32> {
            let on = |t: &Tensor<f32>| t.to_device(d).unwrap();
            let prefix =
                |c: &Tensor<f32>| c.narrow(0, 0, len).unwrap().permute(&[1, 2, 0, 3]).unwrap();
            let (k, v) = (prefix(&on(&kc)), prefix(&on(&vc)));
            let o = attention(&on(&q), &k, &v, None, opts).unwrap();
            assert_eq!(o.device(), d);
            assert_eq!(o.shape(), &[b, h, 1, dh]);
            o.try_to_vec().unwrap()
        };
        let (want, got) = (run(Device::Cpu), run(device));
        let e = common::worst(
            want.iter()
                .zip(&got)
                .map(|(&a, &g)| (a as f64 - g as f64).abs()),
        );
        assert!(
            e <= 2e-6,
            "{len} cached keys, causal {causal}, on {device}: output differs by {e:.3e}"
        );
        // The same step appending the last position (NaN in the cache until then) from a
        // `[B, 1, 3 H Dh]` projection's views: the bits of the copy and `attention` on the
        // same device, and the cache filled.
        let proj = rnd(&[b, 1, 3 * h * dh], 34);
        let appended = |d: Device, fused: bool| -> (Vec<f32>, Vec<f32>, Vec<f32>) {
            let on = |t: &Tensor<f32>| t.to_device(d).unwrap();
            let (kc, vc) = (on(&kc), on(&vc));
            let nan = on(&Tensor::full(&[1, b, h, dh], f32::NAN));
            kc.narrow(0, len - 1, 1).unwrap().assign(&nan).unwrap();
            vc.narrow(0, len - 1, 1).unwrap().assign(&nan).unwrap();
            let row = on(&proj).reshape(&[b, 1, 3, h, dh]).unwrap();
            let new = |i: usize| {
                let t = row.narrow(2, i, 1).unwrap().squeeze(2).unwrap();
                t.permute(&[0, 2, 1, 3]).unwrap()
            };
            let prefix =
                |c: &Tensor<f32>| c.narrow(0, 0, len).unwrap().permute(&[1, 2, 0, 3]).unwrap();
            let (k, v) = (prefix(&kc), prefix(&vc));
            let o = if fused {
                attention_append(&on(&q), &new(1), &new(2), &k, &v, opts).unwrap()
            } else {
                k.narrow(2, len - 1, 1).unwrap().assign(&new(1)).unwrap();
                v.narrow(2, len - 1, 1).unwrap().assign(&new(2)).unwrap();
                attention(&on(&q), &k, &v, None, opts).unwrap()
            };
            assert_eq!(o.device(), d);
            let all = |t: &Tensor<f32>| t.try_to_vec().unwrap();
            (all(&o), all(&kc), all(&vc))
        };
        let two_steps = appended(device, false);
        let fused = appended(device, true);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for (what, a, b) in [
            ("output", &fused.0, &two_steps.0),
            ("keys", &fused.1, &two_steps.1),
            ("values", &fused.2, &two_steps.2),
        ] {
            assert_eq!(
                bits(a),
                bits(b),
                "attention_append on {device}, {len} keys: {what}"
            );
        }
        let cpu = appended(Device::Cpu, true);
        let e = common::worst(
            cpu.0
                .iter()
                .zip(&fused.0)
                .map(|(&a, &g)| (a as f64 - g as f64).abs()),
        );
        assert!(
            e <= 2e-6,
            "attention_append on {device} against the CPU: {e:.3e}"
        );
        assert_eq!(bits(&cpu.1), bits(&fused.1), "the cache's keys on {device}");
    }
}

/// What `attention_append` refuses: shapes that disagree, an empty cache, a gradient.
#[test]
fn attention_append_names_what_is_wrong() {
    let (b, h, n, dh) = (2, 3, 5, 4);
    let (q, kn) = (rnd(&[b, h, 1, dh], 40), rnd(&[b, h, 1, dh], 41));
    let cache = || {
        let c = Tensor::<f32>::zeros(&[n, b, h, dh]);
        c.permute(&[1, 2, 0, 3]).unwrap()
    };
    let (k, v) = (cache(), cache());
    let opts = AttentionOptions {
        causal: false,
        scale: 0.5,
        temperature: 1.0,
    };
    let err = |r: Result<Tensor<f32>>| r.unwrap_err().to_string();
    let e = err(attention_append(
        &q,
        &rnd(&[b, h, 2, dh], 42),
        &kn,
        &k,
        &v,
        opts,
    ));
    assert!(
        e.starts_with("attention_append") && e.contains("[B, H, 1, Dh]"),
        "{e}"
    );
    let empty = Tensor::zeros(&[b, h, 0, dh]);
    let e = err(attention_append(&q, &kn, &kn, &empty, &empty, opts));
    assert!(e.contains("at least one position"), "{e}");
    let e = err(attention_append(
        &q.detach().requires_grad_(),
        &kn,
        &kn,
        &k,
        &v,
        opts,
    ));
    assert!(e.contains("no gradient"), "{e}");
    let heads_major = Tensor::zeros(&[b, h, n, dh]);
    let e = err(attention_append(&q, &kn, &kn, &heads_major, &v, opts));
    assert!(e.contains("position-major"), "{e}");
    let _g = tarflow::autograd::no_grad();
    let o = attention_append(&q, &kn, &kn, &k, &v, opts).unwrap();
    assert_eq!(o.shape(), &[b, h, 1, dh]);
    let last = k.narrow(2, n - 1, 1).unwrap().to_vec();
    assert_eq!(
        last,
        kn.to_vec(),
        "the cache's last position holds the new keys"
    );
}

#[test]
fn one_query_over_a_cache_on_the_ptx_interpreter_matches_cpu() {
    one_query_over_a_cache(Device::PtxSim);
}

#[test]
fn one_query_over_a_cache_matches_cpu_on_cuda() {
    match tarflow::gpu::registry::driver(Device::Cuda(0)) {
        Ok(_) => one_query_over_a_cache(Device::Cuda(0)),
        Err(e) => eprintln!("cuda:0 skipped: {e}"),
    }
}

/// `CausalSelfAttention::forward_residual` (the residual added in the output projection's
/// epilogue on a device) against `r.add(forward(x))`: the same bits, output and every
/// gradient (x, r and the four parameters), on the CPU and on `device`, in f32 and under
/// bf16 products (head dim 64, so the bf16 attention kernels run).
fn attention_residual_is_the_composed_sum(device: Device) {
    use tarflow::autograd::grad;
    use tarflow::backend::{matmul_precision, Precision};
    use tarflow::nn::attention::CausalSelfAttention;
    let layer = CausalSelfAttention::<f32>::new(128, 64, &mut Rng::new(70)).unwrap();
    let (x, r) = (rnd(&[2, 19, 128], 71), rnd(&[2, 19, 128], 72));
    let proj = rnd(&[2, 19, 128], 73);
    let bits = common::bits;
    for d in [Device::Cpu, device] {
        for precision in [Precision::F32, Precision::Bf16] {
            let _p = matmul_precision(precision);
            let at = layer.to_device(d).unwrap();
            let leaf = |t: &Tensor<f32>| t.to_device(d).unwrap().detach().requires_grad_();
            let (x, r, proj) = (leaf(&x), leaf(&r), proj.to_device(d).unwrap());
            let run = |fused: bool| -> Vec<Vec<u32>> {
                let y = if fused {
                    at.forward_residual(&x, &r, 0.9).unwrap()
                } else {
                    r.add(&at.forward(&x, 0.9).unwrap()).unwrap()
                };
                let loss = y.mul(&proj).unwrap().sum_all().unwrap();
                let wrt = [
                    &x,
                    &r,
                    &at.qkv_weight,
                    &at.qkv_bias,
                    &at.out_weight,
                    &at.out_bias,
                ];
                let mut out = vec![bits(&y)];
                out.extend(grad(&loss, &wrt).unwrap().iter().map(bits));
                out
            };
            let (fused, composed) = (run(true), run(false));
            for (i, (a, b)) in fused.iter().zip(&composed).enumerate() {
                let what = ["output", "dx", "dr", "dWqkv", "dbqkv", "dWout", "dbout"][i];
                assert!(
                    a == b,
                    "{what} on {d} under {precision:?}: not the composed bits"
                );
            }
        }
    }
}

#[test]
fn attention_residual_on_the_ptx_interpreter_is_the_composed_sum() {
    attention_residual_is_the_composed_sum(Device::PtxSim);
}

#[test]
fn attention_residual_is_the_composed_sum_on_cuda() {
    match tarflow::gpu::registry::driver(Device::Cuda(0)) {
        Ok(_) => attention_residual_is_the_composed_sum(Device::Cuda(0)),
        Err(e) => eprintln!("cuda:0 skipped: {e}"),
    }
}

/// Rounds every element to bf16 (nearest even), back as f32.
fn bf16_rounded(t: &Tensor<f32>) -> Tensor<f32> {
    let v = t
        .to_vec()
        .iter()
        .map(|&x| half::bf16::from_f32(x).to_f32())
        .collect();
    Tensor::from_vec(v, t.shape()).unwrap()
}

/// Under `Precision::Bf16` every GEMM on a device takes bf16 operands and sums in f32:
/// the products of bf16-rounded inputs agree with the CPU's f32 products of the same rounded
/// inputs to f32 rounding, through every GEMM form (a batched matmul with a transposed
/// operand, `linear`, `linear_gelu`, `linear_residual` and `mlp_residual`, whose epilogues
/// run after the product), while the unrounded inputs give the bf16 error (so the path is really taken).
/// The backward's GEMMs run in bf16 too: gradients agree with the CPU's within bf16
/// rounding and differ from the f32 device's.
fn bf16_products(device: Device) {
    use tarflow::backend::{matmul_precision, Precision};
    // The flag: one GEMM, so rounded inputs leave only the order of the f32 sums.
    let cases: Vec<(&str, Case, Vec<Tensor<f32>>, bool)> = vec![
        (
            "batched matmul with a transposed operand",
            |t| t[0].matmul(&t[1].transpose(1, 2)?),
            vec![rnd(&[2, 37, 45], 41), rnd(&[2, 29, 45], 42)],
            true,
        ),
        (
            "linear with bias",
            |t| t[0].linear(&t[1], Some(&t[2])),
            vec![rnd(&[70, 45], 43), rnd(&[33, 45], 44), rnd(&[33], 45)],
            true,
        ),
        (
            "linear_gelu and linear_residual (the MLP)",
            |t| {
                let h = t[0].linear_gelu(&t[1], Some(&t[2]))?;
                h.linear_residual(&t[3], Some(&t[4]), &t[0])
            },
            vec![
                rnd(&[21, 16], 46),
                rnd(&[40, 16], 47),
                rnd(&[40], 48),
                rnd(&[16, 40], 49),
                rnd(&[16], 50),
            ],
            false,
        ),
        (
            "mlp_residual (its backward's GELU' stage after the bf16 product)",
            |t| t[0].mlp_residual(&t[1], Some(&t[2]), &t[3], Some(&t[4]), &t[5]),
            vec![
                rnd(&[21, 16], 51),
                rnd(&[40, 16], 52),
                rnd(&[40], 53),
                rnd(&[24, 40], 54),
                rnd(&[24], 55),
                rnd(&[21, 24], 56),
            ],
            false,
        ),
    ];
    for (name, f, inputs, single_gemm) in cases {
        let rounded: Vec<Tensor<f32>> = inputs.iter().map(bf16_rounded).collect();
        let on = |ts: &[Tensor<f32>], d: Device| -> Vec<Tensor<f32>> {
            ts.iter()
                .map(|t| t.to_device(d).unwrap().detach().requires_grad_())
                .collect()
        };
        let run = |xs: &[Tensor<f32>], p: Precision| -> (Vec<f32>, Vec<Vec<f32>>) {
            let _p = matmul_precision(p);
            let y = f(xs).unwrap();
            y.sum_all().unwrap().backward().unwrap();
            let grads = xs
                .iter()
                .map(|x| x.grad().unwrap().try_to_vec().unwrap())
                .collect();
            (y.try_to_vec().unwrap(), grads)
        };
        let diff = |a: &[f32], b: &[f32]| -> f64 {
            let scale = common::worst(b.iter().map(|&v| (v as f64).abs())).max(1e-30);
            common::worst(a.iter().zip(b).map(|(&x, &y)| (x as f64 - y as f64).abs())) / scale
        };
        if single_gemm {
            let (cpu_y, _) = run(&on(&rounded, Device::Cpu), Precision::F32);
            let (dev_y, _) = run(&on(&rounded, device), Precision::Bf16);
            let e = diff(&dev_y, &cpu_y);
            assert!(
                e <= 1e-5,
                "{name} on {device} in bf16, rounded inputs: {e:.3e}"
            );
        }
        // Unrounded inputs: the device rounds them itself; the error is bf16's.
        let (cpu_y, cpu_g) = run(&on(&inputs, Device::Cpu), Precision::F32);
        let (dev_y, dev_g) = run(&on(&inputs, device), Precision::Bf16);
        let (_, f32_g) = run(&on(&inputs, device), Precision::F32);
        let e = diff(&dev_y, &cpu_y);
        assert!(
            (1e-5..=2e-2).contains(&e),
            "{name} on {device} in bf16: output error {e:.3e} is not bf16's"
        );
        for (i, ((d, c), f)) in dev_g.iter().zip(&cpu_g).zip(&f32_g).enumerate() {
            let (e, e32) = (diff(d, c), diff(f, c));
            // A gradient no GEMM produces (a bias under a plain sum) is exact in both.
            let exact = e == 0.0 && e32 == 0.0;
            assert!(
                e <= 2e-2 && (e > e32 || exact),
                "{name} on {device}: gradient {i} error {e:.3e} in bf16, {e32:.3e} in f32"
            );
        }
    }
}

#[test]
fn bf16_products_on_the_ptx_interpreter() {
    bf16_products(Device::PtxSim);
}

#[test]
fn bf16_products_on_cuda() {
    match tarflow::gpu::registry::driver(Device::Cuda(0)) {
        Ok(_) => bf16_products(Device::Cuda(0)),
        Err(e) => eprintln!("cuda:0 skipped: {e}"),
    }
}

#[test]
fn f64_and_mixed_devices_are_errors() {
    let x = rnd(&[2, 3], 1).to_device(Device::PtxSim).unwrap();
    let e = x.add(&rnd(&[2, 3], 2)).unwrap_err().to_string();
    assert!(e.contains("ptx-sim") && e.contains("cpu"), "{e}");
    let e = Tensor::<f64>::zeros(&[2])
        .to_device(Device::PtxSim)
        .unwrap_err()
        .to_string();
    assert!(e.contains("f64") && e.contains("ptx-sim"), "{e}");
}
