//! Whole-warp operand reads and register writes: one operand for all active lanes at once.
//!
//! The register file is already laid out lane-minor (`regs[r * 32 + lane]`), so reading a
//! register for the warp is one 32-value copy and its initialisation check one mask test,
//! instead of an operand match and a bit test per lane. The sanitizer is unchanged: a lane
//! that reads a register nothing wrote still fails, and the error names the same lane and
//! register as a lane-by-lane read would (the lowest failing lane, its first unset operand in
//! operand order).

use super::exec::{lanes_of, Launch, Warp, R};
use super::ir::Operand;

/// One operand's value in each of the 32 lanes (meaningful only in the active lanes).
pub(super) type LaneVals = [u64; 32];

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

/// Runs `f` for every lane of `active`, in lane order; a loop over all 32 when the warp is
/// full, which the compiler can unroll.
#[inline(always)]
pub(super) fn for_lanes(active: u32, mut f: impl FnMut(usize)) {
    if active == FULL {
        for l in 0..32 {
            f(l);
        }
    } else {
        for l in lanes_of(active) {
            f(l);
        }
    }
}

impl<'a> Launch<'a> {
    /// Reads `o` for every lane of `active` into `out` and returns the active lanes whose read
    /// fails because the register was never written (their values are meaningless). An
    /// operand that is not a value at all (a vector, address or label) is an `Err`.
    #[inline(always)]
    pub(super) fn gather(
        &self,
        w: &Warp,
        o: &Operand,
        active: u32,
        ctaid: (u32, u32, u32),
        out: &mut LaneVals,
    ) -> R<u32> {
        match o {
            Operand::Reg(r) => {
                let r = *r as usize;
                out.copy_from_slice(&w.regs[r * 32..r * 32 + 32]);
                Ok(active & !w.init[r])
            }
            Operand::Imm(v) => {
                *out = [*v; 32];
                Ok(0)
            }
            Operand::NotReg(r) => {
                let r = *r as usize;
                for (d, &v) in out.iter_mut().zip(&w.regs[r * 32..r * 32 + 32]) {
                    *d = u64::from(v == 0);
                }
                Ok(active & !w.init[r])
            }
            _ => {
                for l in lanes_of(active) {
                    out[l] = self.rd(w, o, l, ctaid)?;
                }
                Ok(0)
            }
        }
    }

    /// Reads the `N` source operands `srcs` for the lanes of `active`. Fails, naming the
    /// lane in `*cur`, exactly where reading them lane by lane, operand by operand would.
    #[inline(always)]
    pub(super) fn read_all<const N: usize>(
        &self,
        w: &Warp,
        srcs: [&Operand; N],
        active: u32,
        ctaid: (u32, u32, u32),
        cur: &mut Option<u32>,
    ) -> R<[LaneVals; N]> {
        let (vals, bad) = self.read_partial(w, srcs, active, ctaid, cur)?;
        if bad != 0 {
            return Err(self.unset_in(w, &srcs, bad, cur));
        }
        Ok(vals)
    }

    /// [`Launch::read_all`] for instructions that can fail per lane: the lanes whose reads
    /// fail come back as a mask instead of an error, so the caller computes the lanes below
    /// the first of them (whose own errors come first) and then reports it with
    /// [`Launch::unset_in`].
    #[inline(always)]
    pub(super) fn read_partial<const N: usize>(
        &self,
        w: &Warp,
        srcs: [&Operand; N],
        active: u32,
        ctaid: (u32, u32, u32),
        cur: &mut Option<u32>,
    ) -> R<([LaneVals; N], u32)> {
        let mut vals = [[0u64; 32]; N];
        let mut bad = 0u32;
        for (i, o) in srcs.iter().enumerate() {
            match self.gather(w, o, active, ctaid, &mut vals[i]) {
                Ok(b) => bad |= b,
                Err(msg) => {
                    // Only the first active lane reaches this operand before failing on it,
                    // unless an earlier operand already failed there.
                    let first = active & active.wrapping_neg();
                    if bad & first != 0 {
                        return Err(self.unset_in(w, &srcs[..i], first, cur));
                    }
                    *cur = Some(active.trailing_zeros());
                    return Err(msg);
                }
            }
        }
        Ok((vals, bad))
    }

    /// The error of the lowest lane of `bad`: its first operand of `srcs` that is an unset
    /// register.
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

    /// Writes `vals` to the register `d` in the lanes of `active`, truncated to its width.
    #[inline(always)]
    pub(super) fn write_all(
        &self,
        w: &mut Warp,
        d: &Operand,
        active: u32,
        vals: &LaneVals,
        cur: &mut Option<u32>,
    ) -> R<()> {
        match d {
            Operand::Reg(r) => {
                self.write_reg_all(w, *r, active, vals);
                Ok(())
            }
            _ if active == 0 => Ok(()),
            _ => {
                *cur = Some(active.trailing_zeros());
                Err(format!("operand {d:?} is not a register destination"))
            }
        }
    }

    /// [`Launch::write_all`] to a register index.
    #[inline(always)]
    pub(super) fn write_reg_all(&self, w: &mut Warp, r: u32, active: u32, vals: &LaneVals) {
        let r = r as usize;
        let m = width_mask(self.k.regs[r].bits);
        let dst = &mut w.regs[r * 32..r * 32 + 32];
        if active == FULL {
            for (d, v) in dst.iter_mut().zip(vals) {
                *d = v & m;
            }
        } else {
            for l in lanes_of(active) {
                dst[l] = vals[l] & m;
            }
        }
        w.init[r] |= active;
    }

    /// One lane-wise instruction `d = f(srcs)` for the lanes of `active`: operands read for
    /// the whole warp, `f` applied lane by lane (in lane order, so its own error, if any,
    /// names the lowest lane it fails in), the result written at once. Errors come in the
    /// order a lane-by-lane execution would raise them.
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
        let (vals, bad) = self.read_partial(w, srcs, active, ctaid, cur)?;
        let to_reg = matches!(d, Operand::Reg(_));
        let run = active & below_first(bad);
        let mut out = [0u64; 32];
        if run == FULL && to_reg {
            for (l, o) in out.iter_mut().enumerate() {
                *o = f(std::array::from_fn(|i| vals[i][l])).map_err(|e| {
                    *cur = Some(l as u32);
                    e
                })?;
            }
        } else {
            for l in lanes_of(run) {
                out[l] = f(std::array::from_fn(|i| vals[i][l])).map_err(|e| {
                    *cur = Some(l as u32);
                    e
                })?;
                if !to_reg {
                    // The first lane computed fails at its write.
                    return self.write_all(w, d, 1 << l, &out, cur);
                }
            }
        }
        if bad != 0 {
            return Err(self.unset_in(w, &srcs, bad, cur));
        }
        self.write_all(w, d, active, &out, cur)
    }
}
