//! Where kernels run. `src/ops` owns shapes, errors and autograd rules; the kernels that do
//! the arithmetic live here, one folder per device. Today that is the CPU alone ([`cpu`]);
//! elementwise work is described by the op enums of [`op`], which a GPU kernel receives as
//! codes. See `docs/architecture.md` for the seam a GPU backend plugs into.

pub mod cpu;
pub mod op;

pub use op::{BinaryOp, UnaryOp};
