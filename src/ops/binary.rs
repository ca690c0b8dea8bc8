//! Elementwise binary ops with NumPy broadcasting, and scalar ops.

use super::kernel::map2;
use crate::error::{Error, Result};
use crate::tensor::layout::{broadcast_shapes, checked_numel};
use crate::tensor::{Element, Tensor};

impl<E: Element> Tensor<E> {
    /// Broadcasts two operands and applies `f`; records nothing (ops build on this).
    pub(crate) fn zip_raw(
        &self,
        other: &Tensor<E>,
        op: &'static str,
        f: impl Fn(E, E) -> E + Sync,
    ) -> Result<Tensor<E>> {
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
        let a = self.storage().read();
        let v = if self.shares_storage(other) {
            map2(&shape, &a, &la, &a, &lb, f)
        } else {
            let b = other.storage().read();
            map2(&shape, &a, &la, &b, &lb, f)
        };
        Ok(Tensor::from_raw(v, &shape))
    }

    /// `self + other`, broadcasting.
    pub fn add(&self, other: &Tensor<E>) -> Result<Tensor<E>> {
        let out = self.zip_raw(other, "add", |x, y| x + y)?;
        let (sa, sb) = (self.shape().to_vec(), other.shape().to_vec());
        Ok(out.record("add", &[self, other], move |g| {
            Ok(vec![Some(g.sum_to(&sa)?), Some(g.sum_to(&sb)?)])
        }))
    }

    /// `self - other`, broadcasting.
    pub fn sub(&self, other: &Tensor<E>) -> Result<Tensor<E>> {
        let out = self.zip_raw(other, "sub", |x, y| x - y)?;
        let (sa, sb) = (self.shape().to_vec(), other.shape().to_vec());
        Ok(out.record("sub", &[self, other], move |g| {
            Ok(vec![Some(g.sum_to(&sa)?), Some(g.neg().sum_to(&sb)?)])
        }))
    }

    /// `self * other`, broadcasting.
    pub fn mul(&self, other: &Tensor<E>) -> Result<Tensor<E>> {
        let out = self.zip_raw(other, "mul", |x, y| x * y)?;
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
        let out = self.zip_raw(other, "div", |x, y| x / y)?;
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
                let t = g.zip_raw(&a, "div", |g, a| g * a)?;
                let t = t.zip_raw(&b, "div", |t, b| -t / (b * b))?;
                Some(t.sum_to(b.shape())?)
            } else {
                None
            };
            Ok(vec![ga, gb])
        }))
    }

    /// Elementwise maximum, broadcasting; ties send the gradient to `self`.
    pub fn maximum(&self, other: &Tensor<E>) -> Result<Tensor<E>> {
        let out = self.zip_raw(other, "maximum", |x, y| if x >= y { x } else { y })?;
        let (a, b) = (self.detach(), other.detach());
        Ok(out.record("maximum", &[self, other], move |g| {
            let mask_a = a.zip_raw(&b, "maximum", |x, y| if x >= y { E::ONE } else { E::ZERO })?;
            let ga = g.zip_raw(&mask_a, "maximum", |g, m| g * m)?;
            let gb = g.zip_raw(&mask_a, "maximum", |g, m| g * (E::ONE - m))?;
            Ok(vec![
                Some(ga.sum_to(a.shape())?),
                Some(gb.sum_to(b.shape())?),
            ])
        }))
    }

    /// `self + s`.
    pub fn add_scalar(&self, s: f64) -> Tensor<E> {
        let s = E::from_f64(s);
        let out = self.map_raw(|x| x + s);
        out.record("add_scalar", &[self], |g| Ok(vec![Some(g.clone())]))
    }

    /// `self * s`.
    pub fn mul_scalar(&self, s: f64) -> Tensor<E> {
        let s = E::from_f64(s);
        let out = self.map_raw(|x| x * s);
        out.record("mul_scalar", &[self], move |g| {
            Ok(vec![Some(g.map_raw(move |g| g * s))])
        })
    }

    /// `self / s`.
    pub fn div_scalar(&self, s: f64) -> Tensor<E> {
        self.mul_scalar(1.0 / s)
    }

    /// `s - self`.
    pub fn rsub_scalar(&self, s: f64) -> Tensor<E> {
        self.neg().add_scalar(s)
    }
}
