//! Matrix products on strided operands.
//!
//! The GEMM (`ops::gemm` for f32, matrixmultiply's `dgemm` for f64) takes a row stride and a
//! column stride for every operand, so a transposed or narrowed operand goes to the kernel as
//! it is: no copy, no extra pass. Batched products broadcast their batch dimensions; many small
//! products run in parallel over the batch, large ones split their own rows over threads.

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::ops::mlp::{linear_grads, SavedInput};
use crate::profile::{Kernel, Timer};
use crate::tensor::layout::{broadcast_shapes, checked_numel};
use crate::tensor::{Element, Layout, Tensor};

/// Raw `c = a @ b (+ beta*c)` for one matrix each, by pointers and strides.
#[derive(Clone, Copy)]
pub(crate) struct MatView {
    pub offset: usize,
    pub rs: isize,
    pub cs: isize,
}

impl MatView {
    /// The last two axes of a layout, at a given base offset.
    fn of(l: &Layout, offset: usize) -> Self {
        let r = l.rank();
        MatView {
            offset,
            rs: l.strides()[r - 2],
            cs: l.strides()[r - 1],
        }
    }
}

/// # Safety
/// Views must be in bounds of their slices (every element of the `m x k` and `k x n` matrices
/// they describe), `c` with strides `(rsc, csc)` must be an `m x n` matrix valid for writes
/// (and reads when `beta != 0`), and `c` must not overlap `a` or `b`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_into<E: Element>(
    m: usize,
    k: usize,
    n: usize,
    a: &[E],
    va: MatView,
    b: &[E],
    vb: MatView,
    beta: E,
    c: *mut E,
    rsc: isize,
    csc: isize,
) {
    crate::backend::cpu::gemm_any(
        m,
        k,
        n,
        E::ONE,
        a.as_ptr().add(va.offset),
        va.rs,
        va.cs,
        b.as_ptr().add(vb.offset),
        vb.rs,
        vb.cs,
        beta,
        c,
        rsc,
        csc,
    )
}

struct SendPtr<E>(*mut E);
// SAFETY: the only use is `matmul_raw`'s parallel loop, where each task writes its own
// disjoint `m * n` block of a buffer that outlives the loop, and `E: Element` values are
// plain `Copy` numbers that may be written from any thread.
unsafe impl<E> Send for SendPtr<E> {}
// SAFETY: as for `Send`: tasks sharing the pointer write disjoint blocks and read nothing.
unsafe impl<E> Sync for SendPtr<E> {}

/// Batched product without recording; `a` is `[..., m, k]`, `b` is `[..., k, n]`.
pub(crate) fn matmul_raw<E: Element>(a: &Tensor<E>, b: &Tensor<E>) -> Result<Tensor<E>> {
    let gpu = crate::backend::on_gpu("matmul", &[a, b])?;
    let _timer = Timer::start(Kernel::Matmul);
    let (sa, sb) = (a.shape(), b.shape());
    let bad = |d: &str| Error::shape("matmul", &[sa, sb], E::DTYPE.name(), d.to_string());
    if sa.len() < 2 || sb.len() < 2 {
        return Err(bad("both operands need at least 2 dimensions"));
    }
    let (m, k) = (sa[sa.len() - 2], sa[sa.len() - 1]);
    let (k2, n) = (sb[sb.len() - 2], sb[sb.len() - 1]);
    if k != k2 {
        return Err(bad("inner dimensions differ"));
    }
    let batch = broadcast_shapes(&sa[..sa.len() - 2], &sb[..sb.len() - 2])
        .ok_or_else(|| bad("batch dimensions do not broadcast"))?;
    let mut shape_a = batch.clone();
    shape_a.extend([m, k]);
    let mut shape_b = batch.clone();
    shape_b.extend([k, n]);
    let la = a.layout().broadcast_to(&shape_a).expect("checked");
    let lb = b.layout().broadcast_to(&shape_b).expect("checked");
    let mut out_shape = batch.clone();
    out_shape.extend([m, n]);
    let len = checked_numel("matmul", &out_shape, &[sa, sb], E::DTYPE.name())?;
    if gpu {
        return if len == 0 || k == 0 {
            Tensor::full_on(&out_shape, 0.0, a.device())
        } else {
            crate::backend::gpu::matmul(a, &la, b, &lb, &out_shape)
        };
    }
    let nb: usize = batch.iter().product();
    // With k == 0 the product is all zeros, and an empty operand's offset need not point
    // into its storage, so no pointer is formed from it.
    if len == 0 || k == 0 {
        return Ok(Tensor::from_raw(vec![E::ZERO; len], &out_shape));
    }
    // Left uninitialised: with beta = 0 GEMM writes every element of C without reading it
    // (matrixmultiply documents this), and zero-filling first is a full extra pass over the
    // output (measured: the API at ~0.96 of a direct sgemm call with it, ~1.0 without).
    let mut out: Vec<E> = Vec::with_capacity(len);
    // Offsets of each batch element in both operands.
    let batch_offsets = |l: &Layout, i: usize| -> usize {
        let mut rem = i;
        let mut o = l.offset() as isize;
        for d in (0..batch.len()).rev() {
            let idx = rem % batch[d];
            rem /= batch[d];
            o += idx as isize * l.strides()[d];
        }
        o as usize
    };
    let ga = a.storage().read();
    let gb = b.storage().read();
    let (da, db): (&[E], &[E]) = (&ga, &gb);
    // SAFETY: `la` and `lb` are the operands' layouts broadcast to the batch shape, so batch
    // element i's `m x k` and `k x n` views lie inside `da` and `db`; callers pass a `c`
    // with room for the `m x n` block, in `out`, which is distinct from both storages; with
    // beta = 0 the block is written without being read.
    let one = |i: usize, c: *mut E| unsafe {
        gemm_into(
            m,
            k,
            n,
            da,
            MatView::of(&la, batch_offsets(&la, i)),
            db,
            MatView::of(&lb, batch_offsets(&lb, i)),
            E::ZERO,
            c,
            n as isize,
            1,
        )
    };
    let small = m * n * k < (1 << 18);
    if nb > 1 && small {
        let ptr = SendPtr(out.as_mut_ptr());
        let ptr = &ptr;
        (0..nb).into_par_iter().for_each(|i| {
            // SAFETY: `out` has capacity `len = nb * m * n`, so block i starts inside it
            // (`add` stays within the allocation), and each batch element writes its own
            // disjoint m*n block.
            one(i, unsafe { ptr.0.add(i * m * n) })
        });
    } else {
        for i in 0..nb {
            // SAFETY: `out` has capacity `nb * m * n`, so block i starts inside it.
            one(i, unsafe { out.as_mut_ptr().add(i * m * n) });
        }
    }
    drop((ga, gb));
    // SAFETY: the nb blocks of m*n elements tile 0..len and each was fully written by a
    // beta = 0 GEMM above.
    unsafe { out.set_len(len) };
    Ok(Tensor::from_raw(out, &out_shape))
}

impl<E: Element> Tensor<E> {
    /// Matrix product over the last two axes, broadcasting batch axes.
    pub fn matmul(&self, other: &Tensor<E>) -> Result<Tensor<E>> {
        let out = matmul_raw(self, other)?;
        let (a, b) = (self.detach(), other.detach());
        let (ra, rb) = (self.requires_grad(), other.requires_grad());
        Ok(out.record("matmul", &[self, other], move |g| {
            let ga = if ra {
                Some(matmul_raw(g, &b.t()?)?.sum_to(a.shape())?)
            } else {
                None
            };
            let gb = if rb {
                Some(matmul_raw(&a.t()?, g)?.sum_to(b.shape())?)
            } else {
                None
            };
            Ok(vec![ga, gb])
        }))
    }

    /// `x @ w^T + b` with `x` `[..., in]`, `w` `[out, in]`, `b` `[out]`: one product, with the
    /// bias preloaded into the output and the weight read transposed in place.
    pub fn linear(&self, w: &Tensor<E>, b: Option<&Tensor<E>>) -> Result<Tensor<E>> {
        let mut operands = vec![self, w];
        operands.extend(b);
        let gpu = crate::backend::on_gpu("linear", &operands)?;
        let xs = self.shape();
        let bad = |d: &str| {
            let mut shapes: Vec<&[usize]> = vec![xs, w.shape()];
            if let Some(b) = b {
                shapes.push(b.shape());
            }
            Error::shape("linear", &shapes, E::DTYPE.name(), d.to_string())
        };
        if w.rank() != 2 || xs.is_empty() {
            return Err(bad("weight must be [out, in] and input at least 1-D"));
        }
        let (out_f, in_f) = (w.shape()[0], w.shape()[1]);
        if xs[xs.len() - 1] != in_f {
            return Err(bad("input features differ from weight's in-features"));
        }
        if let Some(b) = b {
            if b.shape() != [out_f] {
                return Err(bad("bias must be [out]"));
            }
        }
        let rows: usize = xs[..xs.len() - 1].iter().product();
        let mut out_shape = xs.to_vec();
        *out_shape.last_mut().expect("rank checked") = out_f;
        if checked_numel("linear", &out_shape, &[], E::DTYPE.name()).is_err() {
            return Err(bad("the output's sizes multiply past usize::MAX"));
        }
        let timer = Timer::start(Kernel::Matmul);
        // Flatten the leading axes: a view when possible, a copy otherwise.
        let x2 = self.detach().reshape(&[rows, in_f])?;
        // The weight gradient reads the input; under bf16 on a GPU, as the bf16 copy the
        // forward's GEMM makes of it (see SavedInput).
        let want_w = w.requires_grad();
        if gpu {
            let (out, kept) = if rows > 0 && out_f > 0 {
                crate::backend::gpu::linear(&x2, w, b, want_w)?
            } else {
                (Tensor::full_on(&[rows, out_f], 0.0, self.device())?, None)
            };
            let saved = SavedInput::new(x2, kept, want_w);
            return self.finish_linear(out, w, b, saved, rows, out_f, timer);
        }
        let len = rows * out_f;
        // in_f == 0: the output is the bias alone (see matmul_raw on empty operands).
        let run_gemm = rows > 0 && in_f > 0 && out_f > 0;
        let mut out: Vec<E> = if run_gemm {
            // Uninitialised, as in matmul_raw: the GEMM below writes all of it (adding the
            // bias as it stores each tile, when there is one).
            Vec::with_capacity(len)
        } else {
            match b {
                Some(b) => b.to_vec().repeat(rows),
                None => vec![E::ZERO; len],
            }
        };
        if run_gemm {
            let gx = x2.storage().read();
            let gw = w.storage().read();
            let (lx, lw) = (x2.layout(), w.layout());
            let bias = b.map(|b| b.to_vec());
            // SAFETY: the views are the tensors' own layouts, in bounds by construction; w is
            // read as the [in, out] view w^T by swapping its strides; the output is a fresh
            // buffer of rows x out_f that the GEMM writes in full.
            unsafe {
                let (x, wt) = (gx.as_ptr().add(lx.offset()), gw.as_ptr().add(lw.offset()));
                let (rx, cx) = (lx.strides()[0], lx.strides()[1]);
                let (rw, cw) = (lw.strides()[1], lw.strides()[0]);
                let o = out.as_mut_ptr();
                match &bias {
                    Some(bv) => crate::backend::cpu::gemm_bias_any(
                        rows,
                        in_f,
                        out_f,
                        x,
                        rx,
                        cx,
                        wt,
                        rw,
                        cw,
                        bv.as_ptr(),
                        o,
                        out_f as isize,
                        1,
                    ),
                    None => crate::backend::cpu::gemm_any(
                        rows,
                        in_f,
                        out_f,
                        E::ONE,
                        x,
                        rx,
                        cx,
                        wt,
                        rw,
                        cw,
                        E::ZERO,
                        o,
                        out_f as isize,
                        1,
                    ),
                }
                out.set_len(len);
            }
        }
        self.finish_linear(
            Tensor::from_raw(out, &[rows, out_f]),
            w,
            b,
            SavedInput::new(x2, None, want_w),
            rows,
            out_f,
            timer,
        )
    }

    /// Wraps a finished linear output and records its backward.
    #[allow(clippy::too_many_arguments)]
    fn finish_linear(
        &self,
        out: Tensor<E>,
        w: &Tensor<E>,
        b: Option<&Tensor<E>>,
        saved: SavedInput<E>,
        rows: usize,
        out_f: usize,
        timer: Timer,
    ) -> Result<Tensor<E>> {
        drop(timer);
        let xs = self.shape();
        let mut out_shape = xs.to_vec();
        *out_shape.last_mut().unwrap() = out_f;
        let out = out.reshape(&out_shape)?;
        let wd = w.detach();
        let want = [
            self.requires_grad(),
            w.requires_grad(),
            b.is_some_and(|b| b.requires_grad()),
        ];
        let x_shape = xs.to_vec();
        let mut inputs = vec![self, w];
        if let Some(b) = b {
            inputs.push(b);
        }
        let has_b = b.is_some();
        Ok(out.record("linear", &inputs, move |g| {
            let _timer = Timer::start(Kernel::Matmul);
            let g2 = g.reshape(&[rows, out_f])?;
            let (gx, gw, gb) = linear_grads(&g2, &saved, &wd, &x_shape, want)?;
            let mut v = vec![gx, gw];
            if has_b {
                v.push(gb);
            }
            Ok(v)
        }))
    }
}
