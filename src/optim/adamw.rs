//! AdamW: Adam with decoupled weight decay.
//!
//! For each parameter `p` with gradient `g`, at its `t`-th update with learning rate `lr`:
//!
//! ```text
//! p <- p * (1 - lr * wd)
//! m <- beta1 * m + (1 - beta1) * g
//! v <- beta2 * v + (1 - beta2) * g^2
//! p <- p - (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
//! ```
//!
//! The decay multiplies the weights directly instead of entering the gradient, so it is
//! not rescaled by the adaptive denominator. Parameters without a gradient are skipped
//! entirely (no decay, no moment update, their `t` does not advance).

use serde::{Deserialize, Serialize};

use super::{update_with_state, with_grad_slice};
use crate::backend::cpu::optim::AdamWCoeffs;
use crate::error::{Error, Result};
use crate::nn::ParamStore;
use crate::tensor::{Element, Tensor};

/// Hyper-parameters of [`AdamW`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    /// Base learning rate, used by [`AdamW::step_base`]; a schedule passes its own to
    /// [`AdamW::step`].
    pub lr: f64,
    /// Decay rate of the first-moment average, in `[0, 1)`.
    pub beta1: f64,
    /// Decay rate of the second-moment average, in `[0, 1)`.
    pub beta2: f64,
    /// Added to the bias-corrected `sqrt(v)` in the denominator; finite and `>= 0`.
    pub eps: f64,
    /// Decoupled decay: each update first scales the weights by `1 - lr * weight_decay`.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

impl AdamWConfig {
    fn validate(&self) -> Result<()> {
        let ok = |v: f64| v.is_finite() && v >= 0.0;
        let bad = if !ok(self.lr) {
            Some(format!("lr must be finite and >= 0, got {}", self.lr))
        } else if !(ok(self.beta1) && self.beta1 < 1.0 && ok(self.beta2) && self.beta2 < 1.0) {
            Some(format!(
                "betas must lie in [0, 1), got ({}, {})",
                self.beta1, self.beta2
            ))
        } else if !ok(self.eps) {
            Some(format!("eps must be finite and >= 0, got {}", self.eps))
        } else if !ok(self.weight_decay) {
            Some(format!(
                "weight_decay must be finite and >= 0, got {}",
                self.weight_decay
            ))
        } else {
            None
        };
        match bad {
            Some(m) => Err(Error::Config(format!("AdamW: {m}"))),
            None => Ok(()),
        }
    }
}

/// Moments and update count of one parameter.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamWParamState<E: Element = f32> {
    /// Name of the parameter in the [`ParamStore`]; restoring matches states by it.
    pub name: String,
    /// Updates this parameter has received (the `t` of its bias correction).
    pub step: u64,
    /// First moment, row-major like the parameter.
    pub m: Vec<E>,
    /// Second moment.
    pub v: Vec<E>,
}

/// Everything [`AdamW`] needs to continue exactly where it stopped.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamWState<E: Element = f32> {
    /// Calls to `step` so far.
    pub step: u64,
    /// One entry per parameter, in the store's order.
    pub params: Vec<AdamWParamState<E>>,
}

struct Slot<E: Element> {
    name: String,
    param: Tensor<E>,
    step: u64,
    /// First and second moments: tensors of the parameter's shape on its device.
    m: Tensor<E>,
    v: Tensor<E>,
}

/// The AdamW optimiser over the parameters of a [`ParamStore`] (captured at construction).
pub struct AdamW<E: Element = f32> {
    config: AdamWConfig,
    slots: Vec<Slot<E>>,
    step: u64,
}

impl<E: Element> AdamW<E> {
    /// An optimiser for every parameter in `params`, with zero moments.
    pub fn new(params: &ParamStore<E>, config: AdamWConfig) -> Result<Self> {
        config.validate()?;
        let slots = params
            .iter()
            .map(|(name, t)| {
                Ok(Slot {
                    name: name.to_string(),
                    param: t.clone(),
                    step: 0,
                    m: Tensor::zeros(t.shape()).to_device(t.device())?,
                    v: Tensor::zeros(t.shape()).to_device(t.device())?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(AdamW {
            config,
            slots,
            step: 0,
        })
    }

    /// The hyper-parameters the optimiser was built with.
    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// Calls to [`AdamW::step`] so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// One update with the configured learning rate.
    pub fn step_base(&mut self) -> Result<()> {
        self.step(self.config.lr)
    }

    /// One update of every parameter that has a gradient, with learning rate `lr`.
    pub fn step(&mut self, lr: f64) -> Result<()> {
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(Error::arg(
                "AdamW::step",
                format!("learning rate must be finite and >= 0, got {lr}"),
            ));
        }
        // Check every gradient before touching anything, so an error leaves no parameter
        // half-updated.
        let grads: Vec<Option<Tensor<E>>> = self.slots.iter().map(|s| s.param.grad()).collect();
        for (s, g) in self.slots.iter().zip(&grads) {
            if let Some(g) = g {
                crate::backend::same_device("AdamW::step", &[&s.param, g, &s.m, &s.v])?;
                if g.shape() != s.param.shape() {
                    return Err(Error::shape(
                        "AdamW::step",
                        &[s.param.shape(), g.shape()],
                        E::DTYPE.name(),
                        format!(
                            "gradient of `{}` does not have the parameter's shape",
                            s.name
                        ),
                    ));
                }
            }
        }
        self.step += 1;
        let cfg = self.config;
        for (s, g) in self.slots.iter_mut().zip(grads) {
            let Some(g) = g else { continue };
            s.step += 1;
            if s.param.device().is_gpu() {
                crate::backend::gpu::adamw(&s.param, &g, &s.m, &s.v, &cfg, lr, s.step)?;
                continue;
            }
            let t = s.step as f64;
            let bc1 = 1.0 - cfg.beta1.powf(t);
            let bc2 = 1.0 - cfg.beta2.powf(t);
            let c = AdamWCoeffs {
                decay: E::from_f64(1.0 - lr * cfg.weight_decay),
                b1: E::from_f64(cfg.beta1),
                one_minus_b1: E::from_f64(1.0 - cfg.beta1),
                b2: E::from_f64(cfg.beta2),
                one_minus_b2: E::from_f64(1.0 - cfg.beta2),
                inv_bc2_sqrt: E::from_f64(1.0 / bc2.sqrt()),
                eps: E::from_f64(cfg.eps),
                step_size: E::from_f64(lr / bc1),
            };
            with_grad_slice(&s.param, &g, |gs| {
                update_with_state(&s.param, &s.m, &s.v, |ps, m, v| {
                    crate::backend::cpu::optim::adamw(ps, m, v, gs, c)
                })
            })?;
        }
        Ok(())
    }

    /// A copy of the optimiser's state (moments and counts), in parameter order.
    pub fn state(&self) -> AdamWState<E> {
        AdamWState {
            step: self.step,
            params: self
                .slots
                .iter()
                .map(|s| AdamWParamState {
                    name: s.name.clone(),
                    step: s.step,
                    m: s.m.to_vec(),
                    v: s.v.to_vec(),
                })
                .collect(),
        }
    }

    /// Restores a state saved by [`AdamW::state`]. The state must hold exactly this
    /// optimiser's parameters (in any order) with matching sizes; it is checked completely
    /// before anything is replaced.
    pub fn load_state(&mut self, state: AdamWState<E>) -> Result<()> {
        const OP: &str = "AdamW::load_state";
        if state.params.len() != self.slots.len() {
            return Err(Error::arg(
                OP,
                format!(
                    "state holds {} parameters, the optimiser {}",
                    state.params.len(),
                    self.slots.len()
                ),
            ));
        }
        let mut order = Vec::with_capacity(self.slots.len());
        for s in &self.slots {
            let i = state
                .params
                .iter()
                .position(|p| p.name == s.name)
                .ok_or_else(|| {
                    Error::arg(
                        OP,
                        format!("parameter `{}` is missing from the state", s.name),
                    )
                })?;
            let p = &state.params[i];
            let n = s.param.numel();
            if p.m.len() != n || p.v.len() != n {
                return Err(Error::arg(
                    OP,
                    format!(
                        "parameter `{}` has {n} elements but its saved moments have {} and {}",
                        s.name,
                        p.m.len(),
                        p.v.len()
                    ),
                ));
            }
            order.push(i);
        }
        let mut saved: Vec<Option<AdamWParamState<E>>> =
            state.params.into_iter().map(Some).collect();
        for (s, i) in self.slots.iter_mut().zip(order) {
            // Names are unique in a ParamStore, so each index is taken once.
            let p = saved[i].take().ok_or_else(|| {
                Error::arg(
                    OP,
                    format!("parameter `{}` appears twice in the state", s.name),
                )
            })?;
            s.step = p.step;
            let dev = s.param.device();
            s.m = Tensor::from_vec(p.m, s.param.shape())?.to_device(dev)?;
            s.v = Tensor::from_vec(p.v, s.param.shape())?.to_device(dev)?;
        }
        self.step = state.step;
        Ok(())
    }
}
