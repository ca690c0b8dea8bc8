//! The affine coupling of a TarFlow block on the CPU, in one pass per image: the one-token
//! shift by indexing, the optional soft clip, `z = (x - mu) * exp(-alpha)` and the log-det.
//!
//! Every value is computed with exactly the f32 (or f64) operations, in exactly the order,
//! of the composed ops it replaces (`FlowBlock::shift`, `soft_clip`, `sub`, `neg`, `exp`,
//! `mul`, `sum(&[1, 2])`, `neg`, and their backward closures), so switching the model to it
//! leaves training bit-identical; `tests/fused_coupling.rs` compares the bits.

use rayon::prelude::*;

use super::reduce::sum_slice;
use crate::tensor::iter::PAR_THRESHOLD;
use crate::tensor::{Element, Layout};

/// A rank-3 view `[B, L, D]`: the storage index of element `(b, i, j)`.
#[derive(Clone, Copy)]
pub(crate) struct View3 {
    off: isize,
    st: [isize; 3],
}

impl View3 {
    /// The view of a rank-3 layout (the caller checked the rank).
    pub(crate) fn of(l: &Layout) -> Self {
        let s = l.strides();
        View3 {
            off: l.offset() as isize,
            st: [s[0], s[1], s[2]],
        }
    }

    #[inline(always)]
    fn at(&self, b: usize, i: usize, j: usize) -> usize {
        (self.off + b as isize * self.st[0] + i as isize * self.st[1] + j as isize * self.st[2])
            as usize
    }
}

/// A read-only operand: its storage and its view.
pub(crate) type Operand<'a, E> = (&'a [E], View3);

/// The soft clip `a * tanh(v / a)` as the composed ops evaluate it: `mul_scalar(1 / a)`,
/// `tanh`, `mul_scalar(a)`.
#[derive(Clone, Copy)]
pub(crate) struct Clip<E> {
    a: E,
    inv_a: E,
}

impl<E: Element> Clip<E> {
    /// The clip of bound `a`, or `None` for no clip.
    pub(crate) fn new(a: Option<f64>) -> Option<Self> {
        a.map(|a| Clip {
            a: E::from_f64(a),
            inv_a: E::from_f64(1.0 / a),
        })
    }

    #[inline(always)]
    fn apply(self, v: E) -> E {
        (v * self.inv_a).tanh() * self.a
    }

    /// `g * d clip / dv`, as the three backward closures compute it: `g * a`, then
    /// `* (1 - y * y)` with `y = tanh(v / a)`, then `* (1 / a)`.
    #[inline(always)]
    fn backward(self, g: E, v: E) -> E {
        let y = (v * self.inv_a).tanh();
        ((g * self.a) * (E::ONE - y * y)) * self.inv_a
    }
}

#[inline(always)]
fn clip_or<E: Element>(clip: Option<Clip<E>>, v: E) -> E {
    match clip {
        Some(c) => c.apply(v),
        None => v,
    }
}

/// Whether `n` elements of work are worth handing to rayon.
fn parallel(n: usize, images: usize) -> bool {
    n >= PAR_THRESHOLD && images > 1
}

/// The forward for `[b, l, d]` tokens `x` with unshifted parameters `alpha`, `mu` (row `i`
/// holds the parameters of token `i + 1`; token 0 gets `alpha = mu = 0`). Returns the packed
/// output: `z` row-major `[b, l, d]`, then the `b` log-determinants `-sum(alpha)`.
pub(crate) fn forward<E: Element>(
    x: Operand<'_, E>,
    alpha: Operand<'_, E>,
    mu: Operand<'_, E>,
    [b, l, d]: [usize; 3],
    clip: Option<f64>,
) -> Vec<E> {
    let clip = Clip::<E>::new(clip);
    let per = l * d;
    let mut out = vec![E::ZERO; b * per + b];
    let (z, logdet) = out.split_at_mut(b * per);
    let image = |bi: usize, zr: &mut [E]| -> E {
        // The shifted, clipped log-scales of this image, row 0 zero: what `FlowBlock::shift`
        // materialised, so the log-det sums the same sequence in the same order.
        let mut a_s = vec![E::ZERO; per];
        for i in 1..l {
            for j in 0..d {
                a_s[i * d + j] = clip_or(clip, alpha.0[alpha.1.at(bi, i - 1, j)]);
            }
        }
        for j in 0..d {
            let xv = x.0[x.1.at(bi, 0, j)];
            zr[j] = (xv - E::ZERO) * (-a_s[j]).exp();
        }
        for i in 1..l {
            for j in 0..d {
                let xv = x.0[x.1.at(bi, i, j)];
                let m = mu.0[mu.1.at(bi, i - 1, j)];
                zr[i * d + j] = (xv - m) * (-a_s[i * d + j]).exp();
            }
        }
        -sum_slice(&a_s)
    };
    if per == 0 {
        // Minus an empty sum, as `sum(&[1, 2])?.neg()` gives.
        logdet.fill(-E::ZERO);
        return out;
    }
    if parallel(b * per, b) {
        z.par_chunks_mut(per)
            .zip(logdet.par_iter_mut())
            .enumerate()
            .for_each(|(bi, (zr, ld))| *ld = image(bi, zr));
    } else {
        for (bi, (zr, ld)) in z.chunks_mut(per).zip(logdet.iter_mut()).enumerate() {
            *ld = image(bi, zr);
        }
    }
    out
}

/// Which gradients the backward computes: `[dx, dalpha, dmu]`.
pub(crate) type Want = [bool; 3];

/// The gradients of [`forward`] from `g`, the contiguous gradient of its packed output.
/// `dalpha` and `dmu` have the unshifted parameters' shape; their last row gets no gradient
/// from the coupling (it would shift past the last token), but `dalpha`'s goes through the
/// clip's derivative with zero, as the composed ops' zero padding does.
#[allow(clippy::type_complexity)]
pub(crate) fn backward<E: Element>(
    g: &[E],
    x: Operand<'_, E>,
    alpha: Operand<'_, E>,
    mu: Operand<'_, E>,
    [b, l, d]: [usize; 3],
    clip: Option<f64>,
    want: Want,
) -> (Option<Vec<E>>, Option<Vec<E>>, Option<Vec<E>>) {
    let clip = Clip::<E>::new(clip);
    let per = l * d;
    let n = b * per;
    let fresh = |on: bool| on.then(|| vec![E::ZERO; n]);
    let (mut dx, mut da, mut dm) = (fresh(want[0]), fresh(want[1]), fresh(want[2]));
    if per == 0 {
        return (dx, da, dm);
    }
    let image = |bi: usize, dxr: Option<&mut [E]>, dar: Option<&mut [E]>, dmr: Option<&mut [E]>| {
        let gz = &g[bi * per..(bi + 1) * per];
        // `logdet = neg(sum(alpha_s))`: neg's backward, then sum's broadcast.
        let gld = -g[n + bi];
        // Token i of the shifted sequence: (a_s, m_s) = 0 for i = 0, row i - 1 otherwise.
        let shifted = |i: usize, j: usize| -> (E, E) {
            if i == 0 {
                (E::ZERO, E::ZERO)
            } else {
                (
                    clip_or(clip, alpha.0[alpha.1.at(bi, i - 1, j)]),
                    mu.0[mu.1.at(bi, i - 1, j)],
                )
            }
        };
        if let Some(dxr) = dxr {
            for i in 0..l {
                for j in 0..d {
                    let (a, _) = shifted(i, j);
                    // mul's backward for `x - mu`: g * exp(-alpha); sub passes it to x.
                    dxr[i * d + j] = gz[i * d + j] * (-a).exp();
                }
            }
        }
        if let Some(dmr) = dmr {
            for i in 1..l {
                for j in 0..d {
                    let (a, _) = shifted(i, j);
                    dmr[(i - 1) * d + j] = -(gz[i * d + j] * (-a).exp());
                }
            }
        }
        if let Some(dar) = dar {
            for i in 1..l {
                for j in 0..d {
                    let (a, m) = shifted(i, j);
                    let xv = x.0[x.1.at(bi, i, j)];
                    let e = (-a).exp();
                    // mul's backward for e: g * (x - mu); exp's: * e; neg's: negate; then
                    // the log-det's contribution, accumulated by autograd.
                    let ga = -((gz[i * d + j] * (xv - m)) * e) + gld;
                    dar[(i - 1) * d + j] = match clip {
                        Some(c) => c.backward(ga, alpha.0[alpha.1.at(bi, i - 1, j)]),
                        None => ga,
                    };
                }
            }
            if let Some(c) = clip {
                for j in 0..d {
                    let v = alpha.0[alpha.1.at(bi, l - 1, j)];
                    dar[(l - 1) * d + j] = c.backward(E::ZERO, v);
                }
            }
        }
    };
    let rows: Vec<_> = chunks(&mut dx, per, b)
        .into_iter()
        .zip(chunks(&mut da, per, b))
        .zip(chunks(&mut dm, per, b))
        .enumerate()
        .collect();
    if parallel(n, b) {
        rows.into_par_iter()
            .for_each(|(bi, ((x, a), m))| image(bi, x, a, m));
    } else {
        for (bi, ((x, a), m)) in rows {
            image(bi, x, a, m);
        }
    }
    (dx, da, dm)
}

/// One `per`-long chunk of `v` per image, or `None` for each image when `v` is not wanted.
fn chunks<E>(v: &mut Option<Vec<E>>, per: usize, images: usize) -> Vec<Option<&mut [E]>> {
    match v {
        Some(v) => v.chunks_mut(per).map(Some).collect(),
        None => (0..images).map(|_| None).collect(),
    }
}

/// The inverse `x = z * exp(alpha) + mu` over contiguous, equally long slices, with the
/// guidance combination `p + w * (p - p_u)` of both parameters first when `uncond` is given
/// (the sampler's formula, in its order).
pub(crate) fn inverse<E: Element>(
    z: &[E],
    alpha: &[E],
    mu: &[E],
    uncond: Option<(&[E], &[E], f64)>,
) -> Vec<E> {
    let one = |k: usize| -> E {
        let (mut a, mut m) = (alpha[k], mu[k]);
        if let Some((au, mu_u, w)) = uncond {
            let w = E::from_f64(w);
            a += w * (a - au[k]);
            m += w * (m - mu_u[k]);
        }
        z[k] * a.exp() + m
    };
    let n = z.len();
    if n >= PAR_THRESHOLD {
        (0..n).into_par_iter().map(one).collect()
    } else {
        (0..n).map(one).collect()
    }
}
