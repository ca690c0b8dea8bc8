//! The macro kernels (a packed block of `A` against a block of `B`, tile by tile) and the
//! scalar epilogues for partial tiles and degenerate products.

use super::*;

/// Where the microkernel finds a block's rows of `A`.
#[derive(Clone, Copy)]
pub(super) enum ABlock<'a> {
    /// Every panel packed.
    Packed(&'a [f32]),
    /// Full panels read in place: row-major rows `rsa` apart from `a`. Packing them would
    /// cost a load and a store per element, which is a large share of the arithmetic when
    /// `N` is small (2N flops per element of `A`). A trailing partial panel is packed, in
    /// `tail`, so that no row past the block is read.
    Rows {
        a: *const f32,
        rsa: isize,
        tail: &'a [f32],
    },
    /// Full panels read in place from column-major `A` (adjacent rows, columns `csa`
    /// apart); a trailing partial panel packed in `tail`, as for `Rows`.
    Cols {
        a: *const f32,
        csa: isize,
        tail: &'a [f32],
    },
}

/// Whether row-major `A` can be read in place: unit column stride, and rows not a multiple of
/// 4 KiB apart (the `MR` rows would then share one L1 set and evict each other).
pub(super) fn read_a_in_place(rsa: isize, csa: isize) -> bool {
    csa == 1 && rsa > 0 && rsa % 1024 != 0
}

/// Runs the block's tiles in place or with a packed tail, as [`read_a_in_place`] says.
///
/// # Safety
/// The CPU supports `K`; `A`'s `rows x kc` block at `a` (strides `rsa`, `csa`) must be
/// readable, `bp` must hold the packed panels `panels` of a `kc x cols` block, `epi`'s bias
/// (if any) the block's `cols` values, and `C`'s `rows x cols` block at `c` must be valid
/// for writes (and reads if `beta != 0`) and overlap neither `A` nor `bp`.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn macro_kernel_a<K: Micro>(
    rows: usize,
    cols: usize,
    kc: usize,
    a: *const f32,
    rsa: isize,
    csa: isize,
    bp: &[f32],
    panels: std::ops::Range<usize>,
    epi: Epi,
    c: *mut f32,
    rsc: isize,
    csc: isize,
) {
    let mr = K::MR;
    // Column-major A (a transposed operand, as in a weight gradient `g^T x`) is already in
    // the packed layout apart from its k-stride: read it in place, all panels.
    let cols_in_place = rsa == 1 && csa > 0;
    if cols_in_place || read_a_in_place(rsa, csa) {
        let full = rows / mr * mr;
        let tail_len = if full < rows { mr * kc } else { 0 };
        with_buf(&BUF_A, tail_len, |tail| {
            if full < rows {
                K::pack_a(
                    rows - full,
                    kc,
                    a.offset(full as isize * rsa),
                    rsa,
                    csa,
                    tail,
                );
            }
            let ablk = if cols_in_place {
                ABlock::Cols { a, csa, tail }
            } else {
                ABlock::Rows { a, rsa, tail }
            };
            macro_kernel::<K>(rows, cols, kc, ablk, bp, panels, epi, c, rsc, csc);
        })
    } else {
        with_buf(&BUF_A, rows.div_ceil(mr) * mr * kc, |ap| {
            K::pack_a(rows, kc, a, rsa, csa, ap);
            let ablk = ABlock::Packed(ap);
            macro_kernel::<K>(rows, cols, kc, ablk, bp, panels, epi, c, rsc, csc);
        })
    }
}

/// Multiplies a block of `A` (`rows` rows) by packed `B` panels `panels`, writing the
/// tiles at `c` (the block's first row and the block's first column).
///
/// # Safety
/// As for [`macro_kernel_a`], with `ablk` giving the block of `A`: its packed panels, or
/// full panels in place plus a packed tail for the last `rows % MR` rows.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn macro_kernel<K: Micro>(
    rows: usize,
    cols: usize,
    kc: usize,
    ablk: ABlock,
    bp: &[f32],
    panels: std::ops::Range<usize>,
    epi: Epi,
    c: *mut f32,
    rsc: isize,
    csc: isize,
) {
    let (mr_, nr_) = (K::MR, K::NR);
    let mut buf = [0.0f32; 12 * 32];
    // Row tiles outside, panels inside: the tile's `MR x kc` of `A` stays in L1 while the
    // `B` panels stream from L2, and `C` is written along its rows, which the prefetchers
    // follow. (The other order, a `B` panel in L1 against the block's row tiles, writes `C`
    // in scattered 128-byte pieces; measured in docs/performance.md.)
    for (r, i0) in (0..rows).step_by(mr_).enumerate() {
        let mr = mr_.min(rows - i0);
        let (a, rsa) = match ablk {
            ABlock::Packed(ap) => (ap.as_ptr().add(r * kc * mr_), 0),
            ABlock::Rows { a, rsa, .. } if mr == mr_ => (a.offset(i0 as isize * rsa), rsa),
            ABlock::Cols { a, csa, .. } if mr == mr_ => (a.add(i0), -csa),
            ABlock::Rows { tail, .. } | ABlock::Cols { tail, .. } => (tail.as_ptr(), 0),
        };
        for q in panels.clone() {
            let j0 = q * nr_;
            let nr = nr_.min(cols - j0);
            let b = bp.as_ptr().add(q * kc * nr_);
            let ct = c.offset(i0 as isize * rsc + j0 as isize * csc);
            if csc != 1 {
                K::to_buf(kc, a, rsa, b, buf.as_mut_ptr());
                update_c(&buf, nr_, mr, nr, epi.at(j0), ct, rsc, csc);
            } else if mr == mr_ && nr == nr_ {
                K::tile(kc, a, rsa, b, epi.at(j0), ct, rsc);
            } else {
                K::tile_part(kc, a, rsa, b, epi.at(j0), ct, rsc, mr, nr);
            }
        }
    }
}

/// `C[i, j] = alpha * buf[i * ld + j] + beta * C[i, j]` over `mr x nr` (beta = 0: no read).
///
/// # Safety
/// `buf` holds `mr` rows `ld` apart (indexing checks it); the `mr x nr` part of `C` at `c`
/// with strides `(rsc, csc)` must be valid for writes (and reads if `beta != 0`), and a
/// non-null bias must hold `nr` values.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn update_c(
    buf: &[f32],
    ld: usize,
    mr: usize,
    nr: usize,
    epi: Epi,
    c: *mut f32,
    rsc: isize,
    csc: isize,
) {
    let Epi { alpha, beta, bias } = epi;
    for i in 0..mr {
        for j in 0..nr {
            let p = c.offset(i as isize * rsc + j as isize * csc);
            let mut v = alpha * buf[i * ld + j];
            if !bias.is_null() {
                v += *bias.add(j);
            }
            *p = if beta == 0.0 { v } else { v + beta * *p };
        }
    }
}

/// `C = beta * C` for the degenerate products (`k == 0` or `alpha == 0`); beta = 0 writes
/// zeros without reading `C`.
///
/// # Safety
/// The `m x n` matrix at `c` with strides `(rsc, csc)` must be valid for writes (and reads if
/// `beta != 0`).
pub(super) unsafe fn scale_c(m: usize, n: usize, beta: f32, c: *mut f32, rsc: isize, csc: isize) {
    for i in 0..m {
        for j in 0..n {
            let p = c.offset(i as isize * rsc + j as isize * csc);
            *p = if beta == 0.0 { 0.0 } else { beta * *p };
        }
    }
}
