//! View ops: new layouts over the same storage (no copy), each with its backward.

use crate::error::{Error, Result};
use crate::tensor::layout::{checked_numel, checked_product, resolve_axis};
use crate::tensor::{Element, Tensor};

impl<E: Element> Tensor<E> {
    /// Row-major contiguous version: `self` when already contiguous, else a copy.
    pub fn contiguous(&self) -> Result<Tensor<E>> {
        if self.is_contiguous() {
            return Ok(self.clone());
        }
        let out = if crate::backend::on_gpu("contiguous", &[self])? {
            crate::backend::gpu::contiguous(self)?
        } else {
            let v = self.with_data(|d, l| {
                crate::tensor::iter::gather_strided(d, l.shape(), l.strides(), l.offset())
            });
            Tensor::from_raw(v, self.shape())
        };
        Ok(out.record("contiguous", &[self], |g| Ok(vec![Some(g.clone())])))
    }

    /// A deep copy that owns its storage (gradient flows through).
    pub fn copy(&self) -> Result<Tensor<E>> {
        let out = if crate::backend::on_gpu("copy", &[self])? {
            crate::backend::gpu::contiguous(self)?
        } else {
            Tensor::from_raw(self.to_vec(), self.shape())
        };
        Ok(out.record("copy", &[self], |g| Ok(vec![Some(g.clone())])))
    }

    fn view_with_grad(
        &self,
        layout: crate::tensor::Layout,
        name: &'static str,
        backward: impl Fn(&Tensor<E>) -> Result<Vec<Option<Tensor<E>>>> + Send + Sync + 'static,
    ) -> Tensor<E> {
        self.view_raw(layout).record(name, &[self], backward)
    }

    /// Reshape; a view when the strides allow it, otherwise a contiguous copy first.
    /// One dimension may be given as `usize::MAX` to be inferred.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor<E>> {
        let shape = self.infer_shape(shape)?;
        if shape == self.shape() {
            return Ok(self.clone());
        }
        let in_shape = self.shape().to_vec();
        let back = move |g: &Tensor<E>| Ok(vec![Some(g.reshape(&in_shape)?)]);
        match self.layout().reshape(&shape) {
            Some(l) => Ok(self.view_with_grad(l, "reshape", back)),
            None => {
                let c = self.contiguous()?;
                let l = c.layout().reshape(&shape).expect("contiguous reshapes");
                Ok(c.view_with_grad(l, "reshape", back))
            }
        }
    }

    fn infer_shape(&self, shape: &[usize]) -> Result<Vec<usize>> {
        let n = self.numel();
        let unknown = shape.iter().filter(|&&d| d == usize::MAX).count();
        let mut s = shape.to_vec();
        if unknown > 1 {
            return Err(Error::shape(
                "reshape",
                &[self.shape()],
                E::DTYPE.name(),
                "at most one inferred dimension",
            ));
        }
        if unknown == 1 {
            // Checked: sizes come from the caller, and an overflowing product must be an
            // error, not a panic (debug) or a wrapped size (release).
            let known = checked_product(shape.iter().copied().filter(|&d| d != usize::MAX));
            let Some(known) = known.filter(|&k| k != 0 && n.is_multiple_of(k)) else {
                return Err(Error::shape(
                    "reshape",
                    &[self.shape(), shape],
                    E::DTYPE.name(),
                    "cannot infer dimension",
                ));
            };
            for d in s.iter_mut() {
                if *d == usize::MAX {
                    *d = n / known;
                }
            }
        }
        let detail = match checked_numel("reshape", &s, &[], E::DTYPE.name()) {
            Ok(m) if m == n => return Ok(s),
            Ok(_) => format!("cannot reshape {n} elements"),
            Err(_) => {
                format!("cannot reshape {n} elements: the new sizes multiply past usize::MAX")
            }
        };
        Err(Error::shape(
            "reshape",
            &[self.shape(), &s],
            E::DTYPE.name(),
            detail,
        ))
    }

    /// Reorders axes: output axis `i` is input axis `perm[i]`.
    pub fn permute(&self, perm: &[usize]) -> Result<Tensor<E>> {
        let r = self.rank();
        let mut seen = vec![false; r];
        if perm.len() != r
            || perm
                .iter()
                .any(|&p| p >= r || std::mem::replace(&mut seen[p], true))
        {
            return Err(Error::shape(
                "permute",
                &[self.shape()],
                E::DTYPE.name(),
                format!("{perm:?} is not a permutation of {r} axes"),
            ));
        }
        let mut inv = vec![0; r];
        for (i, &p) in perm.iter().enumerate() {
            inv[p] = i;
        }
        Ok(
            self.view_with_grad(self.layout().permute(perm), "permute", move |g| {
                Ok(vec![Some(g.permute(&inv)?)])
            }),
        )
    }

    /// Swaps two axes.
    pub fn transpose(&self, a: isize, b: isize) -> Result<Tensor<E>> {
        let a = resolve_axis("transpose", a, self.rank())?;
        let b = resolve_axis("transpose", b, self.rank())?;
        let mut perm: Vec<usize> = (0..self.rank()).collect();
        perm.swap(a, b);
        self.permute(&perm)
    }

    /// Swaps the last two axes (matrix transpose of every batch element).
    pub fn t(&self) -> Result<Tensor<E>> {
        if self.rank() < 2 {
            return Err(Error::shape(
                "t",
                &[self.shape()],
                E::DTYPE.name(),
                "needs at least 2 dimensions",
            ));
        }
        self.transpose(-2, -1)
    }

    /// `len` elements of `axis` starting at `start`.
    pub fn narrow(&self, axis: isize, start: usize, len: usize) -> Result<Tensor<E>> {
        let ax = resolve_axis("narrow", axis, self.rank())?;
        let d = self.shape()[ax];
        if start.checked_add(len).is_none_or(|e| e > d) {
            return Err(Error::index(
                "narrow",
                format!(
                    "range {start}..{} out of bounds for axis {ax} of size {d} (shape {:?})",
                    start.saturating_add(len),
                    self.shape()
                ),
            ));
        }
        let in_shape = self.shape().to_vec();
        Ok(
            self.view_with_grad(self.layout().narrow(ax, start, len), "narrow", move |g| {
                Ok(vec![Some(g.pad_axis(ax, start, &in_shape)?)])
            }),
        )
    }

    /// Places `self` at `start` along `axis` inside zeros of `shape` (adjoint of `narrow`).
    pub(crate) fn pad_axis(&self, axis: usize, start: usize, shape: &[usize]) -> Result<Tensor<E>> {
        if crate::backend::on_gpu("pad", &[self])? {
            return crate::backend::gpu::pad_axis(self, axis, start, shape);
        }
        let mut out = vec![E::ZERO; shape.iter().product()];
        let outer: usize = shape[..axis].iter().product();
        let inner: usize = shape[axis + 1..].iter().product();
        let len = self.shape()[axis];
        let src = self.to_vec();
        let block = len * inner;
        for o in 0..outer {
            let dst = o * shape[axis] * inner + start * inner;
            out[dst..dst + block].copy_from_slice(&src[o * block..(o + 1) * block]);
        }
        Ok(Tensor::from_raw(out, shape))
    }

    /// Broadcasts to `shape` with zero strides (no copy).
    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Tensor<E>> {
        if shape == self.shape() {
            return Ok(self.clone());
        }
        checked_numel(
            "broadcast_to",
            shape,
            &[self.shape(), shape],
            E::DTYPE.name(),
        )?;
        let l = self.layout().broadcast_to(shape).ok_or_else(|| {
            Error::shape(
                "broadcast_to",
                &[self.shape(), shape],
                E::DTYPE.name(),
                "cannot broadcast",
            )
        })?;
        let in_shape = self.shape().to_vec();
        Ok(self.view_with_grad(l, "broadcast_to", move |g| {
            Ok(vec![Some(g.sum_to(&in_shape)?)])
        }))
    }

    /// Removes a size-1 axis.
    pub fn squeeze(&self, axis: isize) -> Result<Tensor<E>> {
        let ax = resolve_axis("squeeze", axis, self.rank())?;
        if self.shape()[ax] != 1 {
            return Err(Error::shape(
                "squeeze",
                &[self.shape()],
                E::DTYPE.name(),
                format!("axis {ax} has size {}, not 1", self.shape()[ax]),
            ));
        }
        let in_shape = self.shape().to_vec();
        Ok(
            self.view_with_grad(self.layout().squeeze(ax), "squeeze", move |g| {
                Ok(vec![Some(g.reshape(&in_shape)?)])
            }),
        )
    }

    /// Inserts a size-1 axis at `axis` (`0..=rank`; negative counts from the end).
    pub fn unsqueeze(&self, axis: isize) -> Result<Tensor<E>> {
        let ax = resolve_axis("unsqueeze", axis, self.rank() + 1)?;
        let in_shape = self.shape().to_vec();
        Ok(
            self.view_with_grad(self.layout().unsqueeze(ax), "unsqueeze", move |g| {
                Ok(vec![Some(g.reshape(&in_shape)?)])
            }),
        )
    }

    /// Reverses the order along `axis` (a negative-stride view).
    pub fn flip(&self, axis: isize) -> Result<Tensor<E>> {
        let ax = resolve_axis("flip", axis, self.rank())?;
        Ok(
            self.view_with_grad(self.layout().flip(ax), "flip", move |g| {
                Ok(vec![Some(g.flip(ax as isize)?)])
            }),
        )
    }
}
