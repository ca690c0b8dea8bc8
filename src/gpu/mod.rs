//! GPU devices: the launch interface shared by the CUDA driver and the PTX interpreter
//! (module [`sim`], behind the default `ptx-sim` feature).
//!
//! See `docs/architecture.md` for where this sits between the ops and the kernels in `ptx/`.

pub mod batch;
pub mod cuda;
pub mod driver;
pub mod kernels;
pub mod memory;
pub mod pool;
pub mod profile;
pub mod registry;
#[cfg(feature = "ptx-sim")]
pub mod sim;
pub mod tensor_map;

pub use batch::{launch_batches, BatchCounts, LaunchBatch};
pub use cuda::CudaDriver;
pub use driver::{
    DeviceMark, DevicePtr, Driver, EncodedTensorMap, Forward, KernelArg, LaunchConfig, LaunchWork,
    PtxModule,
};
pub use memory::{memory_stats, reset_peak, MemoryCounter, MemoryStats};
pub use pool::{size_class, BufferCache};
pub use profile::{LaunchProfile, Profiler};
#[cfg(feature = "ptx-sim")]
pub use sim::PtxSim;
