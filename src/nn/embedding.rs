//! Lookup table of learned vectors (class embeddings).

use super::init;
use crate::error::Result;
use crate::rng::Rng;
use crate::tensor::{Element, Tensor};

/// A table of `num` vectors of size `dim`.
pub struct Embedding<E: Element = f32> {
    /// `[num, dim]`.
    pub weight: Tensor<E>,
}

impl<E: Element> Embedding<E> {
    /// A copy of this module with its table on `device`.
    pub fn to_device(&self, device: crate::tensor::Device) -> Result<Self> {
        Ok(Embedding {
            weight: super::leaf_on(&self.weight, device)?,
        })
    }

    /// Entries drawn from `N(0, std^2)`.
    pub fn new(num: usize, dim: usize, std: f64, rng: &mut Rng) -> Self {
        Embedding {
            weight: init::normal(&[num, dim], std, rng),
        }
    }

    /// Number of vectors in the table.
    pub fn num_embeddings(&self) -> usize {
        self.weight.shape()[0]
    }

    /// Size of each vector.
    pub fn dim(&self) -> usize {
        self.weight.shape()[1]
    }

    /// Rows `indices` of the table, `[indices.len(), dim]`; an index past the table is an
    /// error. Repeated indices accumulate their gradients.
    pub fn forward(&self, indices: &[usize]) -> Result<Tensor<E>> {
        self.weight.index_select(0, indices)
    }

    /// The mean of all rows, `[dim]`, differentiable with respect to every row. Serves as the
    /// "no class" condition for classifier-free guidance without a dedicated parameter.
    pub fn mean_embedding(&self) -> Result<Tensor<E>> {
        self.weight.mean(&[0], false)
    }

    /// `("weight", table)`.
    pub fn parameters(&self) -> Vec<(String, Tensor<E>)> {
        vec![("weight".to_string(), self.weight.clone())]
    }
}
