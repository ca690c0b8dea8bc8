//! `mbarrier` instructions and the TMA tile copy (`cp.async.bulk.tensor`), written from the
//! PTX ISA's mbarrier and "Tensor Copy" sections.
//!
//! The copy is done when it is issued, but its bytes belong to the mbarrier it completes on:
//! a thread may read them only after waiting for the phase that copy completed (the race
//! detector's agent clocks, [`super::mbarrier`]), and the copy may overwrite bytes only that
//! every earlier reader has released to the issuing thread through an mbarrier or
//! `bar.sync`. Elements of the box outside the tensor are written as zeros, and the whole
//! box counts towards the mbarrier's transaction count, as on the GPU.

use super::exec::{lanes_of, Launch, St, Warp, R};
use super::ir::{MbarOp, Operand, Space};
use super::mbarrier::Mbarrier;
use super::memory::{SharedMem, AGENT};
use crate::gpu::tensor_map::{swizzle, Swizzle, TensorMap, MAX_RANK, TENSOR_MAP_BYTES};

impl<'a> Launch<'a> {
    /// The shared-memory offset an address operand names (a generic address in the shared
    /// window, or a `.shared` offset as is).
    fn shared_offset(
        &self,
        w: &Warp,
        o: &Operand,
        l: usize,
        ctaid: (u32, u32, u32),
        shared: &SharedMem,
    ) -> R<u64> {
        let a = self.addr(w, o, l, ctaid)?;
        Ok(match self.locate(Space::Generic, a, shared)? {
            (Space::Shared, off) => off,
            _ => a,
        })
    }

    /// The shared-memory offset of an mbarrier operand, checked for bounds and 8-byte
    /// alignment.
    fn mbarrier_addr(
        &self,
        w: &Warp,
        o: &Operand,
        l: usize,
        ctaid: (u32, u32, u32),
        shared: &SharedMem,
    ) -> R<usize> {
        let a = self.shared_offset(w, o, l, ctaid, shared)?;
        if a % 8 != 0 {
            return Err(format!(
                "mbarrier at shared address 0x{a:x} is not 8-byte aligned"
            ));
        }
        shared.check(a, 8)
    }

    /// One `mbarrier` instruction for the active lanes; returns the lanes that must wait
    /// (a `try_wait` whose phase is not complete).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn mbarrier_op(
        &mut self,
        w: &mut Warp,
        kind: MbarOp,
        ops: &[Operand],
        active: u32,
        ctaid: (u32, u32, u32),
        shared: &mut SharedMem,
        cur: &mut Option<u32>,
    ) -> R<u32> {
        let mut waiting = 0u32;
        let me = w.id as usize;
        let addr_at = usize::from(!matches!(
            kind,
            MbarOp::Init | MbarOp::ExpectTx | MbarOp::Inval
        ));
        for l in lanes_of(active) {
            *cur = Some(l as u32);
            let a = self.mbarrier_addr(w, &ops[addr_at], l, ctaid, shared)?;
            if kind == MbarOp::Init {
                if shared.mbarriers.contains_key(&a) {
                    return Err(format!(
                        "mbarrier.init of the live mbarrier at shared address 0x{a:x} (needs \
                         mbarrier.inval first)"
                    ));
                }
                let count = self.rd(w, &ops[1], l, ctaid)?;
                // The initialising thread writes the object.
                shared
                    .note_write(a, 8, w.id * 32 + l as u32)
                    .map_err(|f| f.msg)?;
                let agent = shared.clocks.add_component();
                shared.mbarriers.insert(a, Mbarrier::new(count, agent)?);
                shared.set_mbarrier(a, true);
                continue;
            }
            if !shared.mbarriers.contains_key(&a) {
                return Err(format!(
                    "mbarrier instruction on shared address 0x{a:x}, which holds no \
                     initialised mbarrier"
                ));
            }
            shared.check_mbarrier_use(a, w.id * 32 + l as u32)?;
            let m = shared.mbarriers.get_mut(&a).expect("checked above");
            match kind {
                MbarOp::Init => {}
                MbarOp::Inval => {
                    shared.mbarriers.remove(&a);
                    shared.set_mbarrier(a, false);
                }
                MbarOp::ExpectTx => {
                    let tx = self.rd(w, &ops[1], l, ctaid)?;
                    m.expect_tx(tx)?;
                }
                MbarOp::Arrive | MbarOp::ArriveExpectTx => {
                    let count = if kind == MbarOp::ArriveExpectTx {
                        m.expect_tx(self.rd(w, &ops[2], l, ctaid)?)?;
                        1
                    } else if let Some(o) = ops.get(2) {
                        self.rd(w, o, l, ctaid)?
                    } else {
                        1
                    };
                    if count == 0 || count > u64::from(super::mbarrier::MAX_COUNT) {
                        return Err(format!("mbarrier.arrive with a count of {count}"));
                    }
                    let state = m.state();
                    m.arrive(count as u32, shared.clocks.clock(me))?;
                    shared.clocks.tick(me);
                    if let Operand::Reg(r) = ops[0] {
                        self.wr_reg(w, r, l, state);
                    }
                }
                MbarOp::TryWaitParity => {
                    let parity = self.rd(w, &ops[2], l, ctaid)?;
                    if m.parity_done(parity) {
                        let seen = m.done_clock.clone();
                        shared.clocks.acquire(me, &seen);
                        self.wr(w, &ops[0], l, 1)?;
                    } else {
                        waiting |= 1 << l;
                    }
                }
            }
        }
        Ok(waiting)
    }

    /// `cp.async.bulk.tensor.{dims}d...` for the active lanes.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn tma_load(
        &mut self,
        w: &mut Warp,
        dims: u8,
        ops: &[Operand],
        active: u32,
        ctaid: (u32, u32, u32),
        shared: &mut SharedMem,
        cur: &mut Option<u32>,
    ) -> R<()> {
        for l in lanes_of(active) {
            *cur = Some(l as u32);
            let dst = self.shared_offset(w, &ops[0], l, ctaid, shared)?;
            let map = self.read_tensor_map(w, &ops[1], l, ctaid, shared)?;
            if map.dims.len() != dims as usize {
                return Err(format!(
                    "cp.async.bulk.tensor.{dims}d with a tensor map of {} dimensions",
                    map.dims.len()
                ));
            }
            let Operand::Vec(cs) = &ops[2] else {
                return Err("cp.async.bulk.tensor coordinates are a vector".into());
            };
            let mut coords = [0i64; MAX_RANK];
            for (i, c) in cs.iter().enumerate() {
                let r = c.ok_or("cp.async.bulk.tensor coordinate is a `_` sink")?;
                coords[i] = self.rd(w, &Operand::Reg(r), l, ctaid)? as u32 as i32 as i64;
            }
            let align = match map.swizzle {
                Swizzle::None => 128,
                s => 8 * s.span() as u64,
            };
            if dst % align != 0 {
                return Err(format!(
                    "cp.async.bulk.tensor destination 0x{dst:x} is not {align}-byte aligned \
                     (needed with swizzle {:?})",
                    map.swizzle
                ));
            }
            let bytes = map.box_bytes();
            let start = shared.check(dst, bytes as usize)?;
            let mbar = self.mbarrier_addr(w, &ops[3], l, ctaid, shared)?;
            let agent = match shared.mbarriers.get(&mbar) {
                Some(m) => m.agent,
                None => {
                    return Err(format!(
                        "cp.async.bulk.tensor completes on shared address 0x{mbar:x}, which \
                         holds no initialised mbarrier"
                    ))
                }
            };
            shared.check_mbarrier_use(mbar, w.id * 32 + l as u32)?;
            // The copy starts after everything the issuing warp has seen.
            let issuer = shared.clocks.clock(w.id as usize).to_vec();
            shared.clocks.acquire(agent, &issuer);
            let box_data = self.gather_box(&map, &coords)?;
            // Rows of the box are multiples of 16 bytes (checked with the map), so each
            // 16-byte chunk moves whole under the swizzle.
            for (i, chunk) in box_data.chunks(16).enumerate() {
                let at = swizzle((start + 16 * i) as u32, map.swizzle) as usize;
                shared
                    .note_write(at, chunk.len(), AGENT | agent as u32)
                    .map_err(|f| f.msg)?;
                shared.data[at..at + chunk.len()].copy_from_slice(chunk);
            }
            let released = shared.clocks.clock(agent).to_vec();
            shared.clocks.tick(agent);
            let m = shared.mbarriers.get_mut(&mbar).expect("looked up above");
            m.complete_tx(bytes, &released)?;
        }
        Ok(())
    }

    /// The box at `coords` of `map`, densely (dimension 0 fastest), zeros outside the
    /// tensor.
    fn gather_box(&mut self, map: &TensorMap, coords: &[i64; MAX_RANK]) -> R<Vec<u8>> {
        let e = map.elem_bytes as usize;
        let b = |i: usize| map.boxes.get(i).copied().unwrap_or(1) as i64;
        let d = |i: usize| map.dims.get(i).copied().unwrap_or(1) as i64;
        let stride = |i: usize| map.strides.get(i - 1).copied().unwrap_or(0);
        let mut out = vec![0u8; map.box_bytes() as usize];
        let (x0, n) = (coords[0], b(0));
        // One row of the box (dimension 0) per step, its outer indices counted like digits,
        // dimension 1 fastest.
        let rows: i64 = (1..MAX_RANK).map(b).product();
        for (r, row) in out
            .chunks_mut(n as usize * e)
            .enumerate()
            .take(rows as usize)
        {
            let mut rest = r as i64;
            let mut addr = map.base;
            let mut row_ok = true;
            for (i, &c) in coords.iter().enumerate().skip(1) {
                let g = c + rest % b(i);
                rest /= b(i);
                row_ok &= (0..d(i)).contains(&g);
                addr = addr.wrapping_add((g as u64).wrapping_mul(stride(i)));
            }
            // The in-range run of this row, read at once.
            let (lo, hi) = (x0.max(0), (x0 + n).min(d(0)));
            if row_ok && lo < hi {
                let off = ((lo - x0) as usize) * e;
                let len = (hi - lo) as usize * e;
                let at = addr + lo as u64 * e as u64;
                self.mem
                    .read(at, &mut row[off..off + len])
                    .map_err(|m| format!("cp.async.bulk.tensor reads outside its tensor: {m}"))?;
                self.counters.global_bytes_read += len as u64;
            }
        }
        Ok(out)
    }

    /// The tensor map a TMA operand points at: a kernel parameter (`cvta.param` of the
    /// parameter's address, or the param-space address itself) or global memory.
    fn read_tensor_map(
        &self,
        w: &Warp,
        o: &Operand,
        l: usize,
        ctaid: (u32, u32, u32),
        shared: &SharedMem,
    ) -> R<TensorMap> {
        let a = self.addr(w, o, l, ctaid)?;
        let mut bytes = [0u8; TENSOR_MAP_BYTES];
        match self.locate(Space::Generic, a, shared)? {
            (Space::Param, off) => {
                let off = off as usize;
                let src = self
                    .params
                    .get(off..off + TENSOR_MAP_BYTES)
                    .ok_or_else(|| {
                        format!("tensor map at param offset {off} beyond the parameters")
                    })?;
                bytes.copy_from_slice(src);
            }
            (Space::Global, g) => self.mem.read(g, &mut bytes)?,
            (s, _) => return Err(format!("a tensor map in {s:?} memory")),
        }
        if a % 64 != 0 {
            return Err(format!("tensor map at 0x{a:x} is not 64-byte aligned"));
        }
        TensorMap::decode_sim(&bytes)
    }
}

/// Marks the lanes of `waiting` as waiting (they stay at this instruction).
pub(super) fn park_waiting(w: &mut Warp, waiting: u32) {
    for l in lanes_of(waiting) {
        w.st[l] = St::Wait;
    }
}
