//! Launch wrappers for `ptx/peak.cu`: the card's own ceilings (the tensor cores' `mma.sync`
//! rate with every operand in registers, and a streaming copy's bandwidth), which
//! `tarflow bench --kernels` measures before the kernels it judges against them.

use super::{count, linear_config, PEAK};
use crate::error::{Error, Result};
use crate::gpu::driver::{DevicePtr, Driver, KernelArg, LaunchConfig};

/// Independent `mma` chains per warp in `peak_mma_bf16` (`PEAK_CHAINS` in ptx/peak.cu).
pub const PEAK_CHAINS: usize = 8;

/// Threads per CTA of `peak_mma_bf16`.
pub const PEAK_MMA_THREADS: usize = 128;

/// Flops of one `mma.sync.m16n8k16` (an FMA counts 2).
pub const MMA_FLOPS: f64 = 2.0 * 16.0 * 8.0 * 16.0;

/// Runs `peak_mma_bf16` over `ctas` CTAs of [`PEAK_MMA_THREADS`]: each warp issues
/// `iters * PEAK_CHAINS` mma with every A element the bf16 pair `a_bits` and every B element
/// `b_bits`, and each thread writes the sum of its accumulators to `out` (`ctas *
/// PEAK_MMA_THREADS` f32). Flops: `ctas * 4 * iters * PEAK_CHAINS * MMA_FLOPS`.
pub fn peak_mma_bf16(
    driver: &dyn Driver,
    out: DevicePtr,
    a_bits: u32,
    b_bits: u32,
    ctas: usize,
    iters: usize,
) -> Result<()> {
    const NAME: &str = "peak_mma_bf16";
    if ctas == 0 || iters == 0 {
        return Ok(());
    }
    let grid = count(NAME, "CTAs", ctas)?;
    if ctas > super::MAX_LINEAR_GRID as usize {
        return Err(Error::arg(
            NAME,
            format!("{ctas} CTAs exceed {}", super::MAX_LINEAR_GRID),
        ));
    }
    let args = [
        KernelArg::Ptr(out),
        KernelArg::U32(a_bits),
        KernelArg::U32(b_bits),
        KernelArg::U32(count(NAME, "iterations", iters)?),
    ];
    let config = LaunchConfig::linear(grid, PEAK_MMA_THREADS as u32);
    driver.launch(&PEAK, NAME, config, &args)
}

/// `dst[i] = src[i]` for `n` 16-byte elements (both 16-byte aligned), grid-stride.
pub fn peak_copy_b128(driver: &dyn Driver, dst: DevicePtr, src: DevicePtr, n: usize) -> Result<()> {
    const NAME: &str = "peak_copy_b128";
    if n == 0 {
        return Ok(());
    }
    for (what, p) in [("dst", dst), ("src", src)] {
        if p.0 % 16 != 0 {
            return Err(Error::arg(
                NAME,
                format!("{what} at {:#x} is not 16-byte aligned", p.0),
            ));
        }
    }
    // The loop counts in 64 bits; the grid stays within the linear limit.
    let config = linear_config(n.min(u32::MAX as usize) as u32);
    let args = [
        KernelArg::Ptr(dst),
        KernelArg::Ptr(src),
        KernelArg::U64(n as u64),
    ];
    driver.launch(&PEAK, NAME, config, &args)
}
