//! Differentiable operations on [`crate::Tensor`], grouped by family. Each op computes its
//! result on the CPU and, when an input requires a gradient, records its backward.

pub mod attention;
mod binary;
pub mod gemm;
mod index;
pub(crate) mod kernel;
pub(crate) mod layer_norm;
pub(crate) mod matmul;
mod reduce;
pub mod simd;
pub(crate) mod softmax;
mod unary;
mod view;

pub use reduce::sum_slice;
pub use unary::{gelu_grad_scalar, gelu_scalar, sigmoid_scalar, softplus_scalar};
