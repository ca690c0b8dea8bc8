//! Shape, strides and offset: how a tensor's elements sit in its storage.
//!
//! Every view op (reshape of a contiguous tensor, permute, narrow, broadcast, flip, ...) only
//! builds a new `Layout` over the same storage. Strides are in elements and may be zero
//! (broadcast) or negative (flip).

use crate::error::{Error, Result};

/// Where a tensor's elements sit in its storage: element `idx` is at
/// `offset + sum(idx[i] * strides[i])`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    shape: Dims<usize>,
    strides: Dims<isize>,
    offset: usize,
}

/// Axes kept in place up to this rank (the model's tensors have at most five).
const INLINE_RANK: usize = 6;

/// A short list of per-axis values, inline up to [`INLINE_RANK`] entries: every view and
/// every op's output builds a layout, and on a GPU (where the op itself is one launch) two
/// heap allocations per layout are a visible share of the host's time per launch.
#[derive(Clone)]
enum Dims<T: Copy + Default> {
    Inline { len: u8, items: [T; INLINE_RANK] },
    Heap(Vec<T>),
}

impl<T: Copy + Default> Dims<T> {
    fn new() -> Self {
        Dims::Inline {
            len: 0,
            items: [T::default(); INLINE_RANK],
        }
    }

    fn from_slice(s: &[T]) -> Self {
        let mut d = Self::new();
        for &v in s {
            d.push(v);
        }
        d
    }

    /// `n` default values.
    fn filled(n: usize) -> Self {
        let mut d = Self::new();
        for _ in 0..n {
            d.push(T::default());
        }
        d
    }

    fn push(&mut self, v: T) {
        match self {
            Dims::Inline { len, items } if (*len as usize) < INLINE_RANK => {
                items[*len as usize] = v;
                *len += 1;
            }
            Dims::Inline { len, items } => {
                let mut heap = items[..*len as usize].to_vec();
                heap.push(v);
                *self = Dims::Heap(heap);
            }
            Dims::Heap(h) => h.push(v),
        }
    }

    fn insert(&mut self, at: usize, v: T) {
        self.push(v);
        self[at..].rotate_right(1);
    }

    fn remove(&mut self, at: usize) {
        self[at..].rotate_left(1);
        match self {
            Dims::Inline { len, .. } => *len -= 1,
            Dims::Heap(h) => {
                h.pop();
            }
        }
    }
}

impl<T: Copy + Default> std::ops::Deref for Dims<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            Dims::Inline { len, items } => &items[..*len as usize],
            Dims::Heap(h) => h,
        }
    }
}

impl<T: Copy + Default> std::ops::DerefMut for Dims<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match self {
            Dims::Inline { len, items } => &mut items[..*len as usize],
            Dims::Heap(h) => h,
        }
    }
}

impl<'a, T: Copy + Default> IntoIterator for &'a Dims<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<T: Copy + Default> FromIterator<T> for Dims<T> {
    fn from_iter<I: IntoIterator<Item = T>>(it: I) -> Self {
        let mut d = Self::new();
        for v in it {
            d.push(v);
        }
        d
    }
}

impl<T: Copy + Default + PartialEq> PartialEq for Dims<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<T: Copy + Default + Eq> Eq for Dims<T> {}

impl<T: Copy + Default + std::fmt::Debug> std::fmt::Debug for Dims<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

/// [`contiguous_strides`] without the heap.
fn contiguous_dims(shape: &[usize]) -> Dims<isize> {
    let mut strides = Dims::filled(shape.len());
    let mut acc = 1isize;
    for i in (0..shape.len()).rev() {
        strides[i] = acc;
        acc *= shape[i].max(1) as isize;
    }
    strides
}

/// Row-major strides of a shape.
pub fn contiguous_strides(shape: &[usize]) -> Vec<isize> {
    let mut strides = vec![0isize; shape.len()];
    let mut acc = 1isize;
    for i in (0..shape.len()).rev() {
        strides[i] = acc;
        acc *= shape[i].max(1) as isize;
    }
    strides
}

/// Resolves a possibly negative axis against a rank.
pub fn resolve_axis(op: &'static str, axis: isize, rank: usize) -> Result<usize> {
    let r = rank as isize;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r {
        return Err(Error::index(
            op,
            format!("axis {axis} out of range for rank {rank}"),
        ));
    }
    Ok(a as usize)
}

/// Product of `sizes`, or `None` when it does not fit in `usize`.
pub(crate) fn checked_product(sizes: impl IntoIterator<Item = usize>) -> Option<usize> {
    sizes.into_iter().try_fold(1usize, |a, d| a.checked_mul(d))
}

/// Number of elements of `shape`, which the caller asked for (directly, or through the
/// operands `inputs` of `op`), or an [`Error::Shape`] naming `op` and `inputs` when the sizes
/// do not fit in `usize`. Zero sizes are skipped in the check: the other sizes of an empty
/// shape must still multiply to at most `usize::MAX`, so that every partial product of an
/// accepted shape (an axis range's size, a reduction count) fits as well.
pub(crate) fn checked_numel(
    op: &'static str,
    shape: &[usize],
    inputs: &[&[usize]],
    dtype: &'static str,
) -> Result<usize> {
    match checked_product(shape.iter().copied().filter(|&d| d != 0)) {
        None => Err(Error::shape(
            op,
            inputs,
            dtype,
            format!("the sizes of shape {shape:?} multiply past usize::MAX"),
        )),
        Some(_) if shape.contains(&0) => Ok(0),
        Some(n) => Ok(n),
    }
}

/// NumPy broadcasting of two shapes.
pub fn broadcast_shapes(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let da = if i + a.len() >= n {
            a[i + a.len() - n]
        } else {
            1
        };
        let db = if i + b.len() >= n {
            b[i + b.len() - n]
        } else {
            1
        };
        out[i] = if da == db {
            da
        } else if da == 1 {
            db
        } else if db == 1 {
            da
        } else {
            return None;
        };
    }
    Some(out)
}

impl Layout {
    /// Row-major layout of `shape` at offset 0.
    pub fn contiguous(shape: &[usize]) -> Self {
        Layout {
            shape: Dims::from_slice(shape),
            strides: contiguous_dims(shape),
            offset: 0,
        }
    }

    /// Size of each axis, outermost first.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// Storage step of each axis, in elements (0 when broadcast, negative when flipped).
    pub fn strides(&self) -> &[isize] {
        &self.strides
    }
    /// Storage index of the first element (all indices zero).
    pub fn offset(&self) -> usize {
        self.offset
    }
    /// Number of axes.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    /// Number of elements: the product of the shape (1 for rank 0).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Row-major contiguous (size-1 dims may have any stride; an empty layout reads nothing,
    /// so it counts as contiguous whatever its strides).
    pub fn is_contiguous(&self) -> bool {
        if self.shape.contains(&0) {
            return true;
        }
        let mut acc = 1isize;
        for i in (0..self.shape.len()).rev() {
            if self.shape[i] != 1 {
                if self.strides[i] != acc {
                    return false;
                }
                acc *= self.shape[i] as isize;
            }
        }
        true
    }

    /// Smallest and one-past-largest storage index touched (empty range for empty tensors).
    pub fn storage_span(&self) -> (usize, usize) {
        if self.numel() == 0 {
            return (self.offset, self.offset);
        }
        let mut lo = self.offset as isize;
        let mut hi = self.offset as isize;
        for (&d, &s) in self.shape.iter().zip(&self.strides) {
            let ext = (d as isize - 1) * s;
            if ext < 0 {
                lo += ext
            } else {
                hi += ext
            }
        }
        (lo as usize, hi as usize + 1)
    }

    /// Storage index of a multi-index (no bounds check beyond debug).
    pub(crate) fn index_of(&self, idx: &[usize]) -> usize {
        let mut o = self.offset as isize;
        for (i, &s) in idx.iter().zip(&self.strides) {
            o += *i as isize * s;
        }
        o as usize
    }

    /// Reshape without copying; `None` when the strides cannot express it.
    pub(crate) fn reshape(&self, shape: &[usize]) -> Option<Layout> {
        if self.is_contiguous() {
            return Some(Layout {
                shape: Dims::from_slice(shape),
                strides: contiguous_dims(shape),
                offset: self.offset,
            });
        }
        // General case: match groups of old dims to groups of new dims; each old group must be
        // internally contiguous (stride[i] == stride[i+1]*shape[i+1]).
        let old: Dims<(usize, isize)> = self
            .shape
            .iter()
            .zip(&self.strides)
            .filter(|(&d, _)| d != 1)
            .map(|(&d, &s)| (d, s))
            .collect();
        let mut new_strides = Dims::filled(shape.len());
        let mut oi = 0;
        let mut ni = 0;
        while ni < shape.len() {
            if shape[ni] == 1 {
                new_strides[ni] = 1;
                ni += 1;
                continue;
            }
            if oi >= old.len() {
                return None;
            }
            // Grow an old group and a new group until their products agree.
            let (mut po, mut pn) = (old[oi].0, shape[ni]);
            let start_n = ni;
            while po != pn {
                if po < pn {
                    oi += 1;
                    if oi >= old.len() || old[oi].1 * old[oi].0 as isize != old[oi - 1].1 {
                        return None;
                    }
                    po *= old[oi].0;
                } else {
                    ni += 1;
                    if ni >= shape.len() {
                        return None;
                    }
                    pn *= shape[ni];
                }
            }
            // New dims inside this group take strides from the group's innermost stride.
            let mut s = old[oi].1;
            for j in (start_n..=ni).rev() {
                new_strides[j] = s;
                s *= shape[j] as isize;
            }
            oi += 1;
            ni += 1;
        }
        if oi != old.len() {
            return None;
        }
        Some(Layout {
            shape: Dims::from_slice(shape),
            strides: new_strides,
            offset: self.offset,
        })
    }

    /// Axes reordered so that output axis `i` is axis `perm[i]`; `perm` is not checked.
    pub(crate) fn permute(&self, perm: &[usize]) -> Layout {
        Layout {
            shape: perm.iter().map(|&p| self.shape[p]).collect(),
            strides: perm.iter().map(|&p| self.strides[p]).collect(),
            offset: self.offset,
        }
    }

    /// Elements `start..start + len` of `axis`; the caller checks the range.
    pub(crate) fn narrow(&self, axis: usize, start: usize, len: usize) -> Layout {
        let mut l = self.clone();
        // An empty slice keeps the old offset: `start` may be one past the end, which on a
        // flipped axis would put the offset before the start of storage.
        if len > 0 {
            l.offset = (self.offset as isize + start as isize * self.strides[axis]) as usize;
        }
        l.shape[axis] = len;
        l
    }

    /// `axis` in reverse order: the offset moves to its last element and its stride is
    /// negated.
    pub(crate) fn flip(&self, axis: usize) -> Layout {
        let mut l = self.clone();
        if self.shape[axis] > 0 {
            l.offset = (self.offset as isize + (self.shape[axis] as isize - 1) * self.strides[axis])
                as usize;
        }
        l.strides[axis] = -self.strides[axis];
        l
    }

    /// Broadcast to `shape` (which must be broadcast-compatible; checked by the caller).
    pub(crate) fn broadcast_to(&self, shape: &[usize]) -> Option<Layout> {
        if shape.len() < self.rank() {
            return None;
        }
        let lead = shape.len() - self.rank();
        let mut strides = Dims::filled(shape.len());
        for i in 0..self.rank() {
            let (d, t) = (self.shape[i], shape[lead + i]);
            if d == t {
                strides[lead + i] = self.strides[i];
            } else if d == 1 {
                strides[lead + i] = 0;
            } else {
                return None;
            }
        }
        Some(Layout {
            shape: Dims::from_slice(shape),
            strides,
            offset: self.offset,
        })
    }

    /// `axis` removed; the caller checks that it has size 1.
    pub(crate) fn squeeze(&self, axis: usize) -> Layout {
        let mut l = self.clone();
        l.shape.remove(axis);
        l.strides.remove(axis);
        l
    }

    /// A size-1 axis inserted at position `axis` (`0..=rank`).
    pub(crate) fn unsqueeze(&self, axis: usize) -> Layout {
        let mut l = self.clone();
        let s = if axis < self.rank() {
            self.strides[axis] * self.shape[axis] as isize
        } else {
            1
        };
        l.shape.insert(axis, 1);
        l.strides.insert(axis, s);
        l
    }
}

/// Merges adjacent dimensions that are contiguous with respect to every layout given, and drops
/// size-1 dimensions. Returns the shared shape and one stride list per layout. Iterating the
/// result visits elements in the same order as iterating the original shape row-major.
pub(crate) fn coalesce(shape: &[usize], strides: &[&[isize]]) -> (Vec<usize>, Vec<Vec<isize>>) {
    let mut out_shape: Vec<usize> = Vec::with_capacity(shape.len());
    let mut out_strides: Vec<Vec<isize>> = vec![Vec::with_capacity(shape.len()); strides.len()];
    for d in 0..shape.len() {
        if shape[d] == 1 {
            continue;
        }
        if !out_shape.is_empty() {
            let mergeable = strides
                .iter()
                .zip(&out_strides)
                .all(|(s, o)| *o.last().unwrap() == s[d] * shape[d] as isize);
            if mergeable {
                *out_shape.last_mut().unwrap() *= shape[d];
                for (s, o) in strides.iter().zip(out_strides.iter_mut()) {
                    *o.last_mut().unwrap() = s[d];
                }
                continue;
            }
        }
        out_shape.push(shape[d]);
        for (s, o) in strides.iter().zip(out_strides.iter_mut()) {
            o.push(s[d]);
        }
    }
    if out_shape.is_empty() {
        out_shape.push(1);
        for o in out_strides.iter_mut() {
            o.push(0);
        }
    }
    (out_shape, out_strides)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_rules() {
        assert_eq!(broadcast_shapes(&[3, 1], &[4]), Some(vec![3, 4]));
        assert_eq!(broadcast_shapes(&[], &[2, 2]), Some(vec![2, 2]));
        assert_eq!(broadcast_shapes(&[3], &[4]), None);
    }

    #[test]
    fn reshape_of_permuted_view() {
        let l = Layout::contiguous(&[2, 3, 4]).permute(&[0, 2, 1]); // [2,4,3]
        assert!(l.reshape(&[8, 3]).is_none() || l.reshape(&[8, 3]).is_some());
        // [2,3,4] transposed last two can split the first dim freely.
        let r = l.reshape(&[2, 1, 4, 3]).unwrap();
        assert_eq!(r.strides(), &[12, 1, 1, 4]);
        assert!(l.reshape(&[24]).is_none());
        let n = Layout::contiguous(&[4, 6]).narrow(1, 0, 3);
        assert_eq!(n.reshape(&[2, 2, 3]).unwrap().strides(), &[12, 6, 1]);
        assert!(n.reshape(&[12]).is_none());
    }

    #[test]
    fn coalesce_merges_contiguous() {
        let (s, st) = coalesce(&[2, 3, 4], &[&[12, 4, 1], &[0, 0, 1]]);
        assert_eq!(s, vec![6, 4]);
        assert_eq!(st, vec![vec![4, 1], vec![0, 1]]);
    }

    /// The inline list behaves as a `Vec` on either side of its inline capacity, and views of
    /// ranks past it still work.
    #[test]
    fn dims_match_a_vec_inline_and_on_the_heap() {
        for n in [0, 1, INLINE_RANK - 1, INLINE_RANK, INLINE_RANK + 1, 11] {
            let want: Vec<isize> = (0..n as isize).map(|i| 10 * i - 7).collect();
            let mut d = Dims::from_slice(&want);
            let mut v = want.clone();
            assert_eq!(&*d, &v[..], "n {n}");
            assert_eq!(d, want.iter().copied().collect::<Dims<isize>>());
            for at in [0, n / 2, n] {
                d.insert(at, 99);
                v.insert(at, 99);
                assert_eq!(&*d, &v[..], "insert at {at} of {n}");
            }
            for pick in [0, 1, 2] {
                let at = [0, v.len() / 2, v.len() - 1][pick];
                d.remove(at);
                v.remove(at);
                assert_eq!(&*d, &v[..], "remove at {at} of {n}");
            }
            assert_eq!(format!("{d:?}"), format!("{v:?}"));
            assert_eq!(&*Dims::<usize>::filled(n), &vec![0; n][..]);
        }
        let shape = [2, 1, 3, 1, 2, 1, 2, 3];
        let l = Layout::contiguous(&shape);
        assert_eq!(l.strides(), &contiguous_strides(&shape)[..]);
        let u = l
            .unsqueeze(8)
            .permute(&[8, 0, 1, 2, 3, 4, 5, 6, 7])
            .squeeze(0);
        assert_eq!((u.shape(), u.strides()), (l.shape(), l.strides()));
        let r = l.reshape(&[6, 12]).unwrap();
        assert_eq!((r.shape(), r.strides()), (&[6, 12][..], &[12, 1][..]));
    }
}
