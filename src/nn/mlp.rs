//! The transformer feed-forward block: Linear, exact GELU, Linear.

use super::{with_prefix, Linear};
use crate::error::Result;
use crate::rng::Rng;
use crate::tensor::{Element, Tensor};

/// `fc2(gelu(fc1(x)))` with `fc1: dim -> hidden`, `fc2: hidden -> dim`, both with bias.
#[derive(Clone)]
pub struct Mlp<E: Element = f32> {
    /// Expansion `dim -> hidden`.
    pub fc1: Linear<E>,
    /// Projection back `hidden -> dim`.
    pub fc2: Linear<E>,
}

impl<E: Element> Mlp<E> {
    /// A copy of this module with its parameters on `device`.
    pub fn to_device(&self, device: crate::tensor::Device) -> Result<Self> {
        Ok(Mlp {
            fc1: self.fc1.to_device(device)?,
            fc2: self.fc2.to_device(device)?,
        })
    }

    /// Hidden width `ratio * dim` (the usual ratio is 4).
    pub fn new(dim: usize, ratio: usize, rng: &mut Rng) -> Self {
        Self::with_hidden(dim, ratio * dim, rng)
    }

    /// Explicit hidden width.
    pub fn with_hidden(dim: usize, hidden: usize, rng: &mut Rng) -> Self {
        let fc1 = Linear::new(dim, hidden, true, rng);
        let fc2 = Linear::new(hidden, dim, true, rng);
        Mlp { fc1, fc2 }
    }

    /// Input and output width.
    pub fn dim(&self) -> usize {
        self.fc1.in_features()
    }

    /// Hidden width between the two layers.
    pub fn hidden(&self) -> usize {
        self.fc1.out_features()
    }

    /// `[..., dim] -> [..., dim]`: `fc1` and the GELU as one op ([`Tensor::linear_gelu`]).
    pub fn forward(&self, x: &Tensor<E>) -> Result<Tensor<E>> {
        self.fc2.forward(&self.hidden_activations(x)?)
    }

    /// `r + forward(x)`: the whole block as one op ([`Tensor::mlp_residual`]: the residual
    /// in `fc2`'s epilogue, the GELU derivative in the backward's data-gradient GEMM); `r`
    /// has `x`'s shape.
    pub fn forward_residual(&self, x: &Tensor<E>, r: &Tensor<E>) -> Result<Tensor<E>> {
        x.mlp_residual(
            &self.fc1.weight,
            self.fc1.bias.as_ref(),
            &self.fc2.weight,
            self.fc2.bias.as_ref(),
            r,
        )
    }

    fn hidden_activations(&self, x: &Tensor<E>) -> Result<Tensor<E>> {
        x.linear_gelu(&self.fc1.weight, self.fc1.bias.as_ref())
    }

    /// `fc1.weight`, `fc1.bias`, `fc2.weight`, `fc2.bias`.
    pub fn parameters(&self) -> Vec<(String, Tensor<E>)> {
        let mut v = with_prefix("fc1", self.fc1.parameters());
        v.extend(with_prefix("fc2", self.fc2.parameters()));
        v
    }
}
