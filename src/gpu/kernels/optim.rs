//! Launch wrappers for `ptx/optim.cu`: AdamW, EMA and the gradient sum of squares.

use super::{count, linear_config, OPTIM};
use crate::error::{Error, Result};
use crate::gpu::driver::{DevicePtr, Driver, KernelArg, LaunchConfig};
use crate::optim::AdamWConfig;

/// The f32 constants of one AdamW update of one parameter, derived from the f64
/// hyper-parameters exactly as `src/optim/adamw.rs` derives them, so that the kernel (which
/// evaluates the CPU's expression with the CPU's roundings) gives the CPU's bits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWCoeffs {
    /// `1 - lr * weight_decay`.
    pub decay: f32,
    /// `beta1`.
    pub b1: f32,
    /// `1 - beta1`.
    pub one_minus_b1: f32,
    /// `beta2`.
    pub b2: f32,
    /// `1 - beta2`.
    pub one_minus_b2: f32,
    /// `1 / sqrt(1 - beta2^t)`.
    pub inv_bc2_sqrt: f32,
    /// `eps`.
    pub eps: f32,
    /// `lr / (1 - beta1^t)`.
    pub step_size: f32,
}

impl AdamWCoeffs {
    /// The constants for update number `step` (1 for a parameter's first update) with
    /// learning rate `lr`.
    pub fn new(config: &AdamWConfig, lr: f64, step: u64) -> Result<Self> {
        if step == 0 {
            return Err(Error::arg(
                "AdamWCoeffs::new",
                "step counts from 1 (the bias correction of step 0 divides by 0)",
            ));
        }
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(Error::arg(
                "AdamWCoeffs::new",
                format!("learning rate must be finite and >= 0, got {lr}"),
            ));
        }
        let t = step as f64;
        let bc1 = 1.0 - config.beta1.powf(t);
        let bc2 = 1.0 - config.beta2.powf(t);
        Ok(AdamWCoeffs {
            decay: (1.0 - lr * config.weight_decay) as f32,
            b1: config.beta1 as f32,
            one_minus_b1: (1.0 - config.beta1) as f32,
            b2: config.beta2 as f32,
            one_minus_b2: (1.0 - config.beta2) as f32,
            inv_bc2_sqrt: (1.0 / bc2.sqrt()) as f32,
            eps: config.eps as f32,
            step_size: (lr / bc1) as f32,
        })
    }
}

/// One AdamW update of `n` contiguous f32 parameters `p` with moments `m`, `v` (updated in
/// place) and gradient `g`.
#[allow(clippy::too_many_arguments)]
pub fn adamw_f32(
    driver: &dyn Driver,
    p: DevicePtr,
    m: DevicePtr,
    v: DevicePtr,
    g: DevicePtr,
    n: usize,
    c: &AdamWCoeffs,
) -> Result<()> {
    let n = count("adamw_f32", "n", n)?;
    if n == 0 {
        return Ok(());
    }
    let args = [
        KernelArg::Ptr(p),
        KernelArg::Ptr(m),
        KernelArg::Ptr(v),
        KernelArg::Ptr(g),
        KernelArg::U32(n),
        KernelArg::F32(c.decay),
        KernelArg::F32(c.b1),
        KernelArg::F32(c.one_minus_b1),
        KernelArg::F32(c.b2),
        KernelArg::F32(c.one_minus_b2),
        KernelArg::F32(c.inv_bc2_sqrt),
        KernelArg::F32(c.eps),
        KernelArg::F32(c.step_size),
    ];
    driver.launch(&OPTIM, "adamw_f32", linear_config(n), &args)
}

/// `s <- decay * s + (1 - decay) * p` over `n` contiguous f32 values; `decay` in `[0, 1]`,
/// both factors rounded from f64 as `src/optim/ema.rs` rounds them.
pub fn ema_f32(
    driver: &dyn Driver,
    s: DevicePtr,
    p: DevicePtr,
    n: usize,
    decay: f64,
) -> Result<()> {
    if !(0.0..=1.0).contains(&decay) {
        return Err(Error::arg(
            "ema_f32",
            format!("decay must lie in [0, 1], got {decay}"),
        ));
    }
    let n = count("ema_f32", "n", n)?;
    if n == 0 {
        return Ok(());
    }
    let args = [
        KernelArg::Ptr(s),
        KernelArg::Ptr(p),
        KernelArg::U32(n),
        KernelArg::F32(decay as f32),
        KernelArg::F32((1.0 - decay) as f32),
    ];
    driver.launch(&OPTIM, "ema_f32", linear_config(n), &args)
}

/// Threads of the sum-of-squares kernels (their shared-memory tree is this wide).
const SS_THREADS: u32 = 256;

/// Number of f64 partials [`sum_squares_partial_f32`] writes for `n` values.
pub fn sum_squares_partials(n: usize, chunk_len: usize) -> usize {
    n.div_ceil(chunk_len.max(1))
}

/// `partial[c] = sum x[i]^2` (f64) over chunk `c` of `chunk_len` values of contiguous f32
/// `x`, for the [`sum_squares_partials`] chunks; several tensors can write into one partial
/// buffer at different offsets and share one [`sum_f64`].
pub fn sum_squares_partial_f32(
    driver: &dyn Driver,
    partial: DevicePtr,
    x: DevicePtr,
    n: usize,
    chunk_len: usize,
) -> Result<()> {
    const NAME: &str = "sum_squares_partial_f32";
    if chunk_len == 0 {
        return Err(Error::arg(NAME, "chunk_len must be at least 1"));
    }
    let n32 = count(NAME, "n", n)?;
    let cl = count(NAME, "chunk_len", chunk_len)?;
    if n32 == 0 {
        return Ok(());
    }
    let config = LaunchConfig::linear(sum_squares_partials(n, chunk_len) as u32, SS_THREADS);
    let args = [
        KernelArg::Ptr(partial),
        KernelArg::Ptr(x),
        KernelArg::U32(n32),
        KernelArg::U32(cl),
    ];
    driver.launch(&OPTIM, NAME, config, &args)
}

/// `out[0] = sum partial[0..n)` in f64 (one CTA, fixed order); writes 0 when `n` is 0.
pub fn sum_f64(driver: &dyn Driver, out: DevicePtr, partial: DevicePtr, n: usize) -> Result<()> {
    let n = count("sum_f64", "n", n)?;
    let args = [
        KernelArg::Ptr(out),
        KernelArg::Ptr(partial),
        KernelArg::U32(n),
    ];
    driver.launch(
        &OPTIM,
        "sum_f64",
        LaunchConfig::linear(1, SS_THREADS),
        &args,
    )
}
