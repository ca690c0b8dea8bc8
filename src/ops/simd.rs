//! Elementwise loops compiled more than once: for AVX-512, for AVX2 + FMA, and for the
//! baseline target, picked at run time from what the CPU supports.
//!
//! The default x86-64 target only promises SSE2, so a loop compiled once runs 4 lanes wide
//! even on a CPU with 16. Each loop here is one `#[inline(always)]` body (a plain Rust loop
//! over slices) instantiated inside `#[target_feature]` wrappers, where the compiler
//! vectorises it at that width. Only loops heavy enough to pay for the dispatch live here:
//! GELU's erf is about 30 floating-point operations per element.

use std::sync::OnceLock;

use crate::ops::{gelu_grad_scalar, gelu_scalar};
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
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2,fma")]
            unsafe fn avx512($($arg: $ty),*) {
                body::<Fused>($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2($($arg: $ty),*) {
                body::<Fused>($($arg),*)
            }
            match level() {
                // SAFETY: `level()` reported the features these copies were compiled for.
                #[cfg(target_arch = "x86_64")]
                Level::Avx512 => unsafe { avx512($($arg),*) },
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
            let x = *v;
            *v = 0.5 * x * (1.0 + erf_f32_with::<M>(x * std::f32::consts::FRAC_1_SQRT_2));
        }
    }
}

multiversion! {
    /// `g = g * gelu'(x)` in place.
    fn gelu_grad_f32<M>(x: &[f32], g: &mut [f32]) {
        for (g, &x) in g.iter_mut().zip(x) {
            *g *= gelu_grad_f32_scalar::<M>(x);
        }
    }
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

/// `g = g * gelu'(x)` in place (GELU's backward); `x` and `g` have the same length.
pub fn gelu_grad_inplace<E: Element>(x: &[E], g: &mut [E]) {
    debug_assert_eq!(x.len(), g.len());
    if E::DTYPE == DType::F32 {
        return gelu_grad_f32(bytemuck::cast_slice(x), bytemuck::cast_slice_mut(g));
    }
    for (g, &x) in g.iter_mut().zip(x) {
        *g *= gelu_grad_scalar(x);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every compiled copy agrees with the scalar definition to f32 rounding.
    #[test]
    fn gelu_copies_match_scalar() {
        let xs: Vec<f32> = (0..20_000).map(|i| -12.0 + i as f32 * 1.2e-3).collect();
        let mut y = xs.clone();
        gelu_inplace(&mut y);
        let mut g = vec![1.5f32; xs.len()];
        gelu_grad_inplace(&xs, &mut g);
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
