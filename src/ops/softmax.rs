//! Fused softmax and log-softmax over any axis, each with a hand-written backward.
//!
//! The input is read as `[outer, n, inner]` blocks (`n` the reduced axis). The last axis
//! (`inner == 1`) is the fast path: one contiguous row per lane. Other axes reduce whole
//! `inner`-wide rows at once, which keeps the loops unit-stride. Every lane subtracts its
//! maximum before exponentiating, so large logits stay finite. `f32` exponentials go through
//! a polynomial that vectorises (`exp_f32`), `f64` ones through libm.
//!
//! Gradient-write convention: backward passes return fresh tensors (`=`, never `+=`); the
//! autograd engine sums contributions. Derivations: `docs/derivations.md`.

use crate::backend::cpu::softmax::{
    block_backward, block_forward, log_softmax_in_place, par_blocks, softmax_in_place,
};
use crate::error::Result;
use crate::tensor::layout::resolve_axis;
use crate::tensor::{Element, Tensor};

impl<E: Element> Tensor<E> {
    /// Softmax over `axis` (negative counts from the end; the last axis is the fast path).
    /// Max-subtracted, so large logits stay finite. A lane whose entries are all `-inf` (all
    /// masked out) gives zeros.
    pub fn softmax(&self, axis: isize) -> Result<Tensor<E>> {
        self.softmax_impl("softmax", axis, false)
    }

    /// `log(softmax(x))` over `axis`, computed as `x - max - log(sum(exp(x - max)))` so that it
    /// stays finite where the softmax underflows.
    pub fn log_softmax(&self, axis: isize) -> Result<Tensor<E>> {
        self.softmax_impl("log_softmax", axis, true)
    }

    fn softmax_impl(&self, op: &'static str, axis: isize, log: bool) -> Result<Tensor<E>> {
        let gpu = crate::backend::on_gpu(op, &[self])?;
        let ax = resolve_axis(op, axis, self.rank())?;
        if gpu {
            let out = crate::backend::gpu::softmax(self, ax, log)?;
            let y = out.detach();
            return Ok(out.record(op, &[self], move |g| {
                Ok(vec![Some(crate::backend::gpu::softmax_backward(
                    &y, g, ax, log,
                )?)])
            }));
        }
        let shape = self.shape().to_vec();
        let n = shape[ax];
        let inner: usize = shape[ax + 1..].iter().product();
        let block = n * inner;
        let mut out = vec![E::ZERO; self.numel()];
        self.with_contiguous(|x| {
            par_blocks(&mut out, block, |b0, dst| {
                dst.copy_from_slice(&x[b0 * block..b0 * block + dst.len()]);
                if inner == 1 {
                    for row in dst.chunks_exact_mut(n) {
                        if log {
                            log_softmax_in_place(row)
                        } else {
                            softmax_in_place(row)
                        }
                    }
                } else {
                    let (mut m, mut s) = (vec![E::ZERO; inner], vec![E::ZERO; inner]);
                    for blk in dst.chunks_exact_mut(block) {
                        block_forward(blk, n, inner, log, &mut m, &mut s);
                    }
                }
            })
        });
        let out = Tensor::from_raw(out, &shape);
        let y = out.detach();
        Ok(out.record(op, &[self], move |g| {
            let mut dx = vec![E::ZERO; y.numel()];
            y.with_contiguous(|yv| {
                g.with_contiguous(|gv| {
                    par_blocks(&mut dx, block, |b0, dst| {
                        let r = b0 * block..b0 * block + dst.len();
                        let mut acc = vec![E::ZERO; if inner == 1 { 0 } else { inner }];
                        for ((d, yb), gb) in dst
                            .chunks_exact_mut(block)
                            .zip(yv[r.clone()].chunks_exact(block))
                            .zip(gv[r].chunks_exact(block))
                        {
                            block_backward(yb, gb, d, n, inner, log, &mut acc);
                        }
                    })
                })
            });
            Ok(vec![Some(Tensor::from_raw(dx, y.shape()))])
        }))
    }
}
