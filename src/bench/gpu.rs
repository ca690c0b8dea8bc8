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

mod cases;

use super::Timing;
use crate::error::{Error, Result};
use crate::gpu::{Driver, Forward, KernelArg, LaunchConfig, PtxModule};
use cases::{Buffers, Build, Case, CASES, SM90_ONLY};

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
    /// The card's ceilings, measured by the table's first two rows (GPU only).
    pub ceilings: Option<Ceilings>,
}

/// What our own kernels can reach at best on this card, measured in the same run: every
/// other row is also given as a fraction of these.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Ceilings {
    /// `peak_mma_bf16`: bf16 `mma.sync.m16n8k16` with every operand in registers, in
    /// 10^12 flop/s.
    pub mma_bf16_tflops: f64,
    /// `peak_copy_b128`: a streaming 16-byte-per-thread copy of 256 MiB, bytes read plus
    /// written per second, in 10^9 bytes/s.
    pub copy_gbps: f64,
}

impl GpuBench {
    fn ceilings_of(results: &[GpuKernelResult]) -> Option<Ceilings> {
        let row = |name: &str| results.iter().find(|r| r.case == name);
        Some(Ceilings {
            mma_bf16_tflops: row(cases::CEILING_MMA)?.tflops?,
            copy_gbps: row(cases::CEILING_COPY)?.gbps?,
        })
    }
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

/// Measures the card's [`Ceilings`] alone (the first two rows of [`bench_on_gpu`]), for the
/// whole-model bench to judge its rates against.
pub fn measure_ceilings(driver: &dyn Driver, repeats: usize) -> Result<Ceilings> {
    let ceilings = [cases::ceiling_mma as Build, cases::ceiling_copy];
    let results = run_cases(
        driver,
        &|| None,
        Mode::Time { repeats },
        Sizes::Hardware,
        &ceilings,
    )?;
    GpuBench::ceilings_of(&results).ok_or_else(|| Error::Device {
        op: "bench",
        detail: "the ceiling kernels reported no rate".into(),
    })
}

/// The interpreter's counters of the launch that just finished (`None` on a GPU).
type CounterSource<'a> = dyn Fn() -> Option<InstructionCounts> + Sync + 'a;

#[derive(Clone, Copy)]
enum Mode {
    #[cfg_attr(not(feature = "ptx-sim"), allow(dead_code))]
    Interpret {
        repeats: usize,
    },
    Time {
        repeats: usize,
    },
}

fn run_table(
    driver: &dyn Driver,
    counters: &CounterSource,
    mode: Mode,
    sizes: Sizes,
) -> Result<GpuBench> {
    let results = run_cases(driver, counters, mode, sizes, &CASES)?;
    Ok(GpuBench {
        device: driver.name(),
        sizes,
        ceilings: GpuBench::ceilings_of(&results),
        results,
    })
}

/// Builds and measures `builds` in order, each case's buffers freed before the next.
fn run_cases(
    driver: &dyn Driver,
    counters: &CounterSource,
    mode: Mode,
    sizes: Sizes,
    builds: &[Build],
) -> Result<Vec<GpuKernelResult>> {
    let rec = Recorder {
        inner: driver,
        counters,
        recording: AtomicBool::new(false),
        launches: Mutex::new(Vec::new()),
    };
    let mut results = Vec::with_capacity(builds.len());
    // The warpgroup cases run on a compute-capability 9.0 GPU and the interpreter only.
    let sm90 = driver.compute_capability()?.is_none_or(|cc| cc == (9, 0));
    for build in builds {
        let mut bufs = Buffers {
            driver,
            ptrs: Vec::new(),
        };
        let row = match build(&mut bufs, sizes) {
            Ok(case) if !sm90 && SM90_ONLY.contains(&case.name) => {
                bufs.free_all()?;
                continue;
            }
            built => built.and_then(|case| measure(&rec, &case, mode)),
        };
        let freed = bufs.free_all();
        results.push(row?);
        freed?;
    }
    Ok(results)
}

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
    counters: &'a CounterSource<'a>,
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

impl Forward for Recorder<'_> {
    fn inner(&self) -> &dyn Driver {
        self.inner
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
        if let Some(c) = b.ceilings {
            out.push_str(&format!(
                "ceilings of this card: bf16 mma.sync {:.1} TFLOP/s, copy {:.1} GB/s\n",
                c.mma_bf16_tflops, c.copy_gbps
            ));
        }
        out.push_str(&format!(
            "{:<30} {:<34} {:>10} {:>10} {:>10} {:>9} {:>9} {:>7} {:>7}\n",
            "case", "shape", "median ms", "min ms", "max ms", "GB/s", "TFLOP/s", "% mma", "% copy"
        ));
    }
    let percent = |v: Option<f64>, of: Option<f64>| match (v, of) {
        (Some(v), Some(of)) => format!("{:.1}", 100.0 * v / of),
        _ => "-".to_string(),
    };
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
                "{:<30} {:<34} {:>10.4} {:>10.4} {:>10.4} {:>9} {:>9} {:>7} {:>7}\n",
                r.case,
                r.shape,
                r.timing.median_s * 1e3,
                r.timing.min_s * 1e3,
                r.timing.max_s * 1e3,
                r.gbps.map_or("-".to_string(), |g| format!("{g:.1}")),
                r.tflops.map_or("-".to_string(), |t| format!("{t:.2}")),
                percent(r.tflops, b.ceilings.map(|c| c.mma_bf16_tflops)),
                percent(r.gbps, b.ceilings.map(|c| c.copy_gbps)),
            )),
        }
        for (kernel, launch) in r.kernels.iter().zip(&r.launch) {
            out.push_str(&format!("    {kernel}: {launch}\n"));
        }
    }
    out
}

#[cfg(all(test, feature = "ptx-sim"))]
mod tests {
    use super::cases::pattern;
    use super::*;
    use crate::gpu::DevicePtr;

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
        assert!(b.ceilings.is_none(), "the interpreter times nothing");
        let tiles: Vec<_> = b
            .results
            .iter()
            .filter(|r| r.case.ends_with(" tile"))
            .map(|r| (r.kernels.clone(), r.counters.unwrap().global_bytes_read))
            .collect();
        assert_eq!(tiles.len(), 7);
        assert_eq!(tiles[0].0, ["gemm_bf16_nt"]);
        assert_eq!(tiles[1].0, ["gemm_bf16_nt_128"]);
        assert_eq!(tiles[2].0, ["gemm_bf16_nt_wgmma_128"]);
        assert_eq!(tiles[3].0, ["gemm_bf16_nt_wgmma_256"]);
        assert_eq!(tiles[4].0, ["gemm_bf16_nt_tma_256"]);
        assert_eq!(tiles[5].0, ["gemm_bf16_nn_wgmma_256"]);
        assert_eq!(tiles[6].0, ["gemm_bf16_nn_tma_256"]);
        // The 128 tiles read each operand half as often as the 64 tile (at 128^3 one CTA of
        // either warpgroup tile reads everything once).
        assert_eq!(tiles[0].1, 2 * tiles[1].1, "{tiles:?}");
        assert_eq!(tiles[1].1, tiles[2].1, "{tiles:?}");
        assert_eq!(tiles[2].1, tiles[3].1, "{tiles:?}");
        // The TMA copies read only the tensor's elements (the cp.async tiles read the same),
        // B's boxes of 64 columns as its k-major box.
        assert_eq!(tiles[3].1, tiles[4].1, "{tiles:?}");
        assert_eq!(tiles[4].1, tiles[5].1, "{tiles:?}");
        assert_eq!(tiles[5].1, tiles[6].1, "{tiles:?}");
        let wgrad: Vec<_> = b
            .results
            .iter()
            .filter(|r| r.case.contains("weight gradient"))
            .map(|r| r.kernels.clone())
            .collect();
        assert_eq!(
            wgrad,
            [
                vec!["gemm_bf16_tn_128", "gemm_splitk_reduce"],
                vec!["gemm_bf16_tn"],
                vec!["gemm_bf16_tn_wgmma_128", "gemm_splitk_reduce"],
                vec!["gemm_bf16_tn_tma_256", "gemm_splitk_reduce"]
            ]
        );
        let table = format_gpu_table(&b);
        for r in &b.results {
            assert!(table.contains(&r.case), "{} missing from the table", r.case);
        }
    }

    /// A driver that keeps no memory and runs nothing, but refuses a launch CUDA would
    /// refuse: the production shapes are checked by the wrappers and against the
    /// hardware's launch limits without a GPU.
    #[derive(Default)]
    struct NullGpu {
        next: std::sync::atomic::AtomicU64,
        launches: std::sync::atomic::AtomicU64,
    }

    impl Driver for NullGpu {
        fn name(&self) -> String {
            "null".into()
        }
        fn alloc(&self, bytes: usize) -> Result<DevicePtr> {
            let size = (bytes as u64).div_ceil(256) * 256;
            Ok(DevicePtr(
                0x1_0000_0000 + self.next.fetch_add(size, Ordering::Relaxed),
            ))
        }
        fn free(&self, _: DevicePtr) -> Result<()> {
            Ok(())
        }
        fn upload(&self, _: DevicePtr, _: &[u8]) -> Result<()> {
            Ok(())
        }
        fn download(&self, _: DevicePtr, _: &mut [u8]) -> Result<()> {
            Ok(())
        }
        fn launch(
            &self,
            _: &PtxModule,
            kernel: &str,
            c: LaunchConfig,
            _: &[KernelArg],
        ) -> Result<()> {
            let threads = c.block.0 * c.block.1 * c.block.2;
            let ok = (1..=i32::MAX as u32).contains(&c.grid.0)
                && (1..=65_535).contains(&c.grid.1)
                && (1..=65_535).contains(&c.grid.2)
                && (1..=1024).contains(&threads)
                && c.shared_bytes <= 227 * 1024;
            assert!(ok, "{kernel}: {c:?} exceeds CUDA's launch limits");
            self.launches.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        fn synchronize(&self) -> Result<()> {
            Ok(())
        }
        fn tensor_map(
            &self,
            map: &crate::gpu::tensor_map::TensorMap,
        ) -> Result<crate::gpu::EncodedTensorMap> {
            map.check()
                .map_err(|e| crate::Error::arg("tensor_map", e))?;
            Ok(crate::gpu::EncodedTensorMap([0; 128]))
        }
    }

    #[test]
    fn production_shapes_pass_the_wrappers_and_the_launch_limits() {
        let gpu = NullGpu::default();
        let b = bench_on_gpu(&gpu, Sizes::Hardware, 1).unwrap();
        assert_eq!(b.results.len(), CASES.len());
        assert!(gpu.launches.load(Ordering::Relaxed) >= 3 * CASES.len() as u64);
        for r in &b.results {
            assert!(r.counters.is_none(), "{}", r.case);
            let gbps = r.gbps.unwrap_or(f64::NAN);
            assert!(gbps > 0.0 && gbps.is_finite(), "{}: {gbps}", r.case);
            let products = r.case.starts_with("gemm")
                || r.case.starts_with("attention")
                || r.case == cases::CEILING_MMA;
            assert_eq!(r.tflops.is_some(), products, "{}", r.case);
        }
        let bf16 = b
            .results
            .iter()
            .find(|r| r.case.contains("bf16 NT"))
            .unwrap();
        assert_eq!(bf16.shape, "4096x4096x4096");
        assert_eq!(bf16.flops, Some(2.0 * 4096f64.powi(3)));
        // The first two rows are the card's ceilings, and every row is judged against them.
        assert_eq!(b.results[0].kernels, ["peak_mma_bf16"]);
        assert_eq!(b.results[1].kernels, ["peak_copy_b128"]);
        let c = b.ceilings.expect("ceilings on a timed run");
        assert!(c.mma_bf16_tflops > 0.0 && c.copy_gbps > 0.0, "{c:?}");
        assert_eq!(
            b.results[0].flops,
            Some(132.0 * 16.0 * 4.0 * 256.0 * 8.0 * 4096.0)
        );
        let table = format_gpu_table(&b);
        assert!(
            table.starts_with("ceilings of this card: bf16 mma.sync"),
            "{table}"
        );
        let columns = |name: &str| -> Vec<String> {
            let line = table.lines().find(|l| l.starts_with(name)).unwrap();
            line.split_whitespace().map(str::to_string).collect()
        };
        let (mma, copy) = (columns(cases::CEILING_MMA), columns(cases::CEILING_COPY));
        assert_eq!(mma[mma.len() - 2], "100.0", "{mma:?}");
        assert_eq!(copy[copy.len() - 1], "100.0", "{copy:?}");
        assert_eq!(copy[copy.len() - 2], "-", "{copy:?}");
    }

    #[test]
    fn the_pattern_is_spread_over_minus_one_to_one() {
        let p: Vec<f32> = (0..10_000).map(|i| pattern(i, 7)).collect();
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
        assert!((0..16).any(|i| pattern(i, 1) != pattern(i, 2)));
    }
}
