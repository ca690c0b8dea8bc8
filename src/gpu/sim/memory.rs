//! Global memory (allocations with bounds, fresh bytes a NaN pattern) and one CTA's shared
//! memory with its sanitizer: bounds, cp.async destinations pending until their wait, and a
//! race detector for accesses from different warps between two barriers.

use std::collections::BTreeMap;

use super::mbarrier::{join, Clocks, Mbarrier};

/// Byte that fresh global and shared memory is filled with: 0xFFFFFFFF is a NaN as f32 and
/// f64 and -1 as an integer, so reading memory nobody wrote shows.
pub const POISON: u8 = 0xff;

/// First global address handed out; small integers are never valid pointers.
const GLOBAL_BASE: u64 = 0x10_0000_0000;
/// Each allocation is followed by an unmapped gap so an overrun never lands in a neighbour.
const GUARD: u64 = 4096;

/// Start of the shared window in the generic address space (`cvta.shared`).
pub const SHARED_WINDOW: u64 = 0x7f00_0000_0000;
/// Start of the kernel-parameter window in the generic address space (`cvta.param`).
pub const PARAM_WINDOW: u64 = 0x7d00_0000_0000;
/// Start of the (per-thread) local window in the generic address space (`cvta.local`).
pub const LOCAL_WINDOW: u64 = 0x7e00_0000_0000;

/// The global memory of one device.
#[derive(Default)]
pub struct GlobalMem {
    allocs: BTreeMap<u64, Vec<u8>>,
    next: u64,
}

impl GlobalMem {
    /// The address the next [`GlobalMem::alloc`] will return.
    pub fn next_base(&self) -> u64 {
        if self.next == 0 {
            GLOBAL_BASE
        } else {
            self.next
        }
    }

    /// A fresh allocation of `bytes` (at least 1), filled with [`POISON`].
    pub fn alloc(&mut self, bytes: usize) -> u64 {
        let base = self.next_base();
        let len = bytes.max(1) as u64;
        self.next = (base + len).div_ceil(256) * 256 + GUARD;
        self.allocs.insert(base, vec![POISON; bytes]);
        base
    }

    /// Releases the allocation starting at `base`.
    pub fn free(&mut self, base: u64) -> Result<(), String> {
        self.allocs
            .remove(&base)
            .map(|_| ())
            .ok_or_else(|| format!("free of 0x{base:x}, which is not the start of an allocation"))
    }

    /// Where `[addr, addr + len)` lies: its allocation's base and size and the offset of
    /// `addr` in it, or the error naming what it missed.
    fn locate(base_len: Option<(u64, usize)>, addr: u64, len: usize) -> Result<usize, String> {
        let Some((base, size)) = base_len else {
            return Err(format!(
                "global address 0x{addr:x} (+{len} bytes) is in no allocation"
            ));
        };
        let off = addr - base;
        if off + len as u64 <= size as u64 {
            return Ok(off as usize);
        }
        Err(format!(
            "global address 0x{addr:x} (+{len} bytes) is outside the allocation at \
             0x{base:x} of {size} bytes (offset {off})"
        ))
    }

    /// Copies device bytes at `addr` into `out`.
    pub fn read(&self, addr: u64, out: &mut [u8]) -> Result<(), String> {
        let found = self.allocs.range(..=addr).next_back();
        let off = Self::locate(found.map(|(&b, v)| (b, v.len())), addr, out.len())?;
        let v = found.map_or(&[][..], |(_, v)| &v[..]);
        out.copy_from_slice(&v[off..off + out.len()]);
        Ok(())
    }

    /// Copies `data` to device memory at `addr`.
    pub fn write(&mut self, addr: u64, data: &[u8]) -> Result<(), String> {
        let found = self.allocs.range_mut(..=addr).next_back();
        let Some((&base, v)) = found else {
            return Self::locate(None, addr, data.len()).map(|_| ());
        };
        let off = Self::locate(Some((base, v.len())), addr, data.len())?;
        v[off..off + data.len()].copy_from_slice(data);
        Ok(())
    }
}

/// No thread.
const NONE: u32 = u32::MAX;

/// Marks a writer that is not a thread but the asynchronous copies completing on one
/// mbarrier (`AGENT | component`).
pub const AGENT: u32 = 1 << 31;

/// The clock component of a thread id (its warp) or of an agent.
fn component(tid: u32) -> usize {
    if tid != NONE && tid & AGENT != 0 {
        (tid & !AGENT) as usize
    } else {
        (tid / 32) as usize
    }
}

/// What the race detector remembers of one shared byte.
#[derive(Clone, Copy)]
struct Shadow {
    w_epoch: u32,
    w_tid: u32,
    /// The writer's own clock at the write.
    w_clock: u32,
    r_epoch: u32,
    r_tid: u32,
    r_clock: u32,
    /// A reader of this epoch from a different warp than `r_tid`'s, if any.
    r2_tid: u32,
    r2_clock: u32,
    pending: bool,
    /// Written through the generic proxy (a store or a cp.async) and not yet fenced for the
    /// async proxy by the writing warp.
    unfenced: bool,
    /// Part of an initialised mbarrier object.
    mbarrier: bool,
}

const FRESH: Shadow = Shadow {
    w_epoch: 0,
    w_tid: NONE,
    w_clock: 0,
    r_epoch: 0,
    r_tid: NONE,
    r_clock: 0,
    r2_tid: NONE,
    r2_clock: 0,
    pending: false,
    unfenced: false,
    mbarrier: false,
};

/// One CTA's shared memory. Threads are named by their linear index in the CTA; the warp
/// is `tid / 32`. The epoch counts barrier intervals; within one, accesses of different
/// warps are ordered only through mbarriers ([`Clocks`]).
pub struct SharedMem {
    /// The bytes.
    pub data: Vec<u8>,
    shadow: Vec<Shadow>,
    /// Current barrier interval (starts at 1 for each CTA).
    pub epoch: u32,
    /// The CTA's vector clocks.
    pub clocks: Clocks,
    /// The initialised mbarriers by shared address.
    pub mbarriers: BTreeMap<usize, Mbarrier>,
}

/// A race or misuse found in shared memory: the message and the other thread involved.
pub struct SharedFault {
    /// What happened.
    pub msg: String,
}

impl SharedMem {
    /// `bytes` of shared memory, filled with [`POISON`].
    pub fn new(bytes: usize) -> Self {
        SharedMem {
            data: vec![POISON; bytes],
            shadow: vec![FRESH; bytes],
            epoch: 1,
            clocks: Clocks::default(),
            mbarriers: BTreeMap::new(),
        }
    }

    /// Restores the fresh state for the next CTA.
    pub fn reset(&mut self) {
        self.data.fill(POISON);
        self.shadow.fill(FRESH);
        self.epoch = 1;
        self.clocks = Clocks::default();
        self.mbarriers.clear();
    }

    /// Starts the clocks of a CTA of `warps` warps.
    pub fn start_clocks(&mut self, warps: usize) {
        self.clocks.reset(warps);
    }

    /// A `bar.sync` of the whole CTA: every warp's clock becomes the join of all of them
    /// (what any warp did before the barrier happens before what any does after).
    pub fn barrier(&mut self, warps: usize) {
        self.epoch += 1;
        if self.clocks.is_empty() {
            return;
        }
        let mut all = Vec::new();
        for w in 0..warps {
            join(&mut all, self.clocks.clock(w));
        }
        for w in 0..warps {
            self.clocks.acquire(w, &all);
            self.clocks.tick(w);
        }
    }

    /// Bounds check of `[addr, addr + len)`.
    pub fn check(&self, addr: u64, len: usize) -> Result<usize, String> {
        if addr
            .checked_add(len as u64)
            .is_some_and(|e| e <= self.data.len() as u64)
        {
            Ok(addr as usize)
        } else {
            Err(format!(
                "shared address 0x{addr:x} (+{len} bytes) is outside the CTA's {} bytes of \
                 shared memory",
                self.data.len()
            ))
        }
    }

    /// The clock time of the component of `tid` (0 before the clocks started).
    fn now(&self, tid: u32) -> u32 {
        let c = component(tid);
        if c < self.clocks.len() {
            self.clocks.now(c)
        } else {
            0
        }
    }

    /// Whether the access of `by` at `t` happens before what `tid` does now.
    fn ordered(&self, by: u32, t: u32, tid: u32) -> bool {
        let (b, c) = (component(by), component(tid));
        b == c || (c < self.clocks.len() && self.clocks.ordered(b, t, c))
    }

    /// Records a read by thread `tid`; a race if another warp wrote these bytes in this
    /// barrier interval (or an asynchronous copy wrote them at any time) and no mbarrier
    /// ordered that write before this read, an error if a cp.async into them has not been
    /// waited for.
    pub fn note_read(&mut self, addr: usize, len: usize, tid: u32) -> Result<(), SharedFault> {
        let epoch = self.epoch;
        let now = self.now(tid);
        for i in addr..addr + len {
            let s = self.shadow[i];
            if s.mbarrier {
                return Err(mbarrier_access(i, "reads", tid));
            }
            if s.pending {
                return Err(SharedFault {
                    msg: format!(
                        "thread {tid} reads shared address 0x{i:x}, the destination of a \
                         cp.async not yet waited for (cp.async.wait_group)"
                    ),
                });
            }
            let agent = s.w_tid != NONE && s.w_tid & AGENT != 0;
            if (s.w_epoch == epoch || agent) && !self.ordered(s.w_tid, s.w_clock, tid) {
                return Err(if agent {
                    self.unwaited_copy(i, tid, s.w_tid)
                } else {
                    race(i, "reads", tid, "wrote", s.w_tid)
                });
            }
            let (r_ordered, r2_ordered) = (
                self.ordered(s.r_tid, s.r_clock, tid),
                s.r2_tid == NONE || self.ordered(s.r2_tid, s.r2_clock, tid),
            );
            let s = &mut self.shadow[i];
            if s.r_epoch != epoch || (r_ordered && r2_ordered) {
                // The earlier reads of this interval (if any) happen before this one: this
                // read stands for them.
                s.r_epoch = epoch;
                s.r_tid = tid;
                s.r_clock = now;
                s.r2_tid = NONE;
            } else if component(s.r_tid) == component(tid) {
                s.r_clock = now;
            } else if s.r2_tid == NONE || component(s.r2_tid) == component(tid) || r2_ordered {
                s.r2_tid = tid;
                s.r2_clock = now;
            }
        }
        Ok(())
    }

    /// Records a write by thread `tid` (or by an agent, `AGENT | component`); a race if
    /// another warp read or wrote these bytes in this barrier interval and no mbarrier
    /// ordered that access before this write.
    pub fn note_write(&mut self, addr: usize, len: usize, tid: u32) -> Result<(), SharedFault> {
        let epoch = self.epoch;
        let now = self.now(tid);
        for i in addr..addr + len {
            let s = self.shadow[i];
            if s.mbarrier {
                return Err(mbarrier_access(i, "writes", tid));
            }
            let w_agent = s.w_tid != NONE && s.w_tid & AGENT != 0;
            if (s.w_epoch == epoch || w_agent) && !self.ordered(s.w_tid, s.w_clock, tid) {
                return Err(race(i, "writes", tid, "wrote", s.w_tid));
            }
            if s.r_epoch == epoch {
                if !self.ordered(s.r_tid, s.r_clock, tid) {
                    return Err(race(i, "writes", tid, "read", s.r_tid));
                }
                if s.r2_tid != NONE && !self.ordered(s.r2_tid, s.r2_clock, tid) {
                    return Err(race(i, "writes", tid, "read", s.r2_tid));
                }
            }
            let s = &mut self.shadow[i];
            s.w_epoch = epoch;
            s.w_tid = tid;
            s.w_clock = now;
            s.unfenced = tid & AGENT == 0;
        }
        Ok(())
    }

    fn unwaited_copy(&self, addr: usize, tid: u32, agent: u32) -> SharedFault {
        let c = component(agent);
        let at = self
            .mbarriers
            .iter()
            .find(|(_, m)| m.agent == c)
            .map_or(String::from("?"), |(a, _)| format!("0x{a:x}"));
        SharedFault {
            msg: format!(
                "thread {tid} (warp {}) reads shared address 0x{addr:x}, written by an \
                 asynchronous copy that completes on the mbarrier at {at}, without waiting \
                 for that mbarrier's phase (mbarrier.try_wait)",
                tid / 32
            ),
        }
    }

    /// An error if thread `tid` uses the mbarrier at `addr` before its `mbarrier.init` (by
    /// another warp, in this barrier interval) is ordered before the use.
    pub fn check_mbarrier_use(&self, addr: usize, tid: u32) -> Result<(), String> {
        let s = self.shadow[addr];
        if s.w_epoch == self.epoch && !self.ordered(s.w_tid, s.w_clock, tid) {
            return Err(format!(
                "thread {tid} (warp {}) uses the mbarrier at shared address 0x{addr:x}, \
                 initialised by {} with no bar.sync or mbarrier wait between",
                tid / 32,
                who(s.w_tid)
            ));
        }
        Ok(())
    }

    /// Marks `[addr, addr + 8)` as an mbarrier object (or releases it, `mbarrier.inval`).
    pub fn set_mbarrier(&mut self, addr: usize, on: bool) {
        for s in &mut self.shadow[addr..addr + 8] {
            s.mbarrier = on;
        }
    }
    /// Whether a cp.async into any of these bytes is unfinished.
    pub fn any_pending(&self, addr: usize, len: usize) -> bool {
        self.shadow[addr..addr + len].iter().any(|s| s.pending)
    }

    /// `fence.proxy.async` by warp `warp`: the bytes it wrote last become visible to the
    /// async proxy.
    pub fn fence_async(&mut self, warp: u32) {
        for s in &mut self.shadow {
            if s.unfenced && s.w_tid / 32 == warp {
                s.unfenced = false;
            }
        }
    }

    /// An error if the async proxy (a `wgmma` operand read) would not see the last write of
    /// these bytes: written by a store or cp.async with no `fence.proxy.async` after it.
    pub fn check_async_visible(&self, addr: usize, len: usize) -> Result<(), String> {
        for (i, s) in self.shadow[addr..addr + len].iter().enumerate() {
            if s.unfenced {
                return Err(format!(
                    "wgmma reads shared address 0x{:x}, written by thread {} with no \
                     fence.proxy.async between the write and the read",
                    addr + i,
                    s.w_tid
                ));
            }
        }
        Ok(())
    }

    /// Marks bytes as the destination of an unfinished cp.async (or finishes it).
    pub fn set_pending(&mut self, addr: usize, len: usize, pending: bool) {
        for s in &mut self.shadow[addr..addr + len] {
            s.pending = pending;
        }
    }
}

fn mbarrier_access(addr: usize, what: &str, tid: u32) -> SharedFault {
    SharedFault {
        msg: format!(
            "thread {tid} {what} shared address 0x{addr:x}, which holds an initialised \
             mbarrier: only mbarrier instructions may touch it until mbarrier.inval"
        ),
    }
}

/// How a thread or an agent is named in a message.
fn who(tid: u32) -> String {
    if tid & AGENT != 0 {
        "an asynchronous copy".to_string()
    } else {
        format!("thread {tid} (warp {})", tid / 32)
    }
}

fn race(addr: usize, what: &str, tid: u32, other_did: &str, other: u32) -> SharedFault {
    SharedFault {
        msg: format!(
            "shared-memory race at shared address 0x{addr:x}: {} {what} it after {} \
             {other_did} it, with no bar.sync or mbarrier wait between",
            who(tid),
            who(other)
        ),
    }
}
