//! Fully connected layer `y = x W^T + b`.

use super::init;
use crate::error::Result;
use crate::rng::Rng;
use crate::tensor::{Element, Tensor};

/// Affine map over the last axis: `[..., in] -> [..., out]`.
#[derive(Clone)]
pub struct Linear<E: Element = f32> {
    /// `[out, in]`.
    pub weight: Tensor<E>,
    /// `[out]`, if the layer has a bias.
    pub bias: Option<Tensor<E>>,
}

impl<E: Element> Linear<E> {
    /// A copy of this module with its parameters on `device`.
    pub fn to_device(&self, device: crate::tensor::Device) -> Result<Self> {
        Ok(Linear {
            weight: super::leaf_on(&self.weight, device)?,
            bias: self
                .bias
                .as_ref()
                .map(|b| super::leaf_on(b, device))
                .transpose()?,
        })
    }

    /// Default initialisation ([`init::kaiming_uniform_linear`]). Without a bias the bias
    /// draws are still made, so the stream seen by later layers does not depend on `bias`.
    pub fn new(in_features: usize, out_features: usize, bias: bool, rng: &mut Rng) -> Self {
        let (weight, b) = init::kaiming_uniform_linear(out_features, in_features, rng);
        Linear {
            weight,
            bias: bias.then_some(b),
        }
    }

    /// Zero weight and default-initialised bias, drawing the same random numbers as
    /// [`Linear::new`]. A flow's last projection starts like this so that the untrained
    /// model is the identity map.
    pub fn with_zero_weight(in_features: usize, out_features: usize, rng: &mut Rng) -> Self {
        let (_, bias) = init::kaiming_uniform_linear(out_features, in_features, rng);
        Linear {
            weight: init::zeros(&[out_features, in_features]),
            bias: Some(bias),
        }
    }

    /// All-zero weight and (optional) bias; draws no random numbers.
    pub fn zeros(in_features: usize, out_features: usize, bias: bool) -> Self {
        Linear {
            weight: init::zeros(&[out_features, in_features]),
            bias: bias.then(|| init::zeros(&[out_features])),
        }
    }

    /// Input size, the last axis of `x`.
    pub fn in_features(&self) -> usize {
        self.weight.shape()[1]
    }

    /// Output size, the last axis of the result.
    pub fn out_features(&self) -> usize {
        self.weight.shape()[0]
    }

    /// `x @ W^T + b` for `x` of shape `[..., in]`.
    pub fn forward(&self, x: &Tensor<E>) -> Result<Tensor<E>> {
        x.linear(&self.weight, self.bias.as_ref())
    }

    /// `("weight", W)` and, if present, `("bias", b)`.
    pub fn parameters(&self) -> Vec<(String, Tensor<E>)> {
        let mut v = vec![("weight".to_string(), self.weight.clone())];
        if let Some(b) = &self.bias {
            v.push(("bias".to_string(), b.clone()));
        }
        v
    }
}
