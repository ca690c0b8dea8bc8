//! Hopper's warpgroup matrix multiply, `wgmma.mma_async` with both operands in shared memory,
//! and the instructions around it (`wgmma.fence`, `wgmma.commit_group`, `wgmma.wait_group`,
//! `fence.proxy.async`), written from the PTX ISA's "Asynchronous Warpgroup Level Matrix"
//! sections: the shared-memory matrix descriptor, the canonical no-swizzle K-major layout
//! and the accumulator fragment of `.m64nNk16`.
//!
//! A warpgroup is four consecutive warps of the CTA (the first a multiple of 4); an
//! `m64nNk16` gives warp `r` of it rows `16 r .. 16 r + 15` of the 64-row result. The
//! interpreter runs warps one at a time, so each warp computes its own 16 rows when it issues
//! the instruction, and the CTA's end checks that the four warps of each warpgroup issued the
//! same sequence (shape and descriptors).
//!
//! The asynchronous part is modelled so that a kernel that leans on timing fails here:
//! - the result reaches the accumulator registers only at the `wgmma.wait_group` that
//!   retires its group; until then those registers read as never written, and a write to
//!   them by another instruction is an error at the wait;
//! - the shared memory an instruction reads is remembered, and the wait that retires it
//!   fails if any of those bytes changed in between, or a cp.async into them is under way
//!   (the hardware may read them at any time until then, and the copy may land at any time);
//! - a `wgmma.mma_async` needs a `wgmma.fence` since the warp's last `wgmma.commit_group`
//!   (stricter than the ISA, which asks for the fence only after other instructions touched
//!   the registers: every kernel here fences each batch);
//! - shared memory written through the generic proxy (stores, cp.async) must be fenced with
//!   `fence.proxy.async` by the writing warp before a `wgmma` reads it.
//!
//! Both operand majors (K-major, and MN-major through `imm-trans-a/b` = 1) are read in the
//! canonical no-swizzle layout, and A may come from registers (each warp's 16 rows as the
//! `mma.m16n8k16` A fragment; those registers must keep their values until the instruction
//! retires). Either major may also be in the 128-byte swizzled layout that a TMA copy with
//! 128-byte swizzling writes; the other swizzled layouts and the other types are refused with
//! an error naming them.

use std::collections::VecDeque;

use super::exec::{f32b, Launch, Warp, R};
use super::ir::Operand;
use super::memory::SharedMem;
use super::warp_ops::mma_a_pos;
use crate::gpu::tensor_map::{swizzle, Swizzle};

/// The fields of a 64-bit shared-memory matrix descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SmemDesc {
    /// Start address in shared memory, in bytes (bits 0-13, in 16-byte units).
    pub start: u32,
    /// Leading dimension byte offset (bits 16-29, in 16-byte units): between core matrices
    /// adjacent along K, for a K-major operand without swizzling.
    pub lbo: u32,
    /// Stride dimension byte offset (bits 32-45, in 16-byte units): between core matrices
    /// adjacent along M or N.
    pub sbo: u32,
    /// Matrix base offset (bits 49-51).
    pub base_offset: u32,
    /// Swizzle mode (bits 62-63): 0 none, 1 128-byte, 2 64-byte, 3 32-byte.
    pub swizzle: u32,
}

impl SmemDesc {
    /// Splits a descriptor into its fields.
    pub fn decode(d: u64) -> SmemDesc {
        SmemDesc {
            start: ((d & 0x3fff) << 4) as u32,
            lbo: (((d >> 16) & 0x3fff) << 4) as u32,
            sbo: (((d >> 32) & 0x3fff) << 4) as u32,
            base_offset: ((d >> 49) & 0x7) as u32,
            swizzle: ((d >> 62) & 0x3) as u32,
        }
    }

    /// Byte address of 16-bit element (`mn`, `k`) of an MN-major (transposed) operand in the
    /// canonical no-swizzle layout: core matrices of 8 k-rows of 8 contiguous MN elements
    /// (16 bytes), 128 contiguous bytes; `mn / 8` steps by the stride byte offset, `k / 8` by
    /// the leading byte offset (the ISA's `((8, m), (8, k)) : ((1, SBO), (8, LBO))` in
    /// elements).
    pub fn mnmajor_b16(&self, mn: u32, k: u32) -> u32 {
        self.start + (mn % 8) * 2 + (mn / 8) * self.sbo + (k % 8) * 16 + (k / 8) * self.lbo
    }

    /// Byte address of 16-bit element (`row`, `k`) of a K-major operand in the 128-byte
    /// swizzled layout (descriptor swizzle mode 1): atoms of 8 rows of 128 bytes (64
    /// elements), row `row % 8` of an atom 128 bytes after the one before, atoms along M or N
    /// at the stride byte offset, and each 16-byte chunk stored where the 128-byte swizzle of
    /// its absolute address puts it (so the start may step along K inside an atom, 32 bytes
    /// per k16 instruction, as the hardware applies the swizzle after adding).
    pub fn kmajor_sw128_b16(&self, row: u32, k: u32) -> u32 {
        let linear = self.start + (row / 8) * self.sbo + (row % 8) * 128 + k * 2;
        swizzle(linear, Swizzle::B128)
    }

    /// Byte address of 16-bit element (`mn`, `k`) of an MN-major (transposed) operand in the
    /// 128-byte swizzled layout (descriptor swizzle mode 1, `imm-trans` 1): atoms of 8
    /// k-rows of 128 bytes, each row 64 consecutive MN elements, row `k % 8` of an atom 128
    /// bytes after the one before; atoms along K at the stride byte offset, along MN (64
    /// elements each) at the leading byte offset (the ISA's `((8, 8, m), (8, k)) : ((1, 8,
    /// LBO), (64, SBO))` in elements); each 16-byte chunk stored where the 128-byte swizzle
    /// of its absolute address puts it. A TMA copy of a box of 64 MN elements by `k` rows with
    /// 128-byte swizzling writes one column of such atoms (SBO 1,024).
    pub fn mnmajor_sw128_b16(&self, mn: u32, k: u32) -> u32 {
        let linear =
            self.start + (mn / 64) * self.lbo + (k / 8) * self.sbo + (k % 8) * 128 + (mn % 64) * 2;
        swizzle(linear, Swizzle::B128)
    }

    /// Byte address of 16-bit element (`row`, `k`) of a K-major operand in the canonical
    /// no-swizzle layout: 8 x 8-element core matrices of 8 rows of 16 contiguous bytes;
    /// `row / 8` steps by the stride byte offset, `k / 8` by the leading byte offset.
    pub fn kmajor_b16(&self, row: u32, k: u32) -> u32 {
        self.start + (row % 8) * 16 + (row / 8) * self.sbo + (k % 8) * 2 + (k / 8) * self.lbo
    }
}

/// Row and column of accumulator `i` (0 .. N / 2) of lane `lane` of warp `rank` (0..4) of
/// the warpgroup, in an `.m64nNk16` f32 result: the m16n8 C fragment of warp `rank`'s 16
/// rows, once per 8 columns (registers `4 j .. 4 j + 3` hold columns `8 j .. 8 j + 7`).
pub fn accumulator_pos(rank: u32, lane: u32, i: u32) -> (u32, u32) {
    let (g, t) = (lane / 4, lane % 4);
    let row = 16 * rank + g + 8 * ((i / 2) % 2);
    let col = 8 * (i / 4) + 2 * t + (i % 2);
    (row, col)
}

/// One warp's 16 rows of `D = A B + C` (`scale_d` false: `D = A B`) for `.m64nNk16`
/// with bf16 `a` (`[16][16]`: the warp's rows of A, by k) and `b` (`[n][16]`: B's columns,
/// by k), f32 `c[lane][i]`: each output is the exact dot product plus `c`, rounded once to
/// f32 (as `mma_m16n8k16`: compare with a GPU within a few ulps).
pub fn wgmma_rows(
    rank: u32,
    a: &[[f64; 16]; 16],
    b: &[[f64; 16]],
    c: Option<&[Vec<f32>]>,
) -> Vec<Vec<f32>> {
    let n = b.len() as u32;
    (0..32u32)
        .map(|lane| {
            (0..n / 2)
                .map(|i| {
                    let (row, col) = accumulator_pos(rank, lane, i);
                    let ar = &a[(row - 16 * rank) as usize];
                    let bc = &b[col as usize];
                    // Products of bf16 values are exact in f64; 16 of them plus c lose a few
                    // f64 ulps at most, far below one f32 ulp.
                    let mut s = c.map_or(0.0, |c| c[lane as usize][i as usize] as f64);
                    for k in 0..16 {
                        s += ar[k] * bc[k];
                    }
                    s as f32
                })
                .collect()
        })
        .collect()
}

/// The log's A "descriptor" of an instruction that takes A from registers.
const A_IN_REGISTERS: u64 = u64::MAX;

/// One issued `wgmma.mma_async` whose result has not been written yet.
pub(super) struct PendingWgmma {
    /// Destination registers.
    dregs: Vec<u32>,
    /// The result, `values[lane][i]`.
    values: Vec<Vec<f32>>,
    /// The shared memory read, one bf16 element at a time, as it was at issue.
    read: Vec<(usize, u16)>,
    /// The A fragment's registers (register, lane, value) when A comes from registers: they
    /// must hold the same values until the instruction retires.
    a_held: Vec<(u32, usize, u32)>,
    /// Instruction index, for messages.
    pc: u32,
}

/// A warp's `wgmma` state.
#[derive(Default)]
pub(super) struct WgmmaState {
    fenced: bool,
    uncommitted: Vec<PendingWgmma>,
    groups: VecDeque<Vec<PendingWgmma>>,
    /// (shape N, A descriptor, B descriptor) of every `wgmma.mma_async` issued, for the
    /// warpgroup check at the CTA's end.
    pub(super) log: Vec<(u16, u64, u64)>,
}

impl WgmmaState {
    pub(super) fn reset(&mut self) {
        self.fenced = false;
        self.uncommitted.clear();
        self.groups.clear();
        self.log.clear();
    }

    /// The newest pending value of register `r` for `lane`, if an unretired instruction
    /// writes it.
    fn pending_value(&self, r: u32, lane: usize) -> Option<f32> {
        let all = self.groups.iter().flatten().chain(self.uncommitted.iter());
        let mut found = None;
        for p in all {
            if let Some(i) = p.dregs.iter().position(|&d| d == r) {
                found = Some(p.values[lane][i]);
            }
        }
        found
    }

    fn is_pending(&self, r: u32) -> bool {
        let all = self.groups.iter().flatten().chain(self.uncommitted.iter());
        all.into_iter().any(|p| p.dregs.contains(&r))
    }
}

/// Checks that the four warps of each warpgroup issued the same sequence of `what` (each
/// warp's log of it, in warp order): the interpreter runs them separately, the hardware as
/// one, so `why` (what the hardware needs) is part of the error.
pub(super) fn check_warpgroups<T: PartialEq>(
    logs: &[&[T]],
    what: &str,
    why: &str,
) -> Result<(), String> {
    for (g, group) in logs.chunks(4).enumerate() {
        for (r, log) in group.iter().enumerate().skip(1) {
            if *log != group[0] {
                let at = log
                    .iter()
                    .zip(group[0].iter())
                    .position(|(x, y)| x != y)
                    .unwrap_or(log.len().min(group[0].len()));
                return Err(format!(
                    "warp {r} of warpgroup {g} issued a different {what} sequence from warp 0 \
                     of it (they differ at instruction {at} of the sequence; {why})"
                ));
            }
        }
    }
    Ok(())
}

impl<'a> Launch<'a> {
    /// `wgmma.mma_async.sync.aligned.m64n{n}k16.f32.bf16.bf16`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn wgmma_issue(
        &mut self,
        w: &mut Warp,
        n: u16,
        ops: &[Operand],
        pc: u32,
        ctaid: (u32, u32, u32),
        shared: &mut SharedMem,
        cur: &mut Option<u32>,
    ) -> R<()> {
        let (bx, by, bz) = self.cfg.block;
        if !(bx * by * bz).is_multiple_of(128) {
            return Err(format!(
                "wgmma needs whole warpgroups of 128 threads; the CTA has {}",
                bx * by * bz
            ));
        }
        if !w.wgmma.fenced {
            return Err(
                "wgmma.mma_async without a wgmma.fence.sync.aligned since the warp's \
                        last wgmma.commit_group"
                    .into(),
            );
        }
        // Descriptors and scale-d are warp-uniform.
        let mut uniform = |o: &Operand, what: &str| -> R<u64> {
            let v0 = self.rd(w, o, 0, ctaid)?;
            for l in 1..32 {
                *cur = Some(l as u32);
                if self.rd(w, o, l, ctaid)? != v0 {
                    return Err(format!("wgmma.mma_async: the {what} differs between lanes"));
                }
            }
            Ok(v0)
        };
        let da = match &ops[1] {
            Operand::Vec(_) => A_IN_REGISTERS,
            o => uniform(o, "A descriptor")?,
        };
        let db = uniform(&ops[2], "B descriptor")?;
        let scale_d = uniform(&ops[3], "scale-d predicate")? != 0;
        let imm = |o: &Operand| match o {
            Operand::Imm(v) => *v as i64,
            _ => i64::MIN,
        };
        // A from registers: `d, {a0, a1, a2, a3}, b-desc, scale-d, imm-scale-a, imm-scale-b,
        // imm-trans-b` (no imm-trans-a).
        let a_regs = match &ops[1] {
            Operand::Vec(v) => Some(v.clone()),
            _ => None,
        };
        let (sa, sb) = (imm(&ops[4]), imm(&ops[5]));
        let (ta, tb) = if a_regs.is_some() {
            (0, imm(&ops[6]))
        } else {
            (imm(&ops[6]), imm(&ops[7]))
        };
        let sign = |s: i64| match s as i32 {
            1 => Ok(1.0),
            -1 => Ok(-1.0),
            v => Err(format!("wgmma.mma_async: imm-scale {v} must be 1 or -1")),
        };
        let (sa, sb) = (sign(sa)?, sign(sb)?);
        let major = |t: i64, what: &str| match t {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(format!(
                "wgmma.mma_async: imm-trans-{what} {v} must be 0 or 1"
            )),
        };
        let (a_mn, b_mn) = (major(ta, "a")?, major(tb, "b")?);
        let (a, b) = (SmemDesc::decode(da), SmemDesc::decode(db));
        let descs: &[(&str, SmemDesc, bool)] = if a_regs.is_some() {
            &[("B", b, b_mn)]
        } else {
            &[("A", a, a_mn), ("B", b, b_mn)]
        };
        for &(what, d, mn_major) in descs {
            let supported = d.swizzle == 0 || d.swizzle == 1;
            if !supported || d.base_offset != 0 {
                return Err(format!(
                    "wgmma.mma_async: the {what} descriptor asks for swizzle mode {} (base \
                     offset {}, {}-major); the interpreter supports the no-swizzle and the \
                     128-byte swizzled layouts with base offset 0 only",
                    d.swizzle,
                    d.base_offset,
                    if mn_major { "MN" } else { "K" }
                ));
            }
            // With base offset 0 the ISA has the 128-byte swizzle's 1024-byte pattern start
            // on a 1024-byte boundary; a start in its second to eighth 128-byte row would
            // need the base offset this model leaves out.
            if d.swizzle == 1 && (d.start >> 7) & 7 != 0 {
                return Err(format!(
                    "wgmma.mma_async: the {what} descriptor's 128-byte swizzled operand starts \
                     at shared byte 0x{:x}, in row {} of a 1024-byte swizzle pattern; with base \
                     offset 0 the pattern must start on a 1024-byte boundary (a k-step within \
                     a row, under 128 bytes, is allowed)",
                    d.start,
                    (d.start >> 7) & 7
                ));
            }
        }
        let rank = w.id % 4;
        let tid = w.id * 32;
        let mut read = Vec::new();
        // Element (mn, k) of an operand, MN-major when `mn_major` (the transposed form).
        let mut fetch = |d: &SmemDesc, mn_major: bool, mn: u32, k: u32| -> R<f64> {
            let at = match (mn_major, d.swizzle == 1) {
                (true, false) => d.mnmajor_b16(mn, k),
                (true, true) => d.mnmajor_sw128_b16(mn, k),
                (false, true) => d.kmajor_sw128_b16(mn, k),
                (false, false) => d.kmajor_b16(mn, k),
            } as u64;
            let i = shared.check(at, 2)?;
            shared.note_read(i, 2, tid).map_err(|f| f.msg)?;
            shared.check_async_visible(i, 2)?;
            let bits = u16::from_le_bytes([shared.data[i], shared.data[i + 1]]);
            read.push((i, bits));
            Ok(half::bf16::from_bits(bits).to_f64())
        };
        let mut am = [[0f64; 16]; 16];
        let mut a_held = Vec::new();
        if let Some(regs) = &a_regs {
            // The warp's 16 rows as the m16n8k16 A fragment: four b32 registers per lane, two
            // bf16 each (low half first).
            for l in 0..32u32 {
                *cur = Some(l);
                for (j, r) in regs.iter().enumerate() {
                    let r = r.ok_or("wgmma A fragment has a `_` sink")?;
                    let word = self.rd(w, &Operand::Reg(r), l as usize, ctaid)? as u32;
                    a_held.push((r, l as usize, word));
                    for half in 0..2u32 {
                        let (row, k) = mma_a_pos(l, 2 * j as u32 + half);
                        let bits = (word >> (16 * half)) as u16;
                        am[row][k] = sa * half::bf16::from_bits(bits).to_f64();
                    }
                }
            }
        } else {
            for (r, row) in am.iter_mut().enumerate() {
                for (k, v) in row.iter_mut().enumerate() {
                    *v = sa * fetch(&a, a_mn, 16 * rank + r as u32, k as u32)?;
                }
            }
        }
        let mut bm = vec![[0f64; 16]; n as usize];
        for (col, v) in bm.iter_mut().enumerate() {
            for (k, x) in v.iter_mut().enumerate() {
                *x = sb * fetch(&b, b_mn, col as u32, k as u32)?;
            }
        }
        let Operand::Vec(dv) = &ops[0] else {
            return Err("wgmma destination is a vector".into());
        };
        let dregs: Vec<u32> = dv
            .iter()
            .map(|r| r.ok_or_else(|| "wgmma destination has a `_` sink".to_string()))
            .collect::<R<_>>()?;
        let c = if scale_d {
            let mut c = vec![vec![0f32; dregs.len()]; 32];
            for (l, cl) in c.iter_mut().enumerate() {
                *cur = Some(l as u32);
                for (i, &r) in dregs.iter().enumerate() {
                    cl[i] = match w.wgmma.pending_value(r, l) {
                        Some(v) => v,
                        None => f32b(self.rd(w, &Operand::Reg(r), l, ctaid)?),
                    };
                }
            }
            Some(c)
        } else {
            None
        };
        let values = wgmma_rows(rank, &am, &bm, c.as_deref());
        for &r in &dregs {
            w.init[r as usize] = 0;
        }
        w.wgmma.log.push((n, da, db));
        w.wgmma.uncommitted.push(PendingWgmma {
            dregs,
            values,
            read,
            a_held,
            pc,
        });
        Ok(())
    }

    /// `wgmma.commit_group`: the warp's uncommitted instructions become one group.
    pub(super) fn wgmma_commit(&mut self, w: &mut Warp) {
        let g = std::mem::take(&mut w.wgmma.uncommitted);
        w.wgmma.groups.push_back(g);
        w.wgmma.fenced = false;
    }

    /// `wgmma.wait_group keep`: retires the oldest groups until `keep` remain.
    pub(super) fn wgmma_wait(&mut self, w: &mut Warp, keep: u32, shared: &SharedMem) -> R<()> {
        while w.wgmma.groups.len() > keep as usize {
            let g = w.wgmma.groups.pop_front().expect("len checked");
            for p in &g {
                let line = self.k.text[p.pc as usize].0;
                for &(i, bits) in &p.read {
                    // A cp.async issued into them may land at any moment before its wait.
                    let now = u16::from_le_bytes([shared.data[i], shared.data[i + 1]]);
                    if now != bits || shared.any_pending(i, 2) {
                        return Err(format!(
                            "shared memory at 0x{i:x}, read by the wgmma.mma_async at line \
                             {line}, was written (or a cp.async into it issued) before the \
                             wgmma.wait_group that retires it"
                        ));
                    }
                }
                for &(r, l, word) in &p.a_held {
                    let now = w.regs[r as usize * 32 + l] as u32;
                    if w.init[r as usize] & (1 << l) == 0 || now != word {
                        return Err(format!(
                            "register {}, holding A of the wgmma.mma_async at line {line}, was \
                             written before the wgmma.wait_group that retires it",
                            self.k.reg_names[r as usize]
                        ));
                    }
                }
                for &r in &p.dregs {
                    if w.init[r as usize] != 0 {
                        return Err(format!(
                            "register {} was written while the wgmma.mma_async at line {line} \
                             that writes it was in flight",
                            self.k.reg_names[r as usize]
                        ));
                    }
                }
            }
            // In issue order, so the newest result of a register wins; a register that an
            // instruction still in flight writes stays unwritten until that one retires.
            for p in &g {
                for (i, &r) in p.dregs.iter().enumerate() {
                    if w.wgmma.is_pending(r) {
                        continue;
                    }
                    for (l, vals) in p.values.iter().enumerate() {
                        self.wr_reg(w, r, l, vals[i].to_bits() as u64);
                    }
                }
            }
        }
        Ok(())
    }

    /// `wgmma.fence`.
    pub(super) fn wgmma_fence(&mut self, w: &mut Warp) {
        w.wgmma.fenced = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Descriptor fields, from bit positions the ISA's table gives.
    #[test]
    fn descriptor_fields_sit_at_their_bits() {
        let cases: [(u64, SmemDesc); 4] = [
            (
                0x0000_0040_0008_0040,
                SmemDesc {
                    start: 0x400,
                    lbo: 128,
                    sbo: 1024,
                    base_offset: 0,
                    swizzle: 0,
                },
            ),
            (
                0x4000_0000_0000_0000 | 0x3fff,
                SmemDesc {
                    start: 0x3fff0,
                    lbo: 0,
                    sbo: 0,
                    base_offset: 0,
                    swizzle: 1,
                },
            ),
            (
                0xc00e_0000_0000_0000,
                SmemDesc {
                    start: 0,
                    lbo: 0,
                    sbo: 0,
                    base_offset: 7,
                    swizzle: 3,
                },
            ),
            (
                // Bits 14-15, 30-31 and 46-48 are unused.
                0x0001_c000_c000_c000,
                SmemDesc {
                    start: 0,
                    lbo: 0,
                    sbo: 0,
                    base_offset: 0,
                    swizzle: 0,
                },
            ),
        ];
        for (bits, want) in cases {
            assert_eq!(SmemDesc::decode(bits), want, "{bits:#x}");
        }
    }

    /// The no-swizzle K-major layout `((8, m), (8, 2)) : ((16 B, SBO), (2 B, LBO))`.
    #[test]
    fn kmajor_layout_steps_by_row_in_core_matrix_then_sbo_and_lbo() {
        let d = SmemDesc {
            start: 4096,
            lbo: 128,
            sbo: 1024,
            base_offset: 0,
            swizzle: 0,
        };
        // (row, k, byte address)
        let table = [
            (0, 0, 4096),
            (0, 1, 4098),
            (0, 7, 4110),
            (1, 0, 4112),
            (7, 7, 4096 + 7 * 16 + 14),
            (0, 8, 4096 + 128),
            (8, 0, 4096 + 1024),
            (9, 9, 4096 + 1024 + 16 + 2 + 128),
            (63, 15, 4096 + 7 * 1024 + 7 * 16 + 128 + 14),
        ];
        for (row, k, at) in table {
            assert_eq!(d.kmajor_b16(row, k), at, "({row}, {k})");
        }
        // Other offsets: core matrices along K 256 bytes apart, row blocks 2,048.
        let e = SmemDesc {
            lbo: 256,
            sbo: 2048,
            ..d
        };
        assert_eq!(e.kmajor_b16(8, 8), 4096 + 2048 + 256);
    }

    /// The no-swizzle MN-major layout: 8 contiguous MN elements per 16-byte row, 8 k-rows per
    /// core matrix, then SBO along MN and LBO along K.
    #[test]
    fn mnmajor_layout_steps_by_mn_in_a_row_then_k_rows_then_sbo_and_lbo() {
        let d = SmemDesc {
            start: 2048,
            lbo: 128,
            sbo: 1024,
            base_offset: 0,
            swizzle: 0,
        };
        // (mn, k, byte address)
        let table = [
            (0, 0, 2048),
            (1, 0, 2050),
            (7, 0, 2062),
            (0, 1, 2064),
            (7, 7, 2048 + 14 + 7 * 16),
            (8, 0, 2048 + 1024),
            (0, 8, 2048 + 128),
            (9, 9, 2048 + 2 + 1024 + 16 + 128),
            (255, 15, 2048 + 14 + 31 * 1024 + 7 * 16 + 128),
        ];
        for (mn, k, at) in table {
            assert_eq!(d.mnmajor_b16(mn, k), at, "({mn}, {k})");
        }
    }

    /// The accumulator fragment of `.m64nNk16` (the ISA's figure: warp r holds rows
    /// 16 r .. 16 r + 15; lane 4 g + t holds columns 2 t, 2 t + 1 of rows g and g + 8 in each
    /// 8-column block).
    #[test]
    fn swizzled_kmajor_rows_are_128_bytes_with_chunks_permuted_by_row() {
        let d = SmemDesc {
            start: 2048,
            lbo: 16,
            sbo: 1024,
            base_offset: 0,
            swizzle: 1,
        };
        // (row, k, byte address): row r of an atom at 128 r, its chunk c (8 elements) at
        // chunk c ^ (r % 8); rows 8.. in the next atom, SBO on.
        let table = [
            (0, 0, 2048),
            (0, 9, 2048 + 18),
            (1, 0, 2048 + 128 + 16),
            (1, 8, 2048 + 128),
            (3, 15, 2048 + 3 * 128 + 16 * (1 ^ 3) + 14),
            (7, 0, 2048 + 7 * 128 + 16 * 7),
            (8, 0, 2048 + 1024),
            (9, 3, 2048 + 1024 + 128 + 16 + 6),
        ];
        for (row, k, at) in table {
            assert_eq!(d.kmajor_sw128_b16(row, k), at, "row {row}, k {k}");
        }
        // The second k16 step of a 64-element atom starts 32 bytes in: chunk 2 + k / 8.
        let d2 = SmemDesc {
            start: 2048 + 32,
            ..d
        };
        assert_eq!(d2.kmajor_sw128_b16(5, 0), 2048 + 5 * 128 + 16 * (2 ^ 5));
        assert_eq!(d2.kmajor_sw128_b16(5, 8), 2048 + 5 * 128 + 16 * (3 ^ 5));
    }

    /// The 128-byte swizzled MN-major layout: a k-row of 64 MN elements is 128 bytes, its
    /// 16-byte chunk `c` (8 elements) stored at chunk `c ^ (k % 8)`; 8 k-rows an atom, atoms
    /// SBO apart along K and LBO apart along MN.
    #[test]
    fn swizzled_mnmajor_rows_are_64_mn_elements_with_chunks_permuted_by_k() {
        let d = SmemDesc {
            start: 8192,
            lbo: 8192,
            sbo: 1024,
            base_offset: 0,
            swizzle: 1,
        };
        // (mn, k, byte address)
        let table = [
            (0, 0, 8192),
            (1, 0, 8192 + 2),
            (8, 0, 8192 + 16),
            (0, 1, 8192 + 128 + 16),
            (8, 1, 8192 + 128),
            (63, 0, 8192 + 126),
            // Chunk 7 of k-row 7 lands at chunk 7 ^ 7 = 0; chunk 2 of k-row 3 at 2 ^ 3 = 1.
            (63, 7, 8192 + 7 * 128 + 14),
            (17, 3, 8192 + 3 * 128 + 16 + 2),
            (0, 8, 8192 + 1024),
            (9, 10, 8192 + 1024 + 2 * 128 + 16 * (1 ^ 2) + 2),
            (64, 0, 16384),
            (200, 13, 8192 + 3 * 8192 + 1024 + 5 * 128 + 16 * (1 ^ 5)),
        ];
        for (mn, k, at) in table {
            assert_eq!(d.mnmajor_sw128_b16(mn, k), at, "mn {mn}, k {k}");
        }
        // The second k16 step starts two atoms (2,048 bytes) in.
        let d2 = SmemDesc {
            start: 8192 + 2048,
            ..d
        };
        assert_eq!(d2.mnmajor_sw128_b16(8, 1), d.mnmajor_sw128_b16(8, 17));
    }

    #[test]
    fn accumulators_follow_the_isa_fragment() {
        // (rank, lane, i, row, col)
        let table = [
            (0, 0, 0, 0, 0),
            (0, 0, 1, 0, 1),
            (0, 0, 2, 8, 0),
            (0, 0, 3, 8, 1),
            (0, 0, 4, 0, 8),
            (0, 1, 0, 0, 2),
            (0, 4, 0, 1, 0),
            (0, 31, 3, 15, 7),
            (1, 0, 0, 16, 0),
            (2, 5, 6, 32 + 1 + 8, 8 + 2),
            (3, 31, 127, 48 + 7 + 8, 248 + 7),
        ];
        for (rank, lane, i, row, col) in table {
            assert_eq!(
                accumulator_pos(rank, lane, i),
                (row, col),
                "{rank} {lane} {i}"
            );
        }
    }

    /// The warp's rows of a small product with integer values (exact in bf16 and f32).
    #[test]
    fn rows_are_the_product_of_the_warps_slice() {
        let mut a = [[0f64; 16]; 16];
        for (r, row) in a.iter_mut().enumerate() {
            for (k, v) in row.iter_mut().enumerate() {
                *v = ((r * 3 + k) % 5) as f64 - 2.0;
            }
        }
        let b: Vec<[f64; 16]> = (0..16)
            .map(|n| {
                let mut col = [0f64; 16];
                for (k, v) in col.iter_mut().enumerate() {
                    *v = ((n + 2 * k) % 7) as f64 - 3.0;
                }
                col
            })
            .collect();
        let c: Vec<Vec<f32>> = (0..32).map(|l| vec![l as f32; 8]).collect();
        for rank in [0, 3] {
            let d = wgmma_rows(rank, &a, &b, Some(&c));
            let d0 = wgmma_rows(rank, &a, &b, None);
            for lane in 0..32u32 {
                for i in 0..8u32 {
                    let (row, col) = accumulator_pos(rank, lane, i);
                    let r = (row - 16 * rank) as usize;
                    let want: f64 = (0..16).map(|k| a[r][k] * b[col as usize][k]).sum();
                    assert_eq!(d0[lane as usize][i as usize], want as f32);
                    assert_eq!(d[lane as usize][i as usize], want as f32 + lane as f32);
                }
            }
        }
    }

    #[test]
    fn warpgroups_must_agree() {
        let x = [(128u16, 1u64, 2u64)];
        let y = [(128u16, 1u64, 3u64)];
        let same: Vec<&[(u16, u64, u64)]> = vec![&x, &x, &x, &x, &y, &y, &y, &y];
        assert!(check_warpgroups(&same, "w", "why").is_ok());
        let differ: Vec<&[(u16, u64, u64)]> = vec![&x, &x, &y, &x];
        let e = check_warpgroups(&differ, "w", "why").unwrap_err();
        assert!(
            e.contains("warp 2 of warpgroup 0 issued a different w sequence"),
            "{e}"
        );
        assert!(e.contains("instruction 0 of the sequence; why)"), "{e}");
        // A warp that stopped short of the others differs where its log ends.
        let xy = [x[0], y[0]];
        let short: Vec<&[(u16, u64, u64)]> = vec![&xy, &xy, &x, &x];
        let e = check_warpgroups(&short, "w", "why").unwrap_err();
        assert!(e.contains("warp 2") && e.contains("instruction 1"), "{e}");
    }
}
