//! Checkpoints: one `.safetensors` file holding every weight (f32, names and layouts in
//! docs/checkpoint-format.md) and the model configuration as JSON in the metadata.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};

use crate::error::{Error, Result};
use crate::fsutil::{atomic_write, read_file};
use crate::tensor::Element;
use crate::tensorio::parse_tensors_with_metadata;

use super::config::TarFlowConfig;
use super::tarflow::TarFlow;

/// Metadata key holding the model configuration JSON.
pub const CONFIG_KEY: &str = "tarflow.config";
/// Metadata key holding the format version.
pub const VERSION_KEY: &str = "tarflow.format";
pub const FORMAT_VERSION: &str = "1";

/// A checkpoint read from disk: the config, the weights, and any extra metadata.
pub struct Checkpoint {
    pub config: TarFlowConfig,
    /// `(name, shape, values)` for every tensor in the file.
    pub tensors: Vec<(String, Vec<usize>, Vec<f64>)>,
    pub metadata: HashMap<String, String>,
}

impl Checkpoint {
    /// Builds the model described by the checkpoint, in element type `E`.
    pub fn model<E: Element>(&self) -> Result<TarFlow<E>> {
        let m = TarFlow::<E>::new(self.config.clone(), 0)?;
        m.load_parameters(&self.tensors)?;
        Ok(m)
    }
}

/// Serialises a model (weights as f32) with `extra` metadata entries.
pub fn checkpoint_bytes<E: Element>(
    model: &TarFlow<E>,
    extra: &[(String, String)],
) -> Result<Vec<u8>> {
    let params = model.parameters();
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = params
        .iter()
        .map(|(n, t)| {
            let v: Vec<f32> = t.to_vec().iter().map(|x| x.to_f32()).collect();
            (
                n.clone(),
                t.shape().to_vec(),
                bytemuck::cast_slice(&v).to_vec(),
            )
        })
        .collect();
    let views = data
        .iter()
        .map(|(n, s, b)| {
            TensorView::new(Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::format("checkpoint", format!("tensor '{n}': {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut meta: HashMap<String, String> = extra.iter().cloned().collect();
    meta.insert(CONFIG_KEY.into(), model.config.to_json());
    meta.insert(VERSION_KEY.into(), FORMAT_VERSION.into());
    safetensors::serialize(views, &Some(meta))
        .map_err(|e| Error::format("checkpoint", e.to_string()))
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
pub fn parse_checkpoint(bytes: &[u8], what: &str) -> Result<Checkpoint> {
    let bad = |d: String| Error::format(what.to_string(), d);
    let (tensors, metadata) = parse_tensors_with_metadata::<f64>(bytes, what)?;
    let cfg_json = metadata.get(CONFIG_KEY).ok_or_else(|| {
        bad(format!(
            "no '{CONFIG_KEY}' entry in the metadata: not a tarflow checkpoint"
        ))
    })?;
    let config = TarFlowConfig::from_json(cfg_json).map_err(|e| bad(e.to_string()))?;
    let mut tensors: Vec<(String, Vec<usize>, Vec<f64>)> = tensors
        .into_iter()
        .map(|(n, t)| (n, t.shape().to_vec(), t.to_vec()))
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Checkpoint {
        config,
        tensors,
        metadata,
    })
}

/// Reads a checkpoint file. A missing, truncated or foreign file is an error naming the path.
pub fn load_checkpoint(path: &Path) -> Result<Checkpoint> {
    let bytes = read_file(path)?;
    parse_checkpoint(&bytes, &path.display().to_string())
}
