//! Clipping of the global gradient norm.

use crate::error::{Error, Result};
use crate::nn::ParamStore;
use crate::tensor::Element;

/// Rescales all gradients together so that their global L2 norm is at most `max_norm`, and
/// returns the norm before clipping.
///
/// The scale is `max_norm / (norm + 1e-6)`, applied only when below 1, so gradients already
/// inside the ball are left bit-for-bit alone. Gradients are replaced rather than scaled in
/// place because one gradient buffer may be shared by several parameters (backward hands the
/// same tensor to both operands of an addition). A NaN or infinite norm is an error and
/// leaves the gradients untouched.
pub fn clip_grad_norm<E: Element>(params: &ParamStore<E>, max_norm: f64) -> Result<f64> {
    if !(max_norm.is_finite() && max_norm > 0.0) {
        return Err(Error::arg(
            "clip_grad_norm",
            format!("max_norm must be finite and > 0, got {max_norm}"),
        ));
    }
    let norm = params.global_grad_norm()?;
    if !norm.is_finite() {
        return Err(Error::NonFinite {
            what: format!("gradient (global gradient norm is {norm}; clip_grad_norm)"),
        });
    }
    clip_to(params, max_norm, norm)?;
    Ok(norm)
}

/// The rescaling of [`clip_grad_norm`] for a finite `norm` the caller has already measured.
pub(crate) fn clip_to<E: Element>(params: &ParamStore<E>, max_norm: f64, norm: f64) -> Result<()> {
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        let _guard = crate::autograd::no_grad();
        for (_, p) in params.iter() {
            if let Some(g) = p.grad() {
                p.set_grad(Some(g.mul_scalar(coef)?));
            }
        }
    }
    Ok(())
}
