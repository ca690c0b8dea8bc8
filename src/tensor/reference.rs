//! A deliberately naive model of the tensor engine, for tests and fuzzing only.
//!
//! [`Dense`] is a row-major array of `f64` with no strides, no offsets and no sharing: every
//! view op is written as an index map (`out[idx] = in[f(idx)]`) and materialised at once.
//! Because it shares no code with [`crate::tensor::Layout`] or the kernels, agreement between
//! the two is evidence that the layout arithmetic (negative strides, zero strides, offsets,
//! coalescing) is right. [`ViewOp`] describes one step of a view program; the property
//! tests and the fuzz target run the same program through both and compare.

use crate::error::Result;
use crate::tensor::{Element, Tensor};

/// Row-major dense `f64` array: the reference model.
#[derive(Clone, Debug, PartialEq)]
pub struct Dense {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

/// Row-major multi-index of flat position `flat` in `shape`.
pub fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for (i, &d) in idx.iter_mut().zip(shape).rev() {
        *i = flat % d;
        flat /= d;
    }
    idx
}

/// Flat row-major position of `idx` in `shape`.
pub fn ravel(idx: &[usize], shape: &[usize]) -> usize {
    idx.iter().zip(shape).fold(0, |acc, (&i, &d)| acc * d + i)
}

impl Dense {
    /// Builds `shape` by evaluating `f` at every multi-index in row-major order.
    pub fn from_fn(shape: &[usize], mut f: impl FnMut(&[usize]) -> f64) -> Self {
        let n: usize = shape.iter().product();
        let data = (0..n).map(|i| f(&unravel(i, shape))).collect();
        Dense {
            shape: shape.to_vec(),
            data,
        }
    }

    /// `0, 1, 2, ...` in row-major order: every element distinct, so any misplaced index shows.
    pub fn iota(shape: &[usize]) -> Self {
        Dense::from_fn(shape, |idx| ravel(idx, shape) as f64)
    }

    /// The element at a multi-index.
    pub fn at(&self, idx: &[usize]) -> f64 {
        self.data[ravel(idx, &self.shape)]
    }

    /// The same values as an engine tensor.
    pub fn to_tensor<E: Element>(&self) -> Tensor<E> {
        Tensor::from_raw(
            self.data.iter().map(|&v| E::from_f64(v)).collect(),
            &self.shape,
        )
    }

    /// An engine tensor's values, read through its layout.
    pub fn of_tensor<E: Element>(t: &Tensor<E>) -> Self {
        Dense {
            shape: t.shape().to_vec(),
            data: t.to_f64_vec(),
        }
    }

    /// Applies one view op; `None` where the engine must return an error.
    pub fn apply(&self, op: &ViewOp) -> Option<Dense> {
        let s = &self.shape;
        let r = s.len();
        match *op {
            ViewOp::Permute(ref p) => {
                let mut seen = vec![false; r];
                if p.len() != r
                    || p.iter()
                        .any(|&a| a >= r || std::mem::replace(&mut seen[a], true))
                {
                    return None;
                }
                let shape: Vec<usize> = p.iter().map(|&a| s[a]).collect();
                Some(Dense::from_fn(&shape, |idx| {
                    let mut src = vec![0; r];
                    for (i, &a) in p.iter().enumerate() {
                        src[a] = idx[i];
                    }
                    self.at(&src)
                }))
            }
            ViewOp::Transpose(a, b) => {
                if a >= r || b >= r {
                    return None;
                }
                let mut p: Vec<usize> = (0..r).collect();
                p.swap(a, b);
                self.apply(&ViewOp::Permute(p))
            }
            ViewOp::Narrow { axis, start, len } => {
                if axis >= r || start + len > s[axis] {
                    return None;
                }
                let mut shape = s.clone();
                shape[axis] = len;
                Some(Dense::from_fn(&shape, |idx| {
                    let mut src = idx.to_vec();
                    src[axis] += start;
                    self.at(&src)
                }))
            }
            ViewOp::Flip(axis) => {
                if axis >= r {
                    return None;
                }
                Some(Dense::from_fn(s, |idx| {
                    let mut src = idx.to_vec();
                    src[axis] = s[axis] - 1 - idx[axis];
                    self.at(&src)
                }))
            }
            ViewOp::BroadcastTo(ref shape) => {
                if shape.len() < r {
                    return None;
                }
                let lead = shape.len() - r;
                for i in 0..r {
                    if s[i] != shape[lead + i] && s[i] != 1 {
                        return None;
                    }
                }
                Some(Dense::from_fn(shape, |idx| {
                    let src: Vec<usize> = (0..r)
                        .map(|i| if s[i] == 1 { 0 } else { idx[lead + i] })
                        .collect();
                    self.at(&src)
                }))
            }
            ViewOp::Unsqueeze(axis) => {
                if axis > r {
                    return None;
                }
                let mut shape = s.clone();
                shape.insert(axis, 1);
                Some(Dense {
                    shape,
                    data: self.data.clone(),
                })
            }
            ViewOp::Squeeze(axis) => {
                if axis >= r || s[axis] != 1 {
                    return None;
                }
                let mut shape = s.clone();
                shape.remove(axis);
                Some(Dense {
                    shape,
                    data: self.data.clone(),
                })
            }
            ViewOp::Reshape(ref shape) => {
                if shape.iter().product::<usize>() != self.data.len() {
                    return None;
                }
                Some(Dense {
                    shape: shape.clone(),
                    data: self.data.clone(),
                })
            }
            ViewOp::Contiguous => Some(self.clone()),
        }
    }

    /// Elementwise `f` with NumPy broadcasting; `None` when the shapes do not broadcast.
    pub fn zip(&self, other: &Dense, f: impl Fn(f64, f64) -> f64) -> Option<Dense> {
        let n = self.shape.len().max(other.shape.len());
        let pad = |s: &[usize]| {
            let mut v = vec![1; n - s.len()];
            v.extend_from_slice(s);
            v
        };
        let (a, b) = (pad(&self.shape), pad(&other.shape));
        let mut shape = Vec::with_capacity(n);
        for (&x, &y) in a.iter().zip(&b) {
            shape.push(match (x, y) {
                _ if x == y => x,
                (1, _) => y,
                (_, 1) => x,
                _ => return None,
            });
        }
        let pick = |s: &[usize], idx: &[usize]| -> Vec<usize> {
            s.iter()
                .zip(idx)
                .map(|(&d, &i)| if d == 1 { 0 } else { i })
                .collect()
        };
        Some(Dense::from_fn(&shape, |idx| {
            let x = self.data[ravel(&pick(&a, idx), &a)];
            let y = other.data[ravel(&pick(&b, idx), &b)];
            f(x, y)
        }))
    }

    /// Sum or max over `axes` (unique, in range), keeping reduced axes as size 1 if `keepdim`.
    pub fn reduce(&self, axes: &[usize], keepdim: bool, max: bool) -> Dense {
        let kshape: Vec<usize> = self
            .shape
            .iter()
            .enumerate()
            .map(|(i, &d)| if axes.contains(&i) { 1 } else { d })
            .collect();
        let init = if max { f64::NEG_INFINITY } else { 0.0 };
        let mut acc = Dense::from_fn(&kshape, |_| init);
        for flat in 0..self.data.len() {
            let mut idx = unravel(flat, &self.shape);
            for &a in axes {
                idx[a] = 0;
            }
            let o = ravel(&idx, &kshape);
            let v = self.data[flat];
            acc.data[o] = if max {
                acc.data[o].max(v)
            } else {
                acc.data[o] + v
            };
        }
        if !keepdim {
            acc.shape = self
                .shape
                .iter()
                .enumerate()
                .filter(|(i, _)| !axes.contains(i))
                .map(|(_, &d)| d)
                .collect();
        }
        acc
    }

    /// Batched matrix product with broadcast batch axes, by the textbook triple loop.
    pub fn matmul(&self, other: &Dense) -> Option<Dense> {
        let (sa, sb) = (&self.shape, &other.shape);
        if sa.len() < 2 || sb.len() < 2 {
            return None;
        }
        let (m, k) = (sa[sa.len() - 2], sa[sa.len() - 1]);
        let (k2, n) = (sb[sb.len() - 2], sb[sb.len() - 1]);
        if k != k2 {
            return None;
        }
        let ba = Dense {
            shape: sa[..sa.len() - 2].to_vec(),
            data: vec![0.0; sa[..sa.len() - 2].iter().product()],
        };
        let bb = Dense {
            shape: sb[..sb.len() - 2].to_vec(),
            data: vec![0.0; sb[..sb.len() - 2].iter().product()],
        };
        let batch = ba.zip(&bb, |_, _| 0.0)?.shape;
        let mut shape = batch.clone();
        shape.extend([m, n]);
        let batch_index = |s: &[usize], idx: &[usize]| -> Vec<usize> {
            let lead = idx.len() - s.len();
            s.iter()
                .enumerate()
                .map(|(i, &d)| if d == 1 { 0 } else { idx[lead + i] })
                .collect()
        };
        Some(Dense::from_fn(&shape, |idx| {
            let nb = idx.len() - 2;
            let (i, j) = (idx[nb], idx[nb + 1]);
            let mut ia = batch_index(&sa[..sa.len() - 2], &idx[..nb]);
            let mut ib = batch_index(&sb[..sb.len() - 2], &idx[..nb]);
            ia.extend([i, 0]);
            ib.extend([0, j]);
            let mut acc = 0.0;
            for p in 0..k {
                let la = ia.len();
                let lb = ib.len();
                ia[la - 1] = p;
                ib[lb - 2] = p;
                acc += self.at(&ia) * other.at(&ib);
            }
            acc
        }))
    }
}

/// One step of a view program, with raw (unchecked) arguments so invalid steps can be
/// expressed and the engine's error path exercised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ViewOp {
    Permute(Vec<usize>),
    Transpose(usize, usize),
    Narrow {
        axis: usize,
        start: usize,
        len: usize,
    },
    Flip(usize),
    BroadcastTo(Vec<usize>),
    Unsqueeze(usize),
    Squeeze(usize),
    Reshape(Vec<usize>),
    Contiguous,
}

impl ViewOp {
    /// Runs the step on an engine tensor.
    pub fn apply<E: Element>(&self, t: &Tensor<E>) -> Result<Tensor<E>> {
        match self {
            ViewOp::Permute(p) => t.permute(p),
            ViewOp::Transpose(a, b) => t.transpose(*a as isize, *b as isize),
            ViewOp::Narrow { axis, start, len } => t.narrow(*axis as isize, *start, *len),
            ViewOp::Flip(a) => t.flip(*a as isize),
            ViewOp::BroadcastTo(s) => t.broadcast_to(s),
            ViewOp::Unsqueeze(a) => t.unsqueeze(*a as isize),
            ViewOp::Squeeze(a) => t.squeeze(*a as isize),
            ViewOp::Reshape(s) => t.reshape(s),
            ViewOp::Contiguous => Ok(t.contiguous()?),
        }
    }

    /// Decodes one step from a byte stream for fuzzing, given the current shape so most
    /// decoded steps are valid (a fuzzer wastes little time on rejected programs) while
    /// invalid ones remain reachable. Returns `None` when the bytes run out.
    pub fn decode(bytes: &mut impl Iterator<Item = u8>, shape: &[usize]) -> Option<ViewOp> {
        let tag = bytes.next()?;
        let r = shape.len();
        let mut arg = || bytes.next().unwrap_or(0) as usize;
        // Bytes above 250 deliberately produce out-of-range arguments.
        let axis = |b: usize, bound: usize| {
            if b > 250 || bound == 0 {
                b
            } else {
                b % bound
            }
        };
        Some(match tag % 9 {
            0 => {
                // A rotation or reversal of the axes keeps the permutation valid.
                let k = arg();
                let mut p: Vec<usize> = (0..r).collect();
                if k % 2 == 0 {
                    p.rotate_left(if r == 0 { 0 } else { k / 2 % r });
                } else {
                    p.reverse();
                }
                if k > 250 {
                    p.push(r);
                }
                ViewOp::Permute(p)
            }
            1 => ViewOp::Transpose(axis(arg(), r), axis(arg(), r)),
            2 => {
                let a = axis(arg(), r);
                let d = shape.get(a).copied().unwrap_or(0);
                let start = arg() % (d + 2);
                let len = arg() % (d + 2);
                ViewOp::Narrow {
                    axis: a,
                    start,
                    len,
                }
            }
            3 => ViewOp::Flip(axis(arg(), r)),
            4 => {
                // Prepend up to two axes and widen size-1 axes.
                let lead = arg() % 3;
                let mut s: Vec<usize> = (0..lead).map(|_| 1 + arg() % 3).collect();
                for &d in shape {
                    s.push(if d == 1 { 1 + arg() % 3 } else { d });
                }
                if arg() > 250 {
                    if let Some(x) = s.last_mut() {
                        *x += 1;
                    }
                }
                ViewOp::BroadcastTo(s)
            }
            5 => ViewOp::Unsqueeze(axis(arg(), r + 1)),
            6 => {
                // Prefer a size-1 axis when there is one.
                let b = arg();
                let ones: Vec<usize> = (0..r).filter(|&i| shape[i] == 1).collect();
                ViewOp::Squeeze(if b <= 250 && !ones.is_empty() {
                    ones[b % ones.len()]
                } else {
                    axis(b, r)
                })
            }
            7 => {
                // Merge two neighbouring axes, split one, or (rarely) ask for a wrong size.
                let b = arg();
                let mut s = shape.to_vec();
                if b > 250 {
                    s.push(2);
                } else if r >= 2 && b % 2 == 0 {
                    let i = b / 2 % (r - 1);
                    let m = s.remove(i + 1);
                    s[i] *= m;
                } else if r >= 1 {
                    let i = b / 2 % r;
                    let d = s[i];
                    if let Some(f) = (2..=d).find(|f| d.is_multiple_of(*f)) {
                        s[i] = d / f;
                        s.insert(i + 1, f);
                    }
                }
                ViewOp::Reshape(s)
            }
            _ => ViewOp::Contiguous,
        })
    }
}

/// Decodes a view program from bytes, starting at `shape`: steps are decoded against the
/// reference's current shape and stop after the first step the reference rejects, after
/// `max_ops` steps, or before a step would make the tensor larger than `max_numel` elements
/// or rank 8 (broadcasting can grow it quickly).
pub fn decode_program(
    bytes: &mut impl Iterator<Item = u8>,
    shape: &[usize],
    max_ops: usize,
    max_numel: usize,
) -> Vec<ViewOp> {
    let mut ops = Vec::new();
    let mut cur = Dense::iota(shape);
    while ops.len() < max_ops {
        let Some(op) = ViewOp::decode(bytes, &cur.shape) else {
            break;
        };
        if let ViewOp::BroadcastTo(s) = &op {
            if s.len() > 8 || s.iter().product::<usize>() > max_numel {
                continue;
            }
        }
        if matches!(op, ViewOp::Unsqueeze(_)) && cur.shape.len() >= 8 {
            continue;
        }
        match cur.apply(&op) {
            Some(next) => {
                cur = next;
                ops.push(op);
            }
            None => {
                ops.push(op);
                break;
            }
        }
    }
    ops
}

/// Runs `ops` on both the engine tensor `t` and the reference `d`, step by step, and returns
/// a description of the first disagreement: a value or shape mismatch, or one side failing
/// where the other succeeded. Stops once both reject a step, returning the last pair that
/// both accepted. Also checks that every
/// pure view step shares storage with its input (no hidden copies), and that `contiguous()`
/// of each intermediate reads the same values.
pub fn run_view_program<E: Element>(
    t: &Tensor<E>,
    d: &Dense,
    ops: &[ViewOp],
) -> std::result::Result<(Tensor<E>, Dense), String> {
    let (mut t, mut d) = (t.clone(), d.clone());
    for (step, op) in ops.iter().enumerate() {
        let got = op.apply(&t);
        let want = d.apply(op);
        match (got, want) {
            (Ok(nt), Some(nd)) => {
                let seen = Dense::of_tensor(&nt);
                if seen != nd {
                    return Err(format!(
                        "step {step} {op:?}: engine {seen:?} != reference {nd:?} (layout {:?})",
                        nt.layout()
                    ));
                }
                let must_share = !matches!(op, ViewOp::Contiguous | ViewOp::Reshape(_))
                    || (matches!(op, ViewOp::Reshape(_)) && t.is_contiguous());
                if must_share && !nt.shares_storage(&t) {
                    return Err(format!("step {step} {op:?}: a view op copied its input"));
                }
                // A contiguous() of the view must agree with reading through the layout.
                let c = nt.contiguous().map_err(|e| e.to_string())?;
                if !c.is_contiguous() || Dense::of_tensor(&c) != nd {
                    return Err(format!("step {step} {op:?}: contiguous() differs"));
                }
                t = nt;
                d = nd;
            }
            (Err(_), None) => return Ok((t, d)),
            (Ok(nt), None) => {
                return Err(format!(
                    "step {step} {op:?}: engine accepted shape {:?} -> {:?}, reference rejects",
                    t.shape(),
                    nt.shape()
                ))
            }
            (Err(e), Some(_)) => {
                return Err(format!(
                    "step {step} {op:?}: engine rejected shape {:?}: {e}",
                    t.shape()
                ))
            }
        }
    }
    Ok((t, d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_maps() {
        let d = Dense::iota(&[2, 3]);
        assert_eq!(
            d.apply(&ViewOp::Transpose(0, 1)).unwrap().data,
            vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]
        );
        assert_eq!(
            d.apply(&ViewOp::Flip(1)).unwrap().data,
            vec![2.0, 1.0, 0.0, 5.0, 4.0, 3.0]
        );
        assert_eq!(
            d.apply(&ViewOp::Narrow {
                axis: 1,
                start: 1,
                len: 2
            })
            .unwrap()
            .data,
            vec![1.0, 2.0, 4.0, 5.0]
        );
        assert!(d.apply(&ViewOp::Squeeze(0)).is_none());
        let s = d.reduce(&[1], false, false);
        assert_eq!((s.shape, s.data), (vec![2], vec![3.0, 12.0]));
        let m = d.matmul(&Dense::iota(&[3, 1])).unwrap();
        assert_eq!(m.data, vec![5.0, 14.0]);
    }
}
