//! Copying ("packing") blocks of `A` and `B` into k-major panels, in reused buffers that start
//! on a cache line, and the pointer wrappers that let tasks share them.

use super::*;

/// A raw pointer that may cross threads; every use writes a disjoint region.
#[derive(Clone, Copy)]
pub(super) struct Ptr(pub(super) *mut f32);
// SAFETY: a `Ptr` is `C` (or a packing buffer) of a product in progress; the product's
// caller keeps that memory valid until the product returns, and the tasks given copies of
// the pointer write disjoint regions of it (each output element is summed by one task), so
// moving a copy to another thread creates no data race.
unsafe impl Send for Ptr {}
// SAFETY: as for `Send`: shared copies are only used for disjoint writes.
unsafe impl Sync for Ptr {}
/// A read-only operand pointer that may cross threads.
#[derive(Clone, Copy)]
pub(super) struct CPtr(pub(super) *const f32);
// SAFETY: a `CPtr` is `A`, `B`, a bias or a packed buffer, which the product's caller keeps
// valid and unwritten until the product returns (`C` may not alias them), so any thread may
// read through it.
unsafe impl Send for CPtr {}
// SAFETY: as for `Send`: nothing writes the memory while shared copies read it.
unsafe impl Sync for CPtr {}

// Methods, not field access: a closure using `.0` would capture the bare pointer field.
impl Ptr {
    pub(super) fn get(self) -> *mut f32 {
        self.0
    }
}
impl CPtr {
    pub(super) fn get(self) -> *const f32 {
        self.0
    }
}

thread_local! {
    /// Packing buffers reused across calls on the same thread: a fresh megabyte per product
    /// would be page-faulted in every time. Taken out while in use, so a nested product on
    /// the same thread (rayon may run one there) just allocates its own.
    pub(super) static BUF_A: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    pub(super) static BUF_B: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    pub(super) static BUF_K: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// One `KC x NC` block of `B`, packed by a task for itself (see [`split`]).
    pub(super) static BUF_P: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Floats in a 64-byte cache line. [`with_buf`] hands out slices that start on a line: every
/// packed `B` panel is a whole number of lines long, so each of the microkernel's 64-byte
/// loads of `B` then reads one line instead of straddling two (a large `Vec` from the
/// allocator starts 16 bytes past a page boundary). Measured in docs/performance.md.
pub(super) const LINE_FLOATS: usize = 16;

/// How many floats into `v` its first 64-byte line starts (at most `LINE_FLOATS - 1`).
pub(super) fn line_offset(v: &[f32]) -> usize {
    v.as_ptr().align_offset(64).min(LINE_FLOATS)
}

/// A zeroed vector with room for `len` floats from its first cache line, and that offset.
pub(super) fn zeroed_on_line(len: usize) -> (Vec<f32>, usize) {
    let v = vec![0.0f32; len + LINE_FLOATS];
    let start = line_offset(&v);
    (v, start)
}

/// `len` floats of the thread's buffer `key`, starting on a cache line.
pub(super) fn with_buf<R>(
    key: &'static std::thread::LocalKey<RefCell<Vec<f32>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    let mut v = key.with(|b| std::mem::take(&mut *b.borrow_mut()));
    if v.len() < len + LINE_FLOATS {
        v.resize(len + LINE_FLOATS, 0.0);
    }
    let skip = line_offset(&v);
    let r = f(&mut v[skip..skip + len]);
    key.with(|b| *b.borrow_mut() = v);
    r
}

/// Packs `rows x kc` of `A` (element `(i, p)` at `a + i*rsa + p*csa`) into `MR`-row panels,
/// k-major, zero-padding the last panel. `MR` is a constant so that the row loop unrolls.
///
/// # Safety
/// Every element `(i, p)`, `i < rows`, `p < kc`, must be readable at `a + i*rsa + p*csa`
/// (`dst`'s length is checked).
pub(super) unsafe fn pack_a<const MR: usize>(
    rows: usize,
    kc: usize,
    a: *const f32,
    rsa: isize,
    csa: isize,
    dst: &mut [f32],
) {
    assert!(dst.len() >= rows.div_ceil(MR) * MR * kc);
    let d = dst.as_mut_ptr();
    for i0 in (0..rows).step_by(MR) {
        let panel = d.add(i0 * kc);
        let mr = MR.min(rows - i0);
        let a0 = a.offset(i0 as isize * rsa);
        if mr == MR {
            // One k step writes MR adjacent values; the MR reads are MR streams (row-major
            // A) or one contiguous run (column-major A).
            for p in 0..kc {
                let src = a0.offset(p as isize * csa);
                for i in 0..MR {
                    *panel.add(p * MR + i) = *src.offset(i as isize * rsa);
                }
            }
        } else {
            for p in 0..kc {
                let src = a0.offset(p as isize * csa);
                for i in 0..MR {
                    *panel.add(p * MR + i) = if i < mr {
                        *src.offset(i as isize * rsa)
                    } else {
                        0.0
                    };
                }
            }
        }
    }
}

/// Packs panel `q` (`NR` columns from `q * nr_full`) of a `kc x cols` block of `B` (element
/// `(p, j)` at `b + p*rsb + j*csb`), k-major, zero-padding missing columns.
///
/// # Safety
/// `q * nr_full < cols`, and every element `(p, j)`, `p < kc`, `j < cols`, of the block
/// must be readable at `b + p*rsb + j*csb`; `panel` must hold `kc * nr_full` values (the
/// vector paths check their part).
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn pack_b_panel(
    nr_full: usize,
    q: usize,
    cols: usize,
    kc: usize,
    b: *const f32,
    rsb: isize,
    csb: isize,
    panel: &mut [f32],
) {
    let j0 = q * nr_full;
    let nr = nr_full.min(cols - j0);
    // A constant length lets each row's copy compile to a couple of vector moves instead of
    // a memcpy call per 64 or 128 bytes.
    /// # Safety
    /// `kc` rows of `N` values, `rsb` apart from `src`, must be readable (`dst`'s length
    /// is checked).
    unsafe fn rows<const N: usize>(kc: usize, src: *const f32, rsb: isize, dst: &mut [f32]) {
        assert!(dst.len() >= kc * N);
        for p in 0..kc {
            let s = src.offset(p as isize * rsb);
            std::ptr::copy_nonoverlapping(s, dst.as_mut_ptr().add(p * N), N);
        }
    }
    if csb == 1 && nr == 32 && nr_full == 32 {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            assert!(panel.len() >= kc * 32);
            x86::copy_rows_32(kc, b.add(j0), rsb, panel.as_mut_ptr());
            return;
        }
        rows::<32>(kc, b.add(j0), rsb, panel);
    } else if csb == 1 && nr == 16 && nr_full == 16 {
        rows::<16>(kc, b.add(j0), rsb, panel);
    } else if csb == 1 {
        for p in 0..kc {
            let src = b.offset(p as isize * rsb + j0 as isize);
            let d = &mut panel[p * nr_full..p * nr_full + nr];
            d.copy_from_slice(std::slice::from_raw_parts(src, nr));
        }
    } else {
        // Column-major `B` (a linear layer's weight `W` read as `W^T`): the panel is the
        // transpose of `nr` rows of `kc` adjacent values, moved in 8 x 8 blocks, each read
        // as eight rows of eight and written as eight rows of eight. One value at a time,
        // every write lands `nr_full` floats after the last.
        // (Blocks need the `nr` rows forwards in memory: a flipped view goes one by one.)
        let (full_j, full_p) = if rsb == 1 && csb > 0 {
            (nr / 8 * 8, kc / 8 * 8)
        } else {
            (0, 0)
        };
        for j in (0..full_j).step_by(8) {
            for p in (0..full_p).step_by(8) {
                let src = b.offset((j0 + j) as isize * csb + p as isize);
                assert!((p + 7) * nr_full + j + 8 <= panel.len());
                let dst = panel.as_mut_ptr().add(p * nr_full + j);
                crate::backend::cpu::simd::transpose8x8_f32(src, csb as usize, dst, nr_full);
            }
        }
        for j in 0..nr {
            let src = b.offset((j0 + j) as isize * csb);
            // Rows of the block already moved need only their last `kc % 8` values.
            let from = if j < full_j { full_p } else { 0 };
            for p in from..kc {
                panel[p * nr_full + j] = *src.offset(p as isize * rsb);
            }
        }
    }
    if nr < nr_full {
        for p in 0..kc {
            panel[p * nr_full + nr..(p + 1) * nr_full].fill(0.0);
        }
    }
}
