//! `tarflow train` and `tarflow eval`.

use super::out::{say, say_err};
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
    /// Output directory (default: runs/<preset>). One run at a time may use it (it is locked);
    /// a directory holding another run's files is refused unless --overwrite is given.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Delete the checkpoints, sample grids, metrics.jsonl and bpd.png of an earlier run in
    /// the output directory before starting (other files are kept).
    #[arg(long)]
    overwrite: bool,
    /// Continue the run saved in this directory from its newest complete checkpoint, with the
    /// saved settings. Only --steps N (run on to step N, the cosine schedule stretched to the
    /// new length), --quiet and --device may be given with it; other options are refused.
    #[arg(long, conflicts_with_all = ["preset", "data", "overwrite"])]
    resume: Option<PathBuf>,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[command(flatten)]
    hp: Overrides,
    /// No progress bar: log lines only (also the case when stderr is not a terminal).
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
    #[arg(long, conflicts_with = "noise_sigma")]
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
    fn apply(&self, c: &mut TrainConfig) -> Result<()> {
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
        // 0 switches these off; anything else must be a value the feature takes (a NaN used
        // to switch it off too, silently).
        if let Some(v) = self.grad_clip {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::Config(format!(
                    "--grad-clip must be a positive number, or 0 to disable clipping; got {v}"
                )));
            }
            c.grad_clip = (v > 0.0).then_some(v);
        }
        if let Some(v) = self.ema {
            if !(0.0..1.0).contains(&v) {
                return Err(Error::Config(format!(
                    "--ema must be a decay in (0, 1), e.g. 0.999, or 0 to disable the EMA; \
                     got {v}"
                )));
            }
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
        Ok(())
    }

    /// The options given other than --steps, as `--name`: a resumed run cannot apply them.
    fn given_except_steps(&self) -> Vec<&'static str> {
        let flags = [
            ("--batch-size", self.batch_size.is_some()),
            ("--lr", self.lr.is_some()),
            ("--warmup-steps", self.warmup_steps.is_some()),
            ("--min-lr", self.min_lr.is_some()),
            ("--weight-decay", self.weight_decay.is_some()),
            ("--grad-clip", self.grad_clip.is_some()),
            ("--ema", self.ema.is_some()),
            ("--label-dropout", self.label_dropout.is_some()),
            ("--noise-sigma", self.noise_sigma.is_some()),
            ("--dequantize", self.dequantize),
            ("--hflip", self.hflip),
            ("--seed", self.seed.is_some()),
            ("--eval-every", self.eval_every.is_some()),
            ("--sample-every", self.sample_every.is_some()),
            ("--checkpoint-every", self.checkpoint_every.is_some()),
            ("--keep-checkpoints", self.keep_checkpoints.is_some()),
            ("--skip-nonfinite", self.skip_nonfinite.is_some()),
            ("--sample-cfg", self.sample_cfg.is_some()),
            ("--sample-cfg-anneal", self.sample_cfg_anneal.is_some()),
            ("--sample-prior-std", self.sample_prior_std.is_some()),
        ];
        let mut out: Vec<&str> = flags.iter().filter(|f| f.1).map(|f| f.0).collect();
        out.extend(self.shape.given());
        out
    }
}

pub fn check_device(name: &str) -> Result<Device> {
    let device: Device = name.parse()?;
    if device.is_gpu() {
        // Say first what this machine or build lacks, if anything.
        tarflow::gpu::registry::driver(device)?;
        return Err(Error::Device {
            op: "train",
            detail: format!(
                "{device}: the commands run on the CPU for now (the library runs training ops \
                 on {device} through `to_device`); use --device cpu"
            ),
        });
    }
    Ok(device)
}

/// Refuses options a resumed run would ignore: it continues with its saved settings, and
/// changing the optimiser, data order or model mid-run would not give the run they describe.
fn check_resume_options(a: &TrainArgs) -> Result<()> {
    let mut ignored = a.hp.given_except_steps();
    if a.out.is_some() {
        ignored.insert(0, "--out");
    }
    if ignored.is_empty() {
        return Ok(());
    }
    Err(Error::Config(format!(
        "--resume continues a run with its saved settings and cannot apply {}; only --steps, \
         --quiet and --device may be given with it (start a new run to change the others)",
        ignored.join(", ")
    )))
}

pub fn train(a: TrainArgs) -> Result<()> {
    check_train(&a)?;
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
            let cfg = new_run_config(&a)?;
            let (train, test) =
                open_data(a.data.as_deref(), cfg.model.channels, cfg.model.image_size)?;
            let mut t = Trainer::new(cfg, train, test)?;
            t.claim_out_dir(a.overwrite)?;
            t
        }
    };
    let stop = trainer.stop_flag();
    signals::stop_on_interrupt(stop.clone());
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
    // The bar draws on stderr and hides itself when stderr is not a terminal; log lines go
    // to stdout either way (a hidden bar's println drops them), with the bar cleared around
    // them when it is shown. Without a visible bar, step lines stand in for it.
    let plain = bar.is_hidden();
    let log = |line: String| bar.suspend(|| say!("{line}"));
    let t0 = Instant::now();
    let mut last_checkpoint = None;
    trainer.run(|ev| match ev {
        Event::Step(s) if s.skipped => {
            bar.set_position(s.step as u64);
            log(format!(
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
            if plain && s.step % 100 == 0 {
                log(format!(
                    "step {} loss {:.4} train bits/dim {:.3} {:.0} img/s",
                    s.step, s.loss, s.train_bpd, s.images_per_sec
                ));
            }
        }
        Event::Eval { step, result } => log(format!(
            "step {step}: test bits/dim {:.4} ({} images)",
            result.bpd, result.images
        )),
        Event::Samples { path, .. } => log(format!("samples -> {}", path.display())),
        Event::Checkpoint { step, path } => {
            last_checkpoint = Some((step, path.to_path_buf()));
            log(format!("checkpoint -> {}", path.display()))
        }
    })?;
    bar.finish();
    if let Some(sig) = signals::received() {
        let saved = match &last_checkpoint {
            Some((step, path)) => {
                format!("the last checkpoint is step {step} ({})", path.display())
            }
            None => "no checkpoint was written".into(),
        };
        say_err!(
            "interrupted by {} at step {} of {}: {saved}; continue with: tarflow train --resume {}",
            signals::name(sig),
            trainer.step,
            cfg.steps,
            cfg.out_dir.display()
        );
        // The lock is released by the exit; the checkpoint is already on disk.
        std::process::exit(128 + sig);
    }
    say!("done in {:.1} min", t0.elapsed().as_secs_f64() / 60.0);
    Ok(())
}

/// SIGINT and SIGTERM stop a training run after the step in progress, with a checkpoint;
/// a second one ends the process at once (the checkpoints on disk are whole either way:
/// they are written atomically).
mod signals {
    use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
    use std::sync::{Arc, OnceLock};

    static RECEIVED: AtomicI32 = AtomicI32::new(0);
    static STOP: OnceLock<Arc<AtomicBool>> = OnceLock::new();

    /// The signal that asked the run to stop, if one did.
    pub fn received() -> Option<i32> {
        match RECEIVED.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s),
        }
    }

    pub fn name(sig: i32) -> &'static str {
        match sig {
            2 => "SIGINT",
            15 => "SIGTERM",
            _ => "a signal",
        }
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    extern "C" fn on_signal(sig: libc::c_int) {
        if RECEIVED.swap(sig, Ordering::SeqCst) != 0 {
            // SAFETY: _exit is async-signal-safe; nothing is unwound or flushed.
            unsafe { libc::_exit(128 + sig) };
        }
        // Only atomic loads and stores: async-signal-safe. The flag is set before the
        // handler is installed, so it is always there.
        if let Some(flag) = STOP.get() {
            flag.store(true, Ordering::SeqCst);
        }
    }

    /// Sets `flag` on SIGINT or SIGTERM. Elsewhere than Linux with glibc the signals keep
    /// their default action (the run ends; the newest checkpoint on disk is whole).
    pub fn stop_on_interrupt(flag: Arc<AtomicBool>) {
        if STOP.set(flag).is_err() {
            return;
        }
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        for sig in [libc::SIGINT, libc::SIGTERM] {
            let handler: extern "C" fn(libc::c_int) = on_signal;
            // SAFETY: the handler only touches atomics and calls _exit, both
            // async-signal-safe; signal() with glibc installs it with SA_RESTART.
            unsafe { libc::signal(sig, handler as libc::sighandler_t) };
        }
    }
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

/// The checks `train` makes before it reads or writes anything: the device, the options a
/// resume cannot apply, and for a new run the preset with the overrides applied and
/// validated (`train` runs these first; the fuzz target's `check_args` calls this).
pub fn check_train(a: &TrainArgs) -> Result<()> {
    check_device(&a.device)?;
    match a.resume {
        Some(_) => check_resume_options(a),
        None => new_run_config(a).map(|_| ()),
    }
}

/// The configuration of a new run: the preset, the overrides, the output and data folders.
fn new_run_config(a: &TrainArgs) -> Result<TrainConfig> {
    let mut cfg = TrainConfig::preset(&a.preset)?;
    a.hp.apply(&mut cfg)?;
    if let Some(o) = &a.out {
        cfg.out_dir = o.clone();
    }
    cfg.data = a.data.clone();
    cfg.validate()?;
    Ok(cfg)
}
