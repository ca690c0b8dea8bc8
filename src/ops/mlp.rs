//! The Transformer MLP as fused ops: `linear_gelu` (`gelu(x W^T + b)`, keeping the
//! pre-activation for its backward), `linear_residual` (`r + x W^T + b`), and the whole block
//! `mlp_residual` (`r + gelu(x W1^T + b1) W2^T + b2`) as one autograd node.
//!
//! On a GPU each forward is one GEMM whose epilogue applies the GELU (writing the
//! pre-activation too) or adds the residual (`ptx/gemm.cu`: `gemm_f32_gelu`,
//! `gemm_f32_residual`), instead of a GEMM and an elementwise launch with a temporary;
//! `mlp_residual`'s backward computes the data gradient `(g W2) * gelu'(pre)` as one GEMM
//! with the GELU derivative in its epilogue (`gemm_f32_gelu_grad`), and keeps only `x` and
//! `pre` (it recomputes `gelu(pre)` for `W2`'s gradient instead of keeping a second
//! `[rows, hidden]` tensor until the backward). Under bf16 precision on a GPU every one of
//! these ops, and `linear`, keeps `x` as the bf16 copy its first GEMM made (`SavedInput`).
//! On the CPU each op runs the same kernels as
//! the composed ops (the GEMM with its bias epilogue, then the GELU or the add) and its
//! backward the same kernels in the same order as their closures, so the bits are those of
//! `linear` + `gelu` + `linear` + `add`; what it saves there is autograd nodes and their
//! bookkeeping.

use crate::autograd::no_grad;
use crate::backend::cpu::elementwise::fill_fresh;
use crate::backend::cpu::simd::gelu_grad_to;
use crate::backend::BinaryOp;
use crate::error::{Error, Result};
use crate::ops::matmul::matmul_raw;
use crate::tensor::{Element, Tensor};

/// What the fused linear ops check: `x [..., in]`, `w [out, in]`, `b [out]`; returns
/// `(rows, out)`.
fn linear_dims<E: Element>(
    op: &'static str,
    x: &Tensor<E>,
    w: &Tensor<E>,
    b: Option<&Tensor<E>>,
    extra: Option<&Tensor<E>>,
) -> Result<(usize, usize)> {
    let mut shapes: Vec<&[usize]> = vec![x.shape(), w.shape()];
    shapes.extend(b.map(|b| b.shape()));
    shapes.extend(extra.map(|r| r.shape()));
    linear_dims_of(op, "", x.shape(), w, b, extra, &shapes)
}

/// [`linear_dims`] for an input of shape `xs`, naming `layer` (empty, or e.g. "fc2: ") and
/// every operand's shape in `shapes` in an error.
fn linear_dims_of<E: Element>(
    op: &'static str,
    layer: &str,
    xs: &[usize],
    w: &Tensor<E>,
    b: Option<&Tensor<E>>,
    extra: Option<&Tensor<E>>,
    shapes: &[&[usize]],
) -> Result<(usize, usize)> {
    let bad = |d: &str| Error::shape(op, shapes, E::DTYPE.name(), format!("{layer}{d}"));
    if w.rank() != 2 || xs.is_empty() {
        return Err(bad("weight must be [out, in] and input at least 1-D"));
    }
    let (out_f, in_f) = (w.shape()[0], w.shape()[1]);
    if xs[xs.len() - 1] != in_f {
        return Err(bad("input features differ from weight's in-features"));
    }
    if b.is_some_and(|b| b.shape() != [out_f]) {
        return Err(bad("bias must be [out]"));
    }
    let out_shape = with_last(xs, out_f);
    if extra.is_some_and(|r| r.shape() != out_shape) {
        return Err(bad("the residual must have the output's shape"));
    }
    Ok((xs[..xs.len() - 1].iter().product(), out_f))
}

/// `shape` with its last axis (there is one) set to `n`.
fn with_last(shape: &[usize], n: usize) -> Vec<usize> {
    let mut s = shape.to_vec();
    *s.last_mut().expect("rank checked") = n;
    s
}

/// `g * gelu'(pre)` for `[rows, n]` tensors, as `gelu`'s own backward computes it.
fn gelu_backward<E: Element>(g2: &Tensor<E>, pre: &Tensor<E>) -> Result<Tensor<E>> {
    if g2.device().is_gpu() {
        return g2.binary_raw(pre, "gelu", BinaryOp::GeluBackward);
    }
    // gelu's own backward, over the same contiguous rows.
    let v = pre.with_contiguous(|xs| {
        g2.with_contiguous(|gs| {
            fill_fresh(xs.len(), |lo, y| {
                let hi = lo + y.len();
                gelu_grad_to(&xs[lo..hi], &gs[lo..hi], y)
            })
        })
    });
    Ok(Tensor::from_raw(v, g2.shape()))
}

/// What a linear layer's backward keeps of its input `x2` (`[rows, in]`) for the weight
/// gradient `g^T x`. Under bf16 precision on a GPU the forward's GEMM already made a bf16
/// copy of `x2`; keeping that copy (half the bytes, padded rows) instead of `x2` lets the
/// f32 input be freed as soon as its producer's caller drops it, and the backward skip
/// converting it again. The weight gradient's bits are the same either way (see
/// [`crate::backend::gpu::linear_weight_grad_bf16`]).
pub(crate) enum SavedInput<E: Element> {
    /// Nothing: the weight wants no gradient.
    Nothing,
    /// The input itself (on the CPU, and on a GPU in f32).
    Full(Tensor<E>),
    /// The bf16 copy of the input the forward's GEMM made (a GPU under bf16).
    Bf16(crate::backend::gpu::Bf16Rows),
}

impl<E: Element> SavedInput<E> {
    /// What to keep for a weight that wants a gradient (`want_w`) or not: the bf16 copy
    /// `kept` the GPU forward returned when it made one, else the input `x2`.
    pub(crate) fn new(
        x2: Tensor<E>,
        kept: Option<crate::backend::gpu::Bf16Rows>,
        want_w: bool,
    ) -> Self {
        match (want_w, kept) {
            (false, _) => SavedInput::Nothing,
            (true, Some(rows)) => SavedInput::Bf16(rows),
            (true, None) => SavedInput::Full(x2),
        }
    }

    /// The weight gradient `g2^T x` (`[out, in]`) from the gradient `g2` (`[rows, out]`) of
    /// the layer's output.
    pub(crate) fn weight_grad(&self, g2: &Tensor<E>) -> Result<Tensor<E>> {
        match self {
            SavedInput::Full(x2) => matmul_raw(&g2.t()?, x2),
            SavedInput::Bf16(x) => crate::backend::gpu::linear_weight_grad_bf16(g2, x),
            SavedInput::Nothing => Err(Error::arg(
                "linear",
                "internal error: a weight gradient was asked of a node that kept no input",
            )),
        }
    }
}

/// The linear layer's input gradients from the gradient `g2` (`[rows, out]`) of its output,
/// as `linear`'s backward computes them: `g W`, `g^T x`, and the bias' column sums.
#[allow(clippy::type_complexity)]
pub(crate) fn linear_grads<E: Element>(
    g2: &Tensor<E>,
    x: &SavedInput<E>,
    w: &Tensor<E>,
    x_shape: &[usize],
    want: [bool; 3],
) -> Result<(Option<Tensor<E>>, Option<Tensor<E>>, Option<Tensor<E>>)> {
    let gb = want[2].then(|| g2.sum(&[0], false)).transpose()?;
    // On a GPU under bf16 both products read g2 in bf16: converted once for the two.
    if let (SavedInput::Bf16(xr), true) = (x, want[1]) {
        if crate::backend::current_matmul_precision() == crate::backend::Precision::Bf16 {
            let (gx, gw) = crate::backend::gpu::linear_grads_bf16(g2, w, xr, want[0])?;
            let gx = gx.map(|t| t.reshape(x_shape)).transpose()?;
            return Ok((gx, Some(gw), gb));
        }
    }
    let gx = want[0]
        .then(|| matmul_raw(g2, w)?.reshape(x_shape))
        .transpose()?;
    let gw = want[1].then(|| x.weight_grad(g2)).transpose()?;
    Ok((gx, gw, gb))
}

/// The inputs of a linear op for `record`, and which of them want a gradient.
fn linear_inputs<'a, E: Element>(
    x: &'a Tensor<E>,
    w: &'a Tensor<E>,
    b: Option<&'a Tensor<E>>,
) -> (Vec<&'a Tensor<E>>, [bool; 3]) {
    let mut inputs = vec![x, w];
    inputs.extend(b);
    let want = [
        x.requires_grad(),
        w.requires_grad(),
        b.is_some_and(|b| b.requires_grad()),
    ];
    (inputs, want)
}

impl<E: Element> Tensor<E> {
    /// `gelu(x W^T + b)` (exact erf GELU) for `x` `[..., in]`, `w` `[out, in]`, `b` `[out]`:
    /// the first half of the Transformer MLP as one op that keeps the pre-activation for its
    /// backward (`g' = g * gelu'(pre)`, then the linear layer's gradients). Bit-identical on
    /// the CPU with `x.linear(w, b)?.gelu()`. Errors as `linear` does, naming `linear_gelu`.
    pub fn linear_gelu(&self, w: &Tensor<E>, b: Option<&Tensor<E>>) -> Result<Tensor<E>> {
        const OP: &str = "linear_gelu";
        let mut operands = vec![self, w];
        operands.extend(b);
        let gpu = crate::backend::on_gpu(OP, &operands)?;
        let (rows, out_f) = linear_dims(OP, self, w, b, None)?;
        let x2 = self.detach().reshape(&[rows, w.shape()[1]])?;
        let (inputs, want) = linear_inputs(self, w, b);
        let ((pre, act), kept) = {
            let _g = no_grad();
            if gpu && rows > 0 && out_f > 0 && w.shape()[1] > 0 {
                crate::backend::gpu::linear_gelu(&x2, w, b, want[1])?
            } else {
                let pre = x2.linear(w, b)?;
                let act = pre.gelu()?;
                ((pre, act), None)
            }
        };
        let x2 = SavedInput::new(x2, kept, want[1]);
        let mut out_shape = self.shape().to_vec();
        *out_shape.last_mut().expect("rank checked") = out_f;
        let act = act.reshape(&out_shape)?;
        let (wd, x_shape) = (w.detach(), self.shape().to_vec());
        let has_b = b.is_some();
        Ok(act.record(OP, &inputs, move |g| {
            let g2 = g.reshape(&[rows, out_f])?;
            let gp = gelu_backward(&g2, &pre)?;
            let (gx, gw, gb) = linear_grads(&gp, &x2, &wd, &x_shape, want)?;
            let mut v = vec![gx, gw];
            if has_b {
                v.push(gb);
            }
            Ok(v)
        }))
    }

    /// `r + x W^T + b` for `x` `[..., in]`, `w` `[out, in]`, `b` `[out]` and a residual `r`
    /// of the output's shape: the second half of the Transformer MLP with the residual add
    /// in the GEMM's epilogue. Bit-identical on the CPU with `r.add(&x.linear(w, b)?)`.
    /// Errors as `linear` does, naming `linear_residual`, and when `r` has another shape.
    pub fn linear_residual(
        &self,
        w: &Tensor<E>,
        b: Option<&Tensor<E>>,
        r: &Tensor<E>,
    ) -> Result<Tensor<E>> {
        self.linear_residual_from(w, b, r, None)
    }

    /// [`Tensor::linear_residual`] that, on a GPU under bf16, may be given the bf16 copy of
    /// its input (`[rows, in]`, as its GEMM would convert it) made by the op that produced
    /// the input: the GEMM reads it instead of converting the input again, and the backward
    /// keeps it, shared with that op, instead of a copy of its own. The same bits.
    pub(crate) fn linear_residual_from(
        &self,
        w: &Tensor<E>,
        b: Option<&Tensor<E>>,
        r: &Tensor<E>,
        x16: Option<crate::backend::gpu::Bf16Rows>,
    ) -> Result<Tensor<E>> {
        const OP: &str = "linear_residual";
        let mut operands = vec![self, w, r];
        operands.extend(b);
        let gpu = crate::backend::on_gpu(OP, &operands)?;
        let (rows, out_f) = linear_dims(OP, self, w, b, Some(r))?;
        let x2 = self.detach().reshape(&[rows, w.shape()[1]])?;
        let (mut inputs, want) = linear_inputs(self, w, b);
        inputs.push(r);
        let (out, kept) = {
            let _g = no_grad();
            if gpu && rows > 0 && out_f > 0 && w.shape()[1] > 0 {
                let r2 = r.detach().reshape(&[rows, out_f])?;
                let (out, kept) = match x16 {
                    // Its shape is checked against `w` and `r2` there (an internal error).
                    Some(x16) => {
                        let out = crate::backend::gpu::linear_residual_bf16_input(&x16, w, b, &r2)?;
                        (out, Some(x16))
                    }
                    _ => crate::backend::gpu::linear_residual(&x2, w, b, &r2, want[1])?,
                };
                (out.reshape(r.shape())?, kept)
            } else {
                let m = x2.linear(w, b)?.reshape(r.shape())?;
                (r.add(&m)?, None)
            }
        };
        let x2 = SavedInput::new(x2, kept, want[1]);
        let want_r = r.requires_grad();
        let (wd, x_shape) = (w.detach(), self.shape().to_vec());
        let has_b = b.is_some();
        Ok(out.record(OP, &inputs, move |g| {
            let g2 = g.reshape(&[rows, out_f])?;
            let (gx, gw, gb) = linear_grads(&g2, &x2, &wd, &x_shape, want)?;
            let mut v = vec![gx, gw];
            if has_b {
                v.push(gb);
            }
            v.push(want_r.then(|| g.clone()));
            Ok(v)
        }))
    }

    /// `r + gelu(x W1^T + b1) W2^T + b2` (exact erf GELU) for `x` `[..., in]`, `w1`
    /// `[hidden, in]`, `b1` `[hidden]`, `w2` `[out, hidden]`, `b2` `[out]` and a residual
    /// `r` `[..., out]`: the Transformer MLP block with its residual as one op. Its backward
    /// keeps only `x` (under bf16 on a GPU, the bf16 copy its first GEMM made) and the
    /// pre-activation `pre` (recomputing `gelu(pre)` for `w2`'s gradient) and, on a GPU, computes the data gradient `(g W2) * gelu'(pre)` as one GEMM
    /// with the derivative in its epilogue. Bit-identical on the CPU with
    /// `x.linear_gelu(w1, b1)?.linear_residual(w2, b2, r)` (and so with the composed
    /// `linear`, `gelu`, `linear`, `add`). Errors as `linear` does, naming `mlp_residual`
    /// and the layer, and when `r` has another shape than the output.
    pub fn mlp_residual(
        &self,
        w1: &Tensor<E>,
        b1: Option<&Tensor<E>>,
        w2: &Tensor<E>,
        b2: Option<&Tensor<E>>,
        r: &Tensor<E>,
    ) -> Result<Tensor<E>> {
        const OP: &str = "mlp_residual";
        let mut inputs = vec![self, w1];
        inputs.extend(b1);
        inputs.push(w2);
        inputs.extend(b2);
        inputs.push(r);
        let gpu = crate::backend::on_gpu(OP, &inputs)?;
        let shapes: Vec<&[usize]> = inputs.iter().map(|t| t.shape()).collect();
        let (rows, hidden) = linear_dims_of(OP, "fc1: ", self.shape(), w1, b1, None, &shapes)?;
        let h_shape = with_last(self.shape(), hidden);
        let (_, out_f) = linear_dims_of(OP, "fc2: ", &h_shape, w2, b2, Some(r), &shapes)?;
        let in_f = w1.shape()[1];
        let x2 = self.detach().reshape(&[rows, in_f])?;
        let (_, want1) = linear_inputs(self, w1, b1);
        let (pre, out, kept) = {
            let _g = no_grad();
            if gpu && rows > 0 && in_f > 0 && hidden > 0 && out_f > 0 {
                let ((pre, act), kept) = crate::backend::gpu::linear_gelu(&x2, w1, b1, want1[1])?;
                let r2 = r.detach().reshape(&[rows, out_f])?;
                // The activation is recomputed from pre in the backward: nothing kept.
                let (out, _) = crate::backend::gpu::linear_residual(&act, w2, b2, &r2, false)?;
                (pre, out.reshape(r.shape())?, kept)
            } else {
                // The composed ops' kernels in their order: the bits of linear_gelu then
                // linear_residual.
                let pre = x2.linear(w1, b1)?;
                let m = pre.gelu()?.linear(w2, b2)?.reshape(r.shape())?;
                (pre, r.add(&m)?, None)
            }
        };
        let x2 = SavedInput::new(x2, kept, want1[1]);
        let want_r = r.requires_grad();
        // The hidden layer's gradient is needed for any of x, w1, b1.
        let want_h = want1.iter().any(|&w| w);
        let (want_w2, want_b2) = (w2.requires_grad(), b2.is_some_and(|b| b.requires_grad()));
        let (w1d, w2d, x_shape) = (w1.detach(), w2.detach(), self.shape().to_vec());
        let (has_b1, has_b2) = (b1.is_some(), b2.is_some());
        Ok(out.record(OP, &inputs, move |g| {
            let g2 = g.reshape(&[rows, out_f])?;
            // fc2's weight gradient needs the activation: recomputed from pre with the
            // forward's own GELU kernel, so its bits are those the forward produced.
            let act = want_w2.then(|| pre.gelu()).transpose()?;
            let gb2 = want_b2.then(|| g2.sum(&[0], false)).transpose()?;
            let gpu = g2.device().is_gpu() && rows > 0 && hidden > 0 && out_f > 0;
            let bf16 =
                crate::backend::current_matmul_precision() == crate::backend::Precision::Bf16;
            let (gp, gw2) = if want_h && gpu && bf16 {
                // Both products read g2 in bf16: converted once for the two.
                let (gp, gw2) = crate::backend::gpu::mlp_out_grads_bf16(&g2, &w2d, &pre, act)?;
                (Some(gp), gw2)
            } else {
                let gw2 = act.map(|a| matmul_raw(&g2.t()?, &a)).transpose()?;
                let gp = want_h
                    .then(|| {
                        if gpu {
                            crate::backend::gpu::linear_grad_gelu(&g2, &w2d, &pre)
                        } else {
                            gelu_backward(&matmul_raw(&g2, &w2d)?, &pre)
                        }
                    })
                    .transpose()?;
                (gp, gw2)
            };
            let (gx, gw1, gb1) = match gp {
                Some(gp) => linear_grads(&gp, &x2, &w1d, &x_shape, want1)?,
                None => (None, None, None),
            };
            let mut v = vec![gx, gw1];
            if has_b1 {
                v.push(gb1);
            }
            v.push(gw2);
            if has_b2 {
                v.push(gb2);
            }
            v.push(want_r.then(|| g.clone()));
            Ok(v)
        }))
    }
}
