//! `tarflow train` and `tarflow eval`.

use super::out::say;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use tarflow::model::load_checkpoint;
use tarflow::train::{evaluate_bpd, open_data, Event, NoiseMode, TrainConfig, Trainer};
use tarflow::{Device, Error, Result};

#[derive(Args)]
pub struct TrainArgs {
    /// Preset: mnist (default), mnist-likelihood, mnist-likelihood-long, tiny, small, cifar10,
    /// imagenet64.
    #[arg(long, default_value = "mnist")]
    preset: String,
    /// Data: a directory of IDX files, CIFAR-10 batches or images (default: embedded MNIST).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Output directory (default: runs/<preset>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run saved in this directory (its config is used; --steps N runs on to
    /// step N, the cosine schedule stretched to the new length).
    #[arg(long, conflicts_with_all = ["preset", "data"])]
    resume: Option<PathBuf>,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[command(flatten)]
    hp: Overrides,
    /// No progress bar (log lines instead).
    #[arg(long)]
    quiet: bool,
}

/// Hyper-parameters that override the preset.
#[derive(Args)]
pub struct Overrides {
    #[arg(long)]
    steps: Option<usize>,
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    warmup_steps: Option<usize>,
    #[arg(long)]
    min_lr: Option<f64>,
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Global gradient-norm clip; 0 disables.
    #[arg(long)]
    grad_clip: Option<f64>,
    /// EMA decay of the weights (e.g. 0.999); 0 disables.
    #[arg(long)]
    ema: Option<f64>,
    #[arg(long)]
    label_dropout: Option<f64>,
    /// Gaussian noise augmentation sigma.
    #[arg(long)]
    noise_sigma: Option<f64>,
    /// Train on uniformly dequantised pixels instead (exact bits/dim).
    #[arg(long)]
    dequantize: bool,
    #[arg(long)]
    hflip: bool,
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long)]
    eval_every: Option<usize>,
    #[arg(long)]
    sample_every: Option<usize>,
    #[arg(long)]
    checkpoint_every: Option<usize>,
    #[arg(long)]
    keep_checkpoints: Option<usize>,
    /// Skip up to N steps in a row whose loss or gradient is not finite (no update) before
    /// stopping; 0 stops at the first
    #[arg(long, value_name = "N")]
    skip_nonfinite: Option<usize>,
    /// Classifier-free guidance weight of the periodic sample grid (0 = none)
    #[arg(long)]
    sample_cfg: Option<f64>,
    /// Anneal the grid's guidance weight over the tokens (true/false)
    #[arg(long)]
    sample_cfg_anneal: Option<bool>,
    /// Prior standard deviation of the periodic sample grid
    #[arg(long)]
    sample_prior_std: Option<f64>,
    #[command(flatten)]
    shape: super::shape::ShapeArgs,
}

impl Overrides {
    fn apply(&self, c: &mut TrainConfig) {
        macro_rules! set {
            ($f:ident) => {
                if let Some(v) = self.$f {
                    c.$f = v;
                }
            };
        }
        set!(steps);
        set!(batch_size);
        set!(lr);
        set!(warmup_steps);
        set!(min_lr);
        set!(weight_decay);
        set!(label_dropout);
        set!(seed);
        set!(eval_every);
        set!(sample_every);
        set!(checkpoint_every);
        set!(keep_checkpoints);
        set!(skip_nonfinite);
        set!(sample_cfg);
        set!(sample_cfg_anneal);
        set!(sample_prior_std);
        if let Some(v) = self.grad_clip {
            c.grad_clip = (v > 0.0).then_some(v);
        }
        if let Some(v) = self.ema {
            c.ema = (v > 0.0).then_some(v);
        }
        if let Some(s) = self.noise_sigma {
            c.noise = NoiseMode::Gaussian { sigma: s };
            c.model.noise_sigma = s;
        }
        if self.dequantize {
            c.noise = NoiseMode::Dequantize;
        }
        if self.hflip {
            c.hflip = true;
        }
        self.shape.apply(&mut c.model);
    }
}

pub fn check_device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        d if d.starts_with("cuda") => Err(Error::Device {
            op: "train",
            detail: format!("device '{d}': this build has no CUDA backend; use --device cpu"),
        }),
        other => Err(Error::Config(format!(
            "unknown device '{other}' (cpu or cuda)"
        ))),
    }
}

pub fn train(a: TrainArgs) -> Result<()> {
    check_device(&a.device)?;
    let mut trainer = match &a.resume {
        Some(dir) => {
            let saved = Trainer::saved_config(dir)?;
            let (train, test) = open_data(
                saved.data.as_deref(),
                saved.model.channels,
                saved.model.image_size,
            )?;
            let mut t = Trainer::resume(dir, train, test)?;
            if let Some(s) = a.hp.steps {
                t.set_steps(s)?;
            }
            t
        }
        None => {
            let mut cfg = TrainConfig::preset(&a.preset)?;
            a.hp.apply(&mut cfg);
            if let Some(o) = &a.out {
                cfg.out_dir = o.clone();
            }
            cfg.data = a.data.clone();
            cfg.validate()?;
            let (train, test) =
                open_data(a.data.as_deref(), cfg.model.channels, cfg.model.image_size)?;
            Trainer::new(cfg, train, test)?
        }
    };
    let cfg = trainer.config().clone();
    let m = &cfg.model;
    say!(
        "training TarFlow p{}-C{}-T{}-K{} ({} parameters, {} classes) for {} steps of {} images -> {}",
        m.patch_size,
        m.width,
        m.blocks,
        m.layers_per_block,
        trainer.model.num_parameters(),
        m.num_classes,
        cfg.steps,
        cfg.batch_size,
        cfg.out_dir.display()
    );
    let bar = if a.quiet {
        ProgressBar::hidden()
    } else {
        let b = ProgressBar::new(cfg.steps as u64);
        b.set_style(
            ProgressStyle::with_template(
                "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
            )
            .map_err(|e| Error::Config(e.to_string()))?,
        );
        b.set_position(trainer.step as u64);
        b
    };
    let t0 = Instant::now();
    trainer.run(|ev| match ev {
        Event::Step(s) if s.skipped => {
            bar.set_position(s.step as u64);
            bar.println(format!(
                "step {}: loss {} / gradient norm {}: update skipped",
                s.step, s.loss, s.grad_norm
            ));
        }
        Event::Step(s) => {
            bar.set_position(s.step as u64);
            bar.set_message(format!(
                "loss {:.4} bits/dim {:.3} {:.0} img/s lr {:.2e}",
                s.loss, s.train_bpd, s.images_per_sec, s.lr
            ));
            if a.quiet && s.step % 100 == 0 {
                say!(
                    "step {} loss {:.4} train bits/dim {:.3} {:.0} img/s",
                    s.step,
                    s.loss,
                    s.train_bpd,
                    s.images_per_sec
                );
            }
        }
        Event::Eval { step, result } => bar.println(format!(
            "step {step}: test bits/dim {:.4} ({} images)",
            result.bpd, result.images
        )),
        Event::Samples { path, .. } => bar.println(format!("samples -> {}", path.display())),
        Event::Checkpoint { path, .. } => bar.println(format!("checkpoint -> {}", path.display())),
    })?;
    bar.finish();
    say!("done in {:.1} min", t0.elapsed().as_secs_f64() / 60.0);
    Ok(())
}

#[derive(Args)]
pub struct EvalArgs {
    #[arg(long)]
    checkpoint: PathBuf,
    /// Data directory (default: the embedded MNIST test split).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Evaluate the training split instead of the test split.
    #[arg(long)]
    train_split: bool,
    /// Dequantisation draws (the confidence interval is over these).
    #[arg(long, default_value_t = 4)]
    draws: usize,
    /// Images to use (0 = all).
    #[arg(long, default_value_t = 0)]
    limit: usize,
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn eval(a: EvalArgs) -> Result<()> {
    let m = load_checkpoint(&a.checkpoint)?.model::<f32>()?;
    let (train, test) = open_data(a.data.as_deref(), m.config.channels, m.config.image_size)?;
    let data = if a.train_split { train } else { test };
    let t0 = Instant::now();
    let r = evaluate_bpd(&m, &data, a.limit, a.batch_size, a.draws, a.seed)?;
    match r.ci95 {
        Some(ci) => say!(
            "bits/dim {:.4} ± {:.4} (95% CI over {} dequantisation draws, {} images, {:.1}s)",
            r.bpd,
            ci,
            a.draws,
            r.images,
            t0.elapsed().as_secs_f64()
        ),
        None => say!(
            "bits/dim {:.4} ({} images, 1 draw, {:.1}s)",
            r.bpd,
            r.images,
            t0.elapsed().as_secs_f64()
        ),
    }
    Ok(())
}

/// The checks `train` makes before it reads or writes anything: the device and, for a new
/// run, the preset with the overrides applied (the fuzz target's `check_args` calls this).
pub fn check_train(a: &TrainArgs) -> Result<()> {
    check_device(&a.device)?;
    if a.resume.is_none() {
        let mut cfg = TrainConfig::preset(&a.preset)?;
        a.hp.apply(&mut cfg);
        cfg.validate()?;
    }
    Ok(())
}
