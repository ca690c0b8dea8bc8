//! Layer normalisation as a module with learnable affine parameters.

use crate::error::Result;
use crate::tensor::{Element, Tensor};

/// Layer normalisation over the last axis with a learnable `weight` and `bias` of shape `[dim]`.
#[derive(Clone)]
pub struct LayerNorm<E: Element = f32> {
    /// Per-channel scale `[dim]`, applied after normalising.
    pub weight: Tensor<E>,
    /// Per-channel offset `[dim]`, added after the scale.
    pub bias: Tensor<E>,
    /// Added to the variance before the square root.
    pub eps: f64,
}

impl<E: Element> LayerNorm<E> {
    /// A copy of this module with its parameters on `device`.
    pub fn to_device(&self, device: crate::tensor::Device) -> Result<Self> {
        Ok(LayerNorm {
            weight: super::leaf_on(&self.weight, device)?,
            bias: super::leaf_on(&self.bias, device)?,
            eps: self.eps,
        })
    }

    /// Weight ones, bias zeros (both gradient-tracking leaves), `eps = 1e-5`.
    pub fn new(dim: usize) -> Self {
        Self::with_eps(dim, 1e-5)
    }

    /// As [`LayerNorm::new`] with another `eps`.
    pub fn with_eps(dim: usize, eps: f64) -> Self {
        LayerNorm {
            weight: Tensor::ones(&[dim]).requires_grad_(),
            bias: Tensor::zeros(&[dim]).requires_grad_(),
            eps,
        }
    }

    /// Normalises `x` (`[..., dim]`) with the fused [`Tensor::layer_norm`].
    pub fn forward(&self, x: &Tensor<E>) -> Result<Tensor<E>> {
        x.layer_norm(Some(&self.weight), Some(&self.bias), self.eps)
    }

    /// `("weight", ..)` and `("bias", ..)`.
    pub fn parameters(&self) -> Vec<(String, Tensor<E>)> {
        vec![
            ("weight".to_string(), self.weight.clone()),
            ("bias".to_string(), self.bias.clone()),
        ]
    }
}
