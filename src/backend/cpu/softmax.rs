//! Softmax and log-softmax kernels on the CPU: rows of the last axis, or `[outer, n, inner]`
//! blocks reduced a whole `inner`-wide row at a time, and their backward.

use crate::tensor::iter::PAR_THRESHOLD;
use crate::tensor::Element;
use rayon::prelude::*;

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

/// `e^x` for `f32`, written so that a loop over a slice vectorises: range reduction
/// `x = n ln2 + r` with `|r| <= ln2 / 2`, a degree-7 Taylor polynomial for `e^r` (truncation
/// below 1e-8 relative), and `2^n` assembled in the exponent bits. Within 2 ulp of the exact
/// value (measured: under 1); exactly 1 at 0; 0 below -87 (where the exact value is under 1.7e-38, at the end of
/// the normal range) and at `-inf`; NaN stays NaN.
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5 * 2^23: adding it rounds to an integer, which then sits in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    // `clamp` lets NaN through. The lower bound keeps every intermediate a normal number:
    // subnormal arithmetic is many times slower.
    let xc = x.clamp(-87.0, 88.0);
    let t = xc * LOG2E + MAGIC;
    let n = t - MAGIC;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // Wrapping integer steps: no overflow checks, which would stop the loop vectorising.
    let bits = t.to_bits().wrapping_sub(MAGIC.to_bits()).wrapping_add(127) << 23;
    let y = p * f32::from_bits(bits);
    if x < -87.0 {
        0.0
    } else {
        y
    }
}

/// `v[i] = e^v[i]` in place: the vectorisable [`exp_f32`] for `f32`, the libm `exp` for `f64`
/// (so `f64`, the audit type, keeps the correctly rounded function).
#[inline]
pub(crate) fn exp_in_place<E: Element>(v: &mut [E]) {
    if E::DTYPE == crate::tensor::DType::F32 {
        if let Ok(v) = bytemuck::try_cast_slice_mut::<E, f32>(v) {
            for x in v.iter_mut() {
                *x = exp_f32(*x);
            }
            return;
        }
    }
    for x in v.iter_mut() {
        *x = x.exp();
    }
}

/// Largest element, ignoring NaN (eight running maxima, so the loop vectorises). A NaN in a
/// softmax lane still poisons the lane: it goes through `exp` into the sum.
#[inline]
fn max_of<E: Element>(s: &[E]) -> E {
    let mut acc = [E::NEG_INFINITY; 8];
    let mut chunks = s.chunks_exact(8);
    for c in &mut chunks {
        for k in 0..8 {
            acc[k] = if c[k] > acc[k] { c[k] } else { acc[k] };
        }
    }
    let mut m = E::NEG_INFINITY;
    for &v in acc.iter().chain(chunks.remainder()) {
        m = if v > m { v } else { m };
    }
    m
}

/// What a lane with no finite maximum becomes: NaN if it holds a NaN, else `fill` (all
/// entries are `-inf`: every position masked out).
#[inline]
fn degenerate_lane<E: Element>(row: &mut [E], fill: E) {
    let v = if row.iter().any(|x| x.is_nan()) {
        E::from_f64(f64::NAN)
    } else {
        fill
    };
    row.fill(v);
}

/// Softmax of one contiguous row, in place. A row whose entries are all `-inf` (every
/// position masked out) becomes all zeros: no position carries probability.
#[inline]
pub(crate) fn softmax_in_place<E: Element>(row: &mut [E]) {
    let m = max_of(row);
    if m == E::NEG_INFINITY {
        return degenerate_lane(row, E::ZERO);
    }
    for v in row.iter_mut() {
        *v -= m;
    }
    exp_in_place(row);
    let r = E::ONE / crate::ops::sum_slice(row);
    for v in row.iter_mut() {
        *v *= r;
    }
}

/// `sum_i e^v[i]` without changing `v` (through a stack buffer, so nothing is allocated).
#[inline]
fn sum_exp<E: Element>(v: &[E]) -> E {
    let mut buf = [E::ZERO; 64];
    let mut s = E::ZERO;
    for c in v.chunks(64) {
        let b = &mut buf[..c.len()];
        b.copy_from_slice(c);
        exp_in_place(b);
        s += crate::ops::sum_slice(b);
    }
    s
}

/// Log-softmax of one contiguous row, in place; an all `-inf` row stays all `-inf`.
#[inline]
pub(crate) fn log_softmax_in_place<E: Element>(row: &mut [E]) {
    let m = max_of(row);
    if m == E::NEG_INFINITY {
        return degenerate_lane(row, E::NEG_INFINITY);
    }
    for v in row.iter_mut() {
        *v -= m;
    }
    let ls = sum_exp(row).ln();
    for v in row.iter_mut() {
        *v -= ls;
    }
}

/// Softmax or log-softmax over axis 0 of a contiguous `[n, inner]` block, in place.
/// `m` and `s` are scratch rows of length `inner`.
pub(crate) fn block_forward<E: Element>(
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
    let mut buf = [E::ZERO; 64];
    for k in 0..n {
        let row = &mut blk[k * inner..(k + 1) * inner];
        for (row, m) in row.iter_mut().zip(m.iter()) {
            *row -= *m;
        }
        for (rc, sc) in row.chunks_mut(64).zip(s.chunks_mut(64)) {
            if log {
                let b = &mut buf[..rc.len()];
                b.copy_from_slice(rc);
                exp_in_place(b);
                for (s, &e) in sc.iter_mut().zip(b.iter()) {
                    *s += e;
                }
            } else {
                exp_in_place(rc);
                for (s, &e) in sc.iter_mut().zip(rc.iter()) {
                    *s += e;
                }
            }
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
pub(crate) fn block_backward<E: Element>(
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
            dx.copy_from_slice(y);
            exp_in_place(dx);
            for (d, &g) in dx.iter_mut().zip(g) {
                *d = g - *d * c;
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
    if log {
        dx.copy_from_slice(y);
        exp_in_place(dx);
    }
    for k in 0..n {
        let r = k * inner..(k + 1) * inner;
        if log {
            for ((d, &g), &c) in dx[r.clone()].iter_mut().zip(&g[r]).zip(acc.iter()) {
                *d = g - *d * c;
            }
        } else {
            let rows = dx[r.clone()]
                .iter_mut()
                .zip(&g[r.clone()])
                .zip(&y[r])
                .zip(acc.iter());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_f32_is_within_2_ulp_and_exact_at_the_edges() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let exact = (x as f64).exp();
            let ulp = f32::EPSILON as f64 * exact;
            worst = worst.max((exp_f32(x) as f64 - exact).abs() / ulp);
            x += 0.001_37;
        }
        assert!(worst <= 2.0, "worst error {worst} ulp");
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(-100.0), 0.0);
        assert!(exp_f32(f32::NAN).is_nan());
        let mut v = vec![0.5f32, -1.0, f32::NEG_INFINITY];
        exp_in_place(&mut v);
        assert_eq!(v, vec![exp_f32(0.5), exp_f32(-1.0), 0.0]);
        let mut w = vec![0.5f64, -1.0];
        exp_in_place(&mut w);
        assert_eq!(w, vec![0.5f64.exp(), (-1.0f64).exp()]);
    }

    #[test]
    fn nan_poisons_its_lane_only() {
        let mut row = vec![1.0f32, f32::NAN, 2.0];
        softmax_in_place(&mut row);
        assert!(row.iter().all(|v| v.is_nan()));
        let mut row = vec![f32::NEG_INFINITY, f32::NAN];
        softmax_in_place(&mut row);
        assert!(row.iter().all(|v| v.is_nan()));
        let mut row = vec![f64::NEG_INFINITY, f64::NAN];
        log_softmax_in_place(&mut row);
        assert!(row.iter().all(|v| v.is_nan()));
    }
}
