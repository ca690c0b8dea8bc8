//! Training: the loop, periodic evaluation and samples, metrics, and checkpoints that resume
//! bit-identically.

mod config;
mod data;
mod eval;
mod metrics;
#[cfg(feature = "plot")]
pub mod plot;
pub mod run_dir;

pub use config::{NoiseMode, TrainConfig};
pub use data::{open_data, pack_data};
pub use eval::{dequantize, evaluate_bpd, with_gaussian_noise, EvalResult};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::autograd::no_grad;
use crate::data::{Batch, Dataset, Loader, LoaderConfig, LoaderState, Prefetcher};
use crate::error::{Error, Result};
use crate::fsutil::{atomic_write, read_file};
use crate::imageio::{f32_to_u8_images, write_grid, GridStyle};
use crate::model::{checkpoint_bytes, parse_checkpoint, Guidance, SampleOptions, Sampler, TarFlow};
use crate::nn::ParamStore;
use crate::optim::{AdamW, AdamWConfig, AdamWParamState, AdamWState, Ema, EmaState, LrSchedule};
use crate::rng::Rng;
use crate::tensor::{DType, Device, Tensor};
use crate::tensorio::{parse_tensors_with_metadata, tensors_to_bytes};

/// Statistics of one optimisation step.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepStats {
    /// Number of this step, counting from 1 ([`Trainer::step`] once it is done).
    pub step: usize,
    /// Training loss in nats per dimension (prior term without its constant, minus log-det).
    pub loss: f64,
    /// The loss as bits/dim of the training inputs (with the `ln 2pi` and `ln 128` terms):
    /// exact for dequantised inputs, a figure for the noisy inputs otherwise.
    pub train_bpd: f64,
    /// Learning rate of this step, from the warm-up and cosine schedule.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Batch images over the step's wall-clock time (data loading excluded), in images/s.
    pub images_per_sec: f64,
    /// The loss or gradient was not finite and the update was skipped (see
    /// [`TrainConfig::skip_nonfinite`]); `loss` and `train_bpd` are then not finite either.
    pub skipped: bool,
}

/// Something the training loop reports to its caller (progress bars, logs).
pub enum Event<'a> {
    /// An optimisation step finished (also sent for skipped steps).
    Step(&'a StepStats),
    /// The evaluation model was scored on the test set.
    Eval {
        /// Steps taken when it was evaluated.
        step: usize,
        /// Bits/dim of the evaluation model on the test set.
        result: &'a EvalResult,
    },
    /// A grid of samples was written.
    Samples {
        /// Steps taken when it was sampled.
        step: usize,
        /// The PNG file, `samples-STEP.png` in the output folder.
        path: &'a Path,
    },
    /// A checkpoint was written.
    Checkpoint {
        /// Steps taken when it was saved.
        step: usize,
        /// The model file, `model-STEP.safetensors` in the output folder.
        path: &'a Path,
    },
}

/// Saved beside each model checkpoint: what `--resume` needs besides the weights.
#[derive(Serialize, Deserialize)]
struct RunState {
    config: TrainConfig,
    step: usize,
    rng: [u64; 4],
    loader: LoaderState,
    adamw_step: u64,
    adamw_param_steps: Vec<u64>,
    ema_updates: Option<u64>,
    #[serde(default)]
    skipped_in_row: usize,
}

/// What [`Trainer::resume`] reads from the newest complete checkpoint.
struct LatestCheckpoint {
    step: usize,
    run: RunState,
    tensors: HashMap<String, Tensor<f32>>,
    /// Appended to errors about this checkpoint: where the previous one is.
    hint: String,
}

const RUN_STATE_KEY: &str = "tarflow.run_state";
const LN_2PI: f64 = 1.837_877_066_409_345_5;

/// The random inputs of one training step: the noisy (or dequantised) images, which labels
/// survive label dropout, and the generator's state after drawing them.
struct StepInputs {
    x: Vec<f32>,
    keep_label: Vec<bool>,
    rng_after: [u64; 4],
}

impl StepInputs {
    /// The draws of one step on `batch`, noise first, then one dropout draw per image.
    fn draw(batch: &Batch, cfg: &TrainConfig, rng: &mut Rng) -> StepInputs {
        let x = match cfg.noise {
            NoiseMode::Gaussian { sigma } => with_gaussian_noise(&batch.images, sigma, rng),
            NoiseMode::Dequantize => dequantize(&batch.images, rng),
        };
        // Draw for every image so the stream does not depend on the labels.
        let keep_label = (0..batch.labels.len())
            .map(|_| rng.uniform() >= cfg.label_dropout)
            .collect();
        StepInputs {
            x,
            keep_label,
            rng_after: rng.state(),
        }
    }
}

/// A training run over a data set.
///
/// ```no_run
/// use tarflow::data::embedded_mnist_split;
/// use tarflow::train::{Event, TrainConfig, Trainer};
/// let (train, test) = embedded_mnist_split()?;
/// let mut cfg = TrainConfig::preset("tiny")?;
/// cfg.out_dir = std::env::temp_dir().join("tarflow-doc-run");
/// let mut trainer = Trainer::new(cfg, train, test)?;
/// trainer.run(|ev| if let Event::Eval { step, result } = ev {
///     println!("step {step}: {:.3} bits/dim", result.bpd);
/// })?;
/// # Ok::<(), tarflow::Error>(())
/// ```
pub struct Trainer {
    config: TrainConfig,
    /// The model being trained, with its raw weights ([`Trainer::eval_model`] gives the
    /// EMA ones).
    pub model: TarFlow<f32>,
    params: ParamStore<f32>,
    opt: AdamW<f32>,
    ema: Option<Ema<f32>>,
    schedule: LrSchedule,
    train: Arc<Dataset>,
    test: Arc<Dataset>,
    loader_state: LoaderState,
    rng: Rng,
    /// Optimisation steps taken so far (skipped ones included).
    pub step: usize,
    /// Steps skipped since the last update (see [`TrainConfig::skip_nonfinite`]).
    skipped_in_row: usize,
    /// Held from the first write to `out_dir` (or from [`Trainer::resume`]) to the drop.
    run_dir: Option<run_dir::RunDirLock>,
    /// Set from outside (a signal handler) to stop the loop after the current step.
    stop: Arc<AtomicBool>,
}

fn check_data(cfg: &TrainConfig, d: &Dataset, what: &str) -> Result<()> {
    d.validate(&format!("the {what} set"))?;
    let m = &cfg.model;
    if d.channels != m.channels || d.height != m.image_size || d.width != m.image_size {
        return Err(Error::Config(format!(
            "{what} images are {}x{}x{}, the model expects {}x{}x{}",
            d.channels, d.height, d.width, m.channels, m.image_size, m.image_size
        )));
    }
    if d.is_empty() {
        return Err(Error::Config(format!("the {what} set is empty")));
    }
    if m.num_classes > 0 && d.num_classes > m.num_classes {
        return Err(Error::Config(format!(
            "the {what} set has {} classes, the model {}",
            d.num_classes, m.num_classes
        )));
    }
    Ok(())
}

/// Warm-up from `min_lr` to `lr`, then a cosine down to `min_lr` at `steps`.
fn schedule_of(config: &TrainConfig) -> Result<LrSchedule> {
    LrSchedule::warmup_cosine(
        config.min_lr,
        config.lr,
        config.min_lr,
        config.warmup_steps as u64,
        config.steps as u64,
    )
}

impl Trainer {
    /// A fresh run (model initialised from `config.seed`).
    pub fn new(config: TrainConfig, train: Dataset, test: Dataset) -> Result<Self> {
        config.validate()?;
        check_data(&config, &train, "training")?;
        check_data(&config, &test, "test")?;
        if train.len() < config.batch_size {
            return Err(Error::Config(format!(
                "batch size {} exceeds the {} training images",
                config.batch_size,
                train.len()
            )));
        }
        let mut model = TarFlow::<f32>::new(config.model.clone(), config.seed)?;
        if config.device.is_gpu() {
            // Initialised on the host (the same weights on every device), then moved: the
            // optimiser and EMA state are created beside the parameters.
            model = model.to_device(config.device)?;
        }
        let mut params = ParamStore::new();
        params.insert("", model.parameters())?;
        let opt = AdamW::new(
            &params,
            AdamWConfig {
                lr: config.lr,
                beta1: config.beta1,
                beta2: config.beta2,
                eps: 1e-8,
                weight_decay: config.weight_decay,
            },
        )?;
        let ema = config.ema.map(|_| Ema::new(&params));
        let schedule = schedule_of(&config)?;
        let train = Arc::new(train);
        let loader = Loader::new(
            train.clone(),
            LoaderConfig {
                batch_size: config.batch_size,
                shuffle: true,
                drop_last: true,
                hflip: config.hflip,
                seed: config.seed ^ 0x10ad,
            },
        )?;
        Ok(Trainer {
            rng: Rng::new(config.seed ^ 0x0123_4567_89ab_cdef),
            loader_state: loader.state(),
            config,
            model,
            params,
            opt,
            ema,
            schedule,
            train,
            test: Arc::new(test),
            step: 0,
            skipped_in_row: 0,
            run_dir: None,
            stop: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Makes this run the owner of `config.out_dir` (created when missing) until the trainer
    /// is dropped: takes the directory's lock, which fails while another run holds it, and
    /// removes leftovers of a killed run (temporary files, a state file without its model).
    /// A fresh run refuses a directory that holds another run's checkpoints, sample grids or
    /// metrics, unless `overwrite` is set: then those files are deleted first (other files
    /// stay). [`Trainer::run`] and [`Trainer::save_checkpoint`] call it with `overwrite`
    /// false when it has not been called; a resumed trainer already owns its directory.
    pub fn claim_out_dir(&mut self, overwrite: bool) -> Result<()> {
        if self.run_dir.is_some() {
            return Ok(());
        }
        let dir = self.config.out_dir.clone();
        let lock = run_dir::lock(&dir)?;
        run_dir::remove_leftovers(&dir)?;
        let old = run_dir::run_files(&dir)?;
        if !old.is_empty() {
            if !overwrite {
                // A checkpoint is the file that says most clearly whose directory this is.
                let first = old
                    .iter()
                    .rev()
                    .find(|p| {
                        p.file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with("model-"))
                    })
                    .unwrap_or(&old[0]);
                let first = first.file_name().unwrap_or_default().to_string_lossy();
                let more = match old.len() - 1 {
                    0 => String::new(),
                    n => format!(" and {n} more"),
                };
                return Err(Error::Config(format!(
                    "output directory {} already holds another run's files ({first}{more}): \
                     resume that run (--resume), or start afresh deleting them (--overwrite), \
                     or choose another output directory",
                    dir.display()
                )));
            }
            run_dir::remove_run_files(&dir)?;
        }
        self.run_dir = Some(lock);
        Ok(())
    }

    /// A flag that stops [`Trainer::run`] and [`Trainer::run_until`] after the step in
    /// progress, with a checkpoint of that step, when set (from a signal handler, another
    /// thread, ...). They then return `Ok` with [`Trainer::step`] short of the goal.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// The run's settings, saved with every checkpoint; after [`Trainer::resume`] `out_dir`
    /// is the folder resumed from. Read-only: the optimiser, the schedule and the data order
    /// are built from them once, so a change would apply only in part (see
    /// [`Trainer::set_steps`] to lengthen or shorten a run).
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// Makes the run `steps` steps long from here on, as `tarflow train --resume DIR --steps N`
    /// does. The cosine schedule is stretched (or shrunk) to the new length at the current
    /// step, and the new length is saved with the next checkpoint, so a run resumed from it
    /// follows the same rates. Fails when `steps` is zero or fewer than the steps already
    /// taken.
    pub fn set_steps(&mut self, steps: usize) -> Result<()> {
        if steps == 0 || steps < self.step {
            return Err(Error::Config(format!(
                "steps {steps}: the run has already taken {} steps",
                self.step
            )));
        }
        let mut config = self.config.clone();
        config.steps = steps;
        self.schedule = schedule_of(&config)?;
        self.config = config;
        Ok(())
    }

    /// The model used for evaluation and sampling: the EMA weights when enabled, in host
    /// memory.
    pub fn eval_model(&self) -> Result<TarFlow<f32>> {
        let m = TarFlow::<f32>::new(self.config.model.clone(), 0)?;
        m.load_parameters(&self.model.export_parameters())?;
        if let Some(ema) = &self.ema {
            let mut store = ParamStore::new();
            store.insert("", m.parameters())?;
            ema.copy_to(&store)?;
        }
        Ok(m)
    }

    /// One optimisation step on `batch`.
    pub fn train_step(&mut self, batch: &Batch) -> Result<StepStats> {
        let t0 = Instant::now();
        let inputs = StepInputs::draw(batch, &self.config, &mut self.rng);
        self.step_on(batch, inputs, t0)
    }

    /// The step of [`Trainer::train_step`] on inputs drawn already (on the prefetch thread),
    /// whose random state becomes the trainer's.
    fn step_on(&mut self, batch: &Batch, inputs: StepInputs, t0: Instant) -> Result<StepStats> {
        self.rng = Rng::from_state(inputs.rng_after);
        let cfg = &self.config;
        let mc = &cfg.model;
        let x = Tensor::from_vec(
            inputs.x,
            &[batch.n, mc.channels, mc.image_size, mc.image_size],
        )?
        .to_device(cfg.device)?;
        let labels: Vec<Option<usize>> = batch
            .labels
            .iter()
            .zip(&inputs.keep_label)
            .map(|(&l, &keep)| keep.then_some(l as usize))
            .collect();
        let lab = (mc.num_classes > 0).then_some(labels.as_slice());
        self.params.zero_grad();
        // The forward and, below, the backward: their GEMMs at the configured precision.
        let _precision = crate::backend::matmul_precision(cfg.precision);
        let _recompute = crate::model::recompute(cfg.recompute);
        let out = self.model.forward(&x, lab)?;
        let loss = self.model.loss(&out)?;
        let loss_v = loss.item()? as f64;
        let lr = self.schedule.lr_at(self.step as u64);
        let mut stats = StepStats {
            step: self.step + 1,
            loss: loss_v,
            train_bpd: (loss_v + 0.5 * LN_2PI + 128f64.ln()) / std::f64::consts::LN_2,
            lr,
            grad_norm: f64::NAN,
            images_per_sec: 0.0,
            skipped: false,
        };
        let grad_norm = if loss_v.is_finite() {
            loss.backward()?;
            drop((loss, out));
            self.params.global_grad_norm()?
        } else {
            f64::NAN
        };
        stats.grad_norm = grad_norm;
        if !grad_norm.is_finite() {
            let what = if loss_v.is_finite() {
                "gradient"
            } else {
                "training loss"
            };
            if self.skipped_in_row >= cfg.skip_nonfinite {
                let skipped = match self.skipped_in_row {
                    0 => String::new(),
                    n => format!(" after {n} skipped steps in a row"),
                };
                return Err(Error::NonFinite {
                    what: format!(
                        "{what} at step {}{skipped} (the run diverged; try a lower peak \
                         learning rate, a soft clip of the log-scales: alpha_clip, e.g. 4, \
                         or skipping such steps: skip_nonfinite)",
                        self.step
                    ),
                });
            }
            self.skipped_in_row += 1;
            self.params.zero_grad();
            self.step += 1;
            stats.skipped = true;
            stats.images_per_sec = batch.n as f64 / t0.elapsed().as_secs_f64();
            return Ok(stats);
        }
        self.skipped_in_row = 0;
        if let Some(c) = cfg.grad_clip {
            crate::optim::clip::clip_to(&self.params, c, grad_norm)?;
        }
        self.opt.step(lr)?;
        if let (Some(ema), Some(decay)) = (&mut self.ema, cfg.ema) {
            ema.update(&self.params, decay)?;
        }
        self.params.zero_grad();
        self.step += 1;
        stats.images_per_sec = batch.n as f64 / t0.elapsed().as_secs_f64();
        Ok(stats)
    }

    /// The evaluation model on the run's device.
    fn eval_model_on_device(&self) -> Result<TarFlow<f32>> {
        let m = self.eval_model()?;
        if self.config.device.is_gpu() {
            return m.to_device(self.config.device);
        }
        Ok(m)
    }

    /// Test bits/dim (uniform dequantisation, one draw) of the evaluation model, computed on
    /// the run's device.
    pub fn evaluate(&self) -> Result<EvalResult> {
        let m = self.eval_model_on_device()?;
        evaluate_bpd(
            &m,
            &self.test,
            self.config.eval_images,
            100,
            1,
            self.config.seed ^ 0xe7a1,
        )
    }

    /// Writes a grid of samples to `path` (PNG or JPEG by its extension), sampled on the run's
    /// device: for a class-conditional model one row per class, labelled with the class.
    pub fn write_samples(&self, path: &Path) -> Result<()> {
        let m = self.eval_model_on_device()?;
        let mc = &self.config.model;
        let per = self.config.samples_per_class.max(1);
        let (labels, count) = if mc.num_classes > 0 {
            let labels: Vec<_> = (0..mc.num_classes)
                .flat_map(|c| std::iter::repeat_n(Some(c), per))
                .collect();
            let count = labels.len();
            (labels, count)
        } else {
            (Vec::new(), per * 4)
        };
        let guidance = if mc.num_classes > 0 && self.config.sample_cfg != 0.0 {
            Guidance::ClassifierFree {
                weight: self.config.sample_cfg,
                anneal: self.config.sample_cfg_anneal,
            }
        } else {
            Guidance::None
        };
        let opts = SampleOptions {
            guidance,
            prior_std: self.config.sample_prior_std,
            ..Default::default()
        };
        let mut rng = Rng::new(self.config.seed ^ 0x5a3b1e);
        let (mut x, _) = Sampler::new(&m)?.sample(count, &labels, &mut rng, &opts)?;
        if self.config.sample_denoise {
            if let NoiseMode::Gaussian { sigma } = self.config.noise {
                if sigma > 0.0 {
                    let lab = (mc.num_classes > 0).then_some(labels.as_slice());
                    x = m.denoise(&x.to_device(m.device())?, lab, sigma)?;
                }
            }
        }
        let _g = no_grad();
        let n = x.shape()[0];
        let px = f32_to_u8_images(&x.try_to_vec()?);
        // One class per row, written beside it, as `sample` does for a grid of every class.
        let row_labels = if mc.num_classes > 0 {
            (0..mc.num_classes).map(|k| k.to_string()).collect()
        } else {
            Vec::new()
        };
        let style = GridStyle {
            row_labels,
            ..GridStyle::new(per, 2)
        };
        write_grid(
            path,
            &px,
            n,
            mc.channels,
            mc.image_size,
            mc.image_size,
            &style,
        )
    }

    fn model_path(dir: &Path, step: usize) -> PathBuf {
        dir.join(run_dir::model_name(step))
    }

    fn state_path(dir: &Path, step: usize) -> PathBuf {
        dir.join(run_dir::state_name(step))
    }

    /// Writes `state-STEP.safetensors` (raw weights, optimiser, EMA, RNG and data order) and
    /// then `model-STEP.safetensors` (evaluation weights, loadable by every command), each
    /// atomically, then removes checkpoints beyond `keep_checkpoints`. The model is written
    /// last, so a checkpoint is complete exactly when its model file exists: a crash between
    /// the two writes leaves a state without its model, which is never resumed from and is
    /// removed when the directory is next claimed.
    pub fn save_checkpoint(&mut self) -> Result<PathBuf> {
        self.claim_out_dir(false)?;
        let dir = &self.config.out_dir;
        let opt = self.opt.state();
        let run = RunState {
            config: self.config.clone(),
            step: self.step,
            rng: self.rng.state(),
            loader: self.loader_state.clone(),
            adamw_step: opt.step,
            adamw_param_steps: opt.params.iter().map(|p| p.step).collect(),
            ema_updates: self.ema.as_ref().map(|e| e.state().updates),
            skipped_in_row: self.skipped_in_row,
        };
        let mut owned: Vec<(String, Tensor<f32>)> = Vec::new();
        for (name, t) in self.params.iter() {
            owned.push((format!("param.{name}"), t.detach()));
        }
        for p in &opt.params {
            let shape = self.params.require(&p.name)?.shape().to_vec();
            owned.push((
                format!("adamw.m.{}", p.name),
                Tensor::from_vec(p.m.clone(), &shape)?,
            ));
            owned.push((
                format!("adamw.v.{}", p.name),
                Tensor::from_vec(p.v.clone(), &shape)?,
            ));
        }
        if let Some(ema) = &self.ema {
            for (name, shape, vals) in ema.state().shadow {
                owned.push((format!("ema.{name}"), Tensor::from_vec(vals, &shape)?));
            }
        }
        let refs: Vec<(&str, &Tensor<f32>)> = owned.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let json =
            serde_json::to_string(&run).map_err(|e| Error::format("run state", e.to_string()))?;
        let meta = HashMap::from([(RUN_STATE_KEY.to_string(), json)]);
        atomic_write(
            &Self::state_path(dir, self.step),
            &tensors_to_bytes(&refs, DType::F32, Some(meta))?,
        )?;
        let eval_model = self.eval_model()?;
        let model_path = Self::model_path(dir, self.step);
        let extra = [("tarflow.step".to_string(), self.step.to_string())];
        atomic_write(&model_path, &checkpoint_bytes(&eval_model, &extra)?)?;
        self.prune_checkpoints()?;
        Ok(model_path)
    }

    /// Steps that have both a model and a state file in `dir` (complete checkpoints),
    /// ascending.
    pub fn checkpoint_steps(dir: &Path) -> Result<Vec<usize>> {
        let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        let mut steps = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| Error::io(dir, e))?;
            let name = entry.file_name().to_string_lossy().to_string();
            if let Some(run_dir::RunFile::State(step)) = run_dir::run_file(&name) {
                if Self::model_path(dir, step).exists() {
                    steps.push(step);
                }
            }
        }
        steps.sort_unstable();
        Ok(steps)
    }

    fn prune_checkpoints(&self) -> Result<()> {
        let dir = &self.config.out_dir;
        let steps = Self::checkpoint_steps(dir)?;
        let excess = steps.len().saturating_sub(self.config.keep_checkpoints);
        for &s in &steps[..excess] {
            // Model first: a crash in between leaves a state without its model, which the
            // next claim of the directory removes, rather than a model no prune would reach.
            for p in [Self::model_path(dir, s), Self::state_path(dir, s)] {
                std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
            }
        }
        Ok(())
    }

    /// The configuration of the latest checkpoint in `dir` (to open its data set before
    /// [`Trainer::resume`]).
    pub fn saved_config(dir: &Path) -> Result<TrainConfig> {
        Ok(Self::read_latest(dir)?.run.config)
    }

    /// The newest complete checkpoint of `dir`: its step, run state and state tensors (all
    /// finite), its model file checked to load and to hold the same model config. An error
    /// names the damaged file and, when there is one, the previous checkpoint.
    fn read_latest(dir: &Path) -> Result<LatestCheckpoint> {
        let steps = Self::checkpoint_steps(dir)?;
        let step = *steps.last().ok_or_else(|| {
            Error::Config(format!(
                "no checkpoint (state-*.safetensors with its model-*.safetensors) in {}",
                dir.display()
            ))
        })?;
        let hint = match steps.len() {
            1 => String::new(),
            n => format!(
                " (the previous checkpoint is step {}; remove the damaged files to resume from it)",
                steps[n - 2]
            ),
        };
        let state_path = Self::state_path(dir, step);
        let what = state_path.display().to_string();
        let with_hint = |e: Error| match e {
            Error::Format { what, detail } => Error::format(what, format!("{detail}{hint}")),
            Error::Io { path, source } => {
                Error::format(path.display().to_string(), format!("{source}{hint}"))
            }
            other => Error::format(what.clone(), format!("{other}{hint}")),
        };
        let bytes = read_file(&state_path).map_err(with_hint)?;
        let (tensors, meta) =
            parse_tensors_with_metadata::<f32>(&bytes, &what).map_err(with_hint)?;
        let json = meta
            .get(RUN_STATE_KEY)
            .ok_or_else(|| with_hint(Error::format(&what, "no run state in the metadata")))?;
        let run: RunState = serde_json::from_str(json)
            .map_err(|e| with_hint(Error::format(&what, format!("bad run state: {e}"))))?;
        // A NaN here would load and only show up later as a diverged run.
        let mut names: Vec<&String> = tensors.keys().collect();
        names.sort();
        for name in names {
            let vals = tensors[name].to_vec();
            if let Some(i) = vals.iter().position(|v| !v.is_finite()) {
                return Err(with_hint(Error::format(
                    &what,
                    format!(
                        "tensor '{name}' element {i} is {}, a run state must be finite",
                        vals[i]
                    ),
                )));
            }
        }
        // The model file must be readable too, or the run could not be sampled from. Its
        // tensors are checked against its config, so requiring the state's model config to be
        // the same one bounds the model built by the caller by what the files hold.
        let model_path = Self::model_path(dir, step);
        let model_what = model_path.display().to_string();
        let saved = read_file(&model_path)
            .and_then(|b| parse_checkpoint(&b, &model_what))
            .map_err(|e| match e {
                e @ (Error::Format { .. } | Error::Io { .. }) => with_hint(e),
                other => with_hint(Error::format(&model_what, other.to_string())),
            })?;
        if saved.config != run.config.model {
            return Err(with_hint(Error::format(
                &what,
                format!(
                    "its model config differs from the one in {}",
                    model_path.display()
                ),
            )));
        }
        Ok(LatestCheckpoint {
            step,
            run,
            tensors,
            hint,
        })
    }

    /// Continues the run saved in `dir` from its newest complete checkpoint, taking the
    /// directory's lock first (see [`Trainer::claim_out_dir`]) and removing a killed run's
    /// leftovers. A corrupt or truncated newest checkpoint is an error naming the file and
    /// the previous checkpoint; no checkpoint is changed. On success `metrics.jsonl` is cut
    /// back to the lines written up to the checkpoint's step, so steps redone after a crash
    /// are not logged twice.
    pub fn resume(dir: &Path, train: Dataset, test: Dataset) -> Result<Self> {
        Self::resume_on(dir, train, test, Device::Cpu)
    }

    /// [`Trainer::resume`] with the run continuing on `device` (a run may move between
    /// devices at a checkpoint; the saved state is device-independent).
    pub fn resume_on(dir: &Path, train: Dataset, test: Dataset, device: Device) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::Config(format!(
                "no run directory {} to resume",
                dir.display()
            )));
        }
        let lock = run_dir::lock(dir)?;
        run_dir::remove_leftovers(dir)?;
        let LatestCheckpoint {
            step,
            run,
            tensors,
            hint,
        } = Self::read_latest(dir)?;
        let what = Self::state_path(dir, step).display().to_string();
        let mut config = run.config.clone();
        config.out_dir = dir.to_path_buf();
        config.device = device;
        let mut t = Trainer::new(config, train, test)?;
        let get = |name: &str| {
            tensors.get(name).ok_or_else(|| {
                Error::format(what.clone(), format!("missing tensor '{name}'{hint}"))
            })
        };
        let names = t.params.names();
        for name in &names {
            let src = get(&format!("param.{name}"))?;
            t.params.require(name)?.assign(src)?;
        }
        let mut params = Vec::new();
        for (i, name) in names.iter().enumerate() {
            params.push(AdamWParamState {
                name: name.clone(),
                step: *run
                    .adamw_param_steps
                    .get(i)
                    .ok_or_else(|| Error::format(what.clone(), "optimiser state is incomplete"))?,
                m: get(&format!("adamw.m.{name}"))?.to_vec(),
                v: get(&format!("adamw.v.{name}"))?.to_vec(),
            });
        }
        t.opt.load_state(AdamWState {
            step: run.adamw_step,
            params,
        })?;
        if let Some(ema) = &mut t.ema {
            let shadow = names
                .iter()
                .map(|n| {
                    get(&format!("ema.{n}")).map(|s| (n.clone(), s.shape().to_vec(), s.to_vec()))
                })
                .collect::<Result<Vec<_>>>()?;
            ema.load_state(EmaState {
                updates: run.ema_updates.unwrap_or(0),
                shadow,
            })?;
        }
        t.rng = Rng::from_state(run.rng);
        // Validates the saved position against this data set.
        Loader::from_state(t.train.clone(), &run.loader)?;
        t.loader_state = run.loader;
        t.step = run.step;
        t.skipped_in_row = run.skipped_in_row;
        metrics::truncate_to_step(&dir.join("metrics.jsonl"), t.step)?;
        t.run_dir = Some(lock);
        Ok(t)
    }

    fn append_metrics(&self, line: &serde_json::Value) -> Result<()> {
        metrics::append_line(
            &self.config.out_dir.join("metrics.jsonl"),
            &line.to_string(),
        )
    }

    /// Redraws `bpd.png` from `metrics.jsonl` (see [`plot`]).
    #[cfg(feature = "plot")]
    fn write_plot(&self) -> Result<()> {
        let path = self.config.out_dir.join("metrics.jsonl");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let test_images = match self.config.eval_images {
            0 => self.test.len(),
            n => n.min(self.test.len()),
        };
        plot::write_bpd_plot(
            &self.config.out_dir.join("bpd.png"),
            &plot::BpdCurves::from_metrics(&text),
            &self.config.noise,
            test_images,
        )
    }

    /// A build without the `plot` feature draws no `bpd.png` (metrics.jsonl has the figures).
    #[cfg(not(feature = "plot"))]
    fn write_plot(&self) -> Result<()> {
        Ok(())
    }

    /// Trains until `config.steps`, with periodic evaluation, samples and checkpoints, and a
    /// final one of each. `on_event` sees every step and every file written.
    pub fn run(&mut self, on_event: impl FnMut(Event<'_>)) -> Result<()> {
        self.run_until(self.config.steps, on_event)
    }

    /// Like [`Trainer::run`] but stops after step `stop` (at most `config.steps`), saving a
    /// checkpoint there so the run can be resumed.
    pub fn run_until(&mut self, stop: usize, mut on_event: impl FnMut(Event<'_>)) -> Result<()> {
        let stop = stop.min(self.config.steps);
        self.claim_out_dir(false)?;
        let dir = self.config.out_dir.clone();
        let every = |n: usize, step: usize| n > 0 && step.is_multiple_of(n);
        // The noise and label-dropout draws run on the prefetch thread from a copy of the
        // trainer's generator, in step order, so they are the draws `train_step` would make.
        let (config, mut rng) = (self.config.clone(), self.rng.clone());
        let mut prefetch = Prefetcher::with_stage(
            Loader::from_state(self.train.clone(), &self.loader_state)?,
            2,
            move |batch| {
                let inputs = StepInputs::draw(&batch, &config, &mut rng);
                (batch, inputs)
            },
        );
        let log_every = 10;
        // Sums over the logged interval: bits/dim, loss, updated steps, skipped steps.
        let mut acc = (0.0, 0.0, 0usize, 0usize);
        while self.step < stop {
            let (batch, inputs) = prefetch.next_item()?;
            let stats = self.step_on(&batch, inputs, Instant::now())?;
            self.loader_state = prefetch.state();
            on_event(Event::Step(&stats));
            if stats.skipped {
                acc.3 += 1;
            } else {
                acc = (
                    acc.0 + stats.train_bpd,
                    acc.1 + stats.loss,
                    acc.2 + 1,
                    acc.3,
                );
            }
            let s = self.step;
            let last = s == self.config.steps;
            if s.is_multiple_of(log_every) || last {
                let n = acc.2 as f64;
                let mut line = serde_json::json!({
                    "step": s, "lr": stats.lr,
                    "grad_norm": stats.grad_norm, "images_per_sec": stats.images_per_sec,
                });
                if acc.2 > 0 {
                    line["train_bpd"] = (acc.0 / n).into();
                    line["loss"] = (acc.1 / n).into();
                }
                if acc.3 > 0 {
                    line["skipped"] = acc.3.into();
                }
                self.append_metrics(&line)?;
                acc = (0.0, 0.0, 0, 0);
            }
            if every(self.config.eval_every, s) || last {
                let r = self.evaluate()?;
                self.append_metrics(&serde_json::json!({"step": s, "test_bpd": r.bpd}))?;
                self.write_plot()?;
                on_event(Event::Eval {
                    step: s,
                    result: &r,
                });
            }
            if every(self.config.sample_every, s) || last {
                let path = dir.join(format!("samples-{s:07}.png"));
                self.write_samples(&path)?;
                on_event(Event::Samples {
                    step: s,
                    path: &path,
                });
            }
            let stopping = self.stop.load(Ordering::SeqCst);
            if every(self.config.checkpoint_every, s) || last || s == stop || stopping {
                let path = self.save_checkpoint()?;
                on_event(Event::Checkpoint {
                    step: s,
                    path: &path,
                });
            }
            if stopping {
                break;
            }
        }
        Ok(())
    }
}
