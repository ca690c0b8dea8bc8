//! Elementwise binary ops with NumPy broadcasting, and scalar ops.

use crate::backend::cpu::elementwise::binary;
use crate::backend::{BinaryOp, UnaryOp};
use crate::error::{Error, Result};
use crate::tensor::layout::{broadcast_shapes, checked_numel};
use crate::tensor::{Element, Tensor};

impl<E: Element> Tensor<E> {
    /// Broadcasts two operands and applies `f`; records nothing (ops build on this). `op`
    /// names the calling op in errors.
    pub(crate) fn binary_raw(
        &self,
        other: &Tensor<E>,
        op: &'static str,
        f: BinaryOp,
    ) -> Result<Tensor<E>> {
        let gpu = crate::backend::on_gpu(op, &[self, other])?;
        let shape = broadcast_shapes(self.shape(), other.shape()).ok_or_else(|| {
            Error::shape(
                op,
                &[self.shape(), other.shape()],
                E::DTYPE.name(),
                "shapes do not broadcast",
            )
        })?;
        checked_numel(op, &shape, &[self.shape(), other.shape()], E::DTYPE.name())?;
        let la = self.layout().broadcast_to(&shape).expect("checked");
        let lb = other.layout().broadcast_to(&shape).expect("checked");
        if gpu {
            return crate::backend::gpu::binary(f, &shape, self, &la, other, &lb);
        }
        let a = self.storage().read();
        let v = if self.shares_storage(other) {
            binary(f, &shape, &a, &la, &a, &lb)
        } else {
            let b = other.storage().read();
            binary(f, &shape, &a, &la, &b, &lb)
        };
        Ok(Tensor::from_raw(v, &shape))
    }

    /// `self + other`, broadcasting.
    pub fn add(&self, other: &Tensor<E>) -> Result<Tensor<E>> {
        let out = self.binary_raw(other, "add", BinaryOp::Add)?;
        let (sa, sb) = (self.shape().to_vec(), other.shape().to_vec());
        Ok(out.record("add", &[self, other], move |g| {
            Ok(vec![Some(g.sum_to(&sa)?), Some(g.sum_to(&sb)?)])
        }))
    }

    /// `self - other`, broadcasting.
    pub fn sub(&self, other: &Tensor<E>) -> Result<Tensor<E>> {
        let out = self.binary_raw(other, "sub", BinaryOp::Sub)?;
        let (sa, sb) = (self.shape().to_vec(), other.shape().to_vec());
        Ok(out.record("sub", &[self, other], move |g| {
            Ok(vec![Some(g.sum_to(&sa)?), Some(g.neg()?.sum_to(&sb)?)])
        }))
    }

    /// `self * other`, broadcasting.
    pub fn mul(&self, other: &Tensor<E>) -> Result<Tensor<E>> {
        let out = self.binary_raw(other, "mul", BinaryOp::Mul)?;
        let (a, b) = (self.detach(), other.detach());
        let (ra, rb) = (self.requires_grad(), other.requires_grad());
        Ok(out.record("mul", &[self, other], move |g| {
            let ga = if ra {
                Some(g.mul(&b)?.sum_to(a.shape())?)
            } else {
                None
            };
            let gb = if rb {
                Some(g.mul(&a)?.sum_to(b.shape())?)
            } else {
                None
            };
            Ok(vec![ga, gb])
        }))
    }

    /// `self / other`, broadcasting.
    pub fn div(&self, other: &Tensor<E>) -> Result<Tensor<E>> {
        let out = self.binary_raw(other, "div", BinaryOp::Div)?;
        let (a, b) = (self.detach(), other.detach());
        let (ra, rb) = (self.requires_grad(), other.requires_grad());
        Ok(out.record("div", &[self, other], move |g| {
            let ga = if ra {
                Some(g.div(&b)?.sum_to(a.shape())?)
            } else {
                None
            };
            let gb = if rb {
                // d(a/b)/db = -a/b^2
                let t = g.binary_raw(&a, "div", BinaryOp::Mul)?;
                let t = t.binary_raw(&b, "div", BinaryOp::DivRhsBackward)?;
                Some(t.sum_to(b.shape())?)
            } else {
                None
            };
            Ok(vec![ga, gb])
        }))
    }

    /// Elementwise maximum, broadcasting; ties send the gradient to `self`.
    pub fn maximum(&self, other: &Tensor<E>) -> Result<Tensor<E>> {
        let out = self.binary_raw(other, "maximum", BinaryOp::Maximum)?;
        let (a, b) = (self.detach(), other.detach());
        Ok(out.record("maximum", &[self, other], move |g| {
            let mask_a = a.binary_raw(&b, "maximum", BinaryOp::GeMask)?;
            let ga = g.binary_raw(&mask_a, "maximum", BinaryOp::Mul)?;
            let gb = g.binary_raw(&mask_a, "maximum", BinaryOp::MulOneMinus)?;
            Ok(vec![
                Some(ga.sum_to(a.shape())?),
                Some(gb.sum_to(b.shape())?),
            ])
        }))
    }

    /// `self + s`.
    pub fn add_scalar(&self, s: f64) -> Result<Tensor<E>> {
        let out = self.unary_raw(UnaryOp::AddScalar(s))?;
        Ok(out.record("add_scalar", &[self], |g| Ok(vec![Some(g.clone())])))
    }

    /// `self * s`.
    pub fn mul_scalar(&self, s: f64) -> Result<Tensor<E>> {
        let out = self.unary_raw(UnaryOp::MulScalar(s))?;
        Ok(out.record("mul_scalar", &[self], move |g| {
            Ok(vec![Some(g.unary_raw(UnaryOp::MulScalar(s))?)])
        }))
    }

    /// `self / s`.
    pub fn div_scalar(&self, s: f64) -> Result<Tensor<E>> {
        self.mul_scalar(1.0 / s)
    }

    /// `s - self`.
    pub fn rsub_scalar(&self, s: f64) -> Result<Tensor<E>> {
        self.neg()?.add_scalar(s)
    }
}
