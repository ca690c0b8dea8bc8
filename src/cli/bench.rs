//! `tarflow bench`: whole-model timings for any shape, (with --kernels) kernel timings
//! against this machine's measured peak, and (with --loader) the data loader's images/s.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::out::say;
use clap::Args;

use tarflow::backend::Precision;
use tarflow::bench::loader::{images_needed, loader_pass, memory, LoaderPass};
use tarflow::bench::model::{
    bench_model_each, bench_model_with, check_request, KernelProfile, StepSettings,
};
use tarflow::data::is_pack;
use tarflow::gpu::profile::KernelShare;
use tarflow::model::TarFlowConfig;
use tarflow::train::open_data;
use tarflow::{Device, Error, Result};

#[derive(Args)]
pub struct BenchArgs {
    /// Time the engine's kernels (matmul, MLP block, softmax, layer_norm, attention,
    /// elementwise) against the measured peak instead of the model; with --device ptx-sim
    /// or cuda[:N], the GPU kernels instead.
    #[arg(long, conflicts_with = "loader")]
    kernels: bool,
    /// Time the data loader alone (shuffled batch assembly and dequantisation to f32) on one
    /// thread and on every core, over the training split of --data, and print the process's
    /// memory after each pass.
    #[arg(long)]
    loader: bool,
    /// With --loader: the data, as for `train --data` (a `tarflow pack` file is mapped)
    /// [default: the embedded MNIST digits].
    #[arg(long, requires = "loader")]
    data: Option<PathBuf>,
    /// With --loader: images per pass [default: one epoch of the training split].
    #[arg(long, requires = "loader")]
    images: Option<usize>,
    /// With --loader and a pack: evict the pack from the page cache before the first pass
    /// of each thread count (posix_fadvise DONTNEED; Linux only), so that pass reads from
    /// the disk.
    #[arg(long, requires = "loader")]
    cold: bool,
    /// Start from the model of a `train` preset (default: small = 28x28x1 p4 C128 T4 K2).
    #[arg(long, default_value = "small")]
    preset: String,
    #[command(flatten)]
    shape: super::shape::ShapeArgs,
    /// Images per training step / forward pass (at least 1; refused when the step would not
    /// fit this machine's memory).
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Images sampled per sampling run (at least 1).
    #[arg(long, default_value_t = 16)]
    sample_batch: usize,
    /// Timed repeats after the warm-up, at least 1: 5 whole-model runs, or with --kernels 15
    /// interleaved rounds (at least 3 are run: a kernel's median over fewer rounds moves with
    /// this machine's noise); with --device ptx-sim 1 run per kernel, with cuda 15 samples.
    #[arg(long)]
    repeats: Option<usize>,
    /// Where to run: `cpu`, `cuda[:N]` or `ptx-sim`. The whole-model bench runs the model,
    /// its optimiser and the sampler there (ptx-sim: only tiny shapes finish). With
    /// --kernels, ptx-sim gives instruction counts, global traffic and bank conflicts per
    /// kernel, and cuda[:N] times the GPU kernels at production shapes.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Operand precision of the training step's matrix products, `f32` or `bf16` (bf16
    /// needs --device cuda[:N] or ptx-sim), as `train --precision`. On a GPU-like device the
    /// training row also reports the step's activation and peak device bytes.
    #[arg(long, default_value = "f32", conflicts_with_all = ["kernels", "loader"])]
    precision: String,
    /// What the training step's Transformer layers recompute in the backward instead of
    /// keeping from the forward: none, mlp (each layer's MLP half) or layer (whole layers),
    /// as `train --recompute`. The same gradients; less memory, more arithmetic.
    #[arg(long, default_value = "none", conflicts_with_all = ["kernels", "loader"])]
    recompute: String,
    /// With --kernels on ptx-sim or cuda: the smallest shapes, a smoke run of the table.
    #[arg(long)]
    quick: bool,
    /// On a GPU-like device: run each workload once more under a launch profile and print,
    /// per kernel, its launches and its device time (cuda) or warp-instructions and global
    /// traffic (ptx-sim), with the run's wall time against its kernels' time.
    #[arg(long, conflicts_with_all = ["kernels", "loader"])]
    profile_kernels: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

impl BenchArgs {
    /// The device named by --device.
    fn device(&self) -> Result<Device> {
        self.device.parse()
    }

    /// The precision named by --precision.
    fn precision(&self) -> Result<Precision> {
        self.precision.parse()
    }

    /// The training step's settings named by --precision and --recompute.
    fn step(&self) -> Result<StepSettings> {
        Ok(StepSettings {
            precision: self.precision()?,
            recompute: self.recompute.parse()?,
            profile: self.profile_kernels,
        })
    }

    /// The model to time (the preset with the shape options applied).
    fn model(&self) -> Result<TarFlowConfig> {
        let mut c = super::shape::preset_model(&self.preset)?;
        self.shape.apply(&mut c);
        Ok(c)
    }

    /// Pre-flight checks that build nothing: the device, the repeats, and for the model
    /// its shape, batches and their memory.
    pub fn check(&self) -> Result<()> {
        let device = self.device()?;
        let step = self.step()?;
        if step.precision != Precision::F32 && !device.is_gpu() {
            return Err(Error::arg(
                "bench",
                format!(
                    "--precision {}: needs a GPU device (cuda[:N] or ptx-sim), not {device}",
                    self.precision
                ),
            ));
        }
        if self.repeats == Some(0) {
            return Err(Error::arg("bench", "--repeats 0: expected at least 1"));
        }
        if self.profile_kernels && !device.is_gpu() {
            return Err(Error::arg(
                "bench",
                format!(
                    "--profile-kernels: needs a GPU device (cuda[:N] or ptx-sim), not {device}"
                ),
            ));
        }
        if self.quick && !(self.kernels && device.is_gpu()) {
            return Err(Error::arg(
                "bench",
                "--quick applies to --kernels with --device ptx-sim or cuda[:N]",
            ));
        }
        if self.kernels {
            return Ok(());
        }
        if self.loader {
            if device != Device::Cpu {
                return Err(Error::arg(
                    "bench",
                    format!("--loader runs on the CPU; --device {device} does not apply"),
                ));
            }
            if self.batch == 0 || self.images == Some(0) {
                return Err(Error::arg(
                    "bench",
                    "--batch and --images must be at least 1 image",
                ));
            }
            return Ok(());
        }
        let c = self.model()?;
        c.validate()?;
        for (opt, v) in [
            ("--batch", self.batch),
            ("--sample-batch", self.sample_batch),
        ] {
            if v == 0 {
                return Err(Error::arg(
                    "bench",
                    format!("{opt} 0: expected at least 1 image"),
                ));
            }
        }
        if device.is_gpu() {
            // The device reports its own memory; the host check would not apply.
            return Ok(());
        }
        check_request(&c, self.batch, self.sample_batch, step.recompute).map_err(|e| {
            let m = match e {
                Error::Config(m) => m,
                other => other.to_string(),
            };
            Error::arg(
                "bench",
                format!(
                    "--batch {} / --sample-batch {}: {m}",
                    self.batch, self.sample_batch
                ),
            )
        })
    }
}

pub fn bench(a: BenchArgs) -> Result<()> {
    if a.loader {
        return bench_loader(&a);
    }
    if a.kernels {
        return match a.device()? {
            Device::Cpu => super::kernels::bench_kernels(a.json, a.repeats),
            gpu => super::kernels::bench_gpu_kernels(gpu, a.quick, a.json, a.repeats),
        };
    }
    let c = a.model()?;
    let device = a.device()?;
    let step = a.step()?;
    let precision = step.precision;
    let repeats = a.repeats.unwrap_or(5);
    // On a GPU, the card's own ceilings first (our kernels' best), and each row's rate as a
    // share of the tensor-core one.
    let ceilings = match device {
        Device::Cuda(_) => {
            let driver = tarflow::gpu::registry::driver(device)?;
            Some(tarflow::bench::gpu::measure_ceilings(
                driver.as_ref(),
                repeats,
            )?)
        }
        _ => None,
    };
    if a.json {
        let rows = bench_model_with(&c, a.batch, a.sample_batch, repeats, device, step)?;
        let mut v = serde_json::json!({
            "config": c,
            "precision": precision,
            "recompute": step.recompute,
            "results": rows
        });
        if let Some(c) = ceilings {
            v["ceilings"] = serde_json::json!(c);
        }
        say!(
            "{}",
            serde_json::to_string_pretty(&v).map_err(|e| Error::format("bench", e.to_string()))?
        );
        return Ok(());
    }
    say!(
        "TarFlow {}, {precision}, recompute {}, on {}",
        c.notation(),
        step.recompute,
        match device {
            Device::Cpu => format!("the CPU, {} threads", rayon::current_num_threads()),
            gpu => gpu.to_string(),
        }
    );
    if let Some(c) = ceilings {
        say!(
            "ceilings of this card: bf16 mma.sync {:.1} TFLOP/s, copy {:.1} GB/s",
            c.mma_bf16_tflops,
            c.copy_gbps
        );
    }
    let share = |gflops: f64| match ceilings {
        Some(c) => format!(" {:>7.1}", gflops / 10.0 / c.mma_bf16_tflops),
        None => String::new(),
    };
    say!(
        "{:<30} {:>6} {:>10} {:>10} {:>10} {:>10} {:>9}{}",
        "workload",
        "batch",
        "median s",
        "min s",
        "max s",
        "images/s",
        "GFLOP/s",
        if ceilings.is_some() { "   % mma" } else { "" }
    );
    // Each row as soon as it is measured: sampling at a large shape takes minutes, and the
    // rows before it should survive a run that is stopped.
    bench_model_each(
        &c,
        a.batch,
        a.sample_batch,
        repeats,
        device,
        step,
        &mut |r| {
            say!(
                "{:<30} {:>6} {:>10.4} {:>10.4} {:>10.4} {:>10.1} {:>9.1}{}",
                r.name,
                r.batch,
                r.median_s,
                r.min_s,
                r.max_s,
                r.images_per_s,
                r.gflops,
                share(r.gflops)
            );
            if let Some(m) = r.memory {
                let mb = |b: u64| b as f64 / (1 << 20) as f64;
                say!(
                    "{} device memory ({}, recompute {}): activations {:.3} MiB ({} bytes), \
                     peak {:.3} MiB ({} bytes), {:.3} MiB before the forward",
                    r.name,
                    m.precision,
                    m.recompute,
                    mb(m.activation_bytes),
                    m.activation_bytes,
                    mb(m.peak_bytes),
                    m.peak_bytes,
                    mb(m.baseline_bytes)
                );
            }
            if let Some(p) = &r.kernels {
                print_profile(&r.name, p);
            }
            if let Some(n) = r.batches {
                say!(
                    "{}: {} launch batches of {} launches in all; {} graphs built, {} nodes \
                     patched ({:.1} a batch)",
                    r.name,
                    n.batches,
                    n.launches,
                    n.graphs_built,
                    n.nodes_patched,
                    n.nodes_patched as f64 / n.batches.max(1) as f64
                );
            }
        },
    )?;
    Ok(())
}

/// Kernels listed by name in a printed profile; the rest share one line.
const PROFILE_ROWS: usize = 16;

/// A workload's launch profile as a table: per kernel, its launches and its device time
/// (cuda) or its warp-instructions and global traffic (ptx-sim), the most expensive first.
fn print_profile(name: &str, p: &KernelProfile) {
    let ms = |s: f64| s * 1e3;
    match p.device_s {
        Some(dev) => say!(
            "{name}: {} launches in one profiled run; wall {:.3} ms, kernels {:.3} ms ({:.1} % \
             of the wall; the rest is the host's time between launches)",
            p.launches,
            ms(p.wall_s),
            ms(dev),
            100.0 * dev / p.wall_s.max(f64::MIN_POSITIVE)
        ),
        None => say!(
            "{name}: {} launches in one profiled run (wall {:.3} s on the interpreter)",
            p.launches,
            p.wall_s
        ),
    }
    let per_launch_us = |s: f64| 1e6 * s / p.launches.max(1) as f64;
    say!(
        "  host: {:.3} ms in the driver's launch calls ({:.2} us each; {}), {:.3} ms between \
         launches ({:.2} us per launch), {:.3} ms in other driver calls (allocation, copies, \
         synchronisation), {:.3} ms in the profiler",
        ms(p.launch_host_s),
        per_launch_us(p.launch_host_s),
        if p.device_s.is_some() {
            "issuing them"
        } else {
            "the interpreter running them"
        },
        ms(p.host_between_s()),
        per_launch_us(p.host_between_s()),
        ms(p.driver_other_s),
        ms(p.profiler_s)
    );
    let total_ms = p.device_s.map(ms);
    let total_instr = p.work.map(|w| w.warp_instructions);
    let (listed, rest) = p.kernels.split_at(p.kernels.len().min(PROFILE_ROWS));
    let rest_row = (!rest.is_empty()).then(|| KernelShare {
        kernel: format!("({} more kernels)", rest.len()),
        launches: rest.iter().map(|k| k.launches).sum(),
        device_ms: rest.iter().map(|k| k.device_ms).sum(),
        work: rest.iter().map(|k| k.work).sum(),
    });
    let pct = |part: f64, whole: Option<f64>| match whole {
        Some(w) if w > 0.0 => format!("{:>9.1}", 100.0 * part / w),
        _ => format!("{:>9}", "-"),
    };
    if total_ms.is_some() {
        say!(
            "  {:<44} {:>8} {:>11} {:>9} {:>10}",
            "kernel",
            "launches",
            "ms",
            "% kernels",
            "us each"
        );
    } else {
        say!(
            "  {:<44} {:>8} {:>14} {:>9} {:>10} {:>10}",
            "kernel",
            "launches",
            "warp-instr",
            "% instr",
            "MB read",
            "MB written"
        );
    }
    for k in listed.iter().chain(rest_row.iter()) {
        match (k.device_ms, k.work) {
            (Some(d), _) => say!(
                "  {:<44} {:>8} {:>11.3} {} {:>10.1}",
                k.kernel,
                k.launches,
                d,
                pct(d, total_ms),
                1e3 * d / k.launches.max(1) as f64
            ),
            (None, Some(w)) => say!(
                "  {:<44} {:>8} {:>14} {} {:>10.3} {:>10.3}",
                k.kernel,
                k.launches,
                w.warp_instructions,
                pct(w.warp_instructions as f64, total_instr.map(|t| t as f64)),
                w.bytes_read as f64 / 1e6,
                w.bytes_written as f64 / 1e6
            ),
            (None, None) => say!("  {:<44} {:>8}", k.kernel, k.launches),
        }
    }
}

/// Drops the page-cache pages of `path` (none of them may be mapped at the time): the next
/// read of the file comes from the disk. `false` where this is not supported.
fn evict_from_page_cache(path: &Path) -> Result<bool> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the descriptor is open for the duration of the call; posix_fadvise only
        // advises the kernel about the file's cached pages and touches no memory of ours.
        let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        if rc != 0 {
            return Err(Error::io(path, std::io::Error::from_raw_os_error(rc)));
        }
        Ok(true)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = path;
        Ok(false)
    }
}

/// `bench --loader`: passes on one thread and on every core, cold (when asked and possible)
/// then warm, and the rate a training step needs.
fn bench_loader(a: &BenchArgs) -> Result<()> {
    let pack = match &a.data {
        Some(p) => is_pack(p)?.then(|| p.clone()),
        None => None,
    };
    let (c, size) = {
        let m = a.model()?;
        (m.channels, m.image_size)
    };
    // The image size only scales a folder of images; every other source has its own.
    let open = || -> Result<Arc<tarflow::data::Dataset>> {
        Ok(Arc::new(open_data(a.data.as_deref(), c, size)?.0))
    };
    let mem_start = memory();
    let all = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = if all > 1 { vec![1, all] } else { vec![1] };
    let mut rows: Vec<LoaderPass> = Vec::new();
    let mut kept = None;
    let mut first = None;
    for t in threads {
        let (data, cache) = match (&pack, a.cold) {
            // Mapped pages are not evicted: the previous pass's mapping is gone by now.
            (Some(p), true) if evict_from_page_cache(p)? => (open()?, "cold"),
            _ => {
                let d = match &kept {
                    Some(d) => Arc::clone(d),
                    None => kept.insert(open()?).clone(),
                };
                (d, if pack.is_some() { "warm" } else { "in memory" })
            }
        };
        let images = a.images.unwrap_or(data.len());
        first.get_or_insert((data.len(), data.image_shape(), data.is_mapped()));
        let label = |cache: &str| format!("{t} thread(s), {cache}");
        rows.push(loader_pass(&label(cache), &data, a.batch, images, t, 1)?);
        if cache == "cold" {
            rows.push(loader_pass(&label("warm"), &data, a.batch, images, t, 2)?);
        }
    }
    let (len, [c, h, w], mapped) = first.unwrap_or((0, [0; 3], false));
    if a.json {
        let v = serde_json::json!({
            "data": a.data, "images": len, "image_shape": [c, h, w], "mapped": mapped,
            "passes": rows,
        });
        say!(
            "{}",
            serde_json::to_string_pretty(&v).map_err(|e| Error::format("bench", e.to_string()))?
        );
        return Ok(());
    }
    let size = pack
        .as_ref()
        .and_then(|p| std::fs::metadata(p).ok())
        .map_or_else(String::new, |m| {
            format!(", pack {:.1} MB", m.len() as f64 / 1e6)
        });
    say!(
        "loader over {} training images of {c}x{h}x{w} ({}{size}), batch {}; memory before: {}",
        len,
        if mapped { "mapped" } else { "in memory" },
        a.batch,
        mem_start.map_or_else(|| "n/a".into(), |m| format!("RSS {} MB", m.rss_kb / 1024))
    );
    say!(
        "{:<24} {:>9} {:>8} {:>11} {:>9} {:>9} {:>10} {:>10}",
        "pass",
        "images",
        "s",
        "images/s",
        "MB/s u8",
        "MB/s f32",
        "RssAnon MB",
        "RssFile MB"
    );
    for r in &rows {
        let (anon, file) = r.memory_after.map_or((f64::NAN, f64::NAN), |m| {
            (m.anon_kb as f64 / 1024.0, m.file_kb as f64 / 1024.0)
        });
        say!(
            "{:<24} {:>9} {:>8.2} {:>11.0} {:>9.1} {:>9.1} {:>10.1} {:>10.1}",
            r.label,
            r.images,
            r.seconds,
            r.images_per_s,
            r.mb_per_s,
            r.f32_mb_per_s,
            anon,
            file
        );
    }
    let slowest = rows
        .iter()
        .filter(|r| r.threads == 1)
        .map(|r| r.images_per_s)
        .fold(f64::INFINITY, f64::min);
    for step_ms in [25.0, 50.0, 100.0] {
        let need = images_needed(a.batch, step_ms / 1e3);
        say!(
            "a {step_ms:.0} ms step at batch {} needs {need:.0} images/s: one loader thread \
             (slowest pass) gives {:.1}x that",
            a.batch,
            slowest / need
        );
    }
    Ok(())
}
