//! Memory accesses of a launch: resolving a state space and address, loads, stores and
//! atomics through the sanitizer's checks, and `ldmatrix`'s row gathers.

use super::counters::bank_conflicts;
use super::exec::{f32b, Launch, Warp, R};
use super::fpmath::ftz32;
use super::intmath::{ibin, mask};
use super::ir::{AtomOp, Operand, Space, Ty};
use super::memory::{SharedMem, LOCAL_WINDOW, PARAM_WINDOW, SHARED_WINDOW};
use super::warp_ops::ldmatrix_fragment;

impl<'a> Launch<'a> {
    /// Resolves `space` + address to where the bytes live.
    #[inline(always)]
    pub(super) fn locate(&self, space: Space, a: u64, shared: &SharedMem) -> R<(Space, u64)> {
        Ok(match space {
            Space::Generic => {
                if a >= SHARED_WINDOW && a < SHARED_WINDOW + shared.data.len() as u64 {
                    (Space::Shared, a - SHARED_WINDOW)
                } else if a >= LOCAL_WINDOW && a < LOCAL_WINDOW + self.k.local_bytes as u64 {
                    (Space::Local, a - LOCAL_WINDOW)
                } else if a >= PARAM_WINDOW && a < PARAM_WINDOW + self.params.len() as u64 {
                    (Space::Param, a - PARAM_WINDOW)
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
    pub(super) fn load(
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
        if !is_aligned(a, len) {
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

    pub(super) fn store(
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
        if !is_aligned(a, len) {
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
    pub(super) fn atomic(
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
        if !is_aligned(addr, size) {
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
    pub(super) fn ldmatrix(
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
        let num = (num as usize).min(4);
        let mut mats = [[[0u16; 8]; 8]; 4];
        let mut addrs = [0u64; 32];
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
            addrs[lane] = a;
        }
        self.counters.shared_bank_conflicts += bank_conflicts(&addrs[..8 * num], 16);
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

pub(super) fn local_range(a: u64, len: usize, size: usize) -> R<usize> {
    if a.checked_add(len as u64).is_some_and(|e| e <= size as u64) {
        Ok(a as usize)
    } else {
        Err(format!(
            "local address 0x{a:x} (+{len} bytes) is outside the thread's {size} bytes of \
             local memory"
        ))
    }
}

pub(super) fn space_name(s: Space) -> &'static str {
    match s {
        Space::Generic => "generic",
        Space::Global => "global",
        Space::Shared => "shared",
        Space::Param => "param",
        Space::Const => "const",
        Space::Local => "local",
    }
}

/// Whether `a` is a multiple of `len` (a power of two: every PTX access size is).
#[inline(always)]
pub(super) fn is_aligned(a: u64, len: usize) -> bool {
    a & (len as u64 - 1) == 0
}
