//! The decode kernel: new queries over a key/value cache, one online-softmax pass per query.

use super::*;

/// Keys per block of the decode loop's score buffer.
pub(crate) const DECODE_CHUNK: usize = 64;

/// Writes `out` (`[B, H, T, Dh]`, contiguous) for the queries in `qv` (addressed by `lq`)
/// over a cache whose `(batch, head)` rows hold `max_len` positions of `d.dh` values, the
/// first `d.nk` of them filled.
pub(crate) fn decode_heads<E: Element>(
    out: &mut [E],
    qv: &[E],
    lq: Strided4,
    (cache_k, cache_v, max_len): (&[E], &[E], usize),
    d: &Dims,
    causal: bool,
    alpha: E,
) {
    let (bh, dh, len, t) = (d.b * d.h, d.dh, d.nk, d.nq);
    let stride = max_len * dh;
    let one_head = |i: usize, o: &mut [E]| {
        let (b, h) = (i / d.h, i % d.h);
        let keys = &cache_k[i * stride..i * stride + len * dh];
        let vals = &cache_v[i * stride..i * stride + len * dh];
        for (qi, orow) in o.chunks_exact_mut(dh).enumerate() {
            let qbase = lq.head(b, h) + qi as isize * lq.st[2];
            let score = |kr: &[E]| {
                alpha
                    * if lq.st[3] == 1 {
                        dot(&qv[qbase as usize..qbase as usize + dh], kr)
                    } else {
                        kr.iter()
                            .enumerate()
                            .map(|(c, &kv)| qv[(qbase + c as isize * lq.st[3]) as usize] * kv)
                            .sum()
                    }
            };
            let lim = visible(causal, d, qi);
            let (mut m, mut l) = (E::NEG_INFINITY, E::ZERO);
            // Keys in chunks whose scores sit in a stack buffer: one rescale per chunk,
            // and the exponentials vectorise.
            let mut buf = [E::ZERO; DECODE_CHUNK];
            for c0 in (0..lim).step_by(DECODE_CHUNK) {
                let n = DECODE_CHUNK.min(lim - c0);
                let sc = &mut buf[..n];
                let rows = keys[c0 * dh..(c0 + n) * dh].chunks_exact(dh);
                for (x, kr) in sc.iter_mut().zip(rows) {
                    *x = score(kr);
                }
                let cm = sc
                    .iter()
                    .fold(E::NEG_INFINITY, |a, &x| if x > a { x } else { a });
                if cm > m {
                    // Rescale what was accumulated under the old maximum.
                    let c = (m - cm).exp();
                    l *= c;
                    for x in orow.iter_mut() {
                        *x *= c;
                    }
                    m = cm;
                }
                if m == E::NEG_INFINITY {
                    continue;
                }
                for x in sc.iter_mut() {
                    *x -= m;
                }
                exp_in_place(sc);
                l += crate::ops::sum_slice(sc);
                let vrows = vals[c0 * dh..(c0 + n) * dh].chunks_exact(dh);
                for (&p, vr) in sc.iter().zip(vrows) {
                    for (x, &vv) in orow.iter_mut().zip(vr) {
                        *x += p * vv;
                    }
                }
            }
            if l > E::ZERO {
                let r = E::ONE / l;
                for x in orow.iter_mut() {
                    *x *= r;
                }
            }
        }
    };
    let o_len = t * dh;
    if bh > 1 && bh * t * len * dh >= (1 << 16) {
        out.par_chunks_mut(o_len)
            .enumerate()
            .for_each(|(i, o)| one_head(i, o));
    } else {
        for (i, o) in out.chunks_exact_mut(o_len).enumerate() {
            one_head(i, o);
        }
    }
}
