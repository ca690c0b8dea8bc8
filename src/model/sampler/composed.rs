//! The composed engine: KV-cached inversion as tensor ops on the model's device.
//!
//! Rows are branch-major (`[conditional images; second branch]`), so each branch is a
//! contiguous half of every tensor. Each layer has one cache `[N, 2, rows, heads, head_dim]`
//! (keys then values), position first; the visible prefix is a view of the first `p + 1`
//! positions, whose last the step's attention fills from the projection as it attends
//! (`attention_append`: on a device, one launch). The recovered tokens are kept as
//! `[N, B, D]` in block order, position first too: each step reads its input token in place
//! and the inverse coupling writes the next one into its slot.
//!
//! Launches per position on a device: the input projection (the position embedding folded
//! into its bias), the class vectors or the second branch's copy when there are two
//! branches, per layer two layer norms, four GEMMs and the decode that appends (plus the
//! query scaling under an attention temperature), the output projection, the soft clip
//! when the model has one, and the inverse coupling. With launch batches on
//! ([`crate::gpu::batch`]), a position's launches are issued together, as one CUDA graph.

use crate::autograd::no_grad;
use crate::error::Result;
use crate::gpu::LaunchBatch;
use crate::ops::attention::{attention_append, qkv_views, AttentionOptions};
use crate::tensor::{Element, Tensor};

use super::super::block::{FlowBlock, Layer};
use super::super::tarflow::TarFlow;
use super::{guidance_weight, Guidance, Sampler};

/// Per-block state of one inversion: the caches and the per-row inputs that do not change
/// from step to step.
struct BlockRun<E: Element> {
    /// Per layer, `[N, 2, rows, heads, head_dim]`: keys and values by position.
    kv_cache: Vec<Tensor<E>>,
    /// The position embedding plus the input projection's bias, `[N, C]` in block order:
    /// row `p` is the bias of step `p`'s input projection.
    pos_bias: Tensor<E>,
    /// Images per branch.
    images: usize,
    /// 1, or 2 when a second branch is guided against.
    branches: usize,
    /// Class vectors `[branches, B, 1, C]` (conditional models).
    classes: Option<Tensor<E>>,
    /// `1 / tau` per row `[rows, 1, 1, 1]` when the second branch uses an attention
    /// temperature.
    q_scale: Option<Tensor<E>>,
}

impl<E: Element> Sampler<E> {
    /// [`Sampler::reverse_tokens`] on the composed engine, after its checks.
    pub(super) fn reverse_composed(
        &self,
        model: &TarFlow<E>,
        z: &Tensor<E>,
        labels: &[Option<usize>],
        guidance: Guidance,
    ) -> Result<Tensor<E>> {
        let _g = no_grad();
        let device = model.device();
        let b = z.shape()[0];
        let mut x = z.detach().to_device(device)?;
        if b == 0 {
            return x.to_device(z.device());
        }
        let labels: Vec<Option<usize>> = (0..b).map(|i| labels.get(i).copied().flatten()).collect();
        for blk in model.blocks.iter().rev() {
            x = self.invert_block_composed(blk, &x, &labels, guidance)?;
        }
        x.to_device(z.device())
    }

    /// Inverts one block for the images of `z` (`[B, N, D]`, canonical order, on the
    /// model's device).
    fn invert_block_composed(
        &self,
        blk: &FlowBlock<E>,
        z: &Tensor<E>,
        labels: &[Option<usize>],
        guidance: Guidance,
    ) -> Result<Tensor<E>> {
        let (n, d, b) = (self.n, self.d, z.shape()[0]);
        let device = z.device();
        let branches = if guidance == Guidance::None { 1 } else { 2 };
        let rows = b * branches;
        // The second branch: the null class for classifier-free guidance, the own labels
        // otherwise; and its attention temperature, if any.
        let mut row_labels = labels.to_vec();
        if guidance.null_class_branch() {
            row_labels.extend(std::iter::repeat_n(None, b));
        } else if branches == 2 {
            row_labels.extend_from_slice(labels);
        }
        let q_scale = match guidance.branch_temperature() {
            Some(tau) => {
                let mut s = vec![E::ONE; rows];
                s[b..].fill(E::from_f64(1.0 / tau));
                Some(Tensor::from_vec(s, &[rows, 1, 1, 1])?.to_device(device)?)
            }
            None => None,
        };
        let cache = |_| Tensor::zeros_on(&[n, 2, rows, self.heads, self.head_dim], device);
        let pos = blk.permute_seq(&blk.pos_embed.unsqueeze(0)?)?.squeeze(0)?;
        let pos_bias = match &blk.proj_in.bias {
            Some(bias) => pos.add(bias)?,
            None => pos,
        };
        let classes = blk
            .class_vectors(&row_labels)?
            .map(|c| c.reshape(&[branches, b, 1, self.c]))
            .transpose()?;
        let run = BlockRun {
            kv_cache: blk.layers.iter().map(cache).collect::<Result<_>>()?,
            pos_bias,
            images: b,
            branches,
            classes,
            q_scale,
        };
        // Block order, position first: `zp[p]` is the latent token at block position p.
        let zp = blk.permute_seq(z)?.permute(&[1, 0, 2])?;
        let x = Tensor::zeros_on(&[n, b, d], device)?;
        x.narrow(0, 0, 1)?.assign(&zp.narrow(0, 0, 1)?)?;
        // The `[B, 1, D]` tokens at position p, a view of their slot.
        let slot = |p: usize| x.narrow(0, p, 1)?.reshape(&[b, 1, d]);
        for p in 0..n - 1 {
            // On a device with launch batches on, the step's launches go out together (one
            // CUDA graph, kept from step to step with the position's parameters patched).
            let batch = LaunchBatch::begin(device)?;
            let out = self.step_composed(blk, &run, &slot(p)?, p)?;
            let (mut alpha, mu) = if blk.additive {
                (Tensor::zeros_on(out.shape(), device)?, out)
            } else {
                (out.narrow(2, 0, d)?, out.narrow(2, d, d)?)
            };
            if let Some(a) = self.alpha_clip {
                alpha = alpha.soft_clip(a)?;
            }
            // x_{p+1} = z_{p+1} exp(alpha_p) + mu_p for `[B, 1, D]` tokens, the parameters
            // first combined across the branches when guided: one fused op, writing into
            // the next slot.
            let zn = zp.narrow(0, p + 1, 1)?.permute(&[1, 0, 2])?;
            let next = slot(p + 1)?;
            if branches == 2 {
                let half = |t: &Tensor<E>, i: usize| t.narrow(0, i * b, b);
                let (au, mu_u) = (half(&alpha, 1)?, half(&mu, 1)?);
                let g = guidance_weight(guidance, p, n);
                zn.affine_coupling_inverse_into(
                    &half(&alpha, 0)?,
                    &half(&mu, 0)?,
                    Some((&au, &mu_u, g)),
                    &next,
                )?;
            } else {
                zn.affine_coupling_inverse_into(&alpha, &mu, None, &next)?;
            }
            batch.end()?;
        }
        blk.permute_seq(&x.permute(&[1, 0, 2])?)?.contiguous()
    }

    /// One position through the block's Transformer for every row: `input` is the `[B, 1, D]`
    /// tokens at position `p`, the same for every branch; returns the unshifted
    /// `[rows, 1, 2D]` parameters.
    fn step_composed(
        &self,
        blk: &FlowBlock<E>,
        run: &BlockRun<E>,
        input: &Tensor<E>,
        p: usize,
    ) -> Result<Tensor<E>> {
        let bias = run.pos_bias.narrow(0, p, 1)?.reshape(&[self.c])?;
        // `[B, 1, C]`, once for all branches.
        let h = input.linear(&blk.proj_in.weight, Some(&bias))?;
        let (b, branches) = (run.images, run.branches);
        let mut h = match &run.classes {
            // `[branches, B, 1, C]` by broadcasting the images over the branches.
            Some(cv) => h.unsqueeze(0)?.add(cv)?,
            None if branches == 2 => h.unsqueeze(0)?.broadcast_to(&[2, b, 1, self.c])?,
            None => h,
        };
        if branches == 2 || run.classes.is_some() {
            h = h.reshape(&[branches * b, 1, self.c])?;
        }
        for (li, layer) in blk.layers.iter().enumerate() {
            h = self.attend(layer, run, li, &layer.norm1.forward(&h)?, &h, p)?;
            h = layer.mlp.forward_residual(&layer.norm2.forward(&h)?, &h)?;
        }
        blk.proj_out.forward(&h)
    }

    /// The attention of one layer for one position, added to the residual `r`: appends this
    /// position's keys and values to the layer's caches and attends over positions `0..=p`
    /// (one query: the decode kernels on a device).
    fn attend(
        &self,
        layer: &Layer<E>,
        run: &BlockRun<E>,
        li: usize,
        t: &Tensor<E>,
        r: &Tensor<E>,
        p: usize,
    ) -> Result<Tensor<E>> {
        let at = &layer.attn;
        let rows = t.shape()[0];
        let qkv = t.linear(&at.qkv_weight, Some(&at.qkv_bias))?;
        // `[rows, H, 1, Dh]` views of the projection.
        let [mut q, k, v] = qkv_views(&qkv, at.heads)?;
        // `[rows, H, p + 1, Dh]` views of the cache's keys (`i = 0`) and values (`i = 1`);
        // position p is filled from k and v by the attention itself (one launch on a device).
        let cache = &run.kv_cache[li];
        let prefix = |i: usize| {
            cache
                .narrow(0, 0, p + 1)?
                .narrow(1, i, 1)?
                .squeeze(1)?
                .permute(&[1, 2, 0, 3])
        };
        if let Some(s) = &run.q_scale {
            q = q.mul(s)?;
        }
        let opts = AttentionOptions {
            causal: false,
            scale: 1.0 / (at.head_dim as f64).sqrt(),
            temperature: 1.0,
        };
        let o = attention_append(&q, &k, &v, &prefix(0)?, &prefix(1)?, opts)?;
        o.permute(&[0, 2, 1, 3])?
            .reshape(&[rows, 1, at.dim()])?
            .linear_residual(&at.out_weight, Some(&at.out_bias), r)
    }
}
