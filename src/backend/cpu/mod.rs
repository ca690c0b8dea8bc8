//! The CPU backend: the crate's GEMM, the runtime-dispatched SIMD loops, the strided
//! elementwise loops and the scalar formulas they evaluate.

pub(crate) mod attention;
pub(crate) mod coupling;
pub(crate) mod elementwise;
pub mod gemm;
pub(crate) mod layer_norm;
mod matmul;
pub(crate) mod optim;
pub(crate) mod reduce;
pub(crate) mod scalar;
pub mod simd;
pub(crate) mod softmax;

pub(crate) use matmul::{gemm_any, gemm_bias_any};
