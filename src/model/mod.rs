//! TarFlow (Zhai et al., 2025): a stack of causal-Transformer affine autoregressive flows on
//! image patches. See docs/logdet.md for the exact log-determinant.

mod block;
mod checkpoint;
mod config;
pub mod interop;
pub mod memory;
mod patch;
mod recompute;
mod sampler;
mod tarflow;

pub use block::{BlockParams, FlowBlock, Labels, Layer};
pub use checkpoint::{
    checkpoint_bytes, load_checkpoint, parse_checkpoint, save_checkpoint, Checkpoint,
};
pub use config::TarFlowConfig;
pub use patch::{patchify, unpatchify};
pub use recompute::{current_recompute, recompute, Recompute, RecomputeGuard};
pub use sampler::{Guidance, SampleOptions, SampleReport, Sampler};
pub use tarflow::{FlowOutput, TarFlow};
