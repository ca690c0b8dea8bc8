//! `ptx/peak.cu`, the bench's ceilings: the mma kernel's exact sum (every A element 1, every
//! B element 2^-8: each mma adds 16 * 2^-8 to each accumulator, so each thread writes
//! `PEAK_CHAINS * iters / 4`), another pair of values to show the operands are used, and the
//! grid-stride copy with a ragged end and nothing written past it.

use tarflow::gpu::kernels::{peak_copy_b128, peak_mma_bf16, PEAK_CHAINS, PEAK_MMA_THREADS};
use tarflow::gpu::Driver;

use crate::harness::*;

fn mma_sums(d: &dyn Driver) {
    let (ctas, iters) = (3usize, 7usize);
    let n = ctas * PEAK_MMA_THREADS;
    // (a, b) = (1, 2^-8) and (-2, 0.75): 16 a b per mma and accumulator.
    for (a_bits, b_bits, per_mma) in [(0x3f80u32, 0x3b80u32, 0.0625f32), (0xc000, 0x3f40, -24.0)] {
        let out = poisoned_f32(d, n + 4);
        peak_mma_bf16(
            d,
            out,
            a_bits | a_bits << 16,
            b_bits | b_bits << 16,
            ctas,
            iters,
        )
        .unwrap();
        let got = download::<f32>(d, out, n + 4);
        let want = (PEAK_CHAINS * 4 * iters) as f32 * per_mma;
        for (t, v) in got[..n].iter().enumerate() {
            assert_eq!(*v, want, "peak_mma_bf16 thread {t} on {}", d.name());
        }
        assert!(got[n..].iter().all(|v| v.is_nan()), "wrote past its output");
    }
}

fn copy(d: &dyn Driver) {
    // 70,001 16-byte elements: not a multiple of the 256-thread CTA, and a tail after them
    // that must stay untouched.
    let n = 70_001usize;
    let src: Vec<u32> = (0..4 * n as u32)
        .map(|i| i.wrapping_mul(0x9E37_79B9))
        .collect();
    let mut init = vec![7u32; 4 * (n + 2)];
    init[..4].copy_from_slice(&[1, 2, 3, 4]);
    let dst = upload::<u32>(d, &init);
    peak_copy_b128(d, dst, upload::<u32>(d, &src), n).unwrap();
    let got = download::<u32>(d, dst, 4 * (n + 2));
    assert!(got[..4 * n] == src[..], "peak_copy_b128 on {}", d.name());
    assert!(got[4 * n..].iter().all(|&v| v == 7), "wrote past n");
}

#[test]
fn peak_mma_bf16_sums_exactly() {
    on_each_device(mma_sums);
}

#[test]
fn peak_copy_b128_copies_exactly_n() {
    on_each_device(copy);
}
