//! Fused scaled dot-product attention, its hand-written backward, and KV-cached decoding.
//!
//! For every (batch, head) pair `attention` computes the scores `S = alpha Q K^T` with
//! `alpha = scale / temperature`, masks them, takes the row softmax `P` and returns `O = P V`,
//! in per-task scratch: the `[B, H, Nq, Nk]` score tensor of the composed form never exists,
//! and `P` is kept only when a gradient is needed. Strided operands (views cut from a fused
//! qkv projection) are never copied as a whole; each head's `Q` and `K` are transposed into
//! scratch because that is the layout the GEMMs pack fastest (see `gemm`). `attention_qkv`
//! reads q, k, v from the projection itself and writes one gradient for it.
//!
//! Backward, per (batch, head), with `D_i = sum_d dO_id O_id`:
//! `dV = P^T dO`, `dP = dO V^T`, `dS = P * (dP - D)`, `dQ = alpha dS K`, `dK = alpha dS^T Q`.
//! The derivation is in `docs/derivations.md`, section "Attention".
//!
//! Gradient-write convention: every gradient is a fresh tensor (`=`); with `attention`, the
//! autograd engine sums contributions (q, k and v cut from one tensor meet there).
//!
//! Under the causal rule every product skips the hidden triangle in blocks (`KEY_BLOCK`,
//! `QUERY_BLOCK`), and the softmax and `dS` touch only visible entries.
//!
//! Work is spread over (batch, head) pairs with rayon when each product is small enough to
//! run on one thread (and then kept there, `serial_scope`); larger products are left to the
//! GEMM's own threads. `f32` products run on the crate's GEMM, `f64` on matrixmultiply.

use std::sync::RwLockReadGuard;

use rayon::prelude::*;

use crate::autograd::is_grad_enabled;
use crate::error::{Error, Result};
use crate::ops::gemm::serial_scope;
use crate::ops::matmul::init_gemm_threads;
use crate::ops::simd;
use crate::ops::softmax::{dot, exp_in_place};
use crate::profile::{Kernel, Timer};
use crate::tensor::layout::{checked_numel, checked_product};
use crate::tensor::{DType, Element, Layout, Tensor};

/// How scores are formed and masked.
///
/// `logits = (q . k) * scale / temperature`. With `causal`, query `i` sees key `j` only when
/// `j <= i + (Nk - Nq)`: the queries are the last `Nq` of the `Nk` positions (with `Nq == Nk`
/// that is the usual lower triangle, diagonal included).
#[derive(Clone, Copy, Debug)]
pub struct AttentionOptions {
    /// Hide keys after each query's position (see above); `false` lets every query see every key.
    pub causal: bool,
    /// Multiplier of the dot products, usually `1 / sqrt(head_dim)`; must be finite.
    pub scale: f64,
    /// Divisor of the logits (1 for the plain model); must be finite and positive.
    pub temperature: f64,
}

impl AttentionOptions {
    /// `scale / temperature`, after checking both.
    fn alpha(&self, op: &'static str) -> Result<f64> {
        if !(self.scale.is_finite() && self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(Error::arg(
                op,
                format!(
                    "scale must be finite and temperature finite and positive, got scale {} \
                     and temperature {}",
                    self.scale, self.temperature
                ),
            ));
        }
        Ok(self.scale / self.temperature)
    }
}

/// Sizes of one attention call: q `[b, h, nq, dh]`, k `[b, h, nk, dh]`, v `[b, h, nk, dv]`.
#[derive(Clone, Copy, Debug)]
struct Dims {
    b: usize,
    h: usize,
    nq: usize,
    nk: usize,
    dh: usize,
    dv: usize,
}

/// Checks operand shapes and the mask, returning the sizes.
fn check_shapes<E: Element>(
    op: &'static str,
    q: &Tensor<E>,
    k: &Tensor<E>,
    v: &Tensor<E>,
    mask: Option<&Tensor<E>>,
    causal: bool,
) -> Result<Dims> {
    let mut shapes: Vec<&[usize]> = vec![q.shape(), k.shape(), v.shape()];
    shapes.extend(mask.map(|m| m.shape()));
    let bad = |detail: &str| Error::shape(op, &shapes, E::DTYPE.name(), detail);
    if q.rank() != 4 || k.rank() != 4 || v.rank() != 4 {
        return Err(bad("q, k, v must be [batch, heads, positions, head_dim]"));
    }
    let (qs, ks, vs) = (q.shape(), k.shape(), v.shape());
    if qs[..2] != ks[..2] || ks[..2] != vs[..2] {
        return Err(bad("batch and head counts of q, k, v differ"));
    }
    if ks[2] != vs[2] {
        return Err(bad("k and v have different numbers of positions"));
    }
    if qs[3] != ks[3] {
        return Err(bad("q and k have different head dimensions"));
    }
    let d = Dims {
        b: qs[0],
        h: qs[1],
        nq: qs[2],
        nk: ks[2],
        dh: qs[3],
        dv: vs[3],
    };
    if causal && d.nq > d.nk {
        return Err(bad(
            "causal attention needs no more queries than keys (queries are the last positions)",
        ));
    }
    if let Some(m) = mask {
        if m.layout().broadcast_to(&[d.b, d.h, d.nq, d.nk]).is_none() {
            return Err(bad("mask must broadcast to [batch, heads, queries, keys]"));
        }
    }
    // Zero-size operands can pair a huge count of queries with a huge value width.
    if checked_numel(op, &[d.b, d.h, d.nq, d.dv], &[], E::DTYPE.name()).is_err() {
        return Err(bad(
            "the output [batch, heads, queries, value_dim] has more elements than fit in usize",
        ));
    }
    Ok(d)
}

impl Dims {
    /// Whether the output and every gradient are empty or all zeros whatever the operands
    /// hold (no pair, no query, no key, or no width at all), so no kernel needs to run.
    fn trivial(&self) -> bool {
        self.b == 0 || self.h == 0 || self.nq == 0 || self.nk == 0 || (self.dh == 0 && self.dv == 0)
    }
}

/// A rank-4 operand's offset and strides, for addressing one (batch, head) matrix.
#[derive(Clone, Copy, Debug)]
struct Strided4 {
    off: isize,
    st: [isize; 4],
}

impl Strided4 {
    fn of(l: &Layout) -> Self {
        let s = l.strides();
        Strided4 {
            off: l.offset() as isize,
            st: [s[0], s[1], s[2], s[3]],
        }
    }
    #[inline]
    fn head(&self, b: usize, h: usize) -> isize {
        self.off + b as isize * self.st[0] + h as isize * self.st[1]
    }
    /// The (b, h) matrix, rows along axis 2.
    #[inline]
    fn mat<'a, E>(&self, data: &'a [E], b: usize, h: usize) -> Mat<'a, E> {
        Mat {
            data,
            off: self.head(b, h),
            rs: self.st[2],
            cs: self.st[3],
        }
    }
}

/// A strided matrix inside a slice.
#[derive(Clone, Copy)]
struct Mat<'a, E> {
    data: &'a [E],
    off: isize,
    rs: isize,
    cs: isize,
}

impl<E> Mat<'_, E> {
    /// Whether every element of a `rows x cols` matrix lies inside the slice.
    fn fits(&self, rows: usize, cols: usize) -> bool {
        if rows == 0 || cols == 0 {
            return true;
        }
        let (mut lo, mut hi) = (self.off, self.off);
        for (n, s) in [(rows, self.rs), (cols, self.cs)] {
            let ext = (n as isize - 1) * s;
            if ext < 0 {
                lo += ext
            } else {
                hi += ext
            }
        }
        lo >= 0 && (hi as usize) < self.data.len()
    }
}

/// `c = alpha * a @ b` with `a` `m x k`, `b` `k x n`, and `c` `m x n` at strides `(crs, ccs)`.
///
/// Both GEMMs copy `a` quickly when its rows are adjacent (`a.rs == 1`) and `b` when its
/// columns are (`b.cs == 1`); any other layout is copied element by element, which at
/// attention sizes costs more than the product itself. Callers arrange their operands so.
#[allow(clippy::too_many_arguments)]
fn gemm<E: Element>(
    m: usize,
    k: usize,
    n: usize,
    alpha: E,
    a: Mat<E>,
    b: Mat<E>,
    c: &mut [E],
    crs: isize,
    ccs: isize,
) {
    if m == 0 || n == 0 {
        return;
    }
    let cm = Mat {
        data: &*c,
        off: 0,
        rs: crs,
        cs: ccs,
    };
    assert!(
        cm.fits(m, n) && a.fits(m, k) && b.fits(k, n),
        "attention gemm operands out of bounds"
    );
    if k == 0 {
        for i in 0..m {
            for j in 0..n {
                c[(i as isize * crs + j as isize * ccs) as usize] = E::ZERO;
            }
        }
        return;
    }
    // SAFETY: the assertion above keeps every element of a, b and c in bounds; c is a
    // distinct &mut slice, so it cannot alias a or b.
    unsafe {
        E::gemm(
            m,
            k,
            n,
            alpha,
            a.data.as_ptr().offset(a.off),
            a.rs,
            a.cs,
            b.data.as_ptr().offset(b.off),
            b.rs,
            b.cs,
            E::ZERO,
            c.as_mut_ptr(),
            crs,
            ccs,
        )
    }
}

/// A contiguous matrix with adjacent rows (`rs == 1`, column-major) and columns `ld` apart.
fn col_major<E>(data: &[E], ld: usize) -> Mat<'_, E> {
    Mat {
        data,
        off: 0,
        rs: 1,
        cs: ld as isize,
    }
}

/// A contiguous matrix with adjacent columns (`cs == 1`, row-major) and rows `ld` apart.
fn row_major<E>(data: &[E], ld: usize) -> Mat<'_, E> {
    Mat {
        data,
        off: 0,
        rs: ld as isize,
        cs: 1,
    }
}

/// Writes `src^T` row-major into `dst`, rows `ld` apart: `dst[c * ld + r] = src(r, c)` for
/// the `rows x cols` matrix `src`. This is how operands reach the layout `gemm` wants.
fn transpose_into<E: Element>(src: Mat<E>, rows: usize, cols: usize, dst: &mut [E], ld: usize) {
    // 8 x 8 blocks: eight unit-stride reads of eight, then eight unit-stride writes of eight.
    const T: usize = 8;
    let row = |r: usize| (src.off + r as isize * src.rs) as usize;
    let (mut r0, full_c) = (0, cols - cols % T);
    // f32 blocks go through `simd`'s block transpose (vector shuffles where the CPU has AVX).
    let fast =
        (E::DTYPE == DType::F32 && src.rs > 0).then(|| bytemuck::cast_slice::<E, f32>(src.data));
    if src.cs == 1 {
        while r0 + T <= rows {
            let rs: [&[E]; T] = std::array::from_fn(|t| &src.data[row(r0 + t)..row(r0 + t) + cols]);
            for c0 in (0..full_c).step_by(T) {
                if let Some(s) = fast {
                    let (first, stride) = (row(r0) + c0, src.rs as usize);
                    assert!(first + (T - 1) * stride + T <= s.len());
                    assert!((c0 + T - 1) * ld + r0 + T <= dst.len());
                    let d = bytemuck::cast_slice_mut::<E, f32>(dst)[c0 * ld + r0..].as_mut_ptr();
                    // SAFETY: the assertions keep the block's eight rows of eight inside
                    // `src` and its eight columns inside `dst`, two distinct slices.
                    unsafe { simd::transpose8x8_f32(s[first..].as_ptr(), stride, d, ld) };
                    continue;
                }
                let mut blk = [[E::ZERO; T]; T];
                for (b, r) in blk.iter_mut().zip(&rs) {
                    b.copy_from_slice(&r[c0..c0 + T]);
                }
                for cc in 0..T {
                    let d = &mut dst[(c0 + cc) * ld + r0..(c0 + cc) * ld + r0 + T];
                    for (x, b) in d.iter_mut().zip(&blk) {
                        *x = b[cc];
                    }
                }
            }
            for c in full_c..cols {
                for (t, r) in rs.iter().enumerate() {
                    dst[c * ld + r0 + t] = r[c];
                }
            }
            r0 += T;
        }
    }
    for r in r0..rows {
        for c in 0..cols {
            dst[c * ld + r] = src.data[(row(r) as isize + c as isize * src.cs) as usize];
        }
    }
}

/// Cuts `buf` into consecutive pieces of the given lengths.
fn carve<E, const N: usize>(mut buf: &mut [E], lens: [usize; N]) -> [&mut [E]; N] {
    lens.map(|l| {
        let (a, rest) = std::mem::take(&mut buf).split_at_mut(l);
        buf = rest;
        a
    })
}

/// Runs `f` on the storage slices of `ts`, taking each distinct storage's read lock once
/// (q, k and v are often views of one buffer, and a second read lock on one `RwLock` from one
/// thread can deadlock behind a waiting writer).
fn read_storages<E: Element, R>(ts: &[&Tensor<E>], f: impl FnOnce(&[&[E]]) -> R) -> R {
    let mut guards: Vec<RwLockReadGuard<'_, Vec<E>>> = Vec::new();
    let mut owners: Vec<usize> = Vec::new();
    let mut which = Vec::with_capacity(ts.len());
    for (i, t) in ts.iter().enumerate() {
        match owners.iter().position(|&j| ts[j].shares_storage(t)) {
            Some(g) => which.push(g),
            None => {
                owners.push(i);
                guards.push(t.storage().read());
                which.push(guards.len() - 1);
            }
        }
    }
    let slices: Vec<&[E]> = which.iter().map(|&g| &guards[g][..]).collect();
    f(&slices)
}

/// A raw output pointer shared by tasks that write disjoint chunks.
struct SyncPtr<E>(*mut E);
// SAFETY: the pointer only reaches the elements through `chunk`, whose contract gives each
// live chunk to one task; moving the handle to another thread moves no element, and `E: Send`
// lets the elements be written from there.
unsafe impl<E: Send> Send for SyncPtr<E> {}
// SAFETY: shared handles only hand out chunks through `chunk`, whose callers keep live chunks
// disjoint, so concurrent tasks never reach the same element.
unsafe impl<E: Send> Sync for SyncPtr<E> {}

impl<E> SyncPtr<E> {
    fn new(v: &mut [E]) -> Self {
        SyncPtr(v.as_mut_ptr())
    }
    /// Chunk `i` of length `len`.
    ///
    /// # Safety
    /// The buffer must still be alive, not otherwise borrowed, and hold at least
    /// `(i + 1) * len` elements, and no two live chunks may be the same `i`.
    #[allow(clippy::mut_from_ref)]
    unsafe fn chunk(&self, i: usize, len: usize) -> &mut [E] {
        std::slice::from_raw_parts_mut(self.0.add(i * len), len)
    }
}

/// Whether to spread (batch, head) pairs over rayon: only when each product stays below the
/// size at which a GEMM is worth its own threads (`m k + k n` of 2^15), and the whole
/// call is worth a hand-off.
fn parallel_heads(bh: usize, rows: usize, cols: usize, depth: usize) -> bool {
    bh > 1 && (rows + cols) * depth < (1 << 15) && bh * rows * cols * depth >= (1 << 15)
}

/// Runs `f(head, scratch)` for every (batch, head) index, with a per-task scratch buffer.
fn for_heads<E: Element>(
    bh: usize,
    par: bool,
    scratch: usize,
    f: impl Fn(usize, &mut [E]) + Send + Sync,
) {
    if par {
        // Each thread is busy with heads of its own: its products stay on it.
        (0..bh)
            .into_par_iter()
            .for_each_init(|| vec![E::ZERO; scratch], |s, i| serial_scope(|| f(i, s)));
    } else {
        let mut s = vec![E::ZERO; scratch];
        for i in 0..bh {
            f(i, &mut s);
        }
    }
}

/// Row `i`'s number of visible keys under the causal rule.
#[inline]
fn visible(causal: bool, d: &Dims, i: usize) -> usize {
    if causal {
        d.nk - d.nq + i + 1
    } else {
        d.nk
    }
}

/// The first query that sees key `j` under the causal rule (0 without it).
#[inline]
fn first_query(causal: bool, d: &Dims, j: usize) -> usize {
    if causal {
        (j + d.nq).saturating_sub(d.nk)
    } else {
        0
    }
}

/// Causal products skip the hidden triangle in blocks: keys `KEY_BLOCK` at a time for the
/// products whose output is indexed by key (scores, `dP`, `dV`, `dK`), queries `QUERY_BLOCK`
/// at a time for those indexed by query (`O`, `dQ`). Each block runs only over the queries
/// (or keys) that can see it, about 55-65 % of the square at TarFlow's sequence lengths.
/// Multiples of `TILE`, so every block but the last starts on a whole tile.
const KEY_BLOCK: usize = 32;
const QUERY_BLOCK: usize = 48;

/// `(start, len)` blocks covering `0..n`: of `size` when causal, one block otherwise.
fn blocks(n: usize, causal: bool, size: usize) -> impl Iterator<Item = (usize, usize)> {
    let size = if causal { size } else { n.max(1) };
    (0..n).step_by(size).map(move |s| (s, size.min(n - s)))
}

/// `mat` moved down `r` rows.
fn skip_rows<E>(mat: Mat<'_, E>, r: usize) -> Mat<'_, E> {
    Mat {
        off: mat.off + r as isize * mat.rs,
        ..mat
    }
}

/// Row and column counts of the products are padded to a multiple of this: a partial
/// register tile takes a slower packing path and a masked write-back, in both GEMMs, that
/// cost more than the padding.
const TILE: usize = 16;

fn pad(n: usize) -> usize {
    n.div_ceil(TILE) * TILE
}

/// Softmax over keys of a column-major score block: lane `j` (a key) holds the `nq` queries'
/// scores at `p[j * ld..j * ld + nq]`, and each query's softmax runs across the `nk` lanes,
/// so every loop is unit-stride over queries. Lane `j` is read only from query `first(j)` on
/// (the causal rule hides the rest), and its hidden part is set to zero. A query whose
/// scores are all `-inf` gets zeros. `m` and `s` are scratch of length `nq`.
fn softmax_over_keys<E: Element>(
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
struct RowsOut<E> {
    ptr: *mut E,
    lay: Strided4,
}
// SAFETY: the buffer is only written through `put`, whose contract gives each (batch, head)
// block of rows to one task; `E: Send` lets the values be written from another thread.
unsafe impl<E: Send> Send for RowsOut<E> {}
// SAFETY: as for `Send`: tasks sharing the handle write disjoint rows through `put`, and
// nothing reads through it.
unsafe impl<E: Send> Sync for RowsOut<E> {}

impl<E: Copy> RowsOut<E> {
    /// `[B, H, rows, cols]`, contiguous.
    fn heads(buf: &mut [E], h: usize, rows: usize, cols: usize) -> Self {
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
    fn merged(buf: &mut [E], rows: usize, width: usize, cols: usize) -> Self {
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
    unsafe fn put(self, b: usize, h: usize, rows: usize, cols: usize, src: &[E]) {
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
fn by_key_lanes<E: Element>(
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
fn by_query_rows<E: Element>(
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
fn forward_heads<E: Element>(
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

/// The backward kernel over every (batch, head). `ts` is q, k, v, the output gradient and the
/// output (whose head rows `lo` addresses, adjacent columns); the gradients of q, k, v go
/// through `dst` where wanted.
#[allow(clippy::too_many_arguments)]
fn backward_heads<E: Element>(
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

/// Scaled dot-product attention, fused forward and backward.
///
/// `q` is `[B, H, Nq, Dh]`, `k` `[B, H, Nk, Dh]`, `v` `[B, H, Nk, Dv]` (usually `Dv == Dh`),
/// with any strides. `mask` broadcasts to `[B, H, Nq, Nk]`; a nonzero entry masks that key
/// out for that query. A query that sees no key at all gets a zero output (and passes no
/// gradient). The output is a fresh contiguous `[B, H, Nq, Dv]`.
///
/// Within a head the scores and probabilities are kept column-major (`p[j * ld + i]` for
/// query `i`, key `j`, `ld` the padded query count) and `Q`, `K` are first transposed into
/// zero-padded scratch, so that every product gets whole tiles of operands it can pack by
/// rows (see `gemm` and `TILE`).
pub fn attention<E: Element>(
    q: &Tensor<E>,
    k: &Tensor<E>,
    v: &Tensor<E>,
    mask: Option<&Tensor<E>>,
    opts: AttentionOptions,
) -> Result<Tensor<E>> {
    let d = check_shapes("attention", q, k, v, mask, opts.causal)?;
    let alpha = E::from_f64(opts.alpha("attention")?);
    let timer = Timer::start(Kernel::Attention);
    init_gemm_threads();
    let needs_grad =
        is_grad_enabled() && (q.requires_grad() || k.requires_grad() || v.requires_grad());
    let mut out = vec![E::ZERO; d.b * d.h * d.nq * d.dv];
    let mut ts = vec![q, k, v];
    ts.extend(mask);
    let dst = RowsOut::heads(&mut out, d.h, d.nq, d.dv);
    let probs = forward_heads(&d, opts, alpha, &ts, dst, needs_grad);
    drop(timer);
    let out = Tensor::from_raw(out, &[d.b, d.h, d.nq, d.dv]);
    if !needs_grad {
        return Ok(out);
    }
    let (qd, kd, vd, od) = (q.detach(), k.detach(), v.detach(), out.detach());
    let (rq, rk, rv) = (q.requires_grad(), k.requires_grad(), v.requires_grad());
    Ok(out.record("attention", &[q, k, v], move |g| {
        let _timer = Timer::start(Kernel::Attention);
        let shape = |n: usize, e: usize| [d.b, d.h, n, e];
        let grad =
            |on: bool, n: usize, e: usize| vec![E::ZERO; if on { d.b * d.h * n * e } else { 0 }];
        let (mut dq, mut dk, mut dv) = (
            grad(rq, d.nq, d.dh),
            grad(rk, d.nk, d.dh),
            grad(rv, d.nk, d.dv),
        );
        let dst = [
            rq.then(|| RowsOut::heads(&mut dq, d.h, d.nq, d.dh)),
            rk.then(|| RowsOut::heads(&mut dk, d.h, d.nk, d.dh)),
            rv.then(|| RowsOut::heads(&mut dv, d.h, d.nk, d.dv)),
        ];
        if !d.trivial() {
            let (lg, lo) = (Strided4::of(g.layout()), Strided4::of(od.layout()));
            backward_heads(
                &d,
                opts,
                alpha,
                &probs,
                [&qd, &kd, &vd, g, &od],
                lg,
                lo,
                dst,
            );
        }
        Ok(vec![
            rq.then(|| Tensor::from_raw(dq, &shape(d.nq, d.dh))),
            rk.then(|| Tensor::from_raw(dk, &shape(d.nk, d.dh))),
            rv.then(|| Tensor::from_raw(dv, &shape(d.nk, d.dv))),
        ])
    }))
}

/// q, k, v as `[B, H, N, C / H]` views of a fused `[B, N, 3 C]` projection (no copy).
pub(crate) fn qkv_views<E: Element>(qkv: &Tensor<E>, heads: usize) -> Result<[Tensor<E>; 3]> {
    let (b, n, c3) = (qkv.shape()[0], qkv.shape()[1], qkv.shape()[2]);
    let t = qkv
        .reshape(&[b, n, 3, heads, c3 / 3 / heads])?
        .permute(&[2, 0, 3, 1, 4])?;
    let part = |i: usize| t.narrow(0, i, 1)?.squeeze(0);
    Ok([part(0)?, part(1)?, part(2)?])
}

/// Causal-or-not self-attention straight from a fused projection: `qkv` is `[B, N, 3 C]`
/// (queries, keys, values side by side, each `heads` heads of `C / heads`, as
/// `x.linear(w_qkv, b_qkv)` gives them) and the output is `[B, N, C]` with the heads side by
/// side, ready for the output projection.
///
/// The same as cutting q, k, v out of `qkv` with views, calling [`attention`] and merging
/// the heads, but the backward writes one `[B, N, 3 C]` gradient, where the views would
/// each pad theirs to the full width and the three would be summed, and no head-merging
/// copy is made either way.
pub fn attention_qkv<E: Element>(
    qkv: &Tensor<E>,
    heads: usize,
    mask: Option<&Tensor<E>>,
    opts: AttentionOptions,
) -> Result<Tensor<E>> {
    let op = "attention_qkv";
    let s = qkv.shape();
    let fits = |heads: usize| heads.checked_mul(3).is_some_and(|w| s[2].is_multiple_of(w));
    if qkv.rank() != 3 || heads == 0 || !fits(heads) {
        return Err(Error::shape(
            op,
            &[s],
            E::DTYPE.name(),
            format!("qkv must be [batch, positions, 3 * heads * head_dim] with {heads} heads"),
        ));
    }
    let (b, n, c) = (s[0], s[1], s[2] / 3);
    let dh = c / heads;
    let [q, k, v] = qkv_views(&qkv.detach(), heads)?;
    let d = check_shapes(op, &q, &k, &v, mask, opts.causal)?;
    let alpha = E::from_f64(opts.alpha(op)?);
    let timer = Timer::start(Kernel::Attention);
    init_gemm_threads();
    let needs_grad = is_grad_enabled() && qkv.requires_grad();
    let mut out = vec![E::ZERO; b * n * c];
    let mut ts = vec![&q, &k, &v];
    ts.extend(mask);
    let dst = RowsOut::merged(&mut out, n, c, dh);
    let probs = forward_heads(&d, opts, alpha, &ts, dst, needs_grad);
    drop(timer);
    let out = Tensor::from_raw(out, &[b, n, c]);
    if !needs_grad {
        return Ok(out);
    }
    let od = out.detach();
    Ok(out.record(op, &[qkv], move |g| {
        let _timer = Timer::start(Kernel::Attention);
        let mut grad = vec![E::ZERO; b * n * 3 * c];
        if !d.trivial() {
            let all = RowsOut::merged(&mut grad, n, 3 * c, dh);
            let part = |i: usize| {
                let off = (i * c) as isize;
                Some(RowsOut {
                    lay: Strided4 { off, ..all.lay },
                    ..all
                })
            };
            let dst = [part(0), part(1), part(2)];
            // `[B, N, C]` tensors seen as `[B, H, N, Dh]`.
            let as_heads = |l: &Layout| {
                let (off, st) = (l.offset() as isize, l.strides());
                Strided4 {
                    off,
                    st: [st[0], dh as isize * st[2], st[1], st[2]],
                }
            };
            let (lg, lo) = (as_heads(g.layout()), as_heads(od.layout()));
            backward_heads(&d, opts, alpha, &probs, [&q, &k, &v, g, &od], lg, lo, dst);
        }
        Ok(vec![Some(Tensor::from_raw(grad, &[b, n, 3 * c]))])
    }))
}

/// The composed form of [`attention`]: `matmul`, `mul_scalar`, `masked_fill` with `-inf`,
/// `softmax`, `matmul`, each recorded separately. Slow and memory-hungry; it exists so tests
/// can compare the fused op against it, values and gradients.
pub fn attention_reference<E: Element>(
    q: &Tensor<E>,
    k: &Tensor<E>,
    v: &Tensor<E>,
    mask: Option<&Tensor<E>>,
    opts: AttentionOptions,
) -> Result<Tensor<E>> {
    let d = check_shapes("attention_reference", q, k, v, mask, opts.causal)?;
    let alpha = opts.alpha("attention_reference")?;
    let mut s = q.matmul(&k.t()?)?.mul_scalar(alpha);
    if let Some(m) = mask {
        s = s.masked_fill(m, f64::NEG_INFINITY)?;
    }
    if opts.causal {
        let mut cm = vec![E::ZERO; d.nq * d.nk];
        for i in 0..d.nq {
            for j in visible(true, &d, i)..d.nk {
                cm[i * d.nk + j] = E::ONE;
            }
        }
        s = s.masked_fill(&Tensor::from_raw(cm, &[d.nq, d.nk]), f64::NEG_INFINITY)?;
    }
    s.softmax(-1)?.matmul(v)
}

/// Keys and values of past positions for incremental (autoregressive) decoding.
///
/// Both buffers are allocated once, `[batch, heads, max_len, head_dim]`, so that each
/// (batch, head) pair's positions are contiguous for the decode loop. The cache holds plain
/// values: appending detaches from any graph.
pub struct KvCache<E: Element> {
    batch: usize,
    heads: usize,
    max_len: usize,
    head_dim: usize,
    len: usize,
    k: Vec<E>,
    v: Vec<E>,
}

impl<E: Element> KvCache<E> {
    /// An empty cache with room for `max_len` positions. Fails when
    /// `batch * heads * max_len * head_dim` elements do not fit in memory (a size product
    /// past `usize`, or an allocation the system refuses), instead of aborting.
    pub fn new(batch: usize, heads: usize, max_len: usize, head_dim: usize) -> Result<Self> {
        let op = "KvCache::new";
        let size = [batch, heads, max_len, head_dim];
        let too_big = || {
            Error::arg(
                op,
                format!("a cache of {size:?} (batch, heads, positions, head_dim) is too large"),
            )
        };
        let n = checked_product(size).ok_or_else(too_big)?;
        let zeros = || -> Result<Vec<E>> {
            let mut v = Vec::new();
            v.try_reserve_exact(n).map_err(|_| too_big())?;
            v.resize(n, E::ZERO);
            Ok(v)
        };
        Ok(KvCache {
            batch,
            heads,
            max_len,
            head_dim,
            len: 0,
            k: zeros()?,
            v: zeros()?,
        })
    }

    /// Number of positions stored.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Maximum number of positions.
    pub fn capacity(&self) -> usize {
        self.max_len
    }

    /// Batch size the cache was made for.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Number of heads the cache was made for.
    pub fn heads(&self) -> usize {
        self.heads
    }

    /// Width of each cached key and value vector.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// Forgets every stored position (the buffers are kept).
    pub fn reset(&mut self) {
        self.len = 0;
    }

    /// Appends `T >= 1` positions: `k` and `v` are `[batch, heads, T, head_dim]`, any strides.
    /// Fails, leaving the cache unchanged, when a shape differs or the cache would overflow.
    pub fn append(&mut self, k: &Tensor<E>, v: &Tensor<E>) -> Result<()> {
        let want = [self.batch, self.heads, 0, self.head_dim];
        let ok = |t: &Tensor<E>| {
            t.rank() == 4
                && t.shape()[0] == want[0]
                && t.shape()[1] == want[1]
                && t.shape()[3] == want[3]
        };
        if !ok(k) || !ok(v) || k.shape() != v.shape() {
            return Err(Error::shape(
                "KvCache::append",
                &[k.shape(), v.shape()],
                E::DTYPE.name(),
                format!(
                    "k and v must both be [{}, {}, T, {}]",
                    want[0], want[1], want[3]
                ),
            ));
        }
        let t = k.shape()[2];
        if self.len.checked_add(t).is_none_or(|n| n > self.max_len) {
            return Err(Error::arg(
                "KvCache::append",
                format!(
                    "{t} new positions do not fit: {} of {} already used",
                    self.len, self.max_len
                ),
            ));
        }
        let (lk, lv) = (Strided4::of(k.layout()), Strided4::of(v.layout()));
        let (dh, len, max_len) = (self.head_dim, self.len, self.max_len);
        let (kbuf, vbuf) = (&mut self.k, &mut self.v);
        read_storages(&[k, v], |s| {
            for (src, l, dst) in [(s[0], lk, &mut *kbuf), (s[1], lv, &mut *vbuf)] {
                for i in 0..want[0] * want[1] {
                    let (b, h) = (i / want[1], i % want[1]);
                    for p in 0..t {
                        let o = (i * max_len + len + p) * dh;
                        let row = &mut dst[o..o + dh];
                        let base = l.head(b, h) + p as isize * l.st[2];
                        if l.st[3] == 1 {
                            row.copy_from_slice(&src[base as usize..base as usize + dh]);
                        } else {
                            for (c, x) in row.iter_mut().enumerate() {
                                *x = src[(base + c as isize * l.st[3]) as usize];
                            }
                        }
                    }
                }
            }
        });
        self.len += t;
        Ok(())
    }

    /// The stored keys, `[batch, heads, len, head_dim]` (a copy).
    pub fn keys(&self) -> Tensor<E> {
        self.gather(&self.k)
    }

    /// The stored values, `[batch, heads, len, head_dim]` (a copy).
    pub fn values(&self) -> Tensor<E> {
        self.gather(&self.v)
    }

    fn gather(&self, buf: &[E]) -> Tensor<E> {
        let row = self.len * self.head_dim;
        if row == 0 {
            return Tensor::from_raw(
                Vec::new(),
                &[self.batch, self.heads, self.len, self.head_dim],
            );
        }
        let mut out = Vec::with_capacity(self.batch * self.heads * row);
        for i in 0..self.batch * self.heads {
            let o = i * self.max_len * self.head_dim;
            out.extend_from_slice(&buf[o..o + row]);
        }
        Tensor::from_raw(out, &[self.batch, self.heads, self.len, self.head_dim])
    }
}

/// Keys per block of the decode loop's score buffer.
const DECODE_CHUNK: usize = 64;

/// Attention of new queries over a [`KvCache`]: `q` is `[B, H, T, Dh]` (usually `T == 1`, one
/// decode step; any strides), and its queries are the last `T` of the cached positions, so
/// with `opts.causal` query `t` sees cached positions `0..=len - T + t` (for `T == 1`, all
/// of them). `opts.causal == false` lets every query see every cached position.
///
/// One pass per query over blocks of keys with a running maximum and sum (online softmax)
/// accumulating straight into the output row: nothing is allocated beyond the output (the
/// scores of a block sit on the stack), and nothing is recorded.
pub fn attention_decode<E: Element>(
    q: &Tensor<E>,
    cache: &KvCache<E>,
    opts: AttentionOptions,
) -> Result<Tensor<E>> {
    let op = "attention_decode";
    let qs = q.shape();
    if q.rank() != 4 || qs[0] != cache.batch || qs[1] != cache.heads || qs[3] != cache.head_dim {
        return Err(Error::shape(
            op,
            &[qs],
            E::DTYPE.name(),
            format!(
                "q must be [{}, {}, T, {}] to match the cache",
                cache.batch, cache.heads, cache.head_dim
            ),
        ));
    }
    let t = qs[2];
    if t > cache.len {
        return Err(Error::arg(
            op,
            format!(
                "{t} queries but only {} cached positions (append the new keys and values first)",
                cache.len
            ),
        ));
    }
    let alpha = E::from_f64(opts.alpha(op)?);
    checked_numel(op, qs, &[qs], E::DTYPE.name())?;
    let (bh, dh, len) = (cache.batch * cache.heads, cache.head_dim, cache.len);
    let d = Dims {
        b: cache.batch,
        h: cache.heads,
        nq: t,
        nk: len,
        dh,
        dv: dh,
    };
    let mut out = vec![E::ZERO; bh * t * dh];
    if out.is_empty() {
        return Ok(Tensor::from_raw(out, &[d.b, d.h, t, dh]));
    }
    let lq = Strided4::of(q.layout());
    let stride = cache.max_len * dh;
    q.with_data(|qv, _| {
        let one_head = |i: usize, o: &mut [E]| {
            let (b, h) = (i / d.h, i % d.h);
            let keys = &cache.k[i * stride..i * stride + len * dh];
            let vals = &cache.v[i * stride..i * stride + len * dh];
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
                let lim = visible(opts.causal, &d, qi);
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
    });
    Ok(Tensor::from_raw(out, &[d.b, d.h, t, dh]))
}
