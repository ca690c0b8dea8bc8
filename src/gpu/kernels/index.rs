//! Launch wrappers for `ptx/index.cu`: index_select along an axis and its deterministic
//! adjoint, with the host-side plan that fixes the adjoint's order.

use super::{count, linear_config, product, INDEX};
use crate::error::{Error, Result};
use crate::gpu::driver::{DevicePtr, Driver, KernelArg};

/// `indices` as the `u32` array the kernels read, each checked against `len` (the size of
/// the indexed axis).
pub fn u32_indices(op: &'static str, indices: &[usize], len: usize) -> Result<Vec<u32>> {
    count(op, "axis length", len)?;
    indices
        .iter()
        .enumerate()
        .map(|(i, &ix)| {
            if ix < len {
                Ok(ix as u32)
            } else {
                Err(Error::index(
                    op,
                    format!(
                        "index {ix} at position {i} is out of range for an axis of length {len}"
                    ),
                ))
            }
        })
        .collect()
}

/// Sources grouped by destination, for [`index_add_f32`]: `order` lists source positions
/// sorted by their index (ties in increasing position: a stable counting sort), and
/// destination `j` takes `order[starts[j] .. starts[j + 1]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScatterPlan {
    /// Source positions, grouped by destination, each group in increasing position.
    pub order: Vec<u32>,
    /// `dst_len + 1` offsets into `order`.
    pub starts: Vec<u32>,
}

/// The plan of `index_add` for `indices` (one per source row) into an axis of `dst_len`.
pub fn scatter_plan(indices: &[usize], dst_len: usize) -> Result<ScatterPlan> {
    const OP: &str = "scatter_plan";
    let idx = u32_indices(OP, indices, dst_len)?;
    count(OP, "number of indices", indices.len())?;
    let mut starts = vec![0u32; dst_len + 1];
    for &j in &idx {
        starts[j as usize + 1] += 1;
    }
    for j in 0..dst_len {
        starts[j + 1] += starts[j];
    }
    let mut next = starts.clone();
    let mut order = vec![0u32; idx.len()];
    for (pos, &j) in idx.iter().enumerate() {
        order[next[j as usize] as usize] = pos as u32;
        next[j as usize] += 1;
    }
    Ok(ScatterPlan { order, starts })
}

/// `out[o, i, c] = src[o, idx[i], c]` for contiguous `src` `[outer, src_len, inner]` and
/// `out` `[outer, n_idx, inner]`; `idx` holds `n_idx` device `u32`s (from [`u32_indices`]).
#[allow(clippy::too_many_arguments)]
pub fn index_select_f32(
    driver: &dyn Driver,
    out: DevicePtr,
    src: DevicePtr,
    idx: DevicePtr,
    outer: usize,
    src_len: usize,
    n_idx: usize,
    inner: usize,
) -> Result<()> {
    const NAME: &str = "index_select_f32";
    count(
        NAME,
        "outer * src_len * inner",
        product(NAME, &[outer, src_len, inner])?,
    )?;
    let total = count(
        NAME,
        "outer * n_idx * inner",
        product(NAME, &[outer, n_idx, inner])?,
    )?;
    if total == 0 {
        return Ok(());
    }
    let args = [
        KernelArg::Ptr(out),
        KernelArg::Ptr(src),
        KernelArg::Ptr(idx),
        KernelArg::U32(outer as u32),
        KernelArg::U32(src_len as u32),
        KernelArg::U32(n_idx as u32),
        KernelArg::U32(inner as u32),
    ];
    driver.launch(&INDEX, NAME, linear_config(total), &args)
}

/// `dst[o, j, c] += sum_{i: idx[i] = j} src[o, i, c]`, sources in increasing `i`: `dst`
/// `[outer, dst_len, inner]`, `src` `[outer, n_idx, inner]`, both contiguous; `order`
/// (`n_idx` u32) and `starts` (`dst_len + 1` u32) are a [`ScatterPlan`] uploaded.
#[allow(clippy::too_many_arguments)]
pub fn index_add_f32(
    driver: &dyn Driver,
    dst: DevicePtr,
    src: DevicePtr,
    order: DevicePtr,
    starts: DevicePtr,
    outer: usize,
    dst_len: usize,
    n_idx: usize,
    inner: usize,
) -> Result<()> {
    const NAME: &str = "index_add_f32";
    count(
        NAME,
        "outer * n_idx * inner",
        product(NAME, &[outer, n_idx, inner])?,
    )?;
    let total = count(
        NAME,
        "outer * dst_len * inner",
        product(NAME, &[outer, dst_len, inner])?,
    )?;
    if total == 0 || n_idx == 0 {
        return Ok(());
    }
    let args = [
        KernelArg::Ptr(dst),
        KernelArg::Ptr(src),
        KernelArg::Ptr(order),
        KernelArg::Ptr(starts),
        KernelArg::U32(outer as u32),
        KernelArg::U32(dst_len as u32),
        KernelArg::U32(n_idx as u32),
        KernelArg::U32(inner as u32),
    ];
    driver.launch(&INDEX, NAME, linear_config(total), &args)
}
