//! Elementwise loops compiled more than once: for AVX-512, for AVX2 + FMA, and for the
//! baseline target, picked at run time from what the CPU supports.
//!
//! The default x86-64 target only promises SSE2, so a loop compiled once runs 4 lanes wide
//! even on a CPU with 16. Each loop here is one `#[inline(always)]` body (a plain Rust loop
//! over slices) instantiated inside `#[target_feature]` wrappers, where the compiler
//! vectorises it at that width. Only loops heavy enough to pay for the dispatch live here:
//! GELU's erf is about 30 floating-point operations per element.

use std::mem::MaybeUninit;
use std::sync::OnceLock;

use super::scalar::{gelu_grad_scalar, gelu_scalar};
use crate::tensor::element::{erf_f32_with, exp_neg_f32_with, Fused, MulAdd, Unfused};
use crate::tensor::{DType, Element};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Level {
    Avx512,
    Avx2,
    Baseline,
}

fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") && has!("avx512dq") && has!("avx512vl") && has!("fma") {
                return Level::Avx512;
            }
            if has!("avx2") && has!("fma") {
                return Level::Avx2;
            }
        }
        Level::Baseline
    })
}

/// Defines `$name(args)` dispatching to copies of `$body` compiled per [`Level`].
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident<$M:ident>($($arg:ident: $ty:ty),*) $body:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body<$M: MulAdd>($($arg: $ty),*) $body
            /// # Safety
            /// The CPU has AVX-512F/DQ/VL, AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2,fma")]
            unsafe fn avx512($($arg: $ty),*) {
                body::<Fused>($($arg),*)
            }
            /// # Safety
            /// The CPU has AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2($($arg: $ty),*) {
                body::<Fused>($($arg),*)
            }
            match level() {
                // SAFETY: `level()` reported AVX-512F/DQ/VL, AVX2 and FMA, the features this
                // copy was compiled for; the arguments are the safe function's own.
                #[cfg(target_arch = "x86_64")]
                Level::Avx512 => unsafe { avx512($($arg),*) },
                // SAFETY: `level()` reported AVX2 and FMA, the features this copy was
                // compiled for; the arguments are the safe function's own.
                #[cfg(target_arch = "x86_64")]
                Level::Avx2 => unsafe { avx2($($arg),*) },
                _ => body::<Unfused>($($arg),*),
            }
        }
    };
}

multiversion! {
    /// `x = gelu(x)` in place.
    fn gelu_f32<M>(x: &mut [f32]) {
        for v in x.iter_mut() {
            *v = gelu_f32_scalar::<M>(*v);
        }
    }
}

multiversion! {
    /// `y = gelu(x)`, writing every element of `y` (same length as `x`).
    fn gelu_to_f32<M>(x: &[f32], y: &mut [MaybeUninit<f32>]) {
        for (y, &x) in y.iter_mut().zip(x) {
            y.write(gelu_f32_scalar::<M>(x));
        }
    }
}

multiversion! {
    /// `y = g * gelu'(x)`, writing every element of `y` (all three the same length).
    fn gelu_grad_to_f32<M>(x: &[f32], g: &[f32], y: &mut [MaybeUninit<f32>]) {
        for ((y, &x), &g) in y.iter_mut().zip(x).zip(g) {
            y.write(g * gelu_grad_f32_scalar::<M>(x));
        }
    }
}

/// `y = gelu(x)` into uninitialised `y` of the same length: one pass over memory, where a
/// copy and then GELU in place would make two.
pub fn gelu_to<E: Element>(x: &[E], y: &mut [MaybeUninit<E>]) {
    assert_eq!(x.len(), y.len());
    if E::DTYPE == DType::F32 {
        return gelu_to_f32(bytemuck::cast_slice(x), as_f32(y));
    }
    for (y, &x) in y.iter_mut().zip(x) {
        y.write(gelu_scalar(x));
    }
}

/// `y = g * gelu'(x)` (GELU's backward) into uninitialised `y`; all three the same length.
pub fn gelu_grad_to<E: Element>(x: &[E], g: &[E], y: &mut [MaybeUninit<E>]) {
    assert!(x.len() == y.len() && g.len() == y.len());
    if E::DTYPE == DType::F32 {
        return gelu_grad_to_f32(bytemuck::cast_slice(x), bytemuck::cast_slice(g), as_f32(y));
    }
    for ((y, &x), &g) in y.iter_mut().zip(x).zip(g) {
        y.write(g * gelu_grad_scalar(x));
    }
}

/// `y` as `f32` slots; only called when `E` is `f32`.
fn as_f32<E: Element>(y: &mut [MaybeUninit<E>]) -> &mut [MaybeUninit<f32>] {
    // The type itself, not `E::DTYPE`: `Element` is a safe public trait, so another crate's
    // type may claim `DType::F32` with a different size.
    assert!(std::any::TypeId::of::<E>() == std::any::TypeId::of::<f32>());
    // SAFETY: E is f32 (checked), so the slots have the same size, alignment and count.
    unsafe { std::slice::from_raw_parts_mut(y.as_mut_ptr().cast(), y.len()) }
}

/// [`gelu_scalar`] for `f32` without library calls, so that its loop vectorises.
#[inline(always)]
fn gelu_f32_scalar<M: MulAdd>(x: f32) -> f32 {
    0.5 * x * (1.0 + erf_f32_with::<M>(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// [`gelu_grad_scalar`] for `f32` without library calls, so that its loop vectorises:
/// the normal density's `exp` goes through the crate's polynomial (`-x^2/2` clamped at -87,
/// where the density is already below `f32`'s smallest normal).
#[inline(always)]
fn gelu_grad_f32_scalar<M: MulAdd>(x: f32) -> f32 {
    let cdf = 0.5 * (1.0 + erf_f32_with::<M>(x * std::f32::consts::FRAC_1_SQRT_2));
    let pdf = INV_SQRT_2PI * exp_neg_f32_with::<M>((-0.5 * x * x).max(-87.0));
    cdf + x * pdf
}

const INV_SQRT_2PI: f32 = 0.398_942_3;

/// `x = gelu(x)` in place; vectorised at the CPU's width for `f32`.
pub fn gelu_inplace<E: Element>(x: &mut [E]) {
    if E::DTYPE == DType::F32 {
        return gelu_f32(bytemuck::cast_slice_mut(x));
    }
    for v in x.iter_mut() {
        *v = gelu_scalar(*v);
    }
}

/// Transposes one 8 x 8 block of `f32`: `dst[c * ld + r] = src[r * rs + c]` for `r, c < 8`.
/// With AVX, eight vector loads, 24 in-register shuffles and eight vector stores; without,
/// the 64 values one by one.
///
/// # Safety
/// `src` must hold the eight rows of eight values `rs` apart, `dst` the eight rows of eight
/// `ld` apart, and the two must not overlap.
#[inline]
pub(crate) unsafe fn transpose8x8_f32(src: *const f32, rs: usize, dst: *mut f32, ld: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        static AVX: OnceLock<bool> = OnceLock::new();
        if *AVX.get_or_init(|| std::arch::is_x86_feature_detected!("avx")) {
            // SAFETY: AVX was detected at run time; the pointers are the caller's, under
            // this function's contract.
            return x86::transpose8x8_avx(src, rs, dst, ld);
        }
    }
    for r in 0..8 {
        for c in 0..8 {
            *dst.add(c * ld + r) = *src.add(r * rs + c);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// [`super::transpose8x8_f32`] with AVX shuffles.
    ///
    /// # Safety
    /// The CPU has AVX, and the pointers satisfy [`super::transpose8x8_f32`]'s contract.
    #[target_feature(enable = "avx")]
    pub(super) unsafe fn transpose8x8_avx(src: *const f32, rs: usize, dst: *mut f32, ld: usize) {
        let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * rs)));
        // Pairs of rows interleaved, then quadruples, then the 128-bit halves exchanged.
        let t: [__m256; 8] = std::array::from_fn(|i| {
            let (a, b) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
            if i % 2 == 0 {
                _mm256_unpacklo_ps(a, b)
            } else {
                _mm256_unpackhi_ps(a, b)
            }
        });
        // u[q]: columns {q, q + 4} of rows 0-3 (q < 4) or rows 4-7 (q >= 4).
        let u: [__m256; 8] = std::array::from_fn(|q| {
            let base = if q < 4 { 0 } else { 4 };
            let (lo, hi) = (t[base + (q % 4) / 2], t[base + 2 + (q % 4) / 2]);
            if q % 2 == 0 {
                _mm256_shuffle_ps::<0x44>(lo, hi)
            } else {
                _mm256_shuffle_ps::<0xEE>(lo, hi)
            }
        });
        for c in 0..4 {
            _mm256_storeu_ps(
                dst.add(c * ld),
                _mm256_permute2f128_ps::<0x20>(u[c], u[c + 4]),
            );
            _mm256_storeu_ps(
                dst.add((c + 4) * ld),
                _mm256_permute2f128_ps::<0x31>(u[c], u[c + 4]),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_transpose_matches_the_definition() {
        let src: Vec<f32> = (0..8 * 11).map(|i| i as f32).collect();
        let mut dst = vec![-1.0f32; 8 * 13];
        // SAFETY: rows of 11 from offset 2 end at 2 + 7 * 11 + 8 = 87 <= 88 values; columns
        // of 13 from offset 1 end at 1 + 7 * 13 + 8 = 100 <= 104; two distinct vectors.
        unsafe { transpose8x8_f32(src.as_ptr().add(2), 11, dst.as_mut_ptr().add(1), 13) };
        for (i, &d) in dst.iter().enumerate() {
            let (c, r) = (i / 13, i % 13);
            let want = if (1..9).contains(&r) {
                src[(r - 1) * 11 + 2 + c]
            } else {
                -1.0
            };
            assert_eq!(d, want, "dst[{c}][{r}]");
        }
    }

    /// Every compiled copy agrees with the scalar definition to f32 rounding.
    #[test]
    fn gelu_copies_match_scalar() {
        let xs: Vec<f32> = (0..20_000).map(|i| -12.0 + i as f32 * 1.2e-3).collect();
        let mut y = xs.clone();
        gelu_inplace(&mut y);
        let mut y2 = vec![MaybeUninit::uninit(); xs.len()];
        gelu_to(&xs, &mut y2);
        let gs = vec![1.5f32; xs.len()];
        let mut g = vec![MaybeUninit::uninit(); xs.len()];
        gelu_grad_to(&xs, &gs, &mut g);
        // SAFETY: both functions wrote every element.
        let (y2, g): (Vec<f32>, Vec<f32>) = unsafe {
            (
                y2.iter().map(|v| v.assume_init()).collect(),
                g.iter().map(|v| v.assume_init()).collect(),
            )
        };
        assert_eq!(y, y2, "in place and out of place agree bit for bit");
        for (i, &x) in xs.iter().enumerate() {
            let want = gelu_scalar(x as f64);
            assert!(
                (y[i] as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "gelu({x})"
            );
            let want_g = 1.5 * gelu_grad_scalar(x as f64);
            assert!(
                (g[i] as f64 - want_g).abs() <= 2e-6 * (1.0 + want_g.abs()),
                "gelu'({x})"
            );
        }
        let mut nan = [f32::NAN, 1.0];
        gelu_inplace(&mut nan);
        assert!(nan[0].is_nan(), "NaN stays NaN");
        eprintln!("simd level: {:?}", level());
    }
}
