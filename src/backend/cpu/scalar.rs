//! Scalar formulas shared by the elementwise kernels (and re-exported as `tarflow::ops::*_scalar`).

use crate::tensor::Element;

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const INV_SQRT_2: f64 = std::f64::consts::FRAC_1_SQRT_2;
const INV_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

/// Numerically stable softplus: ln(1 + e^x).
#[inline]
pub fn softplus_scalar<E: Element>(x: E) -> E {
    if x > E::ZERO {
        x + (-x).exp().ln_1p()
    } else {
        x.exp().ln_1p()
    }
}

/// Logistic sigmoid 1 / (1 + e^-x), computed without overflow for either sign of x.
#[inline]
pub fn sigmoid_scalar<E: Element>(x: E) -> E {
    if x >= E::ZERO {
        E::ONE / (E::ONE + (-x).exp())
    } else {
        let e = x.exp();
        e / (E::ONE + e)
    }
}

/// GELU with the exact erf: x * Phi(x).
// Always inlined so that `gelu`'s run loop vectorises (f32's erf is branch-free).
#[inline(always)]
pub fn gelu_scalar<E: Element>(x: E) -> E {
    let half = E::from_f64(0.5);
    half * x * (E::ONE + (x * E::from_f64(INV_SQRT_2)).erf())
}

/// d/dx of x * Phi(x) = Phi(x) + x * phi(x).
#[inline(always)]
pub fn gelu_grad_scalar<E: Element>(x: E) -> E {
    let half = E::from_f64(0.5);
    let cdf = half * (E::ONE + (x * E::from_f64(INV_SQRT_2)).erf());
    let pdf = E::from_f64(INV_SQRT_2PI) * (-half * x * x).exp();
    cdf + x * pdf
}

/// GELU, tanh approximation.
#[inline]
pub(crate) fn gelu_tanh_scalar<E: Element>(x: E) -> E {
    let half = E::from_f64(0.5);
    let u = E::from_f64(SQRT_2_OVER_PI) * (x + E::from_f64(0.044715) * x * x * x);
    half * x * (E::ONE + u.tanh())
}

/// Derivative of [`gelu_tanh_scalar`].
#[inline]
pub(crate) fn gelu_tanh_grad_scalar<E: Element>(x: E) -> E {
    let half = E::from_f64(0.5);
    let c = E::from_f64(SQRT_2_OVER_PI);
    let k = E::from_f64(0.044715);
    let u = c * (x + k * x * x * x);
    let t = u.tanh();
    let du = c * (E::ONE + E::from_f64(3.0) * k * x * x);
    half * (E::ONE + t) + half * x * (E::ONE - t * t) * du
}
