//! `tarflow import` and `tarflow export`: checkpoints of other TarFlow implementations.

use std::path::PathBuf;

use clap::Args;

use super::out::{say, say_err};
use tarflow::fsutil::{atomic_write, read_file};
use tarflow::model::interop::{export_ml_tarflow, import_ml_tarflow, MlTarflowConfig};
use tarflow::model::{load_checkpoint, save_checkpoint, TarFlow};
use tarflow::{Error, Result};

/// The formats `--from` and `--to` name.
const FORMATS: &str = "ml-tarflow";

fn check_format(opt: &str, value: &str) -> Result<()> {
    if value == "ml-tarflow" {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "unknown {opt} '{value}' (known: {FORMATS})"
        )))
    }
}

#[derive(Args)]
pub struct ImportArgs {
    /// The checkpoint to read: for ml-tarflow, the safetensors file that
    /// scripts/ml_tarflow/convert.py makes of the official .pth
    input: PathBuf,
    /// Its format: ml-tarflow (github.com/apple/ml-tarflow)
    #[arg(long)]
    from: String,
    /// Our checkpoint to write (.safetensors)
    #[arg(long)]
    out: PathBuf,
    /// Training noise sigma to record (the default sigma of `sample --denoise`), finite and
    /// >= 0 [default: the one the converter recorded, else 0]
    #[arg(long)]
    noise_sigma: Option<f64>,
}

impl ImportArgs {
    /// Pre-flight checks that read no file.
    pub fn check(&self) -> Result<()> {
        check_format("--from", &self.from)?;
        if let Some(s) = self.noise_sigma {
            if !(s.is_finite() && s >= 0.0) {
                return Err(Error::Config(format!(
                    "--noise-sigma {s}: expected a finite sigma >= 0"
                )));
            }
        }
        Ok(())
    }
}

pub fn import(a: ImportArgs) -> Result<()> {
    let bytes = read_file(&a.input)?;
    let mut m: TarFlow<f32> = import_ml_tarflow(&bytes, &a.input.display().to_string())?;
    match a.noise_sigma {
        Some(s) => m.config.noise_sigma = s,
        None if m.config.noise_sigma == 0.0 => say_err!(
            "note: no training noise sigma recorded; `sample --denoise` needs --sigma \
             (or import with --noise-sigma)"
        ),
        None => {}
    }
    let meta = [("tarflow.imported_from".to_string(), a.from.clone())];
    save_checkpoint(&a.out, &m, &meta)?;
    let c = &m.config;
    say!(
        "wrote {} ({} parameters: {}, {}{})",
        a.out.display(),
        m.num_parameters(),
        c.notation(),
        if c.additive { "additive" } else { "affine" },
        if m.prior_var.is_some() {
            ", learned prior variance"
        } else {
            ""
        }
    );
    Ok(())
}

#[derive(Args)]
pub struct ExportArgs {
    /// Our checkpoint (.safetensors) to read
    checkpoint: PathBuf,
    /// The format to write: ml-tarflow (official names; scripts/ml_tarflow/convert.py
    /// --reverse makes a .pth of it)
    #[arg(long)]
    to: String,
    /// File to write (.safetensors)
    #[arg(long)]
    out: PathBuf,
}

impl ExportArgs {
    /// Pre-flight checks that read no file.
    pub fn check(&self) -> Result<()> {
        check_format("--to", &self.to)
    }
}

pub fn export(a: ExportArgs) -> Result<()> {
    let m: TarFlow<f32> = load_checkpoint(&a.checkpoint)?.model()?;
    atomic_write(&a.out, &export_ml_tarflow(&m)?)?;
    if !MlTarflowConfig::from_ours(&m.config)?.official_constructor_builds_it() {
        say_err!(
            "note: the official Model builds heads of 64 and an MLP expansion of 4; this \
             model has heads of {} and expansion {}",
            m.config.head_dim,
            m.config.mlp_ratio
        );
    }
    say!("wrote {}", a.out.display());
    Ok(())
}
