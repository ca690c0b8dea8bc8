//! `ptx/attention.cu`: the fused attention forward (output and base-2 log-sum-exp) and
//! backward (dQ, dK, dV), against an f64 reference computed here from the same inputs, on
//! shapes with at least three query and three key tiles and ragged last tiles: causal and
//! not, fewer queries than keys (the causal offset), a temperature, q / k / v read in place
//! from a fused `[B, N, 3C]` projection with a heads-merged output and one fused gradient,
//! and head dimensions 16, 64, 128 and unequal ones. The bf16-storage backward kernels
//! (`attn_bwd_*_bf16s`) against the f32 ones on bf16-exact operands: identical bits.

use half::bf16;
use tarflow::gpu::kernels::{
    attn_bwd, attn_bwd_stored, attn_bwd_tma, attn_bwd_wgmma, attn_decode, attn_decode_with,
    attn_fwd, attn_fwd_saving_bf16, attn_fwd_tma, attn_fwd_wgmma, decode_scratch_len, AttnBwd,
    AttnDecode, AttnDims, AttnFwd, AttnPrecision, AttnScores, AttnStorage, AttnView, DecodeAppend,
    DecodeLaunch, ATTN_MAX_HEAD_DIM,
};
use tarflow::gpu::{DevicePtr, Driver};
use tarflow::Rng;

use crate::harness::*;

/// Where a `[B, H, N, D]` operand sits in its buffer: element offset and strides.
#[derive(Clone, Copy, Debug)]
struct Lay {
    off: usize,
    st: [usize; 4],
}

impl Lay {
    /// `[B, H, n, d]` contiguous.
    fn heads(h: usize, n: usize, d: usize) -> Lay {
        Lay {
            off: 0,
            st: [h * n * d, n * d, d, 1],
        }
    }

    fn at(&self, b: usize, h: usize, n: usize, d: usize) -> usize {
        self.off + b * self.st[0] + h * self.st[1] + n * self.st[2] + d * self.st[3]
    }

    fn view(&self, base: DevicePtr) -> AttnView {
        self.view_of(base, 4)
    }

    /// The view of a buffer of `elem`-byte elements (2 for bf16).
    fn view_of(&self, base: DevicePtr, elem: usize) -> AttnView {
        AttnView {
            ptr: base.offset((self.off * elem) as u64),
            strides: self.st,
        }
    }
}

/// The logical `[B, H, n, d]` tensor seen through `lay` in `buf`, as f64, contiguous.
fn gather(buf: &[f32], lay: Lay, (b, h, n, d): (usize, usize, usize, usize)) -> Vec<f64> {
    let mut out = Vec::with_capacity(b * h * n * d);
    for bi in 0..b {
        for hi in 0..h {
            for ni in 0..n {
                for di in 0..d {
                    out.push(buf[lay.at(bi, hi, ni, di)] as f64);
                }
            }
        }
    }
    out
}

/// The f64 reference of one call: output, base-2 log-sum-exp and the three gradients for
/// the output gradient `g`, every tensor logical and contiguous.
struct Reference {
    o: Vec<f64>,
    /// `sum_j p_ij |v_jc|` per output element: the scale of its rounding error.
    o_mag: Vec<f64>,
    lse2: Vec<f64>,
    dq: Vec<f64>,
    dk: Vec<f64>,
    dv: Vec<f64>,
}

fn reference(
    dims: &AttnDims,
    scores: &AttnScores,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    g: &[f64],
) -> Reference {
    let AttnDims {
        b,
        h,
        nq,
        nk,
        dh,
        dv,
    } = *dims;
    let alpha = scores.alpha as f64;
    let off = nk - nq.min(nk);
    let mut r = Reference {
        o: vec![0.0; b * h * nq * dv],
        o_mag: vec![0.0; b * h * nq * dv],
        lse2: vec![f64::NEG_INFINITY; b * h * nq],
        dq: vec![0.0; b * h * nq * dh],
        dk: vec![0.0; b * h * nk * dh],
        dv: vec![0.0; b * h * nk * dv],
    };
    let dot = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(a, b)| a * b).sum::<f64>();
    for bh in 0..b * h {
        let (qh, kh, vh) = (&q[bh * nq * dh..], &k[bh * nk * dh..], &v[bh * nk * dv..]);
        let gh = &g[bh * nq * dv..];
        for i in 0..nq {
            let seen = if scores.causal {
                (i + off + 1).min(nk)
            } else {
                nk
            };
            if seen == 0 {
                continue;
            }
            let qi = &qh[i * dh..(i + 1) * dh];
            let s: Vec<f64> = (0..seen)
                .map(|j| alpha * dot(qi, &kh[j * dh..(j + 1) * dh]))
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let l: f64 = s.iter().map(|x| (x - m).exp()).sum();
            let p: Vec<f64> = s.iter().map(|x| (x - m).exp() / l).collect();
            r.lse2[bh * nq + i] = (m + l.ln()) * std::f64::consts::LOG2_E;
            let oi = &mut r.o[(bh * nq + i) * dv..(bh * nq + i + 1) * dv];
            for (j, &pj) in p.iter().enumerate() {
                for (e, o) in oi.iter_mut().enumerate() {
                    *o += pj * vh[j * dv + e];
                }
            }
            let mag = &mut r.o_mag[(bh * nq + i) * dv..(bh * nq + i + 1) * dv];
            for (j, &pj) in p.iter().enumerate() {
                for (e, o) in mag.iter_mut().enumerate() {
                    *o += pj * vh[j * dv + e].abs();
                }
            }
            let gi = &gh[i * dv..(i + 1) * dv];
            let big_d = dot(gi, &r.o[(bh * nq + i) * dv..(bh * nq + i + 1) * dv]);
            for (j, &pj) in p.iter().enumerate() {
                let dp = dot(gi, &vh[j * dv..(j + 1) * dv]);
                let ds = pj * (dp - big_d);
                for e in 0..dh {
                    r.dq[(bh * nq + i) * dh + e] += alpha * ds * kh[j * dh + e];
                    r.dk[(bh * nk + j) * dh + e] += alpha * ds * qi[e];
                }
                let dvj = &mut r.dv[(bh * nk + j) * dv..(bh * nk + j + 1) * dv];
                for (x, &ge) in dvj.iter_mut().zip(gi) {
                    *x += pj * ge;
                }
            }
        }
    }
    r
}

/// Compares within `1e-4` relative plus `1e-4` of the largest magnitude in `want` (so a
/// gradient of near-cancelling terms is judged on the tensor's scale).
fn close(what: &str, got: &[f32], want: &[f64]) {
    let scale = want
        .iter()
        .filter(|x| x.is_finite())
        .fold(0.0f64, |a, x| a.max(x.abs()));
    assert_close(what, got, want, 1e-4, 1e-4 * scale.max(1e-3));
}

/// How the operands are laid out.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Layout {
    /// Separate contiguous `[B, H, N, D]` buffers for q, k, v, o and every gradient.
    Heads,
    /// q, k, v cut from one `[B, N, 3 H Dh]` buffer, the output `[B, N, H Dv]`, the
    /// gradients into one `[B, N, 3 H Dh]` buffer (self-attention: `nq == nk`, `dh == dv`).
    Qkv,
}

/// One forward and backward on `d` against the f64 reference.
fn run(d: &dyn Driver, dims: AttnDims, scores: AttnScores, layout: Layout, seed: u64) {
    run_with(d, dims, scores, layout, seed, AttnPrecision::F32);
}

/// `x` rounded to bf16 (to nearest even), as the bf16 kernels stage it.
fn round_bf16(x: &[f64]) -> Vec<f64> {
    x.iter()
        .map(|&v| bf16::from_f32(v as f32).to_f32() as f64)
        .collect()
}

/// One forward (and, in f32, the backward) on `d` against the f64 reference; in bf16 the
/// reference takes q, k, v rounded to bf16 and the output may differ by the rounding of
/// `P` to bf16 for `P V` (relative `2^-9` per term) plus the accumulation.
fn run_with(
    d: &dyn Driver,
    dims: AttnDims,
    scores: AttnScores,
    layout: Layout,
    seed: u64,
    precision: AttnPrecision,
) {
    let AttnDims {
        b,
        h,
        nq,
        nk,
        dh,
        dv,
    } = dims;
    let mut rng = Rng::new(seed);
    let tag = format!(
        "{dims:?} {scores:?} {layout:?} {precision:?} on {}",
        d.name()
    );
    // Input buffers, layouts, and where each output and gradient goes.
    let (bufs, lq, lk, lv, lo, lg, lgrad) = match layout {
        Layout::Heads => {
            let bufs = vec![
                normal(&mut rng, b * h * nq * dh),
                normal(&mut rng, b * h * nk * dh),
                normal(&mut rng, b * h * nk * dv),
            ];
            let lo = Lay::heads(h, nq, dv);
            (
                bufs,
                Lay::heads(h, nq, dh),
                Lay::heads(h, nk, dh),
                Lay::heads(h, nk, dv),
                lo,
                lo,
                [
                    Lay::heads(h, nq, dh),
                    Lay::heads(h, nk, dh),
                    Lay::heads(h, nk, dv),
                ],
            )
        }
        Layout::Qkv => {
            assert!(nq == nk && dh == dv);
            let (n, c) = (nq, h * dh);
            let part = |i: usize| Lay {
                off: i * c,
                st: [n * 3 * c, dh, 3 * c, 1],
            };
            let lo = Lay {
                off: 0,
                st: [n * c, dh, c, 1],
            };
            let qkv = normal(&mut rng, b * n * 3 * c);
            (
                vec![qkv],
                part(0),
                part(1),
                part(2),
                lo,
                lo,
                [part(0), part(1), part(2)],
            )
        }
    };
    let src = |i: usize| &bufs[i.min(bufs.len() - 1)];
    let ptrs: Vec<DevicePtr> = bufs.iter().map(|x| upload::<f32>(d, x)).collect();
    let pq = ptrs[0];
    let (pk, pv) = if layout == Layout::Heads {
        (ptrs[1], ptrs[2])
    } else {
        (ptrs[0], ptrs[0])
    };
    let q = gather(src(0), lq, (b, h, nq, dh));
    let k = gather(src(1), lk, (b, h, nk, dh));
    let v = gather(src(2), lv, (b, h, nk, dv));
    let o_len = b * h * nq * dv;
    let gs = normal(&mut rng, o_len);
    let g = gather(&gs, lg, (b, h, nq, dv));
    let want = if precision == AttnPrecision::Bf16 {
        let (qr, kr, vr) = (round_bf16(&q), round_bf16(&k), round_bf16(&v));
        reference(&dims, &scores, &qr, &kr, &vr, &g)
    } else {
        reference(&dims, &scores, &q, &k, &v, &g)
    };

    let o = poisoned_f32(d, o_len);
    let lse = poisoned_f32(d, b * h * nq);
    let fwd = AttnFwd {
        dims,
        scores,
        q: lq.view(pq),
        k: lk.view(pk),
        v: lv.view(pv),
        o: lo.view(o),
        lse,
        precision,
    };
    attn_fwd(d, &fwd).unwrap();
    let o_got = download::<f32>(d, o, o_len);
    let o_got = wide_f32(&gather(&o_got, lo, (b, h, nq, dv)));
    let lse_got = download::<f32>(d, lse, b * h * nq);
    if precision == AttnPrecision::Bf16 {
        let bound: Vec<f64> = want.o_mag.iter().map(|m| 5e-3 * m + 1e-6).collect();
        assert_within(&format!("output, {tag}"), &o_got, &want.o, &bound);
        assert_close(&format!("lse, {tag}"), &lse_got, &want.lse2, 1e-4, 1e-4);
        return;
    }
    close(&format!("output, {tag}"), &o_got, &want.o);
    assert_close(&format!("lse, {tag}"), &lse_got, &want.lse2, 1e-5, 1e-5);

    let gp = upload::<f32>(d, &gs);
    let delta = poisoned_f32(d, b * h * nq);
    let (grads, glen): (Vec<DevicePtr>, Vec<usize>) = match layout {
        Layout::Heads => {
            let lens = vec![b * h * nq * dh, b * h * nk * dh, b * h * nk * dv];
            (lens.iter().map(|&n| poisoned_f32(d, n)).collect(), lens)
        }
        Layout::Qkv => {
            let len = b * nq * 3 * h * dh;
            (vec![poisoned_f32(d, len)], vec![len])
        }
    };
    let gptr = |i: usize| grads[i.min(grads.len() - 1)];
    let bwd = AttnBwd {
        dims,
        scores,
        q: fwd.q,
        k: fwd.k,
        v: fwd.v,
        o: fwd.o,
        g: lg.view(gp),
        lse,
        delta,
        dq: lgrad[0].view(gptr(0)),
        dk: lgrad[1].view(gptr(1)),
        dv: lgrad[2].view(gptr(2)),
    };
    attn_bwd(d, &bwd).unwrap();
    let got: Vec<Vec<f32>> = grads
        .iter()
        .zip(&glen)
        .map(|(&p, &n)| download::<f32>(d, p, n))
        .collect();
    let gbuf = |i: usize| &got[i.min(got.len() - 1)];
    let sizes = [(nq, dh), (nk, dh), (nk, dv)];
    let wants = [&want.dq, &want.dk, &want.dv];
    for (i, name) in ["dq", "dk", "dv"].into_iter().enumerate() {
        let (n, w) = sizes[i];
        close(
            &format!("{name}, {tag}"),
            &wide_f32(&gather(gbuf(i), lgrad[i], (b, h, n, w))),
            wants[i],
        );
    }
    // Every element of every gradient buffer was written (the fused one has no gaps).
    for (i, buf) in got.iter().enumerate() {
        assert!(
            buf.iter().all(|x| !x.is_nan()),
            "gradient buffer {i} keeps poison, {tag}"
        );
    }
}

/// `gather` gives f64; the comparisons take the kernel's f32 values.
fn wide_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

fn dims(b: usize, h: usize, nq: usize, nk: usize, dh: usize, dv: usize) -> AttnDims {
    AttnDims {
        b,
        h,
        nq,
        nk,
        dh,
        dv,
    }
}

/// `scale / temperature` with the usual `1 / sqrt(dh)` and a temperature of 0.7.
fn scores(dh: usize, causal: bool) -> AttnScores {
    AttnScores {
        alpha: (1.0 / (dh as f64).sqrt() / 0.7) as f32,
        causal,
    }
}

#[test]
fn attention_causal_dh16_matches_f64_reference() {
    // 101 = 3 * 32 + 5: three full query and key tiles and a ragged one.
    on_each_device(|d| {
        run(
            d,
            dims(1, 2, 101, 101, 16, 16),
            scores(16, true),
            Layout::Heads,
            1,
        )
    });
}

#[test]
fn attention_non_causal_dh16_matches_f64_reference() {
    on_each_device(|d| {
        run(
            d,
            dims(2, 1, 101, 101, 16, 16),
            scores(16, false),
            Layout::Heads,
            2,
        )
    });
}

#[test]
fn attention_fewer_queries_than_keys_dh64_matches_f64_reference() {
    // Causal offset nk - nq = 40: the queries are the last 101 of 141 positions.
    on_each_device(|d| {
        run(
            d,
            dims(1, 1, 101, 141, 64, 64),
            scores(64, true),
            Layout::Heads,
            3,
        )
    });
}

#[test]
fn attention_from_fused_qkv_matches_f64_reference() {
    on_each_device(|d| {
        run(
            d,
            dims(2, 2, 101, 101, 16, 16),
            scores(16, true),
            Layout::Qkv,
            4,
        );
        run(
            d,
            dims(1, 1, 70, 70, 64, 64),
            scores(64, false),
            Layout::Qkv,
            5,
        );
    });
}

#[test]
fn attention_head_dim_128_and_unequal_dims_match_f64_reference() {
    on_each_device(|d| {
        run(
            d,
            dims(1, 1, 37, 37, 128, 128),
            scores(128, true),
            Layout::Heads,
            6,
        );
        run(
            d,
            dims(1, 1, 45, 77, 24, 40),
            scores(24, false),
            Layout::Heads,
            7,
        );
    });
}

#[test]
fn attention_unsupported_sizes_are_errors() {
    on_each_device(|d| {
        let p = poisoned_f32(d, 1);
        let view = AttnView {
            ptr: p,
            strides: [0; 4],
        };
        let fwd = |dims: AttnDims, causal: bool| AttnFwd {
            dims,
            scores: scores(16, causal),
            q: view,
            k: view,
            v: view,
            o: view,
            lse: p,
            precision: AttnPrecision::F32,
        };
        let wide = dims(1, 1, 4, 4, ATTN_MAX_HEAD_DIM + 1, 16);
        let e = attn_fwd(d, &fwd(wide, false)).unwrap_err().to_string();
        assert!(e.contains("attn_fwd_f32") && e.contains("129"), "{e}");
        let e = attn_fwd(d, &fwd(dims(1, 1, 5, 4, 16, 16), true))
            .unwrap_err()
            .to_string();
        assert!(e.contains("5 queries and 4 keys"), "{e}");
        let bf = AttnFwd {
            precision: AttnPrecision::Bf16,
            ..fwd(dims(1, 1, 4, 4, 64, 32), false)
        };
        let e = attn_fwd(d, &bf).unwrap_err().to_string();
        assert!(e.contains("dh = 64 and dv = 32"), "{e}");
    });
}

#[test]
fn attention_bf16_head_dim_64_matches_bf16_rounded_reference() {
    // 197 = 3 * 64 + 5: four query tiles, four key tiles of 64 (three full), ragged.
    on_each_device(|d| {
        let causal = scores(64, true);
        run_with(
            d,
            dims(1, 2, 197, 197, 64, 64),
            causal,
            Layout::Qkv,
            8,
            AttnPrecision::Bf16,
        );
        let plain = scores(64, false);
        let shape = dims(1, 1, 150, 197, 64, 64);
        run_with(d, shape, plain, Layout::Heads, 9, AttnPrecision::Bf16);
    });
}

#[test]
fn attention_bf16_head_dim_128_matches_bf16_rounded_reference() {
    // Key tiles of 32 at dh = 128: seven full and a ragged one; causal offset 33.
    on_each_device(|d| {
        let shape = dims(1, 1, 197, 230, 128, 128);
        run_with(
            d,
            shape,
            scores(128, true),
            Layout::Heads,
            10,
            AttnPrecision::Bf16,
        );
    });
}

/// `x` rounded to bf16, as f32 values and as the bf16 bits stored `[B, n, H, d]` (positions
/// outermost after the batch, so the kernels read it through strides).
fn bf16_operand(x: &[f32], (b, h, n, d): (usize, usize, usize, usize)) -> (Vec<f32>, Vec<bf16>) {
    let exact: Vec<f32> = x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
    let mut stored = vec![bf16::ZERO; x.len()];
    let heads = Lay::heads(h, n, d);
    let tokens = tokens_lay(h, n, d);
    for bi in 0..b {
        for hi in 0..h {
            for ni in 0..n {
                for di in 0..d {
                    stored[tokens.at(bi, hi, ni, di)] =
                        bf16::from_f32(exact[heads.at(bi, hi, ni, di)]);
                }
            }
        }
    }
    (exact, stored)
}

/// A layout of `[B, H, n, d]` from `(H, n, d)`.
type LayFn = fn(usize, usize, usize) -> Lay;

/// `[B, n, H, d]` storage seen as `[B, H, n, d]`.
fn tokens_lay(h: usize, n: usize, d: usize) -> Lay {
    Lay {
        off: 0,
        st: [n * h * d, d, h * d, 1],
    }
}

/// bf16-exact q, k, v (`[B, H, N, D]` values, as f32 and as bf16 stored `[B, N, H, D]`) drawn
/// from `rng`, and their f32 forward on `d`: the operands, their f32 copies on the device,
/// the forward's f32 `o` (`[B, H, Nq, Dv]`) and its base-2 `lse`.
struct ExactForward {
    ops: Vec<(Vec<f32>, Vec<bf16>)>,
    f32_ptr: Vec<DevicePtr>,
    o: DevicePtr,
    lse: DevicePtr,
}

fn exact_forward(
    d: &dyn Driver,
    dims: AttnDims,
    scores: AttnScores,
    rng: &mut Rng,
) -> ExactForward {
    let AttnDims {
        b,
        h,
        nq,
        nk,
        dh,
        dv,
    } = dims;
    let shapes = [(b, h, nq, dh), (b, h, nk, dh), (b, h, nk, dv)];
    let ops: Vec<(Vec<f32>, Vec<bf16>)> = shapes
        .iter()
        .map(|&s| bf16_operand(&normal(rng, s.0 * s.1 * s.2 * s.3), s))
        .collect();
    let f32_ptr: Vec<DevicePtr> = ops.iter().map(|(x, _)| upload::<f32>(d, x)).collect();
    let heads = |(_, h, n, w): (usize, usize, usize, usize)| Lay::heads(h, n, w);
    let (o, lse) = (
        poisoned_f32(d, b * h * nq * dv),
        poisoned_f32(d, b * h * nq),
    );
    let fwd = AttnFwd {
        dims,
        scores,
        q: heads(shapes[0]).view(f32_ptr[0]),
        k: heads(shapes[1]).view(f32_ptr[1]),
        v: heads(shapes[2]).view(f32_ptr[2]),
        o: Lay::heads(h, nq, dv).view(o),
        lse,
        precision: AttnPrecision::F32,
    };
    attn_fwd(d, &fwd).unwrap();
    ExactForward {
        ops,
        f32_ptr,
        o,
        lse,
    }
}

/// `[b, h, n, d]` values in `[b, n, h, d]` order: where the forward's bf16 copy of its
/// output puts them.
fn heads_to_tokens(x: &[f32], b: usize, h: usize, n: usize, d: usize) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for bi in 0..b {
        for hi in 0..h {
            for i in 0..n {
                let from = ((bi * h + hi) * n + i) * d;
                let to = ((bi * n + i) * h + hi) * d;
                out[to..to + d].copy_from_slice(&x[from..from + d]);
            }
        }
    }
    out
}

/// The bf16-input forward (q, k, v stored bf16 `[B, N, H, D]`, loaded by cp.async) against
/// the f32-input bf16 forward on the same bf16-exact values: the same products in the same
/// order, so the output and lse must be the same bits.
fn bf16_inputs_match_bf16_bits(d: &dyn Driver, dims: AttnDims, scores: AttnScores, seed: u64) {
    let AttnDims {
        b,
        h,
        nq,
        nk,
        dh,
        dv,
    } = dims;
    let tag = format!("{dims:?} {scores:?} on {}", d.name());
    let mut rng = Rng::new(seed);
    let shapes = [(b, h, nq, dh), (b, h, nk, dh), (b, h, nk, dv)];
    let ExactForward { ops, f32_ptr, .. } = exact_forward(d, dims, scores, &mut rng);
    let bf16_ptr: Vec<DevicePtr> = ops.iter().map(|(_, x)| upload::<bf16>(d, x)).collect();
    let (o_len, lse_len) = (b * h * nq * dv, b * h * nq);
    let mut results = Vec::new();
    for precision in [AttnPrecision::Bf16, AttnPrecision::Bf16Inputs] {
        let (lay, elem, p): (LayFn, usize, &[DevicePtr]) = match precision {
            AttnPrecision::Bf16Inputs => (tokens_lay, 2, &bf16_ptr),
            _ => (Lay::heads, 4, &f32_ptr),
        };
        let at = |i: usize| {
            let (_, h, n, w) = shapes[i];
            lay(h, n, w).view_of(p[i], elem)
        };
        let (o, lse) = (poisoned_f32(d, o_len), poisoned_f32(d, lse_len));
        let fwd = AttnFwd {
            dims,
            scores,
            q: at(0),
            k: at(1),
            v: at(2),
            o: Lay::heads(h, nq, dv).view(o),
            lse,
            precision,
        };
        // The bf16-input run also writes the output's bf16 copy, which must be the output
        // rounded to nearest even, token-major, every element written.
        if precision == AttnPrecision::Bf16Inputs {
            let o16 = upload::<bf16>(d, &vec![bf16::NAN; o_len]);
            attn_fwd_saving_bf16(d, &fwd, o16).unwrap();
            let o_tokens = heads_to_tokens(&download::<f32>(d, o, o_len), b, h, nq, dv);
            let want: Vec<f32> = o_tokens
                .iter()
                .map(|&x| bf16::from_f32(x).to_f32())
                .collect();
            let got: Vec<f32> = download::<bf16>(d, o16, o_len)
                .iter()
                .map(|x| x.to_f32())
                .collect();
            assert_bits(&format!("the bf16 copy of o, {tag}"), &got, &want);
        } else {
            attn_fwd(d, &fwd).unwrap();
        }
        results.push((
            download::<f32>(d, o, o_len),
            download::<f32>(d, lse, lse_len),
        ));
    }
    let ((o_want, lse_want), (o_got, lse_got)) = (&results[0], &results[1]);
    assert!(
        o_want.iter().chain(lse_want).all(|x| x.is_finite()),
        "the f32-input bf16 forward is not finite, {tag}"
    );
    assert_bits(
        &format!("o of the bf16-input forward, {tag}"),
        o_got,
        o_want,
    );
    assert_bits(
        &format!("lse of the bf16-input forward, {tag}"),
        lse_got,
        lse_want,
    );
    // The warpgroup forward (head dims 64, a 9.0 GPU or the interpreter) on the same bf16
    // inputs: on the interpreter the same bits; on a GPU wgmma may round a 16-wide step
    // otherwise than mma.sync, so within a few bf16 ulps of the output's scale.
    let cc = d.compute_capability().unwrap();
    if dh != 64 || cc.is_some_and(|cc| cc != (9, 0)) {
        return;
    }
    let at = |i: usize| {
        let (_, h, n, w) = shapes[i];
        tokens_lay(h, n, w).view_of(bf16_ptr[i], 2)
    };
    // The cp.async kernel, then the one fed by TMA (its q, k and v read through
    // four-dimensional tensor maps of the [B, N, H, D] views).
    type Hopper = fn(&dyn Driver, &AttnFwd, Option<DevicePtr>) -> tarflow::Result<()>;
    let kernels: [(&str, Hopper); 2] = [("wgmma", attn_fwd_wgmma), ("TMA", attn_fwd_tma)];
    for (kind, run) in kernels {
        let (o, lse) = (poisoned_f32(d, o_len), poisoned_f32(d, lse_len));
        let o16 = upload::<bf16>(d, &vec![bf16::NAN; o_len]);
        let fwd = AttnFwd {
            dims,
            scores,
            q: at(0),
            k: at(1),
            v: at(2),
            o: Lay::heads(h, nq, dv).view(o),
            lse,
            precision: AttnPrecision::Bf16Inputs,
        };
        run(d, &fwd, Some(o16)).unwrap();
        let (o_wg, lse_wg) = (
            download::<f32>(d, o, o_len),
            download::<f32>(d, lse, lse_len),
        );
        let rounded: Vec<f32> = heads_to_tokens(&o_wg, b, h, nq, dv)
            .iter()
            .map(|&x| bf16::from_f32(x).to_f32())
            .collect();
        let copy: Vec<f32> = download::<bf16>(d, o16, o_len)
            .iter()
            .map(|x| x.to_f32())
            .collect();
        assert_bits(
            &format!("the {kind} forward's bf16 copy of o, {tag}"),
            &copy,
            &rounded,
        );
        if cc.is_none() {
            assert_bits(&format!("o of the {kind} forward, {tag}"), &o_wg, o_want);
            assert_bits(
                &format!("lse of the {kind} forward, {tag}"),
                &lse_wg,
                lse_want,
            );
        } else {
            let scale = o_want.iter().fold(0f32, |m, x| m.max(x.abs()));
            for (e, (x, y)) in o_wg.iter().zip(o_want).enumerate() {
                assert!(
                    (x - y).abs() <= 8e-3 * scale,
                    "o of the {kind} forward, {tag}: {e}: {x} vs {y}"
                );
            }
            for (e, (x, y)) in lse_wg.iter().zip(lse_want).enumerate() {
                assert!(
                    (x - y).abs() <= 1e-3 * (1.0 + y.abs()),
                    "lse of the {kind} forward, {tag}: {e}: {x} vs {y}"
                );
            }
        }
    }
}

#[test]
fn attention_bf16_inputs_forward_matches_bf16_bits() {
    // d64: query tiles of 128 (300 = 2 * 128 + 44: three, ragged), key tiles of 64; causal
    // (the tiles in reverse, blocks skipping the hidden tiles), causal with offset 33, and
    // not. d128: query tiles of 64, key tiles of 32.
    on_each_device(|d| {
        bf16_inputs_match_bf16_bits(d, dims(1, 2, 300, 300, 64, 64), scores(64, true), 31);
        bf16_inputs_match_bf16_bits(d, dims(1, 1, 267, 300, 64, 64), scores(64, true), 32);
        bf16_inputs_match_bf16_bits(d, dims(2, 1, 150, 197, 64, 64), scores(64, false), 33);
        bf16_inputs_match_bf16_bits(d, dims(1, 1, 197, 230, 128, 128), scores(128, true), 34);
        bf16_inputs_match_bf16_bits(d, dims(1, 1, 140, 100, 128, 128), scores(128, false), 35);
    });
}

#[test]
fn attention_bf16_inputs_need_16_byte_chunks() {
    on_each_device(|d| {
        let dims = dims(1, 1, 8, 8, 64, 64);
        let buf = upload::<bf16>(d, &vec![bf16::ZERO; 2 * 8 * 64]);
        let o = poisoned_f32(d, 8 * 64);
        let good = Lay::heads(1, 8, 64).view_of(buf, 2);
        let fwd = |q: AttnView| AttnFwd {
            dims,
            scores: scores(64, true),
            q,
            k: good,
            v: good,
            o: Lay::heads(1, 8, 64).view(o),
            lse: poisoned_f32(d, 8),
            precision: AttnPrecision::Bf16Inputs,
        };
        attn_fwd(d, &fwd(good)).unwrap();
        let shifted = AttnView {
            ptr: buf.offset(2),
            ..good
        };
        let strided = AttnView {
            strides: [2 * 8 * 64, 8 * 64, 64, 2],
            ..good
        };
        let odd_rows = AttnView {
            strides: [8 * 68, 8 * 68, 68 - 4 + 1, 1],
            ..good
        };
        for (what, q) in [
            ("a 2-byte offset", shifted),
            ("feature stride 2", strided),
            ("position stride 65", odd_rows),
        ] {
            let e = attn_fwd(d, &fwd(q)).unwrap_err().to_string();
            assert!(e.contains("16-byte") && e.contains("q:"), "{what}: {e}");
        }
    });
}

/// The bf16-storage backward against the f32 one on operands exactly representable in
/// bf16 (q, k, v and o rounded first; o from the f32 forward): the same arithmetic in the
/// same order, so dQ, dK, dV must be the same bits. The f32 operands are contiguous
/// `[B, H, N, D]`, the bf16 ones `[B, N, H, D]`, so the bf16 strides are exercised too.
fn bf16_storage_matches_f32_bits(d: &dyn Driver, dims: AttnDims, scores: AttnScores, seed: u64) {
    let AttnDims {
        b,
        h,
        nq,
        nk,
        dh,
        dv,
    } = dims;
    let tag = format!("{dims:?} {scores:?} on {}", d.name());
    let mut rng = Rng::new(seed);
    let shapes = [(b, h, nq, dh), (b, h, nk, dh), (b, h, nk, dv)];
    let heads = |(_, h, n, w): (usize, usize, usize, usize)| Lay::heads(h, n, w);
    let o_len = b * h * nq * dv;
    let ExactForward {
        ops,
        f32_ptr,
        o,
        lse,
    } = exact_forward(d, dims, scores, &mut rng);
    let (o_exact, o_stored) = bf16_operand(&download::<f32>(d, o, o_len), (b, h, nq, dv));
    let o_f32 = upload::<f32>(d, &o_exact);
    let bf16_ptr: Vec<DevicePtr> = ops.iter().map(|(_, x)| upload::<bf16>(d, x)).collect();
    let o_bf16 = upload::<bf16>(d, &o_stored);
    let g = upload::<f32>(d, &normal(&mut rng, o_len));
    let grad_lens = [b * h * nq * dh, b * h * nk * dh, b * h * nk * dv];
    let mut results = Vec::new();
    for storage in [AttnStorage::F32, AttnStorage::Bf16] {
        let grads: Vec<DevicePtr> = grad_lens.iter().map(|&n| poisoned_f32(d, n)).collect();
        // The f32 operands `[B, H, N, D]`, the bf16 ones `[B, N, H, D]`.
        let (lay, elem, p): (LayFn, usize, [DevicePtr; 4]) = match storage {
            AttnStorage::F32 => (Lay::heads, 4, [f32_ptr[0], f32_ptr[1], f32_ptr[2], o_f32]),
            AttnStorage::Bf16 | AttnStorage::Bf16TensorCores => (
                tokens_lay,
                2,
                [bf16_ptr[0], bf16_ptr[1], bf16_ptr[2], o_bf16],
            ),
        };
        let at =
            |i: usize, (_, h, n, w): (usize, usize, usize, usize)| lay(h, n, w).view_of(p[i], elem);
        let bwd = AttnBwd {
            dims,
            scores,
            q: at(0, shapes[0]),
            k: at(1, shapes[1]),
            v: at(2, shapes[2]),
            o: at(3, (b, h, nq, dv)),
            g: Lay::heads(h, nq, dv).view(g),
            lse,
            delta: poisoned_f32(d, b * h * nq),
            dq: heads(shapes[0]).view(grads[0]),
            dk: heads(shapes[1]).view(grads[1]),
            dv: heads(shapes[2]).view(grads[2]),
        };
        attn_bwd_stored(d, &bwd, storage).unwrap();
        let got: Vec<Vec<f32>> = grads
            .iter()
            .zip(grad_lens)
            .map(|(&p, n)| download::<f32>(d, p, n))
            .collect();
        results.push(got);
    }
    for (i, name) in ["dq", "dk", "dv"].into_iter().enumerate() {
        let (f, bf) = (&results[0][i], &results[1][i]);
        assert!(
            f.iter().all(|x| x.is_finite()),
            "{name} of the f32 kernels is not finite, {tag}"
        );
        assert_bits(&format!("{name} of the bf16-storage kernels, {tag}"), bf, f);
    }
}

#[test]
fn attention_bf16_storage_backward_matches_f32_bits() {
    // 70 queries (three tiles of 32, ragged) over 100 keys (seven tiles of 16): causal with
    // offset 30, and not; dh = dv = 64, and unequal dims the fused path never gives it.
    on_each_device(|d| {
        bf16_storage_matches_f32_bits(d, dims(2, 2, 70, 100, 64, 64), scores(64, true), 21);
        bf16_storage_matches_f32_bits(d, dims(1, 2, 70, 100, 64, 64), scores(64, false), 22);
        bf16_storage_matches_f32_bits(d, dims(1, 1, 37, 37, 16, 48), scores(16, true), 23);
    });
}

/// The tensor-core backward (`AttnStorage::Bf16TensorCores`) on bf16 q, k, v and o stored
/// `[B, N, H, 64]` (read through strides), with the log-sum-exp of the f32 forward on the
/// same values, against the f64 reference of the gradients of those values: it rounds dO,
/// P and dS to bf16 (relative `2^-9` each) before their products, so each gradient is held
/// to 1.5 % of its tensor's largest magnitude plus 3 % of the element; a wrong fragment, tile
/// or mask is off by the gradient's own size. Every element is written. Returns the largest
/// error relative to each tensor's scale.
fn tensor_core_backward(d: &dyn Driver, dims: AttnDims, scores: AttnScores, seed: u64) -> [f64; 3] {
    let AttnDims {
        b,
        h,
        nq,
        nk,
        dh,
        dv,
    } = dims;
    let tag = format!("{dims:?} {scores:?} on {}", d.name());
    let mut rng = Rng::new(seed);
    let shapes = [(b, h, nq, dh), (b, h, nk, dh), (b, h, nk, dv)];
    let heads = |(_, h, n, w): (usize, usize, usize, usize)| Lay::heads(h, n, w);
    let o_len = b * h * nq * dv;
    let ExactForward { ops, o, lse, .. } = exact_forward(d, dims, scores, &mut rng);
    let (_, o_stored) = bf16_operand(&download::<f32>(d, o, o_len), (b, h, nq, dv));
    let gs = normal(&mut rng, o_len);
    let wide = |x: &[f32]| -> Vec<f64> { x.iter().map(|&v| v as f64).collect() };
    let want = reference(
        &dims,
        &scores,
        &wide(&ops[0].0),
        &wide(&ops[1].0),
        &wide(&ops[2].0),
        &wide(&gs),
    );
    let p: Vec<DevicePtr> = ops.iter().map(|(_, x)| upload::<bf16>(d, x)).collect();
    let grad_lens = [b * h * nq * dh, b * h * nk * dh, b * h * nk * dv];
    let grads: Vec<DevicePtr> = grad_lens.iter().map(|&n| poisoned_f32(d, n)).collect();
    let at = |ptr, (_, h, n, w): (usize, usize, usize, usize)| tokens_lay(h, n, w).view_of(ptr, 2);
    let bwd = AttnBwd {
        dims,
        scores,
        q: at(p[0], shapes[0]),
        k: at(p[1], shapes[1]),
        v: at(p[2], shapes[2]),
        o: at(upload::<bf16>(d, &o_stored), (b, h, nq, dv)),
        g: Lay::heads(h, nq, dv).view(upload::<f32>(d, &gs)),
        lse,
        delta: poisoned_f32(d, b * h * nq),
        dq: heads(shapes[0]).view(grads[0]),
        dk: heads(shapes[1]).view(grads[1]),
        dv: heads(shapes[2]).view(grads[2]),
    };
    attn_bwd_stored(d, &bwd, AttnStorage::Bf16TensorCores).unwrap();
    // The warpgroup kernels, cp.async-fed and TMA-fed (a 9.0 GPU or the interpreter), on
    // the same inputs: on the interpreter the same bits; on a GPU held to the same
    // reference below.
    let cc = d.compute_capability().unwrap();
    let wgmma = cc.is_none_or(|cc| cc == (9, 0));
    type HopperBwd = fn(&dyn Driver, &AttnBwd) -> tarflow::Result<()>;
    let hopper: [(&str, HopperBwd); 2] = [("wgmma", attn_bwd_wgmma), ("TMA", attn_bwd_tma)];
    let mut hopper_grads = Vec::new();
    for (kind, run) in hopper.into_iter().filter(|_| wgmma) {
        let gr: Vec<DevicePtr> = grad_lens.iter().map(|&n| poisoned_f32(d, n)).collect();
        let wg = AttnBwd {
            dq: heads(shapes[0]).view(gr[0]),
            dk: heads(shapes[1]).view(gr[1]),
            dv: heads(shapes[2]).view(gr[2]),
            delta: poisoned_f32(d, b * h * nq),
            ..bwd
        };
        run(d, &wg).unwrap();
        hopper_grads.push((kind, gr));
    }
    let wants = [&want.dq, &want.dk, &want.dv];
    let mut worst = [0.0; 3];
    for (i, name) in ["dq", "dk", "dv"].into_iter().enumerate() {
        let got = download::<f32>(d, grads[i], grad_lens[i]);
        assert!(
            got.iter().all(|x| x.is_finite()),
            "{name} not written, {tag}"
        );
        let scale = wants[i].iter().fold(0.0f64, |a, x| a.max(x.abs()));
        assert_close(
            &format!("{name}, {tag}"),
            &got,
            wants[i],
            3e-2,
            1.5e-2 * scale,
        );
        worst[i] = got
            .iter()
            .zip(wants[i].iter())
            .map(|(&g, &w)| (g as f64 - w).abs() / scale)
            .fold(0.0, f64::max);
        for (kind, gr) in &hopper_grads {
            let wg = download::<f32>(d, gr[i], grad_lens[i]);
            let what = format!("{name} of the {kind} backward, {tag}");
            if cc.is_none() {
                assert_bits(&what, &wg, &got);
            } else {
                assert_close(&what, &wg, wants[i], 3e-2, 1.5e-2 * scale);
            }
        }
    }
    worst
}

#[test]
fn attention_tensor_core_backward_matches_f64_reference() {
    // Ragged tiles of 64 every way: 100 queries and keys, causal; 70 queries over 135 keys
    // under the causal offset 65 (not a tile multiple); not causal; 200 queries (four tiles,
    // the dQ CTAs last first) over 230 keys, offset 30. Heads of 64.
    on_each_device(|d| {
        let mut worst = [0.0f64; 3];
        for (dims, sc, seed) in [
            (dims(2, 2, 100, 100, 64, 64), scores(64, true), 31),
            (dims(1, 2, 70, 135, 64, 64), scores(64, true), 32),
            (dims(1, 2, 70, 100, 64, 64), scores(64, false), 33),
            (dims(1, 1, 200, 230, 64, 64), scores(64, true), 34),
        ] {
            let w = tensor_core_backward(d, dims, sc, seed);
            for i in 0..3 {
                worst[i] = worst[i].max(w[i]);
            }
        }
        eprintln!(
            "tensor-core backward on {}: largest error / scale dq {:.2e} dk {:.2e} dv {:.2e}",
            d.name(),
            worst[0],
            worst[1],
            worst[2]
        );
    });
}

#[test]
fn attention_tensor_core_backward_refuses_other_head_dims() {
    let d = tarflow::gpu::PtxSim::new();
    let dims = dims(1, 1, 8, 8, 32, 32);
    let p = poisoned_f32(&d, 1024);
    let view = Lay::heads(1, 8, 32).view(p);
    let bwd = AttnBwd {
        dims,
        scores: scores(32, true),
        q: view,
        k: view,
        v: view,
        o: view,
        g: view,
        lse: p,
        delta: p,
        dq: view,
        dk: view,
        dv: view,
    };
    let err = attn_bwd_stored(&d, &bwd, AttnStorage::Bf16TensorCores)
        .unwrap_err()
        .to_string();
    assert!(err.contains("dh = dv = 64"), "{err}");
    // Heads of 64 whose keys start 2 bytes into a buffer break the 16-byte rule of its loads.
    let dims = AttnDims {
        dh: 64,
        dv: 64,
        ..dims
    };
    let bf = upload::<bf16>(&d, &vec![bf16::ZERO; 8 * 64 + 8]);
    let good = Lay::heads(1, 8, 64).view_of(bf, 2);
    let f = Lay::heads(1, 8, 64).view(poisoned_f32(&d, 8 * 64));
    let bwd = AttnBwd {
        dims,
        scores: scores(64, true),
        q: good,
        k: AttnView {
            ptr: bf.offset(2),
            ..good
        },
        v: good,
        o: good,
        g: f,
        lse: p,
        delta: p,
        dq: f,
        dk: f,
        dv: f,
    };
    let err = attn_bwd_stored(&d, &bwd, AttnStorage::Bf16TensorCores)
        .unwrap_err()
        .to_string();
    assert!(err.contains("16-byte") && err.contains("k:"), "{err}");
}

/// One decode step on `d`: `b x h` queries over a cache of `nk` keys stored `[nk, b, h, d]`
/// (the sampler's cache layout, read through strides), against the f64 reference.
fn decode(d: &dyn Driver, (b, h, nk, dh, dv): (usize, usize, usize, usize, usize), seed: u64) {
    let mut rng = Rng::new(seed);
    let dims = dims(b, h, 1, nk, dh, dv);
    let sc = scores(dh, false);
    let tag = format!("decode {dims:?} on {}", d.name());
    let (qs, ks, vs) = (
        normal(&mut rng, b * h * dh),
        normal(&mut rng, nk * b * h * dh),
        normal(&mut rng, nk * b * h * dv),
    );
    let cache = |w: usize| Lay {
        off: 0,
        st: [h * w, w, b * h * w, 1],
    };
    let (lq, lk, lv, lo) = (
        Lay::heads(h, 1, dh),
        cache(dh),
        cache(dv),
        Lay::heads(h, 1, dv),
    );
    let q = gather(&qs, lq, (b, h, 1, dh));
    let k = gather(&ks, lk, (b, h, nk, dh));
    let v = gather(&vs, lv, (b, h, nk, dv));
    let want = reference(&dims, &sc, &q, &k, &v, &vec![0.0; b * h * dv]);
    let (qd, kd, vd) = (
        upload::<f32>(d, &qs),
        upload::<f32>(d, &ks),
        upload::<f32>(d, &vs),
    );
    // Each launch form: the chunks in parallel then merged, and one CTA per head walking
    // them (the same sums in the same order: the same bits).
    // One step over the caches at `kd`, `vd` into fresh poisoned outputs.
    let step = |kd, vd, append| {
        let (o, lse) = (poisoned_f32(d, b * h * dv), poisoned_f32(d, b * h));
        let a = AttnDecode {
            dims,
            alpha: sc.alpha,
            q: lq.view(qd),
            k: lk.view(kd),
            v: lv.view(vd),
            o: lo.view(o),
            lse,
            scratch: poisoned_f32(d, decode_scratch_len(b, h, nk, dv)),
            append,
        };
        (a, o, lse)
    };
    let mut outs = Vec::new();
    for how in [DecodeLaunch::Split, DecodeLaunch::Fused, DecodeLaunch::Auto] {
        let (a, o, lse) = step(kd, vd, None);
        if how == DecodeLaunch::Auto {
            attn_decode(d, &a).unwrap();
        } else {
            attn_decode_with(d, &a, how).unwrap();
        }
        let o_got = download::<f32>(d, o, b * h * dv);
        close(&format!("output, {how:?}, {tag}"), &o_got, &want.o);
        let lse_got = download::<f32>(d, lse, b * h);
        assert_close(
            &format!("lse, {how:?}, {tag}"),
            &lse_got,
            &want.lse2,
            1e-5,
            1e-5,
        );
        outs.push((o_got, lse_got));
    }
    for (how, (o, lse)) in ["fused", "auto"].iter().zip(&outs[1..]) {
        assert_bits(
            &format!("output, {how} against split, {tag}"),
            o,
            &outs[0].0,
        );
        assert_bits(&format!("lse, {how} against split, {tag}"), lse, &outs[0].1);
    }
    if nk == 0 {
        return;
    }
    // Appending: the last position's keys and values come from `[B, 1, 3 H D]`-like rows
    // (another layout than the cache's) and the cache holds NaN there until the launch
    // writes them; the same bits as the filled cache, and the cache filled.
    let last = nk - 1;
    let row = |w: usize| Lay {
        off: 0,
        st: [3 * h * w, w, 0, 1],
    };
    let (rk, rv) = (row(dh), row(dv));
    let fresh = |w: usize, lay: Lay, src: &[f32], cache: Lay| {
        let mut buf = vec![f32::NAN; b * 3 * h * w];
        for bi in 0..b {
            for hi in 0..h {
                for e in 0..w {
                    buf[lay.at(bi, hi, 0, e)] = src[cache.at(bi, hi, last, e)];
                }
            }
        }
        buf
    };
    let (nks, nvs) = (fresh(dh, rk, &ks, lk), fresh(dv, rv, &vs, lv));
    for how in [DecodeLaunch::Split, DecodeLaunch::Fused] {
        let (mut kc, mut vc) = (ks.clone(), vs.clone());
        for bi in 0..b {
            for hi in 0..h {
                (0..dh).for_each(|e| kc[lk.at(bi, hi, last, e)] = f32::NAN);
                (0..dv).for_each(|e| vc[lv.at(bi, hi, last, e)] = f32::NAN);
            }
        }
        let (kd, vd) = (upload::<f32>(d, &kc), upload::<f32>(d, &vc));
        let append = DecodeAppend {
            k: rk.view(upload::<f32>(d, &nks)),
            v: rv.view(upload::<f32>(d, &nvs)),
        };
        let (a, o, lse) = step(kd, vd, Some(append));
        attn_decode_with(d, &a, how).unwrap();
        let what = format!("appending, {how:?}, {tag}");
        assert_bits(
            &format!("output, {what}"),
            &download::<f32>(d, o, b * h * dv),
            &outs[0].0,
        );
        assert_bits(
            &format!("lse, {what}"),
            &download::<f32>(d, lse, b * h),
            &outs[0].1,
        );
        assert_bits(
            &format!("keys, {what}"),
            &download::<f32>(d, kd, ks.len()),
            &ks,
        );
        assert_bits(
            &format!("values, {what}"),
            &download::<f32>(d, vd, vs.len()),
            &vs,
        );
    }
}

#[test]
fn attention_decode_over_a_kv_cache_matches_f64_reference() {
    on_each_device(|d| {
        // 785 = 3 * 256 + 17: four key chunks, the last ragged.
        decode(d, (2, 3, 785, 64, 64), 11);
        // 300 (batch, head) pairs over two chunks: Auto runs them fused.
        decode(d, (25, 12, 300, 32, 32), 14);
        decode(d, (1, 2, 1, 24, 40), 12);
        decode(d, (1, 1, 0, 16, 16), 13);
    });
}

/// The TMA forward (`attn_fwd_bf16s_d64_tma`) with one line of its PTX changed, on 128
/// queries over 320 keys (five key tiles: the ring of three stages turns over): the output,
/// or the error the run ends with.
fn attn_tma_mutant(from: &str, nth: usize, to: &str) -> tarflow::Result<Vec<f32>> {
    let sim = swapped(mutated(
        &tarflow::gpu::kernels::ATTENTION_SM90,
        "attn_fwd_bf16s_d64_tma",
        from,
        nth,
        to,
    ));
    let d: &dyn Driver = &sim;
    let dims = dims(1, 2, 128, 320, 64, 64);
    let mut rng = Rng::new(41);
    let mut operand = |n: usize| {
        let x: Vec<bf16> = (0..2 * n * 64)
            .map(|_| bf16::from_f32(rng.normal() as f32))
            .collect();
        Lay::heads(2, n, 64).view_of(upload::<bf16>(d, &x), 2)
    };
    let (q, k, v) = (operand(128), operand(320), operand(320));
    let o = poisoned_f32(d, 2 * 128 * 64);
    let fwd = AttnFwd {
        dims,
        scores: scores(64, false),
        q,
        k,
        v,
        o: Lay::heads(2, 128, 64).view(o),
        lse: poisoned_f32(d, 2 * 128),
        precision: AttnPrecision::Bf16Inputs,
    };
    attn_fwd_tma(d, &fwd, None).and_then(|()| d.synchronize())?;
    Ok(download::<f32>(d, o, 2 * 128 * 64))
}

#[test]
fn the_tma_forwards_mbarrier_and_layout_checks_catch_each_mutation() {
    // The unchanged kernel runs cleanly (a change that matches nothing is refused).
    let want = attn_tma_mutant("ret;", 0, "ret;").unwrap();
    const WAIT: &str = "mbarrier.try_wait.parity.shared::cta.b64 p,";
    // The waits, in the body's order: the feeder's on `empty`, the consumers' on `q_full`
    // and on `full`. A consumer wait that always succeeds reads a copy that has not landed.
    for nth in [1, 2] {
        let e = expect_error(
            attn_tma_mutant(WAIT, nth, "setp.eq.u32 p, 1, 1; //").map(|_| ()),
            &format!("try_wait {nth} always true"),
        );
        assert!(
            e.contains("without waiting for that mbarrier's phase"),
            "{e}"
        );
    }
    // The consumers never release a stage: the feeder waits forever for the fourth tile.
    let e = expect_error(
        attn_tma_mutant("mbarrier.arrive.shared::cta.b64", 0, "// ").map(|_| ()),
        "no release",
    );
    assert!(e.contains("deadlock"), "{e}");
    // V read k-major (imm-trans-b 0 in the first P V step): other bits, or an error.
    if let Ok(got) = attn_tma_mutant("p, 1, 1, 1;", 0, "p, 1, 1, 0;") {
        let same = got
            .iter()
            .zip(&want)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(!same, "V read k-major gave the same bits");
    }
}

/// The TMA backward (`attn_bwd_tma`) with one line of `kernel`'s PTX changed, on 320 queries
/// over 320 keys, not causal (five tiles each way: both rings of three stages turn over):
/// dQ, dK and dV, or the error the run ends with.
fn attn_bwd_tma_mutant(
    kernel: &str,
    from: &str,
    nth: usize,
    to: &str,
) -> tarflow::Result<Vec<Vec<f32>>> {
    let sim = swapped(mutated(
        &tarflow::gpu::kernels::ATTENTION_SM90,
        kernel,
        from,
        nth,
        to,
    ));
    let d: &dyn Driver = &sim;
    let (h, n) = (2, 320);
    let mut rng = Rng::new(43);
    let mut bf16s = |scale: f64| -> DevicePtr {
        let x: Vec<bf16> = (0..h * n * 64)
            .map(|_| bf16::from_f32((scale * rng.normal()) as f32))
            .collect();
        upload::<bf16>(d, &x)
    };
    let lay = Lay::heads(h, n, 64);
    let (q, k, v, o) = (bf16s(1.0), bf16s(1.0), bf16s(1.0), bf16s(0.5));
    let g: Vec<f32> = (0..h * n * 64).map(|_| rng.normal() as f32).collect();
    // Row log-sum-exps near those of the scores (unit-variance scores over 320 keys).
    let lse: Vec<f32> = (0..h * n)
        .map(|_| 9.0 + 0.5 * rng.normal() as f32)
        .collect();
    let grads: Vec<DevicePtr> = (0..3).map(|_| poisoned_f32(d, h * n * 64)).collect();
    let bwd = AttnBwd {
        dims: dims(1, h, n, n, 64, 64),
        scores: scores(64, false),
        q: lay.view_of(q, 2),
        k: lay.view_of(k, 2),
        v: lay.view_of(v, 2),
        o: lay.view_of(o, 2),
        g: lay.view(upload::<f32>(d, &g)),
        lse: upload::<f32>(d, &lse),
        delta: poisoned_f32(d, h * n),
        dq: lay.view(grads[0]),
        dk: lay.view(grads[1]),
        dv: lay.view(grads[2]),
    };
    attn_bwd_tma(d, &bwd).and_then(|()| d.synchronize())?;
    Ok(grads
        .iter()
        .map(|&p| download::<f32>(d, p, h * n * 64))
        .collect())
}

#[test]
fn the_tma_backwards_mbarrier_and_layout_checks_catch_each_mutation() {
    const DKDV: &str = "attn_bwd_dkdv_bf16_d64_tma";
    const DQ: &str = "attn_bwd_dq_bf16_d64_tma";
    // The unchanged kernels run cleanly (a change that matches nothing is refused).
    let want = attn_bwd_tma_mutant(DKDV, "ret;", 0, "ret;").unwrap();
    // Whether gradient i (dQ, dK, dV) has the unchanged kernels' bits.
    let same_at = |got: &[Vec<f32>], i: usize| {
        got[i]
            .iter()
            .zip(&want[i])
            .all(|(a, b)| a.to_bits() == b.to_bits())
    };
    let same = |got: &[Vec<f32>]| (0..3).all(|i| same_at(got, i));
    const WAIT: &str = "mbarrier.try_wait.parity.shared::cta.b64 p,";
    for kernel in [DKDV, DQ] {
        // The waits, in the body's order: the feeder's on `empty`, the consumers' on `full`.
        // A consumer wait that always succeeds reads a copy that has not landed.
        let e = expect_error(
            attn_bwd_tma_mutant(kernel, WAIT, 1, "setp.eq.u32 p, 1, 1; //").map(|_| ()),
            &format!("{kernel}'s full wait always true"),
        );
        assert!(
            e.contains("without waiting for that mbarrier's phase"),
            "{kernel}: {e}"
        );
        // The consumers never release a stage: the feeder waits forever for the fourth tile.
        let e = expect_error(
            attn_bwd_tma_mutant(kernel, "mbarrier.arrive.shared::cta.b64", 0, "// ").map(|_| ()),
            &format!("{kernel} without a release"),
        );
        assert!(e.contains("deadlock"), "{kernel}: {e}");
    }
    // The consumers ask for 240 registers a thread where the feeder gave 128 x 128 back
    // (168 each at launch): 256 x 72 do not fit, and the last warps wait for ever.
    let e = expect_error(
        attn_bwd_tma_mutant(
            DQ,
            "setmaxnreg.inc.sync.aligned.u32 232",
            0,
            "setmaxnreg.inc.sync.aligned.u32 240",
        )
        .map(|_| ()),
        "consumers at 240 registers",
    );
    assert!(
        e.contains("deadlock") && e.contains("setmaxnreg.inc"),
        "{e}"
    );
    // The stages read the other way round: dO k-major in dV += P^T dO (the first
    // transposed step), or K k-major in dQ += dS K. Other bits, or an error.
    for kernel in [DKDV, DQ] {
        if let Ok(got) = attn_bwd_tma_mutant(kernel, "p, 1, 1, 1;", 0, "p, 1, 1, 0;") {
            assert!(
                !same(&got),
                "{kernel}: a stage read k-major gave the same bits"
            );
        }
    }
    // D's entries copied through lse's map: dK's bits change (dS uses D).
    let ptx = tarflow::gpu::kernels::ATTENTION_SM90.ptx;
    let body = &ptx[ptx.find(&format!(".entry {DKDV}(")).unwrap()..];
    let maps: Vec<&str> = body
        .lines()
        .filter(|l| l.contains("cp.async.bulk.tensor.1d"))
        .take(2)
        .map(|l| l.split("], [").nth(1).unwrap().split(',').next().unwrap())
        .collect();
    let (lse_map, d_map) = (format!("[{}, {{", maps[0]), format!("[{}, {{", maps[1]));
    let got = attn_bwd_tma_mutant(DKDV, &d_map, 0, &lse_map).unwrap();
    assert!(same_at(&got, 0) && !same_at(&got, 1), "D read as lse");
}
