//! The CUDA driver behind the [`Driver`] interface, through cudarc.
//!
//! cudarc loads `libcuda` at run time (no link-time dependency, so the crate builds with no
//! CUDA installed) and panics when the library is absent; [`CudaDriver::new`] probes for it
//! first, so a missing driver, a missing GPU or a driver too old for the PTX is an
//! [`Error::Device`] that says what is needed. Without the `cuda` feature the same function
//! returns that error, so callers need no `cfg`.
//!
//! One context (the device's primary context) and one stream per driver; launches and copies
//! run in stream order. Freed memory is kept in a cache by size and reused, since a training
//! step allocates the same activation sizes every step.

use super::driver::{DevicePtr, Driver, KernelArg, LaunchConfig, PtxModule};
#[cfg(feature = "cuda")]
use super::{driver::EncodedTensorMap, tensor_map::TensorMap};
use crate::error::{Error, Result};

/// The minimum driver for the committed PTX (ISA 9.0, written by nvcc 13.0).
pub const DRIVER_REQUIREMENT: &str = "an NVIDIA driver of release 580 or newer (CUDA 13)";

fn unavailable(detail: impl Into<String>) -> Error {
    Error::Device {
        op: "cuda",
        detail: detail.into(),
    }
}

/// A CUDA device, opened once and shared.
pub struct CudaDriver {
    #[cfg(feature = "cuda")]
    inner: imp::Inner,
    #[cfg(not(feature = "cuda"))]
    _never: std::convert::Infallible,
}

impl CudaDriver {
    /// Opens device `ordinal`: loads the driver library, checks the device exists, retains
    /// its primary context and creates a stream.
    pub fn new(ordinal: usize) -> Result<Self> {
        #[cfg(feature = "cuda")]
        {
            imp::Inner::new(ordinal).map(|inner| CudaDriver { inner })
        }
        #[cfg(not(feature = "cuda"))]
        {
            Err(unavailable(format!(
                "cuda:{ordinal}: this build has no CUDA backend (rebuild with `--features cuda`; \
                 running it needs {DRIVER_REQUIREMENT})"
            )))
        }
    }

    /// Whether the CUDA driver library can be loaded on this machine (always false without
    /// the `cuda` feature). A true answer does not promise a GPU: [`CudaDriver::new`] says.
    pub fn library_present() -> bool {
        #[cfg(feature = "cuda")]
        {
            imp::library_present()
        }
        #[cfg(not(feature = "cuda"))]
        {
            false
        }
    }
}

#[cfg(not(feature = "cuda"))]
impl Driver for CudaDriver {
    fn name(&self) -> String {
        match self._never {}
    }
    fn alloc(&self, _: usize) -> Result<DevicePtr> {
        match self._never {}
    }
    fn free(&self, _: DevicePtr) -> Result<()> {
        match self._never {}
    }
    fn upload(&self, _: DevicePtr, _: &[u8]) -> Result<()> {
        match self._never {}
    }
    fn download(&self, _: DevicePtr, _: &mut [u8]) -> Result<()> {
        match self._never {}
    }
    fn launch(&self, _: &PtxModule, _: &str, _: LaunchConfig, _: &[KernelArg]) -> Result<()> {
        match self._never {}
    }
    fn synchronize(&self) -> Result<()> {
        match self._never {}
    }
}

#[cfg(feature = "cuda")]
impl Driver for CudaDriver {
    fn name(&self) -> String {
        self.inner.name.clone()
    }
    fn alloc(&self, bytes: usize) -> Result<DevicePtr> {
        self.inner.alloc(bytes)
    }
    fn free(&self, ptr: DevicePtr) -> Result<()> {
        self.inner.free(ptr)
    }
    fn upload(&self, dst: DevicePtr, src: &[u8]) -> Result<()> {
        self.inner.upload(dst, src)
    }
    fn download(&self, src: DevicePtr, dst: &mut [u8]) -> Result<()> {
        self.inner.download(src, dst)
    }
    fn launch(
        &self,
        module: &PtxModule,
        kernel: &str,
        config: LaunchConfig,
        args: &[KernelArg],
    ) -> Result<()> {
        self.inner.launch(module, kernel, config, args)
    }
    fn synchronize(&self) -> Result<()> {
        self.inner.synchronize()
    }
    fn total_memory(&self) -> Result<Option<u64>> {
        self.inner.total_memory().map(Some)
    }
    fn compute_capability(&self) -> Result<Option<(u32, u32)>> {
        self.inner.compute_capability().map(Some)
    }
    fn tensor_map(&self, map: &TensorMap) -> Result<EncodedTensorMap> {
        map.check().map_err(|e| Error::arg("tensor_map", e))?;
        self.inner.tensor_map(map)
    }
    fn mark(&self) -> Result<Option<super::driver::DeviceMark>> {
        self.inner.mark().map(Some)
    }
    fn mark_ms(
        &self,
        start: &super::driver::DeviceMark,
        end: &super::driver::DeviceMark,
    ) -> Result<f64> {
        self.inner.mark_ms(start, end)
    }
    fn kernel_registers(&self, module: &PtxModule, kernel: &str) -> Result<Option<u32>> {
        self.inner.kernel_registers(module, kernel).map(Some)
    }
    fn mark_passed(&self, mark: &super::driver::DeviceMark) -> Result<bool> {
        self.inner.mark_passed(mark)
    }
    fn begin_batch(&self) -> Result<bool> {
        Ok(self.inner.begin_batch())
    }
    fn end_batch(&self) -> Result<()> {
        self.inner.end_batch()
    }
    fn batch_counts(&self) -> Option<super::batch::BatchCounts> {
        Some(self.inner.batch_counts())
    }
}

#[cfg(feature = "cuda")]
mod imp {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use cudarc::driver::sys::{self, cudaError_enum as Cu};
    use cudarc::driver::{
        result, CudaContext, CudaEvent, CudaFunction, CudaModule, CudaStream, DeviceRepr,
        PushKernelArg,
    };
    use cudarc::driver::{DriverError, LaunchConfig as CuLaunch};
    use cudarc::nvrtc::Ptx;

    use super::{unavailable, DRIVER_REQUIREMENT};
    use crate::error::{Error, Result};
    use crate::gpu::batch::{BatchCounts, GraphCache, GraphPlan, HeldLaunch};
    use crate::gpu::driver::{
        DeviceMark, DevicePtr, EncodedTensorMap, KernelArg, LaunchConfig, PtxModule,
    };
    use crate::gpu::pool::{size_class, BufferCache};
    use crate::gpu::tensor_map::{Swizzle, TensorMap, TENSOR_MAP_BYTES};

    pub(super) fn library_present() -> bool {
        // SAFETY: the probe only tries to dlopen the library and reports whether it could.
        unsafe { sys::is_culib_present() }
    }

    /// The error for a failed driver call, with what to do about the common ones.
    fn driver_error(what: &str, e: DriverError) -> Error {
        let hint = match e.0 {
            Cu::CUDA_ERROR_UNSUPPORTED_PTX_VERSION => {
                format!(" (the kernels need {DRIVER_REQUIREMENT})")
            }
            Cu::CUDA_ERROR_STUB_LIBRARY => {
                format!(" (the libcuda found is the toolkit's stub; install {DRIVER_REQUIREMENT})")
            }
            Cu::CUDA_ERROR_NO_DEVICE => " (no CUDA GPU is visible to this process)".to_string(),
            Cu::CUDA_ERROR_INVALID_DEVICE => " (no GPU has this ordinal)".to_string(),
            Cu::CUDA_ERROR_OUT_OF_MEMORY => " (out of GPU memory)".to_string(),
            _ => String::new(),
        };
        unavailable(format!("{what}: {e}{hint}"))
    }

    pub(super) struct Inner {
        pub(super) name: String,
        ctx: Arc<CudaContext>,
        stream: Arc<CudaStream>,
        modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
        functions: Mutex<HashMap<(&'static str, String), CudaFunction>>,
        /// The dynamic shared memory each kernel has been allowed beyond the default 48 KiB.
        shared_opt_in: Mutex<HashMap<(&'static str, String), u32>>,
        pool: Mutex<BufferCache>,
        /// (major, minor), read once at open: the GEMM wrappers ask on every launch.
        capability: (u32, u32),
        batch: Mutex<Batch>,
    }

    /// The open launch batch, if any, and the graphs kept for batches (see
    /// [`crate::gpu::batch`]).
    #[derive(Default)]
    struct Batch {
        open: bool,
        held: Vec<HeldLaunch>,
        /// The function of each held launch.
        functions: Vec<CudaFunction>,
        plans: GraphCache,
        /// The graph of each of `plans`' slots.
        graphs: Vec<Option<Graph>>,
    }

    /// An instantiated graph: a chain of kernel nodes, each after the one before.
    struct Graph {
        graph: sys::CUgraph,
        exec: sys::CUgraphExec,
        nodes: Vec<sys::CUgraphNode>,
    }

    // SAFETY: the handles are only used under the batch mutex, and the driver API may be
    // called from any thread once the context is bound.
    unsafe impl Send for Graph {}

    impl Drop for Graph {
        fn drop(&mut self) {
            // SAFETY: both handles came from this graph's creation (the executable one is null
            // when instantiation did not happen) and are destroyed once; an executable graph
            // still running is freed by the driver when it completes.
            unsafe {
                if !self.exec.is_null() {
                    let _ = sys::cuGraphExecDestroy(self.exec);
                }
                let _ = sys::cuGraphDestroy(self.graph);
            }
        }
    }

    /// One kernel parameter's bytes where a node's parameter array can point: 64-byte
    /// aligned and as large as the largest parameter (a tensor map).
    #[repr(C, align(64))]
    struct ParamSlot([u8; TENSOR_MAP_BYTES]);

    /// The parameter array of a node for `held`: the returned slots must outlive every use
    /// of the returned pointers, which point into them.
    fn node_params(held: &HeldLaunch) -> (Vec<ParamSlot>, Vec<*mut std::ffi::c_void>) {
        let mut slots: Vec<ParamSlot> = held
            .param_bytes()
            .map(|bytes| {
                let mut slot = ParamSlot([0; TENSOR_MAP_BYTES]);
                slot.0[..bytes.len()].copy_from_slice(bytes);
                slot
            })
            .collect();
        let ptrs = slots
            .iter_mut()
            .map(|s| s.0.as_mut_ptr().cast::<std::ffi::c_void>())
            .collect();
        (slots, ptrs)
    }

    fn kernel_node(
        f: &CudaFunction,
        config: &LaunchConfig,
        ptrs: &mut [*mut std::ffi::c_void],
    ) -> sys::CUDA_KERNEL_NODE_PARAMS {
        sys::CUDA_KERNEL_NODE_PARAMS {
            func: f.cu_function(),
            gridDimX: config.grid.0,
            gridDimY: config.grid.1,
            gridDimZ: config.grid.2,
            blockDimX: config.block.0,
            blockDimY: config.block.1,
            blockDimZ: config.block.2,
            sharedMemBytes: config.shared_bytes,
            kernelParams: ptrs.as_mut_ptr(),
            extra: std::ptr::null_mut(),
            kern: std::ptr::null_mut(),
            ctx: std::ptr::null_mut(),
        }
    }

    /// Dynamic shared memory a launch gets without asking (`cuFuncSetAttribute`).
    const DEFAULT_DYNAMIC_SHARED: u32 = 48 * 1024;

    impl Inner {
        pub(super) fn new(ordinal: usize) -> Result<Self> {
            if !library_present() {
                return Err(unavailable(format!(
                    "cuda:{ordinal}: the CUDA driver library (libcuda.so) is not installed or \
                     not on the library path; a GPU needs {DRIVER_REQUIREMENT}"
                )));
            }
            let count = CudaContext::device_count()
                .map_err(|e| driver_error(&format!("cuda:{ordinal}"), e))?;
            if ordinal >= count.max(0) as usize {
                return Err(unavailable(format!(
                    "cuda:{ordinal}: this machine has {count} CUDA device(s)"
                )));
            }
            let ctx = CudaContext::new(ordinal)
                .map_err(|e| driver_error(&format!("cuda:{ordinal}"), e))?;
            let name = ctx.name().unwrap_or_else(|_| "unknown GPU".to_string());
            let (major, minor) = ctx
                .compute_capability()
                .map_err(|e| driver_error(&format!("cuda:{ordinal}: compute capability"), e))?;
            let stream = ctx
                .new_stream()
                .map_err(|e| driver_error(&format!("cuda:{ordinal}: stream"), e))?;
            Ok(Inner {
                name: format!("cuda:{ordinal} ({name})"),
                ctx,
                stream,
                modules: Mutex::new(HashMap::new()),
                functions: Mutex::new(HashMap::new()),
                shared_opt_in: Mutex::new(HashMap::new()),
                pool: Mutex::new(BufferCache::new()),
                capability: (major.max(0) as u32, minor.max(0) as u32),
                batch: Mutex::new(Batch::default()),
            })
        }

        fn bind(&self) -> Result<()> {
            self.ctx
                .bind_to_thread()
                .map_err(|e| driver_error(&self.name, e))
        }

        pub(super) fn alloc(&self, bytes: usize) -> Result<DevicePtr> {
            let class = size_class(bytes);
            let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(p) = pool.reuse(class) {
                return Ok(DevicePtr(p));
            }
            self.bind()?;
            // SAFETY: the stream belongs to this context, bound above; the memory is handed
            // out uninitialised, as `Driver::alloc` documents.
            let p = match unsafe { result::malloc_async(self.stream.cu_stream(), class) } {
                Ok(p) => p,
                Err(_) => {
                    // Out of memory with buffers cached: give them back and try once more
                    // (after the held launches, which may still use them).
                    self.issue_held()?;
                    for q in pool.drain_cached() {
                        // SAFETY: cached pointers came from malloc_async and are not live.
                        unsafe { result::free_async(q, self.stream.cu_stream()) }
                            .map_err(|e| driver_error(&self.name, e))?;
                    }
                    // SAFETY: as above.
                    unsafe { result::malloc_async(self.stream.cu_stream(), class) }.map_err(
                        |e| driver_error(&format!("{}: allocating {bytes} bytes", self.name), e),
                    )?
                }
            };
            pool.insert(p, class);
            Ok(DevicePtr(p))
        }

        pub(super) fn free(&self, ptr: DevicePtr) -> Result<()> {
            let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            // Stream order makes reuse safe: a later launch that gets this buffer runs after
            // every launch that used it.
            pool.release(ptr.0).ok_or_else(|| {
                unavailable(format!(
                    "{}: free of {:#x}, not a live allocation",
                    self.name, ptr.0
                ))
            })?;
            Ok(())
        }

        /// Checks that `[ptr, ptr + len)` lies inside one live allocation.
        fn check_range(&self, what: &str, ptr: DevicePtr, len: usize) -> Result<()> {
            let pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            if pool.contains(ptr.0, len) {
                Ok(())
            } else {
                Err(unavailable(format!(
                    "{}: {what} of {len} bytes at {:#x} is outside every allocation",
                    self.name, ptr.0
                )))
            }
        }

        pub(super) fn upload(&self, dst: DevicePtr, src: &[u8]) -> Result<()> {
            self.check_range("upload", dst, src.len())?;
            self.issue_held()?;
            self.bind()?;
            // On the driver's stream, not the legacy default one (`memcpy_htod_sync`): the
            // stream is non-blocking, so a copy on the default stream would be ordered neither
            // after the queued launches that still read a recycled buffer nor before the
            // launches that read the new data.
            // SAFETY: the range was checked against a live allocation. `src` is pageable
            // (never registered with the driver), and from pageable memory the driver stages
            // the bytes before the call returns, so `src` may go as soon as it does.
            unsafe { result::memcpy_htod_async(dst.0, src, self.stream.cu_stream()) }
                .map_err(|e| driver_error(&format!("{}: upload", self.name), e))?;
            Ok(())
        }

        pub(super) fn download(&self, src: DevicePtr, dst: &mut [u8]) -> Result<()> {
            self.check_range("download", src, dst.len())?;
            self.issue_held()?;
            self.bind()?;
            // SAFETY: the range was checked; the copy is queued after every launch that
            // writes it, and `dst` is not touched again until the stream has drained.
            unsafe { result::memcpy_dtoh_async(dst, src.0, self.stream.cu_stream()) }
                .map_err(|e| driver_error(&format!("{}: download", self.name), e))?;
            self.synchronize()
        }

        fn function(&self, module: &PtxModule, kernel: &str) -> Result<CudaFunction> {
            let key = (module.name, kernel.to_string());
            if let Some(f) = self
                .functions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&key)
            {
                return Ok(f.clone());
            }
            let m = {
                let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
                match modules.get(module.name) {
                    Some(m) => m.clone(),
                    None => {
                        let m = self
                            .ctx
                            .load_module(Ptx::from_src(module.ptx))
                            .map_err(|e| {
                                driver_error(
                                    &format!("{}: loading ptx/{}.ptx", self.name, module.name),
                                    e,
                                )
                            })?;
                        modules.insert(module.name, m.clone());
                        m
                    }
                }
            };
            let f = m.load_function(kernel).map_err(|e| {
                driver_error(
                    &format!("{}: kernel {kernel} in ptx/{}.ptx", self.name, module.name),
                    e,
                )
            })?;
            self.functions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key, f.clone());
            Ok(f)
        }

        pub(super) fn launch(
            &self,
            module: &PtxModule,
            kernel: &str,
            config: LaunchConfig,
            args: &[KernelArg],
        ) -> Result<()> {
            let f = self.function(module, kernel)?;
            if config.shared_bytes > DEFAULT_DYNAMIC_SHARED {
                self.allow_shared(&f, module, kernel, config.shared_bytes)?;
            }
            {
                let mut b = self.batch.lock().unwrap_or_else(|e| e.into_inner());
                if b.open {
                    b.held.push(HeldLaunch::new(module, kernel, config, args));
                    b.functions.push(f);
                    return Ok(());
                }
            }
            // Each argument's bytes live in this vector until the launch call returns (the
            // driver copies parameters at launch).
            let values: Vec<ArgValue> = args.iter().map(|&a| ArgValue::from(a)).collect();
            let mut b = self.stream.launch_builder(&f);
            for v in &values {
                match v {
                    ArgValue::U32(x) => b.arg(x),
                    ArgValue::U64(x) => b.arg(x),
                    ArgValue::F32(x) => b.arg(x),
                    ArgValue::F64(x) => b.arg(x),
                    ArgValue::TensorMap(x) => b.arg(x),
                };
            }
            let cfg = CuLaunch {
                grid_dim: config.grid,
                block_dim: config.block,
                shared_mem_bytes: config.shared_bytes,
            };
            // SAFETY: the typed wrappers in gpu::kernels pack exactly the kernel's parameters
            // (tested against the PTX `.entry` signatures), pointers come from this driver's
            // allocator, and sizes were validated by the wrapper.
            unsafe { b.launch(cfg) }
                .map(|_| ())
                .map_err(|e| driver_error(&format!("{}: launch of {kernel}", self.name), e))
        }

        /// Raises `kernel`'s dynamic shared memory limit to `bytes` (a launch past 48 KiB
        /// fails without it), once per kernel and size.
        fn allow_shared(
            &self,
            f: &CudaFunction,
            module: &PtxModule,
            kernel: &str,
            bytes: u32,
        ) -> Result<()> {
            let key = (module.name, kernel.to_string());
            let mut allowed = self.shared_opt_in.lock().unwrap_or_else(|e| e.into_inner());
            if allowed.get(&key).is_some_and(|&b| b >= bytes) {
                return Ok(());
            }
            self.bind()?;
            f.set_attribute(
                sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                bytes as i32,
            )
            .map_err(|e| {
                driver_error(
                    &format!(
                        "{}: {kernel} asks for {bytes} bytes of dynamic shared memory",
                        self.name
                    ),
                    e,
                )
            })?;
            allowed.insert(key, bytes);
            Ok(())
        }

        pub(super) fn total_memory(&self) -> Result<u64> {
            self.bind()?;
            let (_free, total) = result::mem_get_info()
                .map_err(|e| driver_error(&format!("{}: memory size", self.name), e))?;
            Ok(total as u64)
        }

        pub(super) fn compute_capability(&self) -> Result<(u32, u32)> {
            Ok(self.capability)
        }

        /// `cuTensorMapEncodeTiled` of a checked map: elements as unsigned integers of
        /// their width (a copy moves bits), no interleave, zeros outside the tensor.
        pub(super) fn tensor_map(&self, map: &TensorMap) -> Result<EncodedTensorMap> {
            use sys::CUtensorMapDataType_enum as T;
            use sys::CUtensorMapSwizzle_enum as S;
            let ty = match map.elem_bytes {
                1 => T::CU_TENSOR_MAP_DATA_TYPE_UINT8,
                2 => T::CU_TENSOR_MAP_DATA_TYPE_UINT16,
                4 => T::CU_TENSOR_MAP_DATA_TYPE_UINT32,
                _ => T::CU_TENSOR_MAP_DATA_TYPE_UINT64,
            };
            let swizzle = match map.swizzle {
                Swizzle::None => S::CU_TENSOR_MAP_SWIZZLE_NONE,
                Swizzle::B32 => S::CU_TENSOR_MAP_SWIZZLE_32B,
                Swizzle::B64 => S::CU_TENSOR_MAP_SWIZZLE_64B,
                Swizzle::B128 => S::CU_TENSOR_MAP_SWIZZLE_128B,
            };
            let rank = map.dims.len();
            let ones = [1u32; 5];
            let mut out = sys::CUtensorMap { opaque: [0; 16] };
            self.bind()?;
            // SAFETY: every array holds `rank` entries (`rank - 1` strides), as checked by
            // TensorMap::check, and `out` is a properly aligned CUtensorMap.
            let r = unsafe {
                sys::cuTensorMapEncodeTiled(
                    &mut out,
                    ty,
                    rank as u32,
                    map.base as *mut std::ffi::c_void,
                    map.dims.as_ptr(),
                    map.strides.as_ptr(),
                    map.boxes.as_ptr(),
                    ones.as_ptr(),
                    sys::CUtensorMapInterleave_enum::CU_TENSOR_MAP_INTERLEAVE_NONE,
                    swizzle,
                    sys::CUtensorMapL2promotion_enum::CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
                    sys::CUtensorMapFloatOOBfill_enum::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
                )
            };
            r.result()
                .map_err(|e| driver_error(&format!("{}: cuTensorMapEncodeTiled", self.name), e))?;
            let mut bytes = [0u8; TENSOR_MAP_BYTES];
            for (i, w) in out.opaque.iter().enumerate() {
                bytes[8 * i..8 * i + 8].copy_from_slice(&w.to_le_bytes());
            }
            Ok(EncodedTensorMap(bytes))
        }

        pub(super) fn begin_batch(&self) -> bool {
            let mut b = self.batch.lock().unwrap_or_else(|e| e.into_inner());
            !std::mem::replace(&mut b.open, true)
        }

        pub(super) fn end_batch(&self) -> Result<()> {
            let issued = self.issue_held();
            self.batch.lock().unwrap_or_else(|e| e.into_inner()).open = false;
            issued
        }

        pub(super) fn batch_counts(&self) -> BatchCounts {
            self.batch
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .plans
                .counts()
        }

        /// Issues the launches the open batch holds as one graph: a kept graph with the
        /// same kernels in the same order, its changed nodes patched, or a new one.
        fn issue_held(&self) -> Result<()> {
            let mut b = self.batch.lock().unwrap_or_else(|e| e.into_inner());
            if b.held.is_empty() {
                return Ok(());
            }
            let held = std::mem::take(&mut b.held);
            let functions = std::mem::take(&mut b.functions);
            let (count, first) = (held.len(), held[0].kernel.clone());
            self.bind()?;
            let Batch { plans, graphs, .. } = &mut *b;
            let plan = plans.plan(held);
            let slot = match &plan {
                GraphPlan::Build { slot } | GraphPlan::Patch { slot, .. } => *slot,
            };
            if graphs.len() <= slot {
                graphs.resize_with(slot + 1, || None);
            }
            let held = plans.launches(slot);
            let ran = match (plan, &graphs[slot]) {
                (GraphPlan::Patch { nodes, .. }, Some(g)) => {
                    Self::patch(g, held, &functions, &nodes).and_then(|()| self.run(g))
                }
                _ => {
                    graphs[slot] = None;
                    Self::build(held, &functions).and_then(|g| {
                        let ran = self.run(&g);
                        graphs[slot] = Some(g);
                        ran
                    })
                }
            };
            ran.map_err(|e| {
                plans.forget(slot);
                graphs[slot] = None;
                driver_error(
                    &format!(
                        "{}: a launch batch of {count} kernels ({first} first) as a CUDA \
                         graph (unset {} to launch them one by one)",
                        self.name,
                        crate::gpu::batch::GRAPHS_ENV
                    ),
                    e,
                )
            })
        }

        /// A graph of `held` as a chain of kernel nodes, instantiated.
        fn build(
            held: &[HeldLaunch],
            functions: &[CudaFunction],
        ) -> std::result::Result<Graph, DriverError> {
            let mut graph: sys::CUgraph = std::ptr::null_mut();
            // SAFETY: an out-pointer for a new graph, flags 0 as documented.
            unsafe { sys::cuGraphCreate(&mut graph, 0) }.result()?;
            let mut g = Graph {
                graph,
                exec: std::ptr::null_mut(),
                nodes: Vec::with_capacity(held.len()),
            };
            for (h, f) in held.iter().zip(functions) {
                let (_slots, mut ptrs) = node_params(h);
                let params = kernel_node(f, &h.config, &mut ptrs);
                let deps: &[sys::CUgraphNode] = match g.nodes.last() {
                    Some(prev) => std::slice::from_ref(prev),
                    None => &[],
                };
                let mut node: sys::CUgraphNode = std::ptr::null_mut();
                // SAFETY: the parameters point into `_slots` and `ptrs`, alive across the
                // call (the driver copies them); the dependency is a node of this graph.
                unsafe {
                    sys::cuGraphAddKernelNode_v2(
                        &mut node,
                        g.graph,
                        deps.as_ptr(),
                        deps.len(),
                        &params,
                    )
                }
                .result()?;
                g.nodes.push(node);
            }
            // SAFETY: a complete graph of this context; flags 0.
            unsafe { sys::cuGraphInstantiateWithFlags(&mut g.exec, g.graph, 0) }.result()?;
            Ok(g)
        }

        /// Sets the parameters and grid of `g`'s nodes `nodes` to those of `held`.
        fn patch(
            g: &Graph,
            held: &[HeldLaunch],
            functions: &[CudaFunction],
            nodes: &[usize],
        ) -> std::result::Result<(), DriverError> {
            for &i in nodes {
                let (_slots, mut ptrs) = node_params(&held[i]);
                let params = kernel_node(&functions[i], &held[i].config, &mut ptrs);
                // SAFETY: node i of this executable graph's template is a kernel node of the
                // same function; the parameters are copied by the call. Launches of the
                // graph already queued keep their parameters.
                unsafe { sys::cuGraphExecKernelNodeSetParams_v2(g.exec, g.nodes[i], &params) }
                    .result()?;
            }
            Ok(())
        }

        fn run(&self, g: &Graph) -> std::result::Result<(), DriverError> {
            // SAFETY: an executable graph of this context, on this context's stream.
            unsafe { sys::cuGraphLaunch(g.exec, self.stream.cu_stream()) }.result()
        }

        pub(super) fn synchronize(&self) -> Result<()> {
            self.issue_held()?;
            self.stream
                .synchronize()
                .map_err(|e| driver_error(&format!("{}: a kernel failed", self.name), e))
        }

        /// Registers per thread the driver allocates for `kernel` (loading it if needed).
        pub(super) fn kernel_registers(&self, module: &PtxModule, kernel: &str) -> Result<u32> {
            let f = self.function(module, kernel)?;
            let n = f
                .num_regs()
                .map_err(|e| driver_error(&format!("{}: registers of {kernel}", self.name), e))?;
            Ok(n.max(0) as u32)
        }

        /// An event with timing on the stream, after everything issued so far.
        pub(super) fn mark(&self) -> Result<DeviceMark> {
            self.issue_held()?;
            self.bind()?;
            let e = self
                .stream
                .record_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(|e| driver_error(&format!("{}: event", self.name), e))?;
            Ok(DeviceMark(Box::new(e)))
        }

        pub(super) fn mark_passed(&self, mark: &DeviceMark) -> Result<bool> {
            Self::event(&self.name, mark)?
                .try_is_complete()
                .map_err(|e| driver_error(&format!("{}: event query", self.name), e))
        }

        fn event<'a>(name: &str, m: &'a DeviceMark) -> Result<&'a CudaEvent> {
            m.0.downcast_ref::<CudaEvent>().ok_or_else(|| {
                Error::arg(
                    "device mark",
                    format!("{name}: a mark that this driver did not make"),
                )
            })
        }

        pub(super) fn mark_ms(&self, start: &DeviceMark, end: &DeviceMark) -> Result<f64> {
            Self::event(&self.name, start)?
                .elapsed_ms(Self::event(&self.name, end)?)
                .map(f64::from)
                .map_err(|e| driver_error(&format!("{}: event time", self.name), e))
        }
    }

    enum ArgValue {
        U32(u32),
        U64(u64),
        F32(f32),
        F64(f64),
        TensorMap(TensorMapParam),
    }

    /// A tensor map as the 128-byte, 64-byte-aligned kernel parameter it is.
    #[repr(C, align(64))]
    struct TensorMapParam([u8; TENSOR_MAP_BYTES]);

    // SAFETY: plain bytes with the layout of the kernel's `.param .align 64 .b8 [128]`.
    unsafe impl DeviceRepr for TensorMapParam {}

    impl From<KernelArg> for ArgValue {
        fn from(a: KernelArg) -> Self {
            match a {
                KernelArg::Ptr(p) => ArgValue::U64(p.0),
                KernelArg::U32(v) => ArgValue::U32(v),
                KernelArg::U64(v) => ArgValue::U64(v),
                KernelArg::F32(v) => ArgValue::F32(v),
                KernelArg::F64(v) => ArgValue::F64(v),
                KernelArg::TensorMap(m) => ArgValue::TensorMap(TensorMapParam(m.0)),
            }
        }
    }

    impl Drop for Inner {
        fn drop(&mut self) {
            let batch = self.batch.get_mut().unwrap_or_else(|e| e.into_inner());
            batch.graphs.clear();
            let pool = self.pool.get_mut().unwrap_or_else(|e| e.into_inner());
            let stream = self.stream.cu_stream();
            for p in pool.drain_all() {
                // SAFETY: every pointer came from malloc_async on this stream; the driver is
                // being dropped, so no tensor refers to it any more.
                let _ = unsafe { result::free_async(p, stream) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opening_without_a_gpu_is_an_error_not_a_panic() {
        // On a machine with a working GPU this opens it; everywhere else it must say why not.
        match CudaDriver::new(0) {
            Ok(d) => assert!(d.name().starts_with("cuda:0")),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains("cuda"), "{msg}");
                if !CudaDriver::library_present() {
                    assert!(
                        msg.contains("580") || msg.contains("--features cuda"),
                        "{msg}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_missing_ordinal_is_an_error() {
        let e = CudaDriver::new(1 << 20)
            .err()
            .expect("no machine has 2^20 GPUs");
        assert!(e.to_string().contains("cuda:1048576"), "{e}");
    }
}
