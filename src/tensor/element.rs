//! Element types a tensor can hold.
//!
//! Tensors are generic over [`Element`], implemented for `f32` (training, sampling) and `f64`
//! (audits and gradient checks). Each op is written once against this trait. 16-bit formats
//! are storage formats only: see [`crate::Tensor::to_f16_vec`] and friends.

use std::fmt::{Debug, Display};
use std::iter::Sum;
use std::ops::{Add, AddAssign, Div, DivAssign, Mul, MulAssign, Neg, Sub, SubAssign};

/// Names of the element types, used in error messages and file formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit IEEE float (`f32`).
    F32,
    /// 64-bit IEEE float (`f64`).
    F64,
}

impl DType {
    /// Lower-case name, `"f32"` or `"f64"`; also what `Display` prints.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
        }
    }
}

impl Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A floating-point element type.
pub trait Element:
    Copy
    + Send
    + Sync
    + 'static
    + Debug
    + Display
    + Default
    + PartialEq
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
    + Sum
    + bytemuck::Pod
{
    /// The [`DType`] tag of this type, for run-time dispatch and messages.
    const DTYPE: DType;
    /// Additive identity, `0.0`.
    const ZERO: Self;
    /// Multiplicative identity, `1.0`.
    const ONE: Self;
    /// Negative infinity: the start value of max reductions and masked attention scores.
    const NEG_INFINITY: Self;
    /// Machine epsilon.
    const EPSILON: Self;

    /// Converts with an `as` cast (exact for `f64`; `f32` rounds to nearest and overflows
    /// to infinity).
    fn from_f64(v: f64) -> Self;
    /// Converts to `f64`; exact.
    fn to_f64(self) -> f64;
    /// Converts from `f32`; exact.
    fn from_f32(v: f32) -> Self;
    /// Converts with an `as` cast (exact for `f32`; `f64` rounds to nearest and overflows
    /// to infinity).
    fn to_f32(self) -> f32;
    /// Converts a count, through `f64` (used for means and normalising factors).
    fn from_usize(v: usize) -> Self {
        Self::from_f64(v as f64)
    }

    /// `e^self`.
    fn exp(self) -> Self;
    /// Natural logarithm.
    fn ln(self) -> Self;
    /// Square root (NaN for negative values).
    fn sqrt(self) -> Self;
    /// Hyperbolic tangent.
    fn tanh(self) -> Self;
    /// The error function: [`erf_f32`] for `f32`, libm's `erf` for `f64`.
    fn erf(self) -> Self;
    /// Absolute value.
    fn abs(self) -> Self;
    /// `self` raised to the power `p`.
    fn powf(self, p: Self) -> Self;
    /// The larger of two values; a NaN operand is ignored, as in [`f32::max`].
    fn max(self, o: Self) -> Self;
    /// The smaller of two values; a NaN operand is ignored, as in [`f32::min`].
    fn min(self, o: Self) -> Self;
    /// True unless the value is infinite or NaN.
    fn is_finite(self) -> bool;
    /// True when the value is NaN.
    fn is_nan(self) -> bool;
    /// `ln(1 + self)`, accurate for small `self`.
    fn ln_1p(self) -> Self;
}

macro_rules! impl_element {
    ($t:ty, $dt:expr, $erf:path) => {
        impl Element for $t {
            const DTYPE: DType = $dt;
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const NEG_INFINITY: Self = <$t>::NEG_INFINITY;
            const EPSILON: Self = <$t>::EPSILON;

            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn from_f32(v: f32) -> Self {
                v as $t
            }
            #[inline(always)]
            fn to_f32(self) -> f32 {
                self as f32
            }
            #[inline(always)]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[inline(always)]
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline(always)]
            fn tanh(self) -> Self {
                <$t>::tanh(self)
            }
            #[inline(always)]
            fn erf(self) -> Self {
                $erf(self)
            }
            #[inline(always)]
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            #[inline(always)]
            fn powf(self, p: Self) -> Self {
                <$t>::powf(self, p)
            }
            #[inline(always)]
            fn max(self, o: Self) -> Self {
                <$t>::max(self, o)
            }
            #[inline(always)]
            fn min(self, o: Self) -> Self {
                <$t>::min(self, o)
            }
            #[inline(always)]
            fn is_finite(self) -> bool {
                <$t>::is_finite(self)
            }
            #[inline(always)]
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
            #[inline(always)]
            fn ln_1p(self) -> Self {
                <$t>::ln_1p(self)
            }
        }
    };
}

impl_element!(f32, DType::F32, erf_f32);
impl_element!(f64, DType::F64, libm::erf);

/// The error function in `f32`, written so that a loop calling it vectorises: no library
/// calls and no branches other than selects. libm's `erff` is an opaque scalar call; with it,
/// GELU on a `[3136, 512]` activation took longer than the two matrix products around it in
/// an MLP block (see docs/performance.md).
///
/// Two ranges, with coefficients fitted (Chebyshev) for this crate:
/// - `|x| <= 0.921875`: `erf(x) = x * P(x^2)`, degree 5 in `x^2` (fit error 1.6e-8
///   relative), so small arguments keep full relative precision;
/// - above: `erf(|x|) = 1 - exp(Q(t) - x^2)` with `Q ~ ln erfc(x) + x^2` (smooth and of
///   order 1, so Horner's rule in `f32` does not cancel) of degree 9 in
///   `t = (|x| - 2.4609375) / 1.5390625` over `[0.921875, 4]` (fit error 1.3e-8); beyond 4,
///   `1 - erfc` rounds to 1 in `f32`, so `|x|` is clamped there.
///
/// Measured against `f64` erf on a dense grid (unit test below): absolute error at most
/// 1.6e-7 (about 2.5 ulp, near |x| = 0.9, from rounding in Horner's rule; libm's `erff` stays
/// within 1 ulp), and relative error below 2.5e-7 on the inner range, so tiny arguments are
/// as precise as large ones. `f64` keeps libm's `erf`: it serves audits and gradient checks.
// Always inlined: out of line, the caller's loop cannot be vectorised across it.
#[inline(always)]
// Fitted coefficients are kept as printed by the fit, digits beyond f32 included.
#[allow(clippy::excessive_precision, clippy::approx_constant)]
pub fn erf_f32(x: f32) -> f32 {
    erf_f32_with::<Unfused>(x)
}

/// How Horner steps `acc * x + c` are evaluated: [`Fused`] in code compiled for CPUs with
/// FMA (one instruction, half the latency of a multiply then an add, one rounding), else
/// [`Unfused`]. (`f32::mul_add` without the FMA feature is a library call.)
pub(crate) trait MulAdd {
    fn mul_add(a: f32, b: f32, c: f32) -> f32;
}

pub(crate) struct Fused;
pub(crate) struct Unfused;

impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

impl MulAdd for Unfused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// `c[0] x^(n-1) + ... + c[n-1]`. Starts from the leading coefficient: a fold from zero costs
/// a multiply-add per polynomial that the compiler may not drop (`0 * x` is NaN for infinite
/// `x`), and for finite `x` gives the same bits.
#[inline(always)]
fn horner<M: MulAdd, const N: usize>(coeffs: &[f32; N], x: f32) -> f32 {
    coeffs[1..]
        .iter()
        .fold(coeffs[0], |acc, &c| M::mul_add(acc, x, c))
}

/// [`erf_f32`] with its Horner steps evaluated by `M`.
#[inline(always)]
#[allow(clippy::excessive_precision, clippy::approx_constant)]
pub(crate) fn erf_f32_with<M: MulAdd>(x: f32) -> f32 {
    const SMALL: [f32; 6] = [
        -6.004_081_2e-4,
        4.996_020_2e-3,
        -2.676_875_7e-2,
        0.112_818_82,
        -0.376_125_01,
        1.128_379_2,
    ];
    const LOG_ERFC_PLUS_SQ: [f32; 10] = [
        -2.525_209_4e-6,
        5.084_193e-5,
        -2.768_690_9e-4,
        1.077_823_5e-3,
        -3.792_747_7e-3,
        1.261_884_6e-2,
        -4.084_164e-2,
        0.135_961_58,
        -0.549_621_2,
        -1.542_952_4,
    ];
    const SPLIT: f32 = 0.921_875;
    let ax = x.abs();
    let u = x * x;
    let small = x * horner::<M, _>(&SMALL, u);
    let t = (if ax < 4.0 { ax } else { 4.0 } - 2.460_937_5) * (1.0 / 1.539_062_5);
    let q = horner::<M, _>(&LOG_ERFC_PLUS_SQ, t) - u.min(16.0);
    let large = (1.0 - exp_neg_f32_with::<M>(q)).copysign(x);
    let r = if ax <= SPLIT { small } else { large };
    // NaN fails both comparisons above and would come out as +-1.
    if x.is_nan() {
        x
    } else {
        r
    }
}

/// `e^y` for `y` in `[-87, 0]` (callers guarantee the range), without a library call:
/// `y = n ln2 + r` with `|r| <= ln2 / 2`, `e^r` by a degree-6 polynomial (fit error 2e-9),
/// and `2^n` assembled from its exponent bits.
/// Horner steps are evaluated by `M`.
#[inline(always)]
#[allow(clippy::excessive_precision)]
pub(crate) fn exp_neg_f32_with<M: MulAdd>(y: f32) -> f32 {
    const EXP: [f32; 7] = [
        1.394_110_8e-3,
        8.375_126e-3,
        4.166_635_3e-2,
        0.166_664_16,
        0.5,
        1.0,
        1.0,
    ];
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer in f32 arithmetic.
    const ROUND: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_115_234_375; // 12 significant bits: n * LN2_HI is exact
    const LN2_LO: f32 = 3.194_618_3e-5;
    let t = y * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let r = (y - n * LN2_HI) - n * LN2_LO;
    let p = horner::<M, _>(&EXP, r);
    // `t`'s bits are ROUND's plus n, so 2^n comes from integer arithmetic on them. (`n as
    // i32` would be a saturating conversion, which the compiler does not vectorise.)
    let biased = t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127);
    p * f32::from_bits(biased << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_f32_accuracy() {
        let mut max_abs = 0.0f64;
        let mut max_rel_inner = 0.0f64;
        let n = 400_000;
        for i in 0..=n {
            let x = (-7.0 + 14.0 * i as f64 / n as f64) as f32;
            let want = libm::erf(x as f64);
            let got = erf_f32(x) as f64;
            max_abs = max_abs.max((got - want).abs());
            if x.abs() <= 0.921_875 && x != 0.0 {
                max_rel_inner = max_rel_inner.max(((got - want) / want).abs());
            }
        }
        assert!(max_abs < 2e-7, "max abs error {max_abs:e}");
        assert!(max_rel_inner < 2.5e-7, "max rel error {max_rel_inner:e}");
        // Tiny normal arguments keep full relative precision; subnormal ones are within a
        // unit of the last (subnormal) place.
        for x in [1e-20f32, 2e-38, -5e-30] {
            let want = libm::erf(x as f64);
            assert!(((erf_f32(x) as f64 - want) / want).abs() < 2.5e-7, "{x}");
        }
        for x in [1e-41f32, -3e-39] {
            let want = libm::erf(x as f64);
            let ulp = f32::from_bits(1) as f64;
            assert!((erf_f32(x) as f64 - want).abs() <= ulp, "{x}");
        }
        assert_eq!(erf_f32(0.0).to_bits(), 0.0f32.to_bits());
        assert_eq!(erf_f32(-0.0).to_bits(), (-0.0f32).to_bits());
        assert_eq!(erf_f32(f32::INFINITY), 1.0);
        assert_eq!(erf_f32(f32::NEG_INFINITY), -1.0);
        assert_eq!(erf_f32(4.5), 1.0);
        assert!(erf_f32(f32::NAN).is_nan());
        // Odd symmetry exactly.
        for x in [0.3f32, 0.921_875, 0.93, 1.7, 3.2] {
            assert_eq!(erf_f32(-x), -erf_f32(x));
        }
    }

    #[test]
    fn exp_neg_f32_accuracy() {
        let mut worst = 0.0f64;
        for i in 0..=100_000 {
            let y = -87.0 * i as f32 / 100_000.0;
            let want = (y as f64).exp();
            worst = worst.max(((exp_neg_f32_with::<Unfused>(y) as f64 - want) / want).abs());
        }
        assert!(worst < 2.5e-7, "max rel error {worst:e}");
    }
}
