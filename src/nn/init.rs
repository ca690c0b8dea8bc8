//! Parameter initialisers. Each returns a fresh contiguous leaf that requires a gradient.

use crate::rng::Rng;
use crate::tensor::{Element, Tensor};

/// Samples from `U(-bound, bound)`.
pub fn uniform<E: Element>(shape: &[usize], bound: f64, rng: &mut Rng) -> Tensor<E> {
    Tensor::rand(shape, -bound, bound, rng).requires_grad_()
}

/// Samples from `N(0, std^2)`.
pub fn normal<E: Element>(shape: &[usize], std: f64, rng: &mut Rng) -> Tensor<E> {
    Tensor::randn(shape, 0.0, std, rng).requires_grad_()
}

/// All zeros.
pub fn zeros<E: Element>(shape: &[usize]) -> Tensor<E> {
    Tensor::zeros(shape).requires_grad_()
}

/// The bound `1/sqrt(fan_in)` of the default linear initialisation; 0 for `fan_in == 0`,
/// where there is nothing to scale against.
pub fn linear_bound(fan_in: usize) -> f64 {
    if fan_in == 0 {
        0.0
    } else {
        1.0 / (fan_in as f64).sqrt()
    }
}

/// The default initialisation of a linear layer `[out, in]`: weight and bias both from
/// `U(-1/sqrt(in), 1/sqrt(in))`, drawn in that order. (Kaiming-uniform with `a = sqrt(5)`
/// reduces to this bound for the weight.) Returns `(weight [out, in], bias [out])`.
pub fn kaiming_uniform_linear<E: Element>(
    out_features: usize,
    in_features: usize,
    rng: &mut Rng,
) -> (Tensor<E>, Tensor<E>) {
    let bound = linear_bound(in_features);
    let w = uniform(&[out_features, in_features], bound, rng);
    let b = uniform(&[out_features], bound, rng);
    (w, b)
}
