//! The AVX-512 (12 x 32) and AVX2 (6 x 16) microkernels, in assembly and intrinsics.

use super::{Epi, Micro};
use std::arch::x86_64::*;

pub struct Avx512;
pub struct Avx2;

/// `kc` rows of 32 values `rsb` apart from `src` into `dst`, contiguous: a panel of
/// row-major `B`, two 64-byte moves per row (the baseline target copies 16 bytes at a time).
///
/// # Safety
/// The CPU has AVX-512F; `src` holds the rows and `dst` `kc * 32` values.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn copy_rows_32(kc: usize, src: *const f32, rsb: isize, dst: *mut f32) {
    for p in 0..kc {
        let s = src.offset(p as isize * rsb);
        let d = dst.add(p * 32);
        _mm512_storeu_ps(d, _mm512_loadu_ps(s));
        _mm512_storeu_ps(d.add(16), _mm512_loadu_ps(s.add(16)));
    }
}

// The k loops below are assembly so that each multiply-add takes its `A` value as an
// embedded broadcast from memory: one fused instruction where the intrinsics give a
// broadcast shared by two multiply-adds, 27 or 28 instructions per k step instead of 39.
// The arithmetic is the same; what changes is the load on the core's front end, which a
// second hardware thread on the same core (this VM's neighbours) takes half of. Measured
// in docs/performance.md: the slow tenth of calls gains 3-13 %, the median 0-4 %.

/// One k step on 12 adjacent values of `A` at `{a}` (then `{a}` moves `{ks}` bytes)
/// and the `B` row at `{b}` plus the given byte offsets.
#[rustfmt::skip]
macro_rules! cols_step {
    ($b0:literal, $b1:literal) => {
        concat!(
        "vmovups {t0}, [{b} + ", $b0, "]\n",
        "vmovups {t1}, [{b} + ", $b1, "]\n",
        "vfmadd231ps {c0}, {t0}, dword ptr [{a} + 0]{{1to16}}\n",
        "vfmadd231ps {c1}, {t1}, dword ptr [{a} + 0]{{1to16}}\n",
        "vfmadd231ps {c2}, {t0}, dword ptr [{a} + 4]{{1to16}}\n",
        "vfmadd231ps {c3}, {t1}, dword ptr [{a} + 4]{{1to16}}\n",
        "vfmadd231ps {c4}, {t0}, dword ptr [{a} + 8]{{1to16}}\n",
        "vfmadd231ps {c5}, {t1}, dword ptr [{a} + 8]{{1to16}}\n",
        "vfmadd231ps {c6}, {t0}, dword ptr [{a} + 12]{{1to16}}\n",
        "vfmadd231ps {c7}, {t1}, dword ptr [{a} + 12]{{1to16}}\n",
        "vfmadd231ps {c8}, {t0}, dword ptr [{a} + 16]{{1to16}}\n",
        "vfmadd231ps {c9}, {t1}, dword ptr [{a} + 16]{{1to16}}\n",
        "vfmadd231ps {c10}, {t0}, dword ptr [{a} + 20]{{1to16}}\n",
        "vfmadd231ps {c11}, {t1}, dword ptr [{a} + 20]{{1to16}}\n",
        "vfmadd231ps {c12}, {t0}, dword ptr [{a} + 24]{{1to16}}\n",
        "vfmadd231ps {c13}, {t1}, dword ptr [{a} + 24]{{1to16}}\n",
        "vfmadd231ps {c14}, {t0}, dword ptr [{a} + 28]{{1to16}}\n",
        "vfmadd231ps {c15}, {t1}, dword ptr [{a} + 28]{{1to16}}\n",
        "vfmadd231ps {c16}, {t0}, dword ptr [{a} + 32]{{1to16}}\n",
        "vfmadd231ps {c17}, {t1}, dword ptr [{a} + 32]{{1to16}}\n",
        "vfmadd231ps {c18}, {t0}, dword ptr [{a} + 36]{{1to16}}\n",
        "vfmadd231ps {c19}, {t1}, dword ptr [{a} + 36]{{1to16}}\n",
        "vfmadd231ps {c20}, {t0}, dword ptr [{a} + 40]{{1to16}}\n",
        "vfmadd231ps {c21}, {t1}, dword ptr [{a} + 40]{{1to16}}\n",
        "vfmadd231ps {c22}, {t0}, dword ptr [{a} + 44]{{1to16}}\n",
        "vfmadd231ps {c23}, {t1}, dword ptr [{a} + 44]{{1to16}}\n",
        "add {a}, {ks}\n",
        )
    };
}

/// One k step on 12 rows of `A` in place, `$a` bytes past the row pointers: rows 0-9
/// through their own pointers, rows 10 and 11 indexed from rows 8 and 9 (an indexed
/// operand would split the fused instruction anyway, so those take a broadcast).
#[rustfmt::skip]
macro_rules! rows_step {
    ($b0:literal, $b1:literal, $a:literal) => {
        concat!(
        "vmovups {t0}, [{b} + ", $b0, "]\n",
        "vmovups {t1}, [{b} + ", $b1, "]\n",
        "vfmadd231ps {c0}, {t0}, dword ptr [{p0} + ", $a, "]{{1to16}}\n",
        "vfmadd231ps {c1}, {t1}, dword ptr [{p0} + ", $a, "]{{1to16}}\n",
        "vfmadd231ps {c2}, {t0}, dword ptr [{p1} + ", $a, "]{{1to16}}\n",
        "vfmadd231ps {c3}, {t1}, dword ptr [{p1} + ", $a, "]{{1to16}}\n",
        "vfmadd231ps {c4}, {t0}, dword ptr [{p2} + ", $a, "]{{1to16}}\n",
        "vfmadd231ps {c5}, {t1}, dword ptr [{p2} + ", $a, "]{{1to16}}\n",
        "vfmadd231ps {c6}, {t0}, dword ptr [{p3} + ", $a, "]{{1to16}}\n",
        "vfmadd231ps {c7}, {t1}, dword ptr [{p3} + ", $a, "]{{1to16}}\n",
        "vfmadd231ps {c8}, {t0}, dword ptr [{p4} + ", $a, "]{{1to16}}\n",
        "vfmadd231ps {c9}, {t1}, dword ptr [{p4} + ", $a, "]{{1to16}}\n",
        "vfmadd231ps {c10}, {t0}, dword ptr [{p5} + ", $a, "]{{1to16}}\n",
        "vfmadd231ps {c11}, {t1}, dword ptr [{p5} + ", $a, "]{{1to16}}\n",
        "vfmadd231ps {c12}, {t0}, dword ptr [{p6} + ", $a, "]{{1to16}}\n",
        "vfmadd231ps {c13}, {t1}, dword ptr [{p6} + ", $a, "]{{1to16}}\n",
        "vfmadd231ps {c14}, {t0}, dword ptr [{p7} + ", $a, "]{{1to16}}\n",
        "vfmadd231ps {c15}, {t1}, dword ptr [{p7} + ", $a, "]{{1to16}}\n",
        "vfmadd231ps {c16}, {t0}, dword ptr [{p8} + ", $a, "]{{1to16}}\n",
        "vfmadd231ps {c17}, {t1}, dword ptr [{p8} + ", $a, "]{{1to16}}\n",
        "vfmadd231ps {c18}, {t0}, dword ptr [{p9} + ", $a, "]{{1to16}}\n",
        "vfmadd231ps {c19}, {t1}, dword ptr [{p9} + ", $a, "]{{1to16}}\n",
        "vbroadcastss {t2}, dword ptr [{p8} + {rs} * 2 + ", $a, "]\n",
        "vfmadd231ps {c20}, {t0}, {t2}\n",
        "vfmadd231ps {c21}, {t1}, {t2}\n",
        "vbroadcastss {t2}, dword ptr [{p9} + {rs} * 2 + ", $a, "]\n",
        "vfmadd231ps {c22}, {t0}, {t2}\n",
        "vfmadd231ps {c23}, {t1}, {t2}\n",
        )
    };
}

/// `asm!` with the 24 accumulators of a 12 x 32 tile bound to `{c0}`..`{c23}` (row `r`
/// in `{c(2r)}` and `{c(2r+1)}`), after the loop's own template and operands.
macro_rules! tile_asm {
    ($acc:ident; $($body:tt)*) => {
        std::arch::asm!(
        $($body)*
        c0 = inout(zmm_reg) $acc[0][0],
        c1 = inout(zmm_reg) $acc[0][1],
        c2 = inout(zmm_reg) $acc[1][0],
        c3 = inout(zmm_reg) $acc[1][1],
        c4 = inout(zmm_reg) $acc[2][0],
        c5 = inout(zmm_reg) $acc[2][1],
        c6 = inout(zmm_reg) $acc[3][0],
        c7 = inout(zmm_reg) $acc[3][1],
        c8 = inout(zmm_reg) $acc[4][0],
        c9 = inout(zmm_reg) $acc[4][1],
        c10 = inout(zmm_reg) $acc[5][0],
        c11 = inout(zmm_reg) $acc[5][1],
        c12 = inout(zmm_reg) $acc[6][0],
        c13 = inout(zmm_reg) $acc[6][1],
        c14 = inout(zmm_reg) $acc[7][0],
        c15 = inout(zmm_reg) $acc[7][1],
        c16 = inout(zmm_reg) $acc[8][0],
        c17 = inout(zmm_reg) $acc[8][1],
        c18 = inout(zmm_reg) $acc[9][0],
        c19 = inout(zmm_reg) $acc[9][1],
        c20 = inout(zmm_reg) $acc[10][0],
        c21 = inout(zmm_reg) $acc[10][1],
        c22 = inout(zmm_reg) $acc[11][0],
        c23 = inout(zmm_reg) $acc[11][1],
        options(nostack, readonly),
        )
    };
}

/// `acc += a.b` over `4 * blocks` k steps: 12 adjacent values of `A` per step, steps
/// `ks` bytes apart (a packed panel, or column-major `A` in place), and a packed `B`
/// panel.
///
/// # Safety
/// The CPU has AVX-512F; `a` holds `4 * blocks` steps of 12 values `ks` bytes apart and
/// `b` `4 * blocks` rows of 32 values, contiguous.
#[target_feature(enable = "avx512f")]
unsafe fn avx512_cols_asm(
    blocks: usize,
    a: *const f32,
    ks: usize,
    b: *const f32,
    acc: &mut [[__m512; 2]; 12],
) {
    if blocks == 0 {
        return;
    }
    tile_asm!(acc;
        "2:",
        cols_step!("0", "64"),
        cols_step!("128", "192"),
        cols_step!("256", "320"),
        cols_step!("384", "448"),
        "add {b}, 512",
        "dec {k}",
        "jnz 2b",
        a = inout(reg) a => _,
        b = inout(reg) b => _,
        k = inout(reg) blocks => _,
        ks = in(reg) ks,
        t0 = out(zmm_reg) _,
        t1 = out(zmm_reg) _,
    );
}

/// [`avx512_cols_asm`] for 12 rows of row-major `A` read in place, `rsa` elements apart.
/// Ten row pointers, the row stride, `B` and the counter: the thirteen general registers
/// `asm!` may take.
///
/// # Safety
/// The CPU has AVX-512F; rows `i < 12` at `a + i * rsa` each hold `4 * blocks` values and
/// `b` `4 * blocks` rows of 32 values, contiguous.
#[target_feature(enable = "avx512f")]
unsafe fn avx512_rows_asm(
    blocks: usize,
    a: *const f32,
    rsa: isize,
    b: *const f32,
    acc: &mut [[__m512; 2]; 12],
) {
    if blocks == 0 {
        return;
    }
    tile_asm!(acc;
        "2:",
        rows_step!("0", "64", "0"),
        rows_step!("128", "192", "4"),
        rows_step!("256", "320", "8"),
        rows_step!("384", "448", "12"),
        "add {p0}, 16",
        "add {p1}, 16",
        "add {p2}, 16",
        "add {p3}, 16",
        "add {p4}, 16",
        "add {p5}, 16",
        "add {p6}, 16",
        "add {p7}, 16",
        "add {p8}, 16",
        "add {p9}, 16",
        "add {b}, 512",
        "dec {k}",
        "jnz 2b",
        p0 = inout(reg) a => _,
        p1 = inout(reg) a.offset(rsa) => _,
        p2 = inout(reg) a.offset(2 * rsa) => _,
        p3 = inout(reg) a.offset(3 * rsa) => _,
        p4 = inout(reg) a.offset(4 * rsa) => _,
        p5 = inout(reg) a.offset(5 * rsa) => _,
        p6 = inout(reg) a.offset(6 * rsa) => _,
        p7 = inout(reg) a.offset(7 * rsa) => _,
        p8 = inout(reg) a.offset(8 * rsa) => _,
        p9 = inout(reg) a.offset(9 * rsa) => _,
        rs = in(reg) rsa * 4,
        b = inout(reg) b => _,
        k = inout(reg) blocks => _,
        t0 = out(zmm_reg) _,
        t1 = out(zmm_reg) _,
        t2 = out(zmm_reg) _,
    );
}

/// The 12 x 32 product of `kc` steps of `A` (laid out as [`Micro::tile`] describes for
/// `rsa`) and a packed `B` panel, in registers.
///
/// # Safety
/// The CPU has AVX-512F; `a` and `b` hold what [`Micro::tile`] requires for `kc`.
#[target_feature(enable = "avx512f")]
unsafe fn avx512_acc(kc: usize, a: *const f32, rsa: isize, b: *const f32) -> [[__m512; 2]; 12] {
    let mut acc = [[_mm512_setzero_ps(); 2]; 12];
    // Whole blocks of four k steps in assembly, the rest here.
    let p0 = kc / 4 * 4;
    if rsa <= 0 {
        // Packed (k-stride MR) or column-major in place (k-stride -rsa).
        let ks = if rsa == 0 { 12 } else { rsa.unsigned_abs() };
        avx512_cols_asm(kc / 4, a, ks * 4, b, &mut acc);
        for p in p0..kc {
            let b0 = _mm512_loadu_ps(b.add(p * 32));
            let b1 = _mm512_loadu_ps(b.add(p * 32 + 16));
            let ap = a.add(p * ks);
            for (i, row) in acc.iter_mut().enumerate() {
                let ai = _mm512_set1_ps(*ap.add(i));
                row[0] = _mm512_fmadd_ps(ai, b0, row[0]);
                row[1] = _mm512_fmadd_ps(ai, b1, row[1]);
            }
        }
    } else {
        avx512_rows_asm(kc / 4, a, rsa, b, &mut acc);
        for p in p0..kc {
            let b0 = _mm512_loadu_ps(b.add(p * 32));
            let b1 = _mm512_loadu_ps(b.add(p * 32 + 16));
            for (i, row) in acc.iter_mut().enumerate() {
                let ai = _mm512_set1_ps(*a.offset(i as isize * rsa + p as isize));
                row[0] = _mm512_fmadd_ps(ai, b0, row[0]);
                row[1] = _mm512_fmadd_ps(ai, b1, row[1]);
            }
        }
    }
    acc
}

impl Micro for Avx512 {
    const MR: usize = 12;

    /// # Safety
    /// As for [`Micro::pack_a`].
    unsafe fn pack_a(
        rows: usize,
        kc: usize,
        a: *const f32,
        rsa: isize,
        csa: isize,
        dst: &mut [f32],
    ) {
        super::pack::pack_a::<12>(rows, kc, a, rsa, csa, dst)
    }
    const NR: usize = 32;

    /// # Safety
    /// As for [`Micro::tile`]: the CPU has AVX-512F, and the operands and tile are valid.
    #[target_feature(enable = "avx512f")]
    unsafe fn tile(
        kc: usize,
        a: *const f32,
        rsa: isize,
        b: *const f32,
        epi: Epi,
        c: *mut f32,
        rsc: isize,
    ) {
        let acc = avx512_acc(kc, a, rsa, b);
        let Epi { alpha, beta, bias } = epi;
        let va = _mm512_set1_ps(alpha);
        let vb = _mm512_set1_ps(beta);
        for (i, row) in acc.iter().enumerate() {
            let cr = c.offset(i as isize * rsc);
            for (h, &v) in row.iter().enumerate() {
                let p = cr.add(16 * h);
                let v = if alpha == 1.0 {
                    v
                } else {
                    _mm512_mul_ps(v, va)
                };
                let v = if bias.is_null() {
                    v
                } else {
                    _mm512_add_ps(v, _mm512_loadu_ps(bias.add(16 * h)))
                };
                let v = if beta == 0.0 {
                    v
                } else {
                    _mm512_fmadd_ps(_mm512_loadu_ps(p), vb, v)
                };
                _mm512_storeu_ps(p, v);
            }
        }
    }

    // Masked stores: edge tiles (attention's padded lengths, odd widths) cost the same
    // as full ones instead of going through a buffer element by element.
    /// # Safety
    /// As for [`Micro::tile_part`]: the CPU has AVX-512F, and only the `mr x nr` part of
    /// `C` need be valid (the masked stores touch nothing else).
    #[target_feature(enable = "avx512f")]
    unsafe fn tile_part(
        kc: usize,
        a: *const f32,
        rsa: isize,
        b: *const f32,
        epi: Epi,
        c: *mut f32,
        rsc: isize,
        mr: usize,
        nr: usize,
    ) {
        let acc = avx512_acc(kc, a, rsa, b);
        let Epi { alpha, beta, bias } = epi;
        let va = _mm512_set1_ps(alpha);
        let vb = _mm512_set1_ps(beta);
        let masks = [
            (((1u32 << nr.min(16)) - 1) & 0xffff) as __mmask16,
            (((1u64 << nr.saturating_sub(16).min(16)) - 1) & 0xffff) as __mmask16,
        ];
        for (i, row) in acc.iter().enumerate().take(mr) {
            let cr = c.offset(i as isize * rsc);
            for (h, &v) in row.iter().enumerate() {
                let (p, k) = (cr.add(16 * h), masks[h]);
                if k == 0 {
                    continue;
                }
                let v = if alpha == 1.0 {
                    v
                } else {
                    _mm512_mul_ps(v, va)
                };
                let v = if bias.is_null() {
                    v
                } else {
                    _mm512_add_ps(v, _mm512_maskz_loadu_ps(k, bias.add(16 * h)))
                };
                let v = if beta == 0.0 {
                    v
                } else {
                    _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, p), vb, v)
                };
                _mm512_mask_storeu_ps(p, k, v);
            }
        }
    }

    /// # Safety
    /// As for [`Micro::to_buf`]: the CPU has AVX-512F, and `buf` holds the whole tile.
    #[target_feature(enable = "avx512f")]
    unsafe fn to_buf(kc: usize, a: *const f32, rsa: isize, b: *const f32, buf: *mut f32) {
        let acc = avx512_acc(kc, a, rsa, b);
        for (i, row) in acc.iter().enumerate() {
            _mm512_storeu_ps(buf.add(i * 32), row[0]);
            _mm512_storeu_ps(buf.add(i * 32 + 16), row[1]);
        }
    }
}

/// The 6 x 16 product of `kc` steps of `A` (laid out as [`Micro::tile`] describes for
/// `rsa`) and a packed `B` panel, in registers.
///
/// # Safety
/// The CPU has AVX2 and FMA; `a` and `b` hold what [`Micro::tile`] requires for `kc`.
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_acc(kc: usize, a: *const f32, rsa: isize, b: *const f32) -> [[__m256; 2]; 6] {
    let mut acc = [[_mm256_setzero_ps(); 2]; 6];
    if rsa <= 0 {
        // Packed (k-stride MR) or column-major in place (k-stride -rsa).
        let ks = if rsa == 0 { 6 } else { rsa.unsigned_abs() };
        for p in 0..kc {
            let b0 = _mm256_loadu_ps(b.add(p * 16));
            let b1 = _mm256_loadu_ps(b.add(p * 16 + 8));
            let ap = a.add(p * ks);
            for (i, row) in acc.iter_mut().enumerate() {
                let ai = _mm256_broadcast_ss(&*ap.add(i));
                row[0] = _mm256_fmadd_ps(ai, b0, row[0]);
                row[1] = _mm256_fmadd_ps(ai, b1, row[1]);
            }
        }
    } else {
        for p in 0..kc {
            let b0 = _mm256_loadu_ps(b.add(p * 16));
            let b1 = _mm256_loadu_ps(b.add(p * 16 + 8));
            for (i, row) in acc.iter_mut().enumerate() {
                let ai = _mm256_broadcast_ss(&*a.offset(i as isize * rsa + p as isize));
                row[0] = _mm256_fmadd_ps(ai, b0, row[0]);
                row[1] = _mm256_fmadd_ps(ai, b1, row[1]);
            }
        }
    }
    acc
}

impl Micro for Avx2 {
    const MR: usize = 6;

    /// # Safety
    /// As for [`Micro::pack_a`].
    unsafe fn pack_a(
        rows: usize,
        kc: usize,
        a: *const f32,
        rsa: isize,
        csa: isize,
        dst: &mut [f32],
    ) {
        super::pack::pack_a::<6>(rows, kc, a, rsa, csa, dst)
    }
    const NR: usize = 16;

    /// # Safety
    /// As for [`Micro::tile`]: the CPU has AVX2 and FMA, and the operands and tile are valid.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile(
        kc: usize,
        a: *const f32,
        rsa: isize,
        b: *const f32,
        epi: Epi,
        c: *mut f32,
        rsc: isize,
    ) {
        let acc = avx2_acc(kc, a, rsa, b);
        let Epi { alpha, beta, bias } = epi;
        let va = _mm256_set1_ps(alpha);
        let vb = _mm256_set1_ps(beta);
        for (i, row) in acc.iter().enumerate() {
            let cr = c.offset(i as isize * rsc);
            for (h, &v) in row.iter().enumerate() {
                let p = cr.add(8 * h);
                let v = if alpha == 1.0 {
                    v
                } else {
                    _mm256_mul_ps(v, va)
                };
                let v = if bias.is_null() {
                    v
                } else {
                    _mm256_add_ps(v, _mm256_loadu_ps(bias.add(8 * h)))
                };
                let v = if beta == 0.0 {
                    v
                } else {
                    _mm256_fmadd_ps(_mm256_loadu_ps(p), vb, v)
                };
                _mm256_storeu_ps(p, v);
            }
        }
    }

    /// # Safety
    /// As for [`Micro::to_buf`]: the CPU has AVX2 and FMA, and `buf` holds the whole tile.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn to_buf(kc: usize, a: *const f32, rsa: isize, b: *const f32, buf: *mut f32) {
        let acc = avx2_acc(kc, a, rsa, b);
        for (i, row) in acc.iter().enumerate() {
            _mm256_storeu_ps(buf.add(i * 16), row[0]);
            _mm256_storeu_ps(buf.add(i * 16 + 8), row[1]);
        }
    }
}
