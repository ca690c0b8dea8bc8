//! The host engine: the model's weights copied once into flat buffers (f32 weights also
//! packed for the GEMM), every cache and scratch buffer preallocated, so that a step does no
//! allocation and no per-op dispatch: products go straight to GEMM, everything else is a
//! plain loop. Guidance runs its branches as extra rows of the same products.

use rayon::prelude::*;

use crate::backend::cpu::layer_norm::forward_rows;
use crate::backend::cpu::softmax::dot;
use crate::error::{Error, Result};
use crate::ops::gemm::PackedB;
use crate::ops::simd::gelu_inplace;
use crate::tensor::{DType, Element, Tensor};

use super::super::tarflow::TarFlow;
use super::{Guidance, Sampler};

pub(super) struct LayerW<E> {
    ln1_w: Vec<E>,
    ln1_b: Vec<E>,
    qkv_w: Weight<E>,
    qkv_b: Vec<E>,
    out_w: Weight<E>,
    out_b: Vec<E>,
    ln2_w: Vec<E>,
    ln2_b: Vec<E>,
    fc1_w: Weight<E>,
    fc1_b: Vec<E>,
    fc2_w: Weight<E>,
    fc2_b: Vec<E>,
}

pub(super) struct BlockW<E> {
    proj_in_w: Weight<E>,
    proj_in_b: Vec<E>,
    /// Positional embedding already in this block's token order.
    pos: Vec<E>,
    /// Class table `[K + 1, C]`, the last row being the mean (null class).
    classes: Option<Vec<E>>,
    layers: Vec<LayerW<E>>,
    proj_out_w: Weight<E>,
    proj_out_b: Vec<E>,
    flip: bool,
}

/// `y[r, :] = x[r, :] @ w^T + b` for `rows` rows (`w` is `[out, in]`), or, with
/// `accumulate`, `y[r, :] += x[r, :] @ w^T + b` (the residual connections). The bias goes
/// into `y` first and GEMM adds the product with beta = 1.
#[allow(clippy::too_many_arguments)]
fn affine_rows<E: Element>(
    rows: usize,
    x: &[E],
    w: &Weight<E>,
    b: &[E],
    y: &mut [E],
    inp: usize,
    out: usize,
    accumulate: bool,
) {
    for yr in y[..rows * out].chunks_exact_mut(out) {
        if accumulate {
            yr.iter_mut().zip(b).for_each(|(v, &bv)| *v += bv);
        } else {
            yr.copy_from_slice(b);
        }
    }
    if let Some(p) = &w.packed {
        let (x32, y32) = (bytemuck::cast_slice(x), bytemuck::cast_slice_mut(y));
        return p.gemm(rows, x32, inp, 1, 1.0, y32, out);
    }
    let w = &w.w;
    // SAFETY: slices hold rows*inp, out*inp and rows*out elements; y does not alias x or w.
    unsafe {
        crate::backend::cpu::gemm_any(
            rows,
            inp,
            out,
            E::ONE,
            x.as_ptr(),
            inp as isize,
            1,
            w.as_ptr(),
            1,
            inp as isize,
            E::ONE,
            y.as_mut_ptr(),
            out as isize,
            1,
        )
    }
}

/// A Linear weight `[out, in]`; in `f32` also packed once for the GEMM kernel, so that a
/// step's products with a few rows do not repack the weights every time.
struct Weight<E> {
    w: Vec<E>,
    packed: Option<PackedB>,
}

impl<E: Element> Weight<E> {
    fn new(w: Vec<E>, out: usize, inp: usize) -> Self {
        let packed = (E::DTYPE == DType::F32)
            .then(|| PackedB::new(inp, out, bytemuck::cast_slice(&w), 1, inp));
        Weight { w, packed }
    }
}

/// TarFlow's LayerNorm (affine, eps 1e-5) on each row: the kernel of `Tensor::layer_norm`.
fn layer_norm_rows<E: Element>(x: &[E], w: &[E], b: &[E], y: &mut [E], c: usize) {
    forward_rows(x, y, None, c, Some(w), Some(b), E::from_f64(1e-5));
}

/// Preallocated state for one block inversion over `rows` rows.
struct Work<E> {
    k_cache: Vec<Vec<E>>,
    v_cache: Vec<Vec<E>>,
    h: Vec<E>,
    t: Vec<E>,
    qkv: Vec<E>,
    att: Vec<E>,
    hid: Vec<E>,
    out: Vec<E>,
    scores: Vec<E>,
}

/// The model's blocks in the host engine's layout.
pub(super) fn host_blocks<E: Element>(model: &TarFlow<E>) -> Result<Vec<BlockW<E>>> {
    let cfg = &model.config;
    let (c, d, n) = (cfg.width, cfg.token_dim(), cfg.seq_len());
    let hidden = cfg.width * cfg.mlp_ratio;
    let params = model.parameters();
    let get = |name: &str| -> Result<Vec<E>> {
        params
            .iter()
            .find(|(p, _)| p == name)
            .map(|(_, t)| t.to_vec())
            .ok_or_else(|| Error::format("sampler", format!("model has no parameter '{name}'")))
    };
    let mut blocks = Vec::new();
    for (t, blk) in model.blocks.iter().enumerate() {
        let p = |s: &str| get(&format!("blocks.{t}.{s}"));
        let pos_raw = p("pos_embed")?;
        let pos = if blk.flip {
            (0..n)
                .rev()
                .flat_map(|i| pos_raw[i * c..(i + 1) * c].to_vec())
                .collect()
        } else {
            pos_raw
        };
        let classes = if cfg.num_classes > 0 {
            let mut tab = p("class_embed.weight")?;
            let k = cfg.num_classes;
            let mut mean = vec![E::ZERO; c];
            for r in 0..k {
                for j in 0..c {
                    mean[j] += tab[r * c + j];
                }
            }
            for m in mean.iter_mut() {
                *m /= E::from_usize(k);
            }
            tab.extend(mean);
            Some(tab)
        } else {
            None
        };
        let mut layers = Vec::new();
        for k in 0..cfg.layers_per_block {
            let l = |s: &str| p(&format!("layers.{k}.{s}"));
            layers.push(LayerW {
                ln1_w: l("norm1.weight")?,
                ln1_b: l("norm1.bias")?,
                qkv_w: Weight::new(l("attn.qkv.weight")?, 3 * c, c),
                qkv_b: l("attn.qkv.bias")?,
                out_w: Weight::new(l("attn.out.weight")?, c, c),
                out_b: l("attn.out.bias")?,
                ln2_w: l("norm2.weight")?,
                ln2_b: l("norm2.bias")?,
                fc1_w: Weight::new(l("mlp.fc1.weight")?, hidden, c),
                fc1_b: l("mlp.fc1.bias")?,
                fc2_w: Weight::new(l("mlp.fc2.weight")?, c, hidden),
                fc2_b: l("mlp.fc2.bias")?,
            });
        }
        let (mut out_w, mut out_b) = (p("proj_out.weight")?, p("proj_out.bias")?);
        if cfg.additive {
            // The additive variant's projection gives `mu` alone: zero `alpha` rows in front
            // make the step's `exp(alpha)` exactly 1, so the steps below serve both variants.
            out_w.splice(0..0, std::iter::repeat_n(E::ZERO, d * c));
            out_b.splice(0..0, std::iter::repeat_n(E::ZERO, d));
        }
        blocks.push(BlockW {
            proj_in_w: Weight::new(p("proj_in.weight")?, c, d),
            proj_in_b: p("proj_in.bias")?,
            pos,
            classes,
            layers,
            proj_out_w: Weight::new(out_w, 2 * d, c),
            proj_out_b: out_b,
            flip: blk.flip,
        });
    }
    Ok(blocks)
}

impl<E: Element> Sampler<E> {
    fn work(&self, rows: usize, layers: usize) -> Work<E> {
        let cache = rows * self.n * self.c;
        Work {
            k_cache: (0..layers).map(|_| vec![E::ZERO; cache]).collect(),
            v_cache: (0..layers).map(|_| vec![E::ZERO; cache]).collect(),
            h: vec![E::ZERO; rows * self.c],
            t: vec![E::ZERO; rows * self.c],
            qkv: vec![E::ZERO; rows * 3 * self.c],
            att: vec![E::ZERO; rows * self.c],
            hid: vec![E::ZERO; rows * self.hidden],
            out: vec![E::ZERO; rows * 2 * self.d],
            scores: vec![E::ZERO; self.n],
        }
    }

    /// One token per row through a block's Transformer at position `pos`; leaves the
    /// unshifted `(alpha, mu)` for position `pos` in `w.out`.
    #[allow(clippy::too_many_arguments)]
    fn step(
        &self,
        blk: &BlockW<E>,
        w: &mut Work<E>,
        rows: usize,
        x: &[E],
        pos: usize,
        class_rows: &[usize],
        taus: &[f64],
    ) {
        let (c, d, n, dh) = (self.c, self.d, self.n, self.head_dim);
        affine_rows(
            rows,
            x,
            &blk.proj_in_w,
            &blk.proj_in_b,
            &mut w.h,
            d,
            c,
            false,
        );
        for r in 0..rows {
            let h = &mut w.h[r * c..(r + 1) * c];
            let pe = &blk.pos[pos * c..(pos + 1) * c];
            for j in 0..c {
                h[j] += pe[j];
            }
            if let Some(tab) = &blk.classes {
                let row = &tab[class_rows[r] * c..(class_rows[r] + 1) * c];
                for j in 0..c {
                    h[j] += row[j];
                }
            }
        }
        let scale = 1.0 / (dh as f64).sqrt();
        for (li, lw) in blk.layers.iter().enumerate() {
            layer_norm_rows(&w.h, &lw.ln1_w, &lw.ln1_b, &mut w.t, c);
            affine_rows(
                rows,
                &w.t,
                &lw.qkv_w,
                &lw.qkv_b,
                &mut w.qkv,
                c,
                3 * c,
                false,
            );
            // Cache layout per row: [pos][c], heads interleaved as in the qkv projection.
            let (kc, vc) = (&mut w.k_cache[li], &mut w.v_cache[li]);
            for r in 0..rows {
                let q = &w.qkv[r * 3 * c..(r + 1) * 3 * c];
                let base = (r * n + pos) * c;
                kc[base..base + c].copy_from_slice(&q[c..2 * c]);
                vc[base..base + c].copy_from_slice(&q[2 * c..3 * c]);
            }
            for r in 0..rows {
                let q = &w.qkv[r * 3 * c..r * 3 * c + c];
                let s = E::from_f64(scale / taus[r]);
                for hd in 0..self.heads {
                    let qh = &q[hd * dh..(hd + 1) * dh];
                    let mut m = E::NEG_INFINITY;
                    for j in 0..=pos {
                        let kj = &kc[(r * n + j) * c + hd * dh..(r * n + j) * c + (hd + 1) * dh];
                        let v = dot(qh, kj) * s;
                        w.scores[j] = v;
                        if v > m {
                            m = v;
                        }
                    }
                    let mut sum = E::ZERO;
                    for sc in w.scores[..=pos].iter_mut() {
                        *sc = (*sc - m).exp();
                        sum += *sc;
                    }
                    let inv = E::ONE / sum;
                    let o = &mut w.att[r * c + hd * dh..r * c + (hd + 1) * dh];
                    o.fill(E::ZERO);
                    for j in 0..=pos {
                        let p = w.scores[j] * inv;
                        let vj = &vc[(r * n + j) * c + hd * dh..(r * n + j) * c + (hd + 1) * dh];
                        for (a, b) in o.iter_mut().zip(vj) {
                            *a += p * *b;
                        }
                    }
                }
            }
            affine_rows(rows, &w.att, &lw.out_w, &lw.out_b, &mut w.h, c, c, true);
            layer_norm_rows(&w.h, &lw.ln2_w, &lw.ln2_b, &mut w.t, c);
            affine_rows(
                rows,
                &w.t,
                &lw.fc1_w,
                &lw.fc1_b,
                &mut w.hid,
                c,
                self.hidden,
                false,
            );
            gelu_inplace(&mut w.hid[..rows * self.hidden]);
            affine_rows(
                rows,
                &w.hid,
                &lw.fc2_w,
                &lw.fc2_b,
                &mut w.h,
                self.hidden,
                c,
                true,
            );
        }
        affine_rows(
            rows,
            &w.h,
            &blk.proj_out_w,
            &blk.proj_out_b,
            &mut w.out,
            c,
            2 * d,
            false,
        );
        if let Some(a) = self.alpha_clip {
            let a = E::from_f64(a);
            for r in 0..rows {
                for v in w.out[r * 2 * d..r * 2 * d + d].iter_mut() {
                    *v = a * (*v / a).tanh();
                }
            }
        }
    }

    /// Inverts one block for `b` images: `z` is `[b, N, D]` in canonical order.
    fn invert_block(
        &self,
        blk: &BlockW<E>,
        z: &[E],
        b: usize,
        labels: &[Option<usize>],
        guidance: Guidance,
    ) -> Vec<E> {
        let (n, d) = (self.n, self.d);
        let branches = if guidance == Guidance::None { 1 } else { 2 };
        let rows = b * branches;
        let null = self.num_classes;
        let mut class_rows = vec![0usize; rows];
        let mut taus = vec![1.0f64; rows];
        for i in 0..b {
            let own = labels.get(i).copied().flatten().unwrap_or(null);
            class_rows[i * branches] = own;
            if branches == 2 {
                class_rows[i * branches + 1] = if guidance.null_class_branch() {
                    null
                } else {
                    own
                };
                if let Some(tau) = guidance.branch_temperature() {
                    taus[i * branches + 1] = tau;
                }
            }
        }
        // Block order: position p holds canonical token perm(p).
        let tok = |p: usize| if blk.flip { n - 1 - p } else { p };
        let mut x = vec![E::ZERO; b * n * d];
        let mut step_in = vec![E::ZERO; rows * d];
        let mut w = self.work(rows, blk.layers.len());
        for i in 0..b {
            let t0 = tok(0);
            x[(i * n + t0) * d..(i * n + t0 + 1) * d]
                .copy_from_slice(&z[(i * n + t0) * d..(i * n + t0 + 1) * d]);
        }
        for p in 0..n - 1 {
            for i in 0..b {
                let t = tok(p);
                for br in 0..branches {
                    step_in[(i * branches + br) * d..(i * branches + br + 1) * d]
                        .copy_from_slice(&x[(i * n + t) * d..(i * n + t + 1) * d]);
                }
            }
            self.step(blk, &mut w, rows, &step_in, p, &class_rows, &taus);
            let g = E::from_f64(super::guidance_weight(guidance, p, n));
            let next = tok(p + 1);
            for i in 0..b {
                let oc = &w.out[(i * branches) * 2 * d..(i * branches + 1) * 2 * d];
                for j in 0..d {
                    let (mut a, mut m) = (oc[j], oc[d + j]);
                    if branches == 2 {
                        let ou = &w.out[(i * branches + 1) * 2 * d..(i * branches + 2) * 2 * d];
                        a += g * (a - ou[j]);
                        m += g * (m - ou[d + j]);
                    }
                    let idx = (i * n + next) * d + j;
                    x[idx] = z[idx] * a.exp() + m;
                }
            }
        }
        x
    }

    /// [`Sampler::reverse_tokens`] on the host engine, after its checks.
    pub(super) fn reverse_host(
        &self,
        blocks: &[BlockW<E>],
        z: &Tensor<E>,
        labels: &[Option<usize>],
        guidance: Guidance,
    ) -> Result<Tensor<E>> {
        let (s, b) = (z.shape(), z.shape()[0]);
        let mut x = z.to_vec();
        // Images are independent: each thread inverts its own slice of the batch through
        // every block, with its own caches, so a step needs no synchronisation.
        let per_image = self.n * self.d;
        let threads = rayon::current_num_threads().max(1);
        let chunk = b.div_ceil(threads).max(1);
        let all_labels: Vec<Option<usize>> =
            (0..b).map(|i| labels.get(i).copied().flatten()).collect();
        x.par_chunks_mut(chunk * per_image)
            .enumerate()
            .for_each(|(t, xs)| {
                let nb = xs.len() / per_image;
                let labs = &all_labels[t * chunk..t * chunk + nb];
                let mut cur = xs.to_vec();
                for blk in blocks.iter().rev() {
                    cur = self.invert_block(blk, &cur, nb, labs, guidance);
                }
                xs.copy_from_slice(&cur);
            });
        Tensor::from_vec(x, s)
    }
}
