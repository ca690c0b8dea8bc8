//! Elementwise unary ops. Each backward multiplies the output gradient by the derivative,
//! computed from the saved input or output (whichever is cheaper and stable).

use crate::backend::cpu::elementwise::{fill_fresh, unary};
use crate::backend::cpu::simd::{gelu_grad_to, gelu_to};
use crate::backend::{BinaryOp, UnaryOp};
use crate::error::Result;
use crate::profile::{Kernel, Timer};
use crate::tensor::{Element, Tensor};

impl<E: Element> Tensor<E> {
    /// Applies `op` elementwise; records nothing.
    pub(crate) fn unary_raw(&self, op: UnaryOp) -> Result<Tensor<E>> {
        if crate::backend::on_gpu(op.name(), &[self])? {
            return crate::backend::gpu::unary(op, self);
        }
        let v = self.with_data(|d, l| unary(op, d, l));
        Ok(Tensor::from_raw(v, self.shape()))
    }

    /// `g * f'(x)` from the saved `x` (same shape) by a `...Backward` op, used by unary
    /// backward passes.
    fn grad_from(g: &Tensor<E>, x: &Tensor<E>, df: BinaryOp) -> Result<Tensor<E>> {
        g.binary_raw(x, "unary_backward", df)
    }

    /// Elementwise `-x`.
    pub fn neg(&self) -> Result<Tensor<E>> {
        let out = self.unary_raw(UnaryOp::Neg)?;
        Ok(out.record("neg", &[self], |g| {
            Ok(vec![Some(g.unary_raw(UnaryOp::Neg)?)])
        }))
    }

    /// Elementwise `e^x`.
    pub fn exp(&self) -> Result<Tensor<E>> {
        let out = self.unary_raw(UnaryOp::Exp)?;
        let y = out.detach();
        Ok(out.record("exp", &[self], move |g| {
            Ok(vec![Some(g.binary_raw(&y, "exp", BinaryOp::Mul)?)])
        }))
    }

    /// Natural logarithm.
    pub fn log(&self) -> Result<Tensor<E>> {
        let out = self.unary_raw(UnaryOp::Log)?;
        let x = self.detach();
        Ok(out.record("log", &[self], move |g| {
            Ok(vec![Some(Self::grad_from(g, &x, BinaryOp::LogBackward)?)])
        }))
    }

    /// Elementwise square root (NaN for negative inputs).
    pub fn sqrt(&self) -> Result<Tensor<E>> {
        let out = self.unary_raw(UnaryOp::Sqrt)?;
        let y = out.detach();
        Ok(out.record("sqrt", &[self], move |g| {
            Ok(vec![Some(g.binary_raw(
                &y,
                "sqrt",
                BinaryOp::SqrtBackward,
            )?)])
        }))
    }

    /// Elementwise `x^2`.
    pub fn square(&self) -> Result<Tensor<E>> {
        let out = self.unary_raw(UnaryOp::Square)?;
        let x = self.detach();
        Ok(out.record("square", &[self], move |g| {
            Ok(vec![Some(Self::grad_from(
                g,
                &x,
                BinaryOp::SquareBackward,
            )?)])
        }))
    }

    /// Elementwise hyperbolic tangent.
    pub fn tanh(&self) -> Result<Tensor<E>> {
        let out = self.unary_raw(UnaryOp::Tanh)?;
        let y = out.detach();
        Ok(out.record("tanh", &[self], move |g| {
            Ok(vec![Some(g.binary_raw(
                &y,
                "tanh",
                BinaryOp::TanhBackward,
            )?)])
        }))
    }

    /// Elementwise logistic sigmoid `1 / (1 + e^-x)`, stable for large `|x|`.
    pub fn sigmoid(&self) -> Result<Tensor<E>> {
        let out = self.unary_raw(UnaryOp::Sigmoid)?;
        let y = out.detach();
        Ok(out.record("sigmoid", &[self], move |g| {
            Ok(vec![Some(g.binary_raw(
                &y,
                "sigmoid",
                BinaryOp::SigmoidBackward,
            )?)])
        }))
    }

    /// ln(1 + e^x), stable for large |x|.
    pub fn softplus(&self) -> Result<Tensor<E>> {
        let out = self.unary_raw(UnaryOp::Softplus)?;
        let x = self.detach();
        Ok(out.record("softplus", &[self], move |g| {
            Ok(vec![Some(Self::grad_from(
                g,
                &x,
                BinaryOp::SoftplusBackward,
            )?)])
        }))
    }

    /// GELU with the exact error function (TarFlow's choice).
    pub fn gelu(&self) -> Result<Tensor<E>> {
        if crate::backend::on_gpu("gelu", &[self])? {
            let out = crate::backend::gpu::unary(UnaryOp::Gelu, self)?;
            let x = self.detach();
            return Ok(out.record("gelu", &[self], move |g| {
                Ok(vec![Some(Self::grad_from(g, &x, BinaryOp::GeluBackward)?)])
            }));
        }
        let timer = Timer::start(Kernel::Gelu);
        let v = self
            .with_contiguous(|xs| fill_fresh(xs.len(), |lo, y| gelu_to(&xs[lo..lo + y.len()], y)));
        drop(timer);
        let out = Tensor::from_raw(v, self.shape());
        let x = self.detach();
        Ok(out.record("gelu", &[self], move |g| {
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
        }))
    }

    /// GELU, tanh approximation.
    pub fn gelu_tanh(&self) -> Result<Tensor<E>> {
        let out = self.unary_raw(UnaryOp::GeluTanh)?;
        let x = self.detach();
        Ok(out.record("gelu_tanh", &[self], move |g| {
            Ok(vec![Some(Self::grad_from(
                g,
                &x,
                BinaryOp::GeluTanhBackward,
            )?)])
        }))
    }

    /// Elementwise `max(x, 0)`; the gradient at 0 is taken as 0.
    pub fn relu(&self) -> Result<Tensor<E>> {
        let out = self.unary_raw(UnaryOp::Relu)?;
        let x = self.detach();
        Ok(out.record("relu", &[self], move |g| {
            Ok(vec![Some(Self::grad_from(g, &x, BinaryOp::ReluBackward)?)])
        }))
    }

    /// `x^p` for a constant exponent.
    pub fn powf(&self, p: f64) -> Result<Tensor<E>> {
        let out = self.unary_raw(UnaryOp::PowScalar(p))?;
        let x = self.detach();
        Ok(out.record("powf", &[self], move |g| {
            Ok(vec![Some(Self::grad_from(
                g,
                &x,
                BinaryOp::PowBackward(p),
            )?)])
        }))
    }

    /// |x|; the gradient at 0 is 0.
    pub fn abs(&self) -> Result<Tensor<E>> {
        let out = self.unary_raw(UnaryOp::Abs)?;
        let x = self.detach();
        Ok(out.record("abs", &[self], move |g| {
            Ok(vec![Some(Self::grad_from(g, &x, BinaryOp::AbsBackward)?)])
        }))
    }

    /// Clamps into `[lo, hi]`; the gradient passes only strictly inside.
    pub fn clamp(&self, lo: f64, hi: f64) -> Result<Tensor<E>> {
        let out = self.unary_raw(UnaryOp::Clamp { lo, hi })?;
        let x = self.detach();
        Ok(out.record("clamp", &[self], move |g| {
            Ok(vec![Some(Self::grad_from(
                g,
                &x,
                BinaryOp::ClampBackward { lo, hi },
            )?)])
        }))
    }

    /// Soft clip `a * tanh(x / a)` (STARFlow's bound on log-scales).
    pub fn soft_clip(&self, a: f64) -> Result<Tensor<E>> {
        self.div_scalar(a)?.tanh()?.mul_scalar(a)
    }
}
