//! Reduction kernels on the CPU: sum and max over any set of axes of a strided view, in an
//! order fixed by the shape.

use crate::tensor::iter::{Plan, PAR_THRESHOLD};
use crate::tensor::{Element, Layout};
use rayon::prelude::*;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Sum,
    Max,
}

/// Sum of a contiguous slice with 8 independent accumulators (vectorises, and is more
/// accurate than one running sum).
#[inline]
pub fn sum_slice<E: Element>(s: &[E]) -> E {
    let mut acc = [E::ZERO; 8];
    let mut chunks = s.chunks_exact(8);
    for c in &mut chunks {
        for k in 0..8 {
            acc[k] += c[k];
        }
    }
    let mut t = E::ZERO;
    for v in chunks.remainder() {
        t += *v;
    }
    (acc[0] + acc[4]) + (acc[1] + acc[5]) + (acc[2] + acc[6]) + (acc[3] + acc[7]) + t
}

#[inline]
fn max_slice<E: Element>(s: &[E]) -> E {
    s.iter().fold(
        E::NEG_INFINITY,
        |m, &v| if v > m || v.is_nan() { v } else { m },
    )
}

fn combine<E: Element>(kind: Kind, a: E, b: E) -> E {
    match kind {
        Kind::Sum => a + b,
        Kind::Max => {
            if b > a || b.is_nan() {
                b
            } else {
                a
            }
        }
    }
}

fn identity<E: Element>(kind: Kind) -> E {
    match kind {
        Kind::Sum => E::ZERO,
        Kind::Max => E::NEG_INFINITY,
    }
}

/// Reduces `data` viewed through `l` over `axes` (sorted, unique). Output is row-major over
/// the kept axes.
pub(crate) fn reduce_raw<E: Element>(data: &[E], l: &Layout, axes: &[usize], kind: Kind) -> Vec<E> {
    let rank = l.rank();
    let kept: Vec<usize> = (0..rank).filter(|a| !axes.contains(a)).collect();
    let kshape: Vec<usize> = kept.iter().map(|&a| l.shape()[a]).collect();
    let kstr: Vec<isize> = kept.iter().map(|&a| l.strides()[a]).collect();
    let rshape: Vec<usize> = axes.iter().map(|&a| l.shape()[a]).collect();
    let rstr: Vec<isize> = axes.iter().map(|&a| l.strides()[a]).collect();
    let n_out: usize = kshape.iter().product();
    let n_red: usize = rshape.iter().product();
    let mut out = vec![identity::<E>(kind); n_out];
    if n_out == 0 || n_red == 0 {
        return out;
    }
    let kplan = Plan::<1>::new(&kshape, [&kstr]);
    let rplan = Plan::<1>::new(&rshape, [&rstr]);

    // Case A: kept elements form one contiguous run: accumulate whole rows (bias gradients).
    if kplan.rows == 1 && kplan.inner_strides[0] == 1 && n_out > 1 {
        let base = l.offset();
        let accumulate = |r0: usize, r1: usize, acc: &mut [E]| {
            let inner = rplan.inner;
            let s = rplan.inner_strides[0];
            let first_row = r0 / inner;
            let last_row = r1.div_ceil(inner);
            rplan.for_rows([base], first_row, last_row, |row, [o]| {
                let j0 = if row == first_row {
                    r0 - row * inner
                } else {
                    0
                };
                let j1 = (r1 - row * inner).min(inner);
                for j in j0..j1 {
                    let off = (o as isize + j as isize * s) as usize;
                    let src = &data[off..off + n_out];
                    for (a, &v) in acc.iter_mut().zip(src) {
                        *a = combine(kind, *a, v);
                    }
                }
            });
        };
        let total = n_out * n_red;
        if total >= 4 * PAR_THRESHOLD && n_red >= 4 {
            // Slices of about PAR_THRESHOLD elements (at most 64 of them), summed in slice
            // order: the shape alone fixes the order of the additions, so the bits do not
            // depend on the number of threads.
            let per = (PAR_THRESHOLD / n_out).max(n_red.div_ceil(64)).max(1);
            let tasks = n_red.div_ceil(per);
            let partials: Vec<Vec<E>> = (0..tasks)
                .into_par_iter()
                .map(|t| {
                    let mut acc = vec![identity::<E>(kind); n_out];
                    accumulate(t * per, ((t + 1) * per).min(n_red), &mut acc);
                    acc
                })
                .collect();
            for p in partials {
                for (o, v) in out.iter_mut().zip(p) {
                    *o = combine(kind, *o, v);
                }
            }
        } else {
            accumulate(0, n_red, &mut out);
        }
        return out;
    }

    // Case B: one reduced value per output element.
    let reduce_one = |base: usize| -> E {
        let mut acc = identity::<E>(kind);
        let inner = rplan.inner;
        let s = rplan.inner_strides[0];
        rplan.for_rows([base], 0, rplan.rows, |_, [o]| {
            let v = if s == 1 {
                let sl = &data[o..o + inner];
                match kind {
                    Kind::Sum => sum_slice(sl),
                    Kind::Max => max_slice(sl),
                }
            } else {
                let mut a = identity::<E>(kind);
                for j in 0..inner {
                    a = combine(kind, a, data[(o as isize + j as isize * s) as usize]);
                }
                a
            };
            acc = combine(kind, acc, v);
        });
        acc
    };
    let kinner = kplan.inner;
    let ks = kplan.inner_strides[0];
    let fill = |start_row: usize, dst: &mut [E]| {
        let rows = dst.len() / kinner;
        kplan.for_rows([l.offset()], start_row, start_row + rows, |row, [o]| {
            for j in 0..kinner {
                dst[(row - start_row) * kinner + j] =
                    reduce_one((o as isize + j as isize * ks) as usize);
            }
        });
    };
    if n_out * n_red >= PAR_THRESHOLD && kplan.rows > 1 {
        let rpt = (kplan.rows / (rayon::current_num_threads() * 4)).max(1);
        out.par_chunks_mut(rpt * kinner)
            .enumerate()
            .for_each(|(t, dst)| fill(t * rpt, dst));
    } else if n_out * n_red >= PAR_THRESHOLD && kinner > 1 {
        // One row of outputs: split it.
        let per = kinner.div_ceil(rayon::current_num_threads() * 4).max(1);
        let o = l.offset();
        out.par_chunks_mut(per).enumerate().for_each(|(t, dst)| {
            for (j, d) in dst.iter_mut().enumerate() {
                let jj = t * per + j;
                *d = reduce_one((o as isize + jj as isize * ks) as usize);
            }
        });
    } else {
        fill(0, &mut out);
    }
    out
}
