//! Central finite-difference gradient checking in `f64`.
//!
//! The checker turns a function of several tensors into a scalar by a fixed random
//! projection `L = sum(f(x) * r)`, so every output element is checked, then compares autograd's
//! `dL/dx` with `(L(x + h e_i) - L(x - h e_i)) / 2h` for every element of every input.

use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tensor::Tensor;

/// Tolerances and step for [`check_gradients`].
#[derive(Clone, Copy, Debug)]
pub struct GradCheck {
    /// Finite-difference step `h` added to and subtracted from each element.
    pub step: f64,
    /// Absolute tolerance: an element passes when
    /// `|autograd - numeric| <= atol + rtol * |numeric|`.
    pub atol: f64,
    /// Relative tolerance, scaled by the finite-difference value.
    pub rtol: f64,
    /// Seed for the random projection `r` that reduces the output to a scalar.
    pub seed: u64,
}

impl Default for GradCheck {
    fn default() -> Self {
        GradCheck {
            step: 1e-6,
            atol: 1e-7,
            rtol: 1e-5,
            seed: 0x5eed,
        }
    }
}

/// Largest discrepancy found by a successful check.
#[derive(Clone, Debug)]
pub struct GradReport {
    /// Largest `|autograd - finite difference|` over all checked elements.
    pub max_abs_err: f64,
    /// Number of input elements checked.
    pub checked: usize,
}

/// Checks autograd gradients of `f` at `inputs` against central differences.
///
/// Returns an error naming the input, the element, and both values on the first mismatch.
pub fn check_gradients<F>(f: F, inputs: &[Tensor<f64>], cfg: GradCheck) -> Result<GradReport>
where
    F: Fn(&[Tensor<f64>]) -> Result<Tensor<f64>>,
{
    let leaves: Vec<Tensor<f64>> = inputs
        .iter()
        .map(|t| Ok(t.copy()?.requires_grad_()))
        .collect::<Result<_>>()?;
    let y = f(&leaves)?;
    let mut rng = Rng::new(cfg.seed);
    let proj = Tensor::<f64>::randn(y.shape(), 0.0, 1.0, &mut rng);
    y.mul(&proj)?.sum_all()?.backward()?;
    let analytic: Vec<Vec<f64>> = leaves
        .iter()
        .map(|t| {
            t.grad()
                .map(|g| g.to_vec())
                .unwrap_or_else(|| vec![0.0; t.numel()])
        })
        .collect();

    let eval = |xs: &[Tensor<f64>]| -> Result<f64> {
        let _g = crate::autograd::no_grad();
        f(xs)?.mul(&proj)?.sum_all()?.item()
    };
    let mut report = GradReport {
        max_abs_err: 0.0,
        checked: 0,
    };
    for (ti, t) in inputs.iter().enumerate() {
        let base = t.to_vec();
        for i in 0..base.len() {
            let shifted = |delta: f64| -> Result<f64> {
                let mut v = base.clone();
                v[i] += delta;
                let mut xs: Vec<Tensor<f64>> = inputs.to_vec();
                xs[ti] = Tensor::from_vec(v, t.shape())?;
                eval(&xs)
            };
            let numeric = (shifted(cfg.step)? - shifted(-cfg.step)?) / (2.0 * cfg.step);
            let a = analytic[ti][i];
            let err = (a - numeric).abs();
            report.max_abs_err = report.max_abs_err.max(err);
            report.checked += 1;
            if err.is_nan() || err > cfg.atol + cfg.rtol * numeric.abs() {
                return Err(Error::Autograd(format!(
                    "gradient mismatch: input {ti} (shape {:?}) element {i}: autograd {a:.10e}, \
                     finite difference {numeric:.10e}",
                    t.shape()
                )));
            }
        }
    }
    Ok(report)
}
