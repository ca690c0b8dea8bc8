//! Addressing one (batch, head) matrix of a strided operand, the GEMM on such views, and the
//! scratch, pointer and blocking helpers the forward and backward kernels share.

use super::*;

/// A rank-4 operand's offset and strides, for addressing one (batch, head) matrix.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Strided4 {
    pub(crate) off: isize,
    pub(crate) st: [isize; 4],
}

impl Strided4 {
    pub(crate) fn of(l: &Layout) -> Self {
        let s = l.strides();
        Strided4 {
            off: l.offset() as isize,
            st: [s[0], s[1], s[2], s[3]],
        }
    }
    #[inline]
    pub(crate) fn head(&self, b: usize, h: usize) -> isize {
        self.off + b as isize * self.st[0] + h as isize * self.st[1]
    }
    /// The (b, h) matrix, rows along axis 2.
    #[inline]
    pub(crate) fn mat<'a, E>(&self, data: &'a [E], b: usize, h: usize) -> Mat<'a, E> {
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
pub(crate) struct Mat<'a, E> {
    pub(crate) data: &'a [E],
    pub(crate) off: isize,
    pub(crate) rs: isize,
    pub(crate) cs: isize,
}

impl<E> Mat<'_, E> {
    /// Whether every element of a `rows x cols` matrix lies inside the slice.
    pub(crate) fn fits(&self, rows: usize, cols: usize) -> bool {
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
pub(crate) fn gemm<E: Element>(
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
        crate::backend::cpu::gemm_any(
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
pub(crate) fn col_major<E>(data: &[E], ld: usize) -> Mat<'_, E> {
    Mat {
        data,
        off: 0,
        rs: 1,
        cs: ld as isize,
    }
}

/// A contiguous matrix with adjacent columns (`cs == 1`, row-major) and rows `ld` apart.
pub(crate) fn row_major<E>(data: &[E], ld: usize) -> Mat<'_, E> {
    Mat {
        data,
        off: 0,
        rs: ld as isize,
        cs: 1,
    }
}

/// Writes `src^T` row-major into `dst`, rows `ld` apart: `dst[c * ld + r] = src(r, c)` for
/// the `rows x cols` matrix `src`. This is how operands reach the layout `gemm` wants.
pub(crate) fn transpose_into<E: Element>(
    src: Mat<E>,
    rows: usize,
    cols: usize,
    dst: &mut [E],
    ld: usize,
) {
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
pub(crate) fn carve<E, const N: usize>(mut buf: &mut [E], lens: [usize; N]) -> [&mut [E]; N] {
    lens.map(|l| {
        let (a, rest) = std::mem::take(&mut buf).split_at_mut(l);
        buf = rest;
        a
    })
}

/// Runs `f` on the storage slices of `ts`, taking each distinct storage's read lock once
/// (q, k and v are often views of one buffer, and a second read lock on one `RwLock` from one
/// thread can deadlock behind a waiting writer).
pub(crate) fn read_storages<E: Element, R>(ts: &[&Tensor<E>], f: impl FnOnce(&[&[E]]) -> R) -> R {
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
pub(crate) struct SyncPtr<E>(pub(crate) *mut E);
// SAFETY: the pointer only reaches the elements through `chunk`, whose contract gives each
// live chunk to one task; moving the handle to another thread moves no element, and `E: Send`
// lets the elements be written from there.
unsafe impl<E: Send> Send for SyncPtr<E> {}
// SAFETY: shared handles only hand out chunks through `chunk`, whose callers keep live chunks
// disjoint, so concurrent tasks never reach the same element.
unsafe impl<E: Send> Sync for SyncPtr<E> {}

impl<E> SyncPtr<E> {
    pub(crate) fn new(v: &mut [E]) -> Self {
        SyncPtr(v.as_mut_ptr())
    }
    /// Chunk `i` of length `len`.
    ///
    /// # Safety
    /// The buffer must still be alive, not otherwise borrowed, and hold at least
    /// `(i + 1) * len` elements, and no two live chunks may be the same `i`.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn chunk(&self, i: usize, len: usize) -> &mut [E] {
        std::slice::from_raw_parts_mut(self.0.add(i * len), len)
    }
}

/// Whether to spread (batch, head) pairs over rayon: only when each product stays below the
/// size at which a GEMM is worth its own threads (`m k + k n` of 2^15), and the whole
/// call is worth a hand-off.
pub(crate) fn parallel_heads(bh: usize, rows: usize, cols: usize, depth: usize) -> bool {
    bh > 1 && (rows + cols) * depth < (1 << 15) && bh * rows * cols * depth >= (1 << 15)
}

/// Runs `f(head, scratch)` for every (batch, head) index, with a per-task scratch buffer.
pub(crate) fn for_heads<E: Element>(
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
pub(crate) fn visible(causal: bool, d: &Dims, i: usize) -> usize {
    if causal {
        d.nk - d.nq + i + 1
    } else {
        d.nk
    }
}

/// The first query that sees key `j` under the causal rule (0 without it).
#[inline]
pub(crate) fn first_query(causal: bool, d: &Dims, j: usize) -> usize {
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
pub(crate) const KEY_BLOCK: usize = 32;
pub(crate) const QUERY_BLOCK: usize = 48;

/// `(start, len)` blocks covering `0..n`: of `size` when causal, one block otherwise.
pub(crate) fn blocks(n: usize, causal: bool, size: usize) -> impl Iterator<Item = (usize, usize)> {
    let size = if causal { size } else { n.max(1) };
    (0..n).step_by(size).map(move |s| (s, size.min(n - s)))
}

/// `mat` moved down `r` rows.
pub(crate) fn skip_rows<E>(mat: Mat<'_, E>, r: usize) -> Mat<'_, E> {
    Mat {
        off: mat.off + r as isize * mat.rs,
        ..mat
    }
}

/// Row and column counts of the products are padded to a multiple of this: a partial
/// register tile takes a slower packing path and a masked write-back, in both GEMMs, that
/// cost more than the padding.
pub(crate) const TILE: usize = 16;

pub(crate) fn pad(n: usize) -> usize {
    n.div_ceil(TILE) * TILE
}
