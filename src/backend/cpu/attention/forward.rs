//! The fused forward kernel: scores, causal/masked softmax over keys and the output, head by
//! head, keeping `P` for the backward when asked.

use super::*;

/// Softmax over keys of a column-major score block: lane `j` (a key) holds the `nq` queries'
/// scores at `p[j * ld..j * ld + nq]`, and each query's softmax runs across the `nk` lanes,
/// so every loop is unit-stride over queries. Lane `j` is read only from query `first(j)` on
/// (the causal rule hides the rest), and its hidden part is set to zero. A query whose
/// scores are all `-inf` gets zeros. `m` and `s` are scratch of length `nq`.
pub(crate) fn softmax_over_keys<E: Element>(
    p: &mut [E],
    (nk, nq, ld): (usize, usize, usize),
    first: impl Fn(usize) -> usize,
    m: &mut [E],
    s: &mut [E],
) {
    m.fill(E::NEG_INFINITY);
    for j in 0..nk {
        let f = first(j).min(nq);
        for (m, &x) in m[f..].iter_mut().zip(&p[j * ld + f..j * ld + nq]) {
            if x > *m || x.is_nan() {
                *m = x;
            }
        }
    }
    for m in m.iter_mut() {
        if *m == E::NEG_INFINITY {
            *m = E::ZERO;
        }
    }
    s.fill(E::ZERO);
    for j in 0..nk {
        let f = first(j).min(nq);
        let lane = &mut p[j * ld..j * ld + nq];
        lane[..f].fill(E::ZERO);
        let lane = &mut lane[f..];
        for (x, &m) in lane.iter_mut().zip(&m[f..]) {
            *x -= m;
        }
        exp_in_place(lane);
        for (s, &e) in s[f..].iter_mut().zip(lane.iter()) {
            *s += e;
        }
    }
    for s in s.iter_mut() {
        *s = if *s > E::ZERO { E::ONE / *s } else { E::ZERO };
    }
    for j in 0..nk {
        let f = first(j).min(nq);
        for (x, &r) in p[j * ld + f..j * ld + nq].iter_mut().zip(&s[f..]) {
            *x *= r;
        }
    }
}

/// Where every (batch, head) matrix of an output or gradient goes: rows along axis 2 of a
/// `[B, H, rows, cols]` view with adjacent columns, inside a buffer that heads write
/// disjoint rows of.
#[derive(Clone, Copy)]
pub(crate) struct RowsOut<E> {
    pub(crate) ptr: *mut E,
    pub(crate) lay: Strided4,
}
// SAFETY: the buffer is only written through `put`, whose contract gives each (batch, head)
// block of rows to one task; `E: Send` lets the values be written from another thread.
unsafe impl<E: Send> Send for RowsOut<E> {}
// SAFETY: as for `Send`: tasks sharing the handle write disjoint rows through `put`, and
// nothing reads through it.
unsafe impl<E: Send> Sync for RowsOut<E> {}

impl<E: Copy> RowsOut<E> {
    /// `[B, H, rows, cols]`, contiguous.
    pub(crate) fn heads(buf: &mut [E], h: usize, rows: usize, cols: usize) -> Self {
        RowsOut {
            ptr: buf.as_mut_ptr(),
            lay: Strided4 {
                off: 0,
                st: [
                    (h * rows * cols) as isize,
                    (rows * cols) as isize,
                    cols as isize,
                    1,
                ],
            },
        }
    }
    /// Heads side by side in the rows of a contiguous `[B, rows, width]` buffer, head `h`'s
    /// columns starting at `h * cols`.
    pub(crate) fn merged(buf: &mut [E], rows: usize, width: usize, cols: usize) -> Self {
        RowsOut {
            ptr: buf.as_mut_ptr(),
            lay: Strided4 {
                off: 0,
                st: [(rows * width) as isize, cols as isize, width as isize, 1],
            },
        }
    }
    /// Writes `rows` rows of `cols` values from row-major `src` to head `(b, h)`.
    ///
    /// # Safety
    /// The rows must lie inside the buffer the handle was made from (which must still be
    /// alive and not otherwise borrowed), no other task may write or read them, and `src`
    /// must hold at least `rows * cols` values.
    pub(crate) unsafe fn put(self, b: usize, h: usize, rows: usize, cols: usize, src: &[E]) {
        debug_assert!(src.len() >= rows * cols);
        for r in 0..rows {
            let dst = self
                .ptr
                .offset(self.lay.head(b, h) + r as isize * self.lay.st[2]);
            std::ptr::copy_nonoverlapping(src.as_ptr().add(r * cols), dst, cols);
        }
    }
}

/// `c = alpha A B^T` for `A` (`nq x depth`) and `B` (`nk x depth`), given transposed and
/// zero-padded as `at` (`depth x nqp`) and `bt` (`depth x nkp`), into column-major `c`
/// (`c[j * nqp + i]`), key block by key block from the first tile a query of it sees: the
/// scores and `dP`. Entries left out are hidden and keep whatever they held.
pub(crate) fn by_key_lanes<E: Element>(
    d: &Dims,
    causal: bool,
    (depth, alpha): (usize, E),
    at: &[E],
    bt: &[E],
    c: &mut [E],
) {
    let (nqp, nkp) = (pad(d.nq), pad(d.nk));
    for (j0, n) in blocks(nkp, causal, KEY_BLOCK) {
        let lo = first_query(causal, d, j0) / TILE * TILE;
        let am = skip_rows(col_major(at, nqp), lo);
        let bm = Mat {
            off: j0 as isize,
            ..row_major(bt, nkp)
        };
        let dst = &mut c[j0 * nqp + lo..];
        gemm(nqp - lo, depth, n, alpha, am, bm, dst, 1, nqp as isize);
    }
}

/// `c = alpha P X` row-major (`nqp x e`) for column-major `P` (`nqp` rows, a lane per key),
/// query block by query block over the keys the block sees: `O` and `dQ`.
pub(crate) fn by_query_rows<E: Element>(
    d: &Dims,
    causal: bool,
    (e, alpha): (usize, E),
    p: &[E],
    x: Mat<E>,
    c: &mut [E],
) {
    let nqp = pad(d.nq);
    for (i0, m) in blocks(nqp, causal, QUERY_BLOCK) {
        let k = visible(causal, d, (i0 + m).min(d.nq).max(1) - 1);
        let pm = skip_rows(col_major(p, nqp), i0);
        gemm(m, k, e, alpha, pm, x, &mut c[i0 * e..], e as isize, 1);
    }
}

/// The forward kernel over every (batch, head): writes the output through `out` and returns
/// `P` (compact, `p[j * nq + i]` per head) when `keep`.
pub(crate) fn forward_heads<E: Element>(
    d: &Dims,
    opts: AttentionOptions,
    alpha: E,
    ts: &[&Tensor<E>],
    out: RowsOut<E>,
    keep: bool,
) -> Vec<E> {
    // Nothing to compute (the output keeps its zeros), and no probabilities are needed: with
    // an empty output and no gradient, or when every gradient is trivial too. Returning here
    // also keeps a zero-size operand with a huge axis from sizing the scratch buffers.
    if d.trivial() || (d.dv == 0 && !keep) {
        return Vec::new();
    }
    let bh = d.b * d.h;
    let (nqp, nkp) = (pad(d.nq), pad(d.nk));
    let p_len = d.nq * d.nk;
    let mut probs = vec![E::ZERO; if keep { bh * p_len } else { 0 }];
    let (lq, lk, lv) = (
        Strided4::of(ts[0].layout()),
        Strided4::of(ts[1].layout()),
        Strided4::of(ts[2].layout()),
    );
    let lm = ts.get(3).map(|m| {
        let l = m
            .layout()
            .broadcast_to(&[d.b, d.h, d.nq, d.nk])
            .expect("checked");
        Strided4::of(&l)
    });
    let par = parallel_heads(bh, d.nq, d.nk, d.dh.max(d.dv));
    read_storages(ts, |s| {
        let p_ptr = SyncPtr::new(&mut probs);
        // Q^T, K^T (zero-padded), softmax max and sum, padded P, padded output rows.
        let lens = [d.dh * nqp, d.dh * nkp, d.nq, d.nq, nqp * nkp, nqp * d.dv];
        for_heads(bh, par, lens.iter().sum(), |i, scr| {
            let (b, h) = (i / d.h, i % d.h);
            let [qt, kt, mx, sm, p, o_pad] = carve(scr, lens);
            transpose_into(lq.mat(s[0], b, h), d.nq, d.dh, qt, nqp);
            transpose_into(lk.mat(s[1], b, h), d.nk, d.dh, kt, nkp);
            let first = |j: usize| first_query(opts.causal, d, j);
            // S = alpha Q K^T.
            by_key_lanes(d, opts.causal, (d.dh, alpha), qt, kt, p);
            if let Some(lm) = lm {
                for j in 0..d.nk {
                    let lane = &mut p[j * nqp..j * nqp + d.nq];
                    let base = lm.head(b, h) + j as isize * lm.st[3];
                    for (qi, x) in lane.iter_mut().enumerate().skip(first(j)) {
                        if s[3][(base + qi as isize * lm.st[2]) as usize] != E::ZERO {
                            *x = E::NEG_INFINITY;
                        }
                    }
                }
            }
            softmax_over_keys(p, (d.nk, d.nq, nqp), first, mx, sm);
            if keep {
                // SAFETY: `probs` holds `bh * p_len` values when `keep`, outlives the tasks
                // and is not touched otherwise while they run; task i alone takes chunk i.
                let kept = unsafe { p_ptr.chunk(i, p_len) };
                for (dst, lane) in kept.chunks_exact_mut(d.nq.max(1)).zip(p.chunks(nqp)) {
                    dst.copy_from_slice(&lane[..d.nq]);
                }
            }
            // O = P V.
            by_query_rows(d, opts.causal, (d.dv, E::ONE), p, lv.mat(s[2], b, h), o_pad);
            // SAFETY: `out` addresses this call's `[B, H, nq, dv]` output (or its merged
            // `[B, nq, H * dv]` form), alive until the tasks end, so head (b, h)'s `nq` rows
            // of `dv` lie inside it; only task i = b * H + h writes them; `o_pad` holds
            // `nqp * dv >= nq * dv` values.
            unsafe { out.put(b, h, d.nq, d.dv, o_pad) };
        });
    });
    probs
}
