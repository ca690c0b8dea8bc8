//! Reductions over any set of axes (sum, mean, max), with or without kept dimensions.

use crate::backend::cpu::reduce::{reduce_raw, Kind};
use crate::backend::BinaryOp;
use crate::error::{Error, Result};
use crate::tensor::layout::resolve_axis;
use crate::tensor::{Element, Tensor};

impl<E: Element> Tensor<E> {
    fn resolve_axes(&self, op: &'static str, axes: &[isize]) -> Result<Vec<usize>> {
        let mut v = axes
            .iter()
            .map(|&a| resolve_axis(op, a, self.rank()))
            .collect::<Result<Vec<_>>>()?;
        v.sort_unstable();
        let n = v.len();
        v.dedup();
        if v.len() != n {
            return Err(Error::index(op, format!("repeated axis in {axes:?}")));
        }
        Ok(v)
    }

    fn reduced_shape(&self, axes: &[usize], keepdim: bool) -> Vec<usize> {
        let mut s = Vec::new();
        for (i, &d) in self.shape().iter().enumerate() {
            if axes.contains(&i) {
                if keepdim {
                    s.push(1)
                }
            } else {
                s.push(d)
            }
        }
        s
    }

    /// Sum over `axes` (negative axes count from the end).
    pub fn sum(&self, axes: &[isize], keepdim: bool) -> Result<Tensor<E>> {
        let gpu = crate::backend::on_gpu("sum", &[self])?;
        let ax = self.resolve_axes("sum", axes)?;
        let out_shape = self.reduced_shape(&ax, keepdim);
        let out = if gpu {
            crate::backend::gpu::reduce(self, &ax, false, &out_shape)?
        } else {
            let v = self.with_data(|d, l| reduce_raw(d, l, &ax, Kind::Sum));
            Tensor::from_raw(v, &out_shape)
        };
        let in_shape = self.shape().to_vec();
        let kshape = self.reduced_shape(&ax, true);
        Ok(out.record("sum", &[self], move |g| {
            let g = g.reshape(&kshape)?;
            Ok(vec![Some(g.broadcast_to(&in_shape)?.contiguous()?)])
        }))
    }

    /// Sum of all elements, as a 0-d tensor.
    pub fn sum_all(&self) -> Result<Tensor<E>> {
        let axes: Vec<isize> = (0..self.rank() as isize).collect();
        self.sum(&axes, false)
    }

    /// Mean over `axes`.
    pub fn mean(&self, axes: &[isize], keepdim: bool) -> Result<Tensor<E>> {
        let ax = self.resolve_axes("mean", axes)?;
        let count: usize = ax.iter().map(|&a| self.shape()[a]).product();
        self.sum(axes, keepdim)?.div_scalar(count.max(1) as f64)
    }

    /// Mean of all elements, as a 0-d tensor.
    pub fn mean_all(&self) -> Result<Tensor<E>> {
        self.sum_all()?.div_scalar(self.numel().max(1) as f64)
    }

    /// Maximum over `axes`. The gradient is shared equally among tied maxima.
    pub fn max(&self, axes: &[isize], keepdim: bool) -> Result<Tensor<E>> {
        let gpu = crate::backend::on_gpu("max", &[self])?;
        let ax = self.resolve_axes("max", axes)?;
        let kshape = self.reduced_shape(&ax, true);
        let out_shape = self.reduced_shape(&ax, keepdim);
        let out = if gpu {
            crate::backend::gpu::reduce(self, &ax, true, &out_shape)?
        } else {
            let v = self.with_data(|d, l| reduce_raw(d, l, &ax, Kind::Max));
            Tensor::from_raw(v, &out_shape)
        };
        let x = self.detach();
        let m = out.reshape(&kshape)?.detach();
        let axes = ax.iter().map(|&a| a as isize).collect::<Vec<_>>();
        Ok(out.record("max", &[self], move |g| {
            let mask = x.binary_raw(&m, "max", BinaryOp::EqMask)?;
            let count = mask.sum(&axes, true)?;
            let g = g
                .reshape(&kshape)?
                .binary_raw(&count, "max", BinaryOp::Div)?;
            Ok(vec![Some(mask.binary_raw(&g, "max", BinaryOp::Mul)?)])
        }))
    }

    /// Sums broadcast dimensions away so the result has `shape` (the adjoint of
    /// `broadcast_to`). Used by every broadcasting backward.
    pub fn sum_to(&self, shape: &[usize]) -> Result<Tensor<E>> {
        if self.shape() == shape {
            return Ok(self.clone());
        }
        let lead = self.rank().checked_sub(shape.len()).ok_or_else(|| {
            Error::shape(
                "sum_to",
                &[self.shape(), shape],
                E::DTYPE.name(),
                "target has more dimensions",
            )
        })?;
        let mut axes = Vec::new();
        for i in 0..self.rank() {
            if i < lead || (shape[i - lead] == 1 && self.shape()[i] != 1) {
                axes.push(i as isize);
            } else if shape[i - lead] != self.shape()[i] {
                return Err(Error::shape(
                    "sum_to",
                    &[self.shape(), shape],
                    E::DTYPE.name(),
                    "shapes are not broadcast-compatible",
                ));
            }
        }
        self.sum(&axes, true)?.reshape(shape)
    }
}
