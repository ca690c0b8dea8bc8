//! KV-cached sampling (latent -> data).
//!
//! Inverting a block is sequential over tokens: token `i + 1` needs the Transformer's output at
//! token `i`, which needs tokens `<= i`. With a key/value cache per layer each step runs one
//! token through the layers and attends to the cached prefix, so a block costs `N - 1` steps,
//! each linear in the prefix length, instead of `N` full passes.
//!
//! The sampler copies the weights once into flat buffers and preallocates every cache and
//! scratch buffer, so a step does no allocation and no per-op dispatch: products go straight
//! to GEMM, everything else is a plain loop. Guidance runs its branches as extra rows of the
//! same products.

use rayon::prelude::*;

use crate::backend::cpu::layer_norm::forward_rows;
use crate::backend::cpu::softmax::dot;
use crate::error::{Error, Result};
use crate::ops::gemm::PackedB;
use crate::ops::{matmul::init_gemm_threads, simd::gelu_inplace};
use crate::rng::Rng;
use crate::tensor::layout::checked_product;
use crate::tensor::{DType, Element, Tensor};

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

struct LayerW<E> {
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

struct BlockW<E> {
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
    blocks: Vec<BlockW<E>>,
    /// The model's configuration, for the memory estimate of a request.
    config: TarFlowConfig,
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

impl<E: Element> Sampler<E> {
    /// Copies the model's weights into the sampler's layout. The sampler runs on the CPU
    /// backend's kernels; a model on a GPU device is an error (move it with
    /// `model.to_device(Device::Cpu)`), never a silent download.
    pub fn new(model: &TarFlow<E>) -> Result<Self> {
        let device = model.device();
        if device.is_gpu() {
            return Err(Error::Device {
                op: "Sampler::new",
                detail: format!(
                    "the model is on {device}: KV-cached sampling runs on the CPU for now \
                     (move the model with to_device(Device::Cpu) first)"
                ),
            });
        }
        // Every buffer below is sized from the config, so the weights must match it.
        model.check_structure("Sampler::new")?;
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
            blocks.push(BlockW {
                proj_in_w: Weight::new(p("proj_in.weight")?, c, d),
                proj_in_b: p("proj_in.bias")?,
                pos,
                classes,
                layers,
                proj_out_w: Weight::new(p("proj_out.weight")?, 2 * d, c),
                proj_out_b: p("proj_out.bias")?,
                flip: blk.flip,
            });
        }
        Ok(Sampler {
            c,
            d,
            n,
            heads: cfg.heads(),
            head_dim: cfg.head_dim,
            hidden: cfg.width * cfg.mlp_ratio,
            num_classes: cfg.num_classes,
            alpha_clip: cfg.alpha_clip,
            channels: cfg.channels,
            size: cfg.image_size,
            patch: cfg.patch_size,
            blocks,
            config: cfg.clone(),
        })
    }

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
                match guidance {
                    Guidance::ClassifierFree { .. } => class_rows[i * branches + 1] = null,
                    Guidance::Temperature { tau, .. } => {
                        class_rows[i * branches + 1] = own;
                        taus[i * branches + 1] = tau;
                    }
                    Guidance::None => {}
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
            let g = match guidance {
                Guidance::None => 0.0,
                Guidance::ClassifierFree { weight, anneal }
                | Guidance::Temperature { weight, anneal, .. } => {
                    if anneal {
                        weight * (p + 1) as f64 / (n - 1) as f64
                    } else {
                        weight
                    }
                }
            };
            let g = E::from_f64(g);
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

    /// Latent tokens `[B, N, D]` -> data tokens `[B, N, D]` through all blocks in reverse.
    pub fn reverse_tokens(
        &self,
        z: &Tensor<E>,
        labels: &[Option<usize>],
        guidance: Guidance,
    ) -> Result<Tensor<E>> {
        init_gemm_threads();
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
                for blk in self.blocks.iter().rev() {
                    cur = self.invert_block(blk, &cur, nb, labs, guidance);
                }
                xs.copy_from_slice(&cur);
            });
        Tensor::from_vec(x, s)
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
            if matches!(guidance, Guidance::ClassifierFree { .. }) {
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
        if let Guidance::ClassifierFree { weight, .. } | Guidance::Temperature { weight, .. } =
            guidance
        {
            if !weight.is_finite() {
                return Err(Error::Config(format!(
                    "guidance weight must be finite, got {weight}"
                )));
            }
        }
        if let Guidance::Temperature { tau, .. } = guidance {
            if !(tau.is_finite() && tau > 0.0) {
                return Err(Error::Config(format!(
                    "attention temperature must be > 0, got {tau}"
                )));
            }
        }
        Ok(())
    }

    /// Draws `labels.len()` samples (or `count` for unconditional models, with empty
    /// `labels`) as images `[B, C, H, W]`, redrawing samples that come out non-finite.
    pub fn sample(
        &self,
        count: usize,
        labels: &[Option<usize>],
        rng: &mut Rng,
        opts: &SampleOptions,
    ) -> Result<(Tensor<E>, SampleReport)> {
        let b = if self.num_classes > 0 {
            labels.len()
        } else {
            if labels.iter().any(|l| l.is_some()) {
                return Err(Error::Config(
                    "class labels given to an unconditional model".into(),
                ));
            }
            count
        };
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
        let all_labels: Vec<Option<usize>> = if self.num_classes > 0 {
            labels.to_vec()
        } else {
            vec![None; b]
        };
        self.check_labels(&all_labels, b, opts.guidance)?;
        let per = self.n * self.d;
        let z = Tensor::<E>::randn(&[b, self.n, self.d], 0.0, opts.prior_std, rng);
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
            let z = Tensor::<E>::randn(&[bad.len(), self.n, self.d], 0.0, opts.prior_std, rng);
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
