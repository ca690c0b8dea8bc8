//! The arithmetic of matrix products on a GPU device: f32 everywhere (the default), or bf16
//! operands on the tensor cores with f32 accumulation (mixed-precision training).
//!
//! The setting is per thread and scoped, like [`crate::autograd::no_grad`]: a
//! [`PrecisionGuard`] from [`matmul_precision`] holds it until dropped, so a training step
//! runs its forward and backward in bf16 while evaluation and sampling, outside the guard,
//! stay in f32. Only the GPU backend reads it (every f32 GEMM: `linear`, `matmul`, the fused
//! MLP halves, and their backward); the CPU kernels are f32 or f64 whatever it says, and
//! parameters, gradients, optimiser state and every other op stay f32.

use std::cell::Cell;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Operand precision of the GPU's matrix products.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 operands, f32 arithmetic.
    #[default]
    F32,
    /// Operands rounded to bf16 (nearest even), products on the tensor cores, f32 sums and
    /// f32 results.
    Bf16,
}

impl Precision {
    /// Whether this is the default, f32.
    pub fn is_f32(&self) -> bool {
        *self == Precision::F32
    }

    /// `f32` or `bf16`, as the command line spells it.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(Error::arg(
                "precision",
                format!("{other:?}: expected f32 or bf16"),
            )),
        }
    }
}

thread_local! {
    static MATMUL: Cell<Precision> = const { Cell::new(Precision::F32) };
}

/// The precision this thread's GPU matrix products use now.
pub fn current_matmul_precision() -> Precision {
    MATMUL.with(|p| p.get())
}

/// Sets this thread's GPU matrix-product precision until the guard drops (the previous
/// setting comes back then, so guards nest).
pub fn matmul_precision(p: Precision) -> PrecisionGuard {
    let previous = MATMUL.with(|c| c.replace(p));
    PrecisionGuard { previous }
}

/// Restores the previous matrix-product precision when dropped.
#[must_use = "the precision reverts when the guard drops"]
pub struct PrecisionGuard {
    previous: Precision,
}

impl Drop for PrecisionGuard {
    fn drop(&mut self) {
        MATMUL.with(|c| c.set(self.previous));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_nest_and_restore() {
        assert_eq!(current_matmul_precision(), Precision::F32);
        {
            let _a = matmul_precision(Precision::Bf16);
            assert_eq!(current_matmul_precision(), Precision::Bf16);
            {
                let _b = matmul_precision(Precision::F32);
                assert_eq!(current_matmul_precision(), Precision::F32);
            }
            assert_eq!(current_matmul_precision(), Precision::Bf16);
        }
        assert_eq!(current_matmul_precision(), Precision::F32);
    }

    #[test]
    fn names_parse_back() {
        for p in [Precision::F32, Precision::Bf16] {
            assert_eq!(p.name().parse::<Precision>().unwrap(), p);
        }
        let e = "fp16".parse::<Precision>().unwrap_err().to_string();
        assert!(e.contains("fp16") && e.contains("bf16"), "{e}");
    }
}
