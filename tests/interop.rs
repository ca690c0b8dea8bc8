//! Checkpoints of the official TarFlow code (apple/ml-tarflow): the fixture in
//! tests/fixtures/ml-tarflow was made once by scripts/ml_tarflow/make_fixture.py with the
//! official model code; here our model, imported from the same weights, must give the
//! numbers the official code printed.
//!
//! Tolerances (largest absolute difference over all values of a case):
//! - f64: 1e-9. Both sides compute in float64 and differ only in the order of sums, which
//!   leaves ~1e-14; anything above 1e-9 is a different function (a wrong convention).
//! - f32: `10 x` the official code's own float32 error on that case (its float32 result
//!   against its float64 one, 3e-7 .. 7e-6 here) plus 1e-6: our f32 may round differently
//!   from PyTorch's, but not by more than an order of magnitude more.

use std::collections::HashMap;

mod common;

use common::worst;

use tarflow::model::interop::{export_ml_tarflow, import_ml_tarflow};
use tarflow::model::{load_checkpoint, unpatchify, Guidance, Sampler, TarFlow};
use tarflow::tensorio::{parse_tensors_with_metadata, tensors_to_bytes};
use tarflow::{DType, Element, Tensor};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/ml-tarflow");

fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURE}/{name}.safetensors")).expect("fixture file")
}

struct Reference {
    t: HashMap<String, Tensor<f64>>,
    cases: serde_json::Value,
}

fn reference() -> Reference {
    let (t, meta) = parse_tensors_with_metadata::<f64>(&fixture_bytes("reference"), "reference")
        .expect("reference parses");
    let cases = serde_json::from_str(&meta["cases"]).expect("cases JSON");
    Reference { t, cases }
}

impl Reference {
    fn get(&self, name: &str) -> Vec<f64> {
        self.t
            .get(name)
            .unwrap_or_else(|| panic!("no '{name}' in the fixture"))
            .to_vec()
    }

    fn labels(&self, which: &str) -> Vec<Option<usize>> {
        match which {
            "none" => Vec::new(),
            // The official code's label -1 is the dropped label: the mean class embedding.
            _ => self
                .get(which)
                .iter()
                .map(|&v| (v >= 0.0).then_some(v as usize))
                .collect(),
        }
    }

    /// The official `reverse` options of a case, as our guidance.
    fn guidance(&self, case: &str, conditional: bool) -> Guidance {
        let c = &self.cases[case];
        let (w, tau, anneal) = (
            c["guidance"].as_f64().unwrap(),
            c["attn_temp"].as_f64().unwrap(),
            c["anneal"].as_bool().unwrap(),
        );
        if w == 0.0 {
            Guidance::None
        } else if tau == 1.0 && conditional {
            Guidance::ClassifierFree { weight: w, anneal }
        } else if conditional {
            // The official second branch: the null class with temperature tau.
            Guidance::ClassifierFreeTemperature {
                weight: w,
                tau,
                anneal,
            }
        } else {
            // On an unconditional model that is our attention-temperature guidance.
            Guidance::Temperature {
                weight: w,
                tau,
                anneal,
            }
        }
    }
}

fn tensor<E: Element>(v: &[f64], shape: &[usize]) -> tarflow::Result<Tensor<E>> {
    Tensor::from_vec(v.iter().map(|&x| E::from_f64(x)).collect(), shape)
}

/// Largest absolute difference, NaN when either side has a NaN.
fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    worst(a.iter().zip(b).map(|(x, y)| (x - y).abs()))
}

/// The tolerance of a case for element type `E` (see the file's comment).
fn tolerance<E: Element>(r: &Reference, name: &str) -> f64 {
    if E::DTYPE == DType::F64 {
        1e-9
    } else {
        10.0 * max_diff(&r.get(&format!("{name}_f32")), &r.get(name)) + 1e-6
    }
}

fn check<E: Element>(r: &Reference, name: &str, ours: &[f64], want: &[f64]) {
    let (d, tol) = (max_diff(ours, want), tolerance::<E>(r, name));
    eprintln!(
        "{name} ({}): max diff {d:.2e} (tolerance {tol:.2e})",
        E::DTYPE.name()
    );
    assert!(
        d <= tol,
        "{name} ({}): max |ours - official| = {d:e} > {tol:e}",
        E::DTYPE.name()
    );
}

fn forward_matches<E: Element>(model: &str, case: &str) {
    let r = reference();
    let m: TarFlow<E> = import_ml_tarflow(&fixture_bytes(model), model).unwrap();
    let x = tensor::<E>(&r.get("x"), &[2, 3, 8, 8]).unwrap();
    let labels = r.labels(r.cases[case]["labels"].as_str().unwrap());
    let labels = (!labels.is_empty()).then_some(labels.as_slice());
    let out = m.forward(&x, labels).unwrap();
    check::<E>(
        &r,
        &format!("{case}_z"),
        &out.z.to_f64_vec(),
        &r.get(&format!("{case}_z")),
    );
    // The official log-determinant is per dimension (a mean over tokens and values).
    let dims = (m.config.seq_len() * m.config.token_dim()) as f64;
    let official: Vec<f64> = r
        .get(&format!("{case}_logdet"))
        .iter()
        .map(|v| v * dims)
        .collect();
    let (d, tol) = (
        max_diff(&out.logdet.to_f64_vec(), &official),
        if E::DTYPE == DType::F64 { 1e-9 } else { 1e-4 },
    );
    eprintln!("{case} log-det ({}): max diff {d:.2e}", E::DTYPE.name());
    assert!(d <= tol, "{case} log-det: {d:e} > {tol:e}");
}

fn samples_match<E: Element>(model: &str, case: &str) {
    let r = reference();
    let m: TarFlow<E> = import_ml_tarflow(&fixture_bytes(model), model).unwrap();
    let conditional = m.config.num_classes > 0;
    let labels = r.labels(r.cases[case]["labels"].as_str().unwrap());
    let guidance = r.guidance(case, conditional);
    // The official reverse scales the noise by sqrt(var) first; our sampler draws with it.
    let mut z = r.get("noise");
    if let Some(var) = &m.prior_var {
        for row in z.chunks_mut(var.len()) {
            for (v, s) in row.iter_mut().zip(var) {
                *v *= s.sqrt();
            }
        }
    }
    let z = tensor::<E>(&z, &[2, 16, 12]).unwrap();
    let labels = if labels.is_empty() {
        vec![None; 2]
    } else {
        labels
    };
    for (engine, s) in [
        ("host", Sampler::new(&m).unwrap()),
        ("composed", Sampler::composed(&m).unwrap()),
    ] {
        let x = s.reverse_tokens(&z, &labels, guidance).unwrap();
        let img = unpatchify(&x, 3, 8, 2).unwrap().to_f64_vec();
        let want = r.get(case);
        let (d, tol) = (max_diff(&img, &want), tolerance::<E>(&r, case));
        eprintln!(
            "{case} ({engine}, {}): max diff {d:.2e} (tolerance {tol:.2e})",
            E::DTYPE.name()
        );
        assert!(
            d <= tol,
            "{case} ({engine} engine, {}): max |ours - official| = {d:e} > {tol:e}",
            E::DTYPE.name()
        );
    }
}

#[test]
fn affine_forward_matches_the_official_code() {
    for case in ["nvp_fwd", "nvp_fwd_null"] {
        forward_matches::<f64>("nvp", case);
        forward_matches::<f32>("nvp", case);
    }
}

#[test]
fn additive_forward_matches_the_official_code() {
    forward_matches::<f64>("additive", "add_fwd");
    forward_matches::<f32>("additive", "add_fwd");
}

#[test]
fn affine_samples_match_with_and_without_guidance() {
    for case in ["nvp_sample", "nvp_cfg", "nvp_cfg_anneal", "nvp_cfg_temp"] {
        samples_match::<f64>("nvp", case);
        samples_match::<f32>("nvp", case);
    }
}

#[test]
fn additive_samples_match_with_the_learned_prior_and_temperature_guidance() {
    let m: TarFlow<f64> = import_ml_tarflow(&fixture_bytes("additive"), "additive").unwrap();
    assert!(m.config.additive && m.prior_var.is_some());
    for case in ["add_sample", "add_temp"] {
        samples_match::<f64>("additive", case);
        samples_match::<f32>("additive", case);
    }
}

/// The official notebook's denoising step (`x - lr * grad(loss)` with `lr = B * pixels *
/// sigma^2`) is our Tweedie step `x + sigma^2 grad log p(x)`; ours also clips to [-1, 1].
#[test]
fn denoising_matches_the_official_step() {
    let r = reference();
    let m: TarFlow<f64> = import_ml_tarflow(&fixture_bytes("nvp"), "nvp").unwrap();
    let c = &r.cases["nvp_denoised"];
    let sigma = c["sigma"].as_f64().unwrap();
    assert_eq!(
        m.config.noise_sigma, sigma,
        "the converter records the sigma"
    );
    let x = tensor::<f64>(&r.get("nvp_sample"), &[2, 3, 8, 8]).unwrap();
    let labels = r.labels("y");
    let ours = m.denoise(&x, Some(&labels), sigma).unwrap().to_vec();
    let want: Vec<f64> = r
        .get("nvp_denoised")
        .iter()
        .map(|v| v.clamp(-1.0, 1.0))
        .collect();
    let d = max_diff(&ours, &want);
    eprintln!("denoised (f64): max diff {d:.2e}");
    assert!(d <= 1e-9, "denoised: {d:e}");
}

#[test]
fn export_then_import_gives_identical_tensors() {
    for name in ["nvp", "additive"] {
        let bytes = fixture_bytes(name);
        let m: TarFlow<f32> = import_ml_tarflow(&bytes, name).unwrap();
        let back: TarFlow<f32> = import_ml_tarflow(&export_ml_tarflow(&m).unwrap(), "x").unwrap();
        assert_eq!(back.config, m.config);
        assert_eq!(back.prior_var, m.prior_var);
        let (a, b) = (m.export_parameters(), back.export_parameters());
        assert_eq!(a.len(), b.len());
        for ((na, sa, va), (nb, sb, vb)) in a.iter().zip(&b) {
            assert_eq!((na, sa), (nb, sb));
            assert!(
                va.iter().zip(vb).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{na}"
            );
        }
        // The exported file holds exactly the fixture's tensors, bit for bit.
        let (orig, _) = parse_tensors_with_metadata::<f64>(&bytes, name).unwrap();
        let (out, _) =
            parse_tensors_with_metadata::<f64>(&export_ml_tarflow(&m).unwrap(), "x").unwrap();
        let mut keys: Vec<&String> = orig.keys().collect();
        keys.sort();
        let mut out_keys: Vec<&String> = out.keys().collect();
        out_keys.sort();
        assert_eq!(keys, out_keys);
        for k in keys {
            assert_eq!(orig[k].shape(), out[k].shape(), "{k}");
            assert_eq!(orig[k].to_vec(), out[k].to_vec(), "{k}");
        }
    }
}

/// Our own additive model (not imported): the inverse recovers the data, the
/// log-determinant is exactly 0, and the loss has gradients for `mu`'s projection.
#[test]
fn an_additive_model_inverts_and_trains() {
    let mut c = tarflow::model::TarFlowConfig::preset("tiny").unwrap();
    c.additive = true;
    let m = TarFlow::<f64>::new(c, 3).unwrap();
    m.randomize_output_projections(0.2, 4).unwrap();
    assert_eq!(m.blocks[0].proj_out.weight.shape(), &[16, 64]);
    let x = Tensor::<f64>::rand(&[2, 1, 28, 28], -1.0, 1.0, &mut tarflow::Rng::new(5));
    let labels = [Some(1), None];
    let out = m.forward(&x, Some(&labels)).unwrap();
    assert!(out.logdet.to_vec().iter().all(|&v| v == 0.0));
    let back = m.reverse_reference(&out.z, Some(&labels)).unwrap();
    let d = max_diff(&back.to_vec(), &x.to_vec());
    assert!(d < 1e-12, "reverse: {d:e}");
    let s = Sampler::new(&m).unwrap();
    let fast = s.reverse_tokens(&out.z, &labels, Guidance::None).unwrap();
    let d = max_diff(&m.to_images(&fast).unwrap().to_vec(), &x.to_vec());
    assert!(d < 1e-12, "sampler: {d:e}");
    m.loss(&out).unwrap().backward().unwrap();
    let g = m.blocks[1]
        .proj_out
        .weight
        .grad()
        .expect("gradient")
        .to_vec();
    assert!(g.iter().any(|&v| v != 0.0) && g.iter().all(|v| v.is_finite()));
}

/// The fixture with `edit` applied to its tensors.
fn edited(name: &str, edit: impl Fn(&mut HashMap<String, Tensor<f64>>)) -> Vec<u8> {
    let (mut t, meta) = parse_tensors_with_metadata::<f64>(&fixture_bytes(name), name).unwrap();
    edit(&mut t);
    let refs: Vec<(&str, &Tensor<f64>)> = t.iter().map(|(k, v)| (k.as_str(), v)).collect();
    tensors_to_bytes(&refs, DType::F32, Some(meta)).unwrap()
}

fn import_err(bytes: &[u8]) -> String {
    match import_ml_tarflow::<f32>(bytes, "theirs.safetensors") {
        Ok(_) => panic!("imported"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_misshaped_and_foreign_tensors_are_named() {
    let qkv = "blocks.1.attn_blocks.0.attention.qkv.weight";
    let e = import_err(&edited("nvp", |t| {
        t.remove(qkv);
    }));
    assert!(
        e.contains("theirs.safetensors")
            && e.contains(&format!("missing tensor '{qkv}'"))
            && e.contains("blocks.1.layers.0.attn.qkv.weight"),
        "{e}"
    );
    let e = import_err(&edited("nvp", |t| {
        t.insert("blocks.0.class_embed".into(), Tensor::zeros(&[3, 8]));
    }));
    assert!(
        e.contains("'blocks.0.class_embed' has shape [3, 8], the config needs [3, 1, 8]"),
        "{e}"
    );
    let e = import_err(&edited("nvp", |t| {
        t.insert("blocks.0.extra".into(), Tensor::zeros(&[2]));
    }));
    assert!(e.contains("blocks.0.extra"), "{e}");
    let e = import_err(&edited("additive", |t| {
        t.insert("var".into(), Tensor::full(&[16, 12], -1.0));
    }));
    assert!(e.contains("'var' element 0 is -1"), "{e}");
    // Not converted by convert.py: no config in the metadata.
    let t = HashMap::from([("x".to_string(), Tensor::<f64>::zeros(&[1]))]);
    let refs: Vec<(&str, &Tensor<f64>)> = t.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let e = import_err(&tensors_to_bytes(&refs, DType::F32, None).unwrap());
    assert!(
        e.contains("ml_tarflow.config") && e.contains("convert.py"),
        "{e}"
    );
}

#[test]
fn a_converted_file_loads_as_a_checkpoint_directly() {
    let ck = load_checkpoint(std::path::Path::new(&format!(
        "{FIXTURE}/additive.safetensors"
    )))
    .unwrap();
    let direct: TarFlow<f32> = ck.model().unwrap();
    let imported: TarFlow<f32> = import_ml_tarflow(&fixture_bytes("additive"), "a").unwrap();
    assert_eq!(direct.config, imported.config);
    assert_eq!(direct.prior_var, imported.prior_var);
    assert_eq!(direct.export_parameters(), imported.export_parameters());
}

#[cfg(feature = "cli")]
mod cli {
    use super::*;
    use common::cli::tarflow;
    use common::TempDir;

    #[test]
    fn import_sample_and_export_round_trip() {
        let dir = TempDir::new("interop");
        let p = |n: &str| dir.join(n).to_str().unwrap().to_string();
        let src = format!("{FIXTURE}/nvp.safetensors");
        let o = tarflow(&[
            "import",
            "--from",
            "ml-tarflow",
            &src,
            "--out",
            &p("ours.safetensors"),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let ours: TarFlow<f32> = load_checkpoint(&dir.join("ours.safetensors"))
            .unwrap()
            .model()
            .unwrap();
        let want: TarFlow<f32> = import_ml_tarflow(&fixture_bytes("nvp"), "nvp").unwrap();
        assert_eq!(ours.export_parameters(), want.export_parameters());
        let o = tarflow(&[
            "sample",
            "--checkpoint",
            &p("ours.safetensors"),
            "--num",
            "1",
            "--cfg",
            "1",
            "--out",
            &p("s.png"),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let o = tarflow(&[
            "export",
            &p("ours.safetensors"),
            "--to",
            "ml-tarflow",
            "--out",
            &p("theirs.safetensors"),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let back: TarFlow<f32> =
            import_ml_tarflow(&std::fs::read(dir.join("theirs.safetensors")).unwrap(), "t")
                .unwrap();
        assert_eq!(back.export_parameters(), want.export_parameters());
    }

    #[test]
    fn unknown_formats_are_refused() {
        let o = tarflow(&[
            "import",
            "--from",
            "jax-tarflow",
            "x.safetensors",
            "--out",
            "y",
        ]);
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && e.contains("unknown --from 'jax-tarflow'"),
            "{e}"
        );
        assert!(e.contains("ml-tarflow"), "{e}");
        let o = tarflow(&["export", "x.safetensors", "--to", "onnx", "--out", "y"]);
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && e.contains("unknown --to 'onnx'"),
            "{e}"
        );
    }
}
