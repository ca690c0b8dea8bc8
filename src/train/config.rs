//! Training configuration.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::TarFlowConfig;
use crate::tensor::layout::checked_product;
use crate::tensor::Device;

/// How 8-bit pixels become continuous training inputs.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum NoiseMode {
    /// `x = 2p/255 - 1 + sigma * eps` (TarFlow's choice for sample quality; denoise after
    /// sampling).
    Gaussian {
        /// Standard deviation of the noise on the `[-1, 1]` input scale (0 = no noise).
        sigma: f64,
    },
    /// `x = 2 (p + u) / 256 - 1`, `u ~ U[0,1)` (for likelihood runs: bits/dim are exact).
    Dequantize,
}

/// Everything a training run depends on. Saved with every checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Architecture of the model being trained.
    pub model: TarFlowConfig,
    /// Optimisation steps of the whole run (skipped ones included); also the length of the
    /// learning-rate schedule.
    pub steps: usize,
    /// Training images per step; batches are drop-last, so the training set must hold at
    /// least this many.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warm-up steps from `min_lr` to `lr`.
    pub warmup_steps: usize,
    /// Start and end of the schedule (cosine decay to it).
    pub min_lr: f64,
    /// AdamW's decoupled weight decay: each update multiplies the weights by
    /// `1 - lr * weight_decay`.
    pub weight_decay: f64,
    /// AdamW's decay rate of the first-moment estimate, in `[0, 1)`.
    pub beta1: f64,
    /// AdamW's decay rate of the second-moment estimate, in `[0, 1)`.
    pub beta2: f64,
    /// Global gradient-norm clip.
    pub grad_clip: Option<f64>,
    /// EMA decay of the weights used for evaluation and sampling.
    pub ema: Option<f64>,
    /// Probability of replacing a label by the null class (conditional models).
    pub label_dropout: f64,
    /// How pixels become training inputs.
    pub noise: NoiseMode,
    /// Horizontal flips of training images.
    pub hflip: bool,
    /// Seed of the model's initialisation and of every random stream of the run (data order,
    /// flips, input noise, label dropout, evaluation and sample grids).
    pub seed: u64,
    /// Steps between test evaluations (0 = only at the end).
    pub eval_every: usize,
    /// Steps between sample grids (0 = only at the end).
    pub sample_every: usize,
    /// Steps between checkpoints (0 = only at the end, or where [`Trainer::run_until`]
    /// stops).
    ///
    /// [`Trainer::run_until`]: crate::train::Trainer::run_until
    pub checkpoint_every: usize,
    /// Test images used by periodic evaluation (0 = all).
    pub eval_images: usize,
    /// Samples per class in the periodic grid.
    pub samples_per_class: usize,
    /// Classifier-free guidance weight for the periodic grid.
    pub sample_cfg: f64,
    /// Anneal that weight linearly over the tokens (`w (i+1)/(N-1)`), as `tarflow sample
    /// --cfg-anneal` does. Absent in run states written before the option existed: off.
    #[serde(default)]
    pub sample_cfg_anneal: bool,
    /// Denoise the periodic grid with the model's score.
    pub sample_denoise: bool,
    /// Standard deviation of the prior noise for the periodic grid (below 1 trades variety
    /// for cleaner samples, as in Glow).
    pub sample_prior_std: f64,
    /// Steps in a row whose loss or gradient is not finite that are skipped (no update; the
    /// batch is used up and the schedule moves on, as mixed-precision trainers do) before the
    /// run stops with an error. 0 stops at the first. Absent in older run states: 0.
    #[serde(default)]
    pub skip_nonfinite: usize,
    /// Checkpoints kept in `out_dir`.
    pub keep_checkpoints: usize,
    /// Folder for checkpoints, sample grids, `metrics.jsonl` and `bpd.png`; created when
    /// needed.
    pub out_dir: PathBuf,
    /// Data directory (None = the embedded MNIST digits); see [`crate::train::open_data`].
    pub data: Option<PathBuf>,
    /// Where the model trains, is evaluated and samples (the CPU by default). Not saved with
    /// checkpoints: where a run continues is chosen when it is resumed
    /// ([`crate::train::Trainer::resume_on`]).
    #[serde(skip)]
    pub device: Device,
    /// Operand precision of the training step's matrix products on a GPU device
    /// ([`crate::backend::Precision`]): bf16 runs every GEMM of the forward and backward on
    /// the tensor cores with f32 accumulation, weights, gradients and optimiser state staying
    /// f32; evaluation and sampling are f32 either way. bf16 needs a GPU device. Absent in
    /// older run states: f32; written only when bf16, so f32 run states are unchanged.
    #[serde(default, skip_serializing_if = "crate::backend::Precision::is_f32")]
    pub precision: crate::backend::Precision,
    /// What each Transformer layer recomputes in the training step's backward instead of
    /// keeping it from the forward ([`crate::model::Recompute`]): less memory for more
    /// arithmetic, the same gradients bit for bit. Absent in older run states: none;
    /// written only when set, so other run states are unchanged.
    #[serde(default, skip_serializing_if = "crate::model::Recompute::is_none")]
    pub recompute: crate::model::Recompute,
}

impl TrainConfig {
    /// Defaults for a model preset: `tiny`, `small`, `mnist`, `cifar10`, `imagenet64`.
    /// `mnist-likelihood` is the `small` model trained with uniform dequantisation;
    /// `mnist-likelihood-long` a two-hour run of it on 2 x 2 patches.
    pub fn preset(name: &str) -> Result<Self> {
        // The default MNIST run uses config S (K = 2) so it finishes in minutes on a laptop;
        // `--layers 4` gives the official demo's depth.
        let (model_name, noise) = match name {
            "mnist" => ("small", NoiseMode::Gaussian { sigma: 0.0 }),
            "mnist-likelihood" | "mnist-likelihood-long" => ("small", NoiseMode::Dequantize),
            other => (other, NoiseMode::Gaussian { sigma: 0.0 }),
        };
        let model = TarFlowConfig::preset(model_name).map_err(|_| {
            Error::Config(format!(
                "unknown preset '{name}' (known: tiny, small, mnist, mnist-likelihood, \
                 mnist-likelihood-long, cifar10, imagenet64)"
            ))
        })?;
        let noise = match noise {
            NoiseMode::Gaussian { .. } => NoiseMode::Gaussian {
                sigma: model.noise_sigma,
            },
            d => d,
        };
        let mut c = TrainConfig {
            model,
            steps: 1200,
            batch_size: 64,
            lr: 2e-3,
            warmup_steps: 100,
            min_lr: 1e-6,
            weight_decay: 1e-4,
            beta1: 0.9,
            beta2: 0.95,
            grad_clip: Some(1.0),
            ema: None,
            label_dropout: 0.1,
            noise,
            hflip: false,
            seed: 0,
            eval_every: 400,
            sample_every: 400,
            checkpoint_every: 400,
            eval_images: 1000,
            samples_per_class: 8,
            sample_cfg: 2.0,
            sample_cfg_anneal: false,
            sample_denoise: true,
            sample_prior_std: 0.8,
            skip_nonfinite: 0,
            keep_checkpoints: 3,
            out_dir: PathBuf::from(format!("runs/{name}")),
            data: None,
            device: Device::Cpu,
            precision: crate::backend::Precision::F32,
            recompute: crate::model::Recompute::None,
        };
        match name {
            "tiny" => {
                c.steps = 200;
                c.eval_every = 100;
                c.sample_every = 100;
                c.checkpoint_every = 100;
                c.eval_images = 200;
            }
            "cifar10" | "imagenet64" => {
                c.lr = 1e-4;
                c.batch_size = 256;
                c.hflip = true;
                c.steps = 100_000;
                c.warmup_steps = 1000;
                c.eval_every = 5000;
                c.sample_every = 5000;
                c.checkpoint_every = 5000;
            }
            "mnist" | "small" => {
                // 12 minutes on 2 cores (docs/results.md). The peak rate of 3e-3 and the
                // annealed guidance of the grid made 2 and 5 recognisable (they were not at
                // 2e-3 with a constant weight of 2).
                c.steps = 2000;
                c.lr = 3e-3;
                c.sample_cfg = 3.0;
                c.sample_cfg_anneal = true;
                c.eval_every = 500;
                c.sample_every = 500;
                c.checkpoint_every = 500;
            }
            "mnist-likelihood" => {
                // 2,400 steps at a higher peak rate reach 1.97 bits/dim (docs/results.md);
                // fewer evaluations keep the run near 15 minutes on 2 cores.
                c.steps = 2400;
                c.lr = 3e-3;
                c.eval_every = 800;
                c.sample_every = 800;
                c.checkpoint_every = 800;
                c.sample_denoise = false;
                c.sample_cfg = 0.0;
            }
            "mnist-likelihood-long" => {
                // Within a token the affine step treats every value as independent given the
                // tokens before it, so 16-value tokens (p4) cost likelihood that 4-value tokens
                // (p2) recover: at 500 steps, 3.0 train bits/dim against 4.8. Width 64 keeps
                // the step at about 1.7x p4 C128's cost. A long run needs a gentler rate and
                // the soft clip of the log-scales (lr 3e-3 without it diverged at 16,000 steps).
                // Batches of 32 give twice the updates for the same images, which this
                // under-fitted model turns into likelihood (docs/results.md).
                c.model.patch_size = 2;
                c.model.width = 64;
                c.model.alpha_clip = Some(4.0);
                c.batch_size = 32;
                c.steps = 17000;
                c.lr = 2e-3;
                c.eval_every = 1700;
                c.sample_every = 8500;
                c.checkpoint_every = 1000;
                c.sample_denoise = false;
                c.sample_cfg = 0.0;
                // A safety net for a long run; it changes nothing while every step is finite.
                c.skip_nonfinite = 10;
            }
            _ => {}
        }
        c.validate()?;
        Ok(c)
    }

    /// Checks the model configuration and the ranges of the training settings, failing on
    /// the first one that is out of range.
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        let bad = |m: String| Err(Error::Config(m));
        if self.steps == 0 {
            return bad(
                "steps must be positive: a run of 0 steps trains and writes nothing".into(),
            );
        }
        if self.batch_size == 0 {
            return bad("batch size must be positive".into());
        }
        if self.precision == crate::backend::Precision::Bf16 && !self.device.is_gpu() {
            return bad(format!(
                "precision bf16 needs a GPU device (cuda[:N] or ptx-sim), not {}: the CPU \
                 trains in f32",
                self.device
            ));
        }
        let lr_ok = self.lr.is_finite() && self.lr > 0.0;
        let min_ok = self.min_lr.is_finite() && self.min_lr >= 0.0;
        if !lr_ok || !min_ok {
            return bad(format!(
                "learning rates must be positive and finite (lr {}, min_lr {})",
                self.lr, self.min_lr
            ));
        }
        if self.min_lr > self.lr {
            return bad(format!(
                "min_lr {} exceeds lr {}: the schedule decays from lr to min_lr",
                self.min_lr, self.lr
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!(
                "weight decay must be >= 0 and finite, got {}",
                self.weight_decay
            ));
        }
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) {
            return bad(format!(
                "betas must be in [0, 1), got beta1 {} and beta2 {}",
                self.beta1, self.beta2
            ));
        }
        if !(0.0..=1.0).contains(&self.label_dropout) {
            return bad(format!(
                "label dropout must be in [0, 1], got {}",
                self.label_dropout
            ));
        }
        if let Some(e) = self.ema {
            if !(0.0..1.0).contains(&e) {
                return bad(format!("EMA decay must be in [0, 1), got {e}"));
            }
        }
        if let Some(c) = self.grad_clip {
            if !(c.is_finite() && c > 0.0) {
                return bad(format!("gradient clip must be > 0, got {c}"));
            }
        }
        if let NoiseMode::Gaussian { sigma } = self.noise {
            if !(sigma.is_finite() && sigma >= 0.0) {
                return bad(format!("noise sigma must be >= 0, got {sigma}"));
            }
        }
        if self.keep_checkpoints == 0 {
            return bad("keep at least one checkpoint".into());
        }
        if !self.sample_cfg.is_finite() {
            return bad(format!(
                "sample guidance weight must be finite, got {}",
                self.sample_cfg
            ));
        }
        // The periodic grid: `samples_per_class` rows of every class (4 rows without
        // classes). A grid too large to write is refused now rather than after training.
        let rows = match self.model.num_classes {
            0 => 4,
            k => k,
        };
        let grid = checked_product([self.samples_per_class.max(1), rows, self.model.image_dim()]);
        if grid.is_none_or(|bytes| bytes > crate::imageio::MAX_GRID_BYTES) {
            return bad(format!(
                "samples_per_class {} makes a sample grid of more than {} bytes",
                self.samples_per_class,
                crate::imageio::MAX_GRID_BYTES
            ));
        }
        if !(self.sample_prior_std.is_finite() && self.sample_prior_std > 0.0) {
            return bad(format!(
                "sample prior std must be > 0, got {}",
                self.sample_prior_std
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_validate() {
        for p in [
            "mnist",
            "mnist-likelihood",
            "mnist-likelihood-long",
            "tiny",
            "small",
            "cifar10",
            "imagenet64",
        ] {
            let c = TrainConfig::preset(p).unwrap();
            c.validate().unwrap();
            assert_eq!(c.out_dir, PathBuf::from(format!("runs/{p}")));
        }
        assert!(TrainConfig::preset("mnist-long").is_err());
    }

    /// Each setting out of range is a config error that names it.
    #[test]
    fn settings_out_of_range_are_named() {
        type Spoil = fn(&mut TrainConfig);
        let cases: [(&str, Spoil); 18] = [
            ("steps must be positive", |c| c.steps = 0),
            ("batch size", |c| c.batch_size = 0),
            ("EMA decay must be in [0, 1), got NaN", |c| {
                c.ema = Some(f64::NAN)
            }),
            ("gradient clip must be > 0, got NaN", |c| {
                c.grad_clip = Some(f64::NAN)
            }),
            ("label dropout must be in [0, 1], got NaN", |c| {
                c.label_dropout = f64::NAN
            }),
            ("got beta1 NaN", |c| c.beta1 = f64::NAN),
            ("noise sigma", |c| {
                c.noise = NoiseMode::Gaussian {
                    sigma: f64::INFINITY,
                }
            }),
            ("learning rates", |c| c.lr = f64::NAN),
            ("learning rates", |c| c.min_lr = -1.0),
            ("exceeds lr", |c| c.min_lr = 2.0 * c.lr),
            ("weight decay", |c| c.weight_decay = -0.1),
            ("weight decay", |c| c.weight_decay = f64::INFINITY),
            ("betas", |c| c.beta2 = 1.0),
            ("label dropout", |c| c.label_dropout = 1.5),
            ("EMA decay", |c| c.ema = Some(1.0)),
            ("gradient clip", |c| c.grad_clip = Some(0.0)),
            ("checkpoint", |c| c.keep_checkpoints = 0),
            ("prior std", |c| c.sample_prior_std = 0.0),
        ];
        for (what, spoil) in cases {
            let mut c = TrainConfig::preset("tiny").unwrap();
            spoil(&mut c);
            let e = c.validate().unwrap_err();
            assert!(
                matches!(e, Error::Config(_)) && e.to_string().contains(what),
                "{what}: {e}"
            );
        }
    }

    /// docs/results.md reports the long preset's figures from the command line it stands for:
    /// `--preset mnist-likelihood --patch-size 2 --width 64 --batch-size 32 --steps 17000
    /// --lr 2e-3 --alpha-clip 4 --eval-every 1700 --sample-every 8500 --checkpoint-every 1000
    /// --skip-nonfinite 10`.
    #[test]
    fn long_likelihood_preset_is_the_documented_command() {
        let mut c = TrainConfig::preset("mnist-likelihood").unwrap();
        c.model.patch_size = 2;
        c.model.width = 64;
        c.model.alpha_clip = Some(4.0);
        c.batch_size = 32;
        c.steps = 17000;
        c.lr = 2e-3;
        c.eval_every = 1700;
        c.sample_every = 8500;
        c.checkpoint_every = 1000;
        c.skip_nonfinite = 10;
        c.out_dir = PathBuf::from("runs/mnist-likelihood-long");
        assert_eq!(TrainConfig::preset("mnist-likelihood-long").unwrap(), c);
    }
}
