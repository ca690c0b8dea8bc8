//! `nn` modules, the parameter store and the optimisers.

use tarflow::gradcheck::{check_gradients, GradCheck};
use tarflow::nn::{init, Embedding, Linear, Mlp, ParamStore};
use tarflow::optim::{clip_grad_norm, AdamW, AdamWConfig, Ema, LrSchedule};
use tarflow::{Error, Rng, Tensor};

fn rnd(shape: &[usize], seed: u64) -> Tensor<f64> {
    Tensor::randn(shape, 0.0, 1.0, &mut Rng::new(seed))
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * (1.0 + a.abs().max(b.abs()))
}

// ------------------------------------------------------------------ modules

#[test]
fn linear_gradients_with_and_without_bias() {
    let mut rng = Rng::new(1);
    let lin = Linear::<f64>::new(4, 3, true, &mut rng);
    let w = lin.weight.detach();
    let b = lin.bias.as_ref().unwrap().detach();
    let fwd_bias = |x: &[Tensor<f64>]| {
        Linear {
            weight: x[1].clone(),
            bias: Some(x[2].clone()),
        }
        .forward(&x[0])
    };
    let fwd_plain = |x: &[Tensor<f64>]| {
        Linear {
            weight: x[1].clone(),
            bias: None,
        }
        .forward(&x[0])
    };
    // 2-D and 3-D inputs.
    for (i, shape) in [vec![5, 4], vec![2, 3, 4]].into_iter().enumerate() {
        let x = rnd(&shape, 10 + i as u64);
        let r = check_gradients(
            fwd_bias,
            &[x.clone(), w.clone(), b.clone()],
            GradCheck::default(),
        )
        .unwrap();
        assert_eq!(r.checked, x.numel() + 12 + 3);
        check_gradients(fwd_plain, &[x, w.clone()], GradCheck::default()).unwrap();
    }
    // The module agrees with the formula x W^T + b.
    let x = rnd(&[2, 4], 5);
    let y = lin.forward(&x).unwrap();
    assert_eq!(y.shape(), &[2, 3]);
    let (xv, wv, bv) = (x.to_vec(), w.to_vec(), b.to_vec());
    for r in 0..2 {
        for o in 0..3 {
            let e: f64 = bv[o] + (0..4).map(|i| xv[r * 4 + i] * wv[o * 4 + i]).sum::<f64>();
            assert!(close(y.get(&[r, o]).unwrap(), e, 1e-14));
        }
    }
    assert!(lin.forward(&rnd(&[2, 5], 6)).is_err());
}

#[test]
fn linear_initialisation() {
    let lin = Linear::<f32>::new(16, 8, true, &mut Rng::new(3));
    let bound = 1.0 / 4.0;
    assert_eq!(lin.weight.shape(), &[8, 16]);
    assert!(lin.weight.requires_grad() && lin.weight.is_leaf());
    let w = lin.weight.to_f64_vec();
    let b = lin.bias.as_ref().unwrap().to_f64_vec();
    assert!(w.iter().chain(&b).all(|v| v.abs() <= bound));
    // Not degenerate: the draws spread over the interval.
    let max = w.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(max > 0.8 * bound, "{max}");
    let names: Vec<String> = lin.parameters().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["weight", "bias"]);

    // Zero weight keeps the default bias and consumes the same draws as `new`.
    let mut r1 = Rng::new(3);
    let z = Linear::<f32>::with_zero_weight(16, 8, &mut r1);
    assert!(z.weight.to_vec().iter().all(|&v| v == 0.0));
    assert_eq!(z.bias.as_ref().unwrap().to_f64_vec(), b);
    let mut r2 = Rng::new(3);
    let nb = Linear::<f32>::new(16, 8, false, &mut r2);
    assert!(nb.bias.is_none());
    assert_eq!(nb.parameters().len(), 1);
    assert_eq!(r1.state(), r2.state());
    // A zero-weight layer outputs its bias whatever the input.
    let y = z
        .forward(&Tensor::randn(&[3, 16], 0.0, 1.0, &mut Rng::new(9)))
        .unwrap();
    assert_eq!(y.to_vec()[8..16], z.bias.as_ref().unwrap().to_vec()[..]);

    let zero = Linear::<f64>::zeros(3, 2, true);
    assert!(zero.bias.unwrap().to_vec().iter().all(|&v| v == 0.0));
    let (w0, b0) = init::kaiming_uniform_linear::<f64>(2, 0, &mut Rng::new(1));
    assert_eq!((w0.numel(), b0.to_vec()), (0, vec![0.0, 0.0]));
}

#[test]
fn embedding_forward_gradients_and_errors() {
    let emb = Embedding::<f64>::new(5, 3, 0.5, &mut Rng::new(2));
    let table = emb.weight.detach();
    let rows = emb.forward(&[4, 0, 4]).unwrap();
    assert_eq!(rows.shape(), &[3, 3]);
    assert_eq!(rows.to_vec()[..3], table.to_vec()[12..15]);
    // Repeated indices accumulate.
    let r = check_gradients(
        |x| {
            Embedding {
                weight: x[0].clone(),
            }
            .forward(&[1, 3, 1, 1, 0])
        },
        std::slice::from_ref(&table),
        GradCheck::default(),
    )
    .unwrap();
    assert_eq!(r.checked, 15);
    // And the gradient really is the count of each row times the output gradient.
    let leaf = table.copy().unwrap().requires_grad_();
    Embedding {
        weight: leaf.clone(),
    }
    .forward(&[1, 3, 1, 1, 0])
    .unwrap()
    .sum_all()
    .unwrap()
    .backward()
    .unwrap();
    let g = leaf.grad().unwrap();
    let counts = [1.0, 3.0, 0.0, 1.0, 0.0];
    for (row, c) in counts.iter().enumerate() {
        assert_eq!(g.get(&[row, 2]).unwrap(), *c);
    }
    match emb.forward(&[0, 5]) {
        Err(Error::Index { .. }) => {}
        other => panic!("expected an index error, got {other:?}"),
    }
}

#[test]
fn mean_embedding_is_the_row_mean_and_differentiable() {
    let emb = Embedding::<f64>::new(4, 3, 1.0, &mut Rng::new(4));
    let m = emb.mean_embedding().unwrap();
    assert_eq!(m.shape(), &[3]);
    let t = emb.weight.to_vec();
    for d in 0..3 {
        let e = (0..4).map(|r| t[r * 3 + d]).sum::<f64>() / 4.0;
        assert!(close(m.get(&[d]).unwrap(), e, 1e-15));
    }
    check_gradients(
        |x| {
            Embedding {
                weight: x[0].clone(),
            }
            .mean_embedding()?
            .square()
            .unwrap()
            .sum_all()
            .unwrap()
            .unsqueeze(0)
        },
        &[emb.weight.detach()],
        GradCheck::default(),
    )
    .unwrap();
}

#[test]
fn mlp_gradients_and_names() {
    let mlp = Mlp::<f64>::new(3, 4, &mut Rng::new(5));
    assert_eq!((mlp.dim(), mlp.hidden()), (3, 12));
    let names: Vec<String> = mlp.parameters().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]);
    let ps: Vec<Tensor<f64>> = mlp.parameters().iter().map(|(_, t)| t.detach()).collect();
    let x = rnd(&[2, 2, 3], 6);
    let fwd = |x: &[Tensor<f64>]| {
        let m = Mlp {
            fc1: Linear {
                weight: x[1].clone(),
                bias: Some(x[2].clone()),
            },
            fc2: Linear {
                weight: x[3].clone(),
                bias: Some(x[4].clone()),
            },
        };
        m.forward(&x[0])
    };
    let mut inputs = vec![x.clone()];
    inputs.extend(ps);
    check_gradients(fwd, &inputs, GradCheck::default()).unwrap();
    // Exact-erf GELU between the layers.
    let h = mlp.fc1.forward(&x).unwrap().to_vec();
    let gelu: Vec<f64> = h
        .iter()
        .map(|&v| 0.5 * v * (1.0 + libm::erf(v / 2f64.sqrt())))
        .collect();
    let hg = Tensor::from_vec(gelu, &[2, 2, 12]).unwrap();
    let expect = mlp.fc2.forward(&hg).unwrap().to_vec();
    let got = mlp.forward(&x).unwrap().to_vec();
    for (a, b) in got.iter().zip(&expect) {
        assert!(close(*a, *b, 1e-14));
    }
}

// ------------------------------------------------------------------ parameter store

fn store_of(mlp: &Mlp<f64>, emb: &Embedding<f64>) -> ParamStore<f64> {
    let mut s = ParamStore::new();
    s.insert("mlp", mlp.parameters()).unwrap();
    s.insert("emb", emb.parameters()).unwrap();
    s
}

#[test]
fn param_store_names_counts_and_sharing() {
    let mut rng = Rng::new(7);
    let mlp = Mlp::<f64>::new(2, 2, &mut rng);
    let emb = Embedding::<f64>::new(3, 2, 1.0, &mut rng);
    let mut s = store_of(&mlp, &emb);
    assert_eq!(
        s.names(),
        [
            "mlp.fc1.weight",
            "mlp.fc1.bias",
            "mlp.fc2.weight",
            "mlp.fc2.bias",
            "emb.weight"
        ]
    );
    assert_eq!(s.len(), 5);
    assert_eq!(s.num_elements(), 8 + 4 + 8 + 2 + 6);
    assert!(s.get("emb.weight").unwrap().shares_storage(&emb.weight));
    assert!(s.get("nope").is_none());
    assert!(s.require("nope").unwrap_err().to_string().contains("nope"));

    // Rejected inserts change nothing.
    let dup = s.insert(
        "mlp",
        mlp.fc1
            .parameters()
            .into_iter()
            .map(|(n, t)| (format!("fc1.{n}"), t))
            .collect(),
    );
    assert!(dup.unwrap_err().to_string().contains("mlp.fc1.weight"));
    let not_leaf = vec![("x".to_string(), emb.weight.mul_scalar(2.0).unwrap())];
    assert!(s.insert("", not_leaf).is_err());
    let no_grad = vec![("y".to_string(), Tensor::<f64>::zeros(&[2]))];
    assert!(s.insert("", no_grad).is_err());
    assert_eq!(s.len(), 5);

    // Gradients and norms.
    let x = rnd(&[4, 2], 8);
    let loss = mlp
        .forward(&x)
        .unwrap()
        .add(&emb.mean_embedding().unwrap())
        .unwrap()
        .square()
        .unwrap()
        .sum_all();
    loss.unwrap().backward().unwrap();
    let expect: f64 = s
        .tensors()
        .iter()
        .map(|t| {
            t.grad()
                .unwrap()
                .to_vec()
                .iter()
                .map(|g| g * g)
                .sum::<f64>()
        })
        .sum::<f64>()
        .sqrt();
    assert!(expect > 0.0);
    assert!(close(s.global_grad_norm().unwrap(), expect, 1e-14));
    s.zero_grad();
    assert!(s.tensors().iter().all(|t| t.grad().is_none()));
    assert_eq!(s.global_grad_norm().unwrap(), 0.0);
}

#[test]
fn param_store_load_checks_and_round_trip() {
    let mut rng = Rng::new(9);
    let mlp = Mlp::<f64>::new(2, 2, &mut rng);
    let emb = Embedding::<f64>::new(3, 2, 1.0, &mut rng);
    let s = store_of(&mlp, &emb);
    let saved = s.state_dict();
    assert_eq!(saved.len(), 5);
    assert_eq!(saved[4].1, vec![3, 2]);

    let e = s.load("mlp.fc3.weight", &[2, 4], &[0.0; 8]).unwrap_err();
    assert!(e.to_string().contains("mlp.fc3.weight"), "{e}");
    let e = s.load("emb.weight", &[2, 3], &[0.0; 6]).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e:?}");
    assert!(e.to_string().contains("emb.weight"), "{e}");
    let e = s.load("emb.weight", &[3, 2], &[0.0; 5]).unwrap_err();
    assert!(e.to_string().contains("emb.weight"), "{e}");
    assert_eq!(s.state_dict(), saved, "failed loads must not write");

    // In-place load is visible through the module's own handle.
    s.load("emb.weight", &[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
        .unwrap();
    assert_eq!(emb.weight.to_vec(), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert_eq!(emb.mean_embedding().unwrap().to_vec(), [3.0, 4.0]);

    // Whole-state round trip, and strictness of load_state_dict.
    s.load_state_dict(&saved).unwrap();
    assert_eq!(s.state_dict(), saved);
    let mut partial = saved.clone();
    let removed = partial.remove(1);
    let e = s.load_state_dict(&partial).unwrap_err();
    assert!(e.to_string().contains(&removed.0), "{e}");
    let mut twice = saved.clone();
    twice.push(saved[0].clone());
    assert!(s.load_state_dict(&twice).is_err());

    // A fresh model loads the state and computes the same function.
    let mut rng2 = Rng::new(1234);
    let mlp2 = Mlp::<f64>::new(2, 2, &mut rng2);
    let emb2 = Embedding::<f64>::new(3, 2, 1.0, &mut rng2);
    let s2 = store_of(&mlp2, &emb2);
    s2.load_state_dict(&saved).unwrap();
    let x = rnd(&[3, 2], 11);
    assert_eq!(
        mlp.forward(&x).unwrap().to_vec(),
        mlp2.forward(&x).unwrap().to_vec()
    );
}

// ------------------------------------------------------------------ AdamW

/// Textbook AdamW on one scalar, written independently of the optimiser's arrangement.
struct RefAdamW {
    m: f64,
    v: f64,
    t: i32,
}

impl RefAdamW {
    fn step(&mut self, p: f64, g: f64, lr: f64, c: &AdamWConfig) -> f64 {
        self.t += 1;
        let p = p - lr * c.weight_decay * p;
        self.m = c.beta1 * self.m + (1.0 - c.beta1) * g;
        self.v = c.beta2 * self.v + (1.0 - c.beta2) * g * g;
        let m_hat = self.m / (1.0 - c.beta1.powi(self.t));
        let v_hat = self.v / (1.0 - c.beta2.powi(self.t));
        p - lr * m_hat / (v_hat.sqrt() + c.eps)
    }
}

fn two_param_store(seed: u64) -> ParamStore<f64> {
    let mut rng = Rng::new(seed);
    let mut s = ParamStore::new();
    s.insert(
        "",
        vec![
            ("a".to_string(), init::normal(&[2, 3], 1.0, &mut rng)),
            ("b".to_string(), init::normal(&[4], 1.0, &mut rng)),
        ],
    )
    .unwrap();
    s
}

#[test]
fn adamw_matches_scalar_reference_over_several_steps() {
    let cfg = AdamWConfig {
        lr: 1e-2,
        beta1: 0.8,
        beta2: 0.95,
        eps: 1e-6,
        weight_decay: 0.1,
    };
    let s = two_param_store(21);
    let mut opt = AdamW::new(&s, cfg).unwrap();
    let mut p_ref: Vec<f64> = s.tensors().iter().flat_map(|t| t.to_vec()).collect();
    let mut refs: Vec<RefAdamW> = (0..p_ref.len())
        .map(|_| RefAdamW {
            m: 0.0,
            v: 0.0,
            t: 0,
        })
        .collect();
    let mut grng = Rng::new(22);
    for step in 0..6 {
        let lr = 1e-2 * (1.0 + step as f64);
        let mut gs = Vec::new();
        for t in s.tensors() {
            let g = Tensor::<f64>::randn(t.shape(), 0.0, 1.0 + step as f64, &mut grng);
            gs.extend(g.to_vec());
            t.set_grad(Some(g));
        }
        opt.step(lr).unwrap();
        for i in 0..p_ref.len() {
            p_ref[i] = refs[i].step(p_ref[i], gs[i], lr, &cfg);
        }
        let got: Vec<f64> = s.tensors().iter().flat_map(|t| t.to_vec()).collect();
        for (i, (a, b)) in got.iter().zip(&p_ref).enumerate() {
            assert!(close(*a, *b, 1e-12), "step {step} element {i}: {a} vs {b}");
        }
    }
    assert_eq!(opt.step_count(), 6);
    // Per-parameter counts and moment sizes are part of the saved state.
    let st = opt.state();
    assert_eq!(st.params[0].step, 6);
    assert_eq!(st.params[0].m.len(), 6);
}

#[test]
fn adamw_first_step_is_signed_lr() {
    // With m_hat = g and v_hat = g^2 the first update is lr * g / (|g| + eps).
    let cfg = AdamWConfig {
        weight_decay: 0.0,
        eps: 0.0,
        ..AdamWConfig::default()
    };
    let s = two_param_store(31);
    let before: Vec<f64> = s.get("a").unwrap().to_vec();
    let g = Tensor::from_vec(vec![3.0, -0.5, 1e-3, -7.0, 2.0, 0.25], &[2, 3]).unwrap();
    s.get("a").unwrap().set_grad(Some(g.clone()));
    let mut opt = AdamW::new(&s, cfg).unwrap();
    opt.step(0.1).unwrap();
    let after = s.get("a").unwrap().to_vec();
    for ((b, a), g) in before.iter().zip(&after).zip(g.to_vec()) {
        assert!(close(b - a, 0.1 * g.signum(), 1e-12), "{b} {a} {g}");
    }
}

#[test]
fn adamw_weight_decay_is_decoupled_and_missing_grads_are_skipped() {
    let cfg = AdamWConfig {
        lr: 0.05,
        weight_decay: 0.2,
        ..AdamWConfig::default()
    };
    let s = two_param_store(41);
    let a0 = s.get("a").unwrap().to_vec();
    let b0 = s.get("b").unwrap().to_vec();
    let mut opt = AdamW::new(&s, cfg).unwrap();
    for k in 1..=3 {
        // Zero gradient for `a`: only the decay acts, by exactly (1 - lr*wd) per step.
        s.get("a").unwrap().set_grad(Some(Tensor::zeros(&[2, 3])));
        opt.step_base().unwrap();
        let a = s.get("a").unwrap().to_vec();
        for (x, x0) in a.iter().zip(&a0) {
            assert!(close(*x, x0 * (1.0 - 0.05 * 0.2f64).powi(k), 1e-14));
        }
        // `b` has no gradient: untouched, no decay, its step count stays 0.
        assert_eq!(s.get("b").unwrap().to_vec(), b0);
    }
    let st = opt.state();
    assert_eq!((st.step, st.params[0].step, st.params[1].step), (3, 3, 0));
    // Without decay a zero gradient leaves the weight where it is.
    let s2 = two_param_store(41);
    let mut opt2 = AdamW::new(
        &s2,
        AdamWConfig {
            weight_decay: 0.0,
            ..cfg
        },
    )
    .unwrap();
    s2.get("a").unwrap().set_grad(Some(Tensor::zeros(&[2, 3])));
    opt2.step(0.05).unwrap();
    assert_eq!(s2.get("a").unwrap().to_vec(), a0);
}

#[test]
fn adamw_rejects_bad_input() {
    let s = two_param_store(51);
    assert!(AdamW::new(
        &s,
        AdamWConfig {
            beta1: 1.0,
            ..AdamWConfig::default()
        }
    )
    .is_err());
    let mut opt = AdamW::new(&s, AdamWConfig::default()).unwrap();
    assert!(opt.step(f64::NAN).is_err());
    let a0 = s.get("a").unwrap().to_vec();
    s.get("a").unwrap().set_grad(Some(Tensor::zeros(&[2, 3])));
    s.get("b").unwrap().set_grad(Some(Tensor::zeros(&[3])));
    let e = opt.step(0.1).unwrap_err();
    assert!(e.to_string().contains("`b`"), "{e}");
    assert_eq!(s.get("a").unwrap().to_vec(), a0, "no partial update");
    assert_eq!(opt.step_count(), 0);
}

/// Runs `n` AdamW steps on f32 parameters with gradients drawn from `grng`.
fn run_f32(s: &ParamStore<f32>, opt: &mut AdamW<f32>, grng: &mut Rng, n: usize) {
    for _ in 0..n {
        for t in s.tensors() {
            t.set_grad(Some(Tensor::randn(t.shape(), 0.0, 1.0, grng)));
        }
        let lr = 1e-3 * (1.0 + opt.step_count() as f64);
        opt.step(lr).unwrap();
    }
}

#[test]
fn adamw_state_restore_continues_bit_identically() {
    let make = |seed| {
        let mut rng = Rng::new(seed);
        let mut s = ParamStore::<f32>::new();
        // One parameter large enough for the parallel path.
        s.insert(
            "big",
            vec![("w".into(), init::normal(&[300, 300], 0.1, &mut rng))],
        )
        .unwrap();
        s.insert("small", Linear::new(5, 3, true, &mut rng).parameters())
            .unwrap();
        s
    };
    let cfg = AdamWConfig::default();
    let s = make(61);
    let mut opt = AdamW::new(&s, cfg).unwrap();
    let mut grng = Rng::new(62);
    run_f32(&s, &mut opt, &mut grng, 3);
    let (params, state, gstate) = (s.state_dict(), opt.state(), grng.state());
    run_f32(&s, &mut opt, &mut grng, 4);

    let s2 = make(999);
    s2.load_state_dict(&params).unwrap();
    let mut opt2 = AdamW::new(&s2, cfg).unwrap();
    opt2.load_state(state.clone()).unwrap();
    let mut grng2 = Rng::from_state(gstate);
    run_f32(&s2, &mut opt2, &mut grng2, 4);
    assert_eq!(opt2.step_count(), 7);
    for ((n, _, a), (_, _, b)) in s.state_dict().iter().zip(s2.state_dict()) {
        let same = a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "{n} differs after restore");
    }
    assert_eq!(opt.state(), opt2.state());

    // Mismatched states are refused.
    let mut bad = state.clone();
    bad.params[1].m.pop();
    let e = opt2.load_state(bad).unwrap_err();
    assert!(e.to_string().contains("small.weight"), "{e}");
    let mut bad = state.clone();
    bad.params[2].name = "small.other".into();
    assert!(opt2.load_state(bad).is_err());
    let mut bad = state;
    bad.params.pop();
    assert!(opt2.load_state(bad).is_err());
}

#[test]
fn adamw_parallel_path_matches_elementwise_f32_formula() {
    let mut rng = Rng::new(71);
    let mut s = ParamStore::<f32>::new();
    s.insert(
        "",
        vec![("w".into(), init::normal(&[100_003], 1.0, &mut rng))],
    )
    .unwrap();
    let cfg = AdamWConfig::default();
    let mut opt = AdamW::new(&s, cfg).unwrap();
    let w = s.get("w").unwrap().clone();
    let mut p = w.to_vec();
    let (mut m, mut v) = (vec![0f32; p.len()], vec![0f32; p.len()]);
    for t in 1..=3 {
        let g = Tensor::<f32>::randn(&[100_003], 0.0, 1.0, &mut rng);
        let lr = 0.01;
        w.set_grad(Some(g.clone()));
        opt.step(lr).unwrap();
        // Same arithmetic in the same order, one element at a time.
        let bc1 = 1.0 - cfg.beta1.powf(t as f64);
        let bc2 = 1.0 - cfg.beta2.powf(t as f64);
        let decay = (1.0 - lr * cfg.weight_decay) as f32;
        let (b1, b2) = (cfg.beta1 as f32, cfg.beta2 as f32);
        let (ob1, ob2) = ((1.0 - cfg.beta1) as f32, (1.0 - cfg.beta2) as f32);
        let inv = (1.0 / bc2.sqrt()) as f32;
        let step = (lr / bc1) as f32;
        for (i, g) in g.to_vec().into_iter().enumerate() {
            p[i] *= decay;
            m[i] = b1 * m[i] + ob1 * g;
            v[i] = b2 * v[i] + ob2 * g * g;
            p[i] -= step * m[i] / (v[i].sqrt() * inv + cfg.eps as f32);
        }
        let got = w.to_vec();
        assert!(got.iter().zip(&p).all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}

// ------------------------------------------------------------------ clipping

#[test]
fn clip_grad_norm_scales_to_max_and_reports_original() {
    let s = two_param_store(81);
    let ga = Tensor::<f64>::full(&[2, 3], 2.0);
    let gb = Tensor::<f64>::full(&[4], -1.0);
    let norm = (6.0f64 * 4.0 + 4.0).sqrt();
    s.get("a").unwrap().set_grad(Some(ga));
    s.get("b").unwrap().set_grad(Some(gb));
    let before = clip_grad_norm(&s, 1.5).unwrap();
    assert!(close(before, norm, 1e-15));
    assert!(close(s.global_grad_norm().unwrap(), 1.5, 1e-6));
    // The direction is kept.
    let a = s.get("a").unwrap().grad().unwrap().get(&[0, 0]).unwrap();
    let b = s.get("b").unwrap().grad().unwrap().get(&[0]).unwrap();
    assert!(close(a / b, -2.0, 1e-14));
    // Inside the ball nothing changes.
    let before_vals = s.get("a").unwrap().grad().unwrap().to_vec();
    let n = clip_grad_norm(&s, 10.0).unwrap();
    assert!(close(n, 1.5, 1e-6));
    assert_eq!(s.get("a").unwrap().grad().unwrap().to_vec(), before_vals);
    // Parameters without a gradient are fine; errors for bad inputs.
    s.get("b").unwrap().zero_grad();
    assert!(clip_grad_norm(&s, 0.0).is_err());
    s.get("a").unwrap().set_grad(Some(
        Tensor::from_vec(vec![1.0, f64::NAN, 0.0, 0.0, 0.0, 0.0], &[2, 3]).unwrap(),
    ));
    let e = clip_grad_norm(&s, 1.0).unwrap_err();
    assert!(matches!(e, Error::NonFinite { .. }), "{e:?}");
    assert!(e.to_string().contains("gradient"), "{e}");
    s.get("a")
        .unwrap()
        .set_grad(Some(Tensor::full(&[2, 3], f64::INFINITY)));
    assert!(clip_grad_norm(&s, 1.0).is_err());
}

#[test]
fn clip_grad_norm_handles_gradients_that_share_a_buffer() {
    // d(a+b)/da and d(a+b)/db may be one tensor; each must be scaled exactly once.
    let mut s = ParamStore::<f64>::new();
    let a = init::zeros(&[3]);
    let b = init::zeros(&[3]);
    s.insert("", vec![("a".into(), a.clone()), ("b".into(), b.clone())])
        .unwrap();
    a.add(&b)
        .unwrap()
        .mul_scalar(4.0)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let n = clip_grad_norm(&s, 1.0).unwrap();
    assert!(close(n, (6.0f64 * 16.0).sqrt(), 1e-15));
    assert!(close(s.global_grad_norm().unwrap(), 1.0, 1e-6));
    assert_eq!(a.grad().unwrap().to_vec(), b.grad().unwrap().to_vec());
}

// ------------------------------------------------------------------ schedule

#[test]
fn schedule_values_at_boundaries() {
    let s = LrSchedule::warmup_cosine(1e-5, 1e-3, 1e-4, 10, 110).unwrap();
    assert_eq!(s.lr_at(0), 1e-5);
    assert!(close(s.lr_at(5), 1e-5 + 0.5 * (1e-3 - 1e-5), 1e-15));
    assert_eq!(s.lr_at(10), 1e-3);
    assert!(close(s.lr_at(60), 0.5 * (1e-3 + 1e-4), 1e-15));
    assert!(close(
        s.lr_at(109),
        1e-4 + 0.9e-3 * 0.5 * (1.0 + (0.99 * std::f64::consts::PI).cos()),
        1e-15
    ));
    assert_eq!(s.lr_at(110), 1e-4);
    assert_eq!(s.lr_at(10_000), 1e-4);
    // Monotone: up during warm-up, down during decay.
    for k in 0..10 {
        assert!(s.lr_at(k) < s.lr_at(k + 1));
    }
    for k in 10..110 {
        assert!(s.lr_at(k) > s.lr_at(k + 1));
    }

    // No warm-up: the first step uses the peak.
    let s = LrSchedule::warmup_cosine(0.0, 2e-3, 0.0, 0, 4).unwrap();
    assert_eq!(s.lr_at(0), 2e-3);
    assert!(close(s.lr_at(2), 1e-3, 1e-15));
    assert_eq!(s.lr_at(4), 0.0);
    // No decay phase.
    let s = LrSchedule::warmup_cosine(0.0, 1.0, 0.1, 4, 4).unwrap();
    assert_eq!(s.lr_at(2), 0.5);
    assert_eq!(s.lr_at(4), 0.1);
    let s = LrSchedule::warmup_cosine(0.0, 1.0, 0.1, 4, 2).unwrap();
    assert_eq!(s.lr_at(3), 0.75);
    assert_eq!(s.lr_at(4), 0.1);
    // Degenerate but valid.
    let s = LrSchedule::warmup_cosine(0.3, 0.3, 0.3, 0, 0).unwrap();
    assert_eq!(s.lr_at(0), 0.3);

    let c = LrSchedule::constant(3e-4).unwrap();
    assert_eq!((c.lr_at(0), c.lr_at(1 << 40)), (3e-4, 3e-4));
    assert!(LrSchedule::constant(-1.0).is_err());
    assert!(LrSchedule::warmup_cosine(0.0, f64::NAN, 0.0, 1, 2).is_err());
}

// ------------------------------------------------------------------ EMA

#[test]
fn ema_math_swap_and_state() {
    let s = two_param_store(91);
    let p0: Vec<f64> = s.tensors().iter().flat_map(|t| t.to_vec()).collect();
    let mut ema = Ema::new(&s);
    let mut shadow = p0.clone();
    let mut grng = Rng::new(92);
    for _ in 0..3 {
        // Move the parameters, then average.
        for t in s.tensors() {
            let delta = Tensor::<f64>::randn(t.shape(), 0.0, 1.0, &mut grng).to_vec();
            t.update_data(|d| d.iter_mut().zip(&delta).for_each(|(x, dx)| *x += dx))
                .unwrap();
        }
        ema.update(&s, 0.9).unwrap();
        let p: Vec<f64> = s.tensors().iter().flat_map(|t| t.to_vec()).collect();
        for (sh, x) in shadow.iter_mut().zip(&p) {
            *sh = 0.9 * *sh + 0.1 * x;
        }
    }
    assert_eq!(ema.num_updates(), 3);
    let got: Vec<f64> = ["a", "b"]
        .iter()
        .flat_map(|n| ema.shadow(n).unwrap().to_vec())
        .collect();
    for (a, b) in got.iter().zip(&shadow) {
        assert!(close(*a, *b, 1e-14));
    }

    // swap twice is the identity; swap once exchanges.
    let train: Vec<f64> = s.tensors().iter().flat_map(|t| t.to_vec()).collect();
    ema.swap(&s).unwrap();
    let now: Vec<f64> = s.tensors().iter().flat_map(|t| t.to_vec()).collect();
    assert_eq!(now, got);
    assert_eq!(ema.shadow("a").unwrap().to_vec(), train[..6]);
    ema.swap(&s).unwrap();
    let back: Vec<f64> = s.tensors().iter().flat_map(|t| t.to_vec()).collect();
    assert_eq!(back, train);

    // State round trip, then copy_to.
    let st = ema.state();
    let mut ema2 = Ema::new(&s);
    ema2.load_state(st.clone()).unwrap();
    assert_eq!(ema2.state(), st);
    ema2.copy_to(&s).unwrap();
    let now: Vec<f64> = s.tensors().iter().flat_map(|t| t.to_vec()).collect();
    assert_eq!(now, got);

    // Edge decays and mismatches.
    ema2.update(&s, 1.0).unwrap();
    assert_eq!(ema2.state().shadow, st.shadow);
    assert!(ema2.update(&s, 1.5).is_err());
    let other = {
        let mut o = ParamStore::<f64>::new();
        o.insert("", vec![("a".into(), init::zeros(&[2, 3]))])
            .unwrap();
        o
    };
    assert!(ema2.update(&other, 0.5).is_err());
    assert!(ema2.copy_to(&other).is_err());
    let mut bad = st.clone();
    bad.shadow[1].1 = vec![2, 2];
    let e = ema2.load_state(bad).unwrap_err();
    assert!(e.to_string().contains("`b`"), "{e}");
}

// ------------------------------------------------------------------ end to end

#[test]
fn mlp_fits_a_small_regression_with_adamw() {
    let mut rng = Rng::new(101);
    let mlp = Mlp::<f32>::with_hidden(2, 32, &mut rng);
    let mut store = ParamStore::new();
    store.insert("mlp", mlp.parameters()).unwrap();
    let x = Tensor::<f32>::rand(&[64, 2], -1.5, 1.5, &mut rng);
    let xv = x.to_vec();
    let y: Vec<f32> = xv
        .chunks(2)
        .flat_map(|r| [(2.0 * r[0]).sin() * r[1].cos(), r[0] * r[1]])
        .collect();
    let y = Tensor::from_vec(y, &[64, 2]).unwrap();
    let loss_of = || {
        mlp.forward(&x)
            .unwrap()
            .sub(&y)
            .unwrap()
            .square()
            .unwrap()
            .mean_all()
    };
    let initial = loss_of().unwrap().item().unwrap();
    let sched = LrSchedule::warmup_cosine(0.0, 1e-2, 1e-3, 20, 400).unwrap();
    let mut opt = AdamW::new(
        &store,
        AdamWConfig {
            weight_decay: 1e-4,
            ..AdamWConfig::default()
        },
    )
    .unwrap();
    for step in 0..400 {
        store.zero_grad();
        loss_of().unwrap().backward().unwrap();
        clip_grad_norm(&store, 5.0).unwrap();
        opt.step(sched.lr_at(step)).unwrap();
    }
    let fin = loss_of().unwrap().item().unwrap();
    assert!(fin.is_finite());
    assert!(initial / fin > 10.0, "loss {initial} -> {fin}");
    eprintln!("regression loss {initial:.4} -> {fin:.6}");
}
