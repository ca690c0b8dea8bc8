//! Fused ops (softmax, log_softmax, layer_norm, attention, KV-cached decoding) against central
//! differences and against their composed references, values and gradients.

mod common;

use tarflow::gradcheck::{check_gradients, GradCheck};
use tarflow::nn::attention::CausalSelfAttention;
use tarflow::nn::norm::LayerNorm;
use tarflow::ops::attention::{
    attention, attention_decode, attention_qkv, attention_reference, AttentionOptions, KvCache,
};
use tarflow::{Element, Result, Rng, Tensor};

fn rnd<E: Element>(shape: &[usize], seed: u64) -> Tensor<E> {
    Tensor::randn(shape, 0.0, 1.0, &mut Rng::new(seed))
}

fn gc() -> GradCheck {
    GradCheck::default()
}

/// Output values and the gradients of `sum(f(x) * r)` (fixed random `r`) for every input.
fn value_and_grads<E: Element>(
    f: impl Fn(&[Tensor<E>]) -> Result<Tensor<E>>,
    inputs: &[Tensor<E>],
) -> (Vec<f64>, Vec<Vec<f64>>) {
    let leaves: Vec<Tensor<E>> = inputs
        .iter()
        .map(|t| t.copy().unwrap().requires_grad_())
        .collect();
    let y = f(&leaves).unwrap();
    let r = rnd::<E>(y.shape(), 0xabc);
    y.mul(&r).unwrap().sum_all().unwrap().backward().unwrap();
    let grads = leaves
        .iter()
        .map(|t| t.grad().expect("input got no gradient").to_f64_vec())
        .collect();
    (y.to_f64_vec(), grads)
}

/// Largest `|a - b| / (1 + |b|)`.
fn max_rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    common::worst(
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs() / (1.0 + y.abs())),
    )
}

/// Asserts that two ops agree in value and in every input gradient.
fn assert_same<E: Element>(
    fused: impl Fn(&[Tensor<E>]) -> Result<Tensor<E>>,
    composed: impl Fn(&[Tensor<E>]) -> Result<Tensor<E>>,
    inputs: &[Tensor<E>],
    tol: f64,
    what: &str,
) {
    let (va, ga) = value_and_grads(fused, inputs);
    let (vb, gb) = value_and_grads(composed, inputs);
    assert!(
        va.iter().all(|v| v.is_finite()),
        "{what}: non-finite output"
    );
    let e = max_rel_err(&va, &vb);
    assert!(e <= tol, "{what}: values differ by {e:e}");
    for (i, (a, b)) in ga.iter().zip(&gb).enumerate() {
        let e = max_rel_err(a, b);
        assert!(e <= tol, "{what}: gradient of input {i} differs by {e:e}");
    }
}

// ------------------------------------------------------------------------------ softmax

fn softmax_composed<E: Element>(x: &Tensor<E>, axis: isize, log: bool) -> Result<Tensor<E>> {
    let shifted = x.sub(&x.max(&[axis], true)?.detach())?;
    let sum = shifted.exp().unwrap().sum(&[axis], true)?;
    if log {
        shifted.sub(&sum.log().unwrap())
    } else {
        shifted.exp().unwrap().div(&sum)
    }
}

#[test]
fn softmax_gradcheck_every_axis() {
    let x = rnd::<f64>(&[3, 4, 5], 1);
    for axis in [0, 1, 2, -1, -2] {
        check_gradients(|t| t[0].softmax(axis), std::slice::from_ref(&x), gc())
            .unwrap_or_else(|e| panic!("softmax axis {axis}: {e}"));
        check_gradients(|t| t[0].log_softmax(axis), std::slice::from_ref(&x), gc())
            .unwrap_or_else(|e| panic!("log_softmax axis {axis}: {e}"));
    }
    // A non-contiguous input (a transposed view).
    check_gradients(|t| t[0].t()?.softmax(-1), std::slice::from_ref(&x), gc()).unwrap();
    check_gradients(|t| t[0].permute(&[2, 0, 1])?.log_softmax(1), &[x], gc()).unwrap();
}

#[test]
fn softmax_matches_composed_f64_and_f32() {
    // [70, 3, 200] is large enough to take the parallel path for every axis.
    for shape in [vec![4, 3, 7], vec![70, 3, 200]] {
        for axis in [0isize, 1, 2] {
            for log in [false, true] {
                let what = format!("softmax shape {shape:?} axis {axis} log {log}");
                let fused = |t: &[Tensor<f64>]| {
                    if log {
                        t[0].log_softmax(axis)
                    } else {
                        t[0].softmax(axis)
                    }
                };
                let x64 = rnd::<f64>(&shape, 2).mul_scalar(3.0).unwrap();
                assert_same(
                    fused,
                    |t| softmax_composed(&t[0], axis, log),
                    std::slice::from_ref(&x64),
                    1e-12,
                    &what,
                );
                let x32: Tensor<f32> = x64.cast();
                assert_same(
                    |t: &[Tensor<f32>]| {
                        if log {
                            t[0].log_softmax(axis)
                        } else {
                            t[0].softmax(axis)
                        }
                    },
                    |t| softmax_composed(&t[0], axis, log),
                    &[x32],
                    1e-5,
                    &what,
                );
            }
        }
    }
}

#[test]
fn softmax_rows_sum_to_one() {
    let x = rnd::<f64>(&[5, 6, 7], 3);
    for axis in [0, 1, 2] {
        let s = x.softmax(axis).unwrap().sum(&[axis], false).unwrap();
        assert!(s.to_vec().iter().all(|v| (v - 1.0).abs() < 1e-14));
    }
}

#[test]
fn softmax_large_logits_stay_finite() {
    let vals = vec![1e4, -1e4, 0.0, 9999.0, 1e4, -3.0];
    let x32 = Tensor::<f32>::from_vec(vals.iter().map(|&v| v as f32).collect(), &[2, 3]).unwrap();
    let x64 = Tensor::<f64>::from_vec(vals, &[2, 3]).unwrap();
    for axis in [0, 1] {
        let s = x32.softmax(axis).unwrap();
        let l = x32.log_softmax(axis).unwrap();
        assert!(s.all_finite() && l.all_finite(), "f32 axis {axis}");
        let s = x64.softmax(axis).unwrap();
        assert!(s.all_finite() && x64.log_softmax(axis).unwrap().all_finite());
    }
    let s = x64.softmax(1).unwrap().to_vec();
    // Row 0: [1e4, -1e4, 0] puts all mass on the first entry.
    assert!((s[0] - 1.0).abs() < 1e-15 && s[1] == 0.0);
    let l = x64.log_softmax(1).unwrap().to_vec();
    assert!(
        (l[1] + 2e4).abs() < 1e-9,
        "log_softmax keeps -2e4, got {}",
        l[1]
    );
    // Gradients stay finite too.
    let (_, g) = value_and_grads(|t| t[0].log_softmax(1), &[x32]);
    assert!(g[0].iter().all(|v| v.is_finite()));
}

#[test]
fn softmax_of_fully_masked_lane_is_zero() {
    let inf = f64::NEG_INFINITY;
    let x = Tensor::<f64>::from_vec(vec![inf, inf, inf, 1.0, inf, 2.0], &[2, 3]).unwrap();
    let s = x.softmax(-1).unwrap().to_vec();
    assert_eq!(&s[..3], &[0.0, 0.0, 0.0]);
    assert!((s[3] + s[5] - 1.0).abs() < 1e-15 && s[4] == 0.0);
    let s0 = x.t().unwrap().softmax(0).unwrap();
    assert_eq!(s0.t().unwrap().to_vec(), s);
    assert!(x.log_softmax(-1).unwrap().to_vec()[..3]
        .iter()
        .all(|&v| v == inf));
}

#[test]
fn softmax_rejects_bad_axis() {
    let x = rnd::<f64>(&[2, 3], 4);
    assert!(x.softmax(2).is_err());
    assert!(x.log_softmax(-3).is_err());
    assert!(Tensor::<f64>::scalar(1.0).softmax(0).is_err());
}

// ------------------------------------------------------------------------------ layer norm

fn layer_norm_composed<E: Element>(
    x: &Tensor<E>,
    w: Option<&Tensor<E>>,
    b: Option<&Tensor<E>>,
    eps: f64,
) -> Result<Tensor<E>> {
    let xc = x.sub(&x.mean(&[-1], true)?)?;
    let var = xc.square().unwrap().mean(&[-1], true)?;
    let mut y = xc.div(&var.add_scalar(eps).unwrap().sqrt().unwrap())?;
    if let Some(w) = w {
        y = y.mul(w)?;
    }
    if let Some(b) = b {
        y = y.add(b)?;
    }
    Ok(y)
}

#[test]
fn layer_norm_gradcheck() {
    let x = rnd::<f64>(&[2, 3, 5], 5);
    let w = rnd::<f64>(&[5], 6);
    let b = rnd::<f64>(&[5], 7);
    check_gradients(
        |t| t[0].layer_norm(Some(&t[1]), Some(&t[2]), 1e-5),
        &[x.clone(), w.clone(), b.clone()],
        gc(),
    )
    .unwrap();
    check_gradients(
        |t| t[0].layer_norm(None, None, 1e-5),
        std::slice::from_ref(&x),
        gc(),
    )
    .unwrap();
    check_gradients(
        |t| t[0].layer_norm(Some(&t[1]), None, 1e-3),
        &[x.clone(), w],
        gc(),
    )
    .unwrap();
    check_gradients(
        |t| t[0].layer_norm(None, Some(&t[1]), 0.0),
        &[x.clone(), b.clone()],
        gc(),
    )
    .unwrap();
    // Non-contiguous input: normalise over what was axis 1.
    check_gradients(
        |t| t[0].transpose(1, 2)?.layer_norm(None, Some(&t[1]), 1e-5),
        &[x, rnd(&[3], 8)],
        gc(),
    )
    .unwrap();
}

#[test]
fn layer_norm_matches_composed_f64_and_f32() {
    // The second shape takes the parallel paths of forward and backward.
    for shape in [vec![3, 4, 8], vec![300, 128]] {
        let d = shape[shape.len() - 1];
        let x = rnd::<f64>(&shape, 9)
            .mul_scalar(2.0)
            .unwrap()
            .add_scalar(0.5)
            .unwrap();
        let w = rnd::<f64>(&[d], 10);
        let b = rnd::<f64>(&[d], 11);
        for (hw, hb) in [(true, true), (false, false), (true, false), (false, true)] {
            let what = format!("layer_norm {shape:?} weight {hw} bias {hb}");
            let pick = |t: &[Tensor<f64>]| -> Vec<Tensor<f64>> { t.to_vec() };
            let mut inputs = vec![x.clone()];
            if hw {
                inputs.push(w.clone());
            }
            if hb {
                inputs.push(b.clone());
            }
            let split = move |t: Vec<Tensor<f64>>| {
                let wi = hw.then(|| t[1].clone());
                let bi = hb.then(|| t[if hw { 2 } else { 1 }].clone());
                (t[0].clone(), wi, bi)
            };
            assert_same(
                |t| {
                    let (x, w, b) = split(pick(t));
                    x.layer_norm(w.as_ref(), b.as_ref(), 1e-5)
                },
                |t| {
                    let (x, w, b) = split(pick(t));
                    layer_norm_composed(&x, w.as_ref(), b.as_ref(), 1e-5)
                },
                &inputs,
                1e-12,
                &what,
            );
            let inputs32: Vec<Tensor<f32>> = inputs.iter().map(|t| t.cast()).collect();
            let split32 = move |t: &[Tensor<f32>]| {
                let wi = hw.then(|| t[1].clone());
                let bi = hb.then(|| t[if hw { 2 } else { 1 }].clone());
                (t[0].clone(), wi, bi)
            };
            assert_same(
                |t| {
                    let (x, w, b) = split32(t);
                    x.layer_norm(w.as_ref(), b.as_ref(), 1e-5)
                },
                |t| {
                    let (x, w, b) = split32(t);
                    layer_norm_composed(&x, w.as_ref(), b.as_ref(), 1e-5)
                },
                &inputs32,
                1e-5,
                &what,
            );
        }
    }
}

#[test]
fn layer_norm_rejects_bad_arguments() {
    let x = rnd::<f64>(&[2, 4], 12);
    let w3 = Tensor::<f64>::ones(&[3]);
    assert!(x.layer_norm(Some(&w3), None, 1e-5).is_err());
    assert!(x.layer_norm(None, Some(&w3), 1e-5).is_err());
    assert!(x.layer_norm(None, None, -1.0).is_err());
    assert!(x.layer_norm(None, None, f64::NAN).is_err());
    assert!(Tensor::<f64>::scalar(1.0)
        .layer_norm(None, None, 1e-5)
        .is_err());
}

#[test]
fn layer_norm_module() {
    let ln = LayerNorm::<f64>::new(6);
    let names: Vec<String> = ln.parameters().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["weight", "bias"]);
    let x = rnd::<f64>(&[4, 6], 13);
    let y = ln.forward(&x).unwrap();
    let plain = x.layer_norm(None, None, 1e-5).unwrap();
    assert!(max_rel_err(&y.to_vec(), &plain.to_vec()) < 1e-15);
    y.mul(&rnd(&[4, 6], 14))
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert_eq!(ln.weight.grad().unwrap().shape(), &[6]);
    assert_eq!(ln.bias.grad().unwrap().shape(), &[6]);
}

// ------------------------------------------------------------------------------ attention

fn opts(causal: bool, scale: f64, temperature: f64) -> AttentionOptions {
    AttentionOptions {
        causal,
        scale,
        temperature,
    }
}

/// Splits `x` `[B, N, 3 * H * D]` into q, k, v `[B, H, N, D]` views (strided, as a fused qkv
/// projection gives them).
fn qkv_views<E: Element>(x: &Tensor<E>, h: usize, d: usize) -> Result<[Tensor<E>; 3]> {
    let (b, n) = (x.shape()[0], x.shape()[1]);
    let t = x.reshape(&[b, n, 3, h, d])?.permute(&[2, 0, 3, 1, 4])?;
    let part = |i: usize| t.narrow(0, i, 1)?.squeeze(0);
    Ok([part(0)?, part(1)?, part(2)?])
}

/// A `[Nq, Nk]` 0/1 mask from a seed; never masks a whole row.
fn random_mask<E: Element>(nq: usize, nk: usize, seed: u64) -> Tensor<E> {
    let mut rng = Rng::new(seed);
    let mut m = vec![E::ZERO; nq * nk];
    for i in 0..nq {
        for j in 0..nk {
            if rng.uniform() < 0.3 {
                m[i * nk + j] = E::ONE;
            }
        }
        m[i * nk + (i % nk)] = E::ZERO;
    }
    Tensor::from_vec(m, &[nq, nk]).unwrap()
}

#[test]
fn attention_gradcheck() {
    let (b, h, nq, nk, d) = (2, 2, 3, 4, 3);
    let q = rnd::<f64>(&[b, h, nq, d], 20);
    let k = rnd::<f64>(&[b, h, nk, d], 21);
    let v = rnd::<f64>(&[b, h, nk, d], 22);
    let inputs = [q.clone(), k.clone(), v.clone()];
    for o in [
        opts(false, 0.5, 1.0),
        opts(true, 0.5, 1.0),
        opts(true, 1.0 / 3f64.sqrt(), 0.7),
    ] {
        check_gradients(|t| attention(&t[0], &t[1], &t[2], None, o), &inputs, gc())
            .unwrap_or_else(|e| panic!("{o:?}: {e}"));
    }
    let mask = random_mask::<f64>(nq, nk, 23);
    check_gradients(
        |t| attention(&t[0], &t[1], &t[2], Some(&mask), opts(false, 0.6, 1.3)),
        &inputs,
        gc(),
    )
    .unwrap();
    // A per-batch mask [B, 1, 1, Nk] together with the causal rule.
    let mut km = vec![0.0; b * nk];
    km[1] = 1.0;
    km[nk + 2] = 1.0;
    let kmask = Tensor::<f64>::from_vec(km, &[b, 1, 1, nk]).unwrap();
    check_gradients(
        |t| attention(&t[0], &t[1], &t[2], Some(&kmask), opts(true, 0.6, 1.0)),
        &inputs,
        gc(),
    )
    .unwrap();
    // Value width different from the key width.
    let v5 = rnd::<f64>(&[b, h, nk, 5], 24);
    check_gradients(
        |t| attention(&t[0], &t[1], &t[2], None, opts(true, 0.5, 1.0)),
        &[q, k, v5],
        gc(),
    )
    .unwrap();
}

#[test]
fn attention_gradcheck_through_strided_views() {
    let (h, d) = (2, 3);
    let x = rnd::<f64>(&[2, 4, 3 * h * d], 25);
    for causal in [false, true] {
        check_gradients(
            |t| {
                let [q, k, v] = qkv_views(&t[0], h, d)?;
                assert!(!q.is_contiguous() && !k.is_contiguous());
                attention(&q, &k, &v, None, opts(causal, 0.7, 1.5))
            },
            std::slice::from_ref(&x),
            gc(),
        )
        .unwrap();
    }
    // A transposed key view and a flipped query view.
    let q = rnd::<f64>(&[1, 2, 3, 4], 26);
    let kt = rnd::<f64>(&[1, 2, 4, 5], 27);
    let v = rnd::<f64>(&[1, 2, 5, 4], 28);
    check_gradients(
        |t| {
            let k = t[1].transpose(2, 3)?;
            attention(&t[0].flip(2)?, &k, &t[2], None, opts(true, 0.5, 1.0))
        },
        &[q, kt, v],
        gc(),
    )
    .unwrap();
}

/// Fused vs composed attention on several configurations; `tol` for the element type.
fn attention_matches_reference<E: Element>(tol: f64) {
    let cases: [(usize, usize, usize, usize, usize, usize); 5] = [
        (2, 2, 5, 5, 4, 4),
        (1, 3, 3, 7, 6, 6),
        (2, 1, 4, 6, 5, 3),
        // Large enough for the per-head parallel path.
        (4, 2, 33, 33, 16, 16),
        // Several key and query blocks of the causal products, queries the last positions.
        (1, 2, 70, 101, 8, 5),
    ];
    for (ci, &(b, h, nq, nk, dh, dv)) in cases.iter().enumerate() {
        let seed = 100 + 10 * ci as u64;
        let q = rnd::<E>(&[b, h, nq, dh], seed);
        let k = rnd::<E>(&[b, h, nk, dh], seed + 1);
        let v = rnd::<E>(&[b, h, nk, dv], seed + 2);
        let mask = random_mask::<E>(nq, nk, seed + 3);
        for (causal, masked, temp) in [
            (false, false, 1.0),
            (true, false, 1.0),
            (true, false, 0.6),
            (false, true, 1.7),
            (true, true, 1.0),
        ] {
            let o = opts(causal, 1.0 / (dh as f64).sqrt(), temp);
            let m = masked.then_some(&mask);
            let what = format!("case {ci} {o:?} masked {masked} ({})", E::DTYPE);
            assert_same(
                |t| attention(&t[0], &t[1], &t[2], m, o),
                |t| attention_reference(&t[0], &t[1], &t[2], m, o),
                &[q.clone(), k.clone(), v.clone()],
                tol,
                &what,
            );
        }
    }
    // Strided views of one qkv buffer, causal.
    let (h, d) = (4, 8);
    let x = rnd::<E>(&[3, 20, 3 * h * d], 7);
    let o = opts(true, 1.0 / (d as f64).sqrt(), 0.9);
    assert_same(
        |t| {
            let [q, k, v] = qkv_views(&t[0], h, d)?;
            attention(&q, &k, &v, None, o)
        },
        |t| {
            let [q, k, v] = qkv_views(&t[0], h, d)?;
            attention_reference(&q, &k, &v, None, o)
        },
        &[x],
        tol,
        "qkv views",
    );
}

#[test]
fn attention_matches_reference_f64() {
    attention_matches_reference::<f64>(1e-12);
}

#[test]
fn attention_matches_reference_f32() {
    attention_matches_reference::<f32>(1e-5);
}

#[test]
fn attention_output_is_contiguous_and_respects_causality() {
    let q = rnd::<f64>(&[1, 1, 4, 3], 30);
    let k = rnd::<f64>(&[1, 1, 4, 3], 31);
    let v = rnd::<f64>(&[1, 1, 4, 3], 32);
    let o = attention(&q, &k, &v, None, opts(true, 1.0, 1.0)).unwrap();
    assert!(o.is_contiguous());
    // The first query sees only the first key: its output is the first value row.
    let first: Vec<f64> = o.to_vec()[..3].to_vec();
    assert!(max_rel_err(&first, &v.to_vec()[..3]) < 1e-15);
    // Changing the last key and value cannot change earlier outputs.
    let mut kv = k.to_vec();
    kv[9] += 5.0;
    let k2 = Tensor::from_vec(kv, &[1, 1, 4, 3]).unwrap();
    let o2 = attention(&q, &k2, &v, None, opts(true, 1.0, 1.0)).unwrap();
    assert_eq!(o.to_vec()[..9], o2.to_vec()[..9]);
    assert_ne!(o.to_vec()[9..], o2.to_vec()[9..]);
}

#[test]
fn attention_query_with_every_key_masked_gives_zero() {
    let q = rnd::<f64>(&[1, 2, 3, 4], 33);
    let k = rnd::<f64>(&[1, 2, 3, 4], 34);
    let v = rnd::<f64>(&[1, 2, 3, 4], 35);
    let mut m = vec![0.0; 9];
    m[3..6].fill(1.0); // query 1 sees nothing
    let mask = Tensor::<f64>::from_vec(m, &[3, 3]).unwrap();
    let o = attention(&q, &k, &v, Some(&mask), opts(false, 0.5, 1.0)).unwrap();
    let ov = o.to_vec();
    for head in 0..2 {
        assert!(ov[head * 12 + 4..head * 12 + 8].iter().all(|&x| x == 0.0));
    }
    assert_same(
        |t| attention(&t[0], &t[1], &t[2], Some(&mask), opts(false, 0.5, 1.0)),
        |t| attention_reference(&t[0], &t[1], &t[2], Some(&mask), opts(false, 0.5, 1.0)),
        &[q, k, v],
        1e-12,
        "fully masked query",
    );
}

/// `attention_qkv` composed: views of q, k, v, the composed attention, heads merged.
fn attention_qkv_composed<E: Element>(
    x: &Tensor<E>,
    h: usize,
    mask: Option<&Tensor<E>>,
    o: AttentionOptions,
) -> Result<Tensor<E>> {
    let (b, n, d) = (x.shape()[0], x.shape()[1], x.shape()[2] / 3 / h);
    let [q, k, v] = qkv_views(x, h, d)?;
    attention_reference(&q, &k, &v, mask, o)?
        .permute(&[0, 2, 1, 3])?
        .reshape(&[b, n, h * d])
}

fn attention_qkv_matches_composed<E: Element>(tol: f64) {
    // The second case takes several causal key and query blocks.
    for (ci, &(b, n, h, d)) in [(2, 5, 2, 3), (1, 70, 2, 4)].iter().enumerate() {
        let x = rnd::<E>(&[b, n, 3 * h * d], 60 + ci as u64);
        let mask = random_mask::<E>(n, n, 61 + ci as u64);
        for (causal, masked) in [(false, false), (true, false), (true, true), (false, true)] {
            let o = opts(causal, 1.0 / (d as f64).sqrt(), 0.8);
            let m = masked.then_some(&mask);
            assert_same(
                |t| attention_qkv(&t[0], h, m, o),
                |t| attention_qkv_composed(&t[0], h, m, o),
                std::slice::from_ref(&x),
                tol,
                &format!(
                    "attention_qkv case {ci} causal {causal} masked {masked} ({})",
                    E::DTYPE
                ),
            );
        }
    }
}

#[test]
fn attention_qkv_matches_composed_f64() {
    attention_qkv_matches_composed::<f64>(1e-12);
}

#[test]
fn attention_qkv_matches_composed_f32() {
    attention_qkv_matches_composed::<f32>(1e-5);
}

#[test]
fn attention_qkv_gradcheck() {
    let x = rnd::<f64>(&[2, 4, 3 * 2 * 3], 62);
    for causal in [false, true] {
        check_gradients(
            |t| attention_qkv(&t[0], 2, None, opts(causal, 0.6, 1.2)),
            std::slice::from_ref(&x),
            gc(),
        )
        .unwrap();
    }
    // A strided input (every other position of a longer sequence).
    let long = rnd::<f64>(&[1, 8, 3 * 2 * 3], 63);
    check_gradients(
        |t| {
            let x = t[0].reshape(&[1, 4, 2, 18])?.narrow(2, 1, 1)?.squeeze(2)?;
            assert!(!x.is_contiguous());
            attention_qkv(&x, 2, None, opts(true, 0.6, 1.0))
        },
        &[long],
        gc(),
    )
    .unwrap();
}

#[test]
fn attention_qkv_rejects_bad_shapes() {
    let x = rnd::<f64>(&[2, 4, 18], 64);
    assert!(attention_qkv(&x, 2, None, opts(true, 0.5, 1.0)).is_ok());
    for (t, h) in [
        (rnd::<f64>(&[2, 4, 17], 65), 2),
        (rnd::<f64>(&[8, 18], 66), 2),
        (x.clone(), 0),
        (x.clone(), 4),
    ] {
        let e = attention_qkv(&t, h, None, opts(true, 0.5, 1.0)).unwrap_err();
        assert!(e.to_string().contains("attention_qkv"), "{e}");
    }
    let mask = Tensor::<f64>::zeros(&[3, 4]);
    assert!(attention_qkv(&x, 2, Some(&mask), opts(false, 0.5, 1.0)).is_err());
    assert!(attention_qkv(&x, 2, None, opts(false, 0.5, 0.0)).is_err());
}

#[test]
fn attention_rejects_bad_shapes_and_options() {
    let q = rnd::<f64>(&[2, 2, 3, 4], 36);
    let k = rnd::<f64>(&[2, 2, 5, 4], 37);
    let v = rnd::<f64>(&[2, 2, 5, 4], 38);
    let o = opts(false, 0.5, 1.0);
    assert!(attention(&q, &k, &v, None, o).is_ok());
    let bad3 = rnd::<f64>(&[2, 3, 4], 39);
    assert!(attention(&bad3, &k, &v, None, o).is_err());
    let kd = rnd::<f64>(&[2, 2, 5, 3], 40);
    assert!(attention(&q, &kd, &v, None, o).is_err(), "head dims differ");
    let v4 = rnd::<f64>(&[2, 2, 4, 4], 41);
    assert!(
        attention(&q, &k, &v4, None, o).is_err(),
        "k and v lengths differ"
    );
    let kb = rnd::<f64>(&[1, 2, 5, 4], 42);
    assert!(attention(&q, &kb, &v, None, o).is_err(), "batch differs");
    // Causal with more queries than keys.
    assert!(attention(&k, &q, &q, None, opts(true, 0.5, 1.0)).is_err());
    let mask = Tensor::<f64>::zeros(&[4, 5]);
    assert!(attention(&q, &k, &v, Some(&mask), o).is_err(), "mask rows");
    let mask = Tensor::<f64>::zeros(&[2, 1, 3, 5]);
    assert!(attention(&q, &k, &v, Some(&mask), o).is_ok());
    for (s, t) in [
        (0.5, 0.0),
        (0.5, -1.0),
        (f64::NAN, 1.0),
        (0.5, f64::INFINITY),
    ] {
        assert!(attention(&q, &k, &v, None, opts(false, s, t)).is_err());
        assert!(attention_reference(&q, &k, &v, None, opts(false, s, t)).is_err());
    }
    let e = attention(&q, &kd, &v, None, o).unwrap_err().to_string();
    assert!(e.contains("attention") && e.contains("[2, 2, 5, 3]"), "{e}");
}

// ------------------------------------------------------------------------------ KV cache

#[test]
fn decode_step_by_step_equals_full_causal_attention() {
    let (b, h, n, d) = (2, 3, 7, 5);
    for temp in [1.0, 0.6] {
        let q = rnd::<f64>(&[b, h, n, d], 50);
        let k = rnd::<f64>(&[b, h, n, d], 51);
        let v = rnd::<f64>(&[b, h, n, d], 52);
        let o = opts(true, 1.0 / (d as f64).sqrt(), temp);
        let full = attention(&q, &k, &v, None, o).unwrap();
        let mut cache = KvCache::<f64>::new(b, h, n, d).unwrap();
        assert!(cache.is_empty() && cache.capacity() == n);
        let mut steps = Vec::new();
        for t in 0..n {
            cache
                .append(&k.narrow(2, t, 1).unwrap(), &v.narrow(2, t, 1).unwrap())
                .unwrap();
            assert_eq!(cache.len(), t + 1);
            steps.push(attention_decode(&q.narrow(2, t, 1).unwrap(), &cache, o).unwrap());
        }
        let refs: Vec<&Tensor<f64>> = steps.iter().collect();
        let stepped = Tensor::concat(&refs, 2).unwrap();
        let e = max_rel_err(&stepped.to_vec(), &full.to_vec());
        assert!(e < 1e-13, "temperature {temp}: decode differs by {e:e}");
        assert!(max_rel_err(&cache.keys().to_vec(), &k.to_vec()) == 0.0);
        assert!(max_rel_err(&cache.values().to_vec(), &v.to_vec()) == 0.0);
    }
}

#[test]
fn decode_in_chunks_f32() {
    // Appending several positions at once and decoding them together (a prompt), then steps.
    let (b, h, n, d) = (3, 2, 9, 8);
    let q = rnd::<f32>(&[b, h, n, d], 53);
    let k = rnd::<f32>(&[b, h, n, d], 54);
    let v = rnd::<f32>(&[b, h, n, d], 55);
    let o = opts(true, 0.35, 1.0);
    let full = attention(&q, &k, &v, None, o).unwrap();
    let mut cache = KvCache::<f32>::new(b, h, 16, d).unwrap();
    let mut parts = Vec::new();
    for (start, len) in [(0, 4), (4, 1), (5, 3), (8, 1)] {
        let (kc, vc) = (
            k.narrow(2, start, len).unwrap(),
            v.narrow(2, start, len).unwrap(),
        );
        cache.append(&kc, &vc).unwrap();
        parts.push(attention_decode(&q.narrow(2, start, len).unwrap(), &cache, o).unwrap());
    }
    let refs: Vec<&Tensor<f32>> = parts.iter().collect();
    let got = Tensor::concat(&refs, 2).unwrap();
    let e = max_rel_err(&got.to_f64_vec(), &full.to_f64_vec());
    assert!(e < 1e-5, "chunked decode differs by {e:e}");
    // Non-causal decode of the last position sees the same keys as causal.
    let last = q.narrow(2, 8, 1).unwrap();
    let nc = attention_decode(&last, &cache, opts(false, 0.35, 1.0)).unwrap();
    let c = attention_decode(&last, &cache, o).unwrap();
    assert_eq!(nc.to_vec(), c.to_vec());
    cache.reset();
    assert!(cache.is_empty());
}

#[test]
fn kv_cache_errors() {
    let mut cache = KvCache::<f64>::new(2, 2, 3, 4).unwrap();
    let kv = |t: usize, seed: u64| rnd::<f64>(&[2, 2, t, 4], seed);
    assert!(cache.append(&kv(2, 1), &kv(2, 2)).is_ok());
    let e = cache.append(&kv(2, 3), &kv(2, 4));
    assert!(e.is_err(), "overflow must fail");
    assert_eq!(cache.len(), 2, "a failed append leaves the cache unchanged");
    assert!(
        cache.append(&kv(1, 5), &kv(2, 6)).is_err(),
        "k and v differ"
    );
    assert!(cache
        .append(&rnd(&[2, 3, 1, 4], 7), &rnd(&[2, 3, 1, 4], 8))
        .is_err());
    assert!(cache
        .append(&rnd(&[2, 2, 1, 5], 7), &rnd(&[2, 2, 1, 5], 8))
        .is_err());
    assert!(cache
        .append(&rnd(&[2, 2, 4], 9), &rnd(&[2, 2, 4], 9))
        .is_err());
    let o = opts(true, 0.5, 1.0);
    assert!(
        attention_decode(&kv(3, 10), &cache, o).is_err(),
        "more queries than keys"
    );
    assert!(attention_decode(&rnd(&[1, 2, 1, 4], 11), &cache, o).is_err());
    assert!(attention_decode(&rnd(&[2, 2, 1, 3], 12), &cache, o).is_err());
    assert!(attention_decode(&kv(1, 13), &cache, opts(true, 0.5, 0.0)).is_err());
    assert!(attention_decode(&kv(1, 14), &cache, o).is_ok());
    let empty = KvCache::<f64>::new(2, 2, 3, 4).unwrap();
    assert!(attention_decode(&kv(1, 15), &empty, o).is_err());
}

// ------------------------------------------------------------------------------ module

#[test]
fn causal_self_attention_step_equals_forward() {
    let mut rng = Rng::new(60);
    let layer = CausalSelfAttention::<f64>::new(12, 4, &mut rng).unwrap();
    assert_eq!((layer.heads, layer.head_dim), (3, 4));
    let names: Vec<String> = layer.parameters().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["qkv.weight", "qkv.bias", "out.weight", "out.bias"]);
    let (b, n) = (2, 6);
    let x = rnd::<f64>(&[b, n, 12], 61);
    for temp in [1.0, 0.8] {
        let full = layer.forward(&x, temp).unwrap();
        assert_eq!(full.shape(), &[b, n, 12]);
        let mut cache = layer.new_cache(b, n).unwrap();
        let steps: Vec<Tensor<f64>> = (0..n)
            .map(|t| {
                layer
                    .forward_step(&x.narrow(1, t, 1).unwrap(), &mut cache, temp)
                    .unwrap()
            })
            .collect();
        let refs: Vec<&Tensor<f64>> = steps.iter().collect();
        let stepped = Tensor::concat(&refs, 1).unwrap();
        let e = max_rel_err(&stepped.to_vec(), &full.to_vec());
        assert!(e < 1e-13, "temperature {temp}: steps differ by {e:e}");
        assert!(!stepped.requires_grad(), "decoding records no graph");
    }
    assert!(layer.forward(&rnd(&[2, 3, 8], 62), 1.0).is_err());
    let mut small = layer.new_cache(b, 1).unwrap();
    let x1 = x.narrow(1, 0, 1).unwrap();
    assert!(layer.forward_step(&x1, &mut small, 1.0).is_ok());
    assert!(
        layer.forward_step(&x1, &mut small, 1.0).is_err(),
        "cache full"
    );
    assert!(CausalSelfAttention::<f64>::new(10, 3, &mut rng).is_err());
    assert!(CausalSelfAttention::<f64>::new(8, 0, &mut rng).is_err());
}

#[test]
fn causal_self_attention_gradcheck_and_reference() {
    let mut rng = Rng::new(63);
    let layer = CausalSelfAttention::<f64>::new(6, 3, &mut rng).unwrap();
    let x = rnd::<f64>(&[2, 4, 6], 64);
    let with = |t: &[Tensor<f64>]| CausalSelfAttention {
        qkv_weight: t[1].clone(),
        qkv_bias: t[2].clone(),
        out_weight: t[3].clone(),
        out_bias: t[4].clone(),
        heads: 2,
        head_dim: 3,
    };
    let inputs = [
        x,
        layer.qkv_weight.detach(),
        layer.qkv_bias.detach(),
        layer.out_weight.detach(),
        layer.out_bias.detach(),
    ];
    check_gradients(|t| with(t).forward(&t[0], 0.9), &inputs, gc()).unwrap();
    // The layer written out with the composed attention.
    assert_same(
        |t| with(t).forward(&t[0], 0.9),
        |t| {
            let qkv = t[0]
                .linear(&t[1], Some(&t[2]))?
                .reshape(&[2, 4, 3, 2, 3])?
                .permute(&[2, 0, 3, 1, 4])?;
            let part = |i: usize| qkv.narrow(0, i, 1)?.squeeze(0);
            let o = attention_reference(
                &part(0)?,
                &part(1)?,
                &part(2)?,
                None,
                opts(true, 1.0 / 3f64.sqrt(), 0.9),
            )?;
            o.permute(&[0, 2, 1, 3])?
                .reshape(&[2, 4, 6])?
                .linear(&t[3], Some(&t[4]))
        },
        &inputs,
        1e-12,
        "CausalSelfAttention vs composed",
    );
}

#[test]
fn decode_over_several_key_blocks_equals_full_attention() {
    // More cached positions than one block of the decode loop, with spread-out scores so
    // that the running maximum moves between blocks.
    let (b, h, n, d) = (1, 2, 150, 4);
    let q = rnd::<f64>(&[b, h, n, d], 56).mul_scalar(3.0).unwrap();
    let k = rnd::<f64>(&[b, h, n, d], 57);
    let v = rnd::<f64>(&[b, h, n, d], 58);
    let o = opts(true, 1.0, 0.8);
    let full = attention(&q, &k, &v, None, o).unwrap();
    let mut cache = KvCache::<f64>::new(b, h, n, d).unwrap();
    cache.append(&k, &v).unwrap();
    for t in [1, 5, 64, 130] {
        let got = attention_decode(&q.narrow(2, n - t, t).unwrap(), &cache, o).unwrap();
        let want = full.narrow(2, n - t, t).unwrap();
        let e = max_rel_err(&got.to_vec(), &want.to_vec());
        assert!(e < 1e-13, "last {t} queries differ by {e:e}");
    }
}

// ------------------------------------------------------------------------------ GELU

#[test]
fn gelu_derivatives_match_derivation() {
    // docs/derivations.md derives d/dx GELU = Phi(x) + x phi(x) (erf form) and
    // 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) u' (tanh form); both implementations must agree
    // with central differences of their own forward.
    use tarflow::ops::{gelu_grad_scalar, gelu_scalar};
    let h = 1e-6;
    for i in -60..=60 {
        let x = i as f64 * 0.1;
        let numeric = (gelu_scalar(x + h) - gelu_scalar(x - h)) / (2.0 * h);
        let derived = 0.5 * (1.0 + Element::erf(x / 2f64.sqrt()))
            + x * (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
        assert!((gelu_grad_scalar(x) - numeric).abs() < 1e-8, "x = {x}");
        assert!((gelu_grad_scalar(x) - derived).abs() < 1e-14, "x = {x}");
    }
    let x = rnd::<f64>(&[4, 5], 70).mul_scalar(2.0).unwrap();
    check_gradients(|t| Ok(t[0].gelu().unwrap()), std::slice::from_ref(&x), gc()).unwrap();
    check_gradients(
        |t| Ok(t[0].gelu_tanh().unwrap()),
        std::slice::from_ref(&x),
        gc(),
    )
    .unwrap();
}

// ------------------------------------------------------------------------------ partial grads

/// Gradients of `sum(f(x) * r)` for the inputs flagged in `wanted` only (the others are
/// plain tensors), so that the ops' paths for partial gradients are exercised.
fn partial_grads(
    f: impl Fn(&[Tensor<f64>]) -> Result<Tensor<f64>>,
    inputs: &[Tensor<f64>],
    wanted: &[bool],
) -> Vec<Option<Vec<f64>>> {
    let xs: Vec<Tensor<f64>> = inputs
        .iter()
        .zip(wanted)
        .map(|(t, &w)| {
            if w {
                t.copy().unwrap().requires_grad_()
            } else {
                t.copy().unwrap()
            }
        })
        .collect();
    let y = f(&xs).unwrap();
    let r = rnd::<f64>(y.shape(), 0xdef);
    y.mul(&r).unwrap().sum_all().unwrap().backward().unwrap();
    xs.iter().map(|t| t.grad().map(|g| g.to_vec())).collect()
}

#[test]
fn partial_gradients_match_composed() {
    let check = |what: &str, a: Vec<Option<Vec<f64>>>, b: Vec<Option<Vec<f64>>>| {
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            match (x, y) {
                (Some(x), Some(y)) => {
                    let e = max_rel_err(x, y);
                    assert!(e < 1e-12, "{what}: input {i} differs by {e:e}");
                }
                (None, None) => {}
                _ => panic!("{what}: input {i} has a gradient on one side only"),
            }
        }
    };
    // Layer norm: parameters only (input constant), small and parallel sizes.
    for rows in [5, 300] {
        let inputs = [rnd(&[rows, 128], 80), rnd(&[128], 81), rnd(&[128], 82)];
        for wanted in [
            [false, true, true],
            [false, true, false],
            [true, false, false],
        ] {
            check(
                &format!("layer_norm rows {rows} {wanted:?}"),
                partial_grads(
                    |t| t[0].layer_norm(Some(&t[1]), Some(&t[2]), 1e-5),
                    &inputs,
                    &wanted,
                ),
                partial_grads(
                    |t| layer_norm_composed(&t[0], Some(&t[1]), Some(&t[2]), 1e-5),
                    &inputs,
                    &wanted,
                ),
            );
        }
    }
    // Attention: each operand alone, and k with v.
    let inputs = [
        rnd(&[2, 2, 6, 4], 83),
        rnd(&[2, 2, 6, 4], 84),
        rnd(&[2, 2, 6, 4], 85),
    ];
    let o = opts(true, 0.5, 1.2);
    for wanted in [
        [true, false, false],
        [false, true, false],
        [false, false, true],
        [false, true, true],
    ] {
        check(
            &format!("attention {wanted:?}"),
            partial_grads(
                |t| attention(&t[0], &t[1], &t[2], None, o),
                &inputs,
                &wanted,
            ),
            partial_grads(
                |t| attention_reference(&t[0], &t[1], &t[2], None, o),
                &inputs,
                &wanted,
            ),
        );
    }
}

#[test]
fn fused_ops_record_nothing_without_gradients() {
    let x = rnd::<f64>(&[3, 4], 90).requires_grad_();
    let _g = tarflow::no_grad();
    assert!(!x.softmax(-1).unwrap().requires_grad());
    assert!(!x.layer_norm(None, None, 1e-5).unwrap().requires_grad());
    let q = rnd::<f64>(&[1, 1, 3, 4], 91).requires_grad_();
    assert!(!attention(&q, &q, &q, None, opts(true, 0.5, 1.0))
        .unwrap()
        .requires_grad());
}
