//! Floating-point semantics of the PTX float instructions, as pure functions on values.
//!
//! Round-to-nearest results use Rust's IEEE operations (correctly rounded, as PTX's `.rn`).
//! Directed roundings (`.rz`, `.rm`, `.rp`) compute the rounded-to-nearest value plus the
//! sign of the exact remainder (error-free transforms in f64) and step to the neighbour the
//! mode asks for. Approximate instructions are computed in f64 and rounded once: the result
//! is the correctly rounded value, which lies within every error bound the ISA states for the
//! `.approx` forms (hardware may differ from it within those bounds).
//!
//! NaN results of f32 arithmetic are the canonical NaN `0x7fffffff`, as NVIDIA GPUs produce.

use super::ir::{FMod, FUnary, Rnd};

/// The canonical f32 NaN of NVIDIA GPUs.
pub const F32_NAN: u32 = 0x7fff_ffff;

/// `a * b + c` rounded once (IEEE fusedMultiplyAdd, as `mul_add`). Without the FMA
/// instruction enabled at compile time `mul_add` calls a software routine, which was a tenth
/// of the interpreter's time in an f32 GEMM; the instruction, detected at run time, gives
/// the same correctly rounded result.
#[inline(always)]
fn fused32(a: f32, b: f32, c: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has FMA (checked just above), the only requirement of `fma32_hw`.
        return unsafe { fma32_hw(a, b, c) };
    }
    a.mul_add(b, c)
}

/// [`fused32`] for f64.
#[inline(always)]
fn fused64(a: f64, b: f64, c: f64) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has FMA (checked just above), the only requirement of `fma64_hw`.
        return unsafe { fma64_hw(a, b, c) };
    }
    a.mul_add(b, c)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
fn fma32_hw(a: f32, b: f32, c: f32) -> f32 {
    a.mul_add(b, c)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
fn fma64_hw(a: f64, b: f64, c: f64) -> f64 {
    a.mul_add(b, c)
}

/// Flushes an f32 subnormal to a zero of the same sign (`.ftz`).
#[inline]
pub fn ftz32(x: f32) -> f32 {
    if x.is_subnormal() {
        f32::copysign(0.0, x)
    } else {
        x
    }
}

#[inline]
fn canon32(x: f32) -> f32 {
    if x.is_nan() {
        f32::from_bits(F32_NAN)
    } else {
        x
    }
}

/// `.sat`: clamps to [0, 1]; NaN becomes +0.
pub fn sat32(x: f32) -> f32 {
    if x.is_nan() {
        0.0
    } else {
        x.clamp(0.0, 1.0)
    }
}

fn sat64(x: f64) -> f64 {
    if x.is_nan() {
        0.0
    } else {
        x.clamp(0.0, 1.0)
    }
}

/// `(s, e)` with `s = fl(a + b)` and `a + b = s + e` exactly (Knuth's TwoSum).
pub fn two_sum(a: f64, b: f64) -> (f64, f64) {
    let s = a + b;
    let bb = s - a;
    let e = (a - (s - bb)) + (b - bb);
    (s, e)
}

/// Rounds the exact value `s + tail` (|tail| at most half an f64 ulp of `s`, only its sign
/// matters) to f32 in a directed mode. `s` is finite.
pub fn round_to_f32(s: f64, tail: f64, rnd: Rnd) -> f32 {
    let c = s as f32;
    if rnd == Rnd::Nearest && tail == 0.0 {
        return c;
    }
    let (lo, hi) = if c.is_infinite() {
        if s > 0.0 {
            (f32::MAX, f32::INFINITY)
        } else {
            (f32::NEG_INFINITY, -f32::MAX)
        }
    } else {
        // s - c is exact (Sterbenz: c is within a factor 2 of s, or zero).
        let diff = (s - c as f64) + tail;
        if diff == 0.0 {
            return c;
        } else if diff > 0.0 {
            (c, c.next_up())
        } else {
            (c.next_down(), c)
        }
    };
    match rnd {
        Rnd::Nearest => c,
        Rnd::Zero => {
            if s + tail > 0.0 {
                lo
            } else {
                hi
            }
        }
        Rnd::Down => lo,
        Rnd::Up => hi,
    }
}

/// Rounds `s + tail` to f32 rounding to odd (truncate, then set the last bit if inexact):
/// a later round-to-nearest to a format of at most 22 bits (bf16, f16) is then correct.
pub fn round_odd_f32(s: f64, tail: f64) -> f32 {
    let r = round_to_f32(s, tail, Rnd::Zero);
    if r.is_finite() && (r as f64 != s || tail != 0.0) {
        f32::from_bits(r.to_bits() | 1)
    } else {
        r
    }
}

/// Rounds `s + tail` (tail below half an ulp of `s`) to f64 in a directed mode.
pub fn round_to_f64(s: f64, tail: f64, rnd: Rnd) -> f64 {
    if tail == 0.0 || !s.is_finite() || tail.is_nan() {
        return s;
    }
    match rnd {
        Rnd::Nearest => s,
        Rnd::Zero => {
            if s > 0.0 && tail < 0.0 {
                s.next_down()
            } else if s < 0.0 && tail > 0.0 {
                s.next_up()
            } else {
                s
            }
        }
        Rnd::Down => {
            if tail < 0.0 {
                s.next_down()
            } else {
                s
            }
        }
        Rnd::Up => {
            if tail > 0.0 {
                s.next_up()
            } else {
                s
            }
        }
    }
}

fn overflow64(positive: bool, rnd: Rnd) -> f64 {
    let big = match (rnd, positive) {
        (Rnd::Nearest, _) | (Rnd::Down, false) | (Rnd::Up, true) => f64::INFINITY,
        _ => f64::MAX,
    };
    if positive {
        big
    } else {
        -big
    }
}

/// The exact sum of two addends is zero: +0 except toward minus infinity (IEEE 754 6.3),
/// and -0 + -0 stays -0.
fn zero_sum_sign(a: f64, b: f64, rnd: Rnd) -> Option<f64> {
    if a == 0.0 && b == 0.0 && a.is_sign_negative() == b.is_sign_negative() {
        return Some(a);
    }
    Some(if rnd == Rnd::Down { -0.0 } else { 0.0 })
}

/// f32 `add` (op 0), `sub` (1), `mul` (2) with rounding, `.ftz` and `.sat`.
#[inline]
pub fn f32_arith(op: u8, a: f32, b: f32, m: FMod) -> f32 {
    let (a, b) = if m.ftz { (ftz32(a), ftz32(b)) } else { (a, b) };
    let b = if op == 1 { -b } else { b };
    let r = if m.rnd == Rnd::Nearest || !a.is_finite() || !b.is_finite() {
        if op == 2 {
            a * b
        } else {
            a + b
        }
    } else if op == 2 {
        // The product of two f32 is exact in f64.
        let p = a as f64 * b as f64;
        if p == 0.0 {
            p as f32
        } else {
            round_to_f32(p, 0.0, m.rnd)
        }
    } else {
        let (s, e) = two_sum(a as f64, b as f64);
        if s == 0.0 && e == 0.0 {
            zero_sum_sign(a as f64, b as f64, m.rnd).unwrap_or(0.0) as f32
        } else {
            round_to_f32(s, e, m.rnd)
        }
    };
    finish32(r, m)
}

#[inline]
fn finish32(r: f32, m: FMod) -> f32 {
    let r = if m.ftz { ftz32(r) } else { r };
    let r = if m.sat { sat32(r) } else { r };
    canon32(r)
}

/// f32 `fma` (and `mad.rnd`): `a * b + c` rounded once.
#[inline]
pub fn f32_fma(a: f32, b: f32, c: f32, m: FMod) -> f32 {
    let (a, b, c) = if m.ftz {
        (ftz32(a), ftz32(b), ftz32(c))
    } else {
        (a, b, c)
    };
    let r = if m.rnd == Rnd::Nearest || !(a.is_finite() && b.is_finite() && c.is_finite()) {
        fused32(a, b, c)
    } else {
        let p = a as f64 * b as f64;
        let (s, e) = two_sum(p, c as f64);
        if s == 0.0 && e == 0.0 {
            zero_sum_sign(p, c as f64, m.rnd).unwrap_or(0.0) as f32
        } else {
            round_to_f32(s, e, m.rnd)
        }
    };
    finish32(r, m)
}

/// f64 `add`/`sub`/`mul` with rounding and `.sat`.
pub fn f64_arith(op: u8, a: f64, b: f64, m: FMod) -> f64 {
    let b = if op == 1 { -b } else { b };
    let rn = if op == 2 { a * b } else { a + b };
    let r = if m.rnd == Rnd::Nearest || !(a.is_finite() && b.is_finite()) {
        rn
    } else if rn.is_infinite() {
        overflow64(rn > 0.0, m.rnd)
    } else if op == 2 {
        let e = fused64(a, b, -rn);
        if rn == 0.0 {
            rn
        } else {
            round_to_f64(rn, e, m.rnd)
        }
    } else {
        let (s, e) = two_sum(a, b);
        if s == 0.0 && e == 0.0 {
            zero_sum_sign(a, b, m.rnd).unwrap_or(0.0)
        } else {
            round_to_f64(s, e, m.rnd)
        }
    };
    if m.sat {
        sat64(r)
    } else {
        r
    }
}

/// f64 `fma` with rounding. Directed modes find the remainder's sign with error-free
/// transforms (exact except when the product's low part itself underflows).
pub fn f64_fma(a: f64, b: f64, c: f64, m: FMod) -> f64 {
    let rn = fused64(a, b, c);
    let r = if m.rnd == Rnd::Nearest || !(a.is_finite() && b.is_finite() && c.is_finite()) {
        rn
    } else if rn.is_infinite() {
        overflow64(rn > 0.0, m.rnd)
    } else {
        let p = a * b;
        let ep = fused64(a, b, -p);
        // a*b + c - rn = (p - rn + c) + ep, each step error-free or sign-preserving.
        let (s1, e1) = two_sum(p, c);
        let (s2, e2) = two_sum(s1, -rn);
        let tail = s2 + (e2 + (e1 + ep));
        if rn == 0.0 && tail == 0.0 {
            zero_sum_sign(p, c, m.rnd).unwrap_or(0.0)
        } else {
            round_to_f64(rn, tail, m.rnd)
        }
    };
    if m.sat {
        sat64(r)
    } else {
        r
    }
}

/// f32 `div`: `.rn`-style rounded division, or `.approx` = `a * rcp.approx(b)`.
pub fn f32_div(a: f32, b: f32, m: FMod, approx: bool) -> f32 {
    let (a, b) = if m.ftz { (ftz32(a), ftz32(b)) } else { (a, b) };
    let r = if approx {
        let r = (1.0f64 / b as f64) as f32;
        let r = if m.ftz { ftz32(r) } else { r };
        a * r
    } else if m.rnd == Rnd::Nearest || !(a.is_finite() && b.is_finite()) || b == 0.0 {
        a / b
    } else {
        let (a, b) = (a as f64, b as f64);
        let q = a / b;
        let rem = fused64(-q, b, a);
        round_to_f32(q, rem / b, m.rnd)
    };
    finish32(r, m)
}

/// f64 `div` with rounding.
pub fn f64_div(a: f64, b: f64, m: FMod) -> f64 {
    let q = a / b;
    let r = if m.rnd == Rnd::Nearest || !q.is_finite() || q == 0.0 {
        q
    } else {
        let rem = fused64(-q, b, a);
        round_to_f64(q, rem / b, m.rnd)
    };
    if m.sat {
        sat64(r)
    } else {
        r
    }
}

/// f32 unary ops. `rcp`/`sqrt` without `.approx` are correctly rounded in any mode; every
/// `.approx` form is the exact value rounded to nearest.
pub fn f32_unary(u: FUnary, a: f32, m: FMod, approx: bool) -> f32 {
    let a = if m.ftz { ftz32(a) } else { a };
    let x = a as f64;
    let r = match u {
        FUnary::Neg => return finish_sign(-a, m),
        FUnary::Abs => return finish_sign(a.abs(), m),
        FUnary::Rcp if approx || m.rnd == Rnd::Nearest => (1.0 / x) as f32,
        FUnary::Rcp => f32_div(1.0, a, FMod { ftz: false, ..m }, false),
        FUnary::Sqrt if approx || m.rnd == Rnd::Nearest || !(a.is_finite() && a > 0.0) => a.sqrt(),
        FUnary::Sqrt => {
            let s = x.sqrt();
            let rem = fused64(-s, s, x);
            round_to_f32(s, rem, m.rnd)
        }
        FUnary::Rsqrt => (1.0 / x.sqrt()) as f32,
        FUnary::Ex2 => x.exp2() as f32,
        FUnary::Lg2 => x.log2() as f32,
        FUnary::Sin => x.sin() as f32,
        FUnary::Cos => x.cos() as f32,
        FUnary::Tanh => x.tanh() as f32,
    };
    finish32(r, m)
}

/// `neg`/`abs` only touch the sign bit (NaN payloads included), after `.ftz`.
fn finish_sign(r: f32, m: FMod) -> f32 {
    if m.ftz {
        ftz32(r)
    } else {
        r
    }
}

/// f64 unary ops (same rules as [`f32_unary`]).
pub fn f64_unary(u: FUnary, a: f64, m: FMod, approx: bool) -> f64 {
    match u {
        FUnary::Neg => -a,
        FUnary::Abs => a.abs(),
        FUnary::Rcp if approx => 1.0 / a,
        FUnary::Rcp => f64_div(1.0, a, m),
        FUnary::Sqrt if approx || m.rnd == Rnd::Nearest || !(a.is_finite() && a > 0.0) => a.sqrt(),
        FUnary::Sqrt => {
            let s = a.sqrt();
            round_to_f64(s, fused64(-s, s, a), m.rnd)
        }
        FUnary::Rsqrt => 1.0 / a.sqrt(),
        FUnary::Ex2 => a.exp2(),
        FUnary::Lg2 => a.log2(),
        FUnary::Sin => a.sin(),
        FUnary::Cos => a.cos(),
        FUnary::Tanh => a.tanh(),
    }
}

/// f32 `min`/`max`: a NaN operand yields the other operand, two NaNs the canonical NaN;
/// -0.0 orders below +0.0.
pub fn f32_minmax(max: bool, a: f32, b: f32, ftz: bool) -> f32 {
    let (a, b) = if ftz { (ftz32(a), ftz32(b)) } else { (a, b) };
    let r = match (a.is_nan(), b.is_nan()) {
        (true, true) => f32::from_bits(F32_NAN),
        (true, false) => b,
        (false, true) => a,
        _ => {
            if a == b {
                // Equal values differ at most in the sign of zero.
                if max == a.is_sign_negative() {
                    b
                } else {
                    a
                }
            } else if (a < b) != max {
                a
            } else {
                b
            }
        }
    };
    if ftz {
        ftz32(r)
    } else {
        r
    }
}

/// f64 `min`/`max` (same rules as [`f32_minmax`], NaN result a quiet NaN).
pub fn f64_minmax(max: bool, a: f64, b: f64) -> f64 {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => f64::NAN,
        (true, false) => b,
        (false, true) => a,
        _ => {
            if a == b {
                if max == a.is_sign_negative() {
                    b
                } else {
                    a
                }
            } else if (a < b) != max {
                a
            } else {
                b
            }
        }
    }
}

/// `testp.{finite, infinite, number, notanumber, normal, subnormal}` on an f64 view of the
/// value (`subnormal` must be judged in the source type, hence the flag).
pub fn testp(kind: u8, x: f64, subnormal_in_type: bool) -> bool {
    match kind {
        0 => x.is_finite(),
        1 => x.is_infinite(),
        2 => !x.is_nan(),
        3 => x.is_nan(),
        4 => x.is_finite() && x != 0.0 && !subnormal_in_type,
        _ => subnormal_in_type,
    }
}
