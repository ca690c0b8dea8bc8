//! Joining, selecting and masking: concat, stack, index_select, gather, where, masked_fill.

use crate::backend::{BinaryOp, UnaryOp};
use crate::error::{Error, Result};
use crate::tensor::layout::{broadcast_shapes, checked_numel, resolve_axis};
use crate::tensor::{Element, Tensor};

impl<E: Element> Tensor<E> {
    /// Joins tensors along an existing axis; all other axes must agree.
    pub fn concat(tensors: &[&Tensor<E>], axis: isize) -> Result<Tensor<E>> {
        let gpu = crate::backend::on_gpu("concat", tensors)?;
        let first = tensors
            .first()
            .ok_or_else(|| Error::arg("concat", "no tensors given"))?;
        let ax = resolve_axis("concat", axis, first.rank())?;
        let mut shape = first.shape().to_vec();
        shape[ax] = 0;
        for t in tensors {
            let ok = t.rank() == first.rank()
                && t.shape()
                    .iter()
                    .zip(first.shape())
                    .enumerate()
                    .all(|(i, (a, b))| i == ax || a == b);
            if !ok {
                let shapes: Vec<&[usize]> = tensors.iter().map(|t| t.shape()).collect();
                return Err(Error::shape(
                    "concat",
                    &shapes,
                    E::DTYPE.name(),
                    format!("shapes differ outside axis {ax}"),
                ));
            }
            shape[ax] = shape[ax].checked_add(t.shape()[ax]).ok_or_else(|| {
                let shapes: Vec<&[usize]> = tensors.iter().map(|t| t.shape()).collect();
                Error::shape(
                    "concat",
                    &shapes,
                    E::DTYPE.name(),
                    format!("the sizes along axis {ax} add up past usize::MAX"),
                )
            })?;
        }
        let shapes: Vec<&[usize]> = tensors.iter().map(|t| t.shape()).collect();
        checked_numel("concat", &shape, &shapes, E::DTYPE.name())?;
        let lens: Vec<usize> = tensors.iter().map(|t| t.shape()[ax]).collect();
        let starts: Vec<usize> = lens
            .iter()
            .scan(0, |s, &l| {
                *s += l;
                Some(*s - l)
            })
            .collect();
        let out = if gpu {
            crate::backend::gpu::concat(tensors, ax, &shape)?
        } else {
            let outer: usize = shape[..ax].iter().product();
            let inner: usize = shape[ax + 1..].iter().product();
            let mut out = vec![E::ZERO; shape.iter().product()];
            let row = shape[ax] * inner;
            let mut start = 0;
            for t in tensors {
                let len = t.shape()[ax] * inner;
                let src = t.to_vec();
                for o in 0..outer {
                    out[o * row + start..o * row + start + len]
                        .copy_from_slice(&src[o * len..(o + 1) * len]);
                }
                start += len;
            }
            Tensor::from_raw(out, &shape)
        };
        Ok(out.record("concat", tensors, move |g| {
            starts
                .iter()
                .zip(&lens)
                .map(|(&s, &l)| Ok(Some(g.narrow(ax as isize, s, l)?.contiguous()?)))
                .collect()
        }))
    }

    /// Stacks same-shaped tensors along a new axis.
    pub fn stack(tensors: &[&Tensor<E>], axis: isize) -> Result<Tensor<E>> {
        let first = tensors
            .first()
            .ok_or_else(|| Error::arg("stack", "no tensors given"))?;
        let ax = resolve_axis("stack", axis, first.rank() + 1)? as isize;
        // Checked here so the error names `stack`, not the `concat` it is built on.
        if tensors.iter().any(|t| t.shape() != first.shape()) {
            let shapes: Vec<&[usize]> = tensors.iter().map(|t| t.shape()).collect();
            return Err(Error::shape(
                "stack",
                &shapes,
                E::DTYPE.name(),
                "all tensors must have the same shape",
            ));
        }
        let parts = tensors
            .iter()
            .map(|t| t.unsqueeze(ax))
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<&Tensor<E>> = parts.iter().collect();
        Tensor::concat(&refs, ax)
    }

    /// Selects entries `indices` along `axis` (rows of an embedding table, for instance).
    pub fn index_select(&self, axis: isize, indices: &[usize]) -> Result<Tensor<E>> {
        let gpu = crate::backend::on_gpu("index_select", &[self])?;
        let ax = resolve_axis("index_select", axis, self.rank())?;
        let d = self.shape()[ax];
        if let Some(&bad) = indices.iter().find(|&&i| i >= d) {
            return Err(Error::index(
                "index_select",
                format!("index {bad} out of range for axis {ax} of size {d}"),
            ));
        }
        let outer: usize = self.shape()[..ax].iter().product();
        let inner: usize = self.shape()[ax + 1..].iter().product();
        let mut shape = self.shape().to_vec();
        shape[ax] = indices.len();
        checked_numel("index_select", &shape, &[self.shape()], E::DTYPE.name())?;
        let idx = indices.to_vec();
        let in_shape = self.shape().to_vec();
        if gpu {
            let out = crate::backend::gpu::index_select(self, ax, indices, &shape)?;
            return Ok(out.record("index_select", &[self], move |g| {
                Ok(vec![Some(crate::backend::gpu::index_add(
                    g, ax, &idx, &in_shape,
                )?)])
            }));
        }
        let src = self.contiguous()?;
        let mut out = Vec::with_capacity(shape.iter().product());
        src.with_contiguous(|s| {
            for o in 0..outer {
                for &i in indices {
                    let b = (o * d + i) * inner;
                    out.extend_from_slice(&s[b..b + inner]);
                }
            }
        });
        let out = Tensor::from_raw(out, &shape);
        Ok(out.record("index_select", &[self], move |g| {
            // Adjoint: scatter-add rows back (repeated indices accumulate).
            let mut acc = vec![E::ZERO; in_shape.iter().product()];
            let gv = g.to_vec();
            let n = idx.len();
            for o in 0..outer {
                for (j, &i) in idx.iter().enumerate() {
                    let src = (o * n + j) * inner;
                    let dst = (o * d + i) * inner;
                    for t in 0..inner {
                        acc[dst + t] += gv[src + t];
                    }
                }
            }
            Ok(vec![Some(Tensor::from_raw(acc, &in_shape))])
        }))
    }

    /// `out[..., j, ...] = self[..., index[..., j, ...], ...]` along `axis`; `index` has the
    /// output's shape (NumPy `take_along_axis`).
    pub fn gather(&self, axis: isize, index: &[usize], index_shape: &[usize]) -> Result<Tensor<E>> {
        crate::backend::cpu_only("gather", &[self])?;
        let ax = resolve_axis("gather", axis, self.rank())?;
        let bad_shape = index_shape.len() != self.rank()
            || index_shape
                .iter()
                .zip(self.shape())
                .enumerate()
                .any(|(i, (a, b))| i != ax && a != b)
            || checked_numel(
                "gather",
                index_shape,
                &[self.shape(), index_shape],
                E::DTYPE.name(),
            )? != index.len();
        if bad_shape {
            return Err(Error::shape(
                "gather",
                &[self.shape(), index_shape],
                E::DTYPE.name(),
                format!("index must match the input outside axis {ax}"),
            ));
        }
        let d = self.shape()[ax];
        if let Some(&bad) = index.iter().find(|&&i| i >= d) {
            return Err(Error::index(
                "gather",
                format!("index {bad} out of range for axis {ax} of size {d}"),
            ));
        }
        let outer: usize = index_shape[..ax].iter().product();
        let inner: usize = index_shape[ax + 1..].iter().product();
        let n = index_shape[ax];
        let index = index.to_vec();
        let src_of = move |flat: usize| {
            let o = flat / (n * inner);
            let t = flat % inner;
            (o * d + index[flat]) * inner + t
        };
        let src = self.to_vec();
        let out: Vec<E> = (0..outer * n * inner).map(|f| src[src_of(f)]).collect();
        let out = Tensor::from_raw(out, index_shape);
        let in_shape = self.shape().to_vec();
        Ok(out.record("gather", &[self], move |g| {
            let mut acc = vec![E::ZERO; in_shape.iter().product()];
            for (f, v) in g.to_vec().into_iter().enumerate() {
                acc[src_of(f)] += v;
            }
            Ok(vec![Some(Tensor::from_raw(acc, &in_shape))])
        }))
    }

    /// `cond ? a : b` elementwise with broadcasting; `cond` is nonzero for true.
    pub fn where_cond(cond: &Tensor<E>, a: &Tensor<E>, b: &Tensor<E>) -> Result<Tensor<E>> {
        crate::backend::same_device("where", &[cond, a, b])?;
        let shape = broadcast_shapes(cond.shape(), a.shape())
            .and_then(|s| broadcast_shapes(&s, b.shape()))
            .ok_or_else(|| {
                Error::shape(
                    "where",
                    &[cond.shape(), a.shape(), b.shape()],
                    E::DTYPE.name(),
                    "shapes do not broadcast",
                )
            })?;
        let inputs = [cond.shape(), a.shape(), b.shape()];
        checked_numel("where", &shape, &inputs, E::DTYPE.name())?;
        let c = cond.broadcast_to(&shape)?.detach();
        let m = c.unary_raw(UnaryOp::NonZero)?;
        let pa = a.binary_raw(&m, "where", BinaryOp::SelectIfNonZero)?;
        let pb = b.binary_raw(&m, "where", BinaryOp::SelectIfZero)?;
        let out = pa.binary_raw(&pb, "where", BinaryOp::Add)?;
        let (sa, sb) = (a.shape().to_vec(), b.shape().to_vec());
        Ok(out.record("where", &[a, b], move |g| {
            let ga = g.binary_raw(&m, "where", BinaryOp::Mul)?.sum_to(&sa)?;
            let gb = g
                .binary_raw(&m, "where", BinaryOp::MulOneMinus)?
                .sum_to(&sb)?;
            Ok(vec![Some(ga), Some(gb)])
        }))
    }

    /// Replaces entries where `mask` is nonzero by `value` (mask broadcasts to `self`).
    pub fn masked_fill(&self, mask: &Tensor<E>, value: f64) -> Result<Tensor<E>> {
        crate::backend::same_device("masked_fill", &[self, mask])?;
        // Checked before computing so a mask that does not broadcast at all is reported as a
        // `masked_fill` error (not `where`), and a mask larger than the input costs nothing.
        if broadcast_shapes(self.shape(), mask.shape()).as_deref() != Some(self.shape()) {
            return Err(Error::shape(
                "masked_fill",
                &[self.shape(), mask.shape()],
                E::DTYPE.name(),
                "mask must broadcast to the input",
            ));
        }
        let fill = Tensor::full_on(&[], value, self.device())?;
        Tensor::where_cond(mask, &fill, self)
    }
}
