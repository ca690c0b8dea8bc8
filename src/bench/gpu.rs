//! The GPU kernels of [`crate::gpu::kernels`] at fixed shapes, on any [`Driver`]: on the PTX
//! interpreter each row reports what the launch did (dynamic warp-instructions by class,
//! global bytes, shared bank conflicts: a kernel profile that needs no GPU) and how long the
//! interpretation took; on a GPU each row reports the median time, GB/s and TFLOP/s.
//!
//! One table of cases serves both: a case allocates and fills its buffers through the
//! driver and launches through the same typed wrappers the backend uses, so the interpreter
//! and the GPU run the same code, the same PTX and (at [`Sizes::Smoke`]) the same shapes.
//! A [`Driver`] wrapper records each launch's kernel and configuration as it passes.
//!
//! GPU timings are wall-clock, with a `synchronize` before and after each timed sample;
//! a sample launches the case back to back enough times to last about
//! [`SAMPLE_TARGET_S`], so that the host's launch overhead does not hide short kernels.
//! Nothing here asserts a speed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;

use super::Timing;
use crate::error::{Error, Result};
use crate::gpu::kernels as k;
use crate::gpu::{DevicePtr, Driver, KernelArg, LaunchConfig, PtxModule};
use crate::optim::AdamWConfig;

/// Which shapes the table uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sizes {
    /// The smallest shapes that still run several CTAs per kernel: a smoke test of the whole
    /// table (about a second on the interpreter).
    Smoke,
    /// Shapes the interpreter runs in seconds (GEMMs of 256³ f32 and 512³ bf16, 64 K-element
    /// elementwise ops): large enough for the counters to show each kernel's steady state.
    Interpreter,
    /// Production shapes for a GPU: 64 M-element elementwise ops and optimiser updates,
    /// 65536-row softmax and layer norm, f32 GEMM at 2048³ and bf16 GEMM at 4096³.
    Hardware,
}

impl Sizes {
    fn pick<T>(self, smoke: T, interpreter: T, hardware: T) -> T {
        match self {
            Sizes::Smoke => smoke,
            Sizes::Interpreter => interpreter,
            Sizes::Hardware => hardware,
        }
    }
}

/// How long one timed GPU sample lasts at least (the case is repeated inside it).
pub const SAMPLE_TARGET_S: f64 = 2e-3;

/// Most back-to-back launches of a case in one timed GPU sample.
const MAX_INNER: usize = 1000;

/// The interpreter's counters of a case, summed over its launches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct InstructionCounts {
    /// All dynamic warp-instructions (one per issue for the lanes of a warp).
    pub warp_instructions: u64,
    /// Integer, logic, move, conversion and predicate warp-instructions.
    pub int: u64,
    /// f32 arithmetic.
    pub fp32: u64,
    /// f64 arithmetic.
    pub fp64: u64,
    /// Special-function unit (approximations, rcp, sqrt, div).
    pub sfu: u64,
    /// Loads, stores, atomics, async copies.
    pub memory: u64,
    /// Branches and exits.
    pub control: u64,
    /// Barriers, shuffles, votes.
    pub sync: u64,
    /// `ldmatrix` and `mma`.
    pub tensor: u64,
    /// Bytes read from global memory.
    pub global_bytes_read: u64,
    /// Bytes written to global memory.
    pub global_bytes_written: u64,
    /// Extra shared-memory wavefronts from bank conflicts.
    pub shared_bank_conflicts: u64,
    /// CTAs run.
    pub ctas: u64,
}

impl InstructionCounts {
    fn add(&mut self, o: &InstructionCounts) {
        self.warp_instructions += o.warp_instructions;
        self.int += o.int;
        self.fp32 += o.fp32;
        self.fp64 += o.fp64;
        self.sfu += o.sfu;
        self.memory += o.memory;
        self.control += o.control;
        self.sync += o.sync;
        self.tensor += o.tensor;
        self.global_bytes_read += o.global_bytes_read;
        self.global_bytes_written += o.global_bytes_written;
        self.shared_bank_conflicts += o.shared_bank_conflicts;
        self.ctas += o.ctas;
    }
}

#[cfg(feature = "ptx-sim")]
impl From<crate::gpu::sim::Counters> for InstructionCounts {
    fn from(c: crate::gpu::sim::Counters) -> Self {
        InstructionCounts {
            warp_instructions: c.warp_instructions(),
            int: c.int,
            fp32: c.fp32,
            fp64: c.fp64,
            sfu: c.sfu,
            memory: c.memory,
            control: c.control,
            sync: c.sync,
            tensor: c.tensor,
            global_bytes_read: c.global_bytes_read,
            global_bytes_written: c.global_bytes_written,
            shared_bank_conflicts: c.shared_bank_conflicts,
            ctas: c.ctas,
        }
    }
}

/// One row of the table: a case (one kernel family at one shape) and what it measured.
#[derive(Clone, Debug, Serialize)]
pub struct GpuKernelResult {
    /// The kernel family and variant, e.g. `binary add, broadcast row`.
    pub case: String,
    /// The kernel entries launched, in order (one per launch).
    pub kernels: Vec<String>,
    /// Problem size, e.g. `[65536, 1024]` or `4096x4096x4096` (M x N x K).
    pub shape: String,
    /// Grid, block and dynamic shared memory of each launch.
    pub launch: Vec<String>,
    /// Wall-clock time of one run of the case: the interpretation on `ptx-sim`, the GPU
    /// time between synchronizations (divided by the launches per sample) on a GPU.
    pub timing: Timing,
    /// Floating-point operations of one run (an FMA counts 2), where the kernel computes.
    pub flops: Option<f64>,
    /// Bytes one run must move at least (each input read once, each output written once).
    pub bytes: f64,
    /// `bytes` over the median time, in 10^9 bytes/s (GPU only).
    pub gbps: Option<f64>,
    /// `flops` over the median time, in 10^12 flop/s (GPU only).
    pub tflops: Option<f64>,
    /// The interpreter's counters, summed over the launches (`ptx-sim` only).
    pub counters: Option<InstructionCounts>,
}

/// A whole table.
#[derive(Clone, Debug, Serialize)]
pub struct GpuBench {
    /// The driver's name, e.g. `ptx-sim` or `cuda:0 (NVIDIA H200)`.
    pub device: String,
    /// The shapes used.
    pub sizes: Sizes,
    /// One row per case, in table order.
    pub results: Vec<GpuKernelResult>,
}

/// Runs the table on the PTX interpreter: each case `repeats` times (at least once; the
/// counters are the same every time, the wall time is the median).
#[cfg(feature = "ptx-sim")]
pub fn bench_on_interpreter(sizes: Sizes, repeats: usize) -> Result<GpuBench> {
    let sim = crate::gpu::PtxSim::new();
    let counters = || sim.last_counters().map(InstructionCounts::from);
    run_table(&sim, &counters, Mode::Interpret { repeats }, sizes)
}

/// Times the table on a GPU through `driver` (e.g. a [`crate::gpu::CudaDriver`]): per case,
/// one warm-up run, then the median of `repeats` (at least 1) timed samples.
pub fn bench_on_gpu(driver: &dyn Driver, sizes: Sizes, repeats: usize) -> Result<GpuBench> {
    run_table(driver, &|| None, Mode::Time { repeats }, sizes)
}

#[derive(Clone, Copy)]
enum Mode {
    Interpret { repeats: usize },
    Time { repeats: usize },
}

fn run_table(
    driver: &dyn Driver,
    counters: &(dyn Fn() -> Option<InstructionCounts> + Sync),
    mode: Mode,
    sizes: Sizes,
) -> Result<GpuBench> {
    let rec = Recorder {
        inner: driver,
        counters,
        recording: AtomicBool::new(false),
        launches: Mutex::new(Vec::new()),
    };
    let mut results = Vec::with_capacity(CASES.len());
    for build in CASES {
        let mut bufs = Buffers {
            driver,
            ptrs: Vec::new(),
        };
        let row = build(&mut bufs, sizes).and_then(|case| measure(&rec, &case, mode));
        let freed = bufs.free_all();
        results.push(row?);
        freed?;
    }
    Ok(GpuBench {
        device: driver.name(),
        sizes,
        results,
    })
}

/// One case: a family of kernels at one shape, with its buffers already on the device.
struct Case {
    name: &'static str,
    shape: String,
    flops: Option<f64>,
    bytes: f64,
    run: Box<dyn Fn(&dyn Driver) -> Result<()>>,
}

/// Builds a case's buffers through the driver and returns the case.
type Build = fn(&mut Buffers, Sizes) -> Result<Case>;

/// Every case, in table order.
const CASES: [Build; 17] = [
    copy_transpose,
    copy_to_bf16,
    unary_exp,
    binary_add_broadcast,
    reduce_rows,
    reduce_columns,
    softmax_rows,
    layer_norm_fwd,
    layer_norm_bwd_dx,
    layer_norm_bwd_params,
    gemm_f32,
    gemm_bf16,
    index_select,
    index_add,
    adamw,
    ema,
    sum_of_squares,
];

/// What the recorder saw of one launch.
struct Seen {
    kernel: String,
    config: LaunchConfig,
    counters: Option<InstructionCounts>,
}

/// Forwards everything to `inner` and, while `recording`, notes each launch with the
/// interpreter's counters of it.
struct Recorder<'a> {
    inner: &'a dyn Driver,
    counters: &'a (dyn Fn() -> Option<InstructionCounts> + Sync),
    recording: AtomicBool,
    launches: Mutex<Vec<Seen>>,
}

impl Recorder<'_> {
    fn start(&self) {
        self.seen().clear();
        self.recording.store(true, Ordering::Relaxed);
    }

    fn stop(&self) -> Vec<Seen> {
        self.recording.store(false, Ordering::Relaxed);
        std::mem::take(&mut *self.seen())
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Vec<Seen>> {
        self.launches.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Driver for Recorder<'_> {
    fn name(&self) -> String {
        self.inner.name()
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
        self.inner.launch(module, kernel, config, args)?;
        if self.recording.load(Ordering::Relaxed) {
            let counters = (self.counters)();
            self.seen().push(Seen {
                kernel: kernel.to_string(),
                config,
                counters,
            });
        }
        Ok(())
    }
    fn synchronize(&self) -> Result<()> {
        self.inner.synchronize()
    }
}

fn describe(c: &LaunchConfig) -> String {
    let (g, b) = (c.grid, c.block);
    let mut s = format!("grid {}x{}x{} block {}x{}x{}", g.0, g.1, g.2, b.0, b.1, b.2);
    if c.shared_bytes > 0 {
        s.push_str(&format!(" smem {}", c.shared_bytes));
    }
    s
}

fn measure(rec: &Recorder, case: &Case, mode: Mode) -> Result<GpuKernelResult> {
    let d: &dyn Driver = rec;
    let (seen, timing) = match mode {
        Mode::Interpret { repeats } => {
            let repeats = repeats.max(1);
            let mut samples = Vec::with_capacity(repeats);
            let mut seen = Vec::new();
            for r in 0..repeats {
                rec.start();
                let start = Instant::now();
                let ran = (case.run)(d);
                samples.push(start.elapsed().as_secs_f64());
                let s = rec.stop();
                ran?;
                if r == 0 {
                    seen = s;
                }
            }
            (seen, super::stats(samples, repeats))
        }
        Mode::Time { repeats } => {
            // The warm-up loads the module and records what the case launches.
            rec.start();
            let warm = (case.run)(d).and_then(|_| d.synchronize());
            let seen = rec.stop();
            warm?;
            let start = Instant::now();
            (case.run)(d)?;
            d.synchronize()?;
            let once = start.elapsed().as_secs_f64().max(1e-7);
            let inner = ((SAMPLE_TARGET_S / once).ceil() as usize).clamp(1, MAX_INNER);
            let repeats = repeats.max(1);
            let mut samples = Vec::with_capacity(repeats);
            for _ in 0..repeats {
                d.synchronize()?;
                let start = Instant::now();
                for _ in 0..inner {
                    (case.run)(d)?;
                }
                d.synchronize()?;
                samples.push(start.elapsed().as_secs_f64() / inner as f64);
            }
            (seen, super::stats(samples, repeats))
        }
    };
    if seen.is_empty() {
        return Err(Error::Device {
            op: "bench --kernels",
            detail: format!("{} {}: launched no kernel", case.name, case.shape),
        });
    }
    let counters = match mode {
        Mode::Time { .. } => None,
        Mode::Interpret { .. } => {
            let mut total = InstructionCounts::default();
            for s in &seen {
                let c = s.counters.ok_or_else(|| Error::Device {
                    op: "bench --kernels",
                    detail: format!("{}: the interpreter kept no counters", s.kernel),
                })?;
                total.add(&c);
            }
            Some(total)
        }
    };
    let timed = matches!(mode, Mode::Time { .. });
    Ok(GpuKernelResult {
        case: case.name.to_string(),
        kernels: seen.iter().map(|s| s.kernel.clone()).collect(),
        shape: case.shape.clone(),
        launch: seen.iter().map(|s| describe(&s.config)).collect(),
        timing,
        flops: case.flops,
        bytes: case.bytes,
        gbps: timed.then(|| case.bytes / timing.median_s / 1e9),
        tflops: case
            .flops
            .filter(|_| timed)
            .map(|f| f / timing.median_s / 1e12),
        counters,
    })
}

/// The table as text: counters per kernel on the interpreter, times and rates on a GPU.
pub fn format_gpu_table(b: &GpuBench) -> String {
    let mut out = String::new();
    let interpreted = b.results.iter().any(|r| r.counters.is_some());
    if interpreted {
        out.push_str(&format!(
            "{:<30} {:<34} {:>12} {:>10} {:>10} {:>6} {:>7} {:>9} {:>9} {:>6} {:>8} {:>11} {:>11} {:>8} {:>9} {:>8}\n",
            "case", "shape", "warp-instr", "int", "fp32", "fp64", "sfu", "memory", "control",
            "sync", "tensor", "global rd B", "global wr B", "bank cf", "wall s", "M instr/s"
        ));
    } else {
        out.push_str(&format!(
            "{:<30} {:<34} {:>10} {:>10} {:>10} {:>9} {:>9}\n",
            "case", "shape", "median ms", "min ms", "max ms", "GB/s", "TFLOP/s"
        ));
    }
    for r in &b.results {
        match &r.counters {
            Some(c) => out.push_str(&format!(
                "{:<30} {:<34} {:>12} {:>10} {:>10} {:>6} {:>7} {:>9} {:>9} {:>6} {:>8} {:>11} {:>11} {:>8} {:>9.3} {:>8.2}\n",
                r.case,
                r.shape,
                c.warp_instructions,
                c.int,
                c.fp32,
                c.fp64,
                c.sfu,
                c.memory,
                c.control,
                c.sync,
                c.tensor,
                c.global_bytes_read,
                c.global_bytes_written,
                c.shared_bank_conflicts,
                r.timing.median_s,
                c.warp_instructions as f64 / r.timing.median_s / 1e6
            )),
            None => out.push_str(&format!(
                "{:<30} {:<34} {:>10.4} {:>10.4} {:>10.4} {:>9} {:>9}\n",
                r.case,
                r.shape,
                r.timing.median_s * 1e3,
                r.timing.min_s * 1e3,
                r.timing.max_s * 1e3,
                r.gbps.map_or("-".to_string(), |g| format!("{g:.1}")),
                r.tflops.map_or("-".to_string(), |t| format!("{t:.2}")),
            )),
        }
        for (kernel, launch) in r.kernels.iter().zip(&r.launch) {
            out.push_str(&format!("    {kernel}: {launch}\n"));
        }
    }
    out
}

/// The buffers of one case, freed together when it is done.
struct Buffers<'a> {
    driver: &'a dyn Driver,
    ptrs: Vec<DevicePtr>,
}

impl Buffers<'_> {
    fn put<T: bytemuck::Pod>(&mut self, values: &[T]) -> Result<DevicePtr> {
        let bytes: &[u8] = bytemuck::cast_slice(values);
        let p = self.driver.alloc(bytes.len().max(16))?;
        self.ptrs.push(p);
        if !bytes.is_empty() {
            self.driver.upload(p, bytes)?;
        }
        Ok(p)
    }

    /// `n` f32 from [`pattern`] with `seed`.
    fn f32s(&mut self, n: usize, seed: u32) -> Result<DevicePtr> {
        self.put(&pattern(n, seed))
    }

    /// `n` f32 outputs, zero-filled (a case never reads memory it did not fill).
    fn out(&mut self, n: usize) -> Result<DevicePtr> {
        self.put(&vec![0f32; n])
    }

    fn free_all(&mut self) -> Result<()> {
        let mut first = Ok(());
        for p in self.ptrs.drain(..) {
            if let Err(e) = self.driver.free(p) {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }
}

/// `n` deterministic values in `[-1, 1)`: a hash of the index, cheap enough for 64 M.
fn pattern(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let mut h = (i as u32) ^ seed.wrapping_mul(0x9E37_79B9);
            h = h.wrapping_mul(0x85EB_CA6B);
            h ^= h >> 13;
            h = h.wrapping_mul(0xC2B2_AE35);
            h ^= h >> 16;
            (h >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

fn dims(s: &[usize]) -> String {
    format!("{s:?}")
}

/// The elementwise launches: the one place that names the op codes' types, so that a
/// change of their home touches only these two functions.
fn launch_exp(d: &dyn Driver, out: DevicePtr, x: DevicePtr, n: usize) -> Result<()> {
    k::unary_f32(d, k::UnaryOp::Exp, 0.0, 0.0, out, x, &[1], &[n])
}

/// `out[i, j] = a[i, j] + b[j]` over `[rows, cols]` (a bias or positional row broadcast).
fn launch_add_row(
    d: &dyn Driver,
    out: DevicePtr,
    a: DevicePtr,
    b: DevicePtr,
    rows: usize,
    cols: usize,
) -> Result<()> {
    let (ra, rb) = ([cols as isize, 1], [0, 1]);
    k::binary_f32(
        d,
        k::BinaryOp::Add,
        0.0,
        0.0,
        out,
        a,
        &ra,
        b,
        &rb,
        &[rows, cols],
    )
}

fn copy_transpose(b: &mut Buffers, s: Sizes) -> Result<Case> {
    let (r, c) = s.pick((64, 64), (256, 256), (8192, 8192));
    let n = r * c;
    let x = b.f32s(n, 1)?;
    let out = b.out(n)?;
    Ok(Case {
        name: "strided copy, transpose",
        shape: dims(&[r, c]),
        flops: None,
        bytes: 8.0 * n as f64,
        run: Box::new(move |d| {
            k::strided_copy_f32(d, out, &[c as isize, 1], x, &[1, r as isize], &[r, c])
        }),
    })
}

fn copy_to_bf16(b: &mut Buffers, s: Sizes) -> Result<Case> {
    let n = s.pick(4096, 65536, 64 << 20);
    let x = b.f32s(n, 2)?;
    let out = b.put(&vec![0u16; n])?;
    Ok(Case {
        name: "copy f32 -> bf16",
        shape: dims(&[n]),
        flops: None,
        bytes: 6.0 * n as f64,
        run: Box::new(move |d| k::strided_copy_f32_bf16(d, out, &[1], x, &[1], &[n])),
    })
}

fn unary_exp(b: &mut Buffers, s: Sizes) -> Result<Case> {
    let n = s.pick(4096, 65536, 64 << 20);
    let x = b.f32s(n, 3)?;
    let out = b.out(n)?;
    Ok(Case {
        name: "unary exp",
        shape: dims(&[n]),
        flops: None,
        bytes: 8.0 * n as f64,
        run: Box::new(move |d| launch_exp(d, out, x, n)),
    })
}

fn binary_add_broadcast(b: &mut Buffers, s: Sizes) -> Result<Case> {
    let (r, c) = s.pick((64, 64), (256, 256), (65536, 1024));
    let x = b.f32s(r * c, 4)?;
    let row = b.f32s(c, 5)?;
    let out = b.out(r * c)?;
    Ok(Case {
        name: "binary add, row broadcast",
        shape: format!("{} + [{c}]", dims(&[r, c])),
        flops: None,
        bytes: 4.0 * (2 * r * c + c) as f64,
        run: Box::new(move |d| launch_add_row(d, out, x, row, r, c)),
    })
}

fn reduce_rows(b: &mut Buffers, s: Sizes) -> Result<Case> {
    let (rows, r) = s.pick((16, 256), (256, 1024), (65536, 1024));
    let x = b.f32s(rows * r, 6)?;
    let out = b.out(rows)?;
    Ok(Case {
        name: "reduce sum, last axis",
        shape: dims(&[rows, r]),
        flops: None,
        bytes: 4.0 * (rows * r + rows) as f64,
        run: Box::new(move |d| {
            k::reduce_axis_f32(d, k::ReduceOp::Sum, false, out, x, None, rows, r, 1, false)
        }),
    })
}

fn reduce_columns(b: &mut Buffers, s: Sizes) -> Result<Case> {
    let (r, c) = s.pick((64, 64), (1024, 256), (65536, 1024));
    let x = b.f32s(r * c, 7)?;
    let out = b.out(c)?;
    let scratch_len = k::reduce_scratch_len(1, r, c);
    let scratch = match scratch_len {
        0 => None,
        n => Some(b.out(n)?),
    };
    Ok(Case {
        name: "reduce sum, first axis",
        shape: dims(&[r, c]),
        flops: None,
        bytes: 4.0 * (r * c + c) as f64,
        run: Box::new(move |d| {
            k::reduce_axis_f32(d, k::ReduceOp::Sum, false, out, x, scratch, 1, r, c, false)
        }),
    })
}

fn softmax_rows(b: &mut Buffers, s: Sizes) -> Result<Case> {
    let (rows, c) = s.pick((16, 256), (64, 1024), (65536, 1024));
    let x = b.f32s(rows * c, 8)?;
    let y = b.out(rows * c)?;
    Ok(Case {
        name: "softmax rows",
        shape: dims(&[rows, c]),
        flops: None,
        bytes: 8.0 * (rows * c) as f64,
        run: Box::new(move |d| k::softmax_rows_f32(d, y, x, rows, c, false)),
    })
}

/// Rows and width of the layer-norm cases.
fn ln_shape(s: Sizes) -> (usize, usize) {
    s.pick((16, 256), (256, 768), (65536, 768))
}

/// `[mean, rstd]` per row: plausible statistics for the backward cases.
fn ln_stats(b: &mut Buffers, rows: usize) -> Result<DevicePtr> {
    let stats: Vec<f32> = (0..rows).flat_map(|i| [0.01 * i as f32, 1.5]).collect();
    b.put(&stats)
}

fn layer_norm_fwd(b: &mut Buffers, s: Sizes) -> Result<Case> {
    let (rows, c) = ln_shape(s);
    let x = b.f32s(rows * c, 9)?;
    let w = b.f32s(c, 10)?;
    let bias = b.f32s(c, 11)?;
    let y = b.out(rows * c)?;
    let stats = b.out(2 * rows)?;
    Ok(Case {
        name: "layer_norm fwd (w, b, stats)",
        shape: dims(&[rows, c]),
        flops: None,
        bytes: 4.0 * (2 * rows * c + 2 * c + 2 * rows) as f64,
        run: Box::new(move |d| {
            k::layer_norm_fwd_f32(d, y, Some(stats), x, Some(w), Some(bias), rows, c, 1e-5)
        }),
    })
}

fn layer_norm_bwd_dx(b: &mut Buffers, s: Sizes) -> Result<Case> {
    let (rows, c) = ln_shape(s);
    let x = b.f32s(rows * c, 12)?;
    let g = b.f32s(rows * c, 13)?;
    let w = b.f32s(c, 14)?;
    let stats = ln_stats(b, rows)?;
    let dx = b.out(rows * c)?;
    Ok(Case {
        name: "layer_norm bwd dx",
        shape: dims(&[rows, c]),
        flops: None,
        bytes: 4.0 * (3 * rows * c + c + 2 * rows) as f64,
        run: Box::new(move |d| k::layer_norm_bwd_dx_f32(d, dx, x, g, stats, Some(w), rows, c)),
    })
}

fn layer_norm_bwd_params(b: &mut Buffers, s: Sizes) -> Result<Case> {
    let (rows, c) = ln_shape(s);
    let chunk = s.pick(4, 16, 64);
    let chunks = rows.div_ceil(chunk);
    let x = b.f32s(rows * c, 15)?;
    let g = b.f32s(rows * c, 16)?;
    let stats = ln_stats(b, rows)?;
    let dw = b.out(chunks * c)?;
    let db = b.out(chunks * c)?;
    let grads = k::LayerNormParamGrads {
        dweight: Some(dw),
        dbias: Some(db),
    };
    Ok(Case {
        name: "layer_norm bwd params",
        shape: format!("{}, chunks of {chunk}", dims(&[rows, c])),
        flops: None,
        bytes: 4.0 * (2 * rows * c + 2 * rows + 2 * chunks * c) as f64,
        run: Box::new(move |d| k::layer_norm_bwd_params_f32(d, grads, x, g, stats, rows, c, chunk)),
    })
}

fn gemm_f32(b: &mut Buffers, s: Sizes) -> Result<Case> {
    let n = s.pick(128, 256, 2048);
    let (m, kk) = (n, n);
    let a = b.f32s(m * kk, 17)?;
    let w = b.f32s(n * kk, 18)?;
    let bias = b.f32s(n, 19)?;
    let c = b.out(m * n)?;
    // Linear's product: C = A W^T + bias, W stored [n, k].
    let g = k::GemmF32 {
        m,
        n,
        k: kk,
        batch: 1,
        c,
        c_rs: n,
        c_bs: 0,
        a,
        a_rs: kk,
        a_cs: 1,
        a_bs: 0,
        b: w,
        b_rs: 1,
        b_cs: kk,
        b_bs: 0,
        bias: Some(bias),
        alpha: 1.0,
        beta: 0.0,
    };
    Ok(Case {
        name: "gemm f32, A W^T + bias",
        shape: format!("{m}x{n}x{kk}"),
        flops: Some(2.0 * (m * n * kk) as f64),
        bytes: 4.0 * (m * kk + n * kk + n + m * n) as f64,
        run: Box::new(move |d| k::gemm_f32(d, &g)),
    })
}

fn gemm_bf16(b: &mut Buffers, s: Sizes) -> Result<Case> {
    let n = s.pick(128, 512, 4096);
    let (m, kk) = (n, n);
    let to_bf16 = |v: Vec<f32>| -> Vec<u16> {
        v.into_iter()
            .map(|x| half::bf16::from_f32(x).to_bits())
            .collect()
    };
    let a = b.put(&to_bf16(pattern(m * kk, 20)))?;
    let w = b.put(&to_bf16(pattern(n * kk, 21)))?;
    let c = b.out(m * n)?;
    let g = k::GemmBf16 {
        layout: k::Bf16Layout::NT,
        m,
        n,
        k: kk,
        batch: 1,
        c,
        ldc: n,
        c_bs: 0,
        a,
        lda: kk,
        a_bs: 0,
        b: w,
        ldb: kk,
        b_bs: 0,
        bias: None,
        alpha: 1.0,
        beta: 0.0,
    };
    Ok(Case {
        name: "gemm bf16 NT (tensor cores)",
        shape: format!("{m}x{n}x{kk}"),
        flops: Some(2.0 * (m * n * kk) as f64),
        bytes: (2 * (m * kk + n * kk) + 4 * m * n) as f64,
        run: Box::new(move |d| k::gemm_bf16(d, &g)),
    })
}

/// `(outer, table rows, indices, inner)` of the gather / scatter cases, and the indices:
/// a stride through the table that visits rows out of order, with repeats when there are
/// more indices than rows.
fn index_case(s: Sizes) -> ((usize, usize, usize, usize), Vec<usize>) {
    let shape = s.pick((4, 64, 8, 16), (4, 1024, 256, 64), (1, 65536, 65536, 1024));
    let (_, len, n_idx, _) = shape;
    let idx = (0..n_idx).map(|i| (i * 7919 + 3) % len).collect();
    (shape, idx)
}

fn index_select(b: &mut Buffers, s: Sizes) -> Result<Case> {
    let ((outer, len, n_idx, inner), idx) = index_case(s);
    let src = b.f32s(outer * len * inner, 22)?;
    let iu = b.put(&k::u32_indices("bench index_select", &idx, len)?)?;
    let out = b.out(outer * n_idx * inner)?;
    Ok(Case {
        name: "index_select",
        shape: format!("{}, {n_idx} indices", dims(&[outer, len, inner])),
        flops: None,
        bytes: 4.0 * (2 * outer * n_idx * inner + n_idx) as f64,
        run: Box::new(move |d| k::index_select_f32(d, out, src, iu, outer, len, n_idx, inner)),
    })
}

fn index_add(b: &mut Buffers, s: Sizes) -> Result<Case> {
    let ((outer, len, n_idx, inner), idx) = index_case(s);
    let plan = k::scatter_plan(&idx, len)?;
    let touched = plan.starts.windows(2).filter(|w| w[1] > w[0]).count();
    let dst = b.out(outer * len * inner)?;
    let src = b.f32s(outer * n_idx * inner, 23)?;
    let order = b.put(&plan.order)?;
    let starts = b.put(&plan.starts)?;
    Ok(Case {
        name: "index_add (scatter-add)",
        shape: format!("{} from {n_idx} indices", dims(&[outer, len, inner])),
        flops: None,
        bytes: 4.0 * (outer * inner * (n_idx + 2 * touched) + n_idx + len + 1) as f64,
        run: Box::new(move |d| {
            k::index_add_f32(d, dst, src, order, starts, outer, len, n_idx, inner)
        }),
    })
}

/// Parameter count of the optimiser cases.
fn params(s: Sizes) -> usize {
    s.pick(4096, 65536, 64 << 20)
}

fn adamw(b: &mut Buffers, s: Sizes) -> Result<Case> {
    let n = params(s);
    let p = b.f32s(n, 24)?;
    let m = b.f32s(n, 25)?;
    let v = b.put(&pattern(n, 26).iter().map(|x| x.abs()).collect::<Vec<_>>())?;
    let g = b.f32s(n, 27)?;
    let c = k::AdamWCoeffs::new(&AdamWConfig::default(), 1e-3, 1)?;
    Ok(Case {
        name: "AdamW",
        shape: dims(&[n]),
        flops: None,
        bytes: 28.0 * n as f64,
        run: Box::new(move |d| k::adamw_f32(d, p, m, v, g, n, &c)),
    })
}

fn ema(b: &mut Buffers, s: Sizes) -> Result<Case> {
    let n = params(s);
    let shadow = b.f32s(n, 28)?;
    let p = b.f32s(n, 29)?;
    Ok(Case {
        name: "EMA",
        shape: dims(&[n]),
        flops: None,
        bytes: 12.0 * n as f64,
        run: Box::new(move |d| k::ema_f32(d, shadow, p, n, 0.999)),
    })
}

fn sum_of_squares(b: &mut Buffers, s: Sizes) -> Result<Case> {
    let n = params(s);
    let chunk = s.pick(1024, 4096, 65536);
    let parts = k::sum_squares_partials(n, chunk);
    let x = b.f32s(n, 30)?;
    let partial = b.put(&vec![0f64; parts])?;
    let total = b.put(&[0f64])?;
    Ok(Case {
        name: "sum of squares (2 passes)",
        shape: format!("{}, chunks of {chunk}", dims(&[n])),
        flops: None,
        bytes: (4 * n + 16 * parts + 8) as f64,
        run: Box::new(move |d| {
            k::sum_squares_partial_f32(d, partial, x, n, chunk)?;
            k::sum_f64(d, total, partial, parts)
        }),
    })
}

#[cfg(all(test, feature = "ptx-sim"))]
mod tests {
    use super::*;

    /// Every case runs on the interpreter, launches what its wrapper derives, and the
    /// counters add up over the launches (a two-pass case counts both passes).
    #[test]
    fn smoke_table_runs_every_case_with_counters() {
        let b = bench_on_interpreter(Sizes::Smoke, 1).unwrap();
        assert_eq!(b.results.len(), CASES.len());
        for r in &b.results {
            let c = r
                .counters
                .unwrap_or_else(|| panic!("{}: no counters", r.case));
            assert!(c.warp_instructions > 0, "{}: no instructions", r.case);
            assert_eq!(
                c.warp_instructions,
                c.int + c.fp32 + c.fp64 + c.sfu + c.memory + c.control + c.sync + c.tensor,
                "{}",
                r.case
            );
            assert!(c.global_bytes_written > 0, "{}: wrote nothing", r.case);
            assert_eq!(r.kernels.len(), r.launch.len(), "{}", r.case);
            assert!(r.gbps.is_none() && r.tflops.is_none(), "{}", r.case);
        }
        let sos = b
            .results
            .iter()
            .find(|r| r.case.starts_with("sum of squares"))
            .unwrap();
        assert_eq!(sos.kernels, ["sum_squares_partial_f32", "sum_f64"]);
        // 4096 values in chunks of 1024: four f64 partials, then one f64 total.
        assert_eq!(sos.counters.unwrap().global_bytes_written, 4 * 8 + 8);
        let bf16 = b
            .results
            .iter()
            .find(|r| r.case.contains("bf16 NT"))
            .unwrap();
        assert!(bf16.counters.unwrap().tensor > 0, "bf16 GEMM without mma");
        let table = format_gpu_table(&b);
        for r in &b.results {
            assert!(table.contains(&r.case), "{} missing from the table", r.case);
        }
    }

    #[test]
    fn the_pattern_is_spread_over_minus_one_to_one() {
        let p = pattern(10_000, 7);
        let (lo, hi) = p
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &x| {
                (l.min(x), h.max(x))
            });
        assert!(
            lo >= -1.0 && hi < 1.0 && lo < -0.99 && hi > 0.99,
            "{lo} {hi}"
        );
        let mean = p.iter().map(|&x| x as f64).sum::<f64>() / p.len() as f64;
        assert!(mean.abs() < 0.05, "mean {mean}");
        assert_ne!(pattern(16, 1), pattern(16, 2));
    }
}
