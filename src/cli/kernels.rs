//! `tarflow bench --kernels`: the CPU kernels against this machine's peak, or with
//! `--device ptx-sim|cuda[:N]` the GPU kernels (`tarflow::bench::gpu`).

use super::out::say;
use tarflow::bench::fused::bench_fused;
use tarflow::bench::gpu::{bench_on_gpu, format_gpu_table, GpuBench, Sizes};
use tarflow::bench::kernels::{format_table, run_kernel_benches, BenchConfig};
use tarflow::bench::peak::{measure_peak, PeakConfig};
use tarflow::gpu::CudaDriver;
use tarflow::{Device, Error, Result};

pub fn bench_kernels(json: bool, repeats: Option<usize>) -> Result<()> {
    let peak = measure_peak(&PeakConfig::default());
    let defaults = BenchConfig::default();
    let cfg = BenchConfig {
        repeats: repeats.unwrap_or(defaults.repeats).max(3),
        ..defaults
    };
    let mut results = run_kernel_benches(&peak, &cfg);
    results.extend(bench_fused(&peak, &cfg)?);
    if json {
        let v = serde_json::json!({ "peak": peak, "results": results });
        say!(
            "{}",
            serde_json::to_string_pretty(&v).map_err(|e| Error::format("bench", e.to_string()))?
        );
    } else {
        say!(
            "measured ceilings: f32 FMA {:.1} GFLOP/s on {} threads ({}; {:.1} on one), \
             triad {:.1} GB/s in cache (up to {:.1} MB moved), {:.1} GB/s from DRAM\n",
            peak.gflops,
            peak.threads,
            peak.isa,
            peak.gflops_one_thread,
            peak.cache_gbps,
            peak.cache_working_set as f64 / 1e6,
            peak.dram_gbps
        );
        say!("{}", format_table(&results).trim_end_matches('\n'));
    }
    Ok(())
}

/// Timed samples per kernel on a GPU when --repeats is not given.
const GPU_REPEATS: usize = 15;

/// `bench --kernels --device ptx-sim|cuda[:N]`: the GPU kernel table, on the interpreter
/// (counters, one run per kernel unless --repeats says more) or on a GPU (times).
pub fn bench_gpu_kernels(
    device: Device,
    quick: bool,
    json: bool,
    repeats: Option<usize>,
) -> Result<()> {
    let b = match device {
        Device::PtxSim => {
            let sizes = if quick {
                Sizes::Smoke
            } else {
                Sizes::Interpreter
            };
            on_interpreter(sizes, repeats.unwrap_or(1))?
        }
        Device::Cuda(n) => {
            let driver = CudaDriver::new(n)?;
            let sizes = if quick { Sizes::Smoke } else { Sizes::Hardware };
            bench_on_gpu(&driver, sizes, repeats.unwrap_or(GPU_REPEATS))?
        }
        Device::Cpu => {
            return Err(Error::arg(
                "bench",
                "the GPU kernel table needs --device ptx-sim or cuda[:N]",
            ))
        }
    };
    if json {
        say!(
            "{}",
            serde_json::to_string_pretty(&b).map_err(|e| Error::format("bench", e.to_string()))?
        );
        return Ok(());
    }
    let sizes = match b.sizes {
        Sizes::Smoke => "smoke-test",
        Sizes::Interpreter => "interpreter",
        Sizes::Hardware => "production",
    };
    say!("GPU kernels on {}, {sizes} shapes", b.device);
    if device == Device::PtxSim {
        say!(
            "dynamic warp-instructions (one per issue for a warp) by class, global bytes, extra \
             shared wavefronts from bank conflicts; wall s: the interpretation on this CPU"
        );
    } else {
        let repeats = b.results.first().map_or(0, |r| r.timing.repeats);
        say!(
            "median of {repeats} samples, each launching the kernel back to back between two \
             synchronizations; GB/s counts each byte that must move once"
        );
    }
    say!("{}", format_gpu_table(&b).trim_end_matches('\n'));
    Ok(())
}

#[cfg(feature = "ptx-sim")]
fn on_interpreter(sizes: Sizes, repeats: usize) -> Result<GpuBench> {
    tarflow::bench::gpu::bench_on_interpreter(sizes, repeats)
}

#[cfg(not(feature = "ptx-sim"))]
fn on_interpreter(_: Sizes, _: usize) -> Result<GpuBench> {
    Err(Error::Device {
        op: "bench",
        detail: "--device ptx-sim: this build has no PTX interpreter (rebuild with the \
                 `ptx-sim` feature, which is on by default)"
            .to_string(),
    })
}
