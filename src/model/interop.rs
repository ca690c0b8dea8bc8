//! Checkpoints of the official TarFlow code (github.com/apple/ml-tarflow), as safetensors
//! files written by `scripts/ml_tarflow/convert.py`: every tensor under its official name,
//! the model configuration as JSON under [`ML_TARFLOW_CONFIG_KEY`].
//!
//! The two models compute the same function (docs/interop.md lists every convention checked),
//! so importing is renaming and reshaping: [`import_ml_tarflow`] builds our model, and
//! [`export_ml_tarflow`] writes ours back under the official names. The official `var`
//! buffer becomes the model's [`prior_var`](TarFlow::prior_var) (dropped when it is all
//! ones, the unit prior).

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::tensor::{DType, Element, Tensor};
use crate::tensorio::{parse_tensors_with_metadata, tensors_to_bytes};

use super::config::TarFlowConfig;
use super::tarflow::TarFlow;

/// Metadata key of the official model's configuration (JSON of [`MlTarflowConfig`]).
pub const ML_TARFLOW_CONFIG_KEY: &str = "ml_tarflow.config";

/// Official name of the learned prior variance buffer `[N, D]`.
const VAR: &str = "var";

/// The arguments the official `Model` was built with, as convert.py records them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MlTarflowConfig {
    /// Image channels (`in_channels`).
    pub channels: usize,
    /// Image side (`img_size`).
    pub image_size: usize,
    /// Patch side (`patch_size`).
    pub patch_size: usize,
    /// Transformer width (`channels` of the official `Model`).
    pub width: usize,
    /// Flow blocks (`num_blocks`).
    pub blocks: usize,
    /// Transformer layers per block (`layers_per_block`).
    pub layers_per_block: usize,
    /// Attention head size (64 in every official model).
    pub head_dim: usize,
    /// MLP expansion (4 in every official model).
    pub mlp_ratio: usize,
    /// Classes; 0 for an unconditional model.
    pub num_classes: usize,
    /// `true`: affine blocks; `false`: the volume-preserving (additive) variant.
    pub nvp: bool,
    /// Training noise sigma (`noise_std`) when known.
    pub noise_std: Option<f64>,
}

impl MlTarflowConfig {
    /// Our configuration of the same model (noise sigma 0 when unknown).
    pub fn to_ours(&self) -> TarFlowConfig {
        TarFlowConfig {
            channels: self.channels,
            image_size: self.image_size,
            patch_size: self.patch_size,
            width: self.width,
            blocks: self.blocks,
            layers_per_block: self.layers_per_block,
            head_dim: self.head_dim,
            mlp_ratio: self.mlp_ratio,
            num_classes: self.num_classes,
            noise_sigma: self.noise_std.unwrap_or(0.0),
            alpha_clip: None,
            additive: !self.nvp,
        }
    }

    /// The official configuration of our model; an error for what the official model
    /// cannot express (a soft clip of the log-scales).
    pub fn from_ours(c: &TarFlowConfig) -> Result<Self> {
        if let Some(a) = c.alpha_clip {
            return Err(Error::Config(format!(
                "the model soft-clips its log-scales (alpha clip {a}); the official model has \
                 no clip, so it would compute another function"
            )));
        }
        Ok(MlTarflowConfig {
            channels: c.channels,
            image_size: c.image_size,
            patch_size: c.patch_size,
            width: c.width,
            blocks: c.blocks,
            layers_per_block: c.layers_per_block,
            head_dim: c.head_dim,
            mlp_ratio: c.mlp_ratio,
            num_classes: c.num_classes,
            nvp: !c.additive,
            noise_std: Some(c.noise_sigma),
        })
    }

    /// Whether the official `Model` constructor can build this shape as it is: it always
    /// uses heads of 64 and an MLP expansion of 4.
    pub fn official_constructor_builds_it(&self) -> bool {
        self.head_dim == 64 && self.mlp_ratio == 4
    }
}

/// The official name of each of our parameter names, and whether the tensor is stored with
/// an extra middle axis of 1 there (`class_embed` is `[Q, 1, C]`).
pub fn official_name(ours: &str) -> Result<(String, bool)> {
    let unknown = || Error::format("parameter name", format!("'{ours}' is not a TarFlow name"));
    let rest = ours.strip_prefix("blocks.").ok_or_else(unknown)?;
    let (t, rest) = rest.split_once('.').ok_or_else(unknown)?;
    let block = format!("blocks.{t}");
    let same = [
        "proj_in.weight",
        "proj_in.bias",
        "pos_embed",
        "proj_out.weight",
        "proj_out.bias",
    ];
    if same.contains(&rest) {
        return Ok((format!("{block}.{rest}"), false));
    }
    if rest == "class_embed.weight" {
        return Ok((format!("{block}.class_embed"), true));
    }
    let rest = rest.strip_prefix("layers.").ok_or_else(unknown)?;
    let (k, field) = rest.split_once('.').ok_or_else(unknown)?;
    let (module, param) = field.rsplit_once('.').ok_or_else(unknown)?;
    let theirs = match module {
        "norm1" => "attention.norm",
        "attn.qkv" => "attention.qkv",
        "attn.out" => "attention.proj",
        "norm2" => "mlp.norm",
        "mlp.fc1" => "mlp.main.0",
        "mlp.fc2" => "mlp.main.2",
        _ => return Err(unknown()),
    };
    Ok((format!("{block}.attn_blocks.{k}.{theirs}.{param}"), false))
}

/// `[a, b]` -> `[a, 1, b]` for tensors stored with the middle axis.
fn their_shape(shape: &[usize], middle: bool) -> Vec<usize> {
    if middle {
        vec![shape[0], 1, shape[1]]
    } else {
        shape.to_vec()
    }
}

/// Builds our model from the bytes of an official-named safetensors file (`what` names it
/// in errors). Every tensor must be there with its official shape; a missing, mis-shaped,
/// non-finite or unknown tensor is an error naming it (official and our name). The causal
/// masks (`blocks.{t}.attn_mask`), if a converter kept them, must be the lower triangle of
/// ones and are dropped.
pub fn import_ml_tarflow<E: Element>(bytes: &[u8], what: &str) -> Result<TarFlow<E>> {
    let bad = |d: String| Error::format(what.to_string(), d);
    let (tensors, metadata) = parse_tensors_with_metadata::<f64>(bytes, what)?;
    let json = metadata.get(ML_TARFLOW_CONFIG_KEY).ok_or_else(|| {
        bad(format!(
            "no '{ML_TARFLOW_CONFIG_KEY}' entry in the metadata: convert the official .pth \
             with scripts/ml_tarflow/convert.py"
        ))
    })?;
    let theirs: MlTarflowConfig =
        serde_json::from_str(json).map_err(|e| bad(format!("'{ML_TARFLOW_CONFIG_KEY}': {e}")))?;
    let config = theirs.to_ours();
    config.validate().map_err(|e| bad(e.to_string()))?;
    let mut used: HashSet<&str> = HashSet::new();
    let mut records = Vec::with_capacity(config.num_tensors());
    for (ours, shape) in config.parameter_shapes() {
        let (name, middle) = official_name(&ours)?;
        let want = their_shape(&shape, middle);
        let (key, t) = tensors.get_key_value(&name).ok_or_else(|| {
            bad(format!(
                "missing tensor '{name}' (our '{ours}'), needed by a model of {}",
                describe(&theirs)
            ))
        })?;
        if t.shape() != want.as_slice() {
            return Err(bad(format!(
                "tensor '{name}' has shape {:?}, the config needs {want:?}",
                t.shape()
            )));
        }
        let vals = t.to_vec();
        check_finite(&name, &vals).map_err(bad)?;
        used.insert(key.as_str());
        records.push((ours, shape, vals));
    }
    let (n, d) = (config.seq_len(), config.token_dim());
    let mut prior_var = None;
    if let Some((key, t)) = tensors.get_key_value(VAR) {
        if t.shape() != [n, d] {
            return Err(bad(format!(
                "tensor '{VAR}' has shape {:?}, the config needs [{n}, {d}]",
                t.shape()
            )));
        }
        let v = t.to_vec();
        if let Some(i) = v.iter().position(|x| !(x.is_finite() && *x > 0.0)) {
            return Err(bad(format!(
                "tensor '{VAR}' element {i} is {}, a variance must be finite and > 0",
                v[i]
            )));
        }
        // All ones is the unit prior (every nvp=True model: only the additive variant
        // learns it).
        if v.iter().any(|&x| x != 1.0) {
            prior_var = Some(v);
        }
        used.insert(key.as_str());
    }
    for (name, t) in &tensors {
        if name.starts_with("blocks.") && name.ends_with(".attn_mask") {
            let causal = t.shape() == [n, n]
                && t.to_vec()
                    .iter()
                    .enumerate()
                    .all(|(i, &v)| v == if i % n <= i / n { 1.0 } else { 0.0 });
            if !causal {
                return Err(bad(format!(
                    "tensor '{name}' is not the causal mask of {n} tokens"
                )));
            }
            used.insert(name.as_str());
        }
    }
    let mut extra: Vec<&str> = tensors
        .keys()
        .map(String::as_str)
        .filter(|k| !used.contains(k))
        .collect();
    if !extra.is_empty() {
        extra.sort_unstable();
        return Err(bad(format!(
            "{} tensor(s) a model of {} does not have: {:?}",
            extra.len(),
            describe(&theirs),
            &extra[..extra.len().min(5)]
        )));
    }
    let mut model = TarFlow::<E>::new(config, 0)?;
    model
        .load_parameters(&records)
        .map_err(|e| bad(e.to_string()))?;
    model.prior_var = prior_var;
    Ok(model)
}

fn check_finite(name: &str, vals: &[f64]) -> std::result::Result<(), String> {
    match vals.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(format!(
            "tensor '{name}' element {i} is {}, weights must be finite",
            vals[i]
        )),
        None => Ok(()),
    }
}

fn describe(c: &MlTarflowConfig) -> String {
    format!(
        "{}x{}x{} images, patch {}, width {}, {} blocks of {} layers, {} classes, nvp {}",
        c.channels,
        c.image_size,
        c.image_size,
        c.patch_size,
        c.width,
        c.blocks,
        c.layers_per_block,
        c.num_classes,
        c.nvp
    )
}

/// Our model as an official-named safetensors file (F32, the config under
/// [`ML_TARFLOW_CONFIG_KEY`], `var` from the prior variance or ones, no causal masks:
/// `convert.py --reverse` rebuilds them for `Model.load_state_dict`). Errors when the model
/// has what the official model lacks (see [`MlTarflowConfig::from_ours`]).
pub fn export_ml_tarflow<E: Element>(model: &TarFlow<E>) -> Result<Vec<u8>> {
    model.check_structure("export_ml_tarflow")?;
    let cfg = MlTarflowConfig::from_ours(&model.config)?;
    let mut named: Vec<(String, Tensor<E>)> = Vec::new();
    for (ours, t) in model.parameters() {
        let (name, middle) = official_name(&ours)?;
        let t = if middle {
            t.reshape(&their_shape(t.shape(), true))?
        } else {
            t
        };
        named.push((name, t));
    }
    let (n, d) = (model.config.seq_len(), model.config.token_dim());
    let var = match &model.prior_var {
        Some(v) => v.iter().map(|&x| E::from_f64(x)).collect(),
        None => vec![E::ONE; n * d],
    };
    named.push((VAR.to_string(), Tensor::from_vec(var, &[n, d])?));
    let refs: Vec<(&str, &Tensor<E>)> = named.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let json = serde_json::to_string(&cfg).expect("config serialises");
    let meta = HashMap::from([(ML_TARFLOW_CONFIG_KEY.to_string(), json)]);
    tensors_to_bytes(&refs, DType::F32, Some(meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_parameter_has_an_official_name() {
        let c = TarFlowConfig::preset("tiny").unwrap();
        let names: Vec<String> = c
            .parameter_shapes()
            .map(|(n, _)| official_name(&n).unwrap().0)
            .collect();
        assert!(names.contains(&"blocks.1.attn_blocks.0.attention.qkv.weight".to_string()));
        assert!(names.contains(&"blocks.0.attn_blocks.0.mlp.main.2.bias".to_string()));
        assert!(names.contains(&"blocks.0.class_embed".to_string()));
        let unique: HashSet<&String> = names.iter().collect();
        assert_eq!(unique.len(), names.len());
        assert!(official_name("blocks.0.layers.0.attn.nope.weight").is_err());
        assert!(official_name("head.weight").is_err());
    }
}
