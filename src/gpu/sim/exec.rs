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

use super::counters::Counters;
use super::intmath::mask;
use super::ir::{Kernel, Op, Operand, Sreg};
use super::memory::{GlobalMem, SharedMem, POISON};
use super::wgmma::{check_warpgroups, WgmmaState};
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

pub(super) type R<T> = Result<T, String>;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum St {
    Run,
    Park,
    Bar,
    /// At an `mbarrier.try_wait` whose phase has not completed: tried again next round.
    Wait,
    Done,
}

/// One pending 16-byte-or-less copy of a cp.async.
pub(super) struct PendingCopy {
    pub(super) dst: usize,
    pub(super) data: [u8; 16],
    pub(super) len: usize,
}

pub(super) struct Warp {
    pub(super) id: u32,
    pub(super) lanes: u32,
    pub(super) pc: [u32; 32],
    pub(super) st: [St; 32],
    pub(super) regs: Vec<u64>,
    pub(super) init: Vec<u32>,
    pub(super) uncommitted: Vec<Vec<PendingCopy>>,
    pub(super) groups: Vec<VecDeque<Vec<PendingCopy>>>,
    /// Each lane's `.local` memory, `local_bytes` per lane.
    pub(super) local: Vec<u8>,
    /// The warp's `wgmma` instructions in flight.
    pub(super) wgmma: WgmmaState,
    /// Registers per thread the warp holds (`Kernel::launch_regs` at the start; moved by
    /// `setmaxnreg`).
    pub(super) nregs: u32,
    /// (increase, count) of every `setmaxnreg` the warp completed, for the warpgroup check
    /// at the CTA's end.
    pub(super) setmaxnreg_log: Vec<(bool, u32)>,
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
    /// The warps of the last CTA, kept for the next one (their buffers are reused).
    pub(super) warps: Vec<Warp>,
    /// Instructions issued, and those of them that only found an mbarrier phase unfinished:
    /// a round of the warps with nothing but the latter is a deadlock.
    pub(super) issued: u64,
    pub(super) stalled: u64,
    /// Registers the CTA's warps have given back with `setmaxnreg.dec` and not taken again.
    pub(super) reg_pool: u64,
}

#[inline(always)]
pub(super) fn lanes_of(mask: u32) -> impl Iterator<Item = usize> {
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
        // The warps of the previous CTA are reused: their register values stay behind, but
        // with every initialisation bit cleared no read can see them.
        let mut warps = std::mem::take(&mut self.warps);
        if warps.len() != nwarps as usize {
            warps = (0..nwarps)
                .map(|id| Warp {
                    id,
                    lanes: (nthreads - id * 32).min(32),
                    pc: [0; 32],
                    st: [St::Done; 32],
                    regs: vec![0; nregs * 32],
                    init: vec![0; nregs],
                    uncommitted: (0..32).map(|_| Vec::new()).collect(),
                    groups: (0..32).map(|_| VecDeque::new()).collect(),
                    local: Vec::new(),
                    wgmma: WgmmaState::default(),
                    nregs: 0,
                    setmaxnreg_log: Vec::new(),
                })
                .collect();
        }
        for w in warps.iter_mut() {
            w.pc = [0; 32];
            w.st = [St::Done; 32];
            for s in w.st.iter_mut().take(w.lanes as usize) {
                *s = St::Run;
            }
            w.init.fill(0);
            w.uncommitted.iter_mut().for_each(Vec::clear);
            w.groups.iter_mut().for_each(VecDeque::clear);
            w.local.clear();
            w.wgmma.reset();
            w.nregs = self.k.launch_regs.unwrap_or(0);
            w.setmaxnreg_log.clear();
            w.local.resize(32 * self.k.local_bytes as usize, POISON);
            for &(r, v) in &self.k.const_regs {
                for l in 0..32 {
                    w.regs[r as usize * 32 + l] = v;
                }
                w.init[r as usize] = u32::MAX;
            }
        }
        self.reg_pool = 0;
        shared.start_clocks(nwarps as usize);
        let r = self.run_warps(&mut warps, ctaid, shared).and_then(|()| {
            let logs: Vec<&[(u16, u64, u64)]> =
                warps.iter().map(|w| w.wgmma.log.as_slice()).collect();
            let regs: Vec<&[(bool, u32)]> =
                warps.iter().map(|w| w.setmaxnreg_log.as_slice()).collect();
            check_warpgroups(
                &logs,
                "wgmma.mma_async",
                "a warpgroup issues each wgmma together, with the same descriptors",
            )
            .and_then(|()| {
                check_warpgroups(
                    &regs,
                    "setmaxnreg",
                    "every warp of a warpgroup must run the same setmaxnreg, else the \
                     behaviour is undefined",
                )
            })
            .map_err(|msg| Fault {
                lane: None,
                pc: 0,
                warp: 0,
                msg,
            })
        });
        self.warps = warps;
        r
    }

    /// Runs the (freshly reset) warps of one CTA to completion.
    fn run_warps(
        &mut self,
        warps: &mut [Warp],
        ctaid: (u32, u32, u32),
        shared: &mut SharedMem,
    ) -> Result<(), Fault> {
        self.counters.ctas += 1;
        loop {
            let before = self.issued - self.stalled;
            for w in warps.iter_mut() {
                for st in w.st.iter_mut() {
                    if *st == St::Wait {
                        *st = St::Run;
                    }
                }
                self.run_warp(w, ctaid, shared)?;
            }
            let (mut any_live, mut all_bar, mut any_wait) = (false, true, false);
            for w in warps.iter() {
                for l in 0..w.lanes as usize {
                    match w.st[l] {
                        St::Done => {}
                        St::Bar => any_live = true,
                        st => {
                            any_live = true;
                            all_bar = false;
                            any_wait |= st == St::Wait;
                        }
                    }
                }
            }
            if !any_live {
                return Ok(());
            }
            if any_wait && self.issued - self.stalled > before {
                continue;
            }
            if !all_bar {
                return Err(self.deadlock(warps));
            }
            for w in warps.iter_mut() {
                for l in 0..w.lanes as usize {
                    if w.st[l] == St::Bar {
                        w.st[l] = St::Run;
                        w.pc[l] += 1;
                    }
                }
            }
            shared.barrier(warps.len());
        }
    }

    pub(super) fn deadlock(&self, warps: &[Warp]) -> Fault {
        let mut parts = Vec::new();
        for w in warps {
            for l in 0..w.lanes as usize {
                if matches!(w.st[l], St::Park | St::Run | St::Wait) {
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
            .find(|w| (0..w.lanes as usize).any(|l| matches!(w.st[l], St::Park | St::Wait)))
            .unwrap_or(&warps[0]);
        Fault {
            lane: None,
            pc: w.pc[0],
            warp: w.id,
            msg: format!(
                "deadlock: some threads wait at bar.sync, for an mbarrier phase that can \
                 never complete or for registers setmaxnreg.inc cannot get ({})",
                parts.join("; ")
            ),
        }
    }

    pub(super) fn run_warp(
        &mut self,
        w: &mut Warp,
        ctaid: (u32, u32, u32),
        shared: &mut SharedMem,
    ) -> Result<(), Fault> {
        // After a straight-line instruction issued for every running lane, those lanes all
        // sit at the next instruction and no other lane runs: the next issue is known
        // without looking at the lanes again.
        let mut next: Option<(u32, u32)> = None;
        loop {
            let (pc, group, running) = match next.take() {
                Some((pc, group)) => (pc, group, group),
                None => {
                    // The lowest PC among running lanes and the lanes at it, in branch-free
                    // passes over all 32 lanes (lanes past the warp's end are `Done`).
                    let mut at = [u32::MAX; 32];
                    let mut running = 0u32;
                    for (l, (a, (&p, &st))) in at.iter_mut().zip(w.pc.iter().zip(&w.st)).enumerate()
                    {
                        let run = st == St::Run;
                        running |= u32::from(run) << l;
                        if run {
                            *a = p;
                        }
                    }
                    let pc = at.iter().copied().fold(u32::MAX, u32::min);
                    let mut group = 0u32;
                    for (l, &a) in at.iter().enumerate() {
                        group |= u32::from(a == pc) << l;
                    }
                    (pc, group, running)
                }
            };
            if pc == u32::MAX {
                match self.ready_collective(w) {
                    Some((pc, group)) => {
                        self.step(w, pc, group, ctaid, shared)?;
                        continue;
                    }
                    None => return Ok(()),
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
            let op = &self.k.insts[pc as usize].op;
            if op.is_warp_collective() {
                for l in lanes_of(group) {
                    w.st[l] = St::Park;
                }
                continue;
            }
            let straight = self.step(w, pc, group, ctaid, shared)?;
            if group == running && straight {
                next = Some((pc + 1, group));
            }
        }
    }

    /// A parked collective whose member lanes have all arrived, with the lanes parked at it.
    pub(super) fn ready_collective(&self, w: &Warp) -> Option<(u32, u32)> {
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
                Op::Shfl(_) | Op::Vote(_) | Op::Redux(..) => {
                    let mo = inst.ops.last().expect("member mask operand");
                    let member = match mo {
                        Operand::Imm(v) => *v as u32,
                        // An unset mask register reads as 0 (as a fresh register file's did).
                        Operand::Reg(r) if w.init[*r as usize] & (1 << l) != 0 => {
                            w.regs[*r as usize * 32 + l] as u32
                        }
                        Operand::Reg(_) => 0,
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

    /// [`Launch::exec`] with its error as a fault at `pc`: whether the lanes went straight on.
    pub(super) fn step(
        &mut self,
        w: &mut Warp,
        pc: u32,
        group: u32,
        ctaid: (u32, u32, u32),
        shared: &mut SharedMem,
    ) -> Result<bool, Fault> {
        let mut cur_lane = None;
        self.issued += 1;
        let r = self.exec(w, pc, group, ctaid, shared, &mut cur_lane);
        r.map_err(|msg| Fault {
            lane: cur_lane.or(Some(group.trailing_zeros())),
            pc,
            warp: w.id,
            msg,
        })
    }

    #[inline(always)]
    pub(super) fn rd(&self, w: &Warp, o: &Operand, l: usize, ctaid: (u32, u32, u32)) -> R<u64> {
        match o {
            Operand::Reg(r) => {
                let r = *r as usize;
                if w.init[r] & (1 << l) == 0 {
                    return Err(self.unset_register(r));
                }
                Ok(w.regs[r * 32 + l])
            }
            Operand::Imm(v) => Ok(*v),
            _ => self.rd_other(w, o, l, ctaid),
        }
    }

    #[cold]
    #[inline(never)]
    pub(super) fn unset_register(&self, r: usize) -> String {
        format!(
            "reads register {} before anything wrote it",
            self.k.reg_names[r]
        )
    }

    /// The less common operand kinds of [`Launch::rd`].
    fn rd_other(&self, w: &Warp, o: &Operand, l: usize, ctaid: (u32, u32, u32)) -> R<u64> {
        match o {
            Operand::Reg(_) | Operand::Imm(_) => self.rd(w, o, l, ctaid),
            Operand::NotReg(r) => {
                let v = self.rd(w, &Operand::Reg(*r), l, ctaid)?;
                Ok(u64::from(v == 0))
            }
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
    pub(super) fn wr(&self, w: &mut Warp, o: &Operand, l: usize, v: u64) -> R<()> {
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
    pub(super) fn wr_reg(&self, w: &mut Warp, r: u32, l: usize, v: u64) {
        let r = r as usize;
        w.regs[r * 32 + l] = mask(v, self.k.regs[r].bits.max(1));
        w.init[r] |= 1 << l;
    }

    #[inline(always)]
    pub(super) fn addr(&self, w: &Warp, o: &Operand, l: usize, ctaid: (u32, u32, u32)) -> R<u64> {
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
}

pub(super) fn f32b(x: u64) -> f32 {
    f32::from_bits(x as u32)
}
