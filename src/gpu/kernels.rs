//! The GPU kernels of `ptx/`, embedded, and a typed launch wrapper for each.
//!
//! Each `ptx/NAME.cu` is compiled (by `scripts/ptx.sh regen`) to `ptx/NAME.ptx`, which is
//! embedded here as a [`PtxModule`]. A wrapper checks its sizes, derives the launch
//! configuration the kernel expects (documented at the top of each `.cu` and in
//! `docs/kernels.md`) and packs the [`KernelArg`]s in the order of the kernel's parameters,
//! then calls [`crate::gpu::Driver::launch`]. Tests parse the `.entry` signatures of the committed PTX
//! and check every wrapper against them, so a wrapper cannot drift from its kernel.
//!
//! Conventions shared by every wrapper:
//! - Pointers are device addresses of the first element a kernel touches (a view's offset
//!   is already added, see [`crate::gpu::DevicePtr::offset`]); nothing here reads device memory.
//! - Element counts, extents and strides must fit the kernels' 32-bit index arithmetic:
//!   at most [`MAX_ELEMENTS`] elements per launch; anything larger is an error naming the op.
//! - Work of zero elements launches nothing and returns `Ok` (CUDA rejects an empty grid).
//! - f32 kernels only, apart from the bf16 GEMM and the bf16 conversion copies; f64 stays on
//!   the CPU (the gradient sum of squares accumulates in f64 on the device, as on the CPU).

mod attention;
mod copy;
mod coupling;
mod elementwise;
mod gemm;
mod index;
mod norm;
mod optim;
mod peak;
mod reduce;
#[cfg(test)]
mod tests;

pub use crate::backend::{BinaryOp, UnaryOp};
pub use attention::{
    attn_bwd, attn_bwd_stored, attn_bwd_tma, attn_bwd_wgmma, attn_decode, attn_decode_with,
    attn_fwd, attn_fwd_saving_bf16, attn_fwd_tma, attn_fwd_wgmma, attn_supported,
    decode_scratch_len, AttnBwd, AttnDecode, AttnDims, AttnFwd, AttnPrecision, AttnScores,
    AttnStorage, AttnView, DecodeAppend, DecodeLaunch, ATTN_MAX_HEAD_DIM, DECODE_CHUNK,
    DECODE_FUSED_HEADS,
};
pub use copy::{fill_f32, strided_copy_bf16_f32, strided_copy_f32, strided_copy_f32_bf16};
pub use coupling::{
    coupling_bwd_f32, coupling_fwd_f32, coupling_inverse_f32, CouplingGrads, CouplingShape, Tokens,
};
pub use elementwise::{binary_f32, unary_f32};
pub use gemm::{
    gemm_bf16, gemm_bf16_epilogue, gemm_bf16_on, gemm_bf16_split_k, gemm_bf16_split_k_tma,
    gemm_bf16_split_k_wgmma, gemm_bf16_tma, gemm_bf16_wgmma, gemm_f32, gemm_f32_epilogue,
    split_k_plan, split_k_plan_tma, tma_enabled, tma_kernel, wgmma_enabled, Bf16Layout, Bf16Tile,
    GemmBf16, GemmEpilogue, GemmF32, WgmmaTile, LARGE_TILE_MIN_CTAS, SPLIT_MAX, SPLIT_MIN_K,
    TMA_SHARED_BYTES, WGMMA_ENV,
};
pub use index::{index_add_f32, index_select_f32, scatter_plan, u32_indices, ScatterPlan};
pub use norm::{
    layer_norm_bwd_dx_f32, layer_norm_bwd_params_f32, layer_norm_fwd_f32, softmax_bwd_rows_f32,
    softmax_rows_f32, LayerNormParamGrads,
};
pub use optim::{
    adamw_f32, ema_f32, sum_f64, sum_squares_partial_f32, sum_squares_partials, AdamWCoeffs,
};
pub use peak::{peak_copy_b128, peak_mma_bf16, MMA_FLOPS, PEAK_CHAINS, PEAK_MMA_THREADS};
pub use reduce::{
    reduce_axis_f32, reduce_chunks_f32, reduce_rows_f32, reduce_scratch_len, ReduceOp, REDUCE_CHUNK,
};

use super::driver::{Driver, KernelArg, LaunchConfig, PtxModule};
use crate::error::{Error, Result};

/// `ptx/copy.ptx`: strided copies (f32, bf16 <-> f32) and fills.
pub static COPY: PtxModule = PtxModule {
    name: "copy",
    ptx: include_str!("../../ptx/copy.ptx"),
};

/// `ptx/elementwise.ptx`: unary and binary ops over strided, broadcast operands.
pub static ELEMENTWISE: PtxModule = PtxModule {
    name: "elementwise",
    ptx: include_str!("../../ptx/elementwise.ptx"),
};

/// `ptx/reduce.ptx`: sum / mean / max over one axis in a fixed order.
pub static REDUCE: PtxModule = PtxModule {
    name: "reduce",
    ptx: include_str!("../../ptx/reduce.ptx"),
};

/// `ptx/norm.ptx`: softmax over rows and layer normalisation, forward and backward.
pub static NORM: PtxModule = PtxModule {
    name: "norm",
    ptx: include_str!("../../ptx/norm.ptx"),
};

/// `ptx/gemm.ptx`: f32 GEMM and bf16 tensor-core GEMM.
pub static GEMM: PtxModule = PtxModule {
    name: "gemm",
    ptx: include_str!("../../ptx/gemm.ptx"),
};

/// `ptx/gemm_sm90.ptx`: the bf16 GEMM on Hopper's warpgroup tensor cores (`wgmma`; built
/// for sm_90a, so it loads on a compute-capability 9.0 GPU and in the PTX interpreter only).
pub static GEMM_SM90: PtxModule = PtxModule {
    name: "gemm_sm90",
    ptx: include_str!("../../ptx/gemm_sm90.ptx"),
};

/// `ptx/index.ptx`: index_select along an axis and its deterministic adjoint (index_add).
pub static INDEX: PtxModule = PtxModule {
    name: "index",
    ptx: include_str!("../../ptx/index.ptx"),
};

/// `ptx/optim.ptx`: AdamW, EMA, gradient sum of squares.
pub static OPTIM: PtxModule = PtxModule {
    name: "optim",
    ptx: include_str!("../../ptx/optim.ptx"),
};

/// `ptx/attention.ptx`: fused attention forward (online softmax, saved log-sum-exp) and
/// backward.
pub static ATTENTION: PtxModule = PtxModule {
    name: "attention",
    ptx: include_str!("../../ptx/attention.ptx"),
};

/// `ptx/attention_sm90.ptx`: the bf16-input attention forward on Hopper's warpgroup tensor
/// cores (`wgmma`; sm_90a, so a compute-capability 9.0 GPU or the interpreter).
pub static ATTENTION_SM90: PtxModule = PtxModule {
    name: "attention_sm90",
    ptx: include_str!("../../ptx/attention_sm90.ptx"),
};

/// `ptx/coupling.ptx`: the affine coupling (forward with log-det, backward, inverse).
pub static COUPLING: PtxModule = PtxModule {
    name: "coupling",
    ptx: include_str!("../../ptx/coupling.ptx"),
};

/// `ptx/peak.ptx`: the card's ceilings (tensor-core rate, copy bandwidth) for the bench.
pub static PEAK: PtxModule = PtxModule {
    name: "peak",
    ptx: include_str!("../../ptx/peak.ptx"),
};

/// Every embedded module, for drivers that load them all up front.
pub static MODULES: [&PtxModule; 12] = [
    &COPY,
    &ELEMENTWISE,
    &REDUCE,
    &NORM,
    &GEMM,
    &GEMM_SM90,
    &INDEX,
    &OPTIM,
    &ATTENTION,
    &ATTENTION_SM90,
    &COUPLING,
    &PEAK,
];

/// An error unless `driver` can run the sm_90a kernels (`gemm_sm90`, `attention_sm90`): a
/// GPU of compute capability 9.0, or a driver without one (the interpreter). `kernel` names
/// what was asked for.
fn require_sm90(driver: &dyn Driver, op: &'static str, kernel: &str) -> Result<()> {
    match driver.compute_capability()? {
        Some((major, minor)) if (major, minor) != (9, 0) => Err(Error::Device {
            op,
            detail: format!(
                "{kernel}: the warpgroup kernels are built for sm_90a and need a GPU of compute \
                 capability 9.0 (an H100 or H200); {} is {major}.{minor}",
                driver.name()
            ),
        }),
        _ => Ok(()),
    }
}

/// Threads per CTA of the one-dimensional kernels (elementwise, copies, optimiser updates).
pub const BLOCK: u32 = 256;

/// Most CTAs a grid-stride kernel is launched with; more work loops inside each thread.
pub const MAX_LINEAR_GRID: u32 = 65_535;

/// Largest element count (and extent of any dimension) one launch may cover: the kernels
/// index with 32-bit integers and step a grid-stride loop past the end without overflowing.
pub const MAX_ELEMENTS: usize = i32::MAX as usize;

/// Most grid CTAs in the y and z dimensions (CUDA's limit).
const MAX_GRID_YZ: u32 = 65_535;

/// `n` as a `u32` element count, or an error naming `op` and `what` when it exceeds
/// [`MAX_ELEMENTS`].
fn count(op: &'static str, what: &str, n: usize) -> Result<u32> {
    if n > MAX_ELEMENTS {
        return Err(Error::arg(
            op,
            format!("{what} = {n} exceeds the GPU kernels' limit of {MAX_ELEMENTS} elements"),
        ));
    }
    Ok(n as u32)
}

/// `a * b` for sizes, failing (instead of wrapping) past `usize`.
fn product(op: &'static str, sizes: &[usize]) -> Result<usize> {
    sizes.iter().try_fold(1usize, |acc, &s| {
        acc.checked_mul(s)
            .ok_or_else(|| Error::arg(op, format!("sizes {sizes:?} overflow")))
    })
}

/// The launch of a grid-stride kernel over `n > 0` elements.
fn linear_config(n: u32) -> LaunchConfig {
    LaunchConfig::linear(n.div_ceil(BLOCK).clamp(1, MAX_LINEAR_GRID), BLOCK)
}

/// A grid dimension of `n` CTAs, checked against CUDA's y/z limit.
fn grid_yz(op: &'static str, what: &str, n: usize) -> Result<u32> {
    if n == 0 || n > MAX_GRID_YZ as usize {
        return Err(Error::arg(
            op,
            format!("{what} needs {n} CTAs in a grid dimension limited to 1..={MAX_GRID_YZ}"),
        ));
    }
    Ok(n as u32)
}

/// Most dimensions of a strided operand (the kernels' fixed parameter slots).
pub const MAX_DIMS: usize = 8;

/// Checks a strided view of `shape` (one stride list per operand, in elements) and packs
/// `rank, shape[0..8], strides_0[0..8], strides_1[0..8], ...` as the kernels declare them,
/// unused slots 0. Returns the element count with the arguments.
fn pack_view(
    op: &'static str,
    shape: &[usize],
    strides: &[&[isize]],
) -> Result<(u32, Vec<KernelArg>)> {
    if shape.len() > MAX_DIMS {
        return Err(Error::shape(
            op,
            &[shape],
            "f32",
            format!(
                "rank {} exceeds the GPU kernels' {MAX_DIMS} dimensions (merge contiguous \
                 dimensions first)",
                shape.len()
            ),
        ));
    }
    let n = count(op, "element count", product(op, shape)?)?;
    let mut args = Vec::with_capacity(1 + MAX_DIMS * (1 + strides.len()));
    args.push(KernelArg::U32(shape.len() as u32));
    for d in 0..MAX_DIMS {
        // Extents fit because their product does (or is 0, and nothing launches).
        args.push(KernelArg::U32(
            shape.get(d).map_or(0, |&s| s.min(MAX_ELEMENTS) as u32),
        ));
    }
    for (k, st) in strides.iter().enumerate() {
        if st.len() != shape.len() {
            return Err(Error::shape(
                op,
                &[shape],
                "f32",
                format!(
                    "operand {k} has {} strides for {} dimensions",
                    st.len(),
                    shape.len()
                ),
            ));
        }
        for d in 0..MAX_DIMS {
            let s = st.get(d).copied().unwrap_or(0);
            let s = i32::try_from(s).map_err(|_| {
                Error::arg(
                    op,
                    format!("operand {k}: stride {s} of dimension {d} does not fit in 32 bits"),
                )
            })?;
            args.push(KernelArg::U32(s as u32));
        }
    }
    Ok((n, args))
}

/// Merges the dimensions of a view that every operand walks as one: dimension `d` folds into
/// `d + 1` when each operand's `stride[d] == stride[d + 1] * shape[d + 1]`; extent-1
/// dimensions are dropped. The merged view visits the same offsets in the same order with
/// fewer index divisions per element, and brings views of more than [`MAX_DIMS`] dimensions
/// within the kernels' reach when they are contiguous enough.
pub fn merge_dims(shape: &[usize], strides: &[&[isize]]) -> (Vec<usize>, Vec<Vec<isize>>) {
    let mut out_shape: Vec<usize> = Vec::with_capacity(shape.len());
    let mut out_strides: Vec<Vec<isize>> = vec![Vec::with_capacity(shape.len()); strides.len()];
    if shape.contains(&0) {
        return (vec![0], vec![vec![1]; strides.len()]);
    }
    for d in 0..shape.len() {
        if shape[d] == 1 {
            continue;
        }
        let mergeable = !out_shape.is_empty()
            && strides
                .iter()
                .zip(&out_strides)
                .all(|(st, o)| o.last().copied() == Some(st[d] * shape[d] as isize));
        if mergeable {
            *out_shape.last_mut().expect("non-empty") *= shape[d];
            for (st, o) in strides.iter().zip(out_strides.iter_mut()) {
                *o.last_mut().expect("non-empty") = st[d];
            }
        } else {
            out_shape.push(shape[d]);
            for (st, o) in strides.iter().zip(out_strides.iter_mut()) {
                o.push(st[d]);
            }
        }
    }
    (out_shape, out_strides)
}
