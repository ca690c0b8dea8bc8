//! Differentiable operations on [`crate::Tensor`], grouped by family. Each op checks shapes,
//! runs its kernel (from [`crate::backend`]) and, when an input requires a gradient, records
//! its backward.

pub mod attention;
mod binary;
mod coupling;
mod index;
pub(crate) mod layer_norm;
pub(crate) mod matmul;
mod mlp;
mod reduce;
pub(crate) mod softmax;
mod unary;
mod view;

// The CPU kernels moved to `crate::backend::cpu`; these paths stay for callers and benches.
pub(crate) use crate::backend::cpu::elementwise as kernel;
pub use crate::backend::cpu::gemm;
pub use crate::backend::cpu::simd;

pub use crate::backend::cpu::reduce::sum_slice;
pub use crate::backend::cpu::scalar::{
    gelu_grad_scalar, gelu_scalar, sigmoid_scalar, softplus_scalar,
};
