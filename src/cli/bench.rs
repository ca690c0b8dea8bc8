//! `tarflow bench`: whole-model timings for any shape, and (with --kernels) kernel timings
//! against this machine's measured peak.

use super::out::say;
use clap::Args;

use tarflow::bench::model::{bench_model_on, check_request};
use tarflow::model::TarFlowConfig;
use tarflow::{Device, Error, Result};

#[derive(Args)]
pub struct BenchArgs {
    /// Time the engine's kernels (matmul, MLP block, softmax, layer_norm, attention,
    /// elementwise) against the measured peak instead of the model; with --device ptx-sim
    /// or cuda[:N], the GPU kernels instead.
    #[arg(long)]
    kernels: bool,
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
    /// With --kernels on ptx-sim or cuda: the smallest shapes, a smoke run of the table.
    #[arg(long)]
    quick: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

impl BenchArgs {
    /// The device named by --device.
    fn device(&self) -> Result<Device> {
        self.device.parse()
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
        if self.repeats == Some(0) {
            return Err(Error::arg("bench", "--repeats 0: expected at least 1"));
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
        check_request(&c, self.batch, self.sample_batch).map_err(|e| {
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
    if a.kernels {
        return match a.device()? {
            Device::Cpu => super::kernels::bench_kernels(a.json, a.repeats),
            gpu => super::kernels::bench_gpu_kernels(gpu, a.quick, a.json, a.repeats),
        };
    }
    let c = a.model()?;
    let device = a.device()?;
    let rows = bench_model_on(&c, a.batch, a.sample_batch, a.repeats.unwrap_or(5), device)?;
    if a.json {
        let v = serde_json::json!({ "config": c, "results": rows });
        say!(
            "{}",
            serde_json::to_string_pretty(&v).map_err(|e| Error::format("bench", e.to_string()))?
        );
        return Ok(());
    }
    say!(
        "TarFlow {}x{}x{} p{} C{} T{} K{} ({} classes), f32, on {}",
        c.channels,
        c.image_size,
        c.image_size,
        c.patch_size,
        c.width,
        c.blocks,
        c.layers_per_block,
        c.num_classes,
        match device {
            Device::Cpu => format!("the CPU, {} threads", rayon::current_num_threads()),
            gpu => gpu.to_string(),
        }
    );
    say!(
        "{:<30} {:>6} {:>10} {:>10} {:>10} {:>10} {:>9}",
        "workload",
        "batch",
        "median s",
        "min s",
        "max s",
        "images/s",
        "GFLOP/s"
    );
    for r in rows {
        say!(
            "{:<30} {:>6} {:>10.4} {:>10.4} {:>10.4} {:>10.1} {:>9.1}",
            r.name,
            r.batch,
            r.median_s,
            r.min_s,
            r.max_s,
            r.images_per_s,
            r.gflops
        );
    }
    Ok(())
}
