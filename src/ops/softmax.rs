//! Fused softmax and log-softmax over any axis, each with a hand-written backward.
//!
//! The input is read as `[outer, n, inner]` blocks (`n` the reduced axis). The last axis
//! (`inner == 1`) is the fast path: one contiguous row per lane. Other axes reduce whole
//! `inner`-wide rows at once, which keeps the loops unit-stride. Every lane subtracts its
//! maximum before exponentiating, so large logits stay finite.
//!
//! Gradient-write convention: backward passes return fresh tensors (`=`, never `+=`); the
//! autograd engine sums contributions. Derivations: `docs/derivations.md`.

use rayon::prelude::*;

use crate::error::Result;
use crate::tensor::iter::PAR_THRESHOLD;
use crate::tensor::layout::resolve_axis;
use crate::tensor::{Element, Tensor};

/// Runs `f(first_block, blocks)` over `out` cut into whole blocks of `block` elements, split
/// across rayon tasks of about `PAR_THRESHOLD` elements when the output is large.
pub(crate) fn par_blocks<E: Element>(
    out: &mut [E],
    block: usize,
    f: impl Fn(usize, &mut [E]) + Sync,
) {
    if block == 0 || out.is_empty() {
        return;
    }
    let nblocks = out.len() / block;
    if out.len() >= PAR_THRESHOLD && nblocks > 1 {
        let per = (PAR_THRESHOLD / block).max(1);
        out.par_chunks_mut(per * block)
            .enumerate()
            .for_each(|(t, c)| f(t * per, c));
    } else {
        f(0, out);
    }
}

#[inline]
fn max_of<E: Element>(s: &[E]) -> E {
    // NaN wins so that a NaN logit poisons its row visibly instead of being skipped.
    s.iter().fold(
        E::NEG_INFINITY,
        |m, &v| if v > m || v.is_nan() { v } else { m },
    )
}

/// Softmax of one contiguous row, in place. A row whose entries are all `-inf` (every
/// position masked out) becomes all zeros: no position carries probability.
#[inline]
pub(crate) fn softmax_in_place<E: Element>(row: &mut [E]) {
    let m = max_of(row);
    if m == E::NEG_INFINITY {
        row.fill(E::ZERO);
        return;
    }
    for v in row.iter_mut() {
        *v = (*v - m).exp();
    }
    let r = E::ONE / crate::ops::sum_slice(row);
    for v in row.iter_mut() {
        *v *= r;
    }
}

/// Log-softmax of one contiguous row, in place; an all `-inf` row stays all `-inf`.
#[inline]
fn log_softmax_in_place<E: Element>(row: &mut [E]) {
    let m = max_of(row);
    if m == E::NEG_INFINITY {
        return;
    }
    let mut s = E::ZERO;
    for v in row.iter_mut() {
        *v -= m;
        s += v.exp();
    }
    let ls = s.ln();
    for v in row.iter_mut() {
        *v -= ls;
    }
}

/// Softmax or log-softmax over axis 0 of a contiguous `[n, inner]` block, in place.
/// `m` and `s` are scratch rows of length `inner`.
fn block_forward<E: Element>(
    blk: &mut [E],
    n: usize,
    inner: usize,
    log: bool,
    m: &mut [E],
    s: &mut [E],
) {
    m.copy_from_slice(&blk[..inner]);
    for k in 1..n {
        for (m, &x) in m.iter_mut().zip(&blk[k * inner..(k + 1) * inner]) {
            if x > *m || x.is_nan() {
                *m = x;
            }
        }
    }
    // A lane of all -inf has no finite maximum; shifting by 0 keeps it at -inf (log) or
    // sends it to exp(-inf) = 0 (softmax), which is the convention of the row kernels.
    for m in m.iter_mut() {
        if *m == E::NEG_INFINITY {
            *m = E::ZERO;
        }
    }
    s.fill(E::ZERO);
    for k in 0..n {
        let row = &mut blk[k * inner..(k + 1) * inner];
        for ((v, &m), s) in row.iter_mut().zip(m.iter()).zip(s.iter_mut()) {
            let d = *v - m;
            let e = d.exp();
            *s += e;
            *v = if log { d } else { e };
        }
    }
    if log {
        for s in s.iter_mut() {
            *s = if *s > E::ZERO { s.ln() } else { E::ZERO };
        }
        for k in 0..n {
            for (v, &ls) in blk[k * inner..(k + 1) * inner].iter_mut().zip(s.iter()) {
                *v -= ls;
            }
        }
    } else {
        for s in s.iter_mut() {
            *s = if *s > E::ZERO { E::ONE / *s } else { E::ZERO };
        }
        for k in 0..n {
            for (v, &r) in blk[k * inner..(k + 1) * inner].iter_mut().zip(s.iter()) {
                *v *= r;
            }
        }
    }
}

/// Input gradient of one `[n, inner]` block, written into `dx`.
///
/// softmax:     dx = y * (g - sum_k g_k y_k)
/// log_softmax: dx = g - exp(y) * sum_k g_k
fn block_backward<E: Element>(
    y: &[E],
    g: &[E],
    dx: &mut [E],
    n: usize,
    inner: usize,
    log: bool,
    acc: &mut [E],
) {
    if inner == 1 {
        let c = if log {
            crate::ops::sum_slice(g)
        } else {
            dot(g, y)
        };
        if log {
            for ((d, &g), &y) in dx.iter_mut().zip(g).zip(y) {
                *d = g - y.exp() * c;
            }
        } else {
            for ((d, &g), &y) in dx.iter_mut().zip(g).zip(y) {
                *d = y * (g - c);
            }
        }
        return;
    }
    acc.fill(E::ZERO);
    for k in 0..n {
        let r = k * inner..(k + 1) * inner;
        if log {
            for (a, &g) in acc.iter_mut().zip(&g[r]) {
                *a += g;
            }
        } else {
            for ((a, &g), &y) in acc.iter_mut().zip(&g[r.clone()]).zip(&y[r]) {
                *a += g * y;
            }
        }
    }
    for k in 0..n {
        let r = k * inner..(k + 1) * inner;
        let rows = dx[r.clone()]
            .iter_mut()
            .zip(&g[r.clone()])
            .zip(&y[r])
            .zip(acc.iter());
        if log {
            for (((d, &g), &y), &c) in rows {
                *d = g - y.exp() * c;
            }
        } else {
            for (((d, &g), &y), &c) in rows {
                *d = y * (g - c);
            }
        }
    }
}

/// Dot product with 8 independent accumulators (vectorises).
#[inline]
pub(crate) fn dot<E: Element>(a: &[E], b: &[E]) -> E {
    let mut acc = [E::ZERO; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut t = E::ZERO;
    for (&x, &y) in ra.iter().zip(rb) {
        t += x * y;
    }
    (acc[0] + acc[4]) + (acc[1] + acc[5]) + (acc[2] + acc[6]) + (acc[3] + acc[7]) + t
}

impl<E: Element> Tensor<E> {
    /// Softmax over `axis` (negative counts from the end; the last axis is the fast path).
    /// Max-subtracted, so large logits stay finite. A lane whose entries are all `-inf` (all
    /// masked out) gives zeros.
    pub fn softmax(&self, axis: isize) -> Result<Tensor<E>> {
        self.softmax_impl("softmax", axis, false)
    }

    /// `log(softmax(x))` over `axis`, computed as `x - max - log(sum(exp(x - max)))` so that it
    /// stays finite where the softmax underflows.
    pub fn log_softmax(&self, axis: isize) -> Result<Tensor<E>> {
        self.softmax_impl("log_softmax", axis, true)
    }

    fn softmax_impl(&self, op: &'static str, axis: isize, log: bool) -> Result<Tensor<E>> {
        let ax = resolve_axis(op, axis, self.rank())?;
        let shape = self.shape().to_vec();
        let n = shape[ax];
        let inner: usize = shape[ax + 1..].iter().product();
        let block = n * inner;
        let mut out = vec![E::ZERO; self.numel()];
        self.with_contiguous(|x| {
            par_blocks(&mut out, block, |b0, dst| {
                dst.copy_from_slice(&x[b0 * block..b0 * block + dst.len()]);
                if inner == 1 {
                    for row in dst.chunks_exact_mut(n) {
                        if log {
                            log_softmax_in_place(row)
                        } else {
                            softmax_in_place(row)
                        }
                    }
                } else {
                    let (mut m, mut s) = (vec![E::ZERO; inner], vec![E::ZERO; inner]);
                    for blk in dst.chunks_exact_mut(block) {
                        block_forward(blk, n, inner, log, &mut m, &mut s);
                    }
                }
            })
        });
        let out = Tensor::from_raw(out, &shape);
        let y = out.detach();
        Ok(out.record(op, &[self], move |g| {
            let mut dx = vec![E::ZERO; y.numel()];
            y.with_contiguous(|yv| {
                g.with_contiguous(|gv| {
                    par_blocks(&mut dx, block, |b0, dst| {
                        let r = b0 * block..b0 * block + dst.len();
                        let mut acc = vec![E::ZERO; if inner == 1 { 0 } else { inner }];
                        for ((d, yb), gb) in dst
                            .chunks_exact_mut(block)
                            .zip(yv[r.clone()].chunks_exact(block))
                            .zip(gv[r].chunks_exact(block))
                        {
                            block_backward(yb, gb, d, n, inner, log, &mut acc);
                        }
                    })
                })
            });
            Ok(vec![Some(Tensor::from_raw(dx, y.shape()))])
        }))
    }
}
