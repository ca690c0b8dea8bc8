//! Checkpoints: one `.safetensors` file holding every weight (f32, names and layouts in
//! docs/checkpoint-format.md) and the model configuration as JSON in the metadata.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use crate::error::{Error, Result};
use crate::fsutil::{atomic_write, read_file};
use crate::tensor::{DType, Element, Tensor};
use crate::tensorio::{parse_tensors_with_metadata, tensors_to_bytes};

use super::config::TarFlowConfig;
use super::tarflow::TarFlow;

/// Metadata key holding the model configuration JSON.
pub const CONFIG_KEY: &str = "tarflow.config";
/// Metadata key holding the format version.
pub const VERSION_KEY: &str = "tarflow.format";
/// Format version written under [`VERSION_KEY`].
pub const FORMAT_VERSION: &str = "1";
/// Name of the optional `[N, D]` tensor holding the model's prior variance
/// ([`TarFlow::prior_var`]); absent for the unit prior.
pub const PRIOR_VAR_TENSOR: &str = "prior_var";

/// A checkpoint read from disk: the config, the weights, and any extra metadata.
pub struct Checkpoint {
    /// The validated model configuration from the metadata.
    pub config: TarFlowConfig,
    /// `(name, shape, values)` for every tensor in the file.
    pub tensors: Vec<(String, Vec<usize>, Vec<f64>)>,
    /// Every metadata entry of the file, including the config JSON (`tarflow.config`) and the
    /// format version (`tarflow.format`).
    pub metadata: HashMap<String, String>,
    /// The prior variance `[N * D]` when the file has a [`PRIOR_VAR_TENSOR`] (checked: `N x D`
    /// finite values `> 0`).
    pub prior_var: Option<Vec<f64>>,
}

impl Checkpoint {
    /// Builds the model described by the checkpoint, in element type `E`.
    pub fn model<E: Element>(&self) -> Result<TarFlow<E>> {
        let mut m = TarFlow::<E>::new(self.config.clone(), 0)?;
        m.load_parameters(&self.tensors)?;
        m.prior_var = self.prior_var.clone();
        Ok(m)
    }
}

/// Serialises a model (weights as f32) with `extra` metadata entries.
pub fn checkpoint_bytes<E: Element>(
    model: &TarFlow<E>,
    extra: &[(String, String)],
) -> Result<Vec<u8>> {
    let mut params = model.parameters();
    if let Some(v) = &model.prior_var {
        model.check_prior_var("checkpoint_bytes")?;
        let (n, d) = (model.config.seq_len(), model.config.token_dim());
        let t = Tensor::from_vec(v.iter().map(|&x| E::from_f64(x)).collect(), &[n, d])?;
        params.push((PRIOR_VAR_TENSOR.to_string(), t));
    }
    let refs: Vec<(&str, &Tensor<E>)> = params.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut meta: HashMap<String, String> = extra.iter().cloned().collect();
    meta.insert(CONFIG_KEY.into(), model.config.to_json());
    meta.insert(VERSION_KEY.into(), FORMAT_VERSION.into());
    tensors_to_bytes(&refs, DType::F32, Some(meta))
}

/// Writes a checkpoint atomically (temp file + rename): an existing file at `path` is only
/// ever replaced by a complete one.
pub fn save_checkpoint<E: Element>(
    path: &Path,
    model: &TarFlow<E>,
    extra: &[(String, String)],
) -> Result<()> {
    atomic_write(path, &checkpoint_bytes(model, extra)?)
}

/// Parses checkpoint bytes; `what` names the source in errors.
///
/// Besides the safetensors structure this checks everything a model needs: the config in the
/// metadata is valid, the file holds exactly the tensors of that config (names and shapes as
/// [`TarFlowConfig::parameter_shapes`] gives them) and every value is finite. A checkpoint
/// that parses therefore loads into [`Checkpoint::model`], which allocates no more than the
/// file holds, however large a model the config describes. Every error names `what` and, where
/// one is at fault, the tensor.
pub fn parse_checkpoint(bytes: &[u8], what: &str) -> Result<Checkpoint> {
    let bad = |d: String| Error::format(what.to_string(), d);
    let (mut tensors, metadata) = parse_tensors_with_metadata::<f64>(bytes, what)?;
    if !metadata.contains_key(CONFIG_KEY)
        && metadata.contains_key(super::interop::ML_TARFLOW_CONFIG_KEY)
    {
        // A converted official checkpoint: read through the importer.
        let m = super::interop::import_ml_tarflow::<f64>(bytes, what)?;
        let mut tensors = m.export_parameters();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        return Ok(Checkpoint {
            config: m.config.clone(),
            tensors,
            metadata,
            prior_var: m.prior_var.clone(),
        });
    }
    let cfg_json = metadata.get(CONFIG_KEY).ok_or_else(|| {
        bad(format!(
            "no '{CONFIG_KEY}' entry in the metadata: not a tarflow checkpoint"
        ))
    })?;
    // A file without the key (weights converted by another tool) is read as version 1; a
    // different version may lay its tensors out differently, so it is refused outright.
    if let Some(v) = metadata.get(VERSION_KEY) {
        if v != FORMAT_VERSION {
            return Err(bad(format!(
                "format version '{v}' under '{VERSION_KEY}'; this build reads version \
                 {FORMAT_VERSION}"
            )));
        }
    }
    let config = TarFlowConfig::from_json(cfg_json).map_err(|e| bad(e.to_string()))?;
    let prior_var = match tensors.remove(PRIOR_VAR_TENSOR) {
        None => None,
        Some(t) => {
            let want = [config.seq_len(), config.token_dim()];
            if t.shape() != want {
                return Err(bad(format!(
                    "tensor '{PRIOR_VAR_TENSOR}' has shape {:?}, the config needs {want:?}",
                    t.shape()
                )));
            }
            let v = t.to_vec();
            if let Some(i) = v.iter().position(|x| !(x.is_finite() && *x > 0.0)) {
                return Err(bad(format!(
                    "tensor '{PRIOR_VAR_TENSOR}' element {i} is {}, a variance must be finite \
                     and > 0",
                    v[i]
                )));
            }
            Some(v)
        }
    };
    check_tensor_set(&config, &tensors).map_err(bad)?;
    let mut tensors: Vec<(String, Vec<usize>, Vec<f64>)> = tensors
        .into_iter()
        .map(|(n, t)| (n, t.shape().to_vec(), t.to_vec()))
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, _, vals) in &tensors {
        if let Some(i) = vals.iter().position(|v| !v.is_finite()) {
            return Err(bad(format!(
                "tensor '{name}' element {i} is {}, weights must be finite",
                vals[i]
            )));
        }
    }
    Ok(Checkpoint {
        config,
        tensors,
        metadata,
        prior_var,
    })
}

/// Checks that `tensors` are exactly the parameters of `config`, with their shapes. The
/// config's list is walked lazily and the walk stops at the first tensor the file lacks, so
/// the work is bounded by the file, not by the model the config describes.
fn check_tensor_set<E: Element>(
    config: &TarFlowConfig,
    tensors: &HashMap<String, Tensor<E>>,
) -> std::result::Result<(), String> {
    let expected = config.num_tensors();
    for (name, shape) in config.parameter_shapes() {
        let Some(t) = tensors.get(&name) else {
            return Err(format!(
                "missing tensor '{name}' (the config needs {expected} tensors, the file has {})",
                tensors.len()
            ));
        };
        if t.shape() != shape.as_slice() {
            return Err(format!(
                "tensor '{name}' has shape {:?}, the config needs {shape:?}",
                t.shape()
            ));
        }
    }
    // Every expected tensor is present and names are unique, so any surplus is foreign.
    if tensors.len() > expected {
        let known: HashSet<String> = config.parameter_shapes().map(|(n, _)| n).collect();
        let mut extra: Vec<&str> = tensors
            .keys()
            .filter(|n| !known.contains(*n))
            .map(String::as_str)
            .collect();
        extra.sort_unstable();
        let shown = extra.len().min(5);
        return Err(format!(
            "{} unexpected tensor(s) for this config: {:?}{}",
            extra.len(),
            &extra[..shown],
            if extra.len() > shown { " ..." } else { "" }
        ));
    }
    Ok(())
}

/// Reads a checkpoint file. A missing, truncated or foreign file is an error naming the path.
/// An official TarFlow checkpoint converted by `scripts/ml_tarflow/convert.py` is read too
/// (through [`import_ml_tarflow`](super::interop::import_ml_tarflow)).
pub fn load_checkpoint(path: &Path) -> Result<Checkpoint> {
    let bytes = read_file(path)?;
    parse_checkpoint(&bytes, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest valid model: 2x2 grayscale images, 1x1 patches, width 1.
    fn micro() -> TarFlowConfig {
        TarFlowConfig {
            channels: 1,
            image_size: 2,
            patch_size: 1,
            width: 1,
            blocks: 1,
            layers_per_block: 1,
            head_dim: 1,
            mlp_ratio: 1,
            num_classes: 0,
            noise_sigma: 0.0,
            alpha_clip: None,
            additive: false,
        }
    }

    /// A checkpoint of `config_json` holding `tensors` (stored as F64).
    fn bytes_of(config_json: &str, tensors: &[(String, Tensor<f64>)]) -> Vec<u8> {
        let refs: Vec<(&str, &Tensor<f64>)> =
            tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let meta = HashMap::from([
            (CONFIG_KEY.to_string(), config_json.to_string()),
            (VERSION_KEY.to_string(), FORMAT_VERSION.to_string()),
        ]);
        tensors_to_bytes(&refs, DType::F64, Some(meta)).unwrap()
    }

    fn micro_tensors(fill: f64) -> Vec<(String, Tensor<f64>)> {
        micro()
            .parameter_shapes()
            .map(|(n, s)| (n, Tensor::full(&s, fill)))
            .collect()
    }

    fn err(bytes: &[u8]) -> String {
        match parse_checkpoint(bytes, "ck.safetensors") {
            Ok(_) => panic!("parsed"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn other_format_versions_are_refused_and_a_missing_one_is_read_as_1() {
        let refs: Vec<(String, Tensor<f64>)> = micro_tensors(0.5);
        let refs: Vec<(&str, &Tensor<f64>)> = refs.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let with = |version: Option<&str>| {
            let mut meta = HashMap::from([(CONFIG_KEY.to_string(), micro().to_json())]);
            if let Some(v) = version {
                meta.insert(VERSION_KEY.to_string(), v.to_string());
            }
            tensors_to_bytes(&refs, DType::F64, Some(meta)).unwrap()
        };
        let e = err(&with(Some("2")));
        assert!(
            e.contains("ck.safetensors")
                && e.contains("version '2'")
                && e.contains("tarflow.format"),
            "{e}"
        );
        parse_checkpoint(&with(None), "ck").unwrap();
        parse_checkpoint(&with(Some("1")), "ck").unwrap();
    }

    #[test]
    fn micro_checkpoint_parses_and_loads() {
        let ck =
            parse_checkpoint(&bytes_of(&micro().to_json(), &micro_tensors(0.5)), "ck").unwrap();
        assert_eq!(ck.config, micro());
        assert_eq!(ck.tensors.len(), micro().num_tensors());
        ck.model::<f32>().unwrap();
    }

    /// Found by fuzzing: an F64 checkpoint value beyond the f32 range passed the finiteness
    /// check and loaded into an f32 model as infinity.
    #[test]
    fn f64_values_beyond_f32_are_rejected_by_an_f32_model() {
        let ck =
            parse_checkpoint(&bytes_of(&micro().to_json(), &micro_tensors(1e300)), "ck").unwrap();
        ck.model::<f64>().unwrap();
        let e = ck.model::<f32>().err().expect("f32 overflow").to_string();
        assert!(
            e.contains("blocks.0.") && e.contains("out of the f32 range"),
            "{e}"
        );
    }

    /// A config describing a huge model must not be allocated from: one past the machine's
    /// memory is refused by its size, and the tensor check stops at the first tensor the
    /// file lacks.
    #[test]
    fn config_larger_than_the_file_is_an_error() {
        let huge = TarFlowConfig {
            width: 1 << 20,
            blocks: 1 << 20,
            ..micro()
        };
        let e = err(&bytes_of(&huge.to_json(), &micro_tensors(0.0)));
        assert!(
            e.contains("ck.safetensors") && e.contains("needs at least") && e.contains("EB"),
            "{e}"
        );
        // 100 million parameters: within any machine's memory, far beyond the file.
        let large = TarFlowConfig {
            width: 1 << 12,
            ..micro()
        };
        let e = err(&bytes_of(&large.to_json(), &micro_tensors(0.0)));
        assert!(
            e.contains("ck.safetensors") && e.contains("shape [1, 1], the config needs [4096, 1]"),
            "{e}"
        );
        let e = err(&bytes_of(&large.to_json(), &[]));
        assert!(
            e.contains("missing tensor 'blocks.0.proj_in.weight'"),
            "{e}"
        );
        let j = micro()
            .to_json()
            .replace("\"width\":1", "\"width\":18446744073709551615");
        let e = err(&bytes_of(&j, &micro_tensors(0.0)));
        assert!(e.contains("ck.safetensors") && e.contains("width"), "{e}");
    }

    #[test]
    fn tensor_set_mismatches_are_named() {
        let json = micro().to_json();
        let mut t = micro_tensors(0.0);
        t.push(("blocks.0.extra".into(), Tensor::zeros(&[2])));
        let e = err(&bytes_of(&json, &t));
        assert!(
            e.contains("1 unexpected tensor(s)") && e.contains("blocks.0.extra"),
            "{e}"
        );

        let mut t = micro_tensors(0.0);
        t.retain(|(n, _)| n != "blocks.0.pos_embed");
        let e = err(&bytes_of(&json, &t));
        assert!(e.contains("missing tensor 'blocks.0.pos_embed'"), "{e}");

        let mut t = micro_tensors(0.0);
        t[2].1 = Tensor::zeros(&[2, 2]);
        let e = err(&bytes_of(&json, &t));
        assert!(e.contains("'blocks.0.pos_embed' has shape [2, 2]"), "{e}");

        let mut t = micro_tensors(0.0);
        t[0].1 = Tensor::full(&[1, 1], f64::NAN);
        let e = err(&bytes_of(&json, &t));
        assert!(
            e.contains("'blocks.0.proj_in.weight' element 0 is NaN"),
            "{e}"
        );
    }
}
