//! KV-cached sampling (latent -> data).
//!
//! Inverting a block is sequential over tokens: token `i + 1` needs the Transformer's output at
//! token `i`, which needs tokens `<= i`. With a key/value cache per layer each step runs one
//! token through the layers and attends to the cached prefix, so a block costs `N - 1` steps,
//! each linear in the prefix length, instead of `N` full passes.
//!
//! Two engines run the steps: on the CPU, `host.rs` copies the weights once into flat
//! buffers and calls the kernels directly; on a GPU device (and on request on the CPU),
//! `composed.rs` runs each step as tensor ops on the model's device.

use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tensor::layout::checked_product;
use crate::tensor::{Device, Element, Tensor};

mod composed;
mod host;

use super::config::TarFlowConfig;
use super::memory::{check_fits, format_bytes};
use super::tarflow::TarFlow;

/// How two branches are combined at every step: `p = p_c + w_i (p_c - p_u)` for both
/// `alpha` and `mu`, with `w_i = w (i + 1) / (N - 1)` when annealed.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub enum Guidance {
    /// No guidance: one branch, the model as it is.
    #[default]
    None,
    /// Classifier-free: the second branch uses the null class (mean class embedding).
    ClassifierFree {
        /// Guidance weight `w` (0 gives the conditional model unchanged).
        weight: f64,
        /// Ramp the weight over tokens, `w_i = w (i + 1) / (N - 1)`, instead of a constant `w`.
        anneal: bool,
    },
    /// Attention temperature: the second branch is the same model with attention logits
    /// divided by `tau` (for unconditional models, or on top of the labels given).
    Temperature {
        /// Guidance weight `w` (0 gives the model unchanged).
        weight: f64,
        /// Attention temperature of the second branch; must be finite and positive.
        tau: f64,
        /// Ramp the weight over tokens, `w_i = w (i + 1) / (N - 1)`, instead of a constant `w`.
        anneal: bool,
    },
    /// Classifier-free guidance whose null-class branch also runs with attention logits
    /// divided by `tau`: the second branch of the official TarFlow sampler when a
    /// class-conditional model is sampled with both a guidance weight and an attention
    /// temperature.
    ClassifierFreeTemperature {
        /// Guidance weight `w` (0 gives the conditional model unchanged).
        weight: f64,
        /// Attention temperature of the null-class branch; must be finite and positive.
        tau: f64,
        /// Ramp the weight over tokens, `w_i = w (i + 1) / (N - 1)`, instead of a constant `w`.
        anneal: bool,
    },
}

impl Guidance {
    /// Whether the second branch uses the null class (the mean class embedding).
    fn null_class_branch(self) -> bool {
        matches!(
            self,
            Guidance::ClassifierFree { .. } | Guidance::ClassifierFreeTemperature { .. }
        )
    }

    /// The attention temperature of the second branch, when it has one.
    fn branch_temperature(self) -> Option<f64> {
        match self {
            Guidance::Temperature { tau, .. } | Guidance::ClassifierFreeTemperature { tau, .. } => {
                Some(tau)
            }
            _ => None,
        }
    }
}

/// Options for [`Sampler::sample`].
#[derive(Clone, Debug)]
pub struct SampleOptions {
    /// How guidance combines two branches at every block (none by default).
    pub guidance: Guidance,
    /// Prior temperature: `z ~ N(0, t^2 I)`.
    pub prior_std: f64,
    /// How many times a sample containing NaN or infinity is redrawn with fresh noise.
    pub max_redraws: usize,
}

impl Default for SampleOptions {
    fn default() -> Self {
        SampleOptions {
            guidance: Guidance::None,
            prior_std: 1.0,
            max_redraws: 8,
        }
    }
}

/// What happened during sampling.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SampleReport {
    /// Samples redrawn because they contained NaN or infinity.
    pub redrawn: usize,
    /// Samples still non-finite after `max_redraws` attempts (left as they are).
    pub failed: usize,
}

/// A model's weights laid out for fast cached inversion.
///
/// ```
/// use tarflow::model::{Guidance, SampleOptions, Sampler, TarFlow, TarFlowConfig};
/// let model = TarFlow::<f32>::new(TarFlowConfig::preset("tiny")?, 0)?;
/// let sampler = Sampler::new(&model)?;
/// let opts = SampleOptions { guidance: Guidance::ClassifierFree { weight: 1.5, anneal: true }, ..Default::default() };
/// let (images, report) = sampler.sample(2, &[Some(1), Some(7)], &mut tarflow::Rng::new(0), &opts)?;
/// assert_eq!(images.shape(), &[2, 1, 28, 28]);
/// assert_eq!(report.failed, 0);
/// # Ok::<(), tarflow::Error>(())
/// ```
pub struct Sampler<E: Element> {
    c: usize,
    d: usize,
    n: usize,
    heads: usize,
    head_dim: usize,
    hidden: usize,
    num_classes: usize,
    alpha_clip: Option<f64>,
    channels: usize,
    size: usize,
    patch: usize,
    engine: Engine<E>,
    /// The model's configuration, for the memory estimate of a request.
    config: TarFlowConfig,
    /// Per-value prior standard deviation `[N * D]` (the square root of the model's
    /// `prior_var`); `None` for the unit prior.
    prior_sd: Option<Vec<f64>>,
}
/// How a [`Sampler`] runs its steps.
enum Engine<E: Element> {
    /// Flat host buffers and direct kernel calls (`host.rs`).
    Host(Vec<host::BlockW<E>>),
    /// Tensor ops on the model's device (`composed.rs`).
    Composed(Box<TarFlow<E>>),
}

/// The guidance weight at step `p` of `n - 1`: `w (p + 1) / (n - 1)` when annealed.
fn guidance_weight(guidance: Guidance, p: usize, n: usize) -> f64 {
    match guidance {
        Guidance::None => 0.0,
        Guidance::ClassifierFree { weight, anneal }
        | Guidance::Temperature { weight, anneal, .. }
        | Guidance::ClassifierFreeTemperature { weight, anneal, .. } => {
            if anneal {
                weight * (p + 1) as f64 / (n - 1) as f64
            } else {
                weight
            }
        }
    }
}

impl<E: Element> Sampler<E> {
    /// A sampler for `model`: on the CPU, the host engine (the weights copied once into the
    /// layout of fast cached inversion); on a GPU device, [`Sampler::composed`].
    pub fn new(model: &TarFlow<E>) -> Result<Self> {
        if model.device().is_gpu() {
            return Self::composed(model);
        }
        // Every buffer is sized from the config, so the weights must match it.
        model.check_structure("Sampler::new")?;
        let blocks = host::host_blocks(model)?;
        Ok(Self::with_engine(model, Engine::Host(blocks)))
    }

    /// A sampler that runs every step as tensor ops on the model's device (CPU or GPU):
    /// the key/value caches are device tensors, each step writes its keys and values into
    /// them and attends over the filled prefix, and the guidance combination and the
    /// inverse affine map run on the device too; latents go up once and samples come down
    /// once. On the CPU it is slower than [`Sampler::new`]'s host engine and agrees with it
    /// to rounding; it exists for GPU devices and as their reference. The sampler shares
    /// the model's parameter tensors (no copy): change the weights and it samples the new
    /// model.
    pub fn composed(model: &TarFlow<E>) -> Result<Self> {
        model.check_structure("Sampler::composed")?;
        let shared = model.to_device(model.device())?;
        Ok(Self::with_engine(model, Engine::Composed(Box::new(shared))))
    }

    fn with_engine(model: &TarFlow<E>, engine: Engine<E>) -> Self {
        let cfg = &model.config;
        Sampler {
            c: cfg.width,
            d: cfg.token_dim(),
            n: cfg.seq_len(),
            heads: cfg.heads(),
            head_dim: cfg.head_dim,
            hidden: cfg.width * cfg.mlp_ratio,
            num_classes: cfg.num_classes,
            alpha_clip: cfg.alpha_clip,
            channels: cfg.channels,
            size: cfg.image_size,
            patch: cfg.patch_size,
            engine,
            config: cfg.clone(),
            prior_sd: model
                .prior_var
                .as_ref()
                .map(|v| v.iter().map(|x| x.sqrt()).collect()),
        }
    }

    /// The device the sampler computes on (the model's).
    pub fn device(&self) -> Device {
        match &self.engine {
            Engine::Host(_) => Device::Cpu,
            Engine::Composed(m) => m.device(),
        }
    }

    /// Latent tokens `[B, N, D]` -> data tokens `[B, N, D]` through all blocks in reverse.
    pub fn reverse_tokens(
        &self,
        z: &Tensor<E>,
        labels: &[Option<usize>],
        guidance: Guidance,
    ) -> Result<Tensor<E>> {
        let s = z.shape();
        if s.len() != 3 || s[1] != self.n || s[2] != self.d {
            return Err(Error::shape(
                "sample",
                &[s],
                E::DTYPE.name(),
                format!("expected latent tokens [B, {}, {}]", self.n, self.d),
            ));
        }
        let b = s[0];
        self.check_labels(labels, b, guidance)?;
        self.check_memory(b, guidance)?;
        match &self.engine {
            Engine::Host(blocks) => self.reverse_host(blocks, z, labels, guidance),
            Engine::Composed(model) => self.reverse_composed(model, z, labels, guidance),
        }
    }

    /// Errors when inverting `count` images with `guidance` would need more memory than
    /// this machine has (see [`TarFlowConfig::sampling_bytes`]); checked before anything is
    /// allocated, so that a huge request is an error rather than an aborted process.
    pub fn check_memory(&self, count: usize, guidance: Guidance) -> Result<()> {
        let branches = if guidance == Guidance::None { 1 } else { 2 };
        let bytes = self
            .config
            .sampling_bytes(count, branches, std::mem::size_of::<E>());
        check_fits(bytes, || {
            format!(
                "sampling {count} images of {} values ({} per image with the key/value caches \
                 of {} layers{})",
                self.n * self.d,
                format_bytes(bytes / count.max(1) as f64),
                self.config.layers_per_block,
                if branches == 2 {
                    ", two guidance branches"
                } else {
                    ""
                }
            )
        })
    }

    fn check_labels(&self, labels: &[Option<usize>], b: usize, guidance: Guidance) -> Result<()> {
        if self.num_classes == 0 {
            if labels.iter().any(|l| l.is_some()) {
                return Err(Error::Config(
                    "class labels given to an unconditional model".into(),
                ));
            }
            if guidance.null_class_branch() {
                return Err(Error::Config(
                    "classifier-free guidance needs a class-conditional model; use attention-temperature guidance".into(),
                ));
            }
        } else if labels.len() != b {
            return Err(Error::Config(format!(
                "{} labels given for {b} samples",
                labels.len()
            )));
        }
        if let Some(c) = labels.iter().flatten().find(|&&c| c >= self.num_classes) {
            return Err(Error::index(
                "sample",
                format!("class {c} out of range for {} classes", self.num_classes),
            ));
        }
        if let Guidance::ClassifierFree { weight, .. }
        | Guidance::Temperature { weight, .. }
        | Guidance::ClassifierFreeTemperature { weight, .. } = guidance
        {
            if !weight.is_finite() {
                return Err(Error::Config(format!(
                    "guidance weight must be finite, got {weight}"
                )));
            }
        }
        if let Some(tau) = guidance.branch_temperature() {
            if !(tau.is_finite() && tau > 0.0) {
                return Err(Error::Config(format!(
                    "attention temperature must be > 0, got {tau}"
                )));
            }
        }
        Ok(())
    }

    /// `b` latents `[b, N, D]` from the prior, `N(0, std^2 diag(var))` (`var = 1` unless the
    /// model has a `prior_var`).
    fn draw(&self, b: usize, std: f64, rng: &mut Rng) -> Result<Tensor<E>> {
        let z = Tensor::<E>::randn(&[b, self.n, self.d], 0.0, std, rng);
        let Some(sd) = &self.prior_sd else {
            return Ok(z);
        };
        let mut v = z.to_vec();
        for row in v.chunks_mut(sd.len()) {
            for (x, s) in row.iter_mut().zip(sd) {
                *x = E::from_f64(x.to_f64() * s);
            }
        }
        Tensor::from_vec(v, &[b, self.n, self.d])
    }

    /// Draws `count` samples as images `[count, C, H, W]`, redrawing samples that come out
    /// non-finite. `labels` is either empty (no class: unconditional models, and the null
    /// class, the mean class embedding, of conditional ones) or one entry per sample
    /// (`Some(class)`, or `None` for the null class); any other length is an error.
    pub fn sample(
        &self,
        count: usize,
        labels: &[Option<usize>],
        rng: &mut Rng,
        opts: &SampleOptions,
    ) -> Result<(Tensor<E>, SampleReport)> {
        if !labels.is_empty() && labels.len() != count {
            return Err(Error::arg(
                "sample",
                format!(
                    "{} labels for {count} samples: give one label per sample, or none",
                    labels.len()
                ),
            ));
        }
        if self.num_classes == 0 && labels.iter().any(|l| l.is_some()) {
            return Err(Error::Config(
                "class labels given to an unconditional model".into(),
            ));
        }
        let b = count;
        if !(opts.prior_std.is_finite() && opts.prior_std >= 0.0) {
            return Err(Error::arg(
                "sample",
                format!("prior_std must be finite and >= 0, got {}", opts.prior_std),
            ));
        }
        let elements = checked_product([b, self.n, self.d])
            .filter(|&e| e <= isize::MAX as usize / std::mem::size_of::<E>());
        if elements.is_none() {
            return Err(Error::arg(
                "sample",
                format!(
                    "{b} samples of {} x {} token values are too many to allocate",
                    self.n, self.d
                ),
            ));
        }
        self.check_memory(b, opts.guidance)?;
        let all_labels: Vec<Option<usize>> = if labels.is_empty() {
            vec![None; b]
        } else {
            labels.to_vec()
        };
        self.check_labels(&all_labels, b, opts.guidance)?;
        let per = self.n * self.d;
        let z = self.draw(b, opts.prior_std, rng)?;
        let mut x = self
            .reverse_tokens(&z, &all_labels, opts.guidance)?
            .to_vec();
        let mut report = SampleReport::default();
        for _ in 0..opts.max_redraws {
            let bad: Vec<usize> = (0..b)
                .filter(|&i| x[i * per..(i + 1) * per].iter().any(|v| !v.is_finite()))
                .collect();
            if bad.is_empty() {
                break;
            }
            report.redrawn += bad.len();
            let sub_labels: Vec<Option<usize>> = bad.iter().map(|&i| all_labels[i]).collect();
            let z = self.draw(bad.len(), opts.prior_std, rng)?;
            let redo = self
                .reverse_tokens(&z, &sub_labels, opts.guidance)?
                .to_vec();
            for (k, &i) in bad.iter().enumerate() {
                x[i * per..(i + 1) * per].copy_from_slice(&redo[k * per..(k + 1) * per]);
            }
        }
        report.failed = (0..b)
            .filter(|&i| x[i * per..(i + 1) * per].iter().any(|v| !v.is_finite()))
            .count();
        let tokens = Tensor::from_vec(x, &[b, self.n, self.d])?;
        let images = super::patch::unpatchify(&tokens, self.channels, self.size, self.patch)?;
        Ok((images.contiguous()?, report))
    }
}
