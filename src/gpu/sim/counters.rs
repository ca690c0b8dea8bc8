//! Per-launch counters: dynamic warp-instructions by class, global traffic and shared-memory
//! bank conflicts. A warp-instruction is one issue of an instruction for the lanes of a warp
//! that sit at it (whatever its guard says), as a GPU's profiler counts them.

use super::ir::Class;

/// What one launch did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Integer, logic, move, conversion and predicate warp-instructions.
    pub int: u64,
    /// f32 arithmetic warp-instructions.
    pub fp32: u64,
    /// f64 arithmetic warp-instructions.
    pub fp64: u64,
    /// Special-function warp-instructions (approximations, rcp, sqrt, div).
    pub sfu: u64,
    /// Loads, stores, atomics and async copies.
    pub memory: u64,
    /// Branches and exits.
    pub control: u64,
    /// Barriers, fences, shuffles and votes.
    pub sync: u64,
    /// `ldmatrix` and `mma`.
    pub tensor: u64,
    /// Bytes read from global memory (loads, atomics, cp.async sources).
    pub global_bytes_read: u64,
    /// Bytes written to global memory (stores, atomics).
    pub global_bytes_written: u64,
    /// Extra shared-memory wavefronts caused by bank conflicts (0 when conflict-free).
    pub shared_bank_conflicts: u64,
    /// CTAs run.
    pub ctas: u64,
}

impl Counters {
    /// Counts one warp-instruction of `class`.
    pub fn count(&mut self, class: Class) {
        match class {
            Class::Int => self.int += 1,
            Class::Fp32 => self.fp32 += 1,
            Class::Fp64 => self.fp64 += 1,
            Class::Sfu => self.sfu += 1,
            Class::Memory => self.memory += 1,
            Class::Control => self.control += 1,
            Class::Sync => self.sync += 1,
            Class::Tensor => self.tensor += 1,
        }
    }

    /// All warp-instructions.
    pub fn warp_instructions(&self) -> u64 {
        self.int
            + self.fp32
            + self.fp64
            + self.sfu
            + self.memory
            + self.control
            + self.sync
            + self.tensor
    }
}

/// Extra wavefronts of one shared access of `bytes` per lane at `addrs` (one per active
/// lane). Accesses wider than 4 bytes are served in phases of 32 / (bytes / 4) lanes (so
/// 16 for 8-byte and 8 for 16-byte accesses); within a phase, distinct 4-byte words in one
/// of the 32 banks serialise, while the same word is broadcast.
pub fn bank_conflicts(addrs: &[u64], bytes: u32) -> u64 {
    // The common cases, one word per lane consecutive or all the same, are conflict-free.
    if bytes <= 4 && !addrs.is_empty() {
        let w0 = addrs[0] / 4;
        let same = addrs.iter().all(|a| a / 4 == w0);
        let consecutive = addrs
            .iter()
            .enumerate()
            .all(|(i, a)| a / 4 == w0 + i as u64);
        if same || consecutive {
            return 0;
        }
    }
    let lanes_per_phase = (32 / (bytes.max(4) / 4)).max(1) as usize;
    let mut extra = 0;
    // Up to 32 lanes x 4 words per phase; sorted words make distinct ones adjacent.
    let mut words = [0u64; 128];
    for phase in addrs.chunks(lanes_per_phase) {
        if one_word_per_bank(phase, bytes) {
            continue;
        }
        let mut n = 0;
        for &a in phase {
            for w in (a / 4)..(a + bytes.max(1) as u64).div_ceil(4) {
                if n < words.len() {
                    words[n] = w;
                    n += 1;
                }
            }
        }
        let ws = &mut words[..n];
        ws.sort_unstable();
        let mut per_bank = [0u32; 32];
        let mut prev = None;
        for &w in ws.iter() {
            if prev != Some(w) {
                per_bank[(w % 32) as usize] += 1;
                prev = Some(w);
            }
        }
        let worst = per_bank.iter().copied().max().unwrap_or(0).max(1);
        extra += worst as u64 - 1;
    }
    extra
}

/// Whether every bank is asked for at most one distinct word in `phase` (no conflict): one
/// pass that remembers the first word of each bank, so the usual patterns (distinct banks,
/// broadcasts of a few words) skip the sorting count.
fn one_word_per_bank(phase: &[u64], bytes: u32) -> bool {
    let mut used = 0u32;
    let mut first = [0u64; 32];
    for &a in phase {
        for w in (a / 4)..(a + bytes.max(1) as u64).div_ceil(4) {
            let b = (w % 32) as usize;
            if used & (1 << b) == 0 {
                used |= 1 << b;
                first[b] = w;
            } else if first[b] != w {
                return false;
            }
        }
    }
    true
}
