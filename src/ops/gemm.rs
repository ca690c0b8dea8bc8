//! `f32` matrix products with the crate's own register-blocked kernels.
//!
//! The layout follows the classic Goto/BLIS scheme: `B` is copied ("packed") in blocks of
//! `KC x NC` into panels `NR` columns wide, `A` in blocks of `MC x KC` into panels `MR` rows
//! tall, and a microkernel multiplies one `MR x KC` panel by one `KC x NR` panel with the
//! whole `MR x NR` tile of `C` held in vector registers. Panels are k-major, so the kernel
//! reads both with unit stride whatever the operands' strides were.
//!
//! Kernels are chosen once at run time from what the CPU supports:
//! - AVX-512F: a 12 x 32 tile (24 of the 32 `zmm` registers accumulate; `A` elements are
//!   broadcast straight from memory into the FMAs);
//! - AVX2 + FMA: a 6 x 16 tile (12 of the 16 `ymm` registers);
//! - anything else: matrixmultiply's `sgemm`.
//!
//! `TARFLOW_GEMM=avx512|avx2|portable` forces a kernel (falling back if the CPU lacks it),
//! which benches and tests use to compare them. A product makes two passes over rayon's
//! threads: one packs all of `B` (or a 16 MB column stripe of it), the next runs tasks of
//! whole output rows (and column panels when there are few rows), each through every `KC`
//! block on its own. Every output element is summed by one thread in a fixed order, so
//! results do not depend on the thread count or scheduling.
//!
//! [`PackedB`] packs a fixed right-hand operand (a layer's weights) once, so products with few
//! rows, as in KV-cached sampling, pay for no packing of the weights at all.

use std::cell::{Cell, RefCell};
use std::sync::OnceLock;

use rayon::prelude::*;

/// Which microkernel runs `f32` products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmKernel {
    /// 12 x 32 tile on AVX-512F.
    Avx512,
    /// 6 x 16 tile on AVX2 + FMA.
    Avx2,
    /// matrixmultiply's `sgemm` (any CPU).
    Portable,
}

impl GemmKernel {
    /// Lower-case name, as `TARFLOW_GEMM` accepts it: `avx512`, `avx2` or `portable`.
    pub fn name(self) -> &'static str {
        match self {
            GemmKernel::Avx512 => "avx512",
            GemmKernel::Avx2 => "avx2",
            GemmKernel::Portable => "portable",
        }
    }

    /// Whether this CPU can run the kernel.
    pub fn supported(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            GemmKernel::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            GemmKernel::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            GemmKernel::Portable => true,
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The fastest kernel this CPU supports.
    pub fn best() -> GemmKernel {
        [GemmKernel::Avx512, GemmKernel::Avx2]
            .into_iter()
            .find(|k| k.supported())
            .unwrap_or(GemmKernel::Portable)
    }

    /// The kernel in use: `TARFLOW_GEMM` if set and supported, otherwise [`GemmKernel::best`].
    pub fn active() -> GemmKernel {
        static ACTIVE: OnceLock<GemmKernel> = OnceLock::new();
        *ACTIVE.get_or_init(|| {
            let forced = std::env::var("TARFLOW_GEMM").ok().and_then(|v| {
                [GemmKernel::Avx512, GemmKernel::Avx2, GemmKernel::Portable]
                    .into_iter()
                    .find(|k| k.name() == v.trim())
            });
            match forced {
                Some(k) if k.supported() => k,
                _ => GemmKernel::best(),
            }
        })
    }

    /// Runs this kernel's microkernel `tiles` times on one `MR x KC` panel of `A` and one
    /// `KC x NR` panel of `B`, both small enough to stay in L1, and returns the flops done.
    /// That is the most a blocked product can reach on this core at the moment (no packing,
    /// no traffic to `C`, no cache misses): benches time it next to a product to tell how
    /// well the blocking feeds the microkernel apart from what the core allows. `Portable`
    /// runs matrixmultiply on the same panels, its own packing included.
    pub fn microkernel_flops(self, tiles: usize) -> f64 {
        let kernel = if self.supported() { self } else { Self::best() };
        let (mr, nr) = match kernel {
            GemmKernel::Avx512 => (12, 32),
            GemmKernel::Avx2 => (6, 16),
            GemmKernel::Portable => (8, 8),
        };
        // On cache lines, as the product's packed panels are (see `with_buf`).
        let lines = |len: usize, f: fn(usize) -> f32| {
            let (mut v, skip) = zeroed_on_line(len);
            for (i, x) in v[skip..skip + len].iter_mut().enumerate() {
                *x = f(i);
            }
            (v, skip)
        };
        let (a, a0) = lines(mr * KC, |i| (i % 13) as f32 * 0.01);
        let (b, b0) = lines(KC * nr, |i| (i % 7) as f32 * 0.01);
        let (a, b) = (&a[a0..a0 + mr * KC], &b[b0..b0 + KC * nr]);
        let mut buf = vec![0.0f32; mr * nr];
        for _ in 0..tiles {
            let (a, b) = (std::hint::black_box(a), std::hint::black_box(b));
            // SAFETY: the kernel is supported; the panels hold `KC x MR` and `KC x NR`
            // values in the packed layouts and `buf` an `MR x NR` tile.
            unsafe {
                match kernel {
                    #[cfg(target_arch = "x86_64")]
                    GemmKernel::Avx512 => <x86::Avx512 as Micro>::to_buf(
                        KC,
                        a.as_ptr(),
                        0,
                        b.as_ptr(),
                        buf.as_mut_ptr(),
                    ),
                    #[cfg(target_arch = "x86_64")]
                    GemmKernel::Avx2 => <x86::Avx2 as Micro>::to_buf(
                        KC,
                        a.as_ptr(),
                        0,
                        b.as_ptr(),
                        buf.as_mut_ptr(),
                    ),
                    _ => matrixmultiply::sgemm(
                        mr,
                        KC,
                        nr,
                        1.0,
                        a.as_ptr(),
                        1,
                        mr as isize,
                        b.as_ptr(),
                        nr as isize,
                        1,
                        0.0,
                        buf.as_mut_ptr(),
                        nr as isize,
                        1,
                    ),
                }
            }
            std::hint::black_box(&mut buf);
        }
        2.0 * (tiles * mr * nr * KC) as f64
    }
}

/// Depth of a packed block: a tile's `MR x KC` of `A` (12 KiB) stays in L1 while the kernel
/// sweeps the block's `KC x NR` panels of `B` (32 KiB each) from L2.
const KC: usize = 256;
/// Rows of a packed `A` block (144 KiB at `KC`, in L2); a multiple of both kernels' `MR`.
const MC: usize = 144;
/// Columns of a packed `B` block (1 MiB at `KC`).
const NC: usize = 1024;
/// Below this many multiply-adds a product stays on the calling thread.
const PAR_MIN_MACS: usize = 1 << 18;

/// What a tile's product becomes when stored: `alpha * AB + bias + beta * C`, with `bias`
/// (one value per column, null for none) and `beta * C` skipped when `beta == 0`, so that `C`
/// may start uninitialised.
#[derive(Clone, Copy)]
struct Epi {
    alpha: f32,
    beta: f32,
    bias: *const f32,
}

impl Epi {
    /// The epilogue for a tile starting at column `j0` of the block it was made for.
    ///
    /// # Safety
    /// A non-null `bias` must point to at least `j0` values of one allocation (the block's
    /// bias, `j0` inside it), so that the offset stays in bounds.
    unsafe fn at(self, j0: usize) -> Epi {
        Epi {
            bias: if self.bias.is_null() {
                self.bias
            } else {
                self.bias.add(j0)
            },
            ..self
        }
    }
}

/// A microkernel: `MR x NR` tile from a `kc x MR` panel of `A` and a `kc x NR` panel of `B`.
trait Micro {
    const MR: usize;
    const NR: usize;
    /// `c = alpha * a.b + beta * c` for a full tile of `C` with unit column stride; with
    /// `beta == 0`, `c` is written without being read. `A` is a packed panel when `rsa == 0`;
    /// with `rsa > 0`, `MR` rows read in place, `rsa` apart, with unit column stride; with
    /// `rsa < 0`, `MR` adjacent rows read in place, columns `-rsa` apart.
    ///
    /// # Safety
    /// The CPU supports the kernel; `A` holds `kc x MR` elements as described and the `B`
    /// panel `kc * NR`; the tile `c[i * rsc + j]`, `i < MR`, `j < NR`, is valid for writes
    /// (and reads if beta != 0).
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile(
        kc: usize,
        a: *const f32,
        rsa: isize,
        b: *const f32,
        epi: Epi,
        c: *mut f32,
        rsc: isize,
    );
    /// The raw product `a.b` into `buf`, row-major `MR x NR`.
    ///
    /// # Safety
    /// As for `tile`, with `buf` holding `MR * NR` elements.
    unsafe fn to_buf(kc: usize, a: *const f32, rsa: isize, b: *const f32, buf: *mut f32);
    /// Like `tile` for the top-left `mr x nr` of a tile (`mr <= MR`, `nr <= NR`); only those
    /// elements of `C` are touched.
    ///
    /// # Safety
    /// As for `tile`, for the `mr x nr` part of `C`.
    #[allow(clippy::too_many_arguments)]
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
        let mut buf = [0.0f32; 12 * 32];
        Self::to_buf(kc, a, rsa, b, buf.as_mut_ptr());
        update_c(&buf, Self::NR, mr, nr, epi, c, rsc, 1);
    }
    /// [`pack_a`] with this kernel's `MR`.
    ///
    /// # Safety
    /// As for [`pack_a`].
    unsafe fn pack_a(
        rows: usize,
        kc: usize,
        a: *const f32,
        rsa: isize,
        csa: isize,
        dst: &mut [f32],
    );
}

#[cfg(target_arch = "x86_64")]
mod x86 {
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
            super::pack_a::<12>(rows, kc, a, rsa, csa, dst)
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
            super::pack_a::<6>(rows, kc, a, rsa, csa, dst)
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
}

/// A raw pointer that may cross threads; every use writes a disjoint region.
#[derive(Clone, Copy)]
struct Ptr(*mut f32);
// SAFETY: a `Ptr` is `C` (or a packing buffer) of a product in progress; the product's
// caller keeps that memory valid until the product returns, and the tasks given copies of
// the pointer write disjoint regions of it (each output element is summed by one task), so
// moving a copy to another thread creates no data race.
unsafe impl Send for Ptr {}
// SAFETY: as for `Send`: shared copies are only used for disjoint writes.
unsafe impl Sync for Ptr {}
/// A read-only operand pointer that may cross threads.
#[derive(Clone, Copy)]
struct CPtr(*const f32);
// SAFETY: a `CPtr` is `A`, `B`, a bias or a packed buffer, which the product's caller keeps
// valid and unwritten until the product returns (`C` may not alias them), so any thread may
// read through it.
unsafe impl Send for CPtr {}
// SAFETY: as for `Send`: nothing writes the memory while shared copies read it.
unsafe impl Sync for CPtr {}

// Methods, not field access: a closure using `.0` would capture the bare pointer field.
impl Ptr {
    fn get(self) -> *mut f32 {
        self.0
    }
}
impl CPtr {
    fn get(self) -> *const f32 {
        self.0
    }
}

thread_local! {
    /// Packing buffers reused across calls on the same thread: a fresh megabyte per product
    /// would be page-faulted in every time. Taken out while in use, so a nested product on
    /// the same thread (rayon may run one there) just allocates its own.
    static BUF_A: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static BUF_B: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static BUF_K: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// One `KC x NC` block of `B`, packed by a task for itself (see [`split`]).
    static BUF_P: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Floats in a 64-byte cache line. [`with_buf`] hands out slices that start on a line: every
/// packed `B` panel is a whole number of lines long, so each of the microkernel's 64-byte
/// loads of `B` then reads one line instead of straddling two (a large `Vec` from the
/// allocator starts 16 bytes past a page boundary). Measured in docs/performance.md.
const LINE_FLOATS: usize = 16;

/// How many floats into `v` its first 64-byte line starts (at most `LINE_FLOATS - 1`).
fn line_offset(v: &[f32]) -> usize {
    v.as_ptr().align_offset(64).min(LINE_FLOATS)
}

/// A zeroed vector with room for `len` floats from its first cache line, and that offset.
fn zeroed_on_line(len: usize) -> (Vec<f32>, usize) {
    let v = vec![0.0f32; len + LINE_FLOATS];
    let start = line_offset(&v);
    (v, start)
}

/// `len` floats of the thread's buffer `key`, starting on a cache line.
fn with_buf<R>(
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
unsafe fn pack_a<const MR: usize>(
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
unsafe fn pack_b_panel(
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
                crate::ops::simd::transpose8x8_f32(src, csb as usize, dst, nr_full);
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

/// Where the microkernel finds a block's rows of `A`.
#[derive(Clone, Copy)]
enum ABlock<'a> {
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
fn read_a_in_place(rsa: isize, csa: isize) -> bool {
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
unsafe fn macro_kernel_a<K: Micro>(
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
unsafe fn macro_kernel<K: Micro>(
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
unsafe fn update_c(
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
unsafe fn scale_c(m: usize, n: usize, beta: f32, c: *mut f32, rsc: isize, csc: isize) {
    for i in 0..m {
        for j in 0..n {
            let p = c.offset(i as isize * rsc + j as isize * csc);
            *p = if beta == 0.0 { 0.0 } else { beta * *p };
        }
    }
}

/// `C = alpha * A B + beta * C` in `f32` with the active kernel; strides in elements, any
/// sign. With `beta == 0`, `C` is only written, so it may start uninitialised.
///
/// # Safety
/// Every element of the `m x k`, `k x n` and `m x n` views must be in bounds, and `C` must
/// not overlap `A` or `B`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: *const f32,
    rsa: isize,
    csa: isize,
    b: *const f32,
    rsb: isize,
    csb: isize,
    beta: f32,
    c: *mut f32,
    rsc: isize,
    csc: isize,
) {
    sgemm_with(
        GemmKernel::active(),
        m,
        k,
        n,
        alpha,
        a,
        rsa,
        csa,
        b,
        rsb,
        csb,
        beta,
        c,
        rsc,
        csc,
    )
}

/// [`sgemm`] with an explicit kernel; an unsupported one falls back to the best supported.
///
/// # Safety
/// As for [`sgemm`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm_with(
    kernel: GemmKernel,
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: *const f32,
    rsa: isize,
    csa: isize,
    b: *const f32,
    rsb: isize,
    csb: isize,
    beta: f32,
    c: *mut f32,
    rsc: isize,
    csc: isize,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 || alpha == 0.0 {
        return scale_c(m, n, beta, c, rsc, csc);
    }
    let kernel = if kernel.supported() {
        kernel
    } else {
        GemmKernel::best()
    };
    let args = (m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc);
    gemm_dispatch(kernel, args, std::ptr::null())
}

/// `C = A B + bias` (bias broadcast over rows, `n` values) with the active kernel, the bias
/// added as each tile is stored instead of in a pass of its own. `C` is only written.
///
/// # Safety
/// As for [`sgemm`], and `bias` holds `n` elements.
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm_bias(
    m: usize,
    k: usize,
    n: usize,
    a: *const f32,
    rsa: isize,
    csa: isize,
    b: *const f32,
    rsb: isize,
    csb: isize,
    bias: *const f32,
    c: *mut f32,
    rsc: isize,
    csc: isize,
) {
    if m == 0 || n == 0 {
        return;
    }
    let kernel = GemmKernel::active();
    if k == 0 || kernel == GemmKernel::Portable {
        for i in 0..m {
            for j in 0..n {
                *c.offset(i as isize * rsc + j as isize * csc) = *bias.add(j);
            }
        }
        return sgemm_with(
            kernel, m, k, n, 1.0, a, rsa, csa, b, rsb, csb, 1.0, c, rsc, csc,
        );
    }
    let args = (m, k, n, 1.0, a, rsa, csa, b, rsb, csb, 0.0, c, rsc, csc);
    gemm_dispatch(kernel, args, bias)
}

thread_local! {
    /// Set while the calling thread runs inside [`serial_scope`].
    static SERIAL: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with every product it makes on this thread kept on this thread. For callers
/// that already spread independent products over rayon (attention's heads): a nested
/// split would only add fork/join hand-offs, since the other threads are busy with their
/// own products.
pub(crate) fn serial_scope<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            SERIAL.with(|s| s.set(self.0));
        }
    }
    let _restore = Restore(SERIAL.with(|s| s.replace(true)));
    f()
}

/// Runs `args` with `kernel` (and `bias`, or null), split over K or blocked.
///
/// # Safety
/// As for [`sgemm`] (or [`sgemm_bias`] with a bias of `n` values), and the CPU supports
/// `kernel`.
unsafe fn gemm_dispatch(kernel: GemmKernel, args: Args, bias: *const f32) {
    let (m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc) = args;
    let serial = SERIAL.with(|s| s.get());
    let ksplit_ok = !serial && use_ksplit(m, k, n);
    match kernel {
        #[cfg(target_arch = "x86_64")]
        GemmKernel::Avx512 if ksplit_ok => ksplit::<x86::Avx512>(args, bias),
        #[cfg(target_arch = "x86_64")]
        GemmKernel::Avx512 => blocked::<x86::Avx512>(args, bias, serial),
        #[cfg(target_arch = "x86_64")]
        GemmKernel::Avx2 if ksplit_ok => ksplit::<x86::Avx2>(args, bias),
        #[cfg(target_arch = "x86_64")]
        GemmKernel::Avx2 => blocked::<x86::Avx2>(args, bias, serial),
        _ => matrixmultiply::sgemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc),
    }
}

type Args = (
    usize,
    usize,
    usize,
    f32,
    *const f32,
    isize,
    isize,
    *const f32,
    isize,
    isize,
    f32,
    *mut f32,
    isize,
    isize,
);

/// Bytes of packed `B` that stay in a core's L2 cache (2 MiB here, shared with blocks of `A`
/// and `C`) while a thread runs several row tasks against it. Tests use a small limit so that
/// their shapes take both task layouts of [`split`].
const L2_B_BYTES: usize = if cfg!(test) { 16 << 10 } else { 1 << 20 };

/// How a stripe's product is divided among tasks: see [`split`].
struct Split {
    /// Row tasks; [`task_rows`] deals the rows out, and a task runs its rows `MC` at a time.
    mtasks: usize,
    /// Column chunks per row task.
    nchunks: usize,
    /// Whether to run the tasks over rayon.
    parallel: bool,
    /// Whether each task packs every `KC x NC` block of `B` itself, just before using it,
    /// instead of all tasks sharing one packing pass.
    private_b: bool,
}

/// Fewest rows a task must have to pack its own copy of `B` (see [`split`]).
const PRIVATE_B_MIN_ROWS: usize = 2 * MC;

/// How to split `m` rows and `panels` column panels into tasks. Serial and small products
/// keep the same tasks, run one after another on the calling thread.
fn split(m: usize, mr: usize, panels: usize, macs: usize, b_bytes: usize, serial: bool) -> Split {
    // Packed `B` larger than L2 comes from L3 once per task, and the first row tile of each
    // block waits on it (the kernel reads 128 bytes of `B` every 12 cycles). So tasks are
    // then few and tall: one per thread, each running all of its rows, `MC` at a time,
    // against a `KC x NC` block of `B` while the block is in L2 (Goto's loop order). With a
    // smaller `B`, a task of `MC` rows keeps its block of `C` in cache over all of `K`.
    //
    // A tall task packs each block of `B` itself, right before using it: the block is then
    // already in the core's L2 when the microkernel first reads it, where a shared packing
    // pass would have written all of `B` (more than L2) out to L3 and the tasks read it
    // back, and one fork/join less. Each thread packs all of `B`, which costs little next to
    // the arithmetic of its hundreds of rows (measured in docs/performance.md).
    let tall = b_bytes > L2_B_BYTES;
    let threads = rayon::current_num_threads();
    let mblocks = m.div_ceil(MC);
    if serial || threads <= 1 || macs < PAR_MIN_MACS {
        return Split {
            mtasks: if tall { 1 } else { mblocks },
            nchunks: 1,
            parallel: false,
            private_b: tall,
        };
    }
    if tall && m >= threads * MC {
        return Split {
            mtasks: threads,
            nchunks: 1,
            parallel: true,
            private_b: m / threads >= PRIVATE_B_MIN_ROWS,
        };
    }
    // A whole number of row tasks per thread: 2,048 rows as 15 blocks of 144 would leave one
    // of two threads idle for a fifteenth of the product.
    let mtasks = (mblocks.div_ceil(threads) * threads).min(m.div_ceil(mr));
    // Enough tasks for every thread to take a few, so one slow thread does not hold up the
    // rest; column chunks only when there are too few row tasks.
    let want = 3 * threads;
    let nchunks = if mtasks >= want {
        1
    } else {
        want.div_ceil(mtasks).min(panels)
    };
    let nchunks = nchunks.max(1);
    Split {
        mtasks,
        nchunks,
        parallel: mtasks * nchunks > 1,
        private_b: false,
    }
}

/// Rows `i0..i1` of row task `t` of `mtasks`: whole `mr`-row tiles dealt out evenly (the
/// last task also takes a partial tile).
fn task_rows(t: usize, mtasks: usize, m: usize, mr: usize) -> (usize, usize) {
    let tiles = m.div_ceil(mr);
    let (t0, t1) = (t * tiles / mtasks, (t + 1) * tiles / mtasks);
    ((t0 * mr).min(m), (t1 * mr).min(m))
}

/// Depth of the slices a long-`K` product is split into (see [`ksplit`]).
const KSPLIT_CHUNK: usize = 512;

/// Whether to split `K` across threads: a long reduction into a small output, like a weight
/// gradient `g^T x` (`K` = every token of the batch). Split by rows and columns, such a
/// product gives each thread a few row tiles and packs all of the long `B` for them; split
/// over `K`, each thread packs only its slice (1.2-1.5x faster at 128 x 3,136 x 128-512).
///
/// The choice depends on the shape alone, not on the number of threads, so that a product
/// sums in the same order on any machine.
fn use_ksplit(m: usize, k: usize, n: usize) -> bool {
    k >= 2 * KSPLIT_CHUNK && m * n <= 512 * 512 && m * n * k >= PAR_MIN_MACS
}

/// `C = alpha A B + bias + beta C` with `K` cut into equal slices of about `KSPLIT_CHUNK`,
/// each slice's product computed on one thread into its own buffer, and the buffers summed
/// in slice order. The slicing depends only on `K`, so the result does not depend on the
/// number of threads.
///
/// # Safety
/// As for [`gemm_dispatch`] with the kernel `K`.
unsafe fn ksplit<K: Micro>(args: Args, bias: *const f32) {
    let (m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc) = args;
    // A multiple of 4 slices keeps 2 or 4 threads evenly loaded (7 slices on 2 threads
    // would leave one idle for an eighth of the time).
    let slices = k.div_ceil(KSPLIT_CHUNK).next_multiple_of(4);
    let per = k.div_ceil(slices);
    // Each slice may be computed as `C^T = B^T A^T` instead, when that needs fewer tiles:
    // a weight gradient with 64 rows fills its last 12-row tile only a third, while its 192
    // or 256 columns would fill 16 or 22 tiles exactly (10-16 % faster measured). Every
    // element still sums the same products in the same order, so the bits do not change.
    let tiles = |rows: usize, cols: usize| rows.div_ceil(K::MR) * cols.div_ceil(K::NR);
    let swap = tiles(n, m) < tiles(m, n);
    let (a, b, c, bias) = (CPtr(a), CPtr(b), Ptr(c), CPtr(bias));
    with_buf(&BUF_K, slices * m * n, |parts| {
        parts
            .par_chunks_mut(m * n)
            .enumerate()
            .for_each(|(t, part)| {
                let k0 = t * per;
                let (a, b) = (
                    a.get().offset(k0 as isize * csa),
                    b.get().offset(k0 as isize * rsb),
                );
                let kt = per.min(k - k0);
                let out = part.as_mut_ptr();
                let sub = if swap {
                    (
                        n, kt, m, alpha, b, csb, rsb, a, csa, rsa, 0.0, out, m as isize, 1,
                    )
                } else {
                    (
                        m, kt, n, alpha, a, rsa, csa, b, rsb, csb, 0.0, out, n as isize, 1,
                    )
                };
                blocked::<K>(sub, std::ptr::null(), true);
            });
        let parts: &[f32] = parts;
        // Each part holds `lines` contiguous lines of `len`: rows of `C`, or of `C^T` when
        // swapped. Summed a chunk of a line at a time, slice after slice (vector adds along
        // the line; each element still sums its slices in order), then stored.
        let (lines, len) = if swap { (n, m) } else { (m, n) };
        (0..lines).into_par_iter().for_each(|l| {
            const CHUNK: usize = 64;
            let mut acc = [0.0f32; CHUNK];
            for x0 in (0..len).step_by(CHUNK) {
                let at = l * len + x0;
                let acc = &mut acc[..CHUNK.min(len - x0)];
                acc.copy_from_slice(&parts[at..at + acc.len()]);
                for part in parts.chunks_exact(m * n).skip(1) {
                    for (a, &p) in acc.iter_mut().zip(&part[at..]) {
                        *a += p;
                    }
                }
                for (x, &v) in acc.iter().enumerate() {
                    let (i, j) = if swap { (x0 + x, l) } else { (l, x0 + x) };
                    let v = if bias.get().is_null() {
                        v
                    } else {
                        v + *bias.get().add(j)
                    };
                    let p = c.get().offset(i as isize * rsc + j as isize * csc);
                    *p = if beta == 0.0 { v } else { v + beta * *p };
                }
            }
        });
    });
}

/// Floats of packed `B` a product holds at once (16 MB). A larger `B` is multiplied in
/// column stripes, each packed whole and then used. Tests use a small limit so that their
/// shapes take several stripes.
const PACK_B_MAX: usize = if cfg!(test) { 64 << 10 } else { 4 << 20 };

/// The blocked product; `serial` keeps it on the calling thread.
///
/// Each column stripe of `B` (all of `B` for the products a TarFlow runs) is packed in one
/// parallel pass, as `KC x NC` blocks of `NR`-wide panels, and then every task (a block of
/// `MC` rows times a range of panels) runs all of its `KC` and `NC` blocks on its own. Two
/// fork/joins per stripe instead of two per `KC` block: between blocks, rayon's workers
/// would go to sleep and have to be woken for little work each time. Tall tasks with enough
/// rows (a `B` larger than L2) skip the shared pass and pack their own blocks as they go (see
/// [`split`]): one fork/join.
///
/// # Safety
/// As for [`gemm_dispatch`] with the kernel `K`.
unsafe fn blocked<K: Micro>(args: Args, bias: *const f32, serial: bool) {
    let (m, k, n, ..) = args;
    let nr = K::NR;
    // NC is a multiple of every kernel's NR, so NC blocks start on panel boundaries.
    let stripe = (PACK_B_MAX / (k * NC)).max(1) * NC;
    let stripe = stripe.min(n.div_ceil(nr) * nr);
    let plan = |cols: usize| {
        let panels = cols.div_ceil(nr);
        let b_bytes = k * panels * nr * std::mem::size_of::<f32>();
        split(m, K::MR, panels, m * k * cols, b_bytes, serial)
    };
    // The shared buffer only for stripes whose tasks share one packing of `B`.
    let shared = (0..n)
        .step_by(stripe)
        .any(|js| !plan(stripe.min(n - js)).private_b);
    with_buf(&BUF_B, if shared { k * stripe } else { 0 }, |bp| {
        for js in (0..n).step_by(stripe) {
            let cols = stripe.min(n - js);
            stripe_product::<K>(args, bias, plan(cols), js, cols, bp);
        }
    });
}

/// Offset in a packed stripe of the `KC x NC` block at columns `jc` and depth `pc` (both
/// relative to the stripe): earlier `NC` blocks hold `k` rows of their panels, earlier `KC`
/// blocks of this one `KC` rows of its `panels`.
fn block_offset(k: usize, nr: usize, jc: usize, pc: usize, panels: usize) -> usize {
    jc * k + pc * panels * nr
}

/// [`blocked`] for the `cols` columns of `B` and `C` from column `js`.
///
/// # Safety
/// As for [`blocked`], with `js + cols <= n`, `sp` planned for these `cols`, and `bp` large
/// enough for the stripe's packed panels when the plan shares them.
unsafe fn stripe_product<K: Micro>(
    args: Args,
    bias: *const f32,
    sp: Split,
    js: usize,
    cols: usize,
    bp: &mut [f32],
) {
    let (m, k, _, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc) = args;
    let nr = K::NR;
    let panels = cols.div_ceil(nr);
    let Split {
        mtasks,
        nchunks,
        parallel,
        private_b,
    } = sp;
    let (a, b, c, bias) = (
        CPtr(a),
        CPtr(b.offset(js as isize * csb)),
        Ptr(c),
        CPtr(bias),
    );
    // Pack: one unit per (NC block, KC block, panel). Only the last NC block may be
    // narrower, so a unit's NC block is its index over a full block's unit count.
    let full_units = k.div_ceil(KC) * (NC / nr);
    let units = (cols / NC) * full_units + k.div_ceil(KC) * (cols % NC).div_ceil(nr);
    let dst = Ptr(bp.as_mut_ptr());
    let pack = |u: usize| {
        let (jc, u) = (u / full_units * NC, u % full_units);
        let ncols = NC.min(cols - jc);
        let np = ncols.div_ceil(nr);
        let (pb, q) = (u / np, u % np);
        let pc = pb * KC;
        let kc = KC.min(k - pc);
        let off = block_offset(k, nr, jc, pc, np) + q * kc * nr;
        let panel = std::slice::from_raw_parts_mut(dst.get().add(off), kc * nr);
        let src = b.get().offset(pc as isize * rsb + jc as isize * csb);
        pack_b_panel(nr, q, ncols, kc, src, rsb, csb, panel);
    };
    // Private tasks pack their own blocks below.
    if !private_b && parallel {
        (0..units).into_par_iter().for_each(pack);
    } else if !private_b {
        (0..units).for_each(pack);
    }
    let bp: &[f32] = bp;
    let per = panels.div_ceil(nchunks);
    let task = |t: usize| {
        let (ib, ch) = (t / nchunks, t % nchunks);
        let (q_lo, q_hi) = ((ch * per).min(panels), ((ch + 1) * per).min(panels));
        let (t0, t1) = task_rows(ib, mtasks, m, K::MR);
        for jc in (0..cols).step_by(NC) {
            let ncols = NC.min(cols - jc);
            let np = ncols.div_ceil(nr);
            // This chunk's panels inside the NC block.
            let first = jc / nr;
            let qs = q_lo.max(first) - first..q_hi.min(first + np).max(first) - first;
            if qs.is_empty() {
                continue;
            }
            for pc in (0..k).step_by(KC) {
                let kc = KC.min(k - pc);
                let run = |block: &[f32]| {
                    // The bias goes in with the first K block; later ones accumulate.
                    let epi = Epi {
                        alpha,
                        beta: if pc == 0 { beta } else { 1.0 },
                        bias: if pc == 0 && !bias.get().is_null() {
                            bias.get().add(js + jc)
                        } else {
                            std::ptr::null()
                        },
                    };
                    // MC is a multiple of MR, so every block but a task's last is whole tiles.
                    for i0 in (t0..t1).step_by(MC) {
                        macro_kernel_a::<K>(
                            MC.min(t1 - i0),
                            ncols,
                            kc,
                            a.get().offset(i0 as isize * rsa + pc as isize * csa),
                            rsa,
                            csa,
                            block,
                            qs.clone(),
                            epi,
                            c.get().offset(i0 as isize * rsc + (js + jc) as isize * csc),
                            rsc,
                            csc,
                        );
                    }
                };
                if private_b {
                    // The whole NC block: private tasks are never cut into column chunks.
                    with_buf(&BUF_P, np * kc * nr, |block| {
                        let src = b.get().offset(pc as isize * rsb + jc as isize * csb);
                        for (q, panel) in block.chunks_exact_mut(kc * nr).enumerate() {
                            pack_b_panel(nr, q, ncols, kc, src, rsb, csb, panel);
                        }
                        run(block);
                    });
                } else {
                    run(&bp[block_offset(k, nr, jc, pc, np)..]);
                }
            }
        }
    };
    if parallel {
        (0..mtasks * nchunks).into_par_iter().for_each(task);
    } else {
        (0..mtasks * nchunks).for_each(task);
    }
}

/// A right-hand operand `B` (`k x n`) packed once for many products, as a layer's weights
/// are during sampling: every product with it skips packing `B`, which for a few rows costs
/// as much as the arithmetic. Panels span all of `k`.
#[derive(Clone, Debug)]
pub struct PackedB {
    kernel: GemmKernel,
    k: usize,
    n: usize,
    /// Panels for the register kernels from `data[start]`, the first cache line; row-major
    /// `k x n` for the portable one (`start` 0).
    data: Vec<f32>,
    start: usize,
}

impl PackedB {
    /// Packs `B` with element `(p, j)` at `b[p * rsb + j * csb]` for the active kernel.
    ///
    /// # Panics
    /// If the view reaches outside `b` (an internal invariant: callers pass their own
    /// buffers).
    pub fn new(k: usize, n: usize, b: &[f32], rsb: usize, csb: usize) -> PackedB {
        if k > 0 && n > 0 {
            // Checked: a wrapped product could pass the test and send the packing outside `b`.
            let last = (k - 1)
                .checked_mul(rsb)
                .zip((n - 1).checked_mul(csb))
                .and_then(|(r, c)| r.checked_add(c));
            assert!(
                last.is_some_and(|l| l < b.len()),
                "PackedB: view out of bounds"
            );
        }
        let kernel = GemmKernel::active();
        let nr = match kernel {
            GemmKernel::Avx512 => 32,
            GemmKernel::Avx2 => 16,
            GemmKernel::Portable => 0,
        };
        if nr == 0 {
            let data = (0..k)
                .flat_map(|p| (0..n).map(move |j| b[p * rsb + j * csb]))
                .collect();
            return PackedB {
                kernel,
                k,
                n,
                data,
                start: 0,
            };
        }
        let len = n.div_ceil(nr) * k * nr;
        let (mut data, start) = zeroed_on_line(len);
        let panels = data[start..start + len].chunks_mut((k * nr).max(1));
        for (q, panel) in panels.enumerate() {
            // SAFETY: the assertion above keeps the k x n view inside b.
            unsafe { pack_b_panel(nr, q, n, k, b.as_ptr(), rsb as isize, csb as isize, panel) };
        }
        PackedB {
            kernel,
            k,
            n,
            data,
            start,
        }
    }

    /// Rows of `B` (the inner dimension of the product).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Columns of `B` (and of every product's `C`).
    pub fn n(&self) -> usize {
        self.n
    }

    /// `C = A B + beta * C` on the calling thread, `A` `m x k` with element `(i, p)` at
    /// `a[i * rsa + p * csa]`, `C` `m x n` row-major with rows `ldc` apart.
    ///
    /// # Panics
    /// If a view reaches outside its slice.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &self,
        m: usize,
        a: &[f32],
        rsa: usize,
        csa: usize,
        beta: f32,
        c: &mut [f32],
        ldc: usize,
    ) {
        let (k, n) = (self.k, self.n);
        if m == 0 || n == 0 {
            return;
        }
        // Checked: a wrapped product could pass a test and send the kernel outside a slice.
        let end_c = (m - 1).checked_mul(ldc).and_then(|r| r.checked_add(n));
        assert!(
            end_c.is_some_and(|e| e <= c.len()) && ldc >= n,
            "PackedB::gemm: C out of bounds"
        );
        if k > 0 {
            let last_a = (m - 1)
                .checked_mul(rsa)
                .zip((k - 1).checked_mul(csa))
                .and_then(|(r, c)| r.checked_add(c));
            assert!(
                last_a.is_some_and(|l| l < a.len()),
                "PackedB::gemm: A out of bounds"
            );
        }
        let (ap, cp) = (a.as_ptr(), c.as_mut_ptr());
        let (rsa, csa, ldc) = (rsa as isize, csa as isize, ldc as isize);
        // SAFETY: bounds asserted above; c is a distinct &mut slice.
        unsafe {
            if k == 0 {
                return scale_c(m, n, beta, cp, ldc, 1);
            }
            match self.kernel {
                #[cfg(target_arch = "x86_64")]
                GemmKernel::Avx512 => self.run::<x86::Avx512>(m, ap, rsa, csa, beta, cp, ldc),
                #[cfg(target_arch = "x86_64")]
                GemmKernel::Avx2 => self.run::<x86::Avx2>(m, ap, rsa, csa, beta, cp, ldc),
                _ => matrixmultiply::sgemm(
                    m,
                    k,
                    n,
                    1.0,
                    ap,
                    rsa,
                    csa,
                    self.data.as_ptr(),
                    n as isize,
                    1,
                    beta,
                    cp,
                    ldc,
                    1,
                ),
            }
        }
    }

    /// [`PackedB::gemm`] with the kernel `K`, after its bounds checks.
    ///
    /// # Safety
    /// The CPU supports `K` (the one this `B` was packed for); `A`'s `m x k` view at `a` must
    /// be readable, and `C`'s `m x n` rows `ldc` apart at `c` valid for writes (and reads if
    /// `beta != 0`), overlapping neither `A` nor the packed data.
    #[allow(clippy::too_many_arguments)]
    unsafe fn run<K: Micro>(
        &self,
        m: usize,
        a: *const f32,
        rsa: isize,
        csa: isize,
        beta: f32,
        c: *mut f32,
        ldc: isize,
    ) {
        let (k, n) = (self.k, self.n);
        let panels = n.div_ceil(K::NR);
        for i0 in (0..m).step_by(MC) {
            let rows = MC.min(m - i0);
            macro_kernel_a::<K>(
                rows,
                n,
                k,
                a.offset(i0 as isize * rsa),
                rsa,
                csa,
                &self.data[self.start..],
                0..panels,
                Epi {
                    alpha: 1.0,
                    beta,
                    bias: std::ptr::null(),
                },
                c.offset(i0 as isize * ldc),
                ldc,
                1,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(
        m: usize,
        k: usize,
        n: usize,
        a: &[f32],
        (rsa, csa): (usize, usize),
        b: &[f32],
        (rsb, csb): (usize, usize),
    ) -> Vec<f64> {
        let mut c = vec![0.0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                for p in 0..k {
                    c[i * n + j] += a[i * rsa + p * csa] as f64 * b[p * rsb + j * csb] as f64;
                }
            }
        }
        c
    }

    fn data(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| {
                let h = (i as u32 ^ seed)
                    .wrapping_mul(2_654_435_761)
                    .rotate_left(13);
                (h % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    fn kernels() -> Vec<GemmKernel> {
        let all = [GemmKernel::Avx512, GemmKernel::Avx2, GemmKernel::Portable];
        let mut ks: Vec<_> = all.into_iter().filter(|k| k.supported()).collect();
        if ks.len() < all.len() {
            eprintln!("gemm tests: this CPU runs only {ks:?}");
        }
        ks.dedup();
        ks
    }

    /// Every kernel against an f64 reference over shapes that hit full tiles, edges in both
    /// directions, several K blocks, every operand layout, alpha/beta and strided C.
    #[test]
    fn microkernel_ceiling_counts_its_flops() {
        for kernel in [GemmKernel::Avx512, GemmKernel::Avx2, GemmKernel::Portable] {
            let ran = if kernel.supported() {
                kernel
            } else {
                GemmKernel::best()
            };
            let tile = match ran {
                GemmKernel::Avx512 => 12 * 32,
                GemmKernel::Avx2 => 6 * 16,
                GemmKernel::Portable => 8 * 8,
            };
            assert_eq!(kernel.microkernel_flops(3), (2 * 3 * tile * KC) as f64);
        }
    }

    /// Packing buffers start on a cache line, however the thread's buffer grew, and so do
    /// prepacked weights.
    #[test]
    fn packed_buffers_start_on_cache_lines() {
        for len in [1, 100, 5_000, 70_000, 300_000, 1 << 20, 3] {
            with_buf(&BUF_B, len, |buf| {
                assert_eq!(buf.len(), len);
                assert_eq!(buf.as_ptr() as usize % 64, 0, "len {len}");
            });
        }
        let b = data(40 * 70, 3);
        for (rsb, csb) in [(70, 1), (1, 40)] {
            let packed = PackedB::new(40, 70, &b, rsb, csb);
            if packed.kernel != GemmKernel::Portable {
                assert_eq!(packed.data[packed.start..].as_ptr() as usize % 64, 0);
            }
        }
    }

    /// Packing `A` and `B` is a pure rearrangement: every path (8 x 8 transposed blocks,
    /// vector copies, the element-by-element remainders and zero padding) against the
    /// definition, for row- and column-major operands.
    #[test]
    fn packing_matches_the_definition() {
        let src = data(64 * 80, 7);
        for &(rows, kc) in &[
            (12usize, 8usize),
            (12, 13),
            (25, 7),
            (24, 33),
            (5, 4),
            (30, 1),
        ] {
            // Row-major rows 80 apart, and column-major columns 70 apart.
            for (rsa, csa) in [(80isize, 1isize), (1, 70)] {
                for mr in [12usize, 6] {
                    let panels = rows.div_ceil(mr);
                    let mut got = vec![f32::NAN; panels * mr * kc];
                    // SAFETY: row-major, the last element read is (rows - 1) * 80 + kc - 1;
                    // column-major (rows - 1) + (kc - 1) * 70; both below 64 * 80. `got`
                    // holds the `panels * mr * kc` values `pack_a` writes; the pack kernels
                    // are plain Rust, so any CPU runs them.
                    unsafe {
                        match mr {
                            12 => pack_a::<12>(rows, kc, src.as_ptr(), rsa, csa, &mut got),
                            _ => pack_a::<6>(rows, kc, src.as_ptr(), rsa, csa, &mut got),
                        }
                    }
                    for (at, &g) in got.iter().enumerate() {
                        let (panel, p, i) = (at / (mr * kc), at % (mr * kc) / mr, at % mr);
                        let r = panel * mr + i;
                        let want = if r < rows {
                            src[(r as isize * rsa + p as isize * csa) as usize]
                        } else {
                            0.0
                        };
                        assert_eq!(
                            g, want,
                            "A {rows}x{kc} mr {mr} strides ({rsa}, {csa}) at {at}"
                        );
                    }
                }
            }
        }
        for &(cols, kc, q) in &[
            (32usize, 8usize, 0usize),
            (70, 13, 1),
            (70, 9, 2),
            (40, 16, 1),
            (16, 5, 0),
        ] {
            // Row-major, column-major, and column-major with the columns flipped (from the
            // last one at offset 4900).
            for (rsb, csb, base) in [(80isize, 1isize, 0isize), (1, 70, 0), (1, -70, 4900)] {
                for nr in [32usize, 16] {
                    if q * nr >= cols {
                        continue;
                    }
                    let mut got = vec![f32::NAN; kc * nr];
                    // SAFETY: `base` is 0 or 4900, inside the 5120 values of `src`.
                    let b = unsafe { src.as_ptr().offset(base) };
                    // SAFETY: every element read, base + p * rsb + j * csb for p < kc and
                    // j < cols, lies in 0..5120 for the strides above (the flipped layout
                    // starts column j at 4900 - 70 j, from 4900 down to 70); `got` holds the
                    // `kc * nr` values of one panel.
                    unsafe { pack_b_panel(nr, q, cols, kc, b, rsb, csb, &mut got) };
                    for (at, &g) in got.iter().enumerate() {
                        let (p, j) = (at / nr, q * nr + at % nr);
                        let want = if j < cols {
                            src[(base + p as isize * rsb + j as isize * csb) as usize]
                        } else {
                            0.0
                        };
                        assert_eq!(
                            g, want,
                            "B panel {q} of {kc}x{cols} nr {nr} strides ({rsb}, {csb}) at {at}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn split_over_k_gives_the_same_bits_in_either_orientation() {
        // 64 x 96 is split over K as 96 x 64 slices (fewer tiles); computing C^T = B^T A^T
        // directly must give the very same bits.
        let (m, k, n) = (64, 1100, 96);
        let (a, b) = (data(m * k, 6), data(k * n, 7));
        for kernel in kernels() {
            let mut c = vec![0.0f32; m * n];
            let mut ct = vec![0.0f32; n * m];
            // SAFETY: `a` (m x k), `b` (k x n), `c` (m x n) and `ct` (n x m) are distinct
            // vectors of exactly the sizes the strides address; `kernels()` lists only
            // kernels this CPU supports.
            unsafe {
                let (ap, bp) = (a.as_ptr(), b.as_ptr());
                let (k_, n_) = (k as isize, n as isize);
                sgemm_with(
                    kernel,
                    m,
                    k,
                    n,
                    1.0,
                    ap,
                    k_,
                    1,
                    bp,
                    n_,
                    1,
                    0.0,
                    c.as_mut_ptr(),
                    n_,
                    1,
                );
                let m_ = m as isize;
                sgemm_with(
                    kernel,
                    n,
                    k,
                    m,
                    1.0,
                    bp,
                    1,
                    n_,
                    ap,
                    1,
                    k_,
                    0.0,
                    ct.as_mut_ptr(),
                    m_,
                    1,
                );
            }
            for i in 0..m {
                for j in 0..n {
                    assert_eq!(
                        c[i * n + j].to_bits(),
                        ct[j * m + i].to_bits(),
                        "{kernel:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn kernels_match_reference() {
        let shapes = [
            (1, 1, 1),
            (5, 3, 7),
            (12, 9, 32),
            (13, 300, 33),
            (150, 257, 70),
            (49, 64, 49),
            // Two column stripes (under the tests' PACK_B_MAX); three NC blocks in one.
            (300, 40, 1100),
            (30, 8, 2100),
            // Long K into a small output: split over K; the second as C^T = B^T A^T.
            (20, 1500, 37),
            (64, 1100, 96),
        ];
        for kernel in kernels() {
            for &(m, k, n) in &shapes {
                for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                    let a = data(m * k, 1);
                    let b = data(k * n, 2);
                    let sa = if ta { (1, m) } else { (k, 1) };
                    let sb = if tb { (1, k) } else { (n, 1) };
                    let want = reference(m, k, n, &a, sa, &b, sb);
                    for (alpha, beta, col_major_c) in
                        [(1.0, 0.0, false), (0.5, 2.0, false), (1.0, 1.0, true)]
                    {
                        let c0 = data(m * n, 3);
                        let mut c = c0.clone();
                        let (rsc, csc) = if col_major_c { (1, m) } else { (n, 1) };
                        // SAFETY: `a`, `b` and `c` are distinct vectors of m*k, k*n and m*n
                        // values, each addressed by its strides within those sizes;
                        // `kernels()` lists only kernels this CPU supports.
                        unsafe {
                            sgemm_with(
                                kernel,
                                m,
                                k,
                                n,
                                alpha,
                                a.as_ptr(),
                                sa.0 as isize,
                                sa.1 as isize,
                                b.as_ptr(),
                                sb.0 as isize,
                                sb.1 as isize,
                                beta,
                                c.as_mut_ptr(),
                                rsc as isize,
                                csc as isize,
                            )
                        };
                        for i in 0..m {
                            for j in 0..n {
                                let got = c[i * rsc + j * csc] as f64;
                                let w = alpha as f64 * want[i * n + j]
                                    + beta as f64 * c0[i * rsc + j * csc] as f64;
                                let tol = 1e-5 * (k as f64).sqrt() * (1.0 + w.abs());
                                assert!(
                                    (got - w).abs() <= tol,
                                    "{kernel:?} {m}x{k}x{n} ta={ta} tb={tb} alpha={alpha} \
                                     beta={beta}: C[{i},{j}] = {got}, want {w}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// `C = A B` for row-major `A` (`m x k`) and `B` (`k x n`) on a pool of `threads`; `C`
    /// starts as NaN, which the product (`beta = 0`) must never read.
    fn row_major_in_pool(
        kernel: GemmKernel,
        threads: usize,
        (m, k, n): (usize, usize, usize),
        a: &[f32],
        b: &[f32],
    ) -> Vec<f32> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let mut c = vec![f32::NAN; m * n];
        // SAFETY: the callers pass `a` and `b` of m*k and k*n values, row-major as the
        // strides say; `c` is a fresh m*n vector; `kernel` comes from `kernels()` (supported).
        pool.install(|| unsafe {
            sgemm_with(
                kernel,
                m,
                k,
                n,
                1.0,
                a.as_ptr(),
                k as isize,
                1,
                b.as_ptr(),
                n as isize,
                1,
                0.0,
                c.as_mut_ptr(),
                n as isize,
                1,
            )
        });
        c
    }

    /// Tall tasks with enough rows pack their own blocks of `B` (one thread, or two here),
    /// and with fewer rows per task share one packing (three): the same bits either way, and
    /// the reference's values.
    #[test]
    fn tasks_packing_their_own_b_match_the_shared_packing() {
        // Two K blocks; the second shape also two column stripes and two NC blocks.
        for &(m, k, n) in &[(640usize, 300usize, 200usize), (600, 300, 1100)] {
            let b_bytes = k * n.div_ceil(32) * 32 * 4;
            let plan = |threads| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| split(m, 12, n.div_ceil(32), m * k * n, b_bytes, false))
            };
            assert!(plan(1).private_b && !plan(1).parallel);
            assert!(plan(2).private_b && plan(2).parallel);
            assert!(!plan(3).private_b && plan(3).parallel);
            let (a, b) = (data(m * k, 12), data(k * n, 13));
            let want = reference(m, k, n, &a, (k, 1), &b, (n, 1));
            for kernel in kernels() {
                let one = row_major_in_pool(kernel, 1, (m, k, n), &a, &b);
                for (&got, &w) in one.iter().zip(&want) {
                    let got = got as f64;
                    assert!(
                        (got - w).abs() <= 1e-4 * (1.0 + w.abs()),
                        "{kernel:?}: {got} vs {w}"
                    );
                }
                for threads in [2, 3] {
                    let c = row_major_in_pool(kernel, threads, (m, k, n), &a, &b);
                    assert!(
                        one.iter().zip(&c).all(|(x, y)| x.to_bits() == y.to_bits()),
                        "{kernel:?} {m}x{k}x{n}: {threads} threads differ from 1"
                    );
                }
            }
        }
    }

    /// The split of a product over threads changes which thread computes what, never the
    /// order in which any output element is summed: bit-identical results on 1, 2 and 3
    /// threads (row tasks, column chunks, stripes and the K split all differ between them).
    #[test]
    fn results_do_not_depend_on_thread_count() {
        let shapes = [
            (300, 40, 1100),
            (200, 300, 96),
            (64, 2100, 40),
            (7, 1500, 700),
        ];
        for kernel in kernels() {
            for &(m, k, n) in &shapes {
                let (a, b) = (data(m * k, 4), data(k * n, 5));
                let one = row_major_in_pool(kernel, 1, (m, k, n), &a, &b);
                for threads in [2, 3] {
                    let c = row_major_in_pool(kernel, threads, (m, k, n), &a, &b);
                    assert!(
                        one.iter().zip(&c).all(|(x, y)| x.to_bits() == y.to_bits()),
                        "{kernel:?} {m}x{k}x{n}: {threads} threads differ from 1"
                    );
                }
            }
        }
    }

    /// The bias epilogue adds the bias once, also when K spans several blocks, and at edges.
    #[test]
    fn bias_epilogue_matches_reference() {
        for &(m, k, n) in &[
            (13, 300, 70),
            (3, 5, 7),
            (40, 64, 32),
            (25, 600, 33),
            (30, 1300, 70),
            // Split over K, each slice as C^T = B^T A^T: the bias goes along C's columns.
            (64, 1100, 96),
        ] {
            let (a, b, bias) = (data(m * k, 9), data(k * n, 10), data(n, 11));
            let want = reference(m, k, n, &a, (k, 1), &b, (1, k));
            let mut c = vec![f32::NAN; m * n];
            // SAFETY: `a` (m x k row-major), `b` (read as k x n with strides (1, k)), `bias`
            // (n values) and `c` (m x n) are distinct vectors of exactly those sizes.
            unsafe {
                sgemm_bias(
                    m,
                    k,
                    n,
                    a.as_ptr(),
                    k as isize,
                    1,
                    b.as_ptr(),
                    1,
                    k as isize,
                    bias.as_ptr(),
                    c.as_mut_ptr(),
                    n as isize,
                    1,
                )
            };
            for i in 0..m {
                for j in 0..n {
                    let w = want[i * n + j] + bias[j] as f64;
                    let got = c[i * n + j] as f64;
                    assert!(
                        (got - w).abs() <= 1e-4 * (1.0 + w.abs()),
                        "{m}x{k}x{n} [{i},{j}]"
                    );
                }
            }
        }
    }

    /// beta = 0 never reads C: NaN there must not leak into the result.
    #[test]
    fn beta_zero_ignores_c() {
        for kernel in kernels() {
            let (m, k, n) = (14, 5, 35);
            let (a, b) = (data(m * k, 4), data(k * n, 5));
            // The helper's C starts as NaN.
            let c = row_major_in_pool(kernel, 1, (m, k, n), &a, &b);
            assert!(c.iter().all(|v| v.is_finite()), "{kernel:?}");
        }
    }

    /// Prepacked weights give the same product as the general path, for the `[out, in]`
    /// weight layout read transposed.
    #[test]
    fn packed_b_matches_reference() {
        for &(m, k, n) in &[(1, 128, 384), (8, 512, 128), (13, 7, 5), (30, 64, 33)] {
            let a = data(m * k, 6);
            let w = data(n * k, 7); // [n, k]
            let packed = PackedB::new(k, n, &w, 1, k);
            let want = reference(m, k, n, &a, (k, 1), &w, (1, k));
            for beta in [0.0f32, 1.0] {
                let c0 = data(m * n, 8);
                let mut c = c0.clone();
                packed.gemm(m, &a, k, 1, beta, &mut c, n);
                for i in 0..m * n {
                    let w = want[i] + beta as f64 * c0[i] as f64;
                    assert!(
                        (c[i] as f64 - w).abs() <= 1e-4 * (1.0 + w.abs()),
                        "{m}x{k}x{n} beta {beta}: {} vs {w}",
                        c[i]
                    );
                }
            }
        }
    }
}
