//! The TarFlow model: patchify, T flow blocks, prior N(0, I).

use crate::autograd;
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tensor::{Element, Tensor};

use super::block::{FlowBlock, Labels};
use super::config::TarFlowConfig;
use super::patch::{patchify, unpatchify};

/// `ln(2 pi)`.
const LN_2PI: f64 = 1.837_877_066_409_345_5;

/// Result of running the flow forward (data -> latent).
pub struct FlowOutput<E: Element> {
    /// Latent tokens `[B, N, D]`.
    pub z: Tensor<E>,
    /// Log-determinant of the whole flow per sample `[B]`.
    pub logdet: Tensor<E>,
    /// Per-block log-determinants `[B, T]` (they sum to `logdet`).
    pub logdet_blocks: Tensor<E>,
}

/// A TarFlow normalizing flow over `E` (`f32` for training, `f64` for audits).
///
/// ```
/// use tarflow::model::{TarFlow, TarFlowConfig};
/// use tarflow::{Rng, Tensor};
/// let model = TarFlow::<f32>::new(TarFlowConfig::preset("tiny")?, 0)?;
/// let x = Tensor::<f32>::rand(&[2, 1, 28, 28], -1.0, 1.0, &mut Rng::new(0));
/// let out = model.forward(&x, Some(&[Some(3), None]))?;
/// assert_eq!(out.z.shape(), &[2, 49, 16]);
/// let loss = model.loss(&out)?; // nats per dimension
/// loss.backward()?;
/// # Ok::<(), tarflow::Error>(())
/// ```
pub struct TarFlow<E: Element> {
    /// The (validated) configuration the model was built from.
    pub config: TarFlowConfig,
    /// The `T` flow blocks in data-to-latent order; those at odd indices run over the
    /// flipped token sequence.
    pub blocks: Vec<FlowBlock<E>>,
    /// Per-value prior variance `[N * D]` (token-major) that sampling draws the latents
    /// with, `z ~ N(0, diag(var))`; `None` is the unit prior. Models imported from the
    /// official code's volume-preserving variant carry the `var` buffer it learned; the
    /// likelihood ([`forward`](Self::forward), [`loss`](Self::loss)) keeps the unit prior,
    /// as the official training loss does. Not a parameter: nothing trains it.
    pub prior_var: Option<Vec<f64>>,
}

impl<E: Element> TarFlow<E> {
    /// A copy of this model with every parameter on `device` (the same values; `f32` only
    /// on a GPU device).
    pub fn to_device(&self, device: crate::tensor::Device) -> Result<Self> {
        Ok(TarFlow {
            config: self.config.clone(),
            blocks: self
                .blocks
                .iter()
                .map(|b| b.to_device(device))
                .collect::<Result<_>>()?,
            prior_var: self.prior_var.clone(),
        })
    }

    /// The device the parameters live on.
    pub fn device(&self) -> crate::tensor::Device {
        self.blocks
            .first()
            .map_or(crate::tensor::Device::Cpu, |b| b.proj_in.weight.device())
    }

    /// A freshly initialised model (validated config; deterministic in `seed`).
    pub fn new(config: TarFlowConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        let mut rng = Rng::new(seed);
        let blocks = (0..config.blocks)
            .map(|t| FlowBlock::new(&config, t, &mut rng))
            .collect::<Result<Vec<_>>>()?;
        Ok(TarFlow {
            config,
            blocks,
            prior_var: None,
        })
    }

    /// Gives every output projection a random weight `N(0, std^2)`. A fresh model has zero
    /// output projections (each block starts as a shift-only map); audits and tests use this
    /// to get a non-trivial flow without training.
    /// `std` must be finite and non-negative, and small enough that every drawn weight fits
    /// `E`; otherwise the model is left unchanged and an error says why.
    pub fn randomize_output_projections(&self, std: f64, seed: u64) -> Result<()> {
        if !(std.is_finite() && std >= 0.0) {
            return Err(Error::arg(
                "randomize_output_projections",
                format!("the standard deviation must be finite and >= 0, got {std}"),
            ));
        }
        let mut rng = Rng::new(seed);
        let draws = self
            .blocks
            .iter()
            .map(|b| Tensor::<E>::randn(b.proj_out.weight.shape(), 0.0, std, &mut rng))
            .collect::<Vec<_>>();
        // A weight past E's range would make a checkpoint that no reader accepts.
        if draws.iter().any(|r| !r.all_finite()) {
            return Err(Error::arg(
                "randomize_output_projections",
                format!(
                    "a standard deviation of {std:e} draws weights beyond the {} range",
                    E::DTYPE.name()
                ),
            ));
        }
        for (b, r) in self.blocks.iter().zip(&draws) {
            b.proj_out.weight.assign(r)?;
        }
        Ok(())
    }

    /// Every parameter with its checkpoint name, in a fixed order.
    pub fn parameters(&self) -> Vec<(String, Tensor<E>)> {
        let mut v = Vec::new();
        for (t, b) in self.blocks.iter().enumerate() {
            v.extend(
                b.parameters()
                    .into_iter()
                    .map(|(n, p)| (format!("blocks.{t}.{n}"), p)),
            );
        }
        v
    }

    /// Total number of parameter elements (not tensors).
    pub fn num_parameters(&self) -> usize {
        self.parameters().iter().map(|(_, t)| t.numel()).sum()
    }

    /// Overwrites every parameter from `(name, shape, values)` records; every model
    /// parameter must be present exactly once with its shape.
    pub fn load_parameters(&self, records: &[(String, Vec<usize>, Vec<f64>)]) -> Result<()> {
        let params = self.parameters();
        if records.len() != params.len() {
            let extra: Vec<&str> = records
                .iter()
                .filter(|(n, _, _)| !params.iter().any(|(p, _)| p == n))
                .map(|(n, _, _)| n.as_str())
                .collect();
            let missing: Vec<&str> = params
                .iter()
                .filter(|(p, _)| !records.iter().any(|(n, _, _)| n == p))
                .map(|(p, _)| p.as_str())
                .collect();
            return Err(Error::format(
                "model parameters",
                format!(
                    "expected {} tensors, got {}; missing {missing:?}, unexpected {extra:?}",
                    params.len(),
                    records.len()
                ),
            ));
        }
        for (name, t) in &params {
            let (_, shape, vals) = records.iter().find(|(n, _, _)| n == name).ok_or_else(|| {
                Error::format("model parameters", format!("missing tensor '{name}'"))
            })?;
            if shape.as_slice() != t.shape() {
                return Err(Error::format(
                    "model parameters",
                    format!(
                        "tensor '{name}' has shape {shape:?}, the model needs {:?}",
                        t.shape()
                    ),
                ));
            }
            if vals.len() != t.numel() {
                return Err(Error::format(
                    "model parameters",
                    format!(
                        "tensor '{name}' of shape {shape:?} needs {} values, got {}",
                        t.numel(),
                        vals.len()
                    ),
                ));
            }
            if let Some(bad) = vals.iter().position(|v| !v.is_finite()) {
                return Err(Error::NonFinite {
                    what: format!("parameter '{name}' (element {bad})"),
                });
            }
            // A finite f64 (e.g. from an F64 checkpoint) can still overflow a narrower `E`.
            if let Some(bad) = vals
                .iter()
                .position(|v| !E::from_f64(*v).to_f64().is_finite())
            {
                return Err(Error::NonFinite {
                    what: format!(
                        "parameter '{name}' (element {bad}: {:e} is out of the {} range)",
                        vals[bad],
                        E::DTYPE.name()
                    ),
                });
            }
            t.update_data(|d| {
                for (o, v) in d.iter_mut().zip(vals) {
                    *o = E::from_f64(*v);
                }
            })?;
        }
        Ok(())
    }

    /// Parameters as `(name, shape, values)` records.
    pub fn export_parameters(&self) -> Vec<(String, Vec<usize>, Vec<f64>)> {
        self.parameters()
            .into_iter()
            .map(|(n, t)| (n, t.shape().to_vec(), t.to_f64_vec()))
            .collect()
    }

    /// The same model in another element type (e.g. `f64` for audits).
    pub fn cast<F: Element>(&self) -> Result<TarFlow<F>> {
        let mut m = TarFlow::<F>::new(self.config.clone(), 0)?;
        m.load_parameters(&self.export_parameters())?;
        m.prior_var = self.prior_var.clone();
        Ok(m)
    }

    /// Checks that the blocks hold exactly the parameters the configuration describes (names
    /// and shapes, attention heads included). The fields are public, so a model edited after
    /// construction may disagree with its config; code that sizes buffers from the config
    /// (the sampler, the audit) calls this first.
    pub(crate) fn check_structure(&self, op: &'static str) -> Result<()> {
        let c = &self.config;
        c.validate()
            .map_err(|e| Error::arg(op, format!("the model's config is invalid: {e}")))?;
        if self.blocks.len() != c.blocks {
            return Err(Error::arg(
                op,
                format!(
                    "the model has {} blocks, its config says {}",
                    self.blocks.len(),
                    c.blocks
                ),
            ));
        }
        let params = self.parameters();
        let mut expected = c.parameter_shapes();
        for (name, t) in &params {
            match expected.next() {
                Some((want, shape)) if &want == name && shape.as_slice() == t.shape() => {}
                Some((want, shape)) => {
                    return Err(Error::arg(
                        op,
                        format!(
                            "parameter '{name}' {:?} does not match the config, which needs \
                             '{want}' {shape:?} in its place",
                            t.shape()
                        ),
                    ))
                }
                None => {
                    return Err(Error::arg(
                        op,
                        format!("parameter '{name}' is not part of the model's config"),
                    ))
                }
            }
        }
        if let Some((want, _)) = expected.next() {
            return Err(Error::arg(
                op,
                format!("the model lacks parameter '{want}' that its config needs"),
            ));
        }
        self.check_prior_var(op)?;
        for (t, b) in self.blocks.iter().enumerate() {
            for (k, l) in b.layers.iter().enumerate() {
                if l.attn.head_dim != c.head_dim || l.attn.heads != c.heads() {
                    return Err(Error::arg(
                        op,
                        format!(
                            "block {t} layer {k} has {} heads of {}, the config {} of {}",
                            l.attn.heads,
                            l.attn.head_dim,
                            c.heads(),
                            c.head_dim
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Checks the [`prior_var`](Self::prior_var): `N * D` finite values `> 0`.
    pub(crate) fn check_prior_var(&self, op: &'static str) -> Result<()> {
        let Some(v) = &self.prior_var else {
            return Ok(());
        };
        let want = self.config.seq_len() * self.config.token_dim();
        if v.len() != want {
            return Err(Error::arg(
                op,
                format!(
                    "the prior variance has {} values, the model's {} tokens of {} need {want}",
                    v.len(),
                    self.config.seq_len(),
                    self.config.token_dim()
                ),
            ));
        }
        if let Some(i) = v.iter().position(|x| !(x.is_finite() && *x > 0.0)) {
            return Err(Error::arg(
                op,
                format!(
                    "prior variance element {i} is {}, it must be finite and > 0",
                    v[i]
                ),
            ));
        }
        Ok(())
    }

    fn check_images(&self, x: &Tensor<E>) -> Result<()> {
        let c = &self.config;
        let want = [c.channels, c.image_size, c.image_size];
        if x.rank() != 4 || x.shape()[1..] != want {
            return Err(Error::shape(
                "tarflow",
                &[x.shape()],
                E::DTYPE.name(),
                format!("expected images [B, {}, {}, {}]", want[0], want[1], want[2]),
            ));
        }
        Ok(())
    }

    /// Images `[B, C, H, W]` -> tokens `[B, N, D]`.
    pub fn to_tokens(&self, x: &Tensor<E>) -> Result<Tensor<E>> {
        self.check_images(x)?;
        patchify(x, self.config.patch_size)
    }

    /// Tokens `[B, N, D]` -> images `[B, C, H, W]`.
    pub fn to_images(&self, t: &Tensor<E>) -> Result<Tensor<E>> {
        let c = &self.config;
        unpatchify(t, c.channels, c.image_size, c.patch_size)
    }

    /// Data -> latent: images `[B, C, H, W]` to `z [B, N, D]` with log-determinants.
    pub fn forward(&self, x: &Tensor<E>, labels: Labels<'_>) -> Result<FlowOutput<E>> {
        self.forward_with_temperature(x, labels, 1.0)
    }

    /// [`forward`](Self::forward) with attention logits divided by `temperature` in every
    /// layer (1 is the ordinary model).
    pub fn forward_with_temperature(
        &self,
        x: &Tensor<E>,
        labels: Labels<'_>,
        temperature: f64,
    ) -> Result<FlowOutput<E>> {
        let mut h = self.to_tokens(x)?;
        let mut lds = Vec::with_capacity(self.blocks.len());
        for b in &self.blocks {
            let (z, ld) = b.forward(&h, labels, temperature)?;
            h = z;
            lds.push(ld);
        }
        let refs: Vec<&Tensor<E>> = lds.iter().collect();
        let logdet_blocks = Tensor::stack(&refs, 1)?;
        let logdet = logdet_blocks.sum(&[1], false)?;
        Ok(FlowOutput {
            z: h,
            logdet,
            logdet_blocks,
        })
    }

    /// Training loss in nats per dimension: `0.5 mean(z^2) - mean(logdet) / (N D)`.
    pub fn loss(&self, out: &FlowOutput<E>) -> Result<Tensor<E>> {
        let dims = self.config.image_dim() as f64;
        let prior = out.z.square()?.mean_all()?.mul_scalar(0.5)?;
        prior.sub(&out.logdet.mean_all()?.div_scalar(dims)?)
    }

    /// Bits per dimension of 8-bit data per sample, for inputs made by uniform dequantisation
    /// into [-1, 1]: `([sum 0.5 (z^2 + ln 2pi)] / Dimg + ln 128 - logdet / Dimg) / ln 2`.
    pub fn bits_per_dim(&self, out: &FlowOutput<E>) -> Result<Vec<f64>> {
        let dims = self.config.image_dim() as f64;
        let (zs, ls) = (out.z.shape(), out.logdet.shape());
        if zs.len() != 3 || ls != [zs[0]] {
            return Err(Error::shape(
                "TarFlow::bits_per_dim",
                &[zs, ls],
                E::DTYPE.name(),
                "expected latent z [B, N, D] and one log-determinant per sample [B]",
            ));
        }
        let b = zs[0];
        // Explicit row length: an inferred one is undefined for an empty batch.
        let row = zs[1].checked_mul(zs[2]).ok_or_else(|| {
            Error::shape(
                "TarFlow::bits_per_dim",
                &[zs],
                E::DTYPE.name(),
                "a latent row has too many values to index",
            )
        })?;
        let z2 = out
            .z
            .square()?
            .reshape(&[b, row])?
            .sum(&[1], false)?
            .to_f64_vec();
        let ld = out.logdet.to_f64_vec();
        Ok(z2
            .iter()
            .zip(&ld)
            .map(|(&s, &l)| {
                let nll = (0.5 * s + 0.5 * LN_2PI * dims) / dims + 128f64.ln() - l / dims;
                nll / std::f64::consts::LN_2
            })
            .collect())
    }

    /// Latent -> data without a KV cache (quadratic; a test reference). `z` is `[B, N, D]`.
    pub fn reverse_reference(&self, z: &Tensor<E>, labels: Labels<'_>) -> Result<Tensor<E>> {
        let mut x = z.clone();
        for b in self.blocks.iter().rev() {
            x = b.reverse_reference(&x, labels, 1.0)?;
        }
        self.to_images(&x)
    }

    /// Score-based denoising (Tweedie): `x + sigma^2 * d log p(x) / dx`, batched, through the
    /// whole forward flow in one pass, then clipped to [-1, 1].
    pub fn denoise(&self, x: &Tensor<E>, labels: Labels<'_>, sigma: f64) -> Result<Tensor<E>> {
        if !(sigma.is_finite() && sigma >= 0.0) {
            return Err(Error::arg(
                "denoise",
                format!("sigma must be finite and >= 0, got {sigma}"),
            ));
        }
        let xin = x.detach().requires_grad_();
        let out = self.forward(&xin, labels)?;
        // log p(x) up to a constant, summed over the batch: samples are independent, so the
        // gradient of the sum is each sample's own score.
        let logp = out
            .z
            .square()?
            .sum_all()?
            .mul_scalar(-0.5)?
            .add(&out.logdet.sum_all()?)?;
        let g = autograd::grad(&logp, &[&xin])?.remove(0);
        let _ng = autograd::no_grad();
        x.detach()
            .add(&g.mul_scalar(sigma * sigma)?)?
            .clamp(-1.0, 1.0)
    }
}
