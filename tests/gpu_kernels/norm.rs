//! `ptx/norm.cu`: softmax and log-softmax rows forward and backward, layer normalisation
//! forward (with and without weight and bias, saved statistics), its input gradient and its
//! parameter gradients (chunk partials finished by `reduce_chunks_f32`), against the CPU's
//! ops and autograd.

use tarflow::gpu::kernels::{
    layer_norm_bwd_dx_f32, layer_norm_bwd_params_f32, layer_norm_fwd_f32, reduce_chunks_f32,
    softmax_bwd_rows_f32, softmax_rows_f32, LayerNormParamGrads, ReduceOp,
};
use tarflow::gpu::Driver;
use tarflow::{Rng, Tensor};

use crate::harness::*;

/// 19 rows (three CTAs of 8, the last ragged) of 300 (nine warp sweeps plus a ragged one).
const ROWS: usize = 19;
const D: usize = 300;

fn softmax_forward(d: &dyn Driver) {
    let mut rng = Rng::new(41);
    let mut xs: Vec<f32> = normal(&mut rng, ROWS * D).iter().map(|v| 3.0 * v).collect();
    // Degenerate rows: all -inf, one NaN, one +inf among finite values.
    xs[..D].fill(f32::NEG_INFINITY);
    xs[D + 17] = f32::NAN;
    xs[2 * D + 5] = f32::INFINITY;
    let x = Tensor::from_vec(xs.clone(), &[ROWS, D]).unwrap();
    let dx = upload::<f32>(d, &xs);
    for log in [false, true] {
        let want = if log {
            x.log_softmax(-1).unwrap()
        } else {
            x.softmax(-1).unwrap()
        };
        let y = poisoned_f32(d, ROWS * D);
        softmax_rows_f32(d, y, dx, ROWS, D, log).unwrap();
        let got = download::<f32>(d, y, ROWS * D);
        let what = format!("softmax (log {log}) on {}", d.name());
        assert_close(&what, &got, &wide(&want.to_vec()), 1e-5, 1e-7);
    }
    // Rows shorter than a warp, and rows of many sweeps.
    for (rows, dd) in [(9usize, 5usize), (3, 1000)] {
        let xs = normal(&mut rng, rows * dd);
        let x = Tensor::from_vec(xs.clone(), &[rows, dd]).unwrap();
        let dx = upload::<f32>(d, &xs);
        for log in [false, true] {
            let want = if log {
                x.log_softmax(-1).unwrap()
            } else {
                x.softmax(-1).unwrap()
            };
            let y = poisoned_f32(d, rows * dd);
            softmax_rows_f32(d, y, dx, rows, dd, log).unwrap();
            let what = format!("softmax (log {log}) [{rows}, {dd}] on {}", d.name());
            let got = download::<f32>(d, y, rows * dd);
            assert_close(&what, &got, &wide(&want.to_vec()), 1e-5, 1e-7);
        }
    }
    // Single-element rows, and nothing.
    let one = upload::<f32>(d, &[-3.0, 7.0]);
    let y = poisoned_f32(d, 3);
    softmax_rows_f32(d, y, one, 2, 1, false).unwrap();
    softmax_rows_f32(d, y, one, 0, 5, false).unwrap();
    let got = download::<f32>(d, y, 3);
    assert_bits("softmax of one-element rows", &got[..2], &[1.0, 1.0]);
    assert!(got[2].is_nan(), "wrote past two one-element rows");
}

fn softmax_backward(d: &dyn Driver) {
    let mut rng = Rng::new(42);
    let xs: Vec<f32> = normal(&mut rng, ROWS * D).iter().map(|v| 2.0 * v).collect();
    let gs = normal(&mut rng, ROWS * D);
    let g = Tensor::from_vec(gs.clone(), &[ROWS, D]).unwrap();
    let dg = upload::<f32>(d, &gs);
    for log in [false, true] {
        let x = Tensor::from_vec(xs.clone(), &[ROWS, D])
            .unwrap()
            .requires_grad_();
        let y = if log {
            x.log_softmax(-1).unwrap()
        } else {
            x.softmax(-1).unwrap()
        };
        y.backward_with(&g).unwrap();
        let want = wide(&x.grad().unwrap().to_vec());
        let dy = upload::<f32>(d, &y.to_vec());
        let dx = poisoned_f32(d, ROWS * D);
        softmax_bwd_rows_f32(d, dx, dy, dg, ROWS, D, log).unwrap();
        let got = download::<f32>(d, dx, ROWS * D);
        let what = format!("softmax backward (log {log}) on {}", d.name());
        assert_close(&what, &got, &want, 1e-4, 1e-6);
    }
}

/// 19 rows of 200: three CTAs, rows of six warp sweeps plus a ragged 8.
const LN_ROWS: usize = 19;
const LN_D: usize = 200;
const EPS: f32 = 1e-5;

/// Layer-norm inputs: rows with an offset (so the centred variance matters), a weight and a
/// bias.
fn ln_inputs(rng: &mut Rng) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let xs = normal(rng, LN_ROWS * LN_D)
        .iter()
        .enumerate()
        .map(|(i, v)| 1.5 * v + (i / LN_D) as f32 - 4.0)
        .collect();
    (xs, uniform(rng, LN_D, 0.5, 1.5), normal(rng, LN_D))
}

fn layer_norm_forward(d: &dyn Driver) {
    let mut rng = Rng::new(43);
    let (xs, ws, bs) = ln_inputs(&mut rng);
    let x = Tensor::from_vec(xs.clone(), &[LN_ROWS, LN_D]).unwrap();
    let w = Tensor::from_vec(ws.clone(), &[LN_D]).unwrap();
    let b = Tensor::from_vec(bs.clone(), &[LN_D]).unwrap();
    let (dx, dw, db) = (
        upload::<f32>(d, &xs),
        upload::<f32>(d, &ws),
        upload::<f32>(d, &bs),
    );
    for affine in [true, false] {
        let want = if affine {
            x.layer_norm(Some(&w), Some(&b), EPS as f64).unwrap()
        } else {
            x.layer_norm(None, None, EPS as f64).unwrap()
        };
        let y = poisoned_f32(d, LN_ROWS * LN_D);
        let stats = poisoned_f32(d, LN_ROWS * 2);
        let (wp, bp) = if affine {
            (Some(dw), Some(db))
        } else {
            (None, None)
        };
        layer_norm_fwd_f32(d, y, Some(stats), dx, wp, bp, LN_ROWS, LN_D, EPS).unwrap();
        let what = format!("layer_norm (affine {affine}) on {}", d.name());
        let got = download::<f32>(d, y, LN_ROWS * LN_D);
        assert_close(&what, &got, &wide(&want.to_vec()), 1e-5, 1e-5);
        // The saved statistics against an f64 two-pass computation.
        let mut want_stats = Vec::new();
        for row in xs.chunks(LN_D) {
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / LN_D as f64;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / LN_D as f64;
            want_stats.extend([mean, 1.0 / (var + EPS as f64).sqrt()]);
        }
        let got = download::<f32>(d, stats, LN_ROWS * 2);
        assert_close(&format!("{what}: stats"), &got, &want_stats, 1e-5, 1e-6);
    }
    // Rows shorter than a warp, one of them constant (zero variance).
    let (rows, dd) = (9usize, 7usize);
    let mut xs = normal(&mut rng, rows * dd);
    xs[..dd].fill(2.5);
    let x7 = Tensor::from_vec(xs.clone(), &[rows, dd]).unwrap();
    let want = x7.layer_norm(None, None, EPS as f64).unwrap();
    let y = poisoned_f32(d, rows * dd);
    let x7d = upload::<f32>(d, &xs);
    layer_norm_fwd_f32(d, y, None, x7d, None, None, rows, dd, EPS).unwrap();
    let got = download::<f32>(d, y, rows * dd);
    let what = format!("layer_norm [{rows}, {dd}] on {}", d.name());
    assert_close(&what, &got, &wide(&want.to_vec()), 1e-5, 1e-5);
    // Rows of one element normalise to the bias; no stats requested.
    let y = poisoned_f32(d, 2);
    let one = upload::<f32>(d, &[3.0, -8.0]);
    layer_norm_fwd_f32(d, y, None, one, Some(dw), Some(db), 2, 1, EPS).unwrap();
    let want = Tensor::from_vec(vec![3.0f32, -8.0], &[2, 1])
        .unwrap()
        .layer_norm(
            Some(&w.narrow(0, 0, 1).unwrap()),
            Some(&b.narrow(0, 0, 1).unwrap()),
            EPS as f64,
        )
        .unwrap();
    assert_close(
        "layer_norm of d = 1",
        &download::<f32>(d, y, 2),
        &wide(&want.to_vec()),
        1e-6,
        1e-6,
    );
}

fn layer_norm_backward(d: &dyn Driver) {
    let mut rng = Rng::new(44);
    let (xs, ws, bs) = ln_inputs(&mut rng);
    let gs = normal(&mut rng, LN_ROWS * LN_D);
    let x = Tensor::from_vec(xs.clone(), &[LN_ROWS, LN_D])
        .unwrap()
        .requires_grad_();
    let w = Tensor::from_vec(ws.clone(), &[LN_D])
        .unwrap()
        .requires_grad_();
    let b = Tensor::from_vec(bs.clone(), &[LN_D])
        .unwrap()
        .requires_grad_();
    let y = x.layer_norm(Some(&w), Some(&b), EPS as f64).unwrap();
    y.backward_with(&Tensor::from_vec(gs.clone(), &[LN_ROWS, LN_D]).unwrap())
        .unwrap();

    let (dx_in, dw_in, db_in, dg) = (
        upload::<f32>(d, &xs),
        upload::<f32>(d, &ws),
        upload::<f32>(d, &bs),
        upload::<f32>(d, &gs),
    );
    let (y_dev, stats) = (
        poisoned_f32(d, LN_ROWS * LN_D),
        poisoned_f32(d, 2 * LN_ROWS),
    );
    layer_norm_fwd_f32(
        d,
        y_dev,
        Some(stats),
        dx_in,
        Some(dw_in),
        Some(db_in),
        LN_ROWS,
        LN_D,
        EPS,
    )
    .unwrap();

    let dx = poisoned_f32(d, LN_ROWS * LN_D);
    layer_norm_bwd_dx_f32(d, dx, dx_in, dg, stats, Some(dw_in), LN_ROWS, LN_D).unwrap();
    let got = download::<f32>(d, dx, LN_ROWS * LN_D);
    let want = wide(&x.grad().unwrap().to_vec());
    assert_close(
        &format!("layer_norm dx on {}", d.name()),
        &got,
        &want,
        1e-4,
        1e-5,
    );

    // Parameter gradients: partials per chunk of 4 rows (5 chunks, the last of three), then
    // the chunk sum accumulated onto existing gradients.
    let chunk_len = 4;
    let chunks = LN_ROWS.div_ceil(chunk_len);
    let (pw, pb) = (
        poisoned_f32(d, chunks * LN_D),
        poisoned_f32(d, chunks * LN_D),
    );
    let out = LayerNormParamGrads {
        dweight: Some(pw),
        dbias: Some(pb),
    };
    layer_norm_bwd_params_f32(d, out, dx_in, dg, stats, LN_ROWS, LN_D, chunk_len).unwrap();
    let base_w = normal(&mut rng, LN_D);
    let base_b = normal(&mut rng, LN_D);
    for (name, partial, base, cpu) in [("dweight", pw, &base_w, &w), ("dbias", pb, &base_b, &b)] {
        let acc = upload::<f32>(d, base);
        reduce_chunks_f32(
            d,
            ReduceOp::Sum,
            acc,
            partial,
            1,
            chunks,
            LN_D,
            chunks,
            1.0,
            true,
        )
        .unwrap();
        let want: Vec<f64> = cpu
            .grad()
            .unwrap()
            .to_vec()
            .iter()
            .zip(base.iter())
            .map(|(&g, &b0)| g as f64 + b0 as f64)
            .collect();
        let got = download::<f32>(d, acc, LN_D);
        assert_close(
            &format!("layer_norm {name} on {}", d.name()),
            &got,
            &want,
            1e-5,
            1e-4,
        );
    }
}

/// Without an affine weight: `dx` from `layer_norm(None, None)`'s autograd, and the bias
/// gradient alone (the weight's partials not requested).
fn layer_norm_backward_plain(d: &dyn Driver) {
    let mut rng = Rng::new(45);
    let (xs, _, _) = ln_inputs(&mut rng);
    let gs = normal(&mut rng, LN_ROWS * LN_D);
    let x = Tensor::from_vec(xs.clone(), &[LN_ROWS, LN_D])
        .unwrap()
        .requires_grad_();
    let y = x.layer_norm(None, None, EPS as f64).unwrap();
    let g = Tensor::from_vec(gs.clone(), &[LN_ROWS, LN_D]).unwrap();
    y.backward_with(&g).unwrap();
    let (dx_in, dg) = (upload::<f32>(d, &xs), upload::<f32>(d, &gs));
    let (y_dev, stats) = (
        poisoned_f32(d, LN_ROWS * LN_D),
        poisoned_f32(d, 2 * LN_ROWS),
    );
    layer_norm_fwd_f32(d, y_dev, Some(stats), dx_in, None, None, LN_ROWS, LN_D, EPS).unwrap();
    let dx = poisoned_f32(d, LN_ROWS * LN_D);
    layer_norm_bwd_dx_f32(d, dx, dx_in, dg, stats, None, LN_ROWS, LN_D).unwrap();
    let got = download::<f32>(d, dx, LN_ROWS * LN_D);
    let want = wide(&x.grad().unwrap().to_vec());
    let what = format!("layer_norm dx without weight on {}", d.name());
    assert_close(&what, &got, &want, 1e-4, 1e-5);

    let pb = poisoned_f32(d, LN_D);
    let out = LayerNormParamGrads {
        dweight: None,
        dbias: Some(pb),
    };
    layer_norm_bwd_params_f32(d, out, dx_in, dg, stats, LN_ROWS, LN_D, LN_ROWS).unwrap();
    let want = wide(&g.sum(&[0], false).unwrap().to_vec());
    let what = format!("layer_norm dbias alone on {}", d.name());
    assert_close(&what, &download::<f32>(d, pb, LN_D), &want, 1e-5, 1e-5);
}

#[test]
fn layer_norm_backward_without_weight_matches_cpu() {
    on_each_device(layer_norm_backward_plain);
}

#[test]
fn softmax_rows_match_cpu() {
    on_each_device(softmax_forward);
}

#[test]
fn softmax_backward_matches_cpu_autograd() {
    on_each_device(softmax_backward);
}

#[test]
fn layer_norm_forward_matches_cpu() {
    on_each_device(layer_norm_forward);
}

#[test]
fn layer_norm_backward_matches_cpu_autograd() {
    on_each_device(layer_norm_backward);
}
