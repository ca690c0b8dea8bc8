//! Launch wrappers for `ptx/elementwise.cu`, which evaluates the ops of [`crate::backend::op`] by code.

use super::{linear_config, pack_view, ELEMENTWISE};
use crate::backend::{BinaryOp, UnaryOp};
use crate::error::Result;
use crate::gpu::driver::{DevicePtr, Driver, KernelArg};

/// An op's scalar parameters as the kernel's two `f32` parameters.
fn params_f32(p: [f64; 2]) -> (f32, f32) {
    (p[0] as f32, p[1] as f32)
}

/// `out[i] = op(x[view(i)])` for every `i` of `shape` in row-major order; `out` is
/// contiguous, `x` strided by `x_strides` (elements; 0 broadcasts). The kernel switches on
/// [`UnaryOp::code`] with [`UnaryOp::params`] rounded to f32.
pub fn unary_f32(
    driver: &dyn Driver,
    op: UnaryOp,
    out: DevicePtr,
    x: DevicePtr,
    x_strides: &[isize],
    shape: &[usize],
) -> Result<()> {
    let (n, view) = pack_view("unary_f32", shape, &[x_strides])?;
    if n == 0 {
        return Ok(());
    }
    let (p0, p1) = params_f32(op.params());
    let mut args = vec![
        KernelArg::Ptr(out),
        KernelArg::Ptr(x),
        KernelArg::U32(n),
        KernelArg::U32(op.code()),
        KernelArg::F32(p0),
        KernelArg::F32(p1),
    ];
    args.extend(view);
    driver.launch(&ELEMENTWISE, "unary_f32", linear_config(n), &args)
}

/// `out[i] = op(a[view_a(i)], b[view_b(i)])` over the broadcast `shape`; `out` is
/// contiguous, the operands strided (a broadcast dimension has stride 0). The kernel switches
/// on [`BinaryOp::code`] with [`BinaryOp::params`] rounded to f32.
#[allow(clippy::too_many_arguments)]
pub fn binary_f32(
    driver: &dyn Driver,
    op: BinaryOp,
    out: DevicePtr,
    a: DevicePtr,
    a_strides: &[isize],
    b: DevicePtr,
    b_strides: &[isize],
    shape: &[usize],
) -> Result<()> {
    let (n, view) = pack_view("binary_f32", shape, &[a_strides, b_strides])?;
    if n == 0 {
        return Ok(());
    }
    let (p0, p1) = params_f32(op.params());
    let mut args = vec![
        KernelArg::Ptr(out),
        KernelArg::Ptr(a),
        KernelArg::Ptr(b),
        KernelArg::U32(n),
        KernelArg::U32(op.code()),
        KernelArg::F32(p0),
        KernelArg::F32(p1),
    ];
    args.extend(view);
    driver.launch(&ELEMENTWISE, "binary_f32", linear_config(n), &args)
}
