//! Fused layer normalisation over the last axis, with a hand-written backward.
//!
//! Forward makes two passes over each row (mean, then the centred second moment, which is
//! more accurate than `E[x^2] - E[x]^2`) and one to write `y`; when a gradient will be needed
//! it keeps each row's mean and reciprocal standard deviation, so backward never recomputes
//! them. Backward gives `dx`, `dweight` and `dbias` in one sweep over the rows; the parameter
//! gradients are summed per task and then across tasks, in task order.
//!
//! Gradient-write convention: every gradient is a fresh tensor (`=`); the autograd engine
//! sums contributions. Derivation: `docs/derivations.md`, section "Layer normalisation".

use rayon::prelude::*;

use crate::autograd::is_grad_enabled;
use crate::backend::cpu::layer_norm::{backward_rows, forward_rows_into, ParamGrads};
use crate::error::{Error, Result};
use crate::ops::kernel::write_fresh;
use crate::profile::{Kernel, Timer};
use crate::tensor::iter::PAR_THRESHOLD;
use crate::tensor::{Element, Tensor};

impl<E: Element> Tensor<E> {
    /// Layer normalisation over the last axis: `(x - mean) / sqrt(var + eps) * weight + bias`,
    /// with the biased variance and optional `weight`, `bias` of shape `[last]`.
    ///
    /// One fused op: the forward keeps each row's mean and `1/sqrt(var + eps)` when a gradient
    /// is needed, and the backward gives `dx`, `dweight` and `dbias` directly.
    pub fn layer_norm(
        &self,
        weight: Option<&Tensor<E>>,
        bias: Option<&Tensor<E>>,
        eps: f64,
    ) -> Result<Tensor<E>> {
        let mut operands = vec![self];
        operands.extend(weight);
        operands.extend(bias);
        let gpu = crate::backend::on_gpu("layer_norm", &operands)?;
        let shape = self.shape().to_vec();
        let mut shapes: Vec<&[usize]> = vec![&shape];
        shapes.extend(weight.map(|w| w.shape()));
        shapes.extend(bias.map(|b| b.shape()));
        let bad = |detail: &str| Error::shape("layer_norm", &shapes, E::DTYPE.name(), detail);
        let Some(&d) = shape.last() else {
            return Err(bad("input needs at least one axis"));
        };
        if weight.is_some_and(|w| w.shape() != [d]) || bias.is_some_and(|b| b.shape() != [d]) {
            return Err(bad("weight and bias must have the shape [last axis]"));
        }
        if !(eps.is_finite() && eps >= 0.0) {
            return Err(Error::arg(
                "layer_norm",
                format!("eps must be finite and non-negative, got {eps}"),
            ));
        }
        let rows = self.numel().checked_div(d).unwrap_or(0);
        let needs_grad = is_grad_enabled()
            && (self.requires_grad()
                || weight.is_some_and(|t| t.requires_grad())
                || bias.is_some_and(|t| t.requires_grad()));
        if gpu {
            return self.layer_norm_gpu(weight, bias, d, eps, needs_grad);
        }
        let (w, b) = (weight.map(|t| t.to_vec()), bias.map(|t| t.to_vec()));
        let eps_e = E::from_f64(eps);
        let timer = Timer::start(Kernel::LayerNorm);
        let n = self.numel();
        let mut stats = vec![E::ZERO; if needs_grad { 2 * rows } else { 0 }];
        let rpt = (PAR_THRESHOLD / d.max(1)).max(1);
        let par = n >= PAR_THRESHOLD && rows > 1;
        // Every row of the output is written whole, so it is not zero-filled first.
        let out = self.with_contiguous(|x| {
            write_fresh(n, |slots| {
                let (wv, bv) = (w.as_deref(), b.as_deref());
                let x_of = |t: usize, len: usize| &x[t * rpt * d..t * rpt * d + len];
                let fwd = forward_rows_into::<E>;
                match (par, needs_grad) {
                    (true, true) => slots
                        .par_chunks_mut(rpt * d)
                        .zip(stats.par_chunks_mut(rpt * 2))
                        .enumerate()
                        .for_each(|(t, (o, s))| {
                            fwd(x_of(t, o.len()), o, Some(s), d, wv, bv, eps_e)
                        }),
                    (true, false) => slots
                        .par_chunks_mut(rpt * d)
                        .enumerate()
                        .for_each(|(t, o)| fwd(x_of(t, o.len()), o, None, d, wv, bv, eps_e)),
                    (false, true) => fwd(x, slots, Some(&mut stats), d, wv, bv, eps_e),
                    (false, false) => fwd(x, slots, None, d, wv, bv, eps_e),
                }
            })
        });
        drop(timer);
        let out = Tensor::from_raw(out, &shape);
        if !needs_grad {
            return Ok(out);
        }
        // Saved for the backward as a tensor (each row's mean and 1/sqrt(var + eps)), so that it
        // lives where the output does.
        let stats = Tensor::from_raw(stats, &[rows, 2]);
        let xs = self.detach();
        let (rx, rw, rb) = (
            self.requires_grad(),
            weight.is_some_and(|t| t.requires_grad()),
            bias.is_some_and(|t| t.requires_grad()),
        );
        let (has_w, has_b) = (weight.is_some(), bias.is_some());
        let mut inputs = vec![self];
        inputs.extend(weight);
        inputs.extend(bias);
        Ok(out.record("layer_norm", &inputs, move |g| {
            let _timer = Timer::start(Kernel::LayerNorm);
            let mut dx = vec![E::ZERO; if rx { rows * d } else { 0 }];
            let stats_host = stats.storage().read();
            let stats: &[E] = &stats_host;
            let grads = xs.with_contiguous(|x| {
                g.with_contiguous(|gv| {
                    let wv = w.as_deref();
                    let fresh = || ParamGrads::new(d, rw, rb);
                    let run = |t: usize, n: usize, dxc: Option<&mut [E]>| {
                        let mut acc = fresh();
                        backward_rows(x, gv, stats, wv, d, t * rpt, n, dxc, &mut acc);
                        acc
                    };
                    let tasks = rows.div_ceil(rpt);
                    if rows * d >= PAR_THRESHOLD && tasks > 1 {
                        // The tasks' partial sums are merged in task order: rayon's `reduce`
                        // pairs them in a tree shaped by work stealing, so the weight and
                        // bias gradients' bits would vary from run to run.
                        let parts: Vec<ParamGrads<E>> = if rx {
                            dx.par_chunks_mut(rpt * d)
                                .enumerate()
                                .map(|(t, c)| run(t, c.len() / d, Some(c)))
                                .collect()
                        } else {
                            (0..tasks)
                                .into_par_iter()
                                .map(|t| run(t, rpt.min(rows - t * rpt), None))
                                .collect()
                        };
                        parts
                            .into_iter()
                            .reduce(ParamGrads::merge)
                            .unwrap_or_else(fresh)
                    } else {
                        let mut acc = fresh();
                        let dxc = if rx { Some(&mut dx[..]) } else { None };
                        backward_rows(x, gv, stats, wv, d, 0, rows, dxc, &mut acc);
                        acc
                    }
                })
            });
            let mut v = vec![if rx {
                Some(Tensor::from_raw(dx, xs.shape()))
            } else {
                None
            }];
            if has_w {
                v.push(rw.then(|| Tensor::from_raw(grads.dw, &[d])));
            }
            if has_b {
                v.push(rb.then(|| Tensor::from_raw(grads.db, &[d])));
            }
            Ok(v)
        }))
    }

    /// [`Tensor::layer_norm`] on a GPU device: the same op and gradients through the device's
    /// layer-norm kernels, with the statistics saved on the device.
    fn layer_norm_gpu(
        &self,
        weight: Option<&Tensor<E>>,
        bias: Option<&Tensor<E>>,
        d: usize,
        eps: f64,
        needs_grad: bool,
    ) -> Result<Tensor<E>> {
        let (out, stats) = crate::backend::gpu::layer_norm(self, weight, bias, d, eps, needs_grad)?;
        let Some(stats) = stats else {
            return Ok(out);
        };
        let (xs, wd) = (self.detach(), weight.map(Tensor::detach));
        let want = [
            self.requires_grad(),
            weight.is_some_and(|t| t.requires_grad()),
            bias.is_some_and(|t| t.requires_grad()),
        ];
        let (has_w, has_b) = (weight.is_some(), bias.is_some());
        let mut inputs = vec![self];
        inputs.extend(weight);
        inputs.extend(bias);
        Ok(out.record("layer_norm", &inputs, move |g| {
            let (dx, dw, db) =
                crate::backend::gpu::layer_norm_backward(&xs, g, &stats, wd.as_ref(), d, want)?;
            let mut v = vec![dx];
            if has_w {
                v.push(dw);
            }
            if has_b {
                v.push(db);
            }
            Ok(v)
        }))
    }
}
