//! The launch interface every GPU-like device implements: the CUDA driver (through cudarc)
//! and the PTX interpreter. The GPU backend sizes grids, packs arguments and manages buffers
//! against this trait only, so the same backend code and the same PTX bytes run on both.

use super::batch::BatchCounts;
use super::memory::MemoryCounter;
use super::profile::Profiler;
use super::tensor_map::{TensorMap, TENSOR_MAP_BYTES};
use crate::error::{Error, Result};

/// An address in a device's global memory. Opaque to the host: it is only passed back to the
/// driver that returned it, or packed as a kernel argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DevicePtr(pub u64);

impl DevicePtr {
    /// The address `bytes` further on (for sub-buffers and views).
    pub fn offset(self, bytes: u64) -> DevicePtr {
        DevicePtr(self.0 + bytes)
    }
}

/// Grid and block sizes of one launch, and its dynamic shared memory in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchConfig {
    /// CTAs per grid dimension (x, y, z).
    pub grid: (u32, u32, u32),
    /// Threads per CTA dimension (x, y, z).
    pub block: (u32, u32, u32),
    /// Dynamic shared memory per CTA, in bytes (on top of the kernel's static `.shared`).
    pub shared_bytes: u32,
}

impl LaunchConfig {
    /// A one-dimensional launch: `grid` CTAs of `block` threads, no dynamic shared memory.
    pub fn linear(grid: u32, block: u32) -> Self {
        LaunchConfig {
            grid: (grid, 1, 1),
            block: (block, 1, 1),
            shared_bytes: 0,
        }
    }
}

/// One kernel parameter, packed as the PTX `.param` of the same width.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KernelArg {
    /// A global-memory pointer (`.param .u64`).
    Ptr(DevicePtr),
    /// `.param .u32` / `.s32` (bit pattern).
    U32(u32),
    /// `.param .u64` / `.s64` (bit pattern).
    U64(u64),
    /// `.param .f32`.
    F32(f32),
    /// `.param .f64`.
    F64(f64),
    /// `.param .align 64 .b8 [128]`: a tensor map, as [`Driver::tensor_map`] encoded it.
    TensorMap(EncodedTensorMap),
}

/// A tensor map's 128 bytes as one driver encodes them (opaque; only that driver's
/// launches understand them). Byte-aligned: the kernel parameter is 64-byte aligned, but
/// the driver copies these bytes into its parameter buffer, and an alignment of 64 here
/// would make every [`KernelArg`] a 64-byte-aligned value, whose vectors take the host
/// allocator's slow aligned path on every launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct EncodedTensorMap(pub [u8; TENSOR_MAP_BYTES]);

impl KernelArg {
    /// The little-endian bytes the kernel's parameter space holds for this argument.
    pub fn to_bytes(self) -> Vec<u8> {
        match self {
            KernelArg::Ptr(p) => p.0.to_le_bytes().to_vec(),
            KernelArg::U32(v) => v.to_le_bytes().to_vec(),
            KernelArg::U64(v) => v.to_le_bytes().to_vec(),
            KernelArg::F32(v) => v.to_le_bytes().to_vec(),
            KernelArg::F64(v) => v.to_le_bytes().to_vec(),
            KernelArg::TensorMap(m) => m.0.to_vec(),
        }
    }
}

/// A point in a device's launch order whose time the device records (a CUDA event): opaque,
/// only passed back to the driver that made it.
pub struct DeviceMark(pub Box<dyn std::any::Any + Send + Sync>);

impl std::fmt::Debug for DeviceMark {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceMark(..)")
    }
}

/// What one launch did, as a driver that counts it reports (the PTX interpreter): dynamic
/// warp-instructions and global-memory traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LaunchWork {
    /// Warp-instructions executed, every class together.
    pub warp_instructions: u64,
    /// Bytes read from global memory.
    pub bytes_read: u64,
    /// Bytes written to global memory.
    pub bytes_written: u64,
}

impl std::ops::Add for LaunchWork {
    type Output = LaunchWork;
    fn add(self, o: LaunchWork) -> LaunchWork {
        LaunchWork {
            warp_instructions: self.warp_instructions + o.warp_instructions,
            bytes_read: self.bytes_read + o.bytes_read,
            bytes_written: self.bytes_written + o.bytes_written,
        }
    }
}

impl std::iter::Sum for LaunchWork {
    fn sum<I: Iterator<Item = LaunchWork>>(it: I) -> LaunchWork {
        it.fold(LaunchWork::default(), |a, b| a + b)
    }
}

/// A PTX module compiled into the binary: its file name (for messages) and its text.
#[derive(Clone, Copy, Debug)]
pub struct PtxModule {
    /// The module's name, e.g. `"elementwise"` for `ptx/elementwise.ptx`.
    pub name: &'static str,
    /// The PTX text, as committed.
    pub ptx: &'static str,
}

/// A device that allocates global memory, copies to and from the host, and launches kernels
/// from embedded PTX modules. Launches on one driver run in order (one stream); a download
/// waits for every launch before it.
pub trait Driver: Send + Sync {
    /// A short name for messages, e.g. `"cuda:0 (NVIDIA H200)"` or `"ptx-sim"`.
    fn name(&self) -> String;

    /// Allocates `bytes` of global memory (contents unspecified: the interpreter fills fresh
    /// memory with a NaN pattern so that uninitialised reads show).
    fn alloc(&self, bytes: usize) -> Result<DevicePtr>;

    /// Returns memory from [`Driver::alloc`]; `ptr` must not be used afterwards.
    fn free(&self, ptr: DevicePtr) -> Result<()>;

    /// Copies `src` to device memory at `dst`.
    fn upload(&self, dst: DevicePtr, src: &[u8]) -> Result<()>;

    /// Copies `dst.len()` bytes of device memory at `src` to `dst`, after every earlier launch.
    fn download(&self, src: DevicePtr, dst: &mut [u8]) -> Result<()>;

    /// Launches `kernel` (an `.entry` of `module`) with `args` in the order of its parameters.
    /// Loading and caching the module is the driver's business.
    fn launch(
        &self,
        module: &PtxModule,
        kernel: &str,
        config: LaunchConfig,
        args: &[KernelArg],
    ) -> Result<()>;

    /// Waits for every launch and copy issued so far; reports a failure of any of them.
    fn synchronize(&self) -> Result<()>;

    /// The counter of this driver's allocated bytes, kept by [`crate::tensor::GpuBuffer`]
    /// (see [`super::memory`]). `None` (the default) for a driver that keeps none; every
    /// driver the registry hands out has one.
    fn memory(&self) -> Option<&MemoryCounter> {
        None
    }

    /// The device's total memory in bytes, where the driver knows it (`None`, the default,
    /// for the interpreter, whose memory is the host's).
    fn total_memory(&self) -> Result<Option<u64>> {
        Ok(None)
    }

    /// The device's compute capability `(major, minor)`, where the driver has one (`None`,
    /// the default, for the interpreter, which runs every architecture's PTX).
    fn compute_capability(&self) -> Result<Option<(u32, u32)>> {
        Ok(None)
    }

    /// `map` encoded for this driver's kernels (after [`TensorMap::check`]); the default
    /// refuses, for drivers with no TMA.
    fn tensor_map(&self, map: &TensorMap) -> Result<EncodedTensorMap> {
        map.check().map_err(|e| Error::arg("tensor_map", e))?;
        Err(Error::arg(
            "tensor_map",
            format!("{} cannot encode tensor maps", self.name()),
        ))
    }

    /// A mark recorded after every launch issued so far, whose device time
    /// [`Driver::mark_ms`] can read once the work before it has run. `None` (the default)
    /// for a driver with no device clock (the interpreter, whose launches are synchronous).
    fn mark(&self) -> Result<Option<DeviceMark>> {
        Ok(None)
    }

    /// Milliseconds of device time from `start` to `end`, two of this driver's marks;
    /// waits for `end`. The default refuses (a driver without marks has none to read).
    fn mark_ms(&self, _start: &DeviceMark, _end: &DeviceMark) -> Result<f64> {
        Err(Error::arg(
            "mark_ms",
            format!("{} records no device time", self.name()),
        ))
    }

    /// Whether the device has passed `mark` (one of this driver's), without waiting; the
    /// default says yes (a driver without marks has nothing to wait for).
    fn mark_passed(&self, _mark: &DeviceMark) -> Result<bool> {
        Ok(true)
    }

    /// What the last launch did, for a driver that counts it (the interpreter); `None`
    /// (the default) otherwise.
    fn last_launch_work(&self) -> Option<LaunchWork> {
        None
    }

    /// Registers per thread `kernel` of `module` starts with, where the driver knows: what
    /// the CUDA driver allocates for the compiled kernel, or for the interpreter the launch
    /// bounds' share it models (`None` for an entry without bounds). `None`, the default,
    /// for a driver that cannot say.
    fn kernel_registers(&self, _module: &PtxModule, _kernel: &str) -> Result<Option<u32>> {
        Ok(None)
    }

    /// The launch profiler of this driver (see [`super::profile`]); every driver the
    /// registry hands out has one. `None` (the default) for a bare driver.
    fn profiler(&self) -> Option<&Profiler> {
        None
    }

    /// Begins a launch batch (see [`super::batch`]) where the driver has them: until
    /// [`Driver::end_batch`], launches may be held back and issued together, in the order
    /// they were made, while every other call sees them as issued before it (a copy, a
    /// download, a synchronisation or a mark issues them first; memory freed meanwhile is
    /// not reused before they have run). Returns whether a batch began: `false` (the
    /// default) for a driver without batches or with one already open.
    fn begin_batch(&self) -> Result<bool> {
        Ok(false)
    }

    /// Issues what the open batch holds and closes it; the held launches' errors show
    /// here. Nothing to do (the default) without an open batch.
    fn end_batch(&self) -> Result<()> {
        Ok(())
    }

    /// What this driver's batches have done, where it has them (`None`, the default,
    /// otherwise).
    fn batch_counts(&self) -> Option<BatchCounts> {
        None
    }
}

/// A driver made of another with some calls changed: a byte counter, a launch recorder. Every
/// method defaults to the same call on [`Forward::inner`], so a wrapper writes only what it
/// changes; every `Forward` is a [`Driver`].
pub trait Forward: Send + Sync {
    /// The driver the calls go to.
    fn inner(&self) -> &dyn Driver;

    /// [`Driver::name`].
    fn name(&self) -> String {
        self.inner().name()
    }
    /// [`Driver::alloc`].
    fn alloc(&self, bytes: usize) -> Result<DevicePtr> {
        self.inner().alloc(bytes)
    }
    /// [`Driver::free`].
    fn free(&self, ptr: DevicePtr) -> Result<()> {
        self.inner().free(ptr)
    }
    /// [`Driver::upload`].
    fn upload(&self, dst: DevicePtr, src: &[u8]) -> Result<()> {
        self.inner().upload(dst, src)
    }
    /// [`Driver::download`].
    fn download(&self, src: DevicePtr, dst: &mut [u8]) -> Result<()> {
        self.inner().download(src, dst)
    }
    /// [`Driver::launch`].
    fn launch(
        &self,
        module: &PtxModule,
        kernel: &str,
        config: LaunchConfig,
        args: &[KernelArg],
    ) -> Result<()> {
        self.inner().launch(module, kernel, config, args)
    }
    /// [`Driver::synchronize`].
    fn synchronize(&self) -> Result<()> {
        self.inner().synchronize()
    }
    /// [`Driver::memory`].
    fn memory(&self) -> Option<&MemoryCounter> {
        self.inner().memory()
    }
    /// [`Driver::total_memory`].
    fn total_memory(&self) -> Result<Option<u64>> {
        self.inner().total_memory()
    }
    /// [`Driver::compute_capability`].
    fn compute_capability(&self) -> Result<Option<(u32, u32)>> {
        self.inner().compute_capability()
    }
    /// [`Driver::tensor_map`].
    fn tensor_map(&self, map: &TensorMap) -> Result<EncodedTensorMap> {
        self.inner().tensor_map(map)
    }
    /// [`Driver::mark`].
    fn mark(&self) -> Result<Option<DeviceMark>> {
        self.inner().mark()
    }
    /// [`Driver::mark_ms`].
    fn mark_ms(&self, start: &DeviceMark, end: &DeviceMark) -> Result<f64> {
        self.inner().mark_ms(start, end)
    }
    /// [`Driver::mark_passed`].
    fn mark_passed(&self, mark: &DeviceMark) -> Result<bool> {
        self.inner().mark_passed(mark)
    }
    /// [`Driver::last_launch_work`].
    fn last_launch_work(&self) -> Option<LaunchWork> {
        self.inner().last_launch_work()
    }
    /// [`Driver::profiler`].
    fn profiler(&self) -> Option<&Profiler> {
        self.inner().profiler()
    }
    /// [`Driver::kernel_registers`].
    fn kernel_registers(&self, module: &PtxModule, kernel: &str) -> Result<Option<u32>> {
        self.inner().kernel_registers(module, kernel)
    }
    /// [`Driver::begin_batch`].
    fn begin_batch(&self) -> Result<bool> {
        self.inner().begin_batch()
    }
    /// [`Driver::end_batch`].
    fn end_batch(&self) -> Result<()> {
        self.inner().end_batch()
    }
    /// [`Driver::batch_counts`].
    fn batch_counts(&self) -> Option<BatchCounts> {
        self.inner().batch_counts()
    }
}

impl<T: Forward> Driver for T {
    fn name(&self) -> String {
        Forward::name(self)
    }
    fn alloc(&self, bytes: usize) -> Result<DevicePtr> {
        Forward::alloc(self, bytes)
    }
    fn free(&self, ptr: DevicePtr) -> Result<()> {
        Forward::free(self, ptr)
    }
    fn upload(&self, dst: DevicePtr, src: &[u8]) -> Result<()> {
        Forward::upload(self, dst, src)
    }
    fn download(&self, src: DevicePtr, dst: &mut [u8]) -> Result<()> {
        Forward::download(self, src, dst)
    }
    fn launch(
        &self,
        module: &PtxModule,
        kernel: &str,
        config: LaunchConfig,
        args: &[KernelArg],
    ) -> Result<()> {
        Forward::launch(self, module, kernel, config, args)
    }
    fn synchronize(&self) -> Result<()> {
        Forward::synchronize(self)
    }
    fn memory(&self) -> Option<&MemoryCounter> {
        Forward::memory(self)
    }
    fn total_memory(&self) -> Result<Option<u64>> {
        Forward::total_memory(self)
    }
    fn compute_capability(&self) -> Result<Option<(u32, u32)>> {
        Forward::compute_capability(self)
    }
    fn tensor_map(&self, map: &TensorMap) -> Result<EncodedTensorMap> {
        Forward::tensor_map(self, map)
    }
    fn mark(&self) -> Result<Option<DeviceMark>> {
        Forward::mark(self)
    }
    fn mark_ms(&self, start: &DeviceMark, end: &DeviceMark) -> Result<f64> {
        Forward::mark_ms(self, start, end)
    }
    fn mark_passed(&self, mark: &DeviceMark) -> Result<bool> {
        Forward::mark_passed(self, mark)
    }
    fn last_launch_work(&self) -> Option<LaunchWork> {
        Forward::last_launch_work(self)
    }
    fn profiler(&self) -> Option<&Profiler> {
        Forward::profiler(self)
    }
    fn kernel_registers(&self, module: &PtxModule, kernel: &str) -> Result<Option<u32>> {
        Forward::kernel_registers(self, module, kernel)
    }
    fn begin_batch(&self) -> Result<bool> {
        Forward::begin_batch(self)
    }
    fn end_batch(&self) -> Result<()> {
        Forward::end_batch(self)
    }
    fn batch_counts(&self) -> Option<BatchCounts> {
        Forward::batch_counts(self)
    }
}
