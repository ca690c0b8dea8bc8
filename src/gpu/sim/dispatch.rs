//! What each decoded instruction does to a warp: the per-opcode dispatch of [`Launch`],
//! reading operands per active lane and calling the pure semantics modules.

use super::convert::{cvt, f32_to_bf16, f32_to_f16, half_arith};
use super::counters::bank_conflicts;
use super::exec::{f32b, lanes_of, Launch, PendingCopy, St, Warp, R};
use super::fpmath::{
    f32_arith, f32_div, f32_fma, f32_minmax, f32_unary, f64_arith, f64_div, f64_fma, f64_minmax,
    f64_unary, testp,
};
use super::intmath::{
    bit_extract, bit_insert, compare, ibin, imad, imul, iunary, lop3, mask, prmt, sext,
};
use super::ir::{AtomOp, BoolOp, Op, Operand, Rnd, Space, Ty, VoteMode};
use super::memory::{SharedMem, LOCAL_WINDOW, PARAM_WINDOW, SHARED_WINDOW};
use super::tma::park_waiting;
use super::warp_ops::{mma_m16n8k16, shfl_source};

impl<'a> Launch<'a> {
    /// Issues instruction `pc` for the lanes of `group`: whether every one of them went on
    /// to `pc + 1` (none branched, waited, parked or exited).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn exec(
        &mut self,
        w: &mut Warp,
        pc: u32,
        group: u32,
        ctaid: (u32, u32, u32),
        shared: &mut SharedMem,
        cur: &mut Option<u32>,
    ) -> R<bool> {
        let k = self.k;
        let inst = &k.insts[pc as usize];
        self.counters.count(inst.class);
        let mut active = group;
        if let Some((p, neg)) = inst.guard {
            let p = p as usize;
            let unset = group & !w.init[p];
            if unset != 0 {
                *cur = Some(unset.trailing_zeros());
                return Err(self.unset_register(p));
            }
            active = 0;
            let pv = &w.regs[p * 32..p * 32 + 32];
            for l in lanes_of(group) {
                if (pv[l] != 0) != neg {
                    active |= 1 << l;
                }
            }
        }
        // Lanes advance unless the instruction moves them elsewhere.
        let mut advance = group;
        let ops = &inst.ops;
        match &inst.op {
            Op::IBin(b, t) => {
                let (b, t) = (*b, *t);
                self.alu(
                    w,
                    &ops[0],
                    [&ops[1], &ops[2]],
                    active,
                    ctaid,
                    cur,
                    |[x, y]| Ok(ibin(b, t, x, y)),
                )?;
            }
            Op::IUnary(u, t) => {
                let (u, t) = (*u, *t);
                self.alu(w, &ops[0], [&ops[1]], active, ctaid, cur, |[x]| {
                    Ok(iunary(u, t, x))
                })?;
            }
            Op::Mul(m, t) => {
                let (m, t) = (*m, *t);
                self.alu(
                    w,
                    &ops[0],
                    [&ops[1], &ops[2]],
                    active,
                    ctaid,
                    cur,
                    |[x, y]| Ok(imul(m, t, x, y)),
                )?;
            }
            Op::Mad(m, t) => {
                let (m, t) = (*m, *t);
                let srcs = [&ops[1], &ops[2], &ops[3]];
                self.alu(w, &ops[0], srcs, active, ctaid, cur, |[x, y, z]| {
                    Ok(imad(m, t, x, y, z))
                })?;
            }
            Op::PredBin(b) => {
                let b = *b;
                self.alu(
                    w,
                    &ops[0],
                    [&ops[1], &ops[2]],
                    active,
                    ctaid,
                    cur,
                    |[x, y]| Ok(u64::from(bool_op(b, x != 0, y != 0))),
                )?;
            }
            Op::PredNot => {
                self.alu(w, &ops[0], [&ops[1]], active, ctaid, cur, |[x]| {
                    Ok(u64::from(x == 0))
                })?;
            }
            Op::FArith(o, m) => {
                let (o, m) = (*o, *m);
                let srcs = [&ops[1], &ops[2]];
                if m.ty == Ty::F32 {
                    self.alu(w, &ops[0], srcs, active, ctaid, cur, |[x, y]| {
                        Ok(f32_arith(o, f32b(x), f32b(y), m).to_bits() as u64)
                    })?;
                } else {
                    self.alu(w, &ops[0], srcs, active, ctaid, cur, |[x, y]| {
                        Ok(f64_arith(o, f64::from_bits(x), f64::from_bits(y), m).to_bits())
                    })?;
                }
            }
            Op::Fma(m) => {
                let m = *m;
                let srcs = [&ops[1], &ops[2], &ops[3]];
                if m.ty == Ty::F32 {
                    self.alu(w, &ops[0], srcs, active, ctaid, cur, |[x, y, z]| {
                        Ok(f32_fma(f32b(x), f32b(y), f32b(z), m).to_bits() as u64)
                    })?;
                } else {
                    self.alu(w, &ops[0], srcs, active, ctaid, cur, |[x, y, z]| {
                        let (a, b, c) = (f64::from_bits(x), f64::from_bits(y), f64::from_bits(z));
                        Ok(f64_fma(a, b, c, m).to_bits())
                    })?;
                }
            }
            Op::FDiv(m, approx) => {
                let (m, approx) = (*m, *approx);
                self.alu(
                    w,
                    &ops[0],
                    [&ops[1], &ops[2]],
                    active,
                    ctaid,
                    cur,
                    |[x, y]| {
                        Ok(if m.ty == Ty::F32 {
                            f32_div(f32b(x), f32b(y), m, approx).to_bits() as u64
                        } else {
                            f64_div(f64::from_bits(x), f64::from_bits(y), m).to_bits()
                        })
                    },
                )?;
            }
            Op::FUnary(u, m, approx) => {
                let (u, m, approx) = (*u, *m, *approx);
                self.alu(w, &ops[0], [&ops[1]], active, ctaid, cur, |[x]| {
                    Ok(if m.ty == Ty::F32 {
                        f32_unary(u, f32b(x), m, approx).to_bits() as u64
                    } else {
                        f64_unary(u, f64::from_bits(x), m, approx).to_bits()
                    })
                })?;
            }
            Op::FMinMax(max, m) => {
                let (max, m) = (*max, *m);
                self.alu(
                    w,
                    &ops[0],
                    [&ops[1], &ops[2]],
                    active,
                    ctaid,
                    cur,
                    |[x, y]| {
                        Ok(if m.ty == Ty::F32 {
                            f32_minmax(max, f32b(x), f32b(y), m.ftz).to_bits() as u64
                        } else {
                            f64_minmax(max, f64::from_bits(x), f64::from_bits(y)).to_bits()
                        })
                    },
                )?;
            }
            Op::Copysign(t) => {
                let sign = if *t == Ty::F32 {
                    1u64 << 31
                } else {
                    1u64 << 63
                };
                self.alu(
                    w,
                    &ops[0],
                    [&ops[1], &ops[2]],
                    active,
                    ctaid,
                    cur,
                    |[x, y]| Ok((y & !sign) | (x & sign)),
                )?;
            }
            Op::Testp(kind, t) => {
                let (kind, t) = (*kind, *t);
                self.alu(w, &ops[0], [&ops[1]], active, ctaid, cur, |[x]| {
                    let (v, sub) = if t == Ty::F32 {
                        let f = f32b(x);
                        (f as f64, f.is_subnormal())
                    } else {
                        let f = f64::from_bits(x);
                        (f, f.is_subnormal())
                    };
                    Ok(u64::from(testp(kind, v, sub)))
                })?;
            }
            Op::Mov(t) => match (&ops[0], &ops[1]) {
                (Operand::Vec(_), _) | (_, Operand::Vec(_)) => {
                    self.mov(w, *t, ops, active, ctaid, cur)?
                }
                (_, s) => {
                    let bits = t.bits();
                    self.alu(w, &ops[0], [s], active, ctaid, cur, |[x]| Ok(mask(x, bits)))?;
                }
            },
            Op::Bfi(t) => {
                let bits = t.bits();
                let srcs = [&ops[1], &ops[2], &ops[3], &ops[4]];
                self.alu(w, &ops[0], srcs, active, ctaid, cur, |[a, b, pos, len]| {
                    Ok(bit_insert(bits, a, b, pos & 0xff, len & 0xff))
                })?;
            }
            Op::Lop3 => {
                let srcs = [&ops[1], &ops[2], &ops[3], &ops[4]];
                self.alu(w, &ops[0], srcs, active, ctaid, cur, |[a, b, c, lut]| {
                    Ok(lop3(a as u32, b as u32, c as u32, lut as u8) as u64)
                })?;
            }
            Op::Activemask => {
                for l in lanes_of(active) {
                    self.wr(w, &ops[0], l, group as u64)?;
                }
            }
            Op::Prmt => {
                let srcs = [&ops[1], &ops[2], &ops[3]];
                self.alu(w, &ops[0], srcs, active, ctaid, cur, |[a, b, c]| {
                    Ok(prmt(a as u32, b as u32, c as u32) as u64)
                })?;
            }
            Op::Bfe(t) => {
                let (bits, signed) = (t.bits(), t.is_signed());
                let srcs = [&ops[1], &ops[2], &ops[3]];
                self.alu(w, &ops[0], srcs, active, ctaid, cur, |[a, pos, len]| {
                    Ok(bit_extract(bits, signed, a, pos & 0xff, len & 0xff))
                })?;
            }
            Op::HArith(op, bf16, pair) => {
                for l in lanes_of(active) {
                    *cur = Some(l as u32);
                    let mut v = [0u64; 3];
                    for (i, x) in v.iter_mut().enumerate().take(if *op == 3 { 3 } else { 2 }) {
                        *x = self.rd(w, &ops[i + 1], l, ctaid)?;
                    }
                    let halves = if *pair { 2 } else { 1 };
                    let mut r = 0u64;
                    for h in 0..halves {
                        let part = |x: u64| (x >> (16 * h)) as u16;
                        let e = half_arith(*op, *bf16, part(v[0]), part(v[1]), part(v[2]));
                        r |= (e as u64) << (16 * h);
                    }
                    self.wr(w, &ops[0], l, r)?;
                }
            }
            Op::Cvt {
                dst,
                src,
                rnd,
                int_rnd,
                ftz,
                sat,
            } => {
                let (dst, src, rnd, int_rnd, ftz, sat) = (*dst, *src, *rnd, *int_rnd, *ftz, *sat);
                self.alu(w, &ops[0], [&ops[1]], active, ctaid, cur, |[x]| {
                    let r = cvt(dst, src, rnd, int_rnd, ftz, sat, x)?;
                    // A signed result narrower than its register is sign-extended into it.
                    Ok(if dst.is_signed() {
                        sext(r, dst.bits()) as u64
                    } else {
                        r
                    })
                })?;
            }
            Op::CvtPack(bf16, rnd) => {
                let rnd = rnd.unwrap_or(Rnd::Nearest);
                if !*bf16 && rnd != Rnd::Nearest {
                    return Err("cvt to f16x2 supports only .rn".into());
                }
                for l in lanes_of(active) {
                    *cur = Some(l as u32);
                    let hi = f32b(self.rd(w, &ops[1], l, ctaid)?);
                    let lo = f32b(self.rd(w, &ops[2], l, ctaid)?);
                    let conv = |x: f32| {
                        if *bf16 {
                            f32_to_bf16(x, rnd)
                        } else {
                            f32_to_f16(x)
                        }
                    };
                    let r = (conv(hi) as u64) << 16 | conv(lo) as u64;
                    self.wr(w, &ops[0], l, r)?;
                }
            }
            Op::Cvta { to, space } => {
                let (to, space) = (*to, *space);
                self.alu(w, &ops[0], [&ops[1]], active, ctaid, cur, |[x]| {
                    Ok(match (space, to) {
                        (Space::Shared, false) => x.wrapping_add(SHARED_WINDOW),
                        (Space::Shared, true) => x.wrapping_sub(SHARED_WINDOW),
                        (Space::Local, false) => x.wrapping_add(LOCAL_WINDOW),
                        (Space::Local, true) => x.wrapping_sub(LOCAL_WINDOW),
                        (Space::Param, false) => x.wrapping_add(PARAM_WINDOW),
                        (Space::Param, true) => x.wrapping_sub(PARAM_WINDOW),
                        _ => x,
                    })
                })?;
            }
            Op::Setp(c, None, t, ftz) if !matches!(ops[0], Operand::Vec(_)) => {
                let (c, t, ftz) = (*c, *t, *ftz);
                self.alu(
                    w,
                    &ops[0],
                    [&ops[1], &ops[2]],
                    active,
                    ctaid,
                    cur,
                    |[x, y]| Ok(u64::from(compare(c, t, x, y, ftz))),
                )?;
            }
            Op::Setp(c, Some(b), t, ftz) if !matches!(ops[0], Operand::Vec(_)) => {
                let (c, b, t, ftz) = (*c, *b, *t, *ftz);
                let srcs = [&ops[1], &ops[2], &ops[3]];
                self.alu(w, &ops[0], srcs, active, ctaid, cur, |[x, y, z]| {
                    Ok(u64::from(bool_op(b, compare(c, t, x, y, ftz), z != 0)))
                })?;
            }
            // A `p|q` destination pair.
            Op::Setp(c, comb, t, ftz) => {
                for l in lanes_of(active) {
                    *cur = Some(l as u32);
                    let x = self.rd(w, &ops[1], l, ctaid)?;
                    let y = self.rd(w, &ops[2], l, ctaid)?;
                    let mut p = compare(*c, *t, x, y, *ftz);
                    let mut q = !p;
                    if let Some(b) = comb {
                        let z = self.rd(w, &ops[3], l, ctaid)? != 0;
                        p = bool_op(*b, p, z);
                        q = bool_op(*b, q, z);
                    }
                    match &ops[0] {
                        Operand::Vec(v) => {
                            if let Some(r) = v[0] {
                                self.wr_reg(w, r, l, u64::from(p));
                            }
                            if let Some(r) = v[1] {
                                self.wr_reg(w, r, l, u64::from(q));
                            }
                        }
                        d => self.wr(w, d, l, u64::from(p))?,
                    }
                }
            }
            Op::Selp(_) => {
                for l in lanes_of(active) {
                    *cur = Some(l as u32);
                    // Only the selected source is read: the other may legitimately be unset.
                    let c = self.rd(w, &ops[3], l, ctaid)? != 0;
                    let x = self.rd(w, &ops[if c { 1 } else { 2 }], l, ctaid)?;
                    self.wr(w, &ops[0], l, x)?;
                }
            }
            Op::Ld(space, t, v) => {
                let size = t.bytes() as usize;
                let total = size * *v as usize;
                let mut shared_addrs = [0u64; 32];
                let mut n_shared = 0;
                for l in lanes_of(active) {
                    *cur = Some(l as u32);
                    let a = self.addr(w, &ops[1], l, ctaid)?;
                    let tid = w.id * 32 + l as u32;
                    let mut buf = [0u8; 32];
                    let lb = self.k.local_bytes as usize;
                    let local = &mut w.local[l * lb..(l + 1) * lb];
                    if let Some(off) = self.load(*space, a, total, tid, shared, local, &mut buf)? {
                        shared_addrs[n_shared] = off;
                        n_shared += 1;
                    }
                    for i in 0..*v as usize {
                        let raw = le_value(&buf[i * size..], size);
                        let val = if t.is_signed() {
                            sext(raw, t.bits()) as u64
                        } else {
                            raw
                        };
                        match &ops[0] {
                            Operand::Vec(regs) => {
                                if let Some(r) = regs[i] {
                                    self.wr_reg(w, r, l, val);
                                }
                            }
                            d => self.wr(w, d, l, val)?,
                        }
                    }
                }
                // Every lane's address counts, the unused slots as address 0; a warp with no
                // shared access sees only address 0, which never conflicts.
                if n_shared > 0 {
                    self.counters.shared_bank_conflicts +=
                        bank_conflicts(&shared_addrs, total as u32);
                }
            }
            Op::St(space, t, v) => {
                let size = t.bytes() as usize;
                let total = size * *v as usize;
                let mut shared_addrs = [0u64; 32];
                let mut n_shared = 0;
                for l in lanes_of(active) {
                    *cur = Some(l as u32);
                    let a = self.addr(w, &ops[0], l, ctaid)?;
                    let tid = w.id * 32 + l as u32;
                    let mut buf = [0u8; 32];
                    for i in 0..*v as usize {
                        let val = match &ops[1] {
                            Operand::Vec(regs) => match regs[i] {
                                Some(r) => self.rd(w, &Operand::Reg(r), l, ctaid)?,
                                None => return Err("st from a `_` sink".into()),
                            },
                            s => self.rd(w, s, l, ctaid)?,
                        };
                        buf[i * size..(i + 1) * size].copy_from_slice(&val.to_le_bytes()[..size]);
                    }
                    let lb = self.k.local_bytes as usize;
                    let local = &mut w.local[l * lb..(l + 1) * lb];
                    if let Some(off) = self.store(*space, a, &buf[..total], tid, shared, local)? {
                        shared_addrs[n_shared] = off;
                        n_shared += 1;
                    }
                }
                self.counters.shared_bank_conflicts +=
                    bank_conflicts(&shared_addrs[..n_shared], total as u32);
            }
            Op::Atom {
                space,
                op,
                ty,
                has_dst,
            } => {
                let ai = usize::from(*has_dst);
                let size = ty.bytes() as usize;
                for l in lanes_of(active) {
                    *cur = Some(l as u32);
                    let a = self.addr(w, &ops[ai], l, ctaid)?;
                    let b = self.rd(w, &ops[ai + 1], l, ctaid)?;
                    let c = if *op == AtomOp::Cas {
                        self.rd(w, &ops[ai + 2], l, ctaid)?
                    } else {
                        0
                    };
                    let old = self.atomic(*space, a, size, *op, *ty, b, c, shared)?;
                    if *has_dst {
                        self.wr(w, &ops[0], l, old)?;
                    }
                }
            }
            Op::Bra => {
                let Operand::Label(t) = ops[0] else {
                    return Err("bra without a label".into());
                };
                for l in lanes_of(active) {
                    w.pc[l] = t;
                }
                advance &= !active;
            }
            Op::Exit => {
                for l in lanes_of(active) {
                    w.st[l] = St::Done;
                }
                advance &= !active;
            }
            Op::Bar => {
                if let Some(o) = ops.first() {
                    let id = self.rd(w, o, active.trailing_zeros() as usize, ctaid)?;
                    if id != 0 {
                        return Err(format!("named barrier {id}: only barrier 0 is supported"));
                    }
                }
                if ops.len() > 1 {
                    let n = self.rd(w, &ops[1], active.trailing_zeros() as usize, ctaid)?;
                    let (bx, by, bz) = self.cfg.block;
                    if n != (bx * by * bz) as u64 {
                        return Err(format!(
                            "bar.sync with a thread count of {n}: only whole-CTA barriers \
                             are supported"
                        ));
                    }
                }
                for l in lanes_of(active) {
                    w.st[l] = St::Bar;
                }
                advance &= !active;
            }
            Op::Nop => {}
            Op::SetMaxNreg(inc) => {
                if active != group || active.count_ones() != w.lanes || w.lanes != 32 {
                    return Err("setmaxnreg .sync.aligned needs all 32 lanes of the warp".into());
                }
                let Some(&Operand::Imm(n)) = ops.first() else {
                    return Err("setmaxnreg needs a constant register count".into());
                };
                if self.k.launch_regs.is_none() {
                    return Err(
                        "setmaxnreg in an entry without .maxntid and .minnctapersm: \
                                the registers it moves are the launch bounds' share, unknown \
                                otherwise"
                            .into(),
                    );
                }
                let (n, held) = (n as u32, w.nregs);
                if *inc {
                    if n < held {
                        return Err(format!(
                            "setmaxnreg.inc to {n} registers, fewer than the warp's {held}"
                        ));
                    }
                    let need = 32 * (n - held) as u64;
                    if self.reg_pool >= need {
                        self.reg_pool -= need;
                        w.nregs = n;
                        w.setmaxnreg_log.push((true, n));
                    } else {
                        // Waits, at this instruction, for other warps' decs.
                        park_waiting(w, active);
                        advance &= !active;
                        self.stalled += 1;
                    }
                } else {
                    if n > held {
                        return Err(format!(
                            "setmaxnreg.dec to {n} registers, more than the warp's {held}"
                        ));
                    }
                    self.reg_pool += 32 * (held - n) as u64;
                    w.nregs = n;
                    w.setmaxnreg_log.push((false, n));
                }
            }
            Op::Shfl(mode) => {
                let mut vals = [0u64; 32];
                let mut have = 0u32;
                for l in lanes_of(active) {
                    *cur = Some(l as u32);
                    vals[l] = self.rd(w, &ops[1], l, ctaid)?;
                    have |= 1 << l;
                }
                for l in lanes_of(active) {
                    *cur = Some(l as u32);
                    let b = self.rd(w, &ops[2], l, ctaid)? as u32;
                    let c = self.rd(w, &ops[3], l, ctaid)? as u32;
                    let (j, p) = shfl_source(*mode, l as u32, b, c);
                    let (d, pd) = match &ops[0] {
                        Operand::Vec(v) => (v[0], v[1]),
                        Operand::Reg(r) => (Some(*r), None),
                        _ => return Err("bad shfl destination".into()),
                    };
                    if let Some(d) = d {
                        if have & (1 << j) != 0 {
                            self.wr_reg(w, d, l, vals[j as usize]);
                        } else {
                            // The ISA leaves the value undefined: leave the register unset so
                            // a later read reports it.
                            w.init[d as usize] &= !(1 << l);
                        }
                    }
                    if let Some(pd) = pd {
                        self.wr_reg(w, pd, l, u64::from(p));
                    }
                }
                for l in lanes_of(group) {
                    w.st[l] = St::Run;
                }
            }
            Op::Vote(mode) => {
                let mut ballot = 0u32;
                for l in lanes_of(active) {
                    *cur = Some(l as u32);
                    if self.rd(w, &ops[1], l, ctaid)? != 0 {
                        ballot |= 1 << l;
                    }
                }
                let r = match mode {
                    VoteMode::Ballot => ballot as u64,
                    VoteMode::All => u64::from(ballot == active),
                    VoteMode::Any => u64::from(ballot != 0),
                    VoteMode::Uni => u64::from(ballot == 0 || ballot == active),
                };
                for l in lanes_of(active) {
                    self.wr(w, &ops[0], l, r)?;
                }
                for l in lanes_of(group) {
                    w.st[l] = St::Run;
                }
            }
            Op::Redux(op, t) => {
                // Lane order does not matter: every operation is associative and commutative
                // on 32-bit integers (add wraps).
                let mut acc: Option<u64> = None;
                for l in lanes_of(active) {
                    *cur = Some(l as u32);
                    let x = self.rd(w, &ops[1], l, ctaid)?;
                    acc = Some(match acc {
                        None => mask(x, 32),
                        Some(a) => ibin(*op, *t, a, x),
                    });
                }
                if let Some(r) = acc {
                    for l in lanes_of(active) {
                        self.wr(w, &ops[0], l, r)?;
                    }
                }
                for l in lanes_of(group) {
                    w.st[l] = St::Run;
                }
            }
            Op::Ldmatrix { num, trans } => {
                self.ldmatrix(w, *num, *trans, ops, active, ctaid, shared, cur)?;
                for l in lanes_of(group) {
                    w.st[l] = St::Run;
                }
            }
            Op::Mma(bf16) => {
                if active != group || active.count_ones() != w.lanes || w.lanes != 32 {
                    return Err("mma.sync.aligned needs all 32 lanes of the warp".into());
                }
                let mut a = [[0u32; 4]; 32];
                let mut b = [[0u32; 2]; 32];
                let mut c = [[0f32; 4]; 32];
                // Decoding checked that every operand is a vector (of 4, 4, 2, 4 registers).
                *cur = Some(0);
                fn regs(o: &Operand) -> R<&[Option<u32>]> {
                    match o {
                        Operand::Vec(v) => Ok(v),
                        _ => Err("mma operands are vectors".to_string()),
                    }
                }
                let (ra, rb, rc) = (regs(&ops[1])?, regs(&ops[2])?, regs(&ops[3])?);
                for l in 0..32 {
                    *cur = Some(l as u32);
                    for (i, r) in ra.iter().enumerate() {
                        a[l][i] = self.rd(w, &Operand::Reg(r.ok_or("sink")?), l, ctaid)? as u32;
                    }
                    for (i, r) in rb.iter().enumerate() {
                        b[l][i] = self.rd(w, &Operand::Reg(r.ok_or("sink")?), l, ctaid)? as u32;
                    }
                    for (i, r) in rc.iter().enumerate() {
                        let v = self.rd(w, &Operand::Reg(r.ok_or("sink")?), l, ctaid)?;
                        c[l][i] = f32b(v);
                    }
                }
                let d = mma_m16n8k16(&a, &b, &c, *bf16);
                let Operand::Vec(dregs) = &ops[0] else {
                    return Err("mma destination is a vector".into());
                };
                for (l, dl) in d.iter().enumerate() {
                    for (i, r) in dregs.iter().enumerate() {
                        if let Some(r) = r {
                            self.wr_reg(w, *r, l, dl[i].to_bits() as u64);
                        }
                    }
                }
                for l in lanes_of(group) {
                    w.st[l] = St::Run;
                }
            }
            Op::FenceProxyAsync => shared.fence_async(w.id),
            Op::Mbarrier(kind) => {
                let waiting = self.mbarrier_op(w, *kind, ops, active, ctaid, shared, cur)?;
                if waiting != 0 {
                    park_waiting(w, waiting);
                    advance &= !waiting;
                    if waiting == group {
                        self.stalled += 1;
                    }
                }
            }
            Op::TmaLoad(dims) => self.tma_load(w, *dims, ops, active, ctaid, shared, cur)?,
            Op::WgmmaFence | Op::WgmmaCommit | Op::WgmmaWait(_) | Op::Wgmma(_) => {
                if active != group || active.count_ones() != w.lanes || w.lanes != 32 {
                    return Err("wgmma .sync.aligned needs all 32 lanes of the warp".into());
                }
                if let Op::Wgmma(n) = inst.op {
                    self.wgmma_issue(w, n, ops, pc, ctaid, shared, cur)?;
                } else if let Op::WgmmaWait(keep) = inst.op {
                    self.wgmma_wait(w, keep, shared)?;
                } else if inst.op == Op::WgmmaCommit {
                    self.wgmma_commit(w);
                } else {
                    self.wgmma_fence(w);
                }
                for l in lanes_of(group) {
                    w.st[l] = St::Run;
                }
            }
            Op::CpAsync(size) => {
                for l in lanes_of(active) {
                    *cur = Some(l as u32);
                    let dst = self.addr(w, &ops[0], l, ctaid)?;
                    let src = self.addr(w, &ops[1], l, ctaid)?;
                    let n = *size as usize;
                    let src_n = match ops.get(3) {
                        Some(o) => self.rd(w, o, l, ctaid)? as usize,
                        None => n,
                    };
                    if src_n > n {
                        return Err(format!("cp.async src-size {src_n} above cp-size {n}"));
                    }
                    if dst % n as u64 != 0 || (src_n > 0 && src % n as u64 != 0) {
                        return Err(format!(
                            "misaligned {n}-byte cp.async (shared 0x{dst:x}, global 0x{src:x})"
                        ));
                    }
                    let i = shared.check(dst, n)?;
                    let mut data = [0u8; 16];
                    if src_n > 0 {
                        self.mem.read(src, &mut data[..src_n])?;
                        self.counters.global_bytes_read += src_n as u64;
                    }
                    shared.set_pending(i, n, true);
                    w.uncommitted[l].push(PendingCopy {
                        dst: i,
                        data,
                        len: n,
                    });
                }
            }
            Op::CpAsyncCommit => {
                for l in lanes_of(active) {
                    let g = std::mem::take(&mut w.uncommitted[l]);
                    w.groups[l].push_back(g);
                }
            }
            Op::CpAsyncWait(_) | Op::CpAsyncWaitAll => {
                let keep = if let Op::CpAsyncWait(n) = inst.op {
                    n
                } else {
                    0
                };
                for l in lanes_of(active) {
                    *cur = Some(l as u32);
                    if inst.op == Op::CpAsyncWaitAll {
                        let g = std::mem::take(&mut w.uncommitted[l]);
                        w.groups[l].push_back(g);
                    }
                    let tid = w.id * 32 + l as u32;
                    while w.groups[l].len() > keep as usize {
                        let g = w.groups[l].pop_front().expect("len checked");
                        for c in g {
                            shared.set_pending(c.dst, c.len, false);
                            shared.note_write(c.dst, c.len, tid).map_err(|f| f.msg)?;
                            shared.data[c.dst..c.dst + c.len].copy_from_slice(&c.data[..c.len]);
                        }
                    }
                }
            }
        }
        for (l, pc) in w.pc.iter_mut().enumerate() {
            *pc += (advance >> l) & 1;
        }
        Ok(advance == group)
    }

    pub(super) fn mov(
        &self,
        w: &mut Warp,
        t: Ty,
        ops: &[Operand],
        active: u32,
        ctaid: (u32, u32, u32),
        cur: &mut Option<u32>,
    ) -> R<()> {
        for l in lanes_of(active) {
            *cur = Some(l as u32);
            match (&ops[0], &ops[1]) {
                (Operand::Vec(parts), src) => {
                    let x = self.rd(w, src, l, ctaid)?;
                    let each = t.bits() / parts.len() as u32;
                    for (i, r) in parts.iter().enumerate() {
                        if let Some(r) = r {
                            self.wr_reg(w, *r, l, mask(x >> (each * i as u32), each));
                        }
                    }
                }
                (d, Operand::Vec(parts)) => {
                    let each = t.bits() / parts.len() as u32;
                    let mut x = 0u64;
                    for (i, r) in parts.iter().enumerate() {
                        let r = r.ok_or("mov from a `_` sink")?;
                        let v = self.rd(w, &Operand::Reg(r), l, ctaid)?;
                        x |= mask(v, each) << (each * i as u32);
                    }
                    self.wr(w, d, l, x)?;
                }
                (d, s) => {
                    let x = self.rd(w, s, l, ctaid)?;
                    self.wr(w, d, l, mask(x, t.bits()))?;
                }
            }
        }
        Ok(())
    }
}

fn bool_op(b: BoolOp, x: bool, y: bool) -> bool {
    match b {
        BoolOp::And => x && y,
        BoolOp::Or => x || y,
        BoolOp::Xor => x ^ y,
    }
}

/// The little-endian value of the first `size` (1, 2, 4 or 8) bytes of `b`, read at its own
/// width (a variable-length copy into a zeroed word stalls on store forwarding).
#[inline(always)]
fn le_value(b: &[u8], size: usize) -> u64 {
    match size {
        1 => b[0] as u64,
        2 => u16::from_le_bytes([b[0], b[1]]) as u64,
        4 => u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64,
        _ => u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
    }
}
