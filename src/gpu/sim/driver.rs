//! [`PtxSim`]: the PTX interpreter as a [`Driver`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::counters::Counters;
use super::exec::{Fault, Launch};
use super::ir::{Kernel, Module};
use super::memory::{GlobalMem, SharedMem};
use super::parse::parse_module;
use crate::error::{Error, Result};
use crate::gpu::batch::{BatchCounts, GraphCache, HeldLaunch};
use crate::gpu::driver::{
    DevicePtr, Driver, EncodedTensorMap, KernelArg, LaunchConfig, LaunchWork, PtxModule,
};
use crate::gpu::tensor_map::TensorMap;

/// Most threads per CTA.
const MAX_THREADS: u32 = 1024;
/// Most shared memory per CTA (sm_90's 227 KiB).
const MAX_SHARED: u32 = 227 * 1024;

#[derive(Default)]
struct Inner {
    mem: GlobalMem,
    /// Parsed modules by name, with the text they were parsed from.
    modules: HashMap<String, (&'static str, Arc<Module>)>,
    last: Option<Counters>,
}

/// The PTX interpreter: a device whose global memory is host memory and whose launches run
/// the committed PTX on the CPU, with sanitizer checks (bounds, alignment, uninitialised
/// registers, cp.async completion, shared-memory races) on every access. Launches are
/// synchronous: `launch` returns when the kernel has finished, with any fault as `Err`.
#[derive(Default)]
pub struct PtxSim {
    inner: Mutex<Inner>,
    batch: Mutex<SimBatch>,
}

/// An open launch batch (see [`crate::gpu::batch`]): launches and frees held until it is
/// issued, when the launches run in order and then the memory is freed.
#[derive(Default)]
struct SimBatch {
    open: bool,
    held: Vec<HeldLaunch>,
    frees: Vec<DevicePtr>,
    /// Which batches a CUDA driver would build a graph for and which nodes it would patch,
    /// for [`Driver::batch_counts`].
    graphs: GraphCache,
}

fn dev_err(detail: impl Into<String>) -> Error {
    Error::Device {
        op: "ptx-sim",
        detail: detail.into(),
    }
}

impl PtxSim {
    /// A fresh interpreter with no memory allocated and no module loaded.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave memory half-updated in a way that
        // matters more than the panic itself; keep going with the data.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn batch(&self) -> MutexGuard<'_, SimBatch> {
        self.batch.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs the launches and frees the open batch holds (the batch stays open).
    fn issue_held(&self) -> Result<()> {
        let (held, frees) = {
            let mut b = self.batch();
            if b.held.is_empty() && b.frees.is_empty() {
                return Ok(());
            }
            let held = std::mem::take(&mut b.held);
            if !held.is_empty() {
                b.graphs.plan(held.clone());
            }
            (held, std::mem::take(&mut b.frees))
        };
        let ran = held
            .iter()
            .try_for_each(|h| self.run(&h.module, &h.kernel, h.config, &h.args()));
        let mut inner = self.lock();
        for p in frees {
            inner.mem.free(p.0).map_err(dev_err)?;
        }
        ran
    }

    /// The counters of the last launch, if it succeeded.
    pub fn last_counters(&self) -> Option<Counters> {
        self.lock().last
    }

    fn module(inner: &mut Inner, m: &PtxModule) -> Result<Arc<Module>> {
        if let Some((text, parsed)) = inner.modules.get(m.name) {
            if std::ptr::eq(*text, m.ptx) || *text == m.ptx {
                return Ok(parsed.clone());
            }
        }
        // The module's variables go in an allocation of their own at the next address.
        let base = inner.mem.next_base();
        let parsed = Arc::new(parse_module(
            m.ptx,
            &format!("ptx module {}", m.name),
            base,
        )?);
        if !parsed.data.is_empty() {
            let at = inner.mem.alloc(parsed.data.len());
            debug_assert_eq!(at, base);
            inner
                .mem
                .write(at, &parsed.data)
                .map_err(|e| dev_err(format!("module {} variables: {e}", m.name)))?;
        }
        inner
            .modules
            .insert(m.name.to_string(), (m.ptx, parsed.clone()));
        Ok(parsed)
    }
}

/// The entry `kernel` of the parsed `module`, or an error for `op` naming the ones it has.
fn kernel_of<'m>(
    m: &'m Module,
    module: &PtxModule,
    kernel: &str,
    op: &'static str,
) -> Result<&'m Kernel> {
    m.kernels.get(kernel).ok_or_else(|| {
        let mut names: Vec<&String> = m.kernels.keys().collect();
        names.sort();
        Error::arg(
            op,
            format!(
                "module {} has no kernel {kernel} (it has {names:?})",
                module.name
            ),
        )
    })
}

fn check_args(k: &Kernel, args: &[KernelArg]) -> Result<Vec<u8>> {
    if args.len() != k.params.len() {
        return Err(Error::arg(
            "ptx-sim launch",
            format!(
                "kernel {} takes {} parameters, given {}",
                k.name,
                k.params.len(),
                args.len()
            ),
        ));
    }
    let mut buf = vec![0u8; k.param_bytes as usize];
    for (p, a) in k.params.iter().zip(args) {
        let bytes = a.to_bytes();
        if bytes.len() != p.size as usize {
            return Err(Error::arg(
                "ptx-sim launch",
                format!(
                    "kernel {} parameter {} is {} bytes, given {a:?} ({} bytes)",
                    k.name,
                    p.name,
                    p.size,
                    bytes.len()
                ),
            ));
        }
        buf[p.offset as usize..p.offset as usize + bytes.len()].copy_from_slice(&bytes);
    }
    Ok(buf)
}

fn describe(k: &Kernel, cfg: &LaunchConfig, cta: (u32, u32, u32), f: Fault) -> Error {
    let (bx, by, _) = cfg.block;
    let (line, text) = k
        .text
        .get(f.pc as usize)
        .cloned()
        .unwrap_or((0, String::from("?")));
    let who = match f.lane {
        Some(l) => {
            let lin = f.warp * 32 + l;
            format!(
                "thread ({}, {}, {}) (warp {}, lane {l})",
                lin % bx,
                (lin / bx) % by,
                lin / (bx * by),
                f.warp
            )
        }
        None => format!("warp {}", f.warp),
    };
    dev_err(format!(
        "kernel {}: CTA ({}, {}, {}) {who} at line {line} `{text}`: {}",
        k.name, cta.0, cta.1, cta.2, f.msg
    ))
}

impl Driver for PtxSim {
    fn name(&self) -> String {
        "ptx-sim".into()
    }

    fn tensor_map(&self, map: &TensorMap) -> Result<EncodedTensorMap> {
        map.check().map_err(|e| Error::arg("tensor_map", e))?;
        Ok(EncodedTensorMap(map.encode_sim()))
    }

    fn alloc(&self, bytes: usize) -> Result<DevicePtr> {
        Ok(DevicePtr(self.lock().mem.alloc(bytes)))
    }

    fn free(&self, ptr: DevicePtr) -> Result<()> {
        {
            let mut b = self.batch();
            if b.open {
                b.frees.push(ptr);
                return Ok(());
            }
        }
        self.lock().mem.free(ptr.0).map_err(dev_err)
    }

    fn upload(&self, dst: DevicePtr, src: &[u8]) -> Result<()> {
        self.issue_held()?;
        self.lock()
            .mem
            .write(dst.0, src)
            .map_err(|e| dev_err(format!("upload: {e}")))
    }

    fn download(&self, src: DevicePtr, dst: &mut [u8]) -> Result<()> {
        self.issue_held()?;
        self.lock()
            .mem
            .read(src.0, dst)
            .map_err(|e| dev_err(format!("download: {e}")))
    }

    fn launch(
        &self,
        module: &PtxModule,
        kernel: &str,
        config: LaunchConfig,
        args: &[KernelArg],
    ) -> Result<()> {
        let mut b = self.batch();
        if !b.open {
            drop(b);
            return self.run(module, kernel, config, args);
        }
        // Held: the kernel and its arguments are checked now, so that a wrong launch fails
        // where it is made; it runs when the batch is issued.
        {
            let mut inner = self.lock();
            let m = Self::module(&mut inner, module)?;
            check_args(kernel_of(&m, module, kernel, "ptx-sim launch")?, args)?;
        }
        b.held.push(HeldLaunch::new(module, kernel, config, args));
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        self.issue_held()
    }

    fn begin_batch(&self) -> Result<bool> {
        let mut b = self.batch();
        Ok(!std::mem::replace(&mut b.open, true))
    }

    fn end_batch(&self) -> Result<()> {
        let issued = self.issue_held();
        self.batch().open = false;
        issued
    }

    fn batch_counts(&self) -> Option<BatchCounts> {
        Some(self.batch().graphs.counts())
    }

    fn kernel_registers(&self, module: &PtxModule, kernel: &str) -> Result<Option<u32>> {
        let mut inner = self.lock();
        let m = Self::module(&mut inner, module)?;
        Ok(kernel_of(&m, module, kernel, "ptx-sim kernel_registers")?.launch_regs)
    }

    fn last_launch_work(&self) -> Option<LaunchWork> {
        self.last_counters().map(|c| LaunchWork {
            warp_instructions: c.warp_instructions(),
            bytes_read: c.global_bytes_read,
            bytes_written: c.global_bytes_written,
        })
    }
}

impl PtxSim {
    /// Runs one launch now: every CTA in order, returning when the kernel has finished.
    fn run(
        &self,
        module: &PtxModule,
        kernel: &str,
        config: LaunchConfig,
        args: &[KernelArg],
    ) -> Result<()> {
        let mut inner = self.lock();
        // A failed launch leaves no counters behind (they would describe an earlier one).
        inner.last = None;
        let m = Self::module(&mut inner, module)?;
        let k = kernel_of(&m, module, kernel, "ptx-sim launch")?;
        let (bx, by, bz) = config.block;
        let (gx, gy, gz) = config.grid;
        let threads = bx as u64 * by as u64 * bz as u64;
        if threads == 0 || threads > MAX_THREADS as u64 || gx == 0 || gy == 0 || gz == 0 {
            return Err(Error::arg(
                "ptx-sim launch",
                format!(
                    "kernel {kernel}: grid {:?} x block {:?} (need non-zero sizes and at most \
                     {MAX_THREADS} threads per CTA)",
                    config.grid, config.block
                ),
            ));
        }
        let shared_bytes = k.static_shared as u64 + config.shared_bytes as u64;
        if shared_bytes > MAX_SHARED as u64 {
            return Err(Error::arg(
                "ptx-sim launch",
                format!(
                    "kernel {kernel}: {shared_bytes} bytes of shared memory per CTA (at most \
                     {MAX_SHARED})"
                ),
            ));
        }
        let params = check_args(k, args)?;
        let mut shared = SharedMem::new(shared_bytes as usize);
        let mut launch = Launch {
            k,
            cfg: config,
            params,
            mem: &mut inner.mem,
            counters: Counters::default(),
            warps: Vec::new(),
            issued: 0,
            stalled: 0,
            reg_pool: 0,
        };
        for z in 0..gz {
            for y in 0..gy {
                for x in 0..gx {
                    shared.reset();
                    launch
                        .run_cta((x, y, z), &mut shared)
                        .map_err(|f| describe(k, &config, (x, y, z), f))?;
                }
            }
        }
        let counters = launch.counters;
        inner.last = Some(counters);
        Ok(())
    }
}
