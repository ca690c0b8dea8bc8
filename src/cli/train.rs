//! `tarflow train` and `tarflow eval`.

use super::out::{say, say_err};
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use tarflow::model::{load_checkpoint, Recompute};
use tarflow::train::{evaluate_bpd, open_data, EvalResult, Event, NoiseMode, TrainConfig, Trainer};
use tarflow::{Device, Error, Result};

#[derive(Args)]
pub struct TrainArgs {
    /// Preset: mnist, mnist-likelihood, mnist-likelihood-long, tiny, small, cifar10,
    /// imagenet64 [default: the --config file's, else mnist]
    #[arg(long)]
    preset: Option<String>,
    /// TOML file of settings, keys as in a run's config.toml (any subset); flags override
    /// it, it overrides the preset.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the resolved configuration (TOML, as config.toml) and exit without training.
    #[arg(long)]
    print_config: bool,
    /// Data: a directory of IDX files, CIFAR-10 batches or images, or a pack file written by
    /// `tarflow pack` (memory-mapped) [default: the embedded MNIST digits]
    #[arg(long)]
    data: Option<PathBuf>,
    /// Output directory [default: runs/<preset>]. One run at a time may use it (it is
    /// locked); a directory holding another run's files is refused unless --overwrite.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Delete the checkpoints, sample grids, metrics.jsonl and bpd.png of an earlier run in
    /// the output directory before starting (other files are kept).
    #[arg(long)]
    overwrite: bool,
    /// Continue the run saved in this directory from its newest complete checkpoint, with the
    /// saved settings. Only --steps N (run on to step N, the cosine schedule stretched to the
    /// new length), --quiet and --device may be given with it; other options are refused.
    #[arg(long, conflicts_with_all = ["preset", "config", "data", "overwrite"])]
    resume: Option<PathBuf>,
    /// Where to train, evaluate and sample: cpu, cuda[:N] (a build with the `cuda` feature
    /// and an NVIDIA GPU), or ptx-sim (the PTX interpreter: slow, for checking)
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Matrix products of the training step on a GPU device: f32, or bf16 (tensor cores, f32
    /// accumulation; weights, gradients, optimiser state, evaluation and sampling stay f32)
    /// [default: f32, or the config file's]
    #[arg(long, conflicts_with = "resume")]
    precision: Option<String>,
    /// What each Transformer layer recomputes in the backward instead of keeping from the
    /// forward: none, mlp (its MLP half: about 20 instead of 38 bytes per token and channel
    /// under bf16, for a fifth more arithmetic) or layer (the whole layer: 4 bytes, a third
    /// more arithmetic). The same gradients bit for bit [default: the config file's, else on a
    /// CUDA device the least whose step is estimated to fit the card's memory, else none]
    #[arg(long, conflicts_with = "resume")]
    recompute: Option<String>,
    #[command(flatten)]
    hp: Overrides,
    /// No progress bar: log lines only (also the case when stderr is not a terminal).
    #[arg(long)]
    quiet: bool,
}

/// The mnist preset, for the defaults shown in the help.
fn mnist_preset() -> Option<&'static TrainConfig> {
    static MNIST: std::sync::OnceLock<Option<TrainConfig>> = std::sync::OnceLock::new();
    MNIST
        .get_or_init(|| TrainConfig::preset("mnist").ok())
        .as_ref()
}

/// `what` with the default every preset decides, shown for mnist (`--print-config` shows
/// any preset's).
fn preset_help(what: &str, value: impl Fn(&TrainConfig) -> String) -> String {
    match mnist_preset() {
        Some(c) => format!("{what} [default: the preset's; mnist: {}]", value(c)),
        None => what.to_string(),
    }
}

/// `--grad-clip` and `--ema` off (None) as the flag writes it: 0.
fn or_zero(v: Option<f64>) -> String {
    v.map_or_else(|| "0 (off)".into(), |v| v.to_string())
}

/// Hyper-parameters that override the preset (and the --config file).
#[derive(Args)]
pub struct Overrides {
    #[arg(long, help = preset_help(
        "Optimisation steps of the run (also the length of the learning-rate schedule)",
        |c| c.steps.to_string()))]
    steps: Option<usize>,
    #[arg(long, help = preset_help("Training images per step", |c| c.batch_size.to_string()))]
    batch_size: Option<usize>,
    #[arg(long, help = preset_help("Peak learning rate", |c| c.lr.to_string()))]
    lr: Option<f64>,
    #[arg(long, help = preset_help(
        "Linear warm-up steps from --min-lr to --lr", |c| c.warmup_steps.to_string()))]
    warmup_steps: Option<usize>,
    #[arg(long, help = preset_help(
        "Learning rate at the start and end of the cosine schedule", |c| c.min_lr.to_string()))]
    min_lr: Option<f64>,
    #[arg(long, help = preset_help("AdamW weight decay", |c| c.weight_decay.to_string()))]
    weight_decay: Option<f64>,
    #[arg(long, help = preset_help(
        "Global gradient-norm clip; 0 disables", |c| or_zero(c.grad_clip)))]
    grad_clip: Option<f64>,
    #[arg(long, help = preset_help(
        "EMA decay of the weights (e.g. 0.999); 0 disables", |c| or_zero(c.ema)))]
    ema: Option<f64>,
    #[arg(long, help = preset_help(
        "Probability of training a step's image without its label (for guidance)",
        |c| c.label_dropout.to_string()))]
    label_dropout: Option<f64>,
    #[arg(long, help = preset_help(
        "Gaussian noise augmentation sigma on the [-1, 1] scale",
        |c| match c.noise {
            NoiseMode::Gaussian { sigma } => sigma.to_string(),
            NoiseMode::Dequantize => "none (dequantised)".into(),
        }))]
    noise_sigma: Option<f64>,
    /// Train on uniformly dequantised pixels instead of noisy ones (exact bits/dim)
    /// [default: mnist-likelihood presets only]
    #[arg(long, conflicts_with = "noise_sigma")]
    dequantize: bool,
    /// Flip training images horizontally at random [default: cifar10 and imagenet64 only]
    #[arg(long)]
    hflip: bool,
    #[arg(long, help = preset_help(
        "Seed of the initialisation and of every random stream of the run",
        |c| c.seed.to_string()))]
    seed: Option<u64>,
    #[arg(long, help = preset_help(
        "Steps between test evaluations (0 = only at the end)", |c| c.eval_every.to_string()))]
    eval_every: Option<usize>,
    #[arg(long, help = preset_help(
        "Steps between sample grids (0 = only at the end)", |c| c.sample_every.to_string()))]
    sample_every: Option<usize>,
    #[arg(long, help = preset_help(
        "Steps between checkpoints (0 = only at the end)", |c| c.checkpoint_every.to_string()))]
    checkpoint_every: Option<usize>,
    #[arg(long, help = preset_help(
        "Checkpoints kept in the output directory", |c| c.keep_checkpoints.to_string()))]
    keep_checkpoints: Option<usize>,
    #[arg(long, value_name = "N", help = preset_help(
        "Skip up to N steps in a row whose loss or gradient is not finite; 0 stops at the first",
        |c| c.skip_nonfinite.to_string()))]
    skip_nonfinite: Option<usize>,
    #[arg(long, help = preset_help(
        "Classifier-free guidance weight of the periodic sample grid (0 = none)",
        |c| c.sample_cfg.to_string()))]
    sample_cfg: Option<f64>,
    #[arg(long, conflicts_with = "no_sample_cfg_anneal", help = preset_help(
        "Anneal the grid's guidance weight over the tokens, as `sample --cfg-anneal`",
        |c| if c.sample_cfg_anneal { "on".into() } else { "off".into() }))]
    sample_cfg_anneal: bool,
    /// Keep the grid's guidance weight constant over the tokens (the preset may anneal it).
    #[arg(long)]
    no_sample_cfg_anneal: bool,
    #[arg(long, help = preset_help(
        "Prior standard deviation of the periodic sample grid",
        |c| c.sample_prior_std.to_string()))]
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
        set!(sample_prior_std);
        if self.sample_cfg_anneal {
            c.sample_cfg_anneal = true;
        }
        if self.no_sample_cfg_anneal {
            c.sample_cfg_anneal = false;
        }
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
            ("--sample-cfg-anneal", self.sample_cfg_anneal),
            ("--no-sample-cfg-anneal", self.no_sample_cfg_anneal),
            ("--sample-prior-std", self.sample_prior_std.is_some()),
        ];
        let mut out: Vec<&str> = flags.iter().filter(|f| f.1).map(|f| f.0).collect();
        out.extend(self.shape.given());
        out
    }
}

/// The device named by `--device`, opened: a GPU device that this build or machine cannot
/// reach is an error saying what is missing, before any work starts.
pub fn open_device(name: &str) -> Result<Device> {
    let device: Device = name.parse()?;
    if device.is_gpu() {
        tarflow::gpu::registry::driver(device)?;
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
    let (preset, new_cfg) = match &a.resume {
        Some(dir) => (None, Trainer::saved_config(dir)?),
        None => {
            let (p, c) = new_run_config(&a)?;
            (Some(p), c)
        }
    };
    if a.print_config {
        let text = super::config::to_toml(preset.as_deref(), &new_cfg)?;
        say!("{}", text.trim_end());
        return Ok(());
    }
    let mut trainer = match &a.resume {
        Some(dir) => {
            let saved = new_cfg;
            let (train, test) = open_data(
                saved.data.as_deref(),
                saved.model.channels,
                saved.model.image_size,
            )?;
            let mut t = Trainer::resume_on(dir, train, test, open_device(&a.device)?)?;
            if let Some(s) = a.hp.steps {
                t.set_steps(s)?;
            }
            t
        }
        None => {
            let mut cfg = new_cfg;
            cfg.device = open_device(&a.device)?;
            if a.recompute.is_none() {
                fit_recompute(&mut cfg)?;
            }
            let (train, test) = open_data(
                cfg.data.as_deref(),
                cfg.model.channels,
                cfg.model.image_size,
            )?;
            let mut t = Trainer::new(cfg, train, test)?;
            t.claim_out_dir(a.overwrite)?;
            t
        }
    };
    // The settings the run uses, where it writes, readable back with --config.
    let text = super::config::to_toml(preset.as_deref(), trainer.config())?;
    let config_path = trainer.config().out_dir.join(CONFIG_FILE);
    tarflow::fsutil::atomic_write(&config_path, text.as_bytes())?;
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
    // After the line above, which scripts take as "the run has started" (the interrupt
    // handler is in place by then).
    say!("configuration (also in {}):", config_path.display());
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        say!("  {line}");
    }
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
    say!("done in {}", duration(t0.elapsed()));
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
    /// Checkpoint (.safetensors) to evaluate.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Data directory or pack file, as for `train` [default: the embedded MNIST test split]
    #[arg(long)]
    data: Option<PathBuf>,
    /// Evaluate the training split instead of the test split.
    #[arg(long)]
    train_split: bool,
    /// Dequantisation draws: each image is scored this many times with fresh uniform noise
    /// (with 2 or more, the standard error over the draws is printed too).
    #[arg(long, default_value_t = 4)]
    draws: usize,
    /// Images to use (0 = all).
    #[arg(long, default_value_t = 0)]
    limit: usize,
    /// Images per forward pass.
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// Seed of the dequantisation draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to compute: cpu, cuda[:N] (a build with the `cuda` feature and an NVIDIA GPU),
    /// or ptx-sim (the PTX interpreter: the GPU kernels on the CPU, slow; for checking)
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub fn eval(a: EvalArgs) -> Result<()> {
    let device = open_device(&a.device)?;
    let m = load_checkpoint(&a.checkpoint)?
        .model::<f32>()?
        .to_device(device)?;
    let (train, test) = open_data(a.data.as_deref(), m.config.channels, m.config.image_size)?;
    let data = if a.train_split { train } else { test };
    let t0 = Instant::now();
    let r = evaluate_bpd(&m, &data, a.limit, a.batch_size, a.draws, a.seed)?;
    for line in eval_lines(&r, t0.elapsed().as_secs_f64()) {
        say!("{line}");
    }
    Ok(())
}

/// What `eval` prints: the mean first (scripts read its second word), then each standard
/// error on its own line with what it covers.
fn eval_lines(r: &EvalResult, secs: f64) -> Vec<String> {
    let draws = r.per_draw.len();
    let plural = |n: usize, one: &str| format!("{n} {one}{}", if n == 1 { "" } else { "s" });
    let mut out = vec![format!(
        "bits/dim {:.4} (mean over {} x {}, {secs:.1} s)",
        r.bpd,
        plural(r.images, "image"),
        plural(draws, "dequantisation draw"),
    )];
    out.push(match r.se_images {
        Some(se) => format!(
            "  ± {} standard error over the images (sd of the per-image bits/dim / sqrt({})): \
             how far another {} could move the mean",
            sig(se),
            r.images,
            plural(r.images, "image")
        ),
        None => "  no standard error over the images: one image".into(),
    });
    out.push(match r.se_draws {
        Some(se) => format!(
            "  ± {} standard error over the {draws} draws (sd of the per-draw means / \
             sqrt({draws})): the dequantisation noise left in the mean",
            sig(se)
        ),
        None => "  no standard error over the draws: one draw (--draws 2 or more for one)".into(),
    });
    out
}

/// A standard error with two significant digits and at least four decimals, so that a small
/// one does not print as 0.0000.
fn sig(v: f64) -> String {
    if !v.is_finite() || v == 0.0 {
        return format!("{v}");
    }
    let decimals = 1 - v.abs().log10().floor() as i64;
    if decimals > 10 {
        format!("{v:.1e}")
    } else {
        format!("{v:.*}", decimals.max(4) as usize)
    }
}

/// The checks `train` makes before it writes anything: the device, the options a resume
/// cannot apply, and for a new run the preset with the --config file (the one file read
/// here) and the overrides applied and validated (`train` runs these first; the fuzz
/// target's `check_args` calls this).
pub fn check_train(a: &TrainArgs) -> Result<()> {
    open_device(&a.device)?;
    match a.resume {
        Some(_) => check_resume_options(a),
        None => new_run_config(a).map(|_| ()),
    }
}

/// On a CUDA device, with no recomputation asked for (by flag or config file), the least
/// one whose training step is estimated to fit the card's memory
/// ([`TarFlowConfig::recompute_to_fit`](tarflow::model::TarFlowConfig::recompute_to_fit)):
/// ImageNet64's preset step of 256 images is estimated at 529 GB without, far past any GPU.
/// Said on stderr, and recorded in the run's configuration like a flag.
fn fit_recompute(cfg: &mut TrainConfig) -> Result<()> {
    if !matches!(cfg.device, Device::Cuda(_)) || !cfg.recompute.is_none() {
        return Ok(());
    }
    let Some(total) = tarflow::gpu::registry::driver(cfg.device)?.total_memory()? else {
        return Ok(());
    };
    let gb = |b: f64| tarflow::model::memory::format_bytes(b);
    let batch = cfg.batch_size;
    match cfg.model.recompute_to_fit(batch, total) {
        Some(r) if r.is_none() => {}
        Some(r) => {
            let keep_all = cfg.model.training_bytes(batch, 4, Recompute::None);
            say_err!(
                "recompute {r}: a step of {batch} images keeps about {} of activations without, \
                 and the GPU has {} (--recompute none to insist)",
                gb(keep_all),
                gb(total as f64)
            );
            cfg.recompute = r;
        }
        None => {
            let least = cfg.model.training_bytes(batch, 4, Recompute::Layer);
            say_err!(
                "recompute layer: a step of {batch} images needs about {} even so, and the GPU \
                 has {}; a smaller --batch-size may be needed",
                gb(least),
                gb(total as f64)
            );
            cfg.recompute = Recompute::Layer;
        }
    }
    Ok(())
}

/// The configuration of a new run and the preset it starts from: the preset, then the
/// --config file, then the flags (flag > config file > preset), the output and data folders.
fn new_run_config(a: &TrainArgs) -> Result<(String, TrainConfig)> {
    let file = a.config.as_deref().map(super::config::read).transpose()?;
    let preset = a
        .preset
        .clone()
        .or_else(|| file.as_ref().and_then(|f| f.preset.clone()))
        .unwrap_or_else(|| "mnist".into());
    let mut cfg = TrainConfig::preset(&preset)?;
    if let Some(f) = &file {
        cfg = f.apply(&cfg)?;
    }
    a.hp.apply(&mut cfg)?;
    if let Some(o) = &a.out {
        cfg.out_dir = o.clone();
    }
    if let Some(d) = &a.data {
        cfg.data = Some(d.clone());
    }
    // Named, not opened, here: the precision's check needs to know the kind of device.
    cfg.device = a.device.parse()?;
    if let Some(p) = &a.precision {
        cfg.precision = p.parse()?;
    }
    if let Some(r) = &a.recompute {
        cfg.recompute = r.parse()?;
    }
    cfg.validate()?;
    check_needs_data(&preset, &cfg)?;
    Ok((preset, cfg))
}

/// The embedded digits are 1 x 28 x 28: a model of other images needs --data (before, the
/// run failed later on a shape mismatch that did not say so).
fn check_needs_data(preset: &str, cfg: &TrainConfig) -> Result<()> {
    let m = &cfg.model;
    if cfg.data.is_none() && (m.channels, m.image_size) != (1, 28) {
        return Err(Error::Config(format!(
            "--preset {preset} trains on {}x{}x{} images and needs --data DIR (a folder of \
             CIFAR-10 batches, IDX files or PNG/JPEG images, or a `tarflow pack` file); without it the run would use the \
             embedded MNIST digits, which are 1x28x28",
            m.channels, m.image_size, m.image_size
        )));
    }
    Ok(())
}

/// The name of the resolved configuration `train` writes into the run directory.
pub const CONFIG_FILE: &str = "config.toml";

/// A wall-clock duration for a person: seconds under a minute, minutes and seconds under an
/// hour, hours and minutes above.
fn duration(d: std::time::Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 {
        format!("{s:.1} s")
    } else if s < 3600.0 {
        format!("{} min {:02} s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!(
            "{} h {:02} min",
            (s / 3600.0) as u64,
            ((s % 3600.0) / 60.0) as u64
        )
    }
}

#[cfg(test)]
mod tests {
    use super::{duration, eval_lines, sig};
    use std::time::Duration;
    use tarflow::train::EvalResult;

    #[test]
    fn small_standard_errors_keep_two_significant_digits() {
        for (v, want) in [
            (0.0123, "0.0123"),
            (0.1234, "0.1234"),
            (0.00004567, "0.000046"),
            (2.5, "2.5000"),
            (0.0, "0"),
            (3e-13, "3.0e-13"),
        ] {
            assert_eq!(sig(v), want, "{v}");
        }
    }

    #[test]
    fn eval_output_names_what_each_standard_error_covers() {
        let r = EvalResult {
            bpd: 1.23456,
            se_images: Some(0.0123),
            se_draws: Some(0.00004),
            per_draw: vec![1.2345, 1.2346, 1.2347, 1.2344],
            images: 1000,
        };
        let lines = eval_lines(&r, 2.0);
        assert_eq!(lines[0].split_whitespace().nth(1), Some("1.2346"));
        assert!(
            lines[0].contains("1000 images x 4 dequantisation draws"),
            "{}",
            lines[0]
        );
        assert!(lines[1].contains("± 0.0123") && lines[1].contains("over the images"));
        assert!(lines[2].contains("± 0.000040") && lines[2].contains("over the 4 draws"));
        assert!(
            !lines.concat().contains("95"),
            "no normal quantile: {lines:?}"
        );
        let one = EvalResult {
            se_images: None,
            se_draws: None,
            per_draw: vec![1.0],
            images: 1,
            ..r
        };
        let lines = eval_lines(&one, 0.1);
        assert!(
            lines[0].contains("1 image x 1 dequantisation draw,"),
            "{}",
            lines[0]
        );
        assert!(lines[1].contains("one image") && lines[2].contains("one draw"));
    }

    #[test]
    fn durations_read_in_the_unit_that_fits() {
        for (secs, want) in [
            (0.04, "0.0 s"),
            (2.34, "2.3 s"),
            (59.9, "59.9 s"),
            (61.0, "1 min 01 s"),
            (754.0, "12 min 34 s"),
            (3600.0, "1 h 00 min"),
            (7265.0, "2 h 01 min"),
        ] {
            assert_eq!(duration(Duration::from_secs_f64(secs)), want, "{secs}");
        }
    }
}
