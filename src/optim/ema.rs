//! Exponential moving average of the parameters, for evaluation and sampling.

use crate::error::{Error, Result};
use crate::nn::params::NamedArray;
use crate::nn::ParamStore;
use crate::tensor::{Device, Element, Tensor};

/// A saved [`Ema`]: the number of updates and every shadow parameter.
#[derive(Clone, Debug, PartialEq)]
pub struct EmaState<E: Element = f32> {
    /// Number of [`Ema::update`] calls so far.
    pub updates: u64,
    /// `(name, shape, values)` of every shadow parameter, in the store's order.
    pub shadow: Vec<NamedArray<E>>,
}

/// Shadow copies `s` of the parameters, moved by `s <- decay * s + (1 - decay) * p`.
///
/// The shadow belongs to one [`ParamStore`]: every method that takes the store checks that
/// it holds the same names with the same shapes in the same order, and fails without
/// changing anything otherwise.
pub struct Ema<E: Element = f32> {
    /// `(name, shadow)` in the store's order. A shadow starts in host memory and follows its
    /// parameter to the parameter's device at the next update.
    shadow: Vec<(String, Tensor<E>)>,
    updates: u64,
}

impl<E: Element> Ema<E> {
    /// Starts the average at the current parameter values.
    pub fn new(params: &ParamStore<E>) -> Self {
        Ema {
            shadow: params
                .state_dict()
                .into_iter()
                .map(|(n, shape, v)| (n, Tensor::from_raw(v, &shape)))
                .collect(),
            updates: 0,
        }
    }

    /// Number of [`Ema::update`] calls so far.
    pub fn num_updates(&self) -> u64 {
        self.updates
    }

    /// The shadow value of one parameter, as a fresh host tensor (downloaded from a device,
    /// panicking as [`Tensor::to_vec`] does if that fails).
    pub fn shadow(&self, name: &str) -> Option<Tensor<E>> {
        self.shadow
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| Tensor::from_raw(s.to_vec(), s.shape()))
    }

    /// Moves every shadow towards the current parameters; `decay` must lie in `[0, 1]`
    /// (0 copies the parameters, 1 freezes the shadow).
    pub fn update(&mut self, params: &ParamStore<E>, decay: f64) -> Result<()> {
        if !(0.0..=1.0).contains(&decay) {
            return Err(Error::arg(
                "Ema::update",
                format!("decay must lie in [0, 1], got {decay}"),
            ));
        }
        self.check("Ema::update", params)?;
        for ((_, s), (_, p)) in self.shadow.iter_mut().zip(params.iter()) {
            if s.device() != p.device() {
                *s = s.to_device(p.device())?;
            }
            crate::backend::same_device("Ema::update", &[&*s, p])?;
        }
        let (d, k) = (E::from_f64(decay), E::from_f64(1.0 - decay));
        for ((_, s), (_, p)) in self.shadow.iter().zip(params.iter()) {
            if s.device().is_gpu() {
                crate::backend::gpu::ema(s, p, decay)?;
                continue;
            }
            p.with_contiguous(|ps| {
                s.update_data(|s| crate::backend::cpu::optim::ema(s, ps, d, k))
            })?;
        }
        self.updates += 1;
        Ok(())
    }

    /// Writes the shadow values into the parameters (the shadow is kept).
    pub fn copy_to(&self, params: &ParamStore<E>) -> Result<()> {
        self.check("Ema::copy_to", params)?;
        for ((_, s), (_, p)) in self.shadow.iter().zip(params.iter()) {
            p.assign(s)?;
        }
        Ok(())
    }

    /// Exchanges shadow and parameter values: call once to evaluate with the averaged
    /// weights, and again to return to the training weights and shadow.
    pub fn swap(&mut self, params: &ParamStore<E>) -> Result<()> {
        self.check("Ema::swap", params)?;
        for ((_, s), (_, p)) in self.shadow.iter_mut().zip(params.iter()) {
            // Through a copy of the parameter, on whichever device it lives.
            let old = p.detach().copy()?;
            p.assign(s)?;
            *s = old;
        }
        Ok(())
    }

    /// A copy of the shadow and the update count.
    pub fn state(&self) -> EmaState<E> {
        EmaState {
            updates: self.updates,
            shadow: self
                .shadow
                .iter()
                .map(|(n, s)| (n.clone(), s.shape().to_vec(), s.to_vec()))
                .collect(),
        }
    }

    /// Restores a state saved by [`Ema::state`]; it must hold the same names and shapes in
    /// the same order as the current shadow.
    pub fn load_state(&mut self, state: EmaState<E>) -> Result<()> {
        const OP: &str = "Ema::load_state";
        if state.shadow.len() != self.shadow.len() {
            return Err(Error::arg(
                OP,
                format!(
                    "state holds {} parameters, the average {}",
                    state.shadow.len(),
                    self.shadow.len()
                ),
            ));
        }
        for ((n, s), (sn, sshape, sv)) in self.shadow.iter().zip(&state.shadow) {
            let shape = s.shape();
            if n != sn {
                return Err(Error::arg(
                    OP,
                    format!("expected parameter `{n}`, the state has `{sn}` in its place"),
                ));
            }
            if shape != sshape.as_slice() || sv.len() != shape.iter().product::<usize>() {
                return Err(Error::shape(
                    OP,
                    &[shape, sshape],
                    E::DTYPE.name(),
                    format!(
                        "parameter `{n}`: saved shape or size ({} values) does not match",
                        sv.len()
                    ),
                ));
            }
        }
        // The shadow stays on the device it was created on (the parameters').
        let device = self.shadow.first().map_or(Device::Cpu, |(_, s)| s.device());
        self.shadow = state
            .shadow
            .into_iter()
            .map(|(n, shape, v)| Ok((n, Tensor::from_raw(v, &shape).to_device(device)?)))
            .collect::<Result<_>>()?;
        self.updates = state.updates;
        Ok(())
    }

    fn check(&self, op: &'static str, params: &ParamStore<E>) -> Result<()> {
        if params.len() != self.shadow.len() {
            return Err(Error::arg(
                op,
                format!(
                    "the store has {} parameters, the average {}",
                    params.len(),
                    self.shadow.len()
                ),
            ));
        }
        for ((n, s), (pn, p)) in self.shadow.iter().zip(params.iter()) {
            let shape = s.shape();
            if n != pn {
                return Err(Error::arg(
                    op,
                    format!("expected parameter `{n}`, the store has `{pn}` in its place"),
                ));
            }
            if shape != p.shape() {
                return Err(Error::shape(
                    op,
                    &[shape, p.shape()],
                    E::DTYPE.name(),
                    format!("parameter `{n}` changed shape"),
                ));
            }
        }
        Ok(())
    }
}
