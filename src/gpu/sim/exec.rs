//! Execution of one launch: CTAs one after another; in a CTA, warps of 32 lanes with a
//! program counter per lane.
//!
//! A warp issues the lowest program counter among its running lanes, for every running lane
//! at it. A lane reaching a warp collective (`shfl.sync`, `vote.sync`, `ldmatrix`, `mma`)
//! parks there until every live lane of the member mask (all live lanes for the `.aligned`
//! forms) has arrived: nvcc places join blocks after `ret`, so lowest-PC scheduling alone
//! would run a collective with part of the warp. A lane at `bar.sync` waits for the whole
//! CTA; a warp runs until all its lanes wait or exit, then the next warp runs. When no warp
//! can move and the barrier cannot release, the launch reports a deadlock.

use std::collections::VecDeque;

use super::convert::{cvt, f32_to_bf16, f32_to_f16, HALF_NAN};
use super::counters::{bank_conflicts, Counters};
use super::fpmath::{
    f32_arith, f32_div, f32_fma, f32_minmax, f32_unary, f64_arith, f64_div, f64_fma, f64_minmax,
    f64_unary, ftz32, round_odd_f32, testp, two_sum,
};
use super::intmath::{compare, ibin, imad, imul, iunary, mask, prmt, sext};
use super::ir::{AtomOp, BoolOp, Kernel, Op, Operand, Rnd, Space, Sreg, Ty, VoteMode};
use super::memory::{GlobalMem, SharedMem, LOCAL_WINDOW, POISON, SHARED_WINDOW};
use super::warp_ops::{ldmatrix_fragment, mma_m16n8k16, shfl_source};
use crate::gpu::driver::LaunchConfig;

/// A fault inside a CTA: the lane (if one) and what went wrong.
pub struct Fault {
    /// Warp-local lane that faulted, if the fault belongs to one lane.
    pub lane: Option<u32>,
    /// Instruction index.
    pub pc: u32,
    /// Warp index in the CTA.
    pub warp: u32,
    /// What went wrong.
    pub msg: String,
}

type R<T> = Result<T, String>;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum St {
    Run,
    Park,
    Bar,
    Done,
}

/// One pending 16-byte-or-less copy of a cp.async.
struct Copy {
    dst: usize,
    data: [u8; 16],
    len: usize,
}

struct Warp {
    id: u32,
    lanes: u32,
    pc: [u32; 32],
    st: [St; 32],
    regs: Vec<u64>,
    init: Vec<u32>,
    uncommitted: Vec<Vec<Copy>>,
    groups: Vec<VecDeque<Vec<Copy>>>,
    /// Each lane's `.local` memory, `local_bytes` per lane.
    local: Vec<u8>,
}

/// Everything one launch needs.
pub struct Launch<'a> {
    /// The kernel.
    pub k: &'a Kernel,
    /// Grid and block.
    pub cfg: LaunchConfig,
    /// The packed parameter buffer.
    pub params: Vec<u8>,
    /// Device memory.
    pub mem: &'a mut GlobalMem,
    /// Counters of this launch.
    pub counters: Counters,
}

#[inline(always)]
fn lanes_of(mask: u32) -> impl Iterator<Item = usize> {
    let mut m = mask;
    std::iter::from_fn(move || {
        if m == 0 {
            None
        } else {
            let l = m.trailing_zeros();
            m &= m - 1;
            Some(l as usize)
        }
    })
}

impl<'a> Launch<'a> {
    /// Runs CTA `ctaid` to completion in `shared` (already reset).
    pub fn run_cta(&mut self, ctaid: (u32, u32, u32), shared: &mut SharedMem) -> Result<(), Fault> {
        let (bx, by, bz) = self.cfg.block;
        let nthreads = bx * by * bz;
        let nwarps = nthreads.div_ceil(32);
        let nregs = self.k.regs.len();
        let mut warps: Vec<Warp> = (0..nwarps)
            .map(|id| {
                let lanes = (nthreads - id * 32).min(32);
                let mut st = [St::Done; 32];
                for s in st.iter_mut().take(lanes as usize) {
                    *s = St::Run;
                }
                let mut w = Warp {
                    id,
                    lanes,
                    pc: [0; 32],
                    st,
                    regs: vec![0; nregs * 32],
                    init: vec![0; nregs],
                    uncommitted: (0..32).map(|_| Vec::new()).collect(),
                    groups: (0..32).map(|_| VecDeque::new()).collect(),
                    local: vec![POISON; 32 * self.k.local_bytes as usize],
                };
                for &(r, v) in &self.k.const_regs {
                    for l in 0..32 {
                        w.regs[r as usize * 32 + l] = v;
                    }
                    w.init[r as usize] = u32::MAX;
                }
                w
            })
            .collect();
        self.counters.ctas += 1;
        loop {
            for w in warps.iter_mut() {
                self.run_warp(w, ctaid, shared)?;
            }
            let mut any_live = false;
            let mut all_bar = true;
            for w in &warps {
                for l in 0..w.lanes as usize {
                    match w.st[l] {
                        St::Done => {}
                        St::Bar => any_live = true,
                        _ => {
                            any_live = true;
                            all_bar = false;
                        }
                    }
                }
            }
            if !any_live {
                return Ok(());
            }
            if !all_bar {
                return Err(self.deadlock(&warps));
            }
            for w in warps.iter_mut() {
                for l in 0..w.lanes as usize {
                    if w.st[l] == St::Bar {
                        w.st[l] = St::Run;
                        w.pc[l] += 1;
                    }
                }
            }
            shared.epoch += 1;
        }
    }

    fn deadlock(&self, warps: &[Warp]) -> Fault {
        let mut parts = Vec::new();
        for w in warps {
            for l in 0..w.lanes as usize {
                if matches!(w.st[l], St::Park | St::Run) {
                    parts.push(format!(
                        "thread {} waits at line {} `{}`",
                        w.id * 32 + l as u32,
                        self.k.text[w.pc[l] as usize].0,
                        self.k.text[w.pc[l] as usize].1
                    ));
                    break;
                }
            }
        }
        let w = warps
            .iter()
            .find(|w| (0..w.lanes as usize).any(|l| w.st[l] == St::Park))
            .unwrap_or(&warps[0]);
        Fault {
            lane: None,
            pc: w.pc[0],
            warp: w.id,
            msg: format!(
                "deadlock: some threads wait at bar.sync while others can never reach it \
                 ({})",
                parts.join("; ")
            ),
        }
    }

    fn run_warp(
        &mut self,
        w: &mut Warp,
        ctaid: (u32, u32, u32),
        shared: &mut SharedMem,
    ) -> Result<(), Fault> {
        loop {
            let mut pc = u32::MAX;
            for l in 0..w.lanes as usize {
                if w.st[l] == St::Run && w.pc[l] < pc {
                    pc = w.pc[l];
                }
            }
            if pc == u32::MAX {
                match self.ready_collective(w) {
                    Some((pc, group)) => {
                        self.step(w, pc, group, ctaid, shared)?;
                        continue;
                    }
                    None => return Ok(()),
                }
            }
            let mut group = 0u32;
            for l in 0..w.lanes as usize {
                if w.st[l] == St::Run && w.pc[l] == pc {
                    group |= 1 << l;
                }
            }
            if pc as usize >= self.k.insts.len() {
                return Err(Fault {
                    lane: Some(group.trailing_zeros()),
                    pc: pc.saturating_sub(1),
                    warp: w.id,
                    msg: "ran past the last instruction without ret".into(),
                });
            }
            if self.k.insts[pc as usize].op.is_warp_collective() {
                for l in lanes_of(group) {
                    w.st[l] = St::Park;
                }
                continue;
            }
            self.step(w, pc, group, ctaid, shared)?;
        }
    }

    /// A parked collective whose member lanes have all arrived, with the lanes parked at it.
    fn ready_collective(&self, w: &Warp) -> Option<(u32, u32)> {
        let mut live = 0u32;
        for l in 0..w.lanes as usize {
            if w.st[l] != St::Done {
                live |= 1 << l;
            }
        }
        let mut seen = Vec::new();
        for l in 0..w.lanes as usize {
            if w.st[l] != St::Park || seen.contains(&w.pc[l]) {
                continue;
            }
            let pc = w.pc[l];
            seen.push(pc);
            let mut group = 0u32;
            for m in 0..w.lanes as usize {
                if w.st[m] == St::Park && w.pc[m] == pc {
                    group |= 1 << m;
                }
            }
            let inst = &self.k.insts[pc as usize];
            let required = match inst.op {
                Op::Shfl(_) | Op::Vote(_) => {
                    let mo = inst.ops.last().expect("member mask operand");
                    let member = match mo {
                        Operand::Imm(v) => *v as u32,
                        Operand::Reg(r) => w.regs[*r as usize * 32 + l] as u32,
                        _ => u32::MAX,
                    };
                    member & live
                }
                _ => live,
            };
            if required & !group == 0 {
                return Some((pc, group));
            }
        }
        None
    }

    fn step(
        &mut self,
        w: &mut Warp,
        pc: u32,
        group: u32,
        ctaid: (u32, u32, u32),
        shared: &mut SharedMem,
    ) -> Result<(), Fault> {
        let mut cur_lane = None;
        let r = self.exec(w, pc, group, ctaid, shared, &mut cur_lane);
        r.map_err(|msg| Fault {
            lane: cur_lane.or(Some(group.trailing_zeros())),
            pc,
            warp: w.id,
            msg,
        })
    }

    #[inline(always)]
    fn rd(&self, w: &Warp, o: &Operand, l: usize, ctaid: (u32, u32, u32)) -> R<u64> {
        match o {
            Operand::Reg(r) => {
                let r = *r as usize;
                if w.init[r] & (1 << l) == 0 {
                    return Err(format!(
                        "reads register {} before anything wrote it",
                        self.k.reg_names[r]
                    ));
                }
                Ok(w.regs[r * 32 + l])
            }
            Operand::NotReg(r) => {
                let v = self.rd(w, &Operand::Reg(*r), l, ctaid)?;
                Ok(u64::from(v == 0))
            }
            Operand::Imm(v) => Ok(*v),
            Operand::Sreg(s) => {
                let (bx, by, _) = self.cfg.block;
                let lin = w.id * 32 + l as u32;
                let pick = |t: (u32, u32, u32), d: u8| match d {
                    0 => t.0,
                    1 => t.1,
                    _ => t.2,
                };
                Ok(match s {
                    Sreg::Tid(d) => {
                        let t = (lin % bx, (lin / bx) % by, lin / (bx * by));
                        pick(t, *d)
                    }
                    Sreg::Ntid(d) => pick(self.cfg.block, *d),
                    Sreg::Ctaid(d) => pick(ctaid, *d),
                    Sreg::Nctaid(d) => pick(self.cfg.grid, *d),
                    Sreg::Laneid => l as u32,
                    Sreg::Warpid => w.id,
                    Sreg::Nwarpid => {
                        let (bx, by, bz) = self.cfg.block;
                        (bx * by * bz).div_ceil(32)
                    }
                    Sreg::WarpSize => 32,
                } as u64)
            }
            _ => Err(format!("operand {o:?} cannot be read as a value")),
        }
    }

    #[inline(always)]
    fn wr(&self, w: &mut Warp, o: &Operand, l: usize, v: u64) -> R<()> {
        match o {
            Operand::Reg(r) => {
                let r = *r as usize;
                w.regs[r * 32 + l] = mask(v, self.k.regs[r].bits.max(1));
                w.init[r] |= 1 << l;
                Ok(())
            }
            _ => Err(format!("operand {o:?} is not a register destination")),
        }
    }

    #[inline(always)]
    fn wr_reg(&self, w: &mut Warp, r: u32, l: usize, v: u64) {
        let r = r as usize;
        w.regs[r * 32 + l] = mask(v, self.k.regs[r].bits.max(1));
        w.init[r] |= 1 << l;
    }

    #[inline(always)]
    fn addr(&self, w: &Warp, o: &Operand, l: usize, ctaid: (u32, u32, u32)) -> R<u64> {
        match o {
            Operand::Addr { base, disp } => {
                let b = match base {
                    Some(r) => self.rd(w, &Operand::Reg(*r), l, ctaid)?,
                    None => 0,
                };
                Ok(b.wrapping_add(*disp as u64))
            }
            _ => Err("expected an address operand".into()),
        }
    }

    /// Resolves `space` + address to where the bytes live.
    #[inline(always)]
    fn locate(&self, space: Space, a: u64, shared: &SharedMem) -> R<(Space, u64)> {
        Ok(match space {
            Space::Generic => {
                if a >= SHARED_WINDOW && a < SHARED_WINDOW + shared.data.len() as u64 {
                    (Space::Shared, a - SHARED_WINDOW)
                } else if a >= LOCAL_WINDOW && a < LOCAL_WINDOW + self.k.local_bytes as u64 {
                    (Space::Local, a - LOCAL_WINDOW)
                } else {
                    (Space::Global, a)
                }
            }
            // The module's .const variables live in global memory.
            Space::Const => (Space::Global, a),
            s => (s, a),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn load(
        &mut self,
        space: Space,
        a: u64,
        len: usize,
        tid: u32,
        shared: &mut SharedMem,
        local: &mut [u8],
        out: &mut [u8],
    ) -> R<Option<u64>> {
        let (sp, a) = self.locate(space, a, shared)?;
        if a % len as u64 != 0 {
            return Err(format!(
                "misaligned {len}-byte load from {} address 0x{a:x}",
                space_name(sp)
            ));
        }
        match sp {
            Space::Global => {
                self.mem.read(a, &mut out[..len])?;
                self.counters.global_bytes_read += len as u64;
            }
            Space::Shared => {
                let i = shared.check(a, len)?;
                shared.note_read(i, len, tid).map_err(|f| f.msg)?;
                out[..len].copy_from_slice(&shared.data[i..i + len]);
                return Ok(Some(a));
            }
            Space::Param => {
                let i = a as usize;
                if i + len > self.params.len() {
                    return Err(format!("ld.param at offset {a} beyond the parameters"));
                }
                out[..len].copy_from_slice(&self.params[i..i + len]);
            }
            Space::Local => {
                let i = local_range(a, len, local.len())?;
                out[..len].copy_from_slice(&local[i..i + len]);
            }
            _ => return Err(format!("load from {} space", space_name(sp))),
        }
        Ok(None)
    }

    fn store(
        &mut self,
        space: Space,
        a: u64,
        data: &[u8],
        tid: u32,
        shared: &mut SharedMem,
        local: &mut [u8],
    ) -> R<Option<u64>> {
        let len = data.len();
        let (sp, a) = self.locate(space, a, shared)?;
        if a % len as u64 != 0 {
            return Err(format!(
                "misaligned {len}-byte store to {} address 0x{a:x}",
                space_name(sp)
            ));
        }
        match sp {
            Space::Global => {
                self.mem.write(a, data)?;
                self.counters.global_bytes_written += len as u64;
            }
            Space::Shared => {
                let i = shared.check(a, len)?;
                shared.note_write(i, len, tid).map_err(|f| f.msg)?;
                shared.data[i..i + len].copy_from_slice(data);
                return Ok(Some(a));
            }
            Space::Local => {
                let i = local_range(a, len, local.len())?;
                local[i..i + len].copy_from_slice(data);
            }
            _ => return Err(format!("store to {} space", space_name(sp))),
        }
        Ok(None)
    }

    #[allow(clippy::too_many_arguments)]
    fn exec(
        &mut self,
        w: &mut Warp,
        pc: u32,
        group: u32,
        ctaid: (u32, u32, u32),
        shared: &mut SharedMem,
        cur: &mut Option<u32>,
    ) -> R<()> {
        let k = self.k;
        let inst = &k.insts[pc as usize];
        self.counters.count(inst.class);
        let mut active = group;
        if let Some((p, neg)) = inst.guard {
            active = 0;
            for l in lanes_of(group) {
                *cur = Some(l as u32);
                let v = self.rd(w, &Operand::Reg(p), l, ctaid)? != 0;
                if v != neg {
                    active |= 1 << l;
                }
            }
        }
        // Lanes advance unless the instruction moves them elsewhere.
        let mut advance = group;
        let ops = &inst.ops;
        match &inst.op {
            Op::IBin(b, t) => {
                for l in lanes_of(active) {
                    *cur = Some(l as u32);
                    let x = self.rd(w, &ops[1], l, ctaid)?;
                    let y = self.rd(w, &ops[2], l, ctaid)?;
                    self.wr(w, &ops[0], l, ibin(*b, *t, x, y))?;
                }
            }
            Op::IUnary(u, t) => {
                for l in lanes_of(active) {
                    *cur = Some(l as u32);
                    let x = self.rd(w, &ops[1], l, ctaid)?;
                    self.wr(w, &ops[0], l, iunary(*u, *t, x))?;
                }
            }
            Op::Mul(m, t) => {
                for l in lanes_of(active) {
                    *cur = Some(l as u32);
                    let x = self.rd(w, &ops[1], l, ctaid)?;
                    let y = self.rd(w, &ops[2], l, ctaid)?;
                    self.wr(w, &ops[0], l, imul(*m, *t, x, y))?;
                }
            }
            Op::Mad(m, t) => {
                for l in lanes_of(active) {
                    *cur = Some(l as u32);
                    let x = self.rd(w, &ops[1], l, ctaid)?;
                    let y = self.rd(w, &ops[2], l, ctaid)?;
                    let z = self.rd(w, &ops[3], l, ctaid)?;
                    self.wr(w, &ops[0], l, imad(*m, *t, x, y, z))?;
                }
            }
            Op::PredBin(b) => {
                for l in lanes_of(active) {
                    *cur = Some(l as u32);
                    let x = self.rd(w, &ops[1], l, ctaid)? != 0;
                    let y = self.rd(w, &ops[2], l, ctaid)? != 0;
                    self.wr(w, &ops[0], l, u64::from(bool_op(*b, x, y)))?;
                }
            }
            Op::PredNot => {
                for l in lanes_of(active) {
                    *cur = Some(l as u32);
                    let x = self.rd(w, &ops[1], l, ctaid)? != 0;
                    self.wr(w, &ops[0], l, u64::from(!x))?;
                }
            }
            Op::FArith(o, m) => {
                for l in lanes_of(active) {
                    *cur = Some(l as u32);
                    let x = self.rd(w, &ops[1], l, ctaid)?;
                    let y = self.rd(w, &ops[2], l, ctaid)?;
                    let r = if m.ty == Ty::F32 {
                        f32_arith(*o, f32b(x), f32b(y), *m).to_bits() as u64
                    } else {
                        f64_arith(*o, f64::from_bits(x), f64::from_bits(y), *m).to_bits()
                    };
                    self.wr(w, &ops[0], l, r)?;
                }
            }
            Op::Fma(m) => {
                for l in lanes_of(active) {
                    *cur = Some(l as u32);
                    let x = self.rd(w, &ops[1], l, ctaid)?;
                    let y = self.rd(w, &ops[2], l, ctaid)?;
                    let z = self.rd(w, &ops[3], l, ctaid)?;
                    let r = if m.ty == Ty::F32 {
                        f32_fma(f32b(x), f32b(y), f32b(z), *m).to_bits() as u64
                    } else {
                        let (a, b, c) = (f64::from_bits(x), f64::from_bits(y), f64::from_bits(z));
                        f64_fma(a, b, c, *m).to_bits()
                    };
                    self.wr(w, &ops[0], l, r)?;
                }
            }
            Op::FDiv(m, approx) => {
                for l in lanes_of(active) {
                    *cur = Some(l as u32);
                    let x = self.rd(w, &ops[1], l, ctaid)?;
                    let y = self.rd(w, &ops[2], l, ctaid)?;
                    let r = if m.ty == Ty::F32 {
                        f32_div(f32b(x), f32b(y), *m, *approx).to_bits() as u64
                    } else {
                        f64_div(f64::from_bits(x), f64::from_bits(y), *m).to_bits()
                    };
                    self.wr(w, &ops[0], l, r)?;
                }
            }
            Op::FUnary(u, m, approx) => {
                for l in lanes_of(active) {
                    *cur = Some(l as u32);
                    let x = self.rd(w, &ops[1], l, ctaid)?;
                    let r = if m.ty == Ty::F32 {
                        f32_unary(*u, f32b(x), *m, *approx).to_bits() as u64
                    } else {
                        f64_unary(*u, f64::from_bits(x), *m, *approx).to_bits()
                    };
                    self.wr(w, &ops[0], l, r)?;
                }
            }
            Op::FMinMax(max, m) => {
                for l in lanes_of(active) {
                    *cur = Some(l as u32);
                    let x = self.rd(w, &ops[1], l, ctaid)?;
                    let y = self.rd(w, &ops[2], l, ctaid)?;
                    let r = if m.ty == Ty::F32 {
                        f32_minmax(*max, f32b(x), f32b(y), m.ftz).to_bits() as u64
                    } else {
                        f64_minmax(*max, f64::from_bits(x), f64::from_bits(y)).to_bits()
                    };
                    self.wr(w, &ops[0], l, r)?;
                }
            }
            Op::Copysign(t) => {
                let sign = if *t == Ty::F32 {
                    1u64 << 31
                } else {
                    1u64 << 63
                };
                for l in lanes_of(active) {
                    *cur = Some(l as u32);
                    let x = self.rd(w, &ops[1], l, ctaid)?;
                    let y = self.rd(w, &ops[2], l, ctaid)?;
                    self.wr(w, &ops[0], l, (y & !sign) | (x & sign))?;
                }
            }
            Op::Testp(kind, t) => {
                for l in lanes_of(active) {
                    *cur = Some(l as u32);
                    let x = self.rd(w, &ops[1], l, ctaid)?;
                    let (v, sub) = if *t == Ty::F32 {
                        let f = f32b(x);
                        (f as f64, f.is_subnormal())
                    } else {
                        let f = f64::from_bits(x);
                        (f, f.is_subnormal())
                    };
                    self.wr(w, &ops[0], l, u64::from(testp(*kind, v, sub)))?;
                }
            }
            Op::Mov(t) => self.mov(w, *t, ops, active, ctaid, cur)?,
            Op::Bfi(t) => {
                for l in lanes_of(active) {
                    *cur = Some(l as u32);
                    let a = self.rd(w, &ops[1], l, ctaid)?;
                    let b = self.rd(w, &ops[2], l, ctaid)?;
                    let pos = self.rd(w, &ops[3], l, ctaid)? & 0xff;
                    let len = self.rd(w, &ops[4], l, ctaid)? & 0xff;
                    self.wr(w, &ops[0], l, bit_insert(t.bits(), a, b, pos, len))?;
                }
            }
            Op::Prmt => {
                for l in lanes_of(active) {
                    *cur = Some(l as u32);
                    let a = self.rd(w, &ops[1], l, ctaid)? as u32;
                    let b = self.rd(w, &ops[2], l, ctaid)? as u32;
                    let c = self.rd(w, &ops[3], l, ctaid)? as u32;
                    self.wr(w, &ops[0], l, prmt(a, b, c) as u64)?;
                }
            }
            Op::Bfe(t) => {
                for l in lanes_of(active) {
                    *cur = Some(l as u32);
                    let a = self.rd(w, &ops[1], l, ctaid)?;
                    let pos = self.rd(w, &ops[2], l, ctaid)? & 0xff;
                    let len = self.rd(w, &ops[3], l, ctaid)? & 0xff;
                    let r = bit_extract(t.bits(), t.is_signed(), a, pos, len);
                    self.wr(w, &ops[0], l, r)?;
                }
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
                for l in lanes_of(active) {
                    *cur = Some(l as u32);
                    let x = self.rd(w, &ops[1], l, ctaid)?;
                    let r = cvt(*dst, *src, *rnd, *int_rnd, *ftz, *sat, x)?;
                    // A signed result narrower than its register is sign-extended into it.
                    let r = if dst.is_signed() {
                        sext(r, dst.bits()) as u64
                    } else {
                        r
                    };
                    self.wr(w, &ops[0], l, r)?;
                }
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
                for l in lanes_of(active) {
                    *cur = Some(l as u32);
                    let x = self.rd(w, &ops[1], l, ctaid)?;
                    let r = match (space, to) {
                        (Space::Shared, false) => x.wrapping_add(SHARED_WINDOW),
                        (Space::Shared, true) => x.wrapping_sub(SHARED_WINDOW),
                        (Space::Local, false) => x.wrapping_add(LOCAL_WINDOW),
                        (Space::Local, true) => x.wrapping_sub(LOCAL_WINDOW),
                        _ => x,
                    };
                    self.wr(w, &ops[0], l, r)?;
                }
            }
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
                        let mut e = [0u8; 8];
                        e[..size].copy_from_slice(&buf[i * size..(i + 1) * size]);
                        let raw = u64::from_le_bytes(e);
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
                self.counters.shared_bank_conflicts += bank_conflicts(&shared_addrs, total as u32);
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
                for l in 0..32 {
                    *cur = Some(l as u32);
                    let regs = |o: &Operand| match o {
                        Operand::Vec(v) => Ok(v.clone()),
                        _ => Err("mma operands are vectors".to_string()),
                    };
                    for (i, r) in regs(&ops[1])?.iter().enumerate() {
                        a[l][i] = self.rd(w, &Operand::Reg(r.ok_or("sink")?), l, ctaid)? as u32;
                    }
                    for (i, r) in regs(&ops[2])?.iter().enumerate() {
                        b[l][i] = self.rd(w, &Operand::Reg(r.ok_or("sink")?), l, ctaid)? as u32;
                    }
                    for (i, r) in regs(&ops[3])?.iter().enumerate() {
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
                    w.uncommitted[l].push(Copy {
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
        for l in lanes_of(advance) {
            w.pc[l] += 1;
        }
        Ok(())
    }

    fn mov(
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

    #[allow(clippy::too_many_arguments)]
    fn atomic(
        &mut self,
        space: Space,
        a: u64,
        size: usize,
        op: AtomOp,
        ty: Ty,
        b: u64,
        c: u64,
        shared: &mut SharedMem,
    ) -> R<u64> {
        let (sp, addr) = self.locate(space, a, shared)?;
        if addr % size as u64 != 0 {
            return Err(format!("misaligned {size}-byte atomic at 0x{addr:x}"));
        }
        let mut buf = [0u8; 8];
        match sp {
            Space::Global => {
                self.mem.read(addr, &mut buf[..size])?;
                self.counters.global_bytes_read += size as u64;
            }
            Space::Shared => {
                let i = shared.check(addr, size)?;
                buf[..size].copy_from_slice(&shared.data[i..i + size]);
            }
            _ => return Err(format!("atomic on {} space", space_name(sp))),
        }
        let old = u64::from_le_bytes(buf);
        let bits = ty.bits();
        let new = match op {
            AtomOp::Add => match ty {
                // atom.add.f32 flushes subnormal inputs and results (ISA).
                Ty::F32 => {
                    let r = ftz32(ftz32(f32b(old)) + ftz32(f32b(b)));
                    ftz32(r).to_bits() as u64
                }
                Ty::F64 => (f64::from_bits(old) + f64::from_bits(b)).to_bits(),
                _ => old.wrapping_add(b),
            },
            AtomOp::Min | AtomOp::Max => {
                let t = if ty == Ty::B32 || ty == Ty::B64 {
                    if bits == 32 {
                        Ty::U32
                    } else {
                        Ty::U64
                    }
                } else {
                    ty
                };
                let bin = if op == AtomOp::Min {
                    super::ir::IBin::Min
                } else {
                    super::ir::IBin::Max
                };
                ibin(bin, t, old, b)
            }
            AtomOp::And => old & b,
            AtomOp::Or => old | b,
            AtomOp::Xor => old ^ b,
            AtomOp::Exch => b,
            AtomOp::Cas => {
                if mask(old, bits) == mask(b, bits) {
                    c
                } else {
                    old
                }
            }
            AtomOp::Inc => {
                if mask(old, bits) >= mask(b, bits) {
                    0
                } else {
                    old + 1
                }
            }
            AtomOp::Dec => {
                let (o, bb) = (mask(old, bits), mask(b, bits));
                if o == 0 || o > bb {
                    bb
                } else {
                    o - 1
                }
            }
        };
        let new = mask(new, bits).to_le_bytes();
        match sp {
            Space::Global => {
                self.mem.write(addr, &new[..size])?;
                self.counters.global_bytes_written += size as u64;
            }
            _ => {
                let i = addr as usize;
                shared.data[i..i + size].copy_from_slice(&new[..size]);
            }
        }
        Ok(mask(old, bits))
    }

    #[allow(clippy::too_many_arguments)]
    fn ldmatrix(
        &mut self,
        w: &mut Warp,
        num: u8,
        trans: bool,
        ops: &[Operand],
        active: u32,
        ctaid: (u32, u32, u32),
        shared: &mut SharedMem,
        cur: &mut Option<u32>,
    ) -> R<()> {
        if active.count_ones() != 32 {
            return Err("ldmatrix.sync.aligned needs all 32 lanes of the warp".into());
        }
        let num = num as usize;
        let mut mats = vec![[[0u16; 8]; 8]; num];
        let mut addrs = Vec::new();
        for (lane, slot) in (0..8 * num).map(|l| (l, (l / 8, l % 8))) {
            *cur = Some(lane as u32);
            let a = self.addr(w, &ops[1], lane, ctaid)?;
            let a = match self.locate(Space::Generic, a, shared)? {
                (Space::Shared, off) => off,
                _ => a, // a `.shared` address operand is already an offset
            };
            if a % 16 != 0 {
                return Err(format!(
                    "ldmatrix row address 0x{a:x} (lane {lane}) is not 16-byte aligned"
                ));
            }
            let i = shared.check(a, 16)?;
            shared
                .note_read(i, 16, w.id * 32 + lane as u32)
                .map_err(|f| f.msg)?;
            for (e, v) in mats[slot.0][slot.1].iter_mut().enumerate() {
                *v = u16::from_le_bytes([shared.data[i + 2 * e], shared.data[i + 2 * e + 1]]);
            }
            addrs.push(a);
        }
        self.counters.shared_bank_conflicts += bank_conflicts(&addrs, 16);
        let Operand::Vec(dregs) = &ops[0] else {
            return Err("ldmatrix destination is a vector".into());
        };
        for l in 0..32usize {
            for (m, r) in dregs.iter().enumerate() {
                if let Some(r) = r {
                    self.wr_reg(
                        w,
                        *r,
                        l,
                        ldmatrix_fragment(&mats[m], l as u32, trans) as u64,
                    );
                }
            }
        }
        Ok(())
    }
}

/// `bfi`: `b` with bits `pos .. pos + len` (within the width) replaced by `a`'s low bits.
fn bit_insert(width: u32, a: u64, b: u64, pos: u64, len: u64) -> u64 {
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
fn bit_extract(width: u32, signed: bool, a: u64, pos: u64, len: u64) -> u64 {
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

/// One 16-bit float `add` (0), `sub` (1), `mul` (2) or `fma` (3), rounded once to nearest
/// even: the exact result is rounded to odd in f32, then to the 16-bit format.
fn half_arith(op: u8, bf16: bool, a: u16, b: u16, c: u16) -> u16 {
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

fn local_range(a: u64, len: usize, size: usize) -> R<usize> {
    if a.checked_add(len as u64).is_some_and(|e| e <= size as u64) {
        Ok(a as usize)
    } else {
        Err(format!(
            "local address 0x{a:x} (+{len} bytes) is outside the thread's {size} bytes of              local memory"
        ))
    }
}

fn f32b(x: u64) -> f32 {
    f32::from_bits(x as u32)
}

fn bool_op(b: BoolOp, x: bool, y: bool) -> bool {
    match b {
        BoolOp::And => x && y,
        BoolOp::Or => x || y,
        BoolOp::Xor => x ^ y,
    }
}

fn space_name(s: Space) -> &'static str {
    match s {
        Space::Generic => "generic",
        Space::Global => "global",
        Space::Shared => "shared",
        Space::Param => "param",
        Space::Const => "const",
        Space::Local => "local",
    }
}
