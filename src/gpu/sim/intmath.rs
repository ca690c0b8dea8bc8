//! Integer and comparison semantics, as pure functions on raw register bits.
//!
//! Values travel as `u64` bit patterns; an operation of width `w` reads the low `w` bits
//! (sign-extending for signed types) and returns its result in the low `w` bits.

use super::fpmath::ftz32;
use super::ir::{Cmp, IBin, IUnary, MulMode, Ty};

/// The low `bits` bits of `v`.
#[inline]
pub fn mask(v: u64, bits: u32) -> u64 {
    if bits >= 64 {
        v
    } else {
        v & ((1u64 << bits) - 1)
    }
}

/// `v`'s low `bits` bits, sign-extended.
#[inline]
pub fn sext(v: u64, bits: u32) -> i64 {
    if bits >= 64 {
        v as i64
    } else {
        let s = 64 - bits;
        ((v << s) as i64) >> s
    }
}

/// The value of `v` as an integer of type `t`, widened to i128.
pub fn int_value(v: u64, t: Ty) -> i128 {
    if t.is_signed() {
        sext(v, t.bits()) as i128
    } else {
        mask(v, t.bits()) as i128
    }
}

/// Integer binary operations. Division by zero is machine-specific in the ISA; here `div`
/// gives all ones (`div.s`: -1 for a >= 0, 1 for a < 0) and `rem` gives `a`.
#[inline]
pub fn ibin(op: IBin, t: Ty, a: u64, b: u64) -> u64 {
    let w = t.bits();
    let (sa, sb) = (sext(a, w), sext(b, w));
    let (ua, ub) = (mask(a, w), mask(b, w));
    let r = match op {
        IBin::Add => ua.wrapping_add(ub),
        IBin::Sub => ua.wrapping_sub(ub),
        IBin::And => ua & ub,
        IBin::Or => ua | ub,
        IBin::Xor => ua ^ ub,
        IBin::Min | IBin::Max => {
            let a_less = if t.is_signed() { sa < sb } else { ua < ub };
            if a_less == (op == IBin::Min) {
                ua
            } else {
                ub
            }
        }
        // Shift amounts are unsigned 32-bit and clamp at the width: shl gives 0, shr
        // gives 0 or all sign bits.
        IBin::Shl => {
            let n = mask(b, 32);
            if n >= w as u64 {
                0
            } else {
                ua << n
            }
        }
        IBin::Shr => {
            let n = mask(b, 32).min(w as u64 - 1 + u64::from(!t.is_signed()));
            if t.is_signed() {
                (sa >> n.min(63)) as u64
            } else if n >= w as u64 {
                0
            } else {
                ua >> n
            }
        }
        IBin::Div => {
            if t.is_signed() {
                if sb == 0 {
                    if sa >= 0 {
                        u64::MAX
                    } else {
                        1
                    }
                } else {
                    sa.wrapping_div(sb) as u64
                }
            } else {
                ua.checked_div(ub).unwrap_or(u64::MAX)
            }
        }
        IBin::Rem => {
            if t.is_signed() {
                if sb == 0 {
                    sa as u64
                } else {
                    sa.wrapping_rem(sb) as u64
                }
            } else {
                ua.checked_rem(ub).unwrap_or(ua)
            }
        }
    };
    mask(r, w)
}

/// Integer unary operations (`popc`/`clz` results are 32-bit counts).
pub fn iunary(op: IUnary, t: Ty, a: u64) -> u64 {
    let w = t.bits();
    let ua = mask(a, w);
    let r = match op {
        IUnary::Not => !ua,
        IUnary::Neg => ua.wrapping_neg(),
        IUnary::Abs => sext(a, w).wrapping_abs() as u64,
        IUnary::Popc => return ua.count_ones() as u64,
        IUnary::Clz => return (ua.leading_zeros() - (64 - w)) as u64,
        IUnary::Brev => ua.reverse_bits() >> (64 - w),
    };
    mask(r, w)
}

/// `mul` / `mad` products: `.lo` keeps the low width bits, `.hi` the high ones and `.wide`
/// the whole double-width product.
#[inline]
pub fn imul(mode: MulMode, t: Ty, a: u64, b: u64) -> u64 {
    let w = t.bits();
    let p: i128 = int_value(a, t) * int_value(b, t);
    let p = p as u128;
    match mode {
        MulMode::Lo => mask(p as u64, w),
        MulMode::Hi => mask((p >> w) as u64, w),
        MulMode::Wide => mask(p as u64, 2 * w),
    }
}

/// `mad`: the product as [`imul`] plus `c` at the result width.
#[inline]
pub fn imad(mode: MulMode, t: Ty, a: u64, b: u64, c: u64) -> u64 {
    let w = if mode == MulMode::Wide {
        2 * t.bits()
    } else {
        t.bits()
    };
    mask(imul(mode, t, a, b).wrapping_add(c), w)
}

/// A float value of type `t` (f16/bf16/f32/f64) read from raw bits, as f64 (exact).
pub fn float_value(v: u64, t: Ty, ftz: bool) -> f64 {
    match t {
        Ty::F32 => {
            let x = f32::from_bits(v as u32);
            (if ftz { ftz32(x) } else { x }) as f64
        }
        Ty::F64 => f64::from_bits(v),
        Ty::F16 => half::f16::from_bits(v as u16).to_f64(),
        Ty::Bf16 => half::bf16::from_bits(v as u16).to_f64(),
        _ => f64::NAN,
    }
}

/// `setp`'s comparison of two values of type `t`.
#[inline]
pub fn compare(c: Cmp, t: Ty, a: u64, b: u64, ftz: bool) -> bool {
    if t.is_float() {
        let (x, y) = (float_value(a, t, ftz), float_value(b, t, ftz));
        let nan = x.is_nan() || y.is_nan();
        return match c {
            Cmp::Eq => x == y,
            Cmp::Ne => !nan && x != y,
            Cmp::Lt => x < y,
            Cmp::Le => x <= y,
            Cmp::Gt => x > y,
            Cmp::Ge => x >= y,
            Cmp::Equ => nan || x == y,
            Cmp::Neu => x != y,
            Cmp::Ltu => nan || x < y,
            Cmp::Leu => nan || x <= y,
            Cmp::Gtu => nan || x > y,
            Cmp::Geu => nan || x >= y,
            Cmp::Num => !nan,
            Cmp::Nan => nan,
            Cmp::Lo | Cmp::Ls | Cmp::Hi | Cmp::Hs => false,
        };
    }
    let w = t.bits();
    let (sa, sb) = (int_value(a, t), int_value(b, t));
    let (ua, ub) = (mask(a, w), mask(b, w));
    match c {
        Cmp::Eq => ua == ub,
        Cmp::Ne => ua != ub,
        Cmp::Lt => sa < sb,
        Cmp::Le => sa <= sb,
        Cmp::Gt => sa > sb,
        Cmp::Ge => sa >= sb,
        Cmp::Lo => ua < ub,
        Cmp::Ls => ua <= ub,
        Cmp::Hi => ua > ub,
        Cmp::Hs => ua >= ub,
        _ => false,
    }
}

/// `prmt.b32` in the default mode: byte `i` of the result is byte `c[4i+2..4i]` of the
/// 8-byte value `{b, a}` (a in bytes 0-3), or that byte's sign replicated when `c[4i+3]`
/// is set.
pub fn prmt(a: u32, b: u32, c: u32) -> u32 {
    let src = (a as u64) | (b as u64) << 32;
    let mut d = 0u32;
    for i in 0..4 {
        let sel = (c >> (4 * i)) & 0xf;
        let byte = (src >> (8 * (sel & 7))) as u8;
        let out = if sel & 8 != 0 {
            if byte & 0x80 != 0 {
                0xff
            } else {
                0
            }
        } else {
            byte
        };
        d |= (out as u32) << (8 * i);
    }
    d
}

/// `bfi`: `b` with bits `pos .. pos + len` (within the width) replaced by `a`'s low bits.
pub fn bit_insert(width: u32, a: u64, b: u64, pos: u64, len: u64) -> u64 {
    let mut f = b;
    for i in 0..len {
        if pos + i >= width as u64 {
            break;
        }
        let bit = 1u64 << (pos + i);
        f = (f & !bit) | (((a >> i) & 1) << (pos + i));
    }
    f
}

/// `bfe`: bits `pos .. pos + len` of `a`, filled above with the field's top bit (signed)
/// or zeros; bits past the width read as the sign (signed) or zero.
pub fn bit_extract(width: u32, signed: bool, a: u64, pos: u64, len: u64) -> u64 {
    let msb = width as u64 - 1;
    let sbit = if signed && len > 0 {
        (a >> (pos + len - 1).min(msb)) & 1
    } else {
        0
    };
    let mut d = 0u64;
    for i in 0..width as u64 {
        let bit = if i < len && pos + i <= msb {
            (a >> (pos + i)) & 1
        } else {
            sbit
        };
        d |= bit << i;
    }
    d
}

/// `lop3.b32`: bit i of the result is bit `(a_i << 2) | (b_i << 1) | c_i` of `lut` (the ISA
/// defines `lut` as F(0xF0, 0xCC, 0xAA) for the wanted function F).
pub fn lop3(a: u32, b: u32, c: u32, lut: u8) -> u32 {
    let mut d = 0u32;
    for i in 0..32 {
        let idx = ((a >> i) & 1) << 2 | ((b >> i) & 1) << 1 | ((c >> i) & 1);
        d |= ((lut as u32 >> idx) & 1) << i;
    }
    d
}
