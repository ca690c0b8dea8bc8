//! GPU devices: the launch interface shared by the CUDA driver and the PTX interpreter.
//!
//! See `docs/architecture.md` for where this sits between the ops and the kernels in `ptx/`.

pub mod driver;
pub mod registry;

pub use driver::{DevicePtr, Driver, KernelArg, LaunchConfig, PtxModule};
