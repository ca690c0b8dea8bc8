//! `cvt` semantics: integer widening/narrowing (with `.sat`), integer <-> float with rounding,
//! float <-> float including f16 and bf16, and round-to-integer in float.
//!
//! Float-to-integer conversions saturate to the destination range and turn NaN into 0, as
//! the ISA specifies. NaN results in f16/bf16 are the canonical `0x7fff`.

use super::fpmath::{ftz32, round_odd_f32, round_to_f32, round_to_f64, sat32, two_sum, F32_NAN};
use super::intmath::{float_value, int_value, mask};
use super::ir::{Rnd, Ty};

/// The canonical NaN of the 16-bit float types.
pub const HALF_NAN: u16 = 0x7fff;

/// f32 to bf16 in any rounding mode, on the bit pattern (bf16 is the top half of f32).
pub fn f32_to_bf16(x: f32, rnd: Rnd) -> u16 {
    if x.is_nan() {
        return HALF_NAN;
    }
    let b = x.to_bits();
    let upper = (b >> 16) as u16;
    let inexact = b & 0xffff != 0;
    let negative = b >> 31 == 1;
    match rnd {
        Rnd::Nearest => ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16,
        Rnd::Zero => upper,
        // Moving away from zero is +1 on the magnitude bits for either sign.
        Rnd::Down => upper + u16::from(inexact && negative),
        Rnd::Up => upper + u16::from(inexact && !negative),
    }
}

/// f32 to f16 (only round-to-nearest-even is supported).
pub fn f32_to_f16(x: f32) -> u16 {
    if x.is_nan() {
        HALF_NAN
    } else {
        half::f16::from_f32(x).to_bits()
    }
}

fn round_int(x: f64, rnd: Rnd) -> f64 {
    match rnd {
        Rnd::Nearest => x.round_ties_even(),
        Rnd::Zero => x.trunc(),
        Rnd::Down => x.floor(),
        Rnd::Up => x.ceil(),
    }
}

fn int_range(t: Ty) -> (i128, i128) {
    let w = t.bits();
    if t.is_signed() {
        (-(1i128 << (w - 1)), (1i128 << (w - 1)) - 1)
    } else {
        (0, (1i128 << w) - 1)
    }
}

/// An integer to f32 in a rounding mode.
fn int_to_f32(v: i128, rnd: Rnd) -> f32 {
    let c = v as f32;
    if rnd == Rnd::Nearest {
        return c;
    }
    let back = c as i128;
    if back == v {
        return c;
    }
    let (lo, hi) = if back < v {
        (c, c.next_up())
    } else {
        (c.next_down(), c)
    };
    pick(lo, hi, v > 0, rnd)
}

fn int_to_f64(v: i128, rnd: Rnd) -> f64 {
    let c = v as f64;
    if rnd == Rnd::Nearest {
        return c;
    }
    let back = c as i128;
    if back == v {
        return c;
    }
    let (lo, hi) = if back < v {
        (c, c.next_up())
    } else {
        (c.next_down(), c)
    };
    match rnd {
        Rnd::Zero => {
            if v > 0 {
                lo
            } else {
                hi
            }
        }
        Rnd::Down => lo,
        _ => hi,
    }
}

fn pick(lo: f32, hi: f32, positive: bool, rnd: Rnd) -> f32 {
    match rnd {
        Rnd::Zero => {
            if positive {
                lo
            } else {
                hi
            }
        }
        Rnd::Down => lo,
        _ => hi,
    }
}

/// `cvt.{rnd}{.ftz}{.sat}.dst.src` on raw bits; `Err` names an unsupported combination.
pub fn cvt(
    dst: Ty,
    src: Ty,
    rnd: Option<Rnd>,
    int_rnd: bool,
    ftz: bool,
    sat: bool,
    a: u64,
) -> Result<u64, String> {
    let unsupported = || format!("cvt from .{src:?} to .{dst:?} with these modifiers");
    match (src.is_float(), dst.is_float()) {
        (false, false) => {
            let v = int_value(a, src);
            let v = if sat {
                let (lo, hi) = int_range(dst);
                v.clamp(lo, hi)
            } else {
                v
            };
            Ok(mask(v as u64, dst.bits()))
        }
        (false, true) => {
            let v = int_value(a, src);
            let rnd = rnd.unwrap_or(Rnd::Nearest);
            Ok(match dst {
                Ty::F32 => {
                    let r = int_to_f32(v, rnd);
                    let r = if sat { sat32(r) } else { r };
                    r.to_bits() as u64
                }
                Ty::F64 => int_to_f64(v, rnd).to_bits(),
                _ => return Err(unsupported()),
            })
        }
        (true, false) => {
            let x = float_value(a, src, ftz);
            let rnd = rnd.unwrap_or(Rnd::Zero);
            if x.is_nan() {
                return Ok(0);
            }
            let r = round_int(x, rnd);
            let (lo, hi) = int_range(dst);
            let v = if r < lo as f64 {
                lo
            } else if r > hi as f64 {
                hi
            } else {
                r as i128
            };
            Ok(mask(v as u64, dst.bits()))
        }
        (true, true) => float_to_float(dst, src, rnd, int_rnd, ftz, sat, a).ok_or_else(unsupported),
    }
}

fn float_to_float(
    dst: Ty,
    src: Ty,
    rnd: Option<Rnd>,
    int_rnd: bool,
    ftz: bool,
    sat: bool,
    a: u64,
) -> Option<u64> {
    let x = float_value(a, src, ftz && src == Ty::F32);
    let rnd_mode = rnd.unwrap_or(Rnd::Nearest);
    let x = if int_rnd { round_int(x, rnd_mode) } else { x };
    Some(match dst {
        Ty::F32 => {
            let r = if src == Ty::F64 && !int_rnd {
                if x.is_nan() {
                    f32::from_bits(F32_NAN)
                } else if x.is_infinite() {
                    x as f32
                } else {
                    round_to_f32(x, 0.0, rnd_mode)
                }
            } else {
                x as f32 // exact: the source is at most as wide, or already integral
            };
            let r = if ftz { ftz32(r) } else { r };
            let r = if sat { sat32(r) } else { r };
            let r = if r.is_nan() {
                f32::from_bits(F32_NAN)
            } else {
                r
            };
            r.to_bits() as u64
        }
        Ty::F64 => {
            let r = if sat && !x.is_nan() {
                x.clamp(0.0, 1.0)
            } else if sat {
                0.0
            } else {
                x
            };
            round_to_f64(r, 0.0, rnd_mode).to_bits()
        }
        Ty::Bf16 if src == Ty::F32 || src == Ty::Bf16 => {
            let r = x as f32;
            let r = if sat { sat32(r) } else { r };
            f32_to_bf16(r, rnd_mode) as u64
        }
        Ty::F16 if src == Ty::F32 && rnd_mode == Rnd::Nearest => {
            let r = x as f32;
            let r = if sat { sat32(r) } else { r };
            f32_to_f16(r) as u64
        }
        Ty::F16 if src == Ty::F16 => a & 0xffff,
        _ => return None,
    })
}

/// One 16-bit float `add` (0), `sub` (1), `mul` (2) or `fma` (3), rounded once to nearest
/// even: the exact result is rounded to odd in f32, then to the 16-bit format.
pub fn half_arith(op: u8, bf16: bool, a: u16, b: u16, c: u16) -> u16 {
    let val = |x: u16| {
        if bf16 {
            half::bf16::from_bits(x).to_f64()
        } else {
            half::f16::from_bits(x).to_f64()
        }
    };
    let (x, y, z) = (val(a), val(b), val(c));
    let (s, tail) = match op {
        0 => two_sum(x, y),
        1 => two_sum(x, -y),
        2 => (x * y, 0.0), // products of 16-bit floats are exact in f64
        _ => two_sum(x * y, z),
    };
    if s.is_nan() {
        return HALF_NAN;
    }
    let r = if s.is_finite() {
        round_odd_f32(s, tail)
    } else {
        s as f32
    };
    if bf16 {
        f32_to_bf16(r, Rnd::Nearest)
    } else {
        f32_to_f16(r)
    }
}
