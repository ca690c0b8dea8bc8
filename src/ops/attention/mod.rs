//! Fused scaled dot-product attention, its hand-written backward, and KV-cached decoding.
//!
//! For every (batch, head) pair `attention` computes the scores `S = alpha Q K^T` with
//! `alpha = scale / temperature`, masks them, takes the row softmax `P` and returns `O = P V`,
//! in per-task scratch: the `[B, H, Nq, Nk]` score tensor of the composed form never exists,
//! and `P` is kept only when a gradient is needed. Strided operands (views cut from a fused
//! qkv projection) are never copied as a whole; each head's `Q` and `K` are transposed into
//! scratch because that is the layout the GEMMs pack fastest (see `gemm`). `attention_qkv`
//! reads q, k, v from the projection itself and writes one gradient for it.
//!
//! Backward, per (batch, head), with `D_i = sum_d dO_id O_id`:
//! `dV = P^T dO`, `dP = dO V^T`, `dS = P * (dP - D)`, `dQ = alpha dS K`, `dK = alpha dS^T Q`.
//! The derivation is in `docs/derivations.md`, section "Attention".
//!
//! Gradient-write convention: every gradient is a fresh tensor (`=`); with `attention`, the
//! autograd engine sums contributions (q, k and v cut from one tensor meet there).
//!
//! Under the causal rule every product skips the hidden triangle in blocks (`KEY_BLOCK`,
//! `QUERY_BLOCK`), and the softmax and `dS` touch only visible entries.
//!
//! Work is spread over (batch, head) pairs with rayon when each product is small enough to
//! run on one thread (and then kept there, `serial_scope`); larger products are left to the
//! GEMM's own threads. `f32` products run on the crate's GEMM, `f64` on matrixmultiply.
//!
//! This file holds the ops (shapes, errors, autograd); the CPU kernels it calls are in
//! `backend::cpu::attention`. On a GPU device the ops run the device's kernels.

use crate::autograd::is_grad_enabled;
use crate::backend::gpu::{self, AttnLayout};
use crate::error::{Error, Result};
use crate::gpu::kernels::{self, AttnDims, AttnScores};
use crate::profile::{Kernel, Timer};
use crate::tensor::layout::{checked_numel, checked_product};
use crate::tensor::{Element, Layout, Tensor};

mod decode;

use crate::backend::cpu::attention::*;
pub use decode::{attention_decode, KvCache};

/// How scores are formed and masked.
///
/// `logits = (q . k) * scale / temperature`. With `causal`, query `i` sees key `j` only when
/// `j <= i + (Nk - Nq)`: the queries are the last `Nq` of the `Nk` positions (with `Nq == Nk`
/// that is the usual lower triangle, diagonal included).
#[derive(Clone, Copy, Debug)]
pub struct AttentionOptions {
    /// Hide keys after each query's position (see above); `false` lets every query see every key.
    pub causal: bool,
    /// Multiplier of the dot products, usually `1 / sqrt(head_dim)`; must be finite.
    pub scale: f64,
    /// Divisor of the logits (1 for the plain model); must be finite and positive.
    pub temperature: f64,
}

impl AttentionOptions {
    /// `scale / temperature`, after checking both.
    fn alpha(&self, op: &'static str) -> Result<f64> {
        if !(self.scale.is_finite() && self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(Error::arg(
                op,
                format!(
                    "scale must be finite and temperature finite and positive, got scale {} \
                     and temperature {}",
                    self.scale, self.temperature
                ),
            ));
        }
        Ok(self.scale / self.temperature)
    }
}

/// Checks operand shapes and the mask, returning the sizes.
fn check_shapes<E: Element>(
    op: &'static str,
    q: &Tensor<E>,
    k: &Tensor<E>,
    v: &Tensor<E>,
    mask: Option<&Tensor<E>>,
    causal: bool,
) -> Result<Dims> {
    let mut shapes: Vec<&[usize]> = vec![q.shape(), k.shape(), v.shape()];
    shapes.extend(mask.map(|m| m.shape()));
    let bad = |detail: &str| Error::shape(op, &shapes, E::DTYPE.name(), detail);
    if q.rank() != 4 || k.rank() != 4 || v.rank() != 4 {
        return Err(bad("q, k, v must be [batch, heads, positions, head_dim]"));
    }
    let (qs, ks, vs) = (q.shape(), k.shape(), v.shape());
    if qs[..2] != ks[..2] || ks[..2] != vs[..2] {
        return Err(bad("batch and head counts of q, k, v differ"));
    }
    if ks[2] != vs[2] {
        return Err(bad("k and v have different numbers of positions"));
    }
    if qs[3] != ks[3] {
        return Err(bad("q and k have different head dimensions"));
    }
    let d = Dims {
        b: qs[0],
        h: qs[1],
        nq: qs[2],
        nk: ks[2],
        dh: qs[3],
        dv: vs[3],
    };
    if causal && d.nq > d.nk {
        return Err(bad(
            "causal attention needs no more queries than keys (queries are the last positions)",
        ));
    }
    if let Some(m) = mask {
        if m.layout().broadcast_to(&[d.b, d.h, d.nq, d.nk]).is_none() {
            return Err(bad("mask must broadcast to [batch, heads, queries, keys]"));
        }
    }
    // Zero-size operands can pair a huge count of queries with a huge value width.
    if checked_numel(op, &[d.b, d.h, d.nq, d.dv], &[], E::DTYPE.name()).is_err() {
        return Err(bad(
            "the output [batch, heads, queries, value_dim] has more elements than fit in usize",
        ));
    }
    Ok(d)
}

/// Scaled dot-product attention, fused forward and backward.
///
/// `q` is `[B, H, Nq, Dh]`, `k` `[B, H, Nk, Dh]`, `v` `[B, H, Nk, Dv]` (usually `Dv == Dh`),
/// with any strides. `mask` broadcasts to `[B, H, Nq, Nk]`; a nonzero entry masks that key
/// out for that query. A query that sees no key at all gets a zero output (and passes no
/// gradient). The output is a fresh contiguous `[B, H, Nq, Dv]`.
///
/// Within a head the scores and probabilities are kept column-major (`p[j * ld + i]` for
/// query `i`, key `j`, `ld` the padded query count) and `Q`, `K` are first transposed into
/// zero-padded scratch, so that every product gets whole tiles of operands it can pack by
/// rows (see `gemm` and `TILE`).
pub fn attention<E: Element>(
    q: &Tensor<E>,
    k: &Tensor<E>,
    v: &Tensor<E>,
    mask: Option<&Tensor<E>>,
    opts: AttentionOptions,
) -> Result<Tensor<E>> {
    let d = check_shapes("attention", q, k, v, mask, opts.causal)?;
    let mut operands = vec![q, k, v];
    operands.extend(mask);
    if crate::backend::on_gpu("attention", &operands)? {
        if mask.is_none() && fused_on_gpu(&d) {
            return attention_gpu(q, k, v, &d, opts);
        }
        // A mask tensor or head dimensions beyond the fused kernels: the composed ops, each
        // on the device.
        return attention_reference(q, k, v, mask, opts);
    }
    let alpha = E::from_f64(opts.alpha("attention")?);
    let timer = Timer::start(Kernel::Attention);
    let needs_grad =
        is_grad_enabled() && (q.requires_grad() || k.requires_grad() || v.requires_grad());
    let mut out = vec![E::ZERO; d.b * d.h * d.nq * d.dv];
    let mut ts = vec![q, k, v];
    ts.extend(mask);
    let dst = RowsOut::heads(&mut out, d.h, d.nq, d.dv);
    let probs = forward_heads(&d, opts, alpha, &ts, dst, needs_grad);
    // Saved for the backward as a tensor, so that it lives where the output does.
    let p_len = probs.len();
    let probs = Tensor::from_raw(probs, &[p_len]);
    drop(timer);
    let out = Tensor::from_raw(out, &[d.b, d.h, d.nq, d.dv]);
    if !needs_grad {
        return Ok(out);
    }
    let (qd, kd, vd, od) = (q.detach(), k.detach(), v.detach(), out.detach());
    let (rq, rk, rv) = (q.requires_grad(), k.requires_grad(), v.requires_grad());
    Ok(out.record("attention", &[q, k, v], move |g| {
        let _timer = Timer::start(Kernel::Attention);
        let probs_host = probs.storage().read();
        let shape = |n: usize, e: usize| [d.b, d.h, n, e];
        let grad =
            |on: bool, n: usize, e: usize| vec![E::ZERO; if on { d.b * d.h * n * e } else { 0 }];
        let (mut dq, mut dk, mut dv) = (
            grad(rq, d.nq, d.dh),
            grad(rk, d.nk, d.dh),
            grad(rv, d.nk, d.dv),
        );
        let dst = [
            rq.then(|| RowsOut::heads(&mut dq, d.h, d.nq, d.dh)),
            rk.then(|| RowsOut::heads(&mut dk, d.h, d.nk, d.dh)),
            rv.then(|| RowsOut::heads(&mut dv, d.h, d.nk, d.dv)),
        ];
        if !d.trivial() {
            let (lg, lo) = (Strided4::of(g.layout()), Strided4::of(od.layout()));
            backward_heads(
                &d,
                opts,
                alpha,
                &probs_host,
                [&qd, &kd, &vd, g, &od],
                lg,
                lo,
                dst,
            );
        }
        Ok(vec![
            rq.then(|| Tensor::from_raw(dq, &shape(d.nq, d.dh))),
            rk.then(|| Tensor::from_raw(dk, &shape(d.nk, d.dh))),
            rv.then(|| Tensor::from_raw(dv, &shape(d.nk, d.dv))),
        ])
    }))
}

/// q, k, v as `[B, H, N, C / H]` views of a fused `[B, N, 3 C]` projection (no copy).
pub(crate) fn qkv_views<E: Element>(qkv: &Tensor<E>, heads: usize) -> Result<[Tensor<E>; 3]> {
    let (b, n, c3) = (qkv.shape()[0], qkv.shape()[1], qkv.shape()[2]);
    let t = qkv
        .reshape(&[b, n, 3, heads, c3 / 3 / heads])?
        .permute(&[2, 0, 3, 1, 4])?;
    let part = |i: usize| t.narrow(0, i, 1)?.squeeze(0);
    Ok([part(0)?, part(1)?, part(2)?])
}

/// One decode step over a key/value cache held as tensor views: `k` `[B, H, N, Dh]` and `v`
/// `[B, H, N, Dv]` are views of the cache whose last position `N - 1` this step fills;
/// `k_new` `[B, H, 1, Dh]` and `v_new` `[B, H, 1, Dv]` are written there, then the one query
/// `q` `[B, H, 1, Dh]` attends to all `N` positions (causal or not, it is the last).
///
/// On a GPU this is one launch of the decode kernels, which read the new row from `k_new`,
/// `v_new` and write it into the cache as they go, where a copy and [`attention`] would be
/// two or more; the result has the same bits. Elsewhere it is that copy and [`attention`].
/// Inference only: an error when a gradient would be needed, and when the shapes disagree,
/// `N` is 0 or the cache's last position is not one contiguous block of memory (keep the
/// cache position-major, as `[N, B, H, D]` permuted).
pub fn attention_append<E: Element>(
    q: &Tensor<E>,
    k_new: &Tensor<E>,
    v_new: &Tensor<E>,
    k: &Tensor<E>,
    v: &Tensor<E>,
    opts: AttentionOptions,
) -> Result<Tensor<E>> {
    let op = "attention_append";
    let d = check_shapes(op, q, k, v, None, false)?;
    let operands = [q, k_new, v_new, k, v];
    let gpu = crate::backend::on_gpu(op, &operands)?;
    let shapes = || operands.iter().map(|t| t.shape()).collect::<Vec<_>>();
    if d.nq != 1 || d.nk == 0 {
        return Err(Error::shape(
            op,
            &shapes(),
            E::DTYPE.name(),
            "one query per head over a cache of at least one position",
        ));
    }
    if k_new.shape() != [d.b, d.h, 1, d.dh] || v_new.shape() != [d.b, d.h, 1, d.dv] {
        return Err(Error::shape(
            op,
            &shapes(),
            E::DTYPE.name(),
            "the new keys and values must be [B, H, 1, Dh] and [B, H, 1, Dv]",
        ));
    }
    if is_grad_enabled() && operands.iter().any(|t| t.requires_grad()) {
        return Err(Error::arg(
            op,
            "records no gradient: call it under no_grad or on detached tensors",
        ));
    }
    let (k_last, v_last) = (k.narrow(2, d.nk - 1, 1)?, v.narrow(2, d.nk - 1, 1)?);
    if !k_last.is_contiguous() || !v_last.is_contiguous() {
        return Err(Error::shape(
            op,
            &shapes(),
            E::DTYPE.name(),
            "the cache's last position must be one contiguous block of k and of v \
             (a position-major cache, e.g. [N, B, H, D] permuted to [B, H, N, D])",
        ));
    }
    if gpu && fused_on_gpu(&d) {
        let (dims, scores) = gpu_args(&d, opts, op)?;
        return gpu::attention_decode_append(
            &q.detach(),
            &k.detach(),
            &v.detach(),
            Some((&k_new.detach(), &v_new.detach())),
            dims,
            scores.alpha,
        );
    }
    k_last.assign(k_new)?;
    v_last.assign(v_new)?;
    attention(q, k, v, None, opts)
}

/// Causal-or-not self-attention straight from a fused projection: `qkv` is `[B, N, 3 C]`
/// (queries, keys, values side by side, each `heads` heads of `C / heads`, as
/// `x.linear(w_qkv, b_qkv)` gives them) and the output is `[B, N, C]` with the heads side by
/// side, ready for the output projection.
///
/// The same as cutting q, k, v out of `qkv` with views, calling [`attention`] and merging
/// the heads, but the backward writes one `[B, N, 3 C]` gradient, where the views would
/// each pad theirs to the full width and the three would be summed, and no head-merging
/// copy is made either way.
pub fn attention_qkv<E: Element>(
    qkv: &Tensor<E>,
    heads: usize,
    mask: Option<&Tensor<E>>,
    opts: AttentionOptions,
) -> Result<Tensor<E>> {
    attention_qkv_keeping_bf16(qkv, heads, mask, opts).map(|(o, _)| o)
}

/// [`attention_qkv`], also returning, when the fused GPU kernels ran under bf16 for a
/// backward, the bf16 copy of the output they keep for it: token-major `[B * N, C]` rows,
/// what the output projection's bf16 GEMM would make of its input (see
/// [`Tensor::linear_residual_from`]), so that one copy serves both backward passes.
pub(crate) fn attention_qkv_keeping_bf16<E: Element>(
    qkv: &Tensor<E>,
    heads: usize,
    mask: Option<&Tensor<E>>,
    opts: AttentionOptions,
) -> Result<(Tensor<E>, Option<gpu::Bf16Rows>)> {
    let op = "attention_qkv";
    let mut operands = vec![qkv];
    operands.extend(mask);
    let gpu = crate::backend::on_gpu(op, &operands)?;
    let s = qkv.shape();
    let fits = |heads: usize| heads.checked_mul(3).is_some_and(|w| s[2].is_multiple_of(w));
    if qkv.rank() != 3 || heads == 0 || !fits(heads) {
        return Err(Error::shape(
            op,
            &[s],
            E::DTYPE.name(),
            format!("qkv must be [batch, positions, 3 * heads * head_dim] with {heads} heads"),
        ));
    }
    let (b, n, c) = (s[0], s[1], s[2] / 3);
    let dh = c / heads;
    if gpu {
        let [q, k, v] = qkv_views(&qkv.detach(), heads)?;
        let d = check_shapes(op, &q, &k, &v, mask, opts.causal)?;
        if mask.is_none() && fused_on_gpu(&d) {
            return attention_qkv_gpu(qkv, [q, k, v], &d, opts);
        }
        // The composed ops on the device; gradients flow back through the views.
        let [q, k, v] = qkv_views(qkv, heads)?;
        let o = attention_reference(&q, &k, &v, mask, opts)?
            .permute(&[0, 2, 1, 3])?
            .reshape(&[b, n, c])?;
        return Ok((o, None));
    }
    let [q, k, v] = qkv_views(&qkv.detach(), heads)?;
    let d = check_shapes(op, &q, &k, &v, mask, opts.causal)?;
    let alpha = E::from_f64(opts.alpha(op)?);
    let timer = Timer::start(Kernel::Attention);
    let needs_grad = is_grad_enabled() && qkv.requires_grad();
    let mut out = vec![E::ZERO; b * n * c];
    let mut ts = vec![&q, &k, &v];
    ts.extend(mask);
    let dst = RowsOut::merged(&mut out, n, c, dh);
    let probs = forward_heads(&d, opts, alpha, &ts, dst, needs_grad);
    // Saved for the backward as a tensor, so that it lives where the output does.
    let p_len = probs.len();
    let probs = Tensor::from_raw(probs, &[p_len]);
    drop(timer);
    let out = Tensor::from_raw(out, &[b, n, c]);
    if !needs_grad {
        return Ok((out, None));
    }
    let od = out.detach();
    let out = out.record(op, &[qkv], move |g| {
        let _timer = Timer::start(Kernel::Attention);
        let probs_host = probs.storage().read();
        let mut grad = vec![E::ZERO; b * n * 3 * c];
        if !d.trivial() {
            let all = RowsOut::merged(&mut grad, n, 3 * c, dh);
            let part = |i: usize| {
                let off = (i * c) as isize;
                Some(RowsOut {
                    lay: Strided4 { off, ..all.lay },
                    ..all
                })
            };
            let dst = [part(0), part(1), part(2)];
            // `[B, N, C]` tensors seen as `[B, H, N, Dh]`.
            let as_heads = |l: &Layout| {
                let (off, st) = (l.offset() as isize, l.strides());
                Strided4 {
                    off,
                    st: [st[0], dh as isize * st[2], st[1], st[2]],
                }
            };
            let (lg, lo) = (as_heads(g.layout()), as_heads(od.layout()));
            backward_heads(
                &d,
                opts,
                alpha,
                &probs_host,
                [&q, &k, &v, g, &od],
                lg,
                lo,
                dst,
            );
        }
        Ok(vec![Some(Tensor::from_raw(grad, &[b, n, 3 * c]))])
    });
    Ok((out, None))
}

/// Whether the fused GPU kernels take these sizes (`ptx/attention.cu`: head dimensions up to
/// [`kernels::ATTN_MAX_HEAD_DIM`]); anything else runs the composed ops on the device.
fn fused_on_gpu(d: &Dims) -> bool {
    kernels::attn_supported(d.dh, d.dv)
}

/// The kernels' view of the sizes and score options.
fn gpu_args(d: &Dims, opts: AttentionOptions, op: &'static str) -> Result<(AttnDims, AttnScores)> {
    let dims = AttnDims {
        b: d.b,
        h: d.h,
        nq: d.nq,
        nk: d.nk,
        dh: d.dh,
        dv: d.dv,
    };
    // Rounded to f32 as the CPU's f32 kernel rounds it.
    let alpha = opts.alpha(op)? as f32;
    Ok((
        dims,
        AttnScores {
            alpha,
            causal: opts.causal,
        },
    ))
}

/// [`attention`] on a GPU device without a mask tensor: the fused flash-style kernels, which
/// save the output and a per-query log-sum-exp (`[B, H, Nq]`) for the backward instead of
/// the probabilities. Under bf16 precision (head dims 64 or 128) the forward runs on the
/// tensor cores and the node keeps bf16 copies of q, k, v and the output instead of the f32
/// tensors (`gpu::AttnSaved`).
fn attention_gpu<E: Element>(
    q: &Tensor<E>,
    k: &Tensor<E>,
    v: &Tensor<E>,
    d: &Dims,
    opts: AttentionOptions,
) -> Result<Tensor<E>> {
    let (dims, scores) = gpu_args(d, opts, "attention")?;
    let (qd, kd, vd) = (q.detach(), k.detach(), v.detach());
    let needs_grad =
        is_grad_enabled() && (q.requires_grad() || k.requires_grad() || v.requires_grad());
    // One query sees every key whether causal or not (it is the last position).
    if d.nq == 1 && !needs_grad {
        return gpu::attention_decode(&qd, &kd, &vd, dims, scores.alpha);
    }
    let fwd = gpu::attention_forward(&qd, &kd, &vd, dims, scores, AttnLayout::Heads, needs_grad)?;
    let (out, lse) = (fwd.out, fwd.lse);
    let Some(saved) = fwd.saved else {
        return Ok(out);
    };
    let want = [q.requires_grad(), k.requires_grad(), v.requires_grad()];
    Ok(out.record("attention", &[q, k, v], move |g| {
        let grads = gpu::attention_backward(&saved, g, &lse, dims, scores, AttnLayout::Heads)?;
        Ok(grads
            .into_iter()
            .zip(want)
            .map(|(t, w)| w.then_some(t))
            .collect())
    }))
}

/// [`attention_qkv`] on a GPU device without a mask tensor: the fused kernels read q, k, v
/// in place from `qkv`, write the output with the heads side by side, and the backward
/// writes one `[B, N, 3 C]` gradient.
fn attention_qkv_gpu<E: Element>(
    qkv: &Tensor<E>,
    [q, k, v]: [Tensor<E>; 3],
    d: &Dims,
    opts: AttentionOptions,
) -> Result<(Tensor<E>, Option<gpu::Bf16Rows>)> {
    let op = "attention_qkv";
    let (dims, scores) = gpu_args(d, opts, op)?;
    let needs_grad = is_grad_enabled() && qkv.requires_grad();
    let fwd = gpu::attention_forward(&q, &k, &v, dims, scores, AttnLayout::Qkv, needs_grad)?;
    let (out, lse) = (fwd.out, fwd.lse);
    let Some(saved) = fwd.saved else {
        return Ok((out, None));
    };
    let o16 = match &saved {
        gpu::AttnSaved::Bf16 { o, .. } => Some(o.clone()),
        gpu::AttnSaved::F32 { .. } => None,
    };
    let (b, n, h, dv) = (d.b, d.nq, d.h, d.dv);
    let out = out.record(op, &[qkv], move |g| {
        // `[B, N, H Dv]` seen as `[B, H, N, Dv]` (a copy only if `g` cannot be viewed so).
        let as_heads = |t: &Tensor<E>| -> Result<Tensor<E>> {
            let t = match t.layout().reshape(&[b, n, h, dv]) {
                Some(l) => t.view_raw(l),
                None => gpu::contiguous(t)?.reshape(&[b, n, h, dv])?,
            };
            Ok(t.view_raw(t.layout().permute(&[0, 2, 1, 3])))
        };
        let mut grads =
            gpu::attention_backward(&saved, &as_heads(g)?, &lse, dims, scores, AttnLayout::Qkv)?;
        Ok(vec![grads.pop()])
    });
    Ok((out, o16))
}

/// The composed form of [`attention`]: `matmul`, `mul_scalar`, `masked_fill` with `-inf`,
/// `softmax`, `matmul`, each recorded separately. Slow and memory-hungry; it exists so tests
/// can compare the fused op against it, values and gradients.
pub fn attention_reference<E: Element>(
    q: &Tensor<E>,
    k: &Tensor<E>,
    v: &Tensor<E>,
    mask: Option<&Tensor<E>>,
    opts: AttentionOptions,
) -> Result<Tensor<E>> {
    let d = check_shapes("attention_reference", q, k, v, mask, opts.causal)?;
    let alpha = opts.alpha("attention_reference")?;
    let mut s = q.matmul(&k.t()?)?.mul_scalar(alpha)?;
    if let Some(m) = mask {
        s = s.masked_fill(m, f64::NEG_INFINITY)?;
    }
    if opts.causal {
        let mut cm = vec![E::ZERO; d.nq * d.nk];
        for i in 0..d.nq {
            for j in visible(true, &d, i)..d.nk {
                cm[i * d.nk + j] = E::ONE;
            }
        }
        let cm = Tensor::from_raw(cm, &[d.nq, d.nk]).to_device(q.device())?;
        s = s.masked_fill(&cm, f64::NEG_INFINITY)?;
    }
    s.softmax(-1)?.matmul(v)
}
