//! Launch wrappers for `ptx/reduce.cu`: fixed-order reductions over one axis.

use super::{count, grid_yz, product, BLOCK, REDUCE};
use crate::error::{Error, Result};
use crate::gpu::driver::{DevicePtr, Driver, KernelArg, LaunchConfig};

/// Reduction codes (`enum ReduceOp` in `ptx/reduce.cu`). A mean is a sum with
/// `scale = 1 / r` on the final pass.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    /// Sum (0 over an empty axis).
    Sum = 0,
    /// Maximum; any NaN makes the result NaN; -inf over an empty axis.
    Max = 1,
}

impl ReduceOp {
    /// Every reduction, in code order.
    pub const ALL: [ReduceOp; 2] = [ReduceOp::Sum, ReduceOp::Max];
}

/// Rows per CTA of the warp-per-row kernels (256 threads, one warp per row).
const ROWS_PER_CTA: u32 = BLOCK / 32;

/// `out[o] (=|+=) scale * reduce(x[o, 0..r])` for contiguous `x` of shape `[outer, r]`, one
/// warp per row. `accumulate` adds into `out` instead of overwriting it.
#[allow(clippy::too_many_arguments)]
pub fn reduce_rows_f32(
    driver: &dyn Driver,
    op: ReduceOp,
    out: DevicePtr,
    x: DevicePtr,
    outer: usize,
    r: usize,
    scale: f32,
    accumulate: bool,
) -> Result<()> {
    const NAME: &str = "reduce_rows_f32";
    count(NAME, "outer * r", product(NAME, &[outer, r])?)?;
    let rows = count(NAME, "outer", outer)?;
    if rows == 0 {
        return Ok(());
    }
    let config = LaunchConfig::linear(rows.div_ceil(ROWS_PER_CTA), BLOCK);
    let args = [
        KernelArg::Ptr(out),
        KernelArg::Ptr(x),
        KernelArg::U32(rows),
        KernelArg::U32(r as u32),
        KernelArg::U32(op as u32),
        KernelArg::F32(scale),
        KernelArg::U32(accumulate as u32),
    ];
    driver.launch(&super::REDUCE, NAME, config, &args)
}

/// One pass of the chunked reduction over the middle axis of contiguous `x` `[outer, r,
/// inner]`: `out[o, c, i] (=|+=) scale * reduce(x[o, c*chunk_len .. (c+1)*chunk_len, i])`
/// for `c < ceil(r / chunk_len)` (one chunk, `[outer, 1, inner]`, when `r` is 0). With
/// `chunk_len >= r` this is the whole reduction; otherwise it writes partials that a second
/// call with `r = chunks` reduces (pass `scale = 1` and `accumulate = false` to the first).
#[allow(clippy::too_many_arguments)]
pub fn reduce_chunks_f32(
    driver: &dyn Driver,
    op: ReduceOp,
    out: DevicePtr,
    x: DevicePtr,
    outer: usize,
    r: usize,
    inner: usize,
    chunk_len: usize,
    scale: f32,
    accumulate: bool,
) -> Result<()> {
    const NAME: &str = "reduce_chunks_f32";
    if chunk_len == 0 {
        return Err(Error::arg(NAME, "chunk_len must be at least 1"));
    }
    count(
        NAME,
        "outer * r * inner",
        product(NAME, &[outer, r, inner])?,
    )?;
    count(NAME, "chunk_len", chunk_len)?;
    if outer == 0 || inner == 0 {
        return Ok(());
    }
    let chunks = r.div_ceil(chunk_len).max(1);
    let config = LaunchConfig {
        grid: (
            (inner as u32).div_ceil(BLOCK),
            grid_yz(NAME, "chunks", chunks)?,
            grid_yz(NAME, "outer", outer)?,
        ),
        block: (BLOCK, 1, 1),
        shared_bytes: 0,
    };
    let args = [
        KernelArg::Ptr(out),
        KernelArg::Ptr(x),
        KernelArg::U32(outer as u32),
        KernelArg::U32(r as u32),
        KernelArg::U32(inner as u32),
        KernelArg::U32(chunk_len as u32),
        KernelArg::U32(op as u32),
        KernelArg::F32(scale),
        KernelArg::U32(accumulate as u32),
    ];
    driver.launch(&REDUCE, NAME, config, &args)
}

/// Rows each thread of the first pass of [`reduce_axis_f32`] combines: a constant, so the
/// order of the additions depends on the shape alone.
pub const REDUCE_CHUNK: usize = 256;

/// f32 elements of scratch [`reduce_axis_f32`] needs for `[outer, r, inner]` (0 when one
/// pass is enough).
pub fn reduce_scratch_len(outer: usize, r: usize, inner: usize) -> usize {
    if inner == 1 || r <= REDUCE_CHUNK {
        0
    } else {
        outer * r.div_ceil(REDUCE_CHUNK) * inner
    }
}

/// `out[o, i] (=|+=) reduce(x[o, 0..r, i])` for contiguous `x` `[outer, r, inner]`, as the
/// CPU's `sum`/`mean`/`max` over one axis: one warp per row when `inner == 1`, otherwise
/// per-chunk partials of [`REDUCE_CHUNK`] rows in `scratch` (at least
/// [`reduce_scratch_len`] elements) then a second pass over the chunks. `mean` divides a sum
/// by `max(r, 1)` (an empty axis gives 0, as on the CPU). The order is fixed by the shape,
/// so results are reproducible.
#[allow(clippy::too_many_arguments)]
pub fn reduce_axis_f32(
    driver: &dyn Driver,
    op: ReduceOp,
    mean: bool,
    out: DevicePtr,
    x: DevicePtr,
    scratch: Option<DevicePtr>,
    outer: usize,
    r: usize,
    inner: usize,
    accumulate: bool,
) -> Result<()> {
    const NAME: &str = "reduce_axis_f32";
    if mean && op != ReduceOp::Sum {
        return Err(Error::arg(NAME, "mean applies to a sum only"));
    }
    // The CPU's mean divides by `max(r, 1)`, so an empty axis gives 0, not 0 * inf = NaN.
    let scale = if mean { 1.0 / r.max(1) as f32 } else { 1.0 };
    if inner == 1 {
        return reduce_rows_f32(driver, op, out, x, outer, r, scale, accumulate);
    }
    if r <= REDUCE_CHUNK {
        return reduce_chunks_f32(
            driver,
            op,
            out,
            x,
            outer,
            r,
            inner,
            r.max(1),
            scale,
            accumulate,
        );
    }
    let need = reduce_scratch_len(outer, r, inner);
    let Some(scratch) = scratch else {
        return Err(Error::arg(
            NAME,
            format!("[{outer}, {r}, {inner}] needs a scratch buffer of {need} f32"),
        ));
    };
    reduce_chunks_f32(
        driver,
        op,
        scratch,
        x,
        outer,
        r,
        inner,
        REDUCE_CHUNK,
        1.0,
        false,
    )?;
    let chunks = r.div_ceil(REDUCE_CHUNK);
    reduce_chunks_f32(
        driver, op, out, scratch, outer, chunks, inner, chunks, scale, accumulate,
    )
}
