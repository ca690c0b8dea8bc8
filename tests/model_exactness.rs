//! Exactness of the flow: inversion, log-determinant and Jacobian structure.

mod common;

use tarflow::audit::{audit, jacobian, log_abs_det, AuditOptions};
use tarflow::model::{Guidance, SampleOptions, Sampler, TarFlow, TarFlowConfig};
use tarflow::{Rng, Tensor};

fn small_config(classes: usize) -> TarFlowConfig {
    TarFlowConfig {
        channels: 1,
        image_size: 8,
        patch_size: 2,
        width: 128,
        blocks: 4,
        layers_per_block: 1,
        head_dim: 64,
        mlp_ratio: 2,
        num_classes: classes,
        noise_sigma: 0.1,
        alpha_clip: None,
        additive: false,
    }
}

fn model<E: tarflow::Element>(cfg: TarFlowConfig, seed: u64) -> TarFlow<E> {
    model_with(cfg, seed, 0.05)
}

/// A random flow; sampling tests use a small `std` so the inverse of N(0, I) noise stays finite.
fn model_with<E: tarflow::Element>(cfg: TarFlowConfig, seed: u64, std: f64) -> TarFlow<E> {
    let m = TarFlow::<E>::new(cfg, seed).unwrap();
    m.randomize_output_projections(std, seed + 1).unwrap();
    m
}

fn bits(t: &Tensor<f64>) -> Vec<u64> {
    t.to_vec().iter().map(|v| v.to_bits()).collect()
}

fn max_abs_diff<E: tarflow::Element>(a: &Tensor<E>, b: &Tensor<E>) -> f64 {
    common::worst(
        a.to_f64_vec()
            .iter()
            .zip(b.to_f64_vec())
            .map(|(x, y)| (x - y).abs()),
    )
}

#[test]
fn roundtrip_mnist_config_f64_and_f32() {
    let cfg = TarFlowConfig::preset("mnist").unwrap();
    let labels = vec![Some(3), Some(7)];
    let m64 = model::<f64>(cfg.clone(), 1);
    let x = Tensor::<f64>::rand(&[2, 1, 28, 28], -1.0, 1.0, &mut Rng::new(2));
    let out = tarflow::with_no_grad(|| m64.forward(&x, Some(&labels))).unwrap();
    // A non-trivial flow: the log-det is far from zero.
    assert!(out.logdet.to_f64_vec().iter().all(|v| v.abs() > 1.0));
    let back = Sampler::new(&m64)
        .unwrap()
        .reverse_tokens(&out.z, &labels, Guidance::None)
        .unwrap();
    let err = max_abs_diff(&back, &m64.to_tokens(&x).unwrap());
    assert!(err <= 1e-12, "f64 roundtrip error {err}");

    let m32: TarFlow<f32> = m64.cast().unwrap();
    let x32 = x.cast::<f32>();
    let out = tarflow::with_no_grad(|| m32.forward(&x32, Some(&labels))).unwrap();
    let back = Sampler::new(&m32)
        .unwrap()
        .reverse_tokens(&out.z, &labels, Guidance::None)
        .unwrap();
    let err = max_abs_diff(&back, &m32.to_tokens(&x32).unwrap());
    assert!(err <= 1e-4, "f32 roundtrip error {err}");
}

#[test]
fn model_logdet_matches_full_jacobian() {
    for classes in [0, 3] {
        let m = model::<f64>(small_config(classes), 5);
        let labels: Vec<Option<usize>> = if classes > 0 {
            vec![Some(1)]
        } else {
            vec![None]
        };
        let lab = (classes > 0).then_some(labels.as_slice());
        let x = Tensor::<f64>::rand(&[1, 1, 8, 8], -1.0, 1.0, &mut Rng::new(9));
        let jac = jacobian(|v| m.forward(v, lab).map(|o| o.z), &x).unwrap();
        let brute = log_abs_det(&jac, 64);
        let ld = tarflow::with_no_grad(|| m.forward(&x, lab))
            .unwrap()
            .logdet
            .item()
            .unwrap();
        let rel = (brute - ld).abs() / ld.abs().max(1.0);
        assert!(
            rel <= 1e-10,
            "log|det J| {brute} vs logdet {ld} (rel {rel})"
        );
        assert!(ld.abs() > 0.1, "flow should be non-trivial, logdet {ld}");
    }
}

#[test]
fn block_jacobian_is_triangular_and_logdet_matches() {
    let m = model::<f64>(small_config(0), 11);
    let report = audit(
        &m,
        &AuditOptions {
            samples: 1,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(report.passed(), "{}", report.table());
    // The brute-force side of the comparison, on a matrix with a known determinant.
    let a = [2.0, 1.0, 0.0, 0.0, 3.0, 1.0, 1.0, 0.0, 4.0];
    let det: f64 = 2.0 * (3.0 * 4.0 - 0.0) - 1.0 * (0.0 * 4.0 - 1.0 * 1.0);
    assert!((log_abs_det(&a, 3) - det.abs().ln()).abs() < 1e-14);
}

/// Every check the audit leaves out is listed with why: the whole-model Jacobian above
/// `full_jacobian_max_dim`, the block checks on samples past the first, the tokens past the
/// window; an audit that makes every check lists none.
#[test]
fn audit_lists_the_checks_it_skipped_and_why() {
    let m = model::<f64>(small_config(0), 11);
    let opts = AuditOptions {
        samples: 2,
        full_jacobian_max_dim: 32,
        window: 3,
        ..Default::default()
    };
    let report = audit(&m, &opts).unwrap();
    assert!(report.passed(), "{}", report.table());
    let full = "model log-det vs log|det J| (full Jacobian)";
    assert!(
        report.checks.iter().all(|c| c.name != full),
        "{}",
        report.table()
    );
    let names: Vec<&str> = report.skipped.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(
        names,
        [
            full,
            "block checks on samples 1..",
            "block log-det on the other tokens"
        ]
    );
    // The reasons carry the numbers that decided them: 64 dimensions over a limit of 32,
    // 3 of 16 tokens.
    assert!(
        report.skipped[0].reason.contains("64 dimensions")
            && report.skipped[0].reason.contains("32")
    );
    assert!(report.skipped[2].reason.contains("first 3 of 16 tokens"));
    let table = report.table();
    let at = table.find("\nskipped:\n").expect("a skipped section");
    for k in &report.skipped {
        assert!(
            table[at..].contains(&format!("  {}: {}", k.name, k.reason)),
            "{table}"
        );
    }

    let everything = AuditOptions {
        samples: 1,
        window: 16,
        ..Default::default()
    };
    let report = audit(&m, &everything).unwrap();
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    assert!(report.checks.iter().any(|c| c.name == full));
    assert!(!report.table().contains("skipped"), "{}", report.table());
}

/// Output projections so large that the log-determinant overflows to NaN: every judged
/// quantity is then NaN, and the audit must fail and say where (it used to print "all checks
/// passed", because the worst errors were folded with `f64::max`, which drops NaN).
#[test]
fn audit_fails_on_a_model_with_nan_outputs() {
    let m = model_with::<f64>(small_config(0), 5, 1e30);
    let report = audit(
        &m,
        &AuditOptions {
            samples: 2,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(!report.passed(), "{}", report.table());
    let finite = &report.checks[0];
    assert!(!finite.passed, "{}", report.table());
    assert!(
        finite.detail.contains("non-finite in logdet") || finite.detail.contains("non-finite in z"),
        "{}",
        finite.detail
    );
    // Every check whose error is NaN fails, and says where the NaN was.
    for c in &report.checks {
        if c.value.is_nan() {
            assert!(!c.passed && !c.detail.is_empty(), "{}", report.table());
        }
    }
    assert!(
        report.checks.iter().filter(|c| c.value.is_nan()).count() >= 3,
        "{}",
        report.table()
    );
}

#[test]
fn cached_and_uncached_inverse_agree() {
    // std 0.01: with larger output projections the inverse of N(0, I) noise overflows, and two
    // infinities would compare as NaN rather than as agreement.
    let m = model_with::<f64>(small_config(3), 21, 0.01);
    let labels = vec![Some(0), None, Some(2)];
    let z = Tensor::<f64>::randn(&[3, 16, 4], 0.0, 1.0, &mut Rng::new(4));
    let cached = Sampler::new(&m)
        .unwrap()
        .reverse_tokens(&z, &labels, Guidance::None)
        .unwrap();
    let reference = m
        .to_tokens(&m.reverse_reference(&z, Some(&labels)).unwrap())
        .unwrap();
    assert!(cached.all_finite() && reference.all_finite());
    let err = max_abs_diff(&cached, &reference);
    assert!(err <= 1e-12, "cached vs reference {err}");
}

/// The composed engine (tensor ops, the path GPU models take) against the host engine, on
/// the CPU in f64: every guidance mode, conditional and not, with and without the soft clip.
#[test]
fn composed_and_host_samplers_agree() {
    let cases: [(usize, Option<f64>, Guidance); 5] = [
        (3, None, Guidance::None),
        (
            3,
            Some(1.5),
            Guidance::ClassifierFree {
                weight: 1.5,
                anneal: true,
            },
        ),
        (
            3,
            None,
            Guidance::Temperature {
                weight: 0.7,
                tau: 0.6,
                anneal: false,
            },
        ),
        (
            0,
            None,
            Guidance::Temperature {
                weight: 1.2,
                tau: 1.4,
                anneal: true,
            },
        ),
        (
            3,
            Some(2.0),
            Guidance::ClassifierFreeTemperature {
                weight: 1.1,
                tau: 0.8,
                anneal: false,
            },
        ),
    ];
    for (classes, clip, guidance) in cases {
        let mut cfg = small_config(classes);
        cfg.alpha_clip = clip;
        let m = model_with::<f64>(cfg, 51, 0.02);
        let labels: Vec<Option<usize>> = if classes > 0 {
            vec![Some(2), None, Some(0)]
        } else {
            vec![]
        };
        let opts = SampleOptions {
            guidance,
            ..Default::default()
        };
        let host = Sampler::new(&m).unwrap();
        let composed = Sampler::composed(&m).unwrap();
        assert_eq!(composed.device(), tarflow::Device::Cpu);
        let (a, ra) = host.sample(3, &labels, &mut Rng::new(5), &opts).unwrap();
        let (b, rb) = composed
            .sample(3, &labels, &mut Rng::new(5), &opts)
            .unwrap();
        assert!(a.all_finite() && ra == rb, "{ra:?} {rb:?}");
        let err = max_abs_diff(&a, &b);
        assert!(
            err <= 1e-12,
            "{guidance:?}, clip {clip:?}: host vs composed {err}"
        );
    }
}

#[test]
fn zero_guidance_equals_plain_sampling() {
    let m = model_with::<f64>(small_config(3), 31, 0.01);
    let s = Sampler::new(&m).unwrap();
    let labels = vec![Some(0), Some(1)];
    let (plain, report) = s
        .sample(2, &labels, &mut Rng::new(1), &SampleOptions::default())
        .unwrap();
    assert!(plain.all_finite() && report.redrawn == 0, "{report:?}");
    for g in [
        Guidance::ClassifierFree {
            weight: 0.0,
            anneal: false,
        },
        Guidance::ClassifierFree {
            weight: 0.0,
            anneal: true,
        },
        Guidance::Temperature {
            weight: 0.0,
            tau: 0.5,
            anneal: false,
        },
    ] {
        let opts = SampleOptions {
            guidance: g,
            ..Default::default()
        };
        let guided = s.sample(2, &labels, &mut Rng::new(1), &opts).unwrap().0;
        assert_eq!(bits(&plain), bits(&guided), "{g:?}");
    }
    // And a non-zero weight changes the samples.
    let opts = SampleOptions {
        guidance: Guidance::ClassifierFree {
            weight: 2.0,
            anneal: false,
        },
        ..Default::default()
    };
    let guided = s.sample(2, &labels, &mut Rng::new(1), &opts).unwrap().0;
    assert!(max_abs_diff(&plain, &guided) > 1e-6);
}

#[test]
fn denoise_moves_along_the_score() {
    let m = model::<f64>(small_config(0), 41);
    let x = Tensor::<f64>::rand(&[2, 1, 8, 8], -0.5, 0.5, &mut Rng::new(3));
    let sigma = 0.1;
    let y = m.denoise(&x, None, sigma).unwrap();
    // Compare with a finite-difference score of log p on one coordinate.
    let logp = |v: &Tensor<f64>| {
        let o = tarflow::with_no_grad(|| m.forward(v, None)).unwrap();
        let z2 =
            o.z.narrow(0, 0, 1)
                .unwrap()
                .square()
                .unwrap()
                .sum_all()
                .unwrap()
                .item()
                .unwrap();
        -0.5 * z2 + o.logdet.to_f64_vec()[0]
    };
    let h = 1e-6;
    let mut xv = x.to_vec();
    xv[5] += h;
    let up = logp(&Tensor::from_vec(xv.clone(), &[2, 1, 8, 8]).unwrap());
    xv[5] -= 2.0 * h;
    let down = logp(&Tensor::from_vec(xv, &[2, 1, 8, 8]).unwrap());
    let score = (up - down) / (2.0 * h);
    let moved = (y.to_vec()[5] - x.to_vec()[5]) / (sigma * sigma);
    assert!(
        (score - moved).abs() < 1e-5 * score.abs().max(1.0),
        "score {score} vs {moved}"
    );
}

#[test]
fn bad_inputs_are_errors() {
    let m = model::<f32>(small_config(3), 1);
    let x = Tensor::<f32>::zeros(&[1, 1, 9, 9]);
    let e = m.forward(&x, Some(&[Some(0)])).err().unwrap().to_string();
    assert!(e.contains("expected images"), "{e}");
    let x = Tensor::<f32>::zeros(&[1, 1, 8, 8]);
    assert!(m.forward(&x, Some(&[Some(5)])).is_err());
    let s = Sampler::new(&m).unwrap();
    assert!(s
        .sample(1, &[Some(9)], &mut Rng::new(0), &SampleOptions::default())
        .is_err());
}

#[test]
fn checkpoint_roundtrip_and_damage() {
    use tarflow::model::{load_checkpoint, save_checkpoint};
    let dir = common::TempDir::new("ck");
    let path = dir.join("m.safetensors");
    let m = model::<f32>(small_config(3), 3);
    save_checkpoint(&path, &m, &[("note".into(), "x".into())]).unwrap();
    let ck = load_checkpoint(&path).unwrap();
    assert_eq!(ck.config, m.config);
    assert_eq!(ck.metadata["note"], "x");
    let back: TarFlow<f32> = ck.model().unwrap();
    for ((na, a), (nb, b)) in m.parameters().iter().zip(back.parameters()) {
        assert_eq!(na, &nb);
        assert_eq!(a.to_vec(), b.to_vec(), "{na}");
    }
    // Truncated: an error naming the file, and a second save replaces it whole.
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    let e = load_checkpoint(&path).err().unwrap().to_string();
    assert!(e.contains("m.safetensors"), "{e}");
    save_checkpoint(&path, &m, &[]).unwrap();
    assert!(load_checkpoint(&path).is_ok());
    // A checkpoint of another shape does not load into this model.
    let other = model::<f32>(small_config(0), 3);
    let ck = tarflow::model::parse_checkpoint(
        &tarflow::model::checkpoint_bytes(&other, &[]).unwrap(),
        "other",
    )
    .unwrap();
    let e = m.load_parameters(&ck.tensors).err().unwrap().to_string();
    assert!(e.contains("class_embed"), "{e}");
}

/// Hand-damaged checkpoint headers: each is an error that names the file and what is wrong,
/// never a panic or an allocation sized by the header.
#[test]
fn checkpoint_header_damage_is_named() {
    use tarflow::model::{checkpoint_bytes, parse_checkpoint};
    let good = checkpoint_bytes(&model::<f32>(small_config(0), 3), &[]).unwrap();
    let n = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&good[8..8 + n]).unwrap();
    let data = good[8 + n..].to_vec();
    let assemble = |h: &serde_json::Value, data: &[u8]| {
        let h = serde_json::to_vec(h).unwrap();
        let mut b = (h.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(&h);
        b.extend_from_slice(data);
        b
    };
    let with_config = |cfg: &str| {
        let mut h = header.clone();
        h["__metadata__"]["tarflow.config"] = cfg.into();
        assemble(&h, &data)
    };
    let cfg = small_config(0).to_json();
    let mut cases: Vec<(&str, Vec<u8>, String)> = Vec::new();

    // Declared header lengths: beyond any limit, and beyond the file.
    let mut b = good.clone();
    b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    cases.push(("huge header length", b, "exceeds the 100 MB limit".into()));
    let mut b = good.clone();
    b[..8].copy_from_slice(&(good.len() as u64).to_le_bytes());
    cases.push(("header past the end", b, "runs past the end".into()));
    // Truncated data: the tensor whose bytes are cut off is named.
    cases.push((
        "truncated",
        good[..good.len() - 100].to_vec(),
        "(truncated file?)".into(),
    ));
    // A lone tensor whose offsets point beyond the file.
    let one = serde_json::json!({
        "__metadata__": header["__metadata__"],
        "blocks.0.pos_embed": {"dtype": "F32", "shape": [1 << 20], "data_offsets": [0, 4 << 20]}
    });
    cases.push((
        "offsets beyond the file",
        assemble(&one, &[0; 64]),
        "'blocks.0.pos_embed': data_offsets [0, 4194304] run past the 64 data bytes".into(),
    ));
    // Shape products that overflow, with and without the dtype size.
    for shape in [vec![1u64 << 32, 1 << 32], vec![1 << 62]] {
        let h = serde_json::json!({
            "__metadata__": header["__metadata__"],
            "blocks.0.pos_embed": {"dtype": "F32", "shape": shape, "data_offsets": [0, 64]}
        });
        cases.push((
            "shape overflow",
            assemble(&h, &[0; 64]),
            "'blocks.0.pos_embed': shape".to_string(),
        ));
    }
    // An empty tensor whose other dimensions would overflow its strides.
    let h = serde_json::json!({
        "__metadata__": header["__metadata__"],
        "blocks.0.pos_embed": {"dtype": "F32", "shape": [0, 1u64 << 40, 1u64 << 40], "data_offsets": [0, 0]}
    });
    cases.push((
        "empty tensor, huge dims",
        assemble(&h, &[]),
        "too large to index".into(),
    ));
    // Wrong config JSON.
    cases.push((
        "config not JSON",
        with_config("{\"channels\": 1"),
        "model config JSON".into(),
    ));
    cases.push((
        "config field of the wrong type",
        with_config(&cfg.replace("\"width\":128", "\"width\":\"wide\"")),
        "model config JSON".into(),
    ));
    cases.push((
        "invalid config",
        with_config(&cfg.replace("\"patch_size\":2", "\"patch_size\":3")),
        "not divisible".into(),
    ));
    cases.push((
        "config too large to index",
        with_config(&cfg.replace("\"blocks\":4", "\"blocks\":18446744073709551615")),
        "too many parameters".into(),
    ));
    cases.push((
        "config of a far larger model",
        with_config(&cfg.replace("\"blocks\":4", "\"blocks\":100")),
        "missing tensor 'blocks.4.proj_in.weight'".into(),
    ));
    cases.push((
        "config of a model past the machine's memory",
        with_config(&cfg.replace("\"blocks\":4", "\"blocks\":1000000000")),
        "needs at least".into(),
    ));
    cases.push((
        "config of another width",
        with_config(&cfg.replace("\"width\":128", "\"width\":192")),
        "'blocks.0.proj_in.weight' has shape [128, 4], the config needs [192, 4]".into(),
    ));
    let mut h = header.clone();
    h["__metadata__"]
        .as_object_mut()
        .unwrap()
        .remove("tarflow.config");
    cases.push((
        "no config",
        assemble(&h, &data),
        "not a tarflow checkpoint".into(),
    ));

    assert!(parse_checkpoint(&assemble(&header, &data), "ok").is_ok());
    for (label, bytes, want) in cases {
        let e = match parse_checkpoint(&bytes, "damaged.safetensors") {
            Ok(_) => panic!("{label}: parsed"),
            Err(e) => e.to_string(),
        };
        assert!(
            e.starts_with("damaged.safetensors: ") && e.contains(&want),
            "{label}: {e}"
        );
    }
}
