//! Elementwise operations as plain data: what a kernel receives instead of a Rust closure.
//!
//! Every device evaluates the same op from its code and scalar parameters: the CPU backend
//! matches on the enum once per call and runs a loop specialised for the arm, a GPU kernel
//! switches on [`UnaryOp::code`] / [`BinaryOp::code`] with the parameters from
//! [`UnaryOp::params`] / [`BinaryOp::params`]. Scalar parameters are carried as `f64` and
//! converted to the element type with `Element::from_f64` where the op is evaluated.
//!
//! The codes are part of the kernel ABI: never renumber one, only append.

/// An elementwise function of one operand `x`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryOp {
    /// `-x`.
    Neg,
    /// `e^x`.
    Exp,
    /// `ln x`.
    Log,
    /// `sqrt x`.
    Sqrt,
    /// `x * x`.
    Square,
    /// `tanh x`.
    Tanh,
    /// `1 / (1 + e^-x)`, stable for either sign.
    Sigmoid,
    /// `ln(1 + e^x)`, stable for large `|x|`.
    Softplus,
    /// GELU, tanh approximation.
    GeluTanh,
    /// `max(x, 0)` (`x > 0 ? x : 0`).
    Relu,
    /// `|x|`.
    Abs,
    /// `x^p`.
    PowScalar(f64),
    /// `min(max(x, lo), hi)`.
    Clamp {
        /// Lower bound.
        lo: f64,
        /// Upper bound.
        hi: f64,
    },
    /// `x + s`.
    AddScalar(f64),
    /// `x * s`.
    MulScalar(f64),
    /// `x != 0 ? 1 : 0`.
    NonZero,
    /// GELU with the exact error function (the crate's f32 `erf` polynomial).
    Gelu,
}

impl UnaryOp {
    /// One value of every variant, in code order (test tables run each op through it).
    pub const EVERY: [UnaryOp; 17] = [
        UnaryOp::Neg,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Square,
        UnaryOp::Tanh,
        UnaryOp::Sigmoid,
        UnaryOp::Softplus,
        UnaryOp::GeluTanh,
        UnaryOp::Relu,
        UnaryOp::Abs,
        UnaryOp::PowScalar(2.5),
        UnaryOp::Clamp { lo: -1.0, hi: 2.0 },
        UnaryOp::AddScalar(3.0),
        UnaryOp::MulScalar(-0.5),
        UnaryOp::NonZero,
        UnaryOp::Gelu,
    ];

    /// The op's number in the kernel ABI.
    pub fn code(self) -> u32 {
        match self {
            UnaryOp::Neg => 0,
            UnaryOp::Exp => 1,
            UnaryOp::Log => 2,
            UnaryOp::Sqrt => 3,
            UnaryOp::Square => 4,
            UnaryOp::Tanh => 5,
            UnaryOp::Sigmoid => 6,
            UnaryOp::Softplus => 7,
            UnaryOp::GeluTanh => 8,
            UnaryOp::Relu => 9,
            UnaryOp::Abs => 10,
            UnaryOp::PowScalar(_) => 11,
            UnaryOp::Clamp { .. } => 12,
            UnaryOp::AddScalar(_) => 13,
            UnaryOp::MulScalar(_) => 14,
            UnaryOp::NonZero => 15,
            UnaryOp::Gelu => 16,
        }
    }

    /// The op's scalar parameters (unused ones are 0): `[p]`, `[lo, hi]` or `[s]`.
    pub fn params(self) -> [f64; 2] {
        match self {
            UnaryOp::PowScalar(p) => [p, 0.0],
            UnaryOp::Clamp { lo, hi } => [lo, hi],
            UnaryOp::AddScalar(s) | UnaryOp::MulScalar(s) => [s, 0.0],
            _ => [0.0, 0.0],
        }
    }

    /// A short name for messages, e.g. `"exp"`.
    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Neg => "neg",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Square => "square",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::Softplus => "softplus",
            UnaryOp::GeluTanh => "gelu_tanh",
            UnaryOp::Relu => "relu",
            UnaryOp::Abs => "abs",
            UnaryOp::PowScalar(_) => "powf",
            UnaryOp::Clamp { .. } => "clamp",
            UnaryOp::AddScalar(_) => "add_scalar",
            UnaryOp::MulScalar(_) => "mul_scalar",
            UnaryOp::NonZero => "nonzero",
            UnaryOp::Gelu => "gelu",
        }
    }
}

/// An elementwise function of two broadcast operands `(a, b)`. The `...Backward` ops take
/// the output gradient as `a` and the saved input (`x`) or output (`y`) as `b`; they are the
/// derivative rules of the unary ops, fused with the multiply by the gradient.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BinaryOp {
    /// `a + b`.
    Add,
    /// `a - b`.
    Sub,
    /// `a * b`.
    Mul,
    /// `a / b`.
    Div,
    /// `a >= b ? a : b`.
    Maximum,
    /// `a >= b ? 1 : 0` (which operand `maximum` took).
    GeMask,
    /// `a == b ? 1 : 0` (which entries attained a reduction's maximum).
    EqMask,
    /// `a * (1 - b)`: the gradient to the operand a 0/1 mask `b` did not select.
    MulOneMinus,
    /// `b != 0 ? a : 0`.
    SelectIfNonZero,
    /// `b != 0 ? 0 : a`.
    SelectIfZero,
    /// `-a / (b * b)`: `div`'s gradient to the divisor, from `a = g * numerator`.
    DivRhsBackward,
    /// `a * 0.5 / b` (left to right) with `b = sqrt x`.
    SqrtBackward,
    /// `a * (1 - b * b)` with `b = tanh x`.
    TanhBackward,
    /// `a * b * (1 - b)` with `b = sigmoid x`.
    SigmoidBackward,
    /// `a * (1 / b)` with `b = x` (log).
    LogBackward,
    /// `a * (b + b)` with `b = x` (square).
    SquareBackward,
    /// `a * sigmoid(b)` with `b = x` (softplus).
    SoftplusBackward,
    /// `a * gelu_tanh'(b)` with `b = x`.
    GeluTanhBackward,
    /// `a * (b > 0 ? 1 : 0)` with `b = x` (relu).
    ReluBackward,
    /// `a * sign(b)` (0 at 0) with `b = x` (abs).
    AbsBackward,
    /// `a * (p * b^(p - 1))` with `b = x`.
    PowBackward(f64),
    /// `a * (lo < b < hi ? 1 : 0)` with `b = x`.
    ClampBackward {
        /// Lower bound.
        lo: f64,
        /// Upper bound.
        hi: f64,
    },
    /// `a * gelu'(b)` with `b = x` (exact-erf GELU).
    GeluBackward,
}

impl BinaryOp {
    /// One value of every variant, in code order (test tables run each op through it).
    pub const EVERY: [BinaryOp; 23] = [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Maximum,
        BinaryOp::GeMask,
        BinaryOp::EqMask,
        BinaryOp::MulOneMinus,
        BinaryOp::SelectIfNonZero,
        BinaryOp::SelectIfZero,
        BinaryOp::DivRhsBackward,
        BinaryOp::SqrtBackward,
        BinaryOp::TanhBackward,
        BinaryOp::SigmoidBackward,
        BinaryOp::LogBackward,
        BinaryOp::SquareBackward,
        BinaryOp::SoftplusBackward,
        BinaryOp::GeluTanhBackward,
        BinaryOp::ReluBackward,
        BinaryOp::AbsBackward,
        BinaryOp::PowBackward(3.0),
        BinaryOp::ClampBackward { lo: 0.0, hi: 1.0 },
        BinaryOp::GeluBackward,
    ];

    /// The op's number in the kernel ABI.
    pub fn code(self) -> u32 {
        match self {
            BinaryOp::Add => 0,
            BinaryOp::Sub => 1,
            BinaryOp::Mul => 2,
            BinaryOp::Div => 3,
            BinaryOp::Maximum => 4,
            BinaryOp::GeMask => 5,
            BinaryOp::EqMask => 6,
            BinaryOp::MulOneMinus => 7,
            BinaryOp::SelectIfNonZero => 8,
            BinaryOp::SelectIfZero => 9,
            BinaryOp::DivRhsBackward => 10,
            BinaryOp::SqrtBackward => 11,
            BinaryOp::TanhBackward => 12,
            BinaryOp::SigmoidBackward => 13,
            BinaryOp::LogBackward => 14,
            BinaryOp::SquareBackward => 15,
            BinaryOp::SoftplusBackward => 16,
            BinaryOp::GeluTanhBackward => 17,
            BinaryOp::ReluBackward => 18,
            BinaryOp::AbsBackward => 19,
            BinaryOp::PowBackward(_) => 20,
            BinaryOp::ClampBackward { .. } => 21,
            BinaryOp::GeluBackward => 22,
        }
    }

    /// The op's scalar parameters (unused ones are 0): `[p, p - 1]` or `[lo, hi]`.
    /// `PowBackward` carries `p - 1` computed in f64, as the CPU evaluates it, so a kernel
    /// that rounds both to f32 uses the same exponent.
    pub fn params(self) -> [f64; 2] {
        match self {
            BinaryOp::PowBackward(p) => [p, p - 1.0],
            BinaryOp::ClampBackward { lo, hi } => [lo, hi],
            _ => [0.0, 0.0],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_lists_each_code_once_in_order() {
        // Kernels switch on the code: codes must be 0..n without gaps or repeats.
        for (i, op) in UnaryOp::EVERY.iter().enumerate() {
            assert_eq!(op.code() as usize, i, "{op:?}");
        }
        for (i, op) in BinaryOp::EVERY.iter().enumerate() {
            assert_eq!(op.code() as usize, i, "{op:?}");
        }
    }

    #[test]
    fn params_carry_the_scalars() {
        assert_eq!(UnaryOp::PowScalar(2.5).params(), [2.5, 0.0]);
        assert_eq!(UnaryOp::Clamp { lo: -1.0, hi: 2.0 }.params(), [-1.0, 2.0]);
        assert_eq!(UnaryOp::MulScalar(-0.5).params(), [-0.5, 0.0]);
        assert_eq!(
            BinaryOp::ClampBackward { lo: 0.0, hi: 1.0 }.params(),
            [0.0, 1.0]
        );
        assert_eq!(BinaryOp::PowBackward(3.0).params(), [3.0, 2.0]);
    }
}
