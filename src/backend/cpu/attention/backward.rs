//! The fused backward kernel: `dV = P^T dO`, `dP = dO V^T`, the softmax backward and
//! `dQ`, `dK`, head by head.

use super::*;

/// The backward kernel over every (batch, head). `ts` is q, k, v, the output gradient and the
/// output (whose head rows `lo` addresses, adjacent columns); the gradients of q, k, v go
/// through `dst` where wanted.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward_heads<E: Element>(
    d: &Dims,
    opts: AttentionOptions,
    alpha: E,
    probs: &[E],
    ts: [&Tensor<E>; 5],
    lg: Strided4,
    lo: Strided4,
    dst: [Option<RowsOut<E>>; 3],
) {
    let [rq, rk, rv] = dst;
    let bh = d.b * d.h;
    let (nqp, nkp) = (pad(d.nq), pad(d.nk));
    let p_len = d.nq * d.nk;
    let (lq, lk, lv) = (
        Strided4::of(ts[0].layout()),
        Strided4::of(ts[1].layout()),
        Strided4::of(ts[2].layout()),
    );
    let par = parallel_heads(bh, d.nq, d.nk, d.dh.max(d.dv));
    read_storages(&ts, |s| {
        // P row-major, dO^T, V^T, dP (then dS) column-major, dS row-major, D, padded
        // output rows. The transposed operands are zero-padded and stay so across heads.
        let lens = [
            d.nq * nkp,
            d.dv * nqp,
            d.dv * nkp,
            nqp * nkp,
            d.nq * nkp,
            d.nq,
            nqp.max(nkp) * d.dh.max(d.dv),
        ];
        for_heads(bh, par, lens.iter().sum(), |i, scr| {
            let (b, h) = (i / d.h, i % d.h);
            let [p_rows, g_t, v_t, ds, ds_rows, dvec, c_pad] = carve(scr, lens);
            let p = &probs[i * p_len..(i + 1) * p_len];
            let gm = lg.mat(s[3], b, h);
            let first = |j: usize| first_query(opts.causal, d, j);
            // dV = P^T dO and dK = alpha dS^T Q, key block by key block over the queries
            // that see it; `t` is P^T or dS^T column-major (`t[i * nkp + j]`).
            let by_keys = |t: &[E], a: E, x: Mat<E>, e: usize, out: RowsOut<E>, c: &mut [E]| {
                for (j0, n) in blocks(nkp, opts.causal, QUERY_BLOCK) {
                    let lo = first(j0).min(d.nq);
                    let tm = Mat {
                        off: (lo * nkp + j0) as isize,
                        ..col_major(t, nkp)
                    };
                    let dst = &mut c[j0 * e..];
                    gemm(n, d.nq - lo, e, a, tm, skip_rows(x, lo), dst, e as isize, 1);
                }
                // SAFETY: `out` addresses a `[B, H, nk, e]` gradient buffer (or its merged
                // form) that outlives the tasks, so head (b, h)'s `nk` rows of `e` lie inside
                // it; only this head's task writes them; `c` is `c_pad`, which holds
                // `max(nqp, nkp) * max(dh, dv) >= nk * e` values.
                unsafe { out.put(b, h, d.nk, e, c) };
            };
            if let Some(dv) = rv {
                // P^T must have adjacent rows, so P goes row-major first.
                transpose_into(row_major(p, d.nq), d.nk, d.nq, p_rows, nkp);
                by_keys(p_rows, E::ONE, gm, d.dv, dv, c_pad);
            }
            if rq.is_none() && rk.is_none() {
                return;
            }
            // dP = dO V^T, column-major like P, over the visible part as the scores were.
            transpose_into(gm, d.nq, d.dv, g_t, nqp);
            transpose_into(lv.mat(s[2], b, h), d.nk, d.dv, v_t, nkp);
            by_key_lanes(d, opts.causal, (d.dv, E::ONE), g_t, v_t, ds);
            // D_i = dO_i . O_i (equal to sum_j P_ij dP_ij, and cheaper).
            for (qi, dst) in dvec.iter_mut().enumerate() {
                let ob = (lo.head(b, h) + qi as isize * lo.st[2]) as usize;
                let orow = &s[4][ob..ob + d.dv];
                let gbase = gm.off + qi as isize * gm.rs;
                *dst = if gm.cs == 1 {
                    dot(&s[3][gbase as usize..gbase as usize + d.dv], orow)
                } else {
                    let mut acc = E::ZERO;
                    for (c, &ov) in orow.iter().enumerate() {
                        acc += s[3][(gbase + c as isize * gm.cs) as usize] * ov;
                    }
                    acc
                };
            }
            // dS = P * (dP - D), lane by lane over keys; zero where the key is hidden.
            for j in 0..d.nk {
                let f = first(j).min(d.nq);
                let lane = &mut ds[j * nqp..j * nqp + d.nq];
                lane[..f].fill(E::ZERO);
                let pl = &p[j * d.nq + f..(j + 1) * d.nq];
                for ((x, &pij), &di) in lane[f..].iter_mut().zip(pl).zip(&dvec[f..]) {
                    *x = pij * (*x - di);
                }
            }
            if let Some(dq) = rq {
                // dQ = alpha dS K.
                by_query_rows(d, opts.causal, (d.dh, alpha), ds, lk.mat(s[1], b, h), c_pad);
                // SAFETY: as for `by_keys` above, with the `[B, H, nq, dh]` gradient of q and
                // `max(nqp, nkp) * max(dh, dv) >= nq * dh` values in `c_pad`.
                unsafe { dq.put(b, h, d.nq, d.dh, c_pad) };
            }
            if let Some(dk) = rk {
                // dS^T must have adjacent rows, so dS goes row-major first.
                transpose_into(row_major(ds, nqp), d.nk, d.nq, ds_rows, nkp);
                by_keys(ds_rows, alpha, lq.mat(s[0], b, h), d.dh, dk, c_pad);
            }
        });
    });
}
