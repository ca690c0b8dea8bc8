//! Neural-network building blocks on [`crate::Tensor`].
//!
//! A module is a plain struct whose public fields are its parameter tensors (leaves that
//! require a gradient), with a `forward` and a `parameters()` that lists them under stable
//! dotted names. Training code gathers those lists into a [`ParamStore`], which is what the
//! optimisers, gradient clipping, EMA and checkpoints work on. Modules and the store hold
//! handles to the same tensors, so a gradient accumulated through `forward` is the one the
//! optimiser reads and an in-place update is the one the next `forward` sees.

pub mod attention;
pub mod embedding;
pub mod init;
pub mod linear;
pub mod mlp;
pub mod norm;
pub mod params;

pub use attention::CausalSelfAttention;
pub use embedding::Embedding;
pub use linear::Linear;
pub use mlp::Mlp;
pub use norm::LayerNorm;
pub use params::ParamStore;

use crate::tensor::{Element, Tensor};

/// Prefixes every name with `prefix` and a dot (an empty prefix leaves names unchanged), the
/// way a parent module names the parameters of its children.
pub fn with_prefix<E: Element>(
    prefix: &str,
    params: Vec<(String, Tensor<E>)>,
) -> Vec<(String, Tensor<E>)> {
    if prefix.is_empty() {
        return params;
    }
    params
        .into_iter()
        .map(|(n, t)| (format!("{prefix}.{n}"), t))
        .collect()
}

/// A parameter moved to `device` as a fresh leaf with the same gradient tracking (a module's
/// `to_device` builds its copy from these; the original is untouched).
pub fn leaf_on<E: Element>(
    t: &Tensor<E>,
    device: crate::tensor::Device,
) -> crate::Result<Tensor<E>> {
    let moved = t.detach().to_device(device)?;
    Ok(if t.requires_grad() {
        moved.requires_grad_()
    } else {
        moved
    })
}
