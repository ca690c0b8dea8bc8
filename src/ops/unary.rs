//! Elementwise unary ops. Each backward multiplies the output gradient by the derivative,
//! computed from the saved input or output (whichever is cheaper and stable).

use crate::backend::cpu::elementwise::{fill_fresh, map1};
use crate::backend::cpu::scalar::{
    gelu_tanh_grad_scalar, gelu_tanh_scalar, sigmoid_scalar, softplus_scalar,
};
use crate::backend::cpu::simd::{gelu_grad_to, gelu_to};
use crate::error::Result;
use crate::profile::{Kernel, Timer};
use crate::tensor::{Element, Tensor};

impl<E: Element> Tensor<E> {
    /// Applies `f` elementwise; records nothing.
    pub(crate) fn map_raw(&self, f: impl Fn(E) -> E + Sync) -> Tensor<E> {
        let v = self.with_data(|d, l| map1(d, l, f));
        Tensor::from_raw(v, self.shape())
    }

    /// `g * f'(x)` from the saved `x` (same shape), used by unary backward passes.
    fn grad_from(g: &Tensor<E>, x: &Tensor<E>, df: impl Fn(E) -> E + Sync) -> Result<Tensor<E>> {
        g.zip_raw(x, "unary_backward", |g, x| g * df(x))
    }

    /// Elementwise `-x`.
    pub fn neg(&self) -> Tensor<E> {
        let out = self.map_raw(|x| -x);
        out.record("neg", &[self], |g| Ok(vec![Some(g.map_raw(|g| -g))]))
    }

    /// Elementwise `e^x`.
    pub fn exp(&self) -> Tensor<E> {
        let out = self.map_raw(|x| x.exp());
        let y = out.detach();
        out.record("exp", &[self], move |g| {
            Ok(vec![Some(g.zip_raw(&y, "exp", |g, y| g * y)?)])
        })
    }

    /// Natural logarithm.
    pub fn log(&self) -> Tensor<E> {
        let out = self.map_raw(|x| x.ln());
        let x = self.detach();
        out.record("log", &[self], move |g| {
            Ok(vec![Some(Self::grad_from(g, &x, |x| E::ONE / x)?)])
        })
    }

    /// Elementwise square root (NaN for negative inputs).
    pub fn sqrt(&self) -> Tensor<E> {
        let out = self.map_raw(|x| x.sqrt());
        let y = out.detach();
        out.record("sqrt", &[self], move |g| {
            let h = E::from_f64(0.5);
            Ok(vec![Some(g.zip_raw(&y, "sqrt", move |g, y| g * h / y)?)])
        })
    }

    /// Elementwise `x^2`.
    pub fn square(&self) -> Tensor<E> {
        let out = self.map_raw(|x| x * x);
        let x = self.detach();
        out.record("square", &[self], move |g| {
            Ok(vec![Some(Self::grad_from(g, &x, |x| x + x)?)])
        })
    }

    /// Elementwise hyperbolic tangent.
    pub fn tanh(&self) -> Tensor<E> {
        let out = self.map_raw(|x| x.tanh());
        let y = out.detach();
        out.record("tanh", &[self], move |g| {
            Ok(vec![Some(
                g.zip_raw(&y, "tanh", |g, y| g * (E::ONE - y * y))?,
            )])
        })
    }

    /// Elementwise logistic sigmoid `1 / (1 + e^-x)`, stable for large `|x|`.
    pub fn sigmoid(&self) -> Tensor<E> {
        let out = self.map_raw(sigmoid_scalar);
        let y = out.detach();
        out.record("sigmoid", &[self], move |g| {
            Ok(vec![Some(
                g.zip_raw(&y, "sigmoid", |g, y| g * y * (E::ONE - y))?,
            )])
        })
    }

    /// ln(1 + e^x), stable for large |x|.
    pub fn softplus(&self) -> Tensor<E> {
        let out = self.map_raw(softplus_scalar);
        let x = self.detach();
        out.record("softplus", &[self], move |g| {
            Ok(vec![Some(Self::grad_from(g, &x, sigmoid_scalar)?)])
        })
    }

    /// GELU with the exact error function (TarFlow's choice).
    pub fn gelu(&self) -> Tensor<E> {
        let timer = Timer::start(Kernel::Gelu);
        let v = self
            .with_contiguous(|xs| fill_fresh(xs.len(), |lo, y| gelu_to(&xs[lo..lo + y.len()], y)));
        drop(timer);
        let out = Tensor::from_raw(v, self.shape());
        let x = self.detach();
        out.record("gelu", &[self], move |g| {
            let _timer = Timer::start(Kernel::Gelu);
            let gv = x.with_contiguous(|xs| {
                g.with_contiguous(|gs| {
                    fill_fresh(xs.len(), |lo, y| {
                        let hi = lo + y.len();
                        gelu_grad_to(&xs[lo..hi], &gs[lo..hi], y)
                    })
                })
            });
            Ok(vec![Some(Tensor::from_raw(gv, g.shape()))])
        })
    }

    /// GELU, tanh approximation.
    pub fn gelu_tanh(&self) -> Tensor<E> {
        let out = self.map_raw(gelu_tanh_scalar);
        let x = self.detach();
        out.record("gelu_tanh", &[self], move |g| {
            Ok(vec![Some(Self::grad_from(g, &x, gelu_tanh_grad_scalar)?)])
        })
    }

    /// Elementwise `max(x, 0)`; the gradient at 0 is taken as 0.
    pub fn relu(&self) -> Tensor<E> {
        let out = self.map_raw(|x| if x > E::ZERO { x } else { E::ZERO });
        let x = self.detach();
        out.record("relu", &[self], move |g| {
            Ok(vec![Some(Self::grad_from(g, &x, |x| {
                if x > E::ZERO {
                    E::ONE
                } else {
                    E::ZERO
                }
            })?)])
        })
    }

    /// `x^p` for a constant exponent.
    pub fn powf(&self, p: f64) -> Tensor<E> {
        let pe = E::from_f64(p);
        let out = self.map_raw(move |x| x.powf(pe));
        let x = self.detach();
        out.record("powf", &[self], move |g| {
            let pm1 = E::from_f64(p - 1.0);
            Ok(vec![Some(Self::grad_from(g, &x, move |x| {
                pe * x.powf(pm1)
            })?)])
        })
    }

    /// |x|; the gradient at 0 is 0.
    pub fn abs(&self) -> Tensor<E> {
        let out = self.map_raw(|x| x.abs());
        let x = self.detach();
        out.record("abs", &[self], move |g| {
            Ok(vec![Some(Self::grad_from(g, &x, |x| {
                if x > E::ZERO {
                    E::ONE
                } else if x < E::ZERO {
                    -E::ONE
                } else {
                    E::ZERO
                }
            })?)])
        })
    }

    /// Clamps into `[lo, hi]`; the gradient passes only strictly inside.
    pub fn clamp(&self, lo: f64, hi: f64) -> Tensor<E> {
        let (l, h) = (E::from_f64(lo), E::from_f64(hi));
        let out = self.map_raw(move |x| x.max(l).min(h));
        let x = self.detach();
        out.record("clamp", &[self], move |g| {
            Ok(vec![Some(Self::grad_from(g, &x, move |x| {
                if x > l && x < h {
                    E::ONE
                } else {
                    E::ZERO
                }
            })?)])
        })
    }

    /// Soft clip `a * tanh(x / a)` (STARFlow's bound on log-scales).
    pub fn soft_clip(&self, a: f64) -> Tensor<E> {
        self.div_scalar(a).tanh().mul_scalar(a)
    }
}
