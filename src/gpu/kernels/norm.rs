//! Launch wrappers for `ptx/norm.cu`: softmax over rows and layer normalisation.

use super::{count, grid_yz, product, BLOCK, NORM};
use crate::error::{Error, Result};
use crate::gpu::driver::{DevicePtr, Driver, KernelArg, LaunchConfig};

/// Rows per CTA of the warp-per-row kernels.
const ROWS_PER_CTA: u32 = BLOCK / 32;

// Bits of the layer-norm kernels' `flags` (`enum LayerNormFlags` in ptx/norm.cu).
pub(super) const LN_HAS_WEIGHT: u32 = 1;
pub(super) const LN_HAS_BIAS: u32 = 2;
pub(super) const LN_SAVE_STATS: u32 = 4;

/// Checks `rows x d` and returns both as `u32` with the warp-per-row launch, or `None`
/// when there is nothing to do.
fn rows_launch(
    op: &'static str,
    rows: usize,
    d: usize,
) -> Result<Option<(u32, u32, LaunchConfig)>> {
    count(op, "rows * d", product(op, &[rows, d])?)?;
    let (r, dd) = (count(op, "rows", rows)?, count(op, "d", d)?);
    if r == 0 || dd == 0 {
        return Ok(None);
    }
    Ok(Some((
        r,
        dd,
        LaunchConfig::linear(r.div_ceil(ROWS_PER_CTA), BLOCK),
    )))
}

/// `y = softmax(x)` (or `log_softmax` when `log`) over each contiguous row of length `d`.
pub fn softmax_rows_f32(
    driver: &dyn Driver,
    y: DevicePtr,
    x: DevicePtr,
    rows: usize,
    d: usize,
    log: bool,
) -> Result<()> {
    let Some((r, dd, config)) = rows_launch("softmax_rows_f32", rows, d)? else {
        return Ok(());
    };
    let args = [
        KernelArg::Ptr(y),
        KernelArg::Ptr(x),
        KernelArg::U32(r),
        KernelArg::U32(dd),
        KernelArg::U32(log as u32),
    ];
    driver.launch(&NORM, "softmax_rows_f32", config, &args)
}

/// Softmax backward from the saved output: `dx = y * (g - sum g y)`, or for log-softmax
/// `dx = g - exp(y) * sum g`.
#[allow(clippy::too_many_arguments)]
pub fn softmax_bwd_rows_f32(
    driver: &dyn Driver,
    dx: DevicePtr,
    y: DevicePtr,
    g: DevicePtr,
    rows: usize,
    d: usize,
    log: bool,
) -> Result<()> {
    let Some((r, dd, config)) = rows_launch("softmax_bwd_rows_f32", rows, d)? else {
        return Ok(());
    };
    let args = [
        KernelArg::Ptr(dx),
        KernelArg::Ptr(y),
        KernelArg::Ptr(g),
        KernelArg::U32(r),
        KernelArg::U32(dd),
        KernelArg::U32(log as u32),
    ];
    driver.launch(&NORM, "softmax_bwd_rows_f32", config, &args)
}

/// Layer normalisation of contiguous rows of length `d`: `y = (x - mean) * rstd * w + b`
/// (weight and bias optional), saving `[mean, rstd]` per row into `stats` (`[rows, 2]`) when
/// given. `eps` must be finite and `>= 0`.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_fwd_f32(
    driver: &dyn Driver,
    y: DevicePtr,
    stats: Option<DevicePtr>,
    x: DevicePtr,
    weight: Option<DevicePtr>,
    bias: Option<DevicePtr>,
    rows: usize,
    d: usize,
    eps: f32,
) -> Result<()> {
    const NAME: &str = "layer_norm_fwd_f32";
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(Error::arg(
            NAME,
            format!("eps must be finite and >= 0, got {eps}"),
        ));
    }
    let Some((r, dd, config)) = rows_launch(NAME, rows, d)? else {
        return Ok(());
    };
    let flags = weight.map_or(0, |_| LN_HAS_WEIGHT)
        | bias.map_or(0, |_| LN_HAS_BIAS)
        | stats.map_or(0, |_| LN_SAVE_STATS);
    let none = DevicePtr(0);
    let args = [
        KernelArg::Ptr(y),
        KernelArg::Ptr(stats.unwrap_or(none)),
        KernelArg::Ptr(x),
        KernelArg::Ptr(weight.unwrap_or(none)),
        KernelArg::Ptr(bias.unwrap_or(none)),
        KernelArg::U32(r),
        KernelArg::U32(dd),
        KernelArg::F32(eps),
        KernelArg::U32(flags),
    ];
    driver.launch(&NORM, NAME, config, &args)
}

/// Layer normalisation's input gradient from the saved `stats`:
/// `dx = rstd * (g w - mean(g w) - xhat * mean(g w xhat))`.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_bwd_dx_f32(
    driver: &dyn Driver,
    dx: DevicePtr,
    x: DevicePtr,
    g: DevicePtr,
    stats: DevicePtr,
    weight: Option<DevicePtr>,
    rows: usize,
    d: usize,
) -> Result<()> {
    const NAME: &str = "layer_norm_bwd_dx_f32";
    let Some((r, dd, config)) = rows_launch(NAME, rows, d)? else {
        return Ok(());
    };
    let args = [
        KernelArg::Ptr(dx),
        KernelArg::Ptr(x),
        KernelArg::Ptr(g),
        KernelArg::Ptr(stats),
        KernelArg::Ptr(weight.unwrap_or(DevicePtr(0))),
        KernelArg::U32(r),
        KernelArg::U32(dd),
        KernelArg::U32(weight.map_or(0, |_| LN_HAS_WEIGHT)),
    ];
    driver.launch(&NORM, NAME, config, &args)
}

/// Where [`layer_norm_bwd_params_f32`] writes its per-chunk partials (`[chunks, d]` each,
/// `chunks = ceil(rows / chunk_len)`); `None` skips that gradient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerNormParamGrads {
    /// Partials of `dweight = sum_rows g * xhat`.
    pub dweight: Option<DevicePtr>,
    /// Partials of `dbias = sum_rows g`.
    pub dbias: Option<DevicePtr>,
}

/// First pass of layer normalisation's parameter gradients: per chunk of `chunk_len` rows,
/// column sums of `g * xhat` and `g` in row order. The caller finishes with
/// [`super::reduce_chunks_f32`] over the chunks (`outer = 1, r = chunks, inner = d`,
/// `accumulate = true` to add into the parameters' gradients).
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_bwd_params_f32(
    driver: &dyn Driver,
    out: LayerNormParamGrads,
    x: DevicePtr,
    g: DevicePtr,
    stats: DevicePtr,
    rows: usize,
    d: usize,
    chunk_len: usize,
) -> Result<()> {
    const NAME: &str = "layer_norm_bwd_params_f32";
    if chunk_len == 0 {
        return Err(Error::arg(NAME, "chunk_len must be at least 1"));
    }
    count(NAME, "rows * d", product(NAME, &[rows, d])?)?;
    count(NAME, "chunk_len", chunk_len)?;
    let flags = out.dweight.map_or(0, |_| LN_HAS_WEIGHT) | out.dbias.map_or(0, |_| LN_HAS_BIAS);
    if rows == 0 || d == 0 || flags == 0 {
        return Ok(());
    }
    let config = LaunchConfig {
        grid: (
            (d as u32).div_ceil(BLOCK),
            grid_yz(NAME, "chunks of rows", rows.div_ceil(chunk_len))?,
            1,
        ),
        block: (BLOCK, 1, 1),
        shared_bytes: 0,
    };
    let none = DevicePtr(0);
    let args = [
        KernelArg::Ptr(out.dweight.unwrap_or(none)),
        KernelArg::Ptr(out.dbias.unwrap_or(none)),
        KernelArg::Ptr(x),
        KernelArg::Ptr(g),
        KernelArg::Ptr(stats),
        KernelArg::U32(rows as u32),
        KernelArg::U32(d as u32),
        KernelArg::U32(chunk_len as u32),
        KernelArg::U32(flags),
    ];
    driver.launch(&NORM, NAME, config, &args)
}
