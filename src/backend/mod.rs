//! Where kernels run. `src/ops` owns shapes, errors and autograd rules; the kernels that do
//! the arithmetic live here, one folder per device. Today that is the CPU alone ([`cpu`]);
//! elementwise work is described by the op enums of [`op`], which a GPU kernel receives as
//! codes. See `docs/architecture.md` for the seam a GPU backend plugs into.
//!
//! Every op checks its operands with [`on_gpu`] and runs the CPU kernel or the GPU one
//! ([`gpu`]); operands on two devices are an error naming the op and both devices, never a
//! silent copy. An op with no GPU kernel says so through [`cpu_only`].

pub mod cpu;
pub(crate) mod gpu;
pub mod op;
pub mod precision;

pub use op::{BinaryOp, UnaryOp};
pub use precision::{current_matmul_precision, matmul_precision, Precision, PrecisionGuard};

use crate::error::{Error, Result};
use crate::tensor::{Device, Element, Tensor};

/// The one device all `operands` live on; an error naming `op` and both devices when they
/// differ.
pub fn same_device<E: Element>(op: &'static str, operands: &[&Tensor<E>]) -> Result<Device> {
    let Some(first) = operands.first() else {
        return Ok(Device::Cpu);
    };
    let d = first.device();
    if let Some(other) = operands.iter().map(|t| t.device()).find(|&o| o != d) {
        return Err(Error::Device {
            op,
            detail: format!(
                "operands are on different devices ({d} and {other}); move them to one with \
                 to_device() first"
            ),
        });
    }
    Ok(d)
}

/// `Ok` when every operand of `op` is in host memory; otherwise the error of
/// [`same_device`], or one saying that `op` has no kernel on the operands' device yet.
pub fn cpu_only<E: Element>(op: &'static str, operands: &[&Tensor<E>]) -> Result<()> {
    match same_device(op, operands)? {
        Device::Cpu => Ok(()),
        d => Err(Error::Device {
            op,
            detail: format!(
                "no {d} kernel for {op} yet: this build runs it on the CPU only (move the \
                 operands with to_host())"
            ),
        }),
    }
}

/// Whether `op` runs on a GPU device: `false` when every operand is in host memory, `true`
/// when all are on one GPU device; an error naming both devices when they differ.
pub(crate) fn on_gpu<E: Element>(op: &'static str, operands: &[&Tensor<E>]) -> Result<bool> {
    Ok(same_device(op, operands)?.is_gpu())
}
