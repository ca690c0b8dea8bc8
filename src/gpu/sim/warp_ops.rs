//! Warp-collective semantics as pure functions of the whole warp's inputs: `shfl.sync`
//! lane selection, `ldmatrix` fragments and `mma.m16n8k16`, written from the PTX ISA's
//! pseudocode and fragment tables.

use super::ir::ShflMode;

/// `shfl.sync`'s source lane and predicate for `lane` (ISA pseudocode): `b` is the lane
/// or offset operand, `c` packs the clamp value (bits 0-4) and the segment mask (bits 8-12).
/// When the computed lane is out of range, the lane reads its own value and `p` is false.
pub fn shfl_source(mode: ShflMode, lane: u32, b: u32, c: u32) -> (u32, bool) {
    let bval = b & 0x1f;
    let cval = c & 0x1f;
    let segmask = (c >> 8) & 0x1f;
    let max_lane = (lane & segmask) | (cval & !segmask);
    let min_lane = lane & segmask;
    let (j, p) = match mode {
        ShflMode::Up => {
            let j = lane as i32 - bval as i32;
            (j, j >= max_lane as i32)
        }
        ShflMode::Down => {
            let j = lane + bval;
            (j as i32, j <= max_lane)
        }
        ShflMode::Bfly => {
            let j = lane ^ bval;
            (j as i32, j <= max_lane)
        }
        ShflMode::Idx => {
            let j = min_lane | (bval & !segmask);
            (j as i32, j <= max_lane)
        }
    };
    if p {
        (j as u32, true)
    } else {
        (lane, false)
    }
}

/// One lane's 32-bit fragment of an 8x8 b16 matrix given as its 8 rows: lane `t` holds
/// row `t / 4`, columns `2 (t % 4)` (low half) and `2 (t % 4) + 1` (high half); with
/// `.trans` it holds the same positions of the transposed matrix, i.e. column `t / 4`,
/// rows `2 (t % 4)` and `2 (t % 4) + 1`.
pub fn ldmatrix_fragment(rows: &[[u16; 8]; 8], lane: u32, trans: bool) -> u32 {
    let r = (lane / 4) as usize;
    let c = 2 * (lane % 4) as usize;
    let (lo, hi) = if trans {
        (rows[c][r], rows[c + 1][r])
    } else {
        (rows[r][c], rows[r][c + 1])
    };
    lo as u32 | (hi as u32) << 16
}

fn half_to_f64(bits: u16, bf16: bool) -> f64 {
    if bf16 {
        half::bf16::from_bits(bits).to_f64()
    } else {
        half::f16::from_bits(bits).to_f64()
    }
}

/// Row and column of element `i` (0..8) of lane `lane`'s A fragment (16 x 16, row major).
pub fn mma_a_pos(lane: u32, i: u32) -> (usize, usize) {
    let (g, t) = ((lane >> 2) as usize, (lane % 4) as usize);
    let i = i as usize;
    let row = if i < 2 || (4..6).contains(&i) {
        g
    } else {
        g + 8
    };
    let col = t * 2 + (i & 1) + if i >= 4 { 8 } else { 0 };
    (row, col)
}

/// Row (k) and column (n) of element `i` (0..4) of lane `lane`'s B fragment (16 x 8).
pub fn mma_b_pos(lane: u32, i: u32) -> (usize, usize) {
    let (g, t) = ((lane >> 2) as usize, (lane % 4) as usize);
    let i = i as usize;
    (t * 2 + (i & 1) + if i >= 2 { 8 } else { 0 }, g)
}

/// Row and column of element `i` (0..4) of lane `lane`'s C/D fragment (16 x 8).
pub fn mma_c_pos(lane: u32, i: u32) -> (usize, usize) {
    let (g, t) = ((lane >> 2) as usize, (lane % 4) as usize);
    let i = i as usize;
    (if i < 2 { g } else { g + 8 }, t * 2 + (i & 1))
}

/// `mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32` on the whole warp's
/// fragments: `a[lane]` four b32 registers (two 16-bit elements each, low half first),
/// `b[lane]` two, `c[lane]` four f32. Each output is the exact dot product plus `c`,
/// rounded once to f32 (the hardware's internal accumulation order and precision differ
/// within a few f32 ulps: compare with a tolerance).
pub fn mma_m16n8k16(
    a: &[[u32; 4]; 32],
    b: &[[u32; 2]; 32],
    c: &[[f32; 4]; 32],
    bf16: bool,
) -> [[f32; 4]; 32] {
    let mut am = [[0f64; 16]; 16];
    let mut bm = [[0f64; 8]; 16];
    let mut cm = [[0f64; 8]; 16];
    for lane in 0..32u32 {
        let l = lane as usize;
        for i in 0..8u32 {
            let reg = a[l][(i / 2) as usize];
            let bits = (reg >> (16 * (i % 2))) as u16;
            let (r, k) = mma_a_pos(lane, i);
            am[r][k] = half_to_f64(bits, bf16);
        }
        for i in 0..4u32 {
            let reg = b[l][(i / 2) as usize];
            let bits = (reg >> (16 * (i % 2))) as u16;
            let (k, n) = mma_b_pos(lane, i);
            bm[k][n] = half_to_f64(bits, bf16);
        }
        for i in 0..4u32 {
            let (r, n) = mma_c_pos(lane, i);
            cm[r][n] = c[l][i as usize] as f64;
        }
    }
    let mut d = [[0f32; 4]; 32];
    for lane in 0..32u32 {
        for i in 0..4u32 {
            let (r, n) = mma_c_pos(lane, i);
            // Products of 16-bit floats are exact in f64 and their sum of 16 terms plus c
            // loses at most a few f64 ulps: far below one f32 ulp.
            let mut s = cm[r][n];
            for (k, brow) in bm.iter().enumerate() {
                s += am[r][k] * brow[n];
            }
            d[lane as usize][i as usize] = s as f32;
        }
    }
    d
}
