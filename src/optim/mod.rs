//! Optimisation: AdamW, global gradient-norm clipping, the learning-rate schedule and an
//! exponential moving average of the parameters. All of them work on a
//! [`crate::nn::ParamStore`], update parameters in place, and are deterministic: the same
//! inputs give the same bits whatever the thread count.

pub mod adamw;
pub mod clip;
pub mod ema;
pub mod schedule;

pub use adamw::{AdamW, AdamWConfig, AdamWParamState, AdamWState};
pub use clip::clip_grad_norm;
pub use ema::{Ema, EmaState};
pub use schedule::LrSchedule;

use crate::error::Result;
use crate::tensor::{Element, Tensor};

/// Runs `f` on the gradient's elements in row-major order. A gradient that shares storage
/// with the parameter (possible in principle, since backward may hand a tensor through
/// unchanged) is copied first, so `f` may lock the parameter for writing.
pub(crate) fn with_grad_slice<E: Element, R>(
    param: &Tensor<E>,
    grad: &Tensor<E>,
    f: impl FnOnce(&[E]) -> R,
) -> R {
    if grad.shares_storage(param) {
        let v = grad.to_vec();
        f(&v)
    } else {
        grad.with_contiguous(f)
    }
}

/// Runs `f` on a parameter's elements and on those of two optimiser-state tensors of its
/// size (each a fresh contiguous tensor with a storage of its own, as `AdamW` makes them).
pub(crate) fn update_with_state<E: Element>(
    param: &Tensor<E>,
    m: &Tensor<E>,
    v: &Tensor<E>,
    f: impl FnOnce(&mut [E], &mut [E], &mut [E]),
) -> Result<()> {
    crate::backend::cpu_only("optimiser update", &[param, m, v])?;
    param.update_data(|ps| {
        let mut mg = m.storage().write();
        let mut vg = v.storage().write();
        f(ps, &mut mg[..], &mut vg[..])
    })
}
