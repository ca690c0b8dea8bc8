//! Strided iteration: the one loop nest every elementwise kernel uses.
//!
//! A kernel describes its operands by strides over a shared shape. `Plan` coalesces the
//! dimensions (so a contiguous tensor becomes a single run and a bias broadcast becomes
//! rows x columns), then hands the kernel one innermost run at a time with the storage offset
//! of each operand and the inner strides. Kernels specialise on inner strides of 0 and 1 so
//! the compiler can vectorise the common cases.

use super::layout::coalesce;

/// Below this many elements, work stays on the calling thread (thread hand-off costs more).
pub const PAR_THRESHOLD: usize = 1 << 15;

/// A loop nest over a shape shared by `N` strided operands: `rows` innermost runs of `inner`
/// elements each, after [`coalesce`] has merged what it can.
#[derive(Clone, Debug)]
pub struct Plan<const N: usize> {
    /// Outer dims (all but the innermost after coalescing).
    outer: Vec<usize>,
    outer_strides: [Vec<isize>; N],
    /// Innermost run length and strides.
    pub inner: usize,
    /// Stride of each operand along the innermost run, in elements.
    pub inner_strides: [isize; N],
    /// Number of innermost runs (product of the outer dims; 0 when any dim is 0).
    pub rows: usize,
}

impl<const N: usize> Plan<N> {
    /// Plans the iteration of `shape`, with `strides[k]` (one per axis) for operand `k`.
    pub fn new(shape: &[usize], strides: [&[isize]; N]) -> Self {
        let (s, st) = coalesce(shape, &strides);
        let nd = s.len();
        let inner = s[nd - 1];
        let inner_strides: [isize; N] = std::array::from_fn(|k| st[k][nd - 1]);
        let outer = s[..nd - 1].to_vec();
        let outer_strides: [Vec<isize>; N] = std::array::from_fn(|k| st[k][..nd - 1].to_vec());
        let rows = if shape.contains(&0) {
            0
        } else {
            outer.iter().product()
        };
        Plan {
            outer,
            outer_strides,
            inner,
            inner_strides,
            rows,
        }
    }

    /// Calls `f(row, offsets)` for rows `start..end`, where `offsets[k]` is the storage index of
    /// operand `k`'s first element in that row (relative to `base`).
    pub fn for_rows(
        &self,
        base: [usize; N],
        start: usize,
        end: usize,
        mut f: impl FnMut(usize, [usize; N]),
    ) {
        if start >= end {
            return;
        }
        let nd = self.outer.len();
        let mut idx = vec![0usize; nd];
        let mut rem = start;
        for (i, &d) in idx.iter_mut().zip(&self.outer).rev() {
            *i = rem % d;
            rem /= d;
        }
        let mut off: [isize; N] = std::array::from_fn(|k| {
            let strides = &self.outer_strides[k];
            base[k] as isize
                + idx
                    .iter()
                    .zip(strides)
                    .map(|(&i, &s)| i as isize * s)
                    .sum::<isize>()
        });
        for row in start..end {
            f(row, std::array::from_fn(|k| off[k] as usize));
            // Increment the multi-index with carry, updating offsets incrementally.
            let mut d = nd;
            while d > 0 {
                d -= 1;
                idx[d] += 1;
                for (o, st) in off.iter_mut().zip(&self.outer_strides) {
                    *o += st[d];
                }
                if idx[d] < self.outer[d] {
                    break;
                }
                for (o, st) in off.iter_mut().zip(&self.outer_strides) {
                    *o -= st[d] * self.outer[d] as isize;
                }
                idx[d] = 0;
            }
        }
    }

    /// Rows per parallel task so that each task has about `PAR_THRESHOLD` elements.
    pub fn rows_per_task(&self) -> usize {
        (PAR_THRESHOLD / self.inner.max(1)).max(1)
    }
}

/// Copies a strided view into a new row-major vector.
pub fn gather_strided<E: Copy + Default + Send + Sync>(
    src: &[E],
    shape: &[usize],
    strides: &[isize],
    offset: usize,
) -> Vec<E> {
    let n: usize = shape.iter().product();
    let plan = Plan::<1>::new(shape, [strides]);
    let mut out = vec![E::default(); n];
    let inner = plan.inner;
    let s = plan.inner_strides[0];
    if n == 0 {
        return out;
    }
    let fill = |rows: std::ops::Range<usize>, dst: &mut [E]| {
        plan.for_rows([offset], rows.start, rows.end, |row, [o]| {
            let d = &mut dst[(row - rows.start) * inner..(row - rows.start + 1) * inner];
            if s == 1 {
                d.copy_from_slice(&src[o..o + inner]);
            } else {
                for (j, v) in d.iter_mut().enumerate() {
                    *v = src[(o as isize + j as isize * s) as usize];
                }
            }
        });
    };
    if n >= PAR_THRESHOLD {
        use rayon::prelude::*;
        let rpt = plan.rows_per_task();
        out.par_chunks_mut(rpt * inner)
            .enumerate()
            .for_each(|(t, dst)| {
                let start = t * rpt;
                fill(start..(start + rpt).min(plan.rows), dst)
            });
    } else {
        fill(0..plan.rows, &mut out);
    }
    out
}
