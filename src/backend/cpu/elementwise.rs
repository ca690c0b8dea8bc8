//! Shared CPU loops for elementwise maps: strided inputs in, a fresh contiguous output out.
//! Large outputs are split across rayon tasks; small ones stay on the calling thread.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::scalar::{gelu_tanh_grad_scalar, gelu_tanh_scalar, sigmoid_scalar, softplus_scalar};
use crate::backend::{BinaryOp, UnaryOp};
use crate::tensor::iter::{Plan, PAR_THRESHOLD};
use crate::tensor::{Element, Layout};

/// `out[i] = f(a[i])` over a strided view.
pub(crate) fn map1<E: Element>(a: &[E], la: &Layout, f: impl Fn(E) -> E + Sync) -> Vec<E> {
    let n = la.numel();
    if n == 0 {
        return Vec::new();
    }
    if la.is_contiguous() {
        // Collected, not written into a zero-filled buffer: one pass over the output.
        let src = &a[la.offset()..la.offset() + n];
        return if n >= PAR_THRESHOLD {
            src.par_iter()
                .with_min_len(PAR_THRESHOLD)
                .map(|&s| f(s))
                .collect()
        } else {
            src.iter().map(|&s| f(s)).collect()
        };
    }
    let mut out = vec![E::ZERO; n];
    let plan = Plan::<1>::new(la.shape(), [la.strides()]);
    let inner = plan.inner;
    let s = plan.inner_strides[0];
    let run = |start: usize, dst: &mut [E]| {
        let rows = dst.len() / inner;
        plan.for_rows([la.offset()], start, start + rows, |row, [o]| {
            let d = &mut dst[(row - start) * inner..(row - start + 1) * inner];
            for (j, v) in d.iter_mut().enumerate() {
                *v = f(a[(o as isize + j as isize * s) as usize]);
            }
        });
    };
    par_rows(&plan, &mut out, run);
    out
}

/// A fresh vector of `n` values, written chunk by chunk by `fill(start, chunk)` (on rayon
/// from `PAR_THRESHOLD` elements), without zero-filling it first. `fill` must write every
/// element of its chunk.
pub(crate) fn fill_fresh<E: Element>(
    n: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<E>]) + Sync,
) -> Vec<E> {
    write_fresh(n, |slots| {
        if n >= PAR_THRESHOLD {
            slots
                .par_chunks_mut(PAR_THRESHOLD)
                .enumerate()
                .for_each(|(i, y)| fill(i * PAR_THRESHOLD, y));
        } else {
            fill(0, slots);
        }
    })
}

/// A fresh vector of `n` values written by `write`, which gets all `n` slots uninitialised
/// and must write every one of them (no zero-filling first).
pub(crate) fn write_fresh<E: Element>(
    n: usize,
    write: impl FnOnce(&mut [MaybeUninit<E>]),
) -> Vec<E> {
    let mut v: Vec<E> = Vec::with_capacity(n);
    write(&mut v.spare_capacity_mut()[..n]);
    // SAFETY: `write` wrote all n slots, as its contract requires.
    unsafe { v.set_len(n) };
    v
}

/// `out[i] = f(a[i], b[i])` over two strided views of the output shape (broadcast strides 0).
pub(crate) fn map2<E: Element>(
    shape: &[usize],
    a: &[E],
    la: &Layout,
    b: &[E],
    lb: &Layout,
    f: impl Fn(E, E) -> E + Sync,
) -> Vec<E> {
    let n: usize = shape.iter().product();
    if n == 0 {
        return Vec::new();
    }
    let plan = Plan::<2>::new(shape, [la.strides(), lb.strides()]);
    let inner = plan.inner;
    let [sa, sb] = plan.inner_strides;
    if plan.rows == 1 && sa == 1 && sb == 1 {
        // Both operands one contiguous run (same-shape tensors, as in residual adds):
        // collected, not written into a zero-filled buffer.
        let (x, y) = (
            &a[la.offset()..la.offset() + n],
            &b[lb.offset()..lb.offset() + n],
        );
        return if n >= PAR_THRESHOLD {
            x.par_iter()
                .zip(y.par_iter())
                .with_min_len(PAR_THRESHOLD)
                .map(|(&x, &y)| f(x, y))
                .collect()
        } else {
            x.iter().zip(y).map(|(&x, &y)| f(x, y)).collect()
        };
    }
    let mut out = vec![E::ZERO; n];
    // One innermost run starting at storage offsets (oa, ob).
    let run_inner = |d: &mut [E], oa: isize, ob: isize| {
        let len = d.len();
        // Specialised loops so the common layouts vectorise.
        match (sa, sb) {
            (1, 1) => {
                let (x, y) = (
                    &a[oa as usize..oa as usize + len],
                    &b[ob as usize..ob as usize + len],
                );
                for ((o, &x), &y) in d.iter_mut().zip(x).zip(y) {
                    *o = f(x, y);
                }
            }
            (1, 0) => {
                let (x, y) = (&a[oa as usize..oa as usize + len], b[ob as usize]);
                for (o, &x) in d.iter_mut().zip(x) {
                    *o = f(x, y);
                }
            }
            (0, 1) => {
                let (x, y) = (a[oa as usize], &b[ob as usize..ob as usize + len]);
                for (o, &y) in d.iter_mut().zip(y) {
                    *o = f(x, y);
                }
            }
            _ => {
                for (j, o) in d.iter_mut().enumerate() {
                    let x = a[(oa + j as isize * sa) as usize];
                    let y = b[(ob + j as isize * sb) as usize];
                    *o = f(x, y);
                }
            }
        }
    };
    if plan.rows == 1 {
        let (oa, ob) = (la.offset() as isize, lb.offset() as isize);
        if n >= PAR_THRESHOLD {
            out.par_chunks_mut(PAR_THRESHOLD)
                .enumerate()
                .for_each(|(t, d)| {
                    let j0 = (t * PAR_THRESHOLD) as isize;
                    run_inner(d, oa + j0 * sa, ob + j0 * sb)
                });
        } else {
            run_inner(&mut out, oa, ob);
        }
        return out;
    }
    let run = |start: usize, dst: &mut [E]| {
        let rows = dst.len() / inner;
        plan.for_rows(
            [la.offset(), lb.offset()],
            start,
            start + rows,
            |row, [oa, ob]| {
                let d = &mut dst[(row - start) * inner..(row - start + 1) * inner];
                run_inner(d, oa as isize, ob as isize)
            },
        );
    };
    par_rows(&plan, &mut out, run);
    out
}

/// Runs `run(first_row, dst_rows)` over the output, in parallel when it is large.
fn par_rows<E: Element, const N: usize>(
    plan: &Plan<N>,
    out: &mut [E],
    run: impl Fn(usize, &mut [E]) + Sync,
) {
    let inner = plan.inner;
    if out.len() >= PAR_THRESHOLD && plan.rows > 1 {
        let rpt = plan.rows_per_task();
        out.par_chunks_mut(rpt * inner)
            .enumerate()
            .for_each(|(t, dst)| run(t * rpt, dst));
    } else {
        run(0, out);
    }
}

/// `out[i] = op(a[i])` over a strided view: one arm per op, each a loop of its own.
pub(crate) fn unary<E: Element>(op: UnaryOp, a: &[E], la: &Layout) -> Vec<E> {
    match op {
        UnaryOp::Neg => map1(a, la, |x| -x),
        UnaryOp::Exp => map1(a, la, |x| x.exp()),
        UnaryOp::Log => map1(a, la, |x| x.ln()),
        UnaryOp::Sqrt => map1(a, la, |x| x.sqrt()),
        UnaryOp::Square => map1(a, la, |x| x * x),
        UnaryOp::Tanh => map1(a, la, |x| x.tanh()),
        UnaryOp::Sigmoid => map1(a, la, sigmoid_scalar),
        UnaryOp::Softplus => map1(a, la, softplus_scalar),
        UnaryOp::GeluTanh => map1(a, la, gelu_tanh_scalar),
        UnaryOp::Relu => map1(a, la, |x| if x > E::ZERO { x } else { E::ZERO }),
        UnaryOp::Abs => map1(a, la, |x| x.abs()),
        UnaryOp::PowScalar(p) => {
            let pe = E::from_f64(p);
            map1(a, la, move |x| x.powf(pe))
        }
        UnaryOp::Clamp { lo, hi } => {
            let (l, h) = (E::from_f64(lo), E::from_f64(hi));
            map1(a, la, move |x| x.max(l).min(h))
        }
        UnaryOp::AddScalar(s) => {
            let s = E::from_f64(s);
            map1(a, la, move |x| x + s)
        }
        UnaryOp::MulScalar(s) => {
            let s = E::from_f64(s);
            map1(a, la, move |x| x * s)
        }
        UnaryOp::NonZero => map1(a, la, |v| if v != E::ZERO { E::ONE } else { E::ZERO }),
        UnaryOp::Gelu => {
            let xs = crate::tensor::iter::gather_strided(a, la.shape(), la.strides(), la.offset());
            fill_fresh(xs.len(), |lo, y| {
                crate::backend::cpu::simd::gelu_to(&xs[lo..lo + y.len()], y)
            })
        }
    }
}

/// `out[i] = op(a[i], b[i])` over two strided views of the output shape (broadcast strides
/// 0): one arm per op, each a loop of its own.
pub(crate) fn binary<E: Element>(
    op: BinaryOp,
    shape: &[usize],
    a: &[E],
    la: &Layout,
    b: &[E],
    lb: &Layout,
) -> Vec<E> {
    macro_rules! zip {
        ($f:expr) => {
            map2(shape, a, la, b, lb, $f)
        };
    }
    match op {
        BinaryOp::Add => zip!(|x, y| x + y),
        BinaryOp::Sub => zip!(|x, y| x - y),
        BinaryOp::Mul => zip!(|x, y| x * y),
        BinaryOp::Div => zip!(|x, y| x / y),
        BinaryOp::Maximum => zip!(|x, y| if x >= y { x } else { y }),
        BinaryOp::GeMask => zip!(|x, y| if x >= y { E::ONE } else { E::ZERO }),
        BinaryOp::EqMask => zip!(|x, m| if x == m { E::ONE } else { E::ZERO }),
        BinaryOp::MulOneMinus => zip!(|g, m| g * (E::ONE - m)),
        BinaryOp::SelectIfNonZero => zip!(|x, m| if m != E::ZERO { x } else { E::ZERO }),
        BinaryOp::SelectIfZero => zip!(|x, m| if m != E::ZERO { E::ZERO } else { x }),
        BinaryOp::DivRhsBackward => zip!(|t, b| -t / (b * b)),
        BinaryOp::SqrtBackward => {
            let h = E::from_f64(0.5);
            zip!(move |g, y| g * h / y)
        }
        BinaryOp::TanhBackward => zip!(|g, y| g * (E::ONE - y * y)),
        BinaryOp::SigmoidBackward => zip!(|g, y| g * y * (E::ONE - y)),
        BinaryOp::LogBackward => zip!(|g, x| g * (E::ONE / x)),
        BinaryOp::SquareBackward => zip!(|g, x| g * (x + x)),
        BinaryOp::SoftplusBackward => zip!(|g, x| g * sigmoid_scalar(x)),
        BinaryOp::GeluTanhBackward => zip!(|g, x| g * gelu_tanh_grad_scalar(x)),
        BinaryOp::ReluBackward => zip!(|g, x| g * if x > E::ZERO { E::ONE } else { E::ZERO }),
        BinaryOp::AbsBackward => zip!(|g, x| g * if x > E::ZERO {
            E::ONE
        } else if x < E::ZERO {
            -E::ONE
        } else {
            E::ZERO
        }),
        BinaryOp::PowBackward(p) => {
            let (pe, pm1) = (E::from_f64(p), E::from_f64(p - 1.0));
            zip!(move |g, x| g * (pe * x.powf(pm1)))
        }
        BinaryOp::ClampBackward { lo, hi } => {
            let (l, h) = (E::from_f64(lo), E::from_f64(hi));
            zip!(move |g, x| g * if x > l && x < h { E::ONE } else { E::ZERO })
        }
        BinaryOp::GeluBackward => {
            let gs = map2(shape, a, la, b, lb, |g, _| g);
            let xs = map2(shape, a, la, b, lb, |_, x| x);
            fill_fresh(xs.len(), |lo, y| {
                let hi = lo + y.len();
                crate::backend::cpu::simd::gelu_grad_to(&xs[lo..hi], &gs[lo..hi], y)
            })
        }
    }
}
