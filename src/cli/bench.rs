//! `tarflow bench`: whole-model timings for any shape, and (with --kernels) kernel timings
//! against this machine's measured peak.

use super::out::say;
use clap::Args;

use tarflow::bench::model::bench_model;
use tarflow::{Error, Result};

#[derive(Args)]
pub struct BenchArgs {
    /// Time the engine's kernels (matmul, MLP block, softmax, layer_norm, attention,
    /// elementwise) against the measured peak instead of the model.
    #[arg(long)]
    kernels: bool,
    /// Start from the model of a `train` preset (default: small = 28x28x1 p4 C128 T4 K2).
    #[arg(long, default_value = "small")]
    preset: String,
    #[command(flatten)]
    shape: super::shape::ShapeArgs,
    /// Images per training step / forward pass.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Images sampled per sampling run.
    #[arg(long, default_value_t = 16)]
    sample_batch: usize,
    /// Timed repeats after the warm-up: 5 whole-model runs, or with --kernels 15 interleaved
    /// rounds (a kernel's median over fewer rounds moves with this machine's noise).
    #[arg(long)]
    repeats: Option<usize>,
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn bench(a: BenchArgs) -> Result<()> {
    super::train::check_device(&a.device)?;
    if a.kernels {
        return super::kernels::bench_kernels(a.json, a.repeats);
    }
    let mut c = super::shape::preset_model(&a.preset)?;
    a.shape.apply(&mut c);
    c.validate()?;
    let rows = bench_model(&c, a.batch, a.sample_batch, a.repeats.unwrap_or(5))?;
    if a.json {
        let v = serde_json::json!({ "config": c, "results": rows });
        say!(
            "{}",
            serde_json::to_string_pretty(&v).map_err(|e| Error::format("bench", e.to_string()))?
        );
        return Ok(());
    }
    say!(
        "TarFlow {}x{}x{} p{} C{} T{} K{} ({} classes), f32, {} threads",
        c.channels,
        c.image_size,
        c.image_size,
        c.patch_size,
        c.width,
        c.blocks,
        c.layers_per_block,
        c.num_classes,
        rayon::current_num_threads()
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
