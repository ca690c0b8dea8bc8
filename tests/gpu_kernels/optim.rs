//! `ptx/optim.cu`: AdamW and EMA bit for bit against the CPU's optimisers over several steps,
//! and the gradient sum of squares (two tensors sharing one partial buffer, then `sum_f64`)
//! against `ParamStore::global_grad_norm`.

use tarflow::gpu::kernels::{
    adamw_f32, ema_f32, sum_f64, sum_squares_partial_f32, sum_squares_partials, AdamWCoeffs,
};
use tarflow::gpu::Driver;
use tarflow::nn::ParamStore;
use tarflow::optim::{AdamW, AdamWConfig, Ema};
use tarflow::{Rng, Tensor};

use crate::harness::*;

/// Three CTAs of 256 and a ragged 5.
const N: usize = 3 * 256 + 5;

fn store_of(values: &[(&str, Vec<f32>)]) -> (ParamStore, Vec<Tensor<f32>>) {
    let mut store = ParamStore::new();
    let tensors: Vec<Tensor<f32>> = values
        .iter()
        .map(|(_, v)| {
            Tensor::from_vec(v.clone(), &[v.len()])
                .unwrap()
                .requires_grad_()
        })
        .collect();
    let named = values
        .iter()
        .zip(&tensors)
        .map(|((name, _), t)| (name.to_string(), t.clone()))
        .collect();
    store.insert("", named).unwrap();
    (store, tensors)
}

fn adamw(d: &dyn Driver) {
    let mut rng = Rng::new(71);
    let cfg = AdamWConfig {
        lr: 3e-3,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
    };
    let init = normal(&mut rng, N);
    let (store, w) = store_of(&[("w", init.clone())]);
    let mut opt = AdamW::new(&store, cfg).unwrap();
    let (p, m, v) = (
        upload::<f32>(d, &init),
        upload::<f32>(d, &vec![0.0; N]),
        upload::<f32>(d, &vec![0.0; N]),
    );
    for step in 1..=3u64 {
        let gs: Vec<f32> = normal(&mut rng, N)
            .iter()
            .map(|g| g * step as f32)
            .collect();
        w[0].set_grad(Some(Tensor::from_vec(gs.clone(), &[N]).unwrap()));
        let lr = cfg.lr * (1.0 - step as f64 / 10.0);
        opt.step(lr).unwrap();
        let g = upload::<f32>(d, &gs);
        adamw_f32(d, p, m, v, g, N, &AdamWCoeffs::new(&cfg, lr, step).unwrap()).unwrap();
        let what = format!("adamw step {step} on {}", d.name());
        assert_bits(&what, &download::<f32>(d, p, N), &w[0].to_vec());
    }
}

/// One value, and none: the update touches exactly `n` values.
fn adamw_edges(d: &dyn Driver) {
    let cfg = AdamWConfig::default();
    let (store, w) = store_of(&[("w", vec![0.25])]);
    let mut opt = AdamW::new(&store, cfg).unwrap();
    w[0].set_grad(Some(Tensor::from_vec(vec![-2.0f32], &[1]).unwrap()));
    opt.step(cfg.lr).unwrap();
    let (p, m, v) = (
        upload::<f32>(d, &[0.25, f32::NAN]),
        upload::<f32>(d, &[0.0, f32::NAN]),
        upload::<f32>(d, &[0.0, f32::NAN]),
    );
    let g = upload::<f32>(d, &[-2.0, f32::NAN]);
    let c = AdamWCoeffs::new(&cfg, cfg.lr, 1).unwrap();
    adamw_f32(d, p, m, v, g, 1, &c).unwrap();
    adamw_f32(d, p.offset(4), m.offset(4), v.offset(4), g.offset(4), 0, &c).unwrap();
    let got = download::<f32>(d, p, 2);
    assert_bits("adamw of one value", &got[..1], &w[0].to_vec());
    assert!(got[1].is_nan(), "adamw wrote past one value");
    ema_f32(d, p, g, 0, 0.5).unwrap();
    assert_bits("ema of nothing", &download::<f32>(d, p, 1), &w[0].to_vec());
}

fn ema(d: &dyn Driver) {
    let mut rng = Rng::new(72);
    let p0 = normal(&mut rng, N);
    let (store, _) = store_of(&[("w", p0.clone())]);
    let mut cpu = Ema::new(&store);
    let s = upload::<f32>(d, &p0);
    for decay in [0.99, 0.5, 0.0] {
        let p = normal(&mut rng, N);
        store.load("w", &[N], &p).unwrap();
        cpu.update(&store, decay).unwrap();
        ema_f32(d, s, upload::<f32>(d, &p), N, decay).unwrap();
        let what = format!("ema decay {decay} on {}", d.name());
        assert_bits(
            &what,
            &download::<f32>(d, s, N),
            &cpu.shadow("w").unwrap().to_vec(),
        );
    }
}

fn grad_norm(d: &dyn Driver) {
    let mut rng = Rng::new(73);
    let (n1, n2, chunk) = (1000usize, 333usize, 128usize);
    let (store, t) = store_of(&[("a", vec![0.0; n1]), ("b", vec![0.0; n2])]);
    let g1: Vec<f32> = normal(&mut rng, n1).iter().map(|v| v * 1e3).collect();
    let g2 = normal(&mut rng, n2);
    t[0].set_grad(Some(Tensor::from_vec(g1.clone(), &[n1]).unwrap()));
    t[1].set_grad(Some(Tensor::from_vec(g2.clone(), &[n2]).unwrap()));
    let want = store.global_grad_norm().unwrap();
    let (c1, c2) = (
        sum_squares_partials(n1, chunk),
        sum_squares_partials(n2, chunk),
    );
    let partial = upload(d, &vec![f64::NAN; c1 + c2]);
    sum_squares_partial_f32(d, partial, upload::<f32>(d, &g1), n1, chunk).unwrap();
    sum_squares_partial_f32(
        d,
        partial.offset(8 * c1 as u64),
        upload::<f32>(d, &g2),
        n2,
        chunk,
    )
    .unwrap();
    let out = upload(d, &[f64::NAN; 2]);
    sum_f64(d, out, partial, c1 + c2).unwrap();
    let got = download::<f64>(d, out, 2);
    let rel = (got[0].sqrt() - want).abs() / want;
    assert!(
        rel <= 1e-12,
        "grad norm on {}: got {} want {want}",
        d.name(),
        got[0].sqrt()
    );
    assert!(got[1].is_nan(), "sum_f64 wrote past its output");
    // Nothing to sum gives 0.
    sum_f64(d, out, partial, 0).unwrap();
    assert_eq!(download::<f64>(d, out, 1)[0], 0.0);
}

#[test]
fn adamw_f32_matches_cpu_bit_for_bit() {
    on_each_device(adamw);
}

#[test]
fn adamw_f32_edges() {
    on_each_device(adamw_edges);
}

#[test]
fn ema_f32_matches_cpu_bit_for_bit() {
    on_each_device(ema);
}

#[test]
fn gradient_sum_of_squares_matches_cpu_norm() {
    on_each_device(grad_norm);
}
