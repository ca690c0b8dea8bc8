//! The affine coupling of a TarFlow block as one op: the one-token shift of the parameters
//! by indexing, the optional soft clip, `z = (x - mu) * exp(-alpha)` and the per-image
//! log-determinant, with one backward; and its inverse fused with the guidance combination
//! for sampling.
//!
//! Autograd records one node per op and one output per node, so the forward writes `z` and
//! the log-determinants into one packed buffer (`[B * L * D + B]`) and returns two views of
//! it; their gradients meet in that buffer and reach the one backward together, which is
//! what lets the soft clip's derivative apply to their sum exactly as the composed ops do.

use crate::backend::cpu::coupling::{self as kernel, View3};
use crate::error::{Error, Result};
use crate::tensor::{Element, Tensor};

/// The tokens' sizes `[B, L, D]` after checking that `x`, `alpha` and `mu` all have them.
fn coupling_dims<E: Element>(
    op: &'static str,
    x: &Tensor<E>,
    alpha: &Tensor<E>,
    mu: &Tensor<E>,
) -> Result<[usize; 3]> {
    let s = x.shape();
    if x.rank() != 3 || alpha.shape() != s || mu.shape() != s {
        return Err(Error::shape(
            op,
            &[s, alpha.shape(), mu.shape()],
            E::DTYPE.name(),
            "expected x, alpha and mu of one shape [batch, tokens, token values]",
        ));
    }
    Ok([s[0], s[1], s[2]])
}

fn check_clip(op: &'static str, clip: Option<f64>) -> Result<()> {
    match clip {
        Some(a) if !(a.is_finite() && a > 0.0) => Err(Error::arg(
            op,
            format!("the soft clip bound must be finite and positive, got {a}"),
        )),
        _ => Ok(()),
    }
}

impl<E: Element> Tensor<E> {
    /// The affine coupling of tokens `self` `[B, L, D]` given unshifted per-position
    /// parameters `alpha`, `mu` (`[B, L, D]`, any layout; row `i` holds the parameters of
    /// token `i + 1`, so the last row is unused and token 0 gets `alpha = mu = 0`):
    ///
    /// `a_i = clip(alpha_{i-1})`, `z_i = (x_i - mu_{i-1}) * exp(-a_i)`,
    /// `logdet[b] = -sum_{i, j} a_i`, with `clip(v) = c * tanh(v / c)` when `clip = Some(c)`.
    ///
    /// Returns `(z [B, L, D], logdet [B])`. One op with one backward (`dx`, `dalpha`, `dmu`,
    /// the last rows of `dalpha` and `dmu` zero); on the CPU its values and gradients are
    /// bit-identical with `FlowBlock::shift`, `soft_clip`, `sub`, `neg`, `exp`, `mul` and
    /// `sum(&[1, 2])` composed. Errors on shapes that differ or are not rank 3, and on a clip
    /// bound that is not finite and positive.
    pub fn affine_coupling(
        &self,
        alpha: &Tensor<E>,
        mu: &Tensor<E>,
        clip: Option<f64>,
    ) -> Result<(Tensor<E>, Tensor<E>)> {
        const OP: &str = "affine_coupling";
        let gpu = crate::backend::on_gpu(OP, &[self, alpha, mu])?;
        let dims = coupling_dims(OP, self, alpha, mu)?;
        check_clip(OP, clip)?;
        let [b, l, d] = dims;
        let n = b * l * d;
        let packed = if gpu {
            crate::backend::gpu::affine_coupling(self, alpha, mu, dims, clip)?
        } else {
            let v = self.with_data(|xd, xl| {
                alpha.with_data(|ad, al| {
                    mu.with_data(|md, ml| {
                        kernel::forward(
                            (xd, View3::of(xl)),
                            (ad, View3::of(al)),
                            (md, View3::of(ml)),
                            dims,
                            clip,
                        )
                    })
                })
            });
            Tensor::from_raw(v, &[n + b])
        };
        let (xs, al, ms) = (self.detach(), alpha.detach(), mu.detach());
        let want = [
            self.requires_grad(),
            alpha.requires_grad(),
            mu.requires_grad(),
        ];
        let packed = packed.record(OP, &[self, alpha, mu], move |g| {
            let (dx, da, dm) = if crate::backend::on_gpu(OP, &[g, &xs, &al, &ms])? {
                crate::backend::gpu::affine_coupling_backward(g, &xs, &al, &ms, dims, clip, want)?
            } else {
                let (dx, da, dm) = g.with_contiguous(|gs| {
                    xs.with_data(|xd, xl| {
                        al.with_data(|ad, all| {
                            ms.with_data(|md, ml| {
                                kernel::backward(
                                    gs,
                                    (xd, View3::of(xl)),
                                    (ad, View3::of(all)),
                                    (md, View3::of(ml)),
                                    dims,
                                    clip,
                                    want,
                                )
                            })
                        })
                    })
                });
                let wrap = |v: Option<Vec<E>>| v.map(|v| Tensor::from_raw(v, &dims));
                (wrap(dx), wrap(da), wrap(dm))
            };
            Ok(vec![dx, da, dm])
        });
        let z = packed.narrow(0, 0, n)?.reshape(&dims)?;
        let logdet = packed.narrow(0, n, b)?;
        Ok((z, logdet))
    }

    /// The inverse of [`Tensor::affine_coupling`] for parameters already aligned with `self`
    /// (`z`, `alpha`, `mu` of one shape, no shift, clipped by the caller):
    /// `x = z * exp(alpha) + mu`. With `guidance = Some((alpha_u, mu_u, w))` both parameters
    /// are first combined with the unconditional branch's, `p + w * (p - p_u)`, as the
    /// sampler does. Inference only: records no gradient. Errors when the shapes differ.
    pub fn affine_coupling_inverse(
        &self,
        alpha: &Tensor<E>,
        mu: &Tensor<E>,
        guidance: Option<(&Tensor<E>, &Tensor<E>, f64)>,
    ) -> Result<Tensor<E>> {
        let gpu = coupling_inverse_checks("affine_coupling_inverse", self, alpha, mu, guidance)?;
        if gpu {
            return crate::backend::gpu::affine_coupling_inverse(self, alpha, mu, guidance);
        }
        Ok(Tensor::from_raw(
            inverse_host(self, alpha, mu, guidance),
            self.shape(),
        ))
    }

    /// [`Tensor::affine_coupling_inverse`] written into `out` (contiguous, of `self`'s shape,
    /// e.g. one token's slot in a larger buffer) instead of a new tensor. On a GPU the
    /// operands are read in place whatever their strides, so a sampler needs no copies
    /// around the step. Errors when `out` differs in shape, is not contiguous, needs a
    /// gradient, or shares storage with an operand.
    pub fn affine_coupling_inverse_into(
        &self,
        alpha: &Tensor<E>,
        mu: &Tensor<E>,
        guidance: Option<(&Tensor<E>, &Tensor<E>, f64)>,
        out: &Tensor<E>,
    ) -> Result<()> {
        const OP: &str = "affine_coupling_inverse_into";
        let gpu = coupling_inverse_checks(OP, self, alpha, mu, guidance)?;
        let mut inputs = vec![self, alpha, mu];
        if let Some((au, mu_u, _)) = guidance {
            inputs.extend([au, mu_u]);
        }
        let bad = |why: &str| Err(Error::shape(OP, &[out.shape()], E::DTYPE.name(), why));
        if out.shape() != self.shape() {
            return bad("the output's shape differs from z's");
        }
        if !out.is_contiguous() {
            return bad("the output must be contiguous");
        }
        if out.requires_grad() {
            return bad("the output must not need a gradient (the inverse records none)");
        }
        if inputs.iter().any(|t| t.shares_storage(out)) {
            return bad("the output must not share storage with an operand");
        }
        crate::backend::on_gpu(OP, &[self, out])?;
        if gpu {
            return crate::backend::gpu::affine_coupling_inverse_into(
                self, alpha, mu, guidance, out,
            );
        }
        let x = inverse_host(self, alpha, mu, guidance);
        out.update_data(|d| d.copy_from_slice(&x))
    }
}

/// The checks the two inverse entry points share; true when the operands are on a GPU.
fn coupling_inverse_checks<E: Element>(
    op: &'static str,
    z: &Tensor<E>,
    alpha: &Tensor<E>,
    mu: &Tensor<E>,
    guidance: Option<(&Tensor<E>, &Tensor<E>, f64)>,
) -> Result<bool> {
    let mut operands = vec![z, alpha, mu];
    if let Some((au, mu_u, _)) = guidance {
        operands.extend([au, mu_u]);
    }
    let gpu = crate::backend::on_gpu(op, &operands)?;
    if operands.iter().any(|t| t.shape() != z.shape()) {
        let shapes: Vec<&[usize]> = operands.iter().map(|t| t.shape()).collect();
        return Err(Error::shape(
            op,
            &shapes,
            E::DTYPE.name(),
            "z, alpha, mu (and the unconditional alpha, mu) must have one shape",
        ));
    }
    if let Some((_, _, w)) = guidance {
        if !w.is_finite() {
            return Err(Error::arg(
                op,
                format!("the guidance weight must be finite, got {w}"),
            ));
        }
    }
    Ok(gpu)
}

/// The inverse on the host, in element order.
fn inverse_host<E: Element>(
    z: &Tensor<E>,
    alpha: &Tensor<E>,
    mu: &Tensor<E>,
    guidance: Option<(&Tensor<E>, &Tensor<E>, f64)>,
) -> Vec<E> {
    let (z, a, m) = (z.to_vec(), alpha.to_vec(), mu.to_vec());
    let u = guidance.map(|(au, mu_u, w)| (au.to_vec(), mu_u.to_vec(), w));
    kernel::inverse(
        &z,
        &a,
        &m,
        u.as_ref().map(|(au, mu_u, w)| (&au[..], &mu_u[..], *w)),
    )
}
