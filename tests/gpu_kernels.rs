#![cfg(feature = "ptx-sim")]
//! Every production kernel of `ptx/` run through its typed wrapper, on the PTX interpreter
//! and (when one opens) on a CUDA GPU, against the crate's own CPU ops. Outputs written with
//! `=` are poisoned with NaN first, so a kernel that skips an element fails; comparisons
//! treat a NaN as an infinite error.

mod common;

#[path = "gpu_kernels/harness.rs"]
mod harness;

#[path = "gpu_kernels/attention.rs"]
mod attention;
#[path = "gpu_kernels/copy.rs"]
mod copy;
#[path = "gpu_kernels/counters.rs"]
mod counters;
#[path = "gpu_kernels/coupling.rs"]
mod coupling;
#[path = "gpu_kernels/elementwise.rs"]
mod elementwise;
#[path = "gpu_kernels/gemm.rs"]
mod gemm;
#[path = "gpu_kernels/gemm_epilogue.rs"]
mod gemm_epilogue;
#[path = "gpu_kernels/gemm_wgmma.rs"]
mod gemm_wgmma;
#[path = "gpu_kernels/index.rs"]
mod index;
#[path = "gpu_kernels/norm.rs"]
mod norm;
#[path = "gpu_kernels/optim.rs"]
mod optim;
#[path = "gpu_kernels/peak.rs"]
mod peak;
#[path = "gpu_kernels/reduce.rs"]
mod reduce;
