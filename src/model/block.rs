//! One TarFlow block: an affine autoregressive flow whose parameters come from a causal
//! Transformer over the (optionally flipped) token sequence.

use crate::error::{Error, Result};
use crate::nn::{CausalSelfAttention, Embedding, LayerNorm, Linear, Mlp};
use crate::rng::Rng;
use crate::tensor::{Device, Element, Tensor};

use super::config::TarFlowConfig;
use super::Recompute;

/// A pre-norm Transformer layer: `h += attn(LN(h)); h += mlp(LN(h))`. A clone shares the
/// parameters (tensors are handles to their storage).
#[derive(Clone)]
pub struct Layer<E: Element> {
    /// LayerNorm before the attention.
    pub norm1: LayerNorm<E>,
    /// Causal self-attention over the block's token order.
    pub attn: CausalSelfAttention<E>,
    /// LayerNorm before the MLP.
    pub norm2: LayerNorm<E>,
    /// Position-wise GELU MLP.
    pub mlp: Mlp<E>,
}

impl<E: Element> Layer<E> {
    fn to_device(&self, device: Device) -> Result<Self> {
        Ok(Layer {
            norm1: self.norm1.to_device(device)?,
            attn: self.attn.to_device(device)?,
            norm2: self.norm2.to_device(device)?,
            mlp: self.mlp.to_device(device)?,
        })
    }

    fn new(cfg: &TarFlowConfig, rng: &mut Rng) -> Result<Self> {
        Ok(Layer {
            norm1: LayerNorm::new(cfg.width),
            attn: CausalSelfAttention::new(cfg.width, cfg.head_dim, rng)?,
            norm2: LayerNorm::new(cfg.width),
            mlp: Mlp::new(cfg.width, cfg.mlp_ratio, rng),
        })
    }

    /// Applies the layer to `h` `[B, L, C]`; attention logits are divided by `temperature`
    /// (1 in training). While a graph is recorded, the part this thread's
    /// [`Recompute`](super::Recompute) setting names runs as a checkpoint (the same bits,
    /// fewer activations kept, one more forward of that part in the backward).
    pub fn forward(&self, h: &Tensor<E>, temperature: f64) -> Result<Tensor<E>> {
        use crate::autograd::checkpoint;
        use std::sync::Arc;
        match super::current_recompute() {
            Recompute::None => self.forward_plain(h, temperature),
            Recompute::Layer => {
                let layer = self.clone();
                let params = self.parameters();
                checkpoint(
                    "layer (recomputed)",
                    &[h],
                    &params.iter().map(|(_, t)| t).collect::<Vec<_>>(),
                    Arc::new(move |xs| layer.forward_plain(&xs[0], temperature)),
                )
            }
            Recompute::Mlp => {
                let h = self.attention_half(h, temperature)?;
                let layer = self.clone();
                let params = [self.norm2.parameters(), self.mlp.parameters()].concat();
                checkpoint(
                    "mlp (recomputed)",
                    &[&h],
                    &params.iter().map(|(_, t)| t).collect::<Vec<_>>(),
                    Arc::new(move |xs| layer.mlp_half(&xs[0])),
                )
            }
        }
    }

    /// [`Layer::forward`] keeping every activation its backward reads.
    fn forward_plain(&self, h: &Tensor<E>, temperature: f64) -> Result<Tensor<E>> {
        self.mlp_half(&self.attention_half(h, temperature)?)
    }

    /// `h + attn(norm1(h))`.
    fn attention_half(&self, h: &Tensor<E>, temperature: f64) -> Result<Tensor<E>> {
        self.attn
            .forward_residual(&self.norm1.forward(h)?, h, temperature)
    }

    /// `h + mlp(norm2(h))`.
    fn mlp_half(&self, h: &Tensor<E>) -> Result<Tensor<E>> {
        self.mlp.forward_residual(&self.norm2.forward(h)?, h)
    }

    fn parameters(&self) -> Vec<(String, Tensor<E>)> {
        let mut v = Vec::new();
        for (prefix, ps) in [
            ("norm1", self.norm1.parameters()),
            ("attn", self.attn.parameters()),
            ("norm2", self.norm2.parameters()),
            ("mlp", self.mlp.parameters()),
        ] {
            v.extend(ps.into_iter().map(|(n, t)| (format!("{prefix}.{n}"), t)));
        }
        v
    }
}

/// Per-sample conditioning: `Some(class)` or `None` for the null class (mean embedding).
pub type Labels<'a> = Option<&'a [Option<usize>]>;

/// One flow block `x -> z` with `z_i = (x_i - mu_i(x_<i)) exp(-alpha_i(x_<i))`.
pub struct FlowBlock<E: Element> {
    /// Input projection `D -> C` (with bias) applied to each token.
    pub proj_in: Linear<E>,
    /// Learned positional embedding `[N, C]`, indexed by original token position.
    pub pos_embed: Tensor<E>,
    /// Class embedding `[classes, C]` added to every token; `None` for an unconditional model.
    pub class_embed: Option<Embedding<E>>,
    /// The `layers_per_block` Transformer layers, applied in order.
    pub layers: Vec<Layer<E>>,
    /// `C -> 2D` (`C -> D` for the additive variant), zero-initialised weight so every
    /// block starts as a shift.
    pub proj_out: Linear<E>,
    /// Odd blocks run over the reversed token sequence.
    pub flip: bool,
    pub(crate) alpha_clip: Option<f64>,
    pub(crate) token_dim: usize,
    /// The volume-preserving variant: `proj_out` gives `mu` alone and `alpha` is zero.
    pub(crate) additive: bool,
}

/// Output of a block's Transformer for every position, before the shift: row `i` holds the
/// parameters of token `i + 1`.
pub struct BlockParams<E: Element> {
    /// Log-scales `[B, L, D]`, soft-clipped when the model has an `alpha_clip`.
    pub alpha: Tensor<E>,
    /// Shifts `[B, L, D]`.
    pub mu: Tensor<E>,
}

/// Fails unless `t` is `[B, L, D]` with `L >= 1` (`op` names the caller in the error).
fn check_tokens<E: Element>(op: &'static str, t: &Tensor<E>) -> Result<()> {
    if t.rank() != 3 || t.shape()[1] == 0 {
        return Err(Error::shape(
            op,
            &[t.shape()],
            E::DTYPE.name(),
            "expected tokens [batch, positions >= 1, token values]",
        ));
    }
    Ok(())
}

impl<E: Element> FlowBlock<E> {
    /// A copy of this block with its parameters on `device`.
    pub fn to_device(&self, device: Device) -> Result<Self> {
        Ok(FlowBlock {
            proj_in: self.proj_in.to_device(device)?,
            pos_embed: crate::nn::leaf_on(&self.pos_embed, device)?,
            class_embed: self
                .class_embed
                .as_ref()
                .map(|e| e.to_device(device))
                .transpose()?,
            layers: self
                .layers
                .iter()
                .map(|l| l.to_device(device))
                .collect::<Result<_>>()?,
            proj_out: self.proj_out.to_device(device)?,
            flip: self.flip,
            alpha_clip: self.alpha_clip,
            token_dim: self.token_dim,
            additive: self.additive,
        })
    }

    /// Block number `index` of a model with configuration `cfg` (odd indices are flipped),
    /// freshly initialised from `rng`; errors unless `width` is a positive multiple of
    /// `head_dim`.
    pub fn new(cfg: &TarFlowConfig, index: usize, rng: &mut Rng) -> Result<Self> {
        let (c, d, n) = (cfg.width, cfg.token_dim(), cfg.seq_len());
        Ok(FlowBlock {
            proj_in: Linear::new(d, c, true, rng),
            pos_embed: Tensor::randn(&[n, c], 0.0, 0.01, rng).requires_grad_(),
            class_embed: (cfg.num_classes > 0)
                .then(|| Embedding::new(cfg.num_classes, c, 0.01, rng)),
            layers: (0..cfg.layers_per_block)
                .map(|_| Layer::new(cfg, rng))
                .collect::<Result<Vec<_>>>()?,
            proj_out: Linear::with_zero_weight(c, cfg.proj_out_dim(), rng),
            flip: index % 2 == 1,
            alpha_clip: cfg.alpha_clip,
            token_dim: d,
            additive: cfg.additive,
        })
    }

    /// Named parameters (see docs/checkpoint-format.md).
    pub fn parameters(&self) -> Vec<(String, Tensor<E>)> {
        let mut v = Vec::new();
        v.extend(
            self.proj_in
                .parameters()
                .into_iter()
                .map(|(n, t)| (format!("proj_in.{n}"), t)),
        );
        v.push(("pos_embed".to_string(), self.pos_embed.clone()));
        if let Some(ce) = &self.class_embed {
            v.push(("class_embed.weight".to_string(), ce.weight.clone()));
        }
        for (k, layer) in self.layers.iter().enumerate() {
            v.extend(
                layer
                    .parameters()
                    .into_iter()
                    .map(|(n, t)| (format!("layers.{k}.{n}"), t)),
            );
        }
        v.extend(
            self.proj_out
                .parameters()
                .into_iter()
                .map(|(n, t)| (format!("proj_out.{n}"), t)),
        );
        v
    }

    /// Puts the sequence into this block's order (a view; its own inverse).
    pub fn permute_seq(&self, x: &Tensor<E>) -> Result<Tensor<E>> {
        if self.flip {
            x.flip(1)
        } else {
            Ok(x.clone())
        }
    }

    /// Class vectors `[B, 1, C]` for the given labels (None = mean of all class embeddings).
    pub(crate) fn class_vectors(&self, labels: &[Option<usize>]) -> Result<Option<Tensor<E>>> {
        let Some(ce) = &self.class_embed else {
            return Ok(None);
        };
        let k = ce.weight.shape()[0];
        let mut idx = Vec::with_capacity(labels.len());
        for l in labels {
            match l {
                Some(c) if *c >= k => {
                    return Err(Error::index(
                        "class label",
                        format!("class {c} out of range for a model with {k} classes"),
                    ))
                }
                Some(c) => idx.push(*c),
                None => idx.push(k),
            }
        }
        let table = Tensor::concat(
            &[
                &ce.weight,
                &ce.mean_embedding()?.reshape(&[1, ce.weight.shape()[1]])?,
            ],
            0,
        )?;
        let rows = table.index_select(0, &idx)?;
        Ok(Some(rows.unsqueeze(1)?))
    }

    /// Runs the Transformer over `xp` (`[B, L, D]`, already in block order, `L <= N`) and
    /// returns the unshifted `(alpha, mu)` for every position.
    pub fn params(
        &self,
        xp: &Tensor<E>,
        labels: Labels<'_>,
        temperature: f64,
    ) -> Result<BlockParams<E>> {
        let mut p = self.unclipped_params(xp, labels, temperature)?;
        if let Some(a) = self.alpha_clip {
            p.alpha = p.alpha.soft_clip(a)?;
        }
        Ok(p)
    }

    /// [`FlowBlock::params`] before the soft clip of the log-scales: `alpha` and `mu` are
    /// views of the output projection, read in place by the coupling.
    fn unclipped_params(
        &self,
        xp: &Tensor<E>,
        labels: Labels<'_>,
        temperature: f64,
    ) -> Result<BlockParams<E>> {
        check_tokens("FlowBlock::params", xp)?;
        let (b, l) = (xp.shape()[0], xp.shape()[1]);
        let pos = self
            .permute_seq(&self.pos_embed.unsqueeze(0)?)?
            .narrow(1, 0, l)?;
        let mut h = self.proj_in.forward(xp)?.add(&pos)?;
        match (labels, &self.class_embed) {
            (Some(ls), Some(_)) => {
                if ls.len() != b {
                    return Err(Error::shape(
                        "class labels",
                        &[&[ls.len()], xp.shape()],
                        E::DTYPE.name(),
                        "one label per sample is needed",
                    ));
                }
                h = h.add(&self.class_vectors(ls)?.expect("conditional"))?;
            }
            (None, Some(_)) => {
                let nulls = vec![None; b];
                h = h.add(&self.class_vectors(&nulls)?.expect("conditional"))?;
            }
            _ => {}
        }
        for layer in &self.layers {
            h = layer.forward(&h, temperature)?;
        }
        let out = self.proj_out.forward(&h)?;
        if self.additive {
            // A zero log-scale through the same coupling gives `z = x - mu` and a zero
            // log-determinant exactly (`exp(-0) = 1`).
            return Ok(BlockParams {
                alpha: Tensor::zeros_on(out.shape(), out.device())?,
                mu: out,
            });
        }
        let d = self.token_dim;
        Ok(BlockParams {
            alpha: out.narrow(2, 0, d)?,
            mu: out.narrow(2, d, d)?,
        })
    }

    /// Shifts per-position parameters by one token: row 0 becomes zero (identity for the
    /// first token) and the last row is dropped.
    pub fn shift(t: &Tensor<E>) -> Result<Tensor<E>> {
        check_tokens("FlowBlock::shift", t)?;
        let s = t.shape();
        let zeros = Tensor::zeros_on(&[s[0], 1, s[2]], t.device())?;
        Tensor::concat(&[&zeros, &t.narrow(1, 0, s[1] - 1)?], 1)
    }

    /// `x [B, N, D] -> (z [B, N, D], logdet [B])`, in canonical token order.
    ///
    /// The shift, soft clip, affine map and log-det are one fused op
    /// ([`Tensor::affine_coupling`]); on the CPU it gives the bits of
    /// `shift(params)`, `(xp - mu) * exp(-alpha)` and `-sum(alpha)` composed.
    pub fn forward(
        &self,
        x: &Tensor<E>,
        labels: Labels<'_>,
        temperature: f64,
    ) -> Result<(Tensor<E>, Tensor<E>)> {
        check_tokens("FlowBlock::forward", x)?;
        let xp = self.permute_seq(x)?;
        let p = self.unclipped_params(&xp, labels, temperature)?;
        let (z, logdet) = xp.affine_coupling(&p.alpha, &p.mu, self.alpha_clip)?;
        Ok((self.permute_seq(&z)?, logdet))
    }

    /// Inverse without a cache: token `i` is recovered by rerunning the Transformer on the
    /// recovered prefix (quadratic; the reference the cached sampler is tested against).
    pub fn reverse_reference(
        &self,
        z: &Tensor<E>,
        labels: Labels<'_>,
        temperature: f64,
    ) -> Result<Tensor<E>> {
        let _g = crate::autograd::no_grad();
        check_tokens("FlowBlock::reverse_reference", z)?;
        let zp = self.permute_seq(z)?.contiguous()?;
        let (b, n, d) = (zp.shape()[0], zp.shape()[1], zp.shape()[2]);
        let zv = zp.to_vec();
        let mut x = vec![E::ZERO; b * n * d];
        for bi in 0..b {
            let o = bi * n * d;
            x[o..o + d].copy_from_slice(&zv[o..o + d]);
        }
        for i in 1..n {
            let prefix = Tensor::from_vec(x.clone(), &[b, n, d])?.narrow(1, 0, i)?;
            let p = self.params(&prefix, labels, temperature)?;
            let a = p.alpha.narrow(1, i - 1, 1)?.to_vec();
            let m = p.mu.narrow(1, i - 1, 1)?.to_vec();
            for bi in 0..b {
                for j in 0..d {
                    let idx = (bi * n + i) * d + j;
                    x[idx] = zv[idx] * a[bi * d + j].exp() + m[bi * d + j];
                }
            }
        }
        self.permute_seq(&Tensor::from_vec(x, &[b, n, d])?)
    }
}
