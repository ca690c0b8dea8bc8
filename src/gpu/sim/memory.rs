//! Global memory (allocations with bounds, fresh bytes a NaN pattern) and one CTA's shared
//! memory with its sanitizer: bounds, cp.async destinations pending until their wait, and a
//! race detector for accesses from different warps between two barriers.

use std::collections::BTreeMap;

/// Byte that fresh global and shared memory is filled with: 0xFFFFFFFF is a NaN as f32 and
/// f64 and -1 as an integer, so reading memory nobody wrote shows.
pub const POISON: u8 = 0xff;

/// First global address handed out; small integers are never valid pointers.
const GLOBAL_BASE: u64 = 0x10_0000_0000;
/// Each allocation is followed by an unmapped gap so an overrun never lands in a neighbour.
const GUARD: u64 = 4096;

/// Start of the shared window in the generic address space (`cvta.shared`).
pub const SHARED_WINDOW: u64 = 0x7f00_0000_0000;
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

/// What the race detector remembers of one shared byte in the current barrier interval.
#[derive(Clone, Copy)]
struct Shadow {
    w_epoch: u32,
    w_tid: u32,
    r_epoch: u32,
    r_tid: u32,
    /// A reader of this epoch from a different warp than `r_tid`'s, if any.
    r2_tid: u32,
    pending: bool,
    /// Written through the generic proxy (a store or a cp.async) and not yet fenced for the
    /// async proxy by the writing warp.
    unfenced: bool,
}

const FRESH: Shadow = Shadow {
    w_epoch: 0,
    w_tid: NONE,
    r_epoch: 0,
    r_tid: NONE,
    r2_tid: NONE,
    pending: false,
    unfenced: false,
};

/// One CTA's shared memory. Threads are named by their linear index in the CTA; the warp
/// is `tid / 32`. The epoch counts barrier intervals.
pub struct SharedMem {
    /// The bytes.
    pub data: Vec<u8>,
    shadow: Vec<Shadow>,
    /// Current barrier interval (starts at 1 for each CTA).
    pub epoch: u32,
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
        }
    }

    /// Restores the fresh state for the next CTA.
    pub fn reset(&mut self) {
        self.data.fill(POISON);
        self.shadow.fill(FRESH);
        self.epoch = 1;
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

    /// Records a read by thread `tid`; a race if another warp wrote these bytes in this
    /// barrier interval, an error if a cp.async into them has not been waited for.
    pub fn note_read(&mut self, addr: usize, len: usize, tid: u32) -> Result<(), SharedFault> {
        let epoch = self.epoch;
        for i in addr..addr + len {
            let s = &mut self.shadow[i];
            if s.pending {
                return Err(SharedFault {
                    msg: format!(
                        "thread {tid} reads shared address 0x{i:x}, the destination of a \
                         cp.async not yet waited for (cp.async.wait_group)"
                    ),
                });
            }
            if s.w_epoch == epoch && s.w_tid / 32 != tid / 32 {
                return Err(race(i, "reads", tid, "wrote", s.w_tid));
            }
            if s.r_epoch != epoch {
                s.r_epoch = epoch;
                s.r_tid = tid;
                s.r2_tid = NONE;
            } else if s.r_tid / 32 != tid / 32 && s.r2_tid == NONE {
                s.r2_tid = tid;
            }
        }
        Ok(())
    }

    /// Records a write by thread `tid`; a race if another warp read or wrote these bytes in
    /// this barrier interval.
    pub fn note_write(&mut self, addr: usize, len: usize, tid: u32) -> Result<(), SharedFault> {
        let epoch = self.epoch;
        for i in addr..addr + len {
            let s = &mut self.shadow[i];
            if s.w_epoch == epoch && s.w_tid / 32 != tid / 32 {
                return Err(race(i, "writes", tid, "wrote", s.w_tid));
            }
            if s.r_epoch == epoch {
                if s.r_tid / 32 != tid / 32 {
                    return Err(race(i, "writes", tid, "read", s.r_tid));
                }
                if s.r2_tid != NONE && s.r2_tid / 32 != tid / 32 {
                    return Err(race(i, "writes", tid, "read", s.r2_tid));
                }
            }
            s.w_epoch = epoch;
            s.w_tid = tid;
            s.unfenced = true;
        }
        Ok(())
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

fn race(addr: usize, what: &str, tid: u32, other_did: &str, other: u32) -> SharedFault {
    SharedFault {
        msg: format!(
            "shared-memory race at shared address 0x{addr:x}: thread {tid} (warp {}) {what} \
             it after thread {other} (warp {}) {other_did} it, with no bar.sync between",
            tid / 32,
            other / 32
        ),
    }
}
