//! Learning-rate schedules.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The learning rate as a function of the optimiser step (0-based: the rate for the first
/// update is `lr_at(0)`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum LrSchedule {
    /// The same rate at every step.
    Constant {
        /// The rate.
        lr: f64,
    },
    /// Linear warm-up from `start_lr` (at step 0) to `peak_lr` (at step `warmup`), then a
    /// half cosine from `peak_lr` (at `warmup`) down to `end_lr` (at `total`), and `end_lr`
    /// from then on.
    ///
    /// With `warmup == 0` the first step already uses `peak_lr`. With `total <= warmup`
    /// there is no decay phase: the warm-up runs its course and every step from
    /// `max(warmup, total)` on uses `end_lr`.
    WarmupCosine {
        /// Rate at step 0.
        start_lr: f64,
        /// Rate at the end of the warm-up, where the cosine starts.
        peak_lr: f64,
        /// Rate at step `total` and after.
        end_lr: f64,
        /// Warm-up length in steps.
        warmup: u64,
        /// Step at which the decay reaches `end_lr`.
        total: u64,
    },
}

impl LrSchedule {
    /// A constant rate; it must be finite and non-negative.
    pub fn constant(lr: f64) -> Result<Self> {
        check("lr", lr)?;
        Ok(LrSchedule::Constant { lr })
    }

    /// Warm-up then cosine decay; every rate must be finite and non-negative.
    pub fn warmup_cosine(
        start_lr: f64,
        peak_lr: f64,
        end_lr: f64,
        warmup: u64,
        total: u64,
    ) -> Result<Self> {
        check("start_lr", start_lr)?;
        check("peak_lr", peak_lr)?;
        check("end_lr", end_lr)?;
        Ok(LrSchedule::WarmupCosine {
            start_lr,
            peak_lr,
            end_lr,
            warmup,
            total,
        })
    }

    /// The rate for step `step`.
    pub fn lr_at(&self, step: u64) -> f64 {
        match *self {
            LrSchedule::Constant { lr } => lr,
            LrSchedule::WarmupCosine {
                start_lr,
                peak_lr,
                end_lr,
                warmup,
                total,
            } => {
                if step < warmup {
                    let frac = step as f64 / warmup as f64;
                    return start_lr + (peak_lr - start_lr) * frac;
                }
                if step >= total {
                    return end_lr;
                }
                // Here warmup <= step < total, so the decay phase has positive length.
                let progress = (step - warmup) as f64 / (total - warmup) as f64;
                let cos = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
                end_lr + (peak_lr - end_lr) * cos
            }
        }
    }
}

fn check(name: &str, v: f64) -> Result<()> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(Error::arg(
            "LrSchedule",
            format!("{name} must be finite and >= 0, got {v}"),
        ))
    }
}
