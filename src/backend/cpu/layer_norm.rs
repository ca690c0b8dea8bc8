//! Layer normalisation kernels on the CPU: forward rows (keeping each row's mean and
//! reciprocal standard deviation when asked) and the backward sweep with per-task parameter
//! gradients.

use crate::backend::cpu::reduce::sum_slice;
use crate::tensor::Element;
use std::mem::MaybeUninit;

/// Sum of squared deviations from `mean`, with 8 accumulators.
#[inline]
fn sq_dev_sum<E: Element>(x: &[E], mean: E) -> E {
    let mut acc = [E::ZERO; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for k in 0..8 {
            let d = c[k] - mean;
            acc[k] += d * d;
        }
    }
    let mut t = E::ZERO;
    for &v in chunks.remainder() {
        let d = v - mean;
        t += d * d;
    }
    (acc[0] + acc[4]) + (acc[1] + acc[5]) + (acc[2] + acc[6]) + (acc[3] + acc[7]) + t
}

/// Normalises the rows of `x` into `out`; stores `[mean, rstd]` per row when `stats` is given.
pub(crate) fn forward_rows<E: Element>(
    x: &[E],
    out: &mut [E],
    stats: Option<&mut [E]>,
    d: usize,
    w: Option<&[E]>,
    b: Option<&[E]>,
    eps: E,
) {
    // SAFETY: `MaybeUninit<E>` has `E`'s layout, and `forward_rows_into` only writes
    // initialised values, so `out` stays initialised.
    let slots = unsafe { &mut *(out as *mut [E] as *mut [MaybeUninit<E>]) };
    forward_rows_into(x, slots, stats, d, w, b, eps);
}

/// [`forward_rows`] into uninitialised memory: writes every element of `out` (`x.len()`
/// values when `d > 0`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_rows_into<E: Element>(
    x: &[E],
    out: &mut [MaybeUninit<E>],
    mut stats: Option<&mut [E]>,
    d: usize,
    w: Option<&[E]>,
    b: Option<&[E]>,
    eps: E,
) {
    if d == 0 {
        return;
    }
    let inv_d = E::ONE / E::from_usize(d);
    for (r, (xr, yr)) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)).enumerate() {
        let mean = sum_slice(xr) * inv_d;
        let var = sq_dev_sum(xr, mean) * inv_d;
        let rstd = E::ONE / (var + eps).sqrt();
        if let Some(st) = stats.as_deref_mut() {
            st[2 * r] = mean;
            st[2 * r + 1] = rstd;
        }
        match (w, b) {
            (Some(w), Some(b)) => {
                for (((y, &x), &w), &b) in yr.iter_mut().zip(xr).zip(w).zip(b) {
                    y.write((x - mean) * rstd * w + b);
                }
            }
            (Some(w), None) => {
                for ((y, &x), &w) in yr.iter_mut().zip(xr).zip(w) {
                    y.write((x - mean) * rstd * w);
                }
            }
            (None, Some(b)) => {
                for ((y, &x), &b) in yr.iter_mut().zip(xr).zip(b) {
                    y.write((x - mean) * rstd + b);
                }
            }
            (None, None) => {
                for (y, &x) in yr.iter_mut().zip(xr) {
                    y.write((x - mean) * rstd);
                }
            }
        }
    }
}

/// Partial parameter gradients of one task: `dweight` and `dbias` summed over its rows
/// (each empty when not wanted).
pub(crate) struct ParamGrads<E> {
    pub(crate) dw: Vec<E>,
    pub(crate) db: Vec<E>,
}

impl<E: Element> ParamGrads<E> {
    pub(crate) fn new(d: usize, want_w: bool, want_b: bool) -> Self {
        ParamGrads {
            dw: vec![E::ZERO; if want_w { d } else { 0 }],
            db: vec![E::ZERO; if want_b { d } else { 0 }],
        }
    }
    pub(crate) fn merge(mut self, o: Self) -> Self {
        for (a, b) in self.dw.iter_mut().zip(o.dw) {
            *a += b;
        }
        for (a, b) in self.db.iter_mut().zip(o.db) {
            *a += b;
        }
        self
    }
}

/// Backward over rows `[r0, r0 + rows)`: writes `dx` when given, accumulates into `acc`.
///
/// With `xhat = (x - mean) * rstd` and `gh = g * w`:
/// `dx = rstd * (gh - mean(gh) - xhat * mean(gh * xhat))`, `dw += g * xhat`, `db += g`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward_rows<E: Element>(
    x: &[E],
    g: &[E],
    stats: &[E],
    w: Option<&[E]>,
    d: usize,
    r0: usize,
    rows: usize,
    mut dx: Option<&mut [E]>,
    acc: &mut ParamGrads<E>,
) {
    let inv_d = E::ONE / E::from_usize(d);
    for r in 0..rows {
        let row = (r0 + r) * d..(r0 + r + 1) * d;
        let (xr, gr) = (&x[row.clone()], &g[row]);
        let (mean, rstd) = (stats[2 * (r0 + r)], stats[2 * (r0 + r) + 1]);
        if let Some(dx) = dx.as_deref_mut() {
            let dxr = &mut dx[r * d..(r + 1) * d];
            let (mut s_gh, mut s_ghx) = (E::ZERO, E::ZERO);
            for j in 0..d {
                let xh = (xr[j] - mean) * rstd;
                let gh = match w {
                    Some(w) => gr[j] * w[j],
                    None => gr[j],
                };
                s_gh += gh;
                s_ghx += gh * xh;
            }
            let (a, c) = (s_gh * inv_d, s_ghx * inv_d);
            for j in 0..d {
                let xh = (xr[j] - mean) * rstd;
                let gh = match w {
                    Some(w) => gr[j] * w[j],
                    None => gr[j],
                };
                dxr[j] = rstd * (gh - a - xh * c);
            }
        }
        if !acc.dw.is_empty() {
            for ((a, &x), &g) in acc.dw.iter_mut().zip(xr).zip(gr) {
                *a += g * (x - mean) * rstd;
            }
        }
        if !acc.db.is_empty() {
            for (a, &g) in acc.db.iter_mut().zip(gr) {
                *a += g;
            }
        }
    }
}
