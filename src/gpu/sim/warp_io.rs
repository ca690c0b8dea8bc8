//! Lane-wise instructions for the whole warp at once.
//!
//! The register file is laid out lane-minor (`regs[r * 32 + lane]`) with one initialisation
//! mask per register, so an operand is decoded once per instruction instead of once per
//! lane, and its initialisation check is one mask test for all lanes. The sanitizer is
//! unchanged: a lane that reads a register nothing wrote still fails, and the error names the
//! same lane and register as a lane-by-lane read would (the lowest failing lane, its first
//! unset operand in operand order).

use super::exec::{lanes_of, Launch, Warp, R};
use super::ir::Operand;

/// All lanes of a warp.
pub(super) const FULL: u32 = u32::MAX;

/// The lanes of `mask` below its lowest set lane (all lanes when `mask` is empty).
#[inline(always)]
pub(super) fn below_first(mask: u32) -> u32 {
    if mask == 0 {
        FULL
    } else {
        (1u32 << mask.trailing_zeros()) - 1
    }
}

/// Bit mask of a register `bits` wide (a predicate is 1 bit).
#[inline(always)]
pub(super) fn width_mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits.max(1)) - 1
    }
}

/// A source operand for the whole warp, read in place from the register file.
#[derive(Clone, Copy)]
pub(super) enum Src {
    /// The register whose 32 lane values start at this index of the register file.
    Row(usize),
    /// A predicate register (its row's start) read negated.
    NotRow(usize),
    /// The same value in every lane.
    Imm(u64),
}

impl Src {
    /// The value in lane `l`.
    #[inline(always)]
    pub(super) fn get(self, regs: &[u64], l: usize) -> u64 {
        match self {
            Src::Row(r) => regs[r + l],
            Src::NotRow(r) => u64::from(regs[r + l] == 0),
            Src::Imm(v) => v,
        }
    }
}

impl<'a> Launch<'a> {
    /// The sources `srcs` for the warp and the active lanes whose read fails because the
    /// register was never written; `None` when an operand is of another kind (a special
    /// register, or not a value), which the lane-by-lane path handles.
    #[inline(always)]
    pub(super) fn sources<const N: usize>(
        &self,
        w: &Warp,
        srcs: [&Operand; N],
        active: u32,
    ) -> Option<([Src; N], u32)> {
        let mut out = [Src::Imm(0); N];
        let mut bad = 0u32;
        for (o, s) in srcs.iter().zip(out.iter_mut()) {
            *s = match o {
                Operand::Reg(r) => {
                    let r = *r as usize;
                    bad |= active & !w.init[r];
                    Src::Row(r * 32)
                }
                Operand::NotReg(r) => {
                    let r = *r as usize;
                    bad |= active & !w.init[r];
                    Src::NotRow(r * 32)
                }
                Operand::Imm(v) => Src::Imm(*v),
                _ => return None,
            };
        }
        Some((out, bad))
    }

    /// The error of the lowest lane of `bad`: its first operand of `srcs` that is an unset
    /// register (what a lane-by-lane, operand-by-operand read meets first).
    #[cold]
    #[inline(never)]
    pub(super) fn unset_in(
        &self,
        w: &Warp,
        srcs: &[&Operand],
        bad: u32,
        cur: &mut Option<u32>,
    ) -> String {
        let l = bad.trailing_zeros();
        *cur = Some(l);
        for o in srcs {
            if let Operand::Reg(r) | Operand::NotReg(r) = o {
                if w.init[*r as usize] & (1 << l) == 0 {
                    return self.unset_register(*r as usize);
                }
            }
        }
        format!("lane {l} reads an unset register")
    }

    /// One lane-wise instruction `d = f(srcs)` for the lanes of `active`. With register and
    /// immediate sources and a register destination (nearly every instruction), the
    /// initialisation of the sources is checked for the whole warp at once and `f` runs
    /// lane by lane in lane order, reading and writing the register file in place (a lane
    /// only ever reads its own values, so writing lane `l` cannot change what a later lane
    /// reads); anything else goes lane by lane through
    /// [`Launch::rd`] / [`Launch::wr`]. Both raise the same error, in the same lane, as a
    /// lane-by-lane execution: the lowest lane that fails, at its first failing step.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn alu<const N: usize>(
        &self,
        w: &mut Warp,
        d: &Operand,
        srcs: [&Operand; N],
        active: u32,
        ctaid: (u32, u32, u32),
        cur: &mut Option<u32>,
        f: impl Fn([u64; N]) -> R<u64>,
    ) -> R<()> {
        if let Operand::Reg(dr) = d {
            if let Some((s, bad)) = self.sources(w, srcs, active) {
                let dr = *dr as usize;
                let m = width_mask(self.k.regs[dr].bits);
                let row = dr * 32;
                let regs = &mut w.regs[..];
                // Lanes below the first unset read run (their own errors come first).
                let run = active & below_first(bad);
                for l in lanes_of(run) {
                    let v = f(std::array::from_fn(|i| s[i].get(regs, l)))
                        .inspect_err(|_| *cur = Some(l as u32))?;
                    regs[row + l] = v & m;
                }
                if bad != 0 {
                    return Err(self.unset_in(w, &srcs, bad, cur));
                }
                w.init[dr] |= active;
                return Ok(());
            }
        }
        for l in lanes_of(active) {
            *cur = Some(l as u32);
            let mut v = [0u64; N];
            for (x, o) in v.iter_mut().zip(srcs) {
                *x = self.rd(w, o, l, ctaid)?;
            }
            self.wr(w, d, l, f(v)?)?;
        }
        Ok(())
    }
}
