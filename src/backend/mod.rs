//! Where kernels run. `src/ops` owns shapes, errors and autograd rules; the kernels that do
//! the arithmetic live here, one folder per device. Today that is the CPU alone ([`cpu`]);
//! elementwise work is described by the op enums of [`op`], which a GPU kernel receives as
//! codes. See `docs/architecture.md` for the seam a GPU backend plugs into.
//!
//! Until GPU kernels exist, every op checks its operands with [`cpu_only`]: operands on two
//! devices, or on a GPU device, are an error naming the op and the devices, never a silent
//! copy to the host.

pub mod cpu;
pub mod op;

pub use op::{BinaryOp, UnaryOp};

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

/// [`cpu_only`] for the ops whose signature has no `Result` (the elementwise unary ops,
/// scalar arithmetic, `sum_all`, `contiguous` ...).
///
/// # Panics
/// With [`cpu_only`]'s message when an operand is on a GPU device: these ops must return a
/// `Result` before they can run on one (see `docs/architecture.md`).
#[track_caller]
pub(crate) fn expect_cpu<E: Element>(op: &'static str, operands: &[&Tensor<E>]) {
    if let Err(e) = cpu_only(op, operands) {
        panic!("{e}");
    }
}
