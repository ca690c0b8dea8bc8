//! The composed engine: KV-cached inversion as tensor ops on the model's device.
//!
//! Rows are branch-major (`[conditional images; second branch]`), so each branch is a
//! contiguous half of every tensor. The caches are `[N, rows, heads, head_dim]` per layer,
//! position first, so that the keys and values of one position are a contiguous slice that
//! `assign` writes in place; the visible prefix is a view of the first `p + 1` positions.
//! The recovered tokens are kept as `[N, B, D]` in block order for the same reason.

use crate::autograd::no_grad;
use crate::error::Result;
use crate::ops::attention::{attention, qkv_views, AttentionOptions};
use crate::tensor::{Element, Tensor};

use super::super::block::{FlowBlock, Layer};
use super::super::tarflow::TarFlow;
use super::{guidance_weight, Guidance, Sampler};

/// Per-block state of one inversion: the caches and the per-row inputs that do not change
/// from step to step.
struct BlockRun<E: Element> {
    k_cache: Vec<Tensor<E>>,
    v_cache: Vec<Tensor<E>>,
    /// Class vectors `[rows, 1, C]` (conditional models).
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
        let cache = |_| Tensor::zeros_on(&[n, rows, self.heads, self.head_dim], device);
        let run = BlockRun {
            k_cache: blk.layers.iter().map(cache).collect::<Result<_>>()?,
            v_cache: blk.layers.iter().map(cache).collect::<Result<_>>()?,
            classes: blk.class_vectors(&row_labels)?,
            q_scale,
        };
        // Block order, position first: `zp[p]` is the latent token at block position p.
        let zp = blk.permute_seq(z)?.permute(&[1, 0, 2])?;
        let x = Tensor::zeros_on(&[n, b, d], device)?;
        x.narrow(0, 0, 1)?.assign(&zp.narrow(0, 0, 1)?)?;
        let pos = blk.permute_seq(&blk.pos_embed.unsqueeze(0)?)?.squeeze(0)?;
        for p in 0..n - 1 {
            // `[B, 1, D]` tokens at position p, once per branch.
            let xp = x.narrow(0, p, 1)?.permute(&[1, 0, 2])?;
            let input = if branches == 2 {
                Tensor::concat(&[&xp, &xp], 0)?
            } else {
                xp
            };
            let out = self.step_composed(blk, &run, &input, &pos.narrow(0, p, 1)?, p)?;
            let (mut alpha, mu) = if blk.additive {
                (Tensor::zeros_on(out.shape(), device)?, out)
            } else {
                (out.narrow(2, 0, d)?, out.narrow(2, d, d)?)
            };
            if let Some(a) = self.alpha_clip {
                alpha = alpha.soft_clip(a)?;
            }
            // x_{p+1} = z_{p+1} exp(alpha_p) + mu_p for `[B, 1, D]` tokens, the parameters
            // first combined across the branches when guided: one fused op.
            let zn = zp.narrow(0, p + 1, 1)?.permute(&[1, 0, 2])?;
            let xn = if branches == 2 {
                let half = |t: &Tensor<E>, i: usize| t.narrow(0, i * b, b);
                let (au, mu_u) = (half(&alpha, 1)?, half(&mu, 1)?);
                let g = guidance_weight(guidance, p, n);
                zn.affine_coupling_inverse(
                    &half(&alpha, 0)?,
                    &half(&mu, 0)?,
                    Some((&au, &mu_u, g)),
                )?
            } else {
                zn.affine_coupling_inverse(&alpha, &mu, None)?
            }
            .permute(&[1, 0, 2])?;
            x.narrow(0, p + 1, 1)?.assign(&xn)?;
        }
        blk.permute_seq(&x.permute(&[1, 0, 2])?)?.contiguous()
    }

    /// One position through the block's Transformer for every row: `input` is `[rows, 1, D]`
    /// and `pos_row` `[1, C]`; returns the unshifted `[rows, 1, 2D]` parameters.
    fn step_composed(
        &self,
        blk: &FlowBlock<E>,
        run: &BlockRun<E>,
        input: &Tensor<E>,
        pos_row: &Tensor<E>,
        p: usize,
    ) -> Result<Tensor<E>> {
        let mut h = blk.proj_in.forward(input)?.add(pos_row)?;
        if let Some(cv) = &run.classes {
            h = h.add(cv)?;
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
        let at_pos = |c: &Tensor<E>| c.narrow(0, p, 1);
        at_pos(&run.k_cache[li])?.assign(&k.permute(&[2, 0, 1, 3])?)?;
        at_pos(&run.v_cache[li])?.assign(&v.permute(&[2, 0, 1, 3])?)?;
        let prefix = |c: &Tensor<E>| c.narrow(0, 0, p + 1)?.permute(&[1, 2, 0, 3]);
        if let Some(s) = &run.q_scale {
            q = q.mul(s)?;
        }
        let opts = AttentionOptions {
            causal: false,
            scale: 1.0 / (at.head_dim as f64).sqrt(),
            temperature: 1.0,
        };
        let o = attention(
            &q,
            &prefix(&run.k_cache[li])?,
            &prefix(&run.v_cache[li])?,
            None,
            opts,
        )?;
        o.permute(&[0, 2, 1, 3])?
            .reshape(&[rows, 1, at.dim()])?
            .linear_residual(&at.out_weight, Some(&at.out_bias), r)
    }
}
