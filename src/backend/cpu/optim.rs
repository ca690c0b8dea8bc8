//! Optimiser kernels on the CPU: the AdamW and EMA updates over a parameter's elements, and
//! the f64 sum of squares behind the gradient norm. Large slices are cut into fixed chunks
//! (`PAR_THRESHOLD` elements) so that the results do not depend on the thread count.

use rayon::prelude::*;

use crate::tensor::iter::PAR_THRESHOLD;
use crate::tensor::Element;

/// AdamW's per-step constants, converted once to the element type.
#[derive(Clone, Copy)]
pub(crate) struct AdamWCoeffs<E> {
    pub(crate) decay: E,
    pub(crate) b1: E,
    pub(crate) one_minus_b1: E,
    pub(crate) b2: E,
    pub(crate) one_minus_b2: E,
    pub(crate) inv_bc2_sqrt: E,
    pub(crate) eps: E,
    pub(crate) step_size: E,
}

#[inline]
fn adamw_chunk<E: Element>(p: &mut [E], m: &mut [E], v: &mut [E], g: &[E], c: AdamWCoeffs<E>) {
    for (((p, m), v), &g) in p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
        *p *= c.decay;
        *m = c.b1 * *m + c.one_minus_b1 * g;
        *v = c.b2 * *v + c.one_minus_b2 * g * g;
        let denom = v.sqrt() * c.inv_bc2_sqrt + c.eps;
        *p -= c.step_size * *m / denom;
    }
}

/// One AdamW update of the parameters `p` and moments `m`, `v` from the gradient `g`.
pub(crate) fn adamw<E: Element>(p: &mut [E], m: &mut [E], v: &mut [E], g: &[E], c: AdamWCoeffs<E>) {
    if p.len() >= 2 * PAR_THRESHOLD {
        p.par_chunks_mut(PAR_THRESHOLD)
            .zip(m.par_chunks_mut(PAR_THRESHOLD))
            .zip(v.par_chunks_mut(PAR_THRESHOLD))
            .zip(g.par_chunks(PAR_THRESHOLD))
            .for_each(|(((p, m), v), g)| adamw_chunk(p, m, v, g, c));
    } else {
        adamw_chunk(p, m, v, g, c);
    }
}

#[inline]
fn ema_chunk<E: Element>(s: &mut [E], p: &[E], decay: E, keep: E) {
    for (s, &p) in s.iter_mut().zip(p) {
        *s = decay * *s + keep * p;
    }
}

/// `s = decay * s + keep * p`, elementwise.
pub(crate) fn ema<E: Element>(s: &mut [E], p: &[E], decay: E, keep: E) {
    if p.len() >= 2 * PAR_THRESHOLD {
        s.par_chunks_mut(PAR_THRESHOLD)
            .zip(p.par_chunks(PAR_THRESHOLD))
            .for_each(|(s, p)| ema_chunk(s, p, decay, keep));
    } else {
        ema_chunk(s, p, decay, keep);
    }
}

/// Sum of squares in `f64`. Large slices are split into fixed chunks whose partial sums are
/// added in order, so the result does not depend on the thread count.
pub(crate) fn sum_squares<E: Element>(s: &[E]) -> f64 {
    let chunk = |c: &[E]| {
        c.iter()
            .map(|v| {
                let x = v.to_f64();
                x * x
            })
            .sum::<f64>()
    };
    if s.len() >= 2 * PAR_THRESHOLD {
        let parts: Vec<f64> = s.par_chunks(PAR_THRESHOLD).map(chunk).collect();
        parts.iter().sum()
    } else {
        chunk(s)
    }
}
