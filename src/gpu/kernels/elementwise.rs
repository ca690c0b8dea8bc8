//! Launch wrappers for `ptx/elementwise.cu` and the op codes it shares with Rust.

use super::{linear_config, pack_view, ELEMENTWISE};
use crate::error::Result;
use crate::gpu::driver::{DevicePtr, Driver, KernelArg};

/// Unary op codes of `unary_f32` (`enum UnaryOp` in `ptx/elementwise.cu`; a test checks that
/// the numbers agree). Formulas are the CPU's (src/ops/unary.rs, binary.rs); `p0`, `p1` are
/// the kernel's scalar parameters, ignored by ops that take none.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    /// `-x`.
    Neg = 0,
    /// `e^x`.
    Exp = 1,
    /// `ln x`.
    Log = 2,
    /// `sqrt x` (correctly rounded).
    Sqrt = 3,
    /// `x * x`.
    Square = 4,
    /// `tanh x`.
    Tanh = 5,
    /// Logistic sigmoid, stable for either sign.
    Sigmoid = 6,
    /// `ln(1 + e^x)`, stable for large `|x|`.
    Softplus = 7,
    /// GELU with the crate's exact-erf polynomial.
    Gelu = 8,
    /// GELU, tanh approximation.
    GeluTanh = 9,
    /// `max(x, 0)` (NaN gives 0, as on the CPU).
    Relu = 10,
    /// `|x|`.
    Abs = 11,
    /// `x^p0`.
    Powf = 12,
    /// `min(max(x, p0), p1)`.
    Clamp = 13,
    /// `x + p0`.
    AddScalar = 14,
    /// `x * p0`.
    MulScalar = 15,
}

impl UnaryOp {
    /// Every unary op, in code order.
    pub const ALL: [UnaryOp; 16] = [
        UnaryOp::Neg,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Square,
        UnaryOp::Tanh,
        UnaryOp::Sigmoid,
        UnaryOp::Softplus,
        UnaryOp::Gelu,
        UnaryOp::GeluTanh,
        UnaryOp::Relu,
        UnaryOp::Abs,
        UnaryOp::Powf,
        UnaryOp::Clamp,
        UnaryOp::AddScalar,
        UnaryOp::MulScalar,
    ];
}

/// Binary op codes of `binary_f32` (`enum BinaryOp` in `ptx/elementwise.cu`). The `*Grad`
/// codes are the backward rules of the unary ops: `a` is the output gradient `g`, `b` the
/// saved input `x` or output `y` named below.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    /// `a + b`.
    Add = 0,
    /// `a - b`.
    Sub = 1,
    /// `a * b`.
    Mul = 2,
    /// `a / b`.
    Div = 3,
    /// `a >= b ? a : b` (ties and NaN in `b` keep `a`, as the CPU's `maximum`).
    Maximum = 4,
    /// `a >= b ? 1 : 0`: the mask sending `maximum`'s gradient to `a`.
    MaximumMask = 5,
    /// `a * (1 - b)`: `maximum`'s gradient to `b` from the mask.
    MulOneMinus = 6,
    /// `g * (1 / x)`.
    LogGrad = 7,
    /// `g * 0.5 / y`, `y = sqrt x`.
    SqrtGrad = 8,
    /// `g * (x + x)`.
    SquareGrad = 9,
    /// `g * (1 - y * y)`, `y = tanh x`.
    TanhGrad = 10,
    /// `g * y * (1 - y)`, `y = sigmoid x`.
    SigmoidGrad = 11,
    /// `g * sigmoid(x)`.
    SoftplusGrad = 12,
    /// `g * gelu'(x)`.
    GeluGrad = 13,
    /// `g * gelu_tanh'(x)`.
    GeluTanhGrad = 14,
    /// `g * (x > 0)`.
    ReluGrad = 15,
    /// `g * sign(x)` (0 at 0).
    AbsGrad = 16,
    /// `g * (p0 * x^p1)` with `p1 = p0 - 1` rounded from f64 to f32 by the caller.
    PowfGrad = 17,
    /// `g * (p0 < x < p1)`.
    ClampGrad = 18,
    /// `-a / (b * b)`: the divisor's gradient of `div`, from `a = g * numerator`.
    DivGradB = 19,
}

impl BinaryOp {
    /// Every binary op, in code order.
    pub const ALL: [BinaryOp; 20] = [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Maximum,
        BinaryOp::MaximumMask,
        BinaryOp::MulOneMinus,
        BinaryOp::LogGrad,
        BinaryOp::SqrtGrad,
        BinaryOp::SquareGrad,
        BinaryOp::TanhGrad,
        BinaryOp::SigmoidGrad,
        BinaryOp::SoftplusGrad,
        BinaryOp::GeluGrad,
        BinaryOp::GeluTanhGrad,
        BinaryOp::ReluGrad,
        BinaryOp::AbsGrad,
        BinaryOp::PowfGrad,
        BinaryOp::ClampGrad,
        BinaryOp::DivGradB,
    ];
}

/// `out[i] = op(x[view(i)], p0, p1)` for every `i` of `shape` in row-major order; `out` is
/// contiguous, `x` strided by `x_strides` (elements; 0 broadcasts).
#[allow(clippy::too_many_arguments)]
pub fn unary_f32(
    driver: &dyn Driver,
    op: UnaryOp,
    p0: f32,
    p1: f32,
    out: DevicePtr,
    x: DevicePtr,
    x_strides: &[isize],
    shape: &[usize],
) -> Result<()> {
    let (n, view) = pack_view("unary_f32", shape, &[x_strides])?;
    if n == 0 {
        return Ok(());
    }
    let mut args = vec![
        KernelArg::Ptr(out),
        KernelArg::Ptr(x),
        KernelArg::U32(n),
        KernelArg::U32(op as u32),
        KernelArg::F32(p0),
        KernelArg::F32(p1),
    ];
    args.extend(view);
    driver.launch(&ELEMENTWISE, "unary_f32", linear_config(n), &args)
}

/// `out[i] = op(a[view_a(i)], b[view_b(i)], p0, p1)` over the broadcast `shape`; `out` is
/// contiguous, the operands strided (a broadcast dimension has stride 0).
#[allow(clippy::too_many_arguments)]
pub fn binary_f32(
    driver: &dyn Driver,
    op: BinaryOp,
    p0: f32,
    p1: f32,
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
    let mut args = vec![
        KernelArg::Ptr(out),
        KernelArg::Ptr(a),
        KernelArg::Ptr(b),
        KernelArg::U32(n),
        KernelArg::U32(op as u32),
        KernelArg::F32(p0),
        KernelArg::F32(p1),
    ];
    args.extend(view);
    driver.launch(&ELEMENTWISE, "binary_f32", linear_config(n), &args)
}
