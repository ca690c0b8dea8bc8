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

mod macro_kernel;
mod pack;
mod packed_b;
mod schedule;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod x86;

use macro_kernel::*;
use pack::*;
pub use packed_b::PackedB;
use schedule::*;

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
