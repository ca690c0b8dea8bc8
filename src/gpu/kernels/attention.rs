//! Launch wrappers for `ptx/attention.cu`: fused (flash-style) attention forward, saving the
//! base-2 log-sum-exp, and its backward recomputing the probabilities from it.

use super::gemm::{hopper_tiles, HopperTiles};
use super::{count, grid_yz, ATTENTION, ATTENTION_SM90, MAX_ELEMENTS};
use crate::error::{Error, Result};
use crate::gpu::driver::{DevicePtr, Driver, KernelArg, LaunchConfig, PtxModule};
use crate::gpu::tensor_map::{Swizzle, TensorMap};

/// Largest head dimension (`Dh` and `Dv`) the attention kernels take: their shared-memory
/// tiles hold 128 features per row.
pub const ATTN_MAX_HEAD_DIM: usize = 128;

/// Threads per CTA of every attention kernel.
const THREADS: u32 = 128;
/// Queries per CTA of the forward and dQ kernels (and query tile of the dK/dV loop).
const QUERY_TILE: usize = 32;
/// Keys per CTA of the dK/dV kernel.
const KEY_TILE_BWD: usize = 16;
/// Queries per CTA of the `D` kernel (one warp each).
const DOT_ROWS: usize = 4;

/// `log2(e)`: the kernels' scores are `alpha * log2(e) * q . k`, in base 2.
const LOG2_E: f64 = std::f64::consts::LOG2_E;

/// Whether the fused kernels take head dimensions `dh` (queries, keys) and `dv` (values).
pub fn attn_supported(dh: usize, dv: usize) -> bool {
    dh <= ATTN_MAX_HEAD_DIM && dv <= ATTN_MAX_HEAD_DIM
}

/// Arithmetic of the forward's two products (`Q K^T` and `P V`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttnPrecision {
    /// f32 throughout (`attn_fwd_f32`): any head dims up to [`ATTN_MAX_HEAD_DIM`].
    #[default]
    F32,
    /// q, k, v rounded to bf16 (to nearest even) as they are staged, and `P` rounded to bf16
    /// for `P V`; both products on tensor cores with f32 accumulation
    /// (`attn_fwd_bf16_d64`, `attn_fwd_bf16_d128`): `Dh == Dv`, 64 or 128 only. Inputs and
    /// outputs stay f32.
    Bf16,
    /// [`AttnPrecision::Bf16`]'s products (the same bits on the same values) with q, k, v
    /// stored as **bf16**, loaded by `cp.async` into a ring of key tiles
    /// (`attn_fwd_bf16s_d64`, 128 queries per CTA; `attn_fwd_bf16s_d128`, 64): `Dh == Dv`, 64
    /// or 128. Each of q, k, v must have feature stride 1, its other strides multiples of 8
    /// elements and its address a multiple of 16 bytes. The output and lse stay f32. What
    /// bf16 training runs.
    Bf16Inputs,
}

/// Element type of the forward's q, k, v and o as the backward reads them (dO, lse and every
/// gradient are f32 either way).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttnStorage {
    /// f32 (`attn_bwd_*_f32`).
    #[default]
    F32,
    /// bf16, widened to f32 as they are loaded (`attn_bwd_*_bf16s`): the same arithmetic in
    /// the same order as [`AttnStorage::F32`], so bf16-exact operands give identical bits.
    /// Kept by bf16 training, which saves its attention operands at half the size.
    Bf16,
    /// bf16, every product on the tensor cores (`attn_bwd_dkdv_bf16_d64`,
    /// `attn_bwd_dq_bf16_d64`, after `attn_bwd_dot_round_bf16s`): `dO` rounded to bf16 (into
    /// a contiguous copy the call allocates and frees, written by the `D` kernel), `P` and
    /// `dS` rounded to bf16 as the operands of the products that follow them, f32
    /// accumulation; every operand loaded by `cp.async`, so q, k and v follow
    /// [`AttnPrecision::Bf16Inputs`]'s 16-byte rule (`o` and `g` may have any strides).
    /// `Dh == Dv == 64` only. What bf16 training runs at that head size.
    Bf16TensorCores,
}

impl AttnStorage {
    /// The backward's kernels for this storage: `D`, then dK/dV, then dQ, with the keys per
    /// dK/dV CTA and the queries per dQ CTA.
    fn kernels(self) -> ([&'static str; 3], usize, usize) {
        match self {
            AttnStorage::F32 => (
                ["attn_bwd_dot_f32", "attn_bwd_dkdv_f32", "attn_bwd_dq_f32"],
                KEY_TILE_BWD,
                QUERY_TILE,
            ),
            AttnStorage::Bf16 => (
                [
                    "attn_bwd_dot_bf16s",
                    "attn_bwd_dkdv_bf16s",
                    "attn_bwd_dq_bf16s",
                ],
                KEY_TILE_BWD,
                QUERY_TILE,
            ),
            AttnStorage::Bf16TensorCores => (
                [
                    "attn_bwd_dot_round_bf16s",
                    "attn_bwd_dkdv_bf16_d64",
                    "attn_bwd_dq_bf16_d64",
                ],
                TILE_BWD_TENSOR_CORES,
                TILE_BWD_TENSOR_CORES,
            ),
        }
    }
}

/// Keys per dK/dV CTA and queries per dQ CTA of the tensor-core backward.
const TILE_BWD_TENSOR_CORES: usize = 64;

/// Dynamic shared memory of the tensor-core backward's dK/dV and dQ kernels: a two-stage
/// ring of two 64 x (64 + 8) bf16 tiles.
const SHARED_BWD_TENSOR_CORES: u32 = 2 * 2 * 64 * (64 + 8) * 2;

/// Dynamic shared memory of the warpgroup backward's dK/dV and dQ kernels: two stages of two
/// unpadded 64 x 64 bf16 tiles.
const SHARED_BWD_WGMMA: u32 = 2 * 2 * 64 * 64 * 2;

/// The tensor-core forward's shape at head dim `d` (64 or 128), with bf16 or f32 inputs:
/// queries per CTA, keys per tile and ring stages (those of `ATTN_FWD_TC_ENTRY` in
/// `ptx/attention.cu`).
fn tc_fwd_tile(bf16_inputs: bool, d: usize) -> (usize, usize, usize) {
    match (bf16_inputs, d) {
        (true, 64) => (128, 64, 2),
        (false, 64) => (64, 64, 2),
        _ => (64, 32, 2),
    }
}

/// Dynamic shared memory of the tensor-core forward: the ring's K and V tiles, rows of
/// `d + 8` bf16.
fn tc_fwd_shared_bytes(bf16_inputs: bool, d: usize) -> usize {
    let (_, bk, stages) = tc_fwd_tile(bf16_inputs, d);
    stages * 2 * bk * (d + 8) * 2
}

/// One operand of the attention kernels: a `[B, H, N, D]` view at `ptr` with element strides
/// `[batch, head, position, feature]` (any non-negative values, so views of a fused qkv
/// projection or a heads-merged output are read and written in place).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnView {
    /// Address of element `[0, 0, 0, 0]`.
    pub ptr: DevicePtr,
    /// Element strides of the batch, head, position and feature axes.
    pub strides: [usize; 4],
}

/// Sizes of an attention call: q `[b, h, nq, dh]`, k `[b, h, nk, dh]`, v `[b, h, nk, dv]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnDims {
    /// Batch.
    pub b: usize,
    /// Heads.
    pub h: usize,
    /// Queries per head.
    pub nq: usize,
    /// Keys (and values) per head.
    pub nk: usize,
    /// Feature width of queries and keys.
    pub dh: usize,
    /// Feature width of values (and of the output).
    pub dv: usize,
}

/// How the scores are formed: `S = alpha Q K^T`, with the causal rule `j <= i + (nk - nq)`
/// when `causal` (which needs `nq <= nk`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnScores {
    /// `scale / temperature`; finite.
    pub alpha: f32,
    /// Hide keys after each query's position.
    pub causal: bool,
}

/// The forward: `o = softmax(alpha q k^T) v` per (batch, head), and `lse` (`[b, h, nq]`,
/// contiguous) the log-sum-exp of each query's visible scores **in base 2**:
/// `log2(sum_j exp2(alpha log2(e) q . k_j))`, i.e. the natural log-sum-exp times `log2(e)`;
/// `-inf` for a query that sees no key (its output is 0).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnFwd {
    /// Sizes.
    pub dims: AttnDims,
    /// Score scale and mask rule.
    pub scores: AttnScores,
    /// Queries `[b, h, nq, dh]`.
    pub q: AttnView,
    /// Keys `[b, h, nk, dh]`.
    pub k: AttnView,
    /// Values `[b, h, nk, dv]`.
    pub v: AttnView,
    /// Output `[b, h, nq, dv]` (written).
    pub o: AttnView,
    /// `[b, h, nq]` base-2 log-sum-exp (written).
    pub lse: DevicePtr,
    /// Arithmetic of the products.
    pub precision: AttnPrecision,
}

/// The backward (f32 arithmetic) from the forward's operands, output `o`, its gradient `g`
/// and saved `lse`: writes `dq`, `dk`, `dv` (`=`), using `delta` (`[b, h, nq]` scratch) for
/// `D_i = sum_d g_id o_id`. `q`, `k`, `v` and `o` hold f32 for [`attn_bwd`] and the element
/// type [`attn_bwd_stored`] is given; strides count elements of that type.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnBwd {
    /// Sizes.
    pub dims: AttnDims,
    /// Score scale and mask rule (those of the forward).
    pub scores: AttnScores,
    /// Queries.
    pub q: AttnView,
    /// Keys.
    pub k: AttnView,
    /// Values.
    pub v: AttnView,
    /// The forward's output.
    pub o: AttnView,
    /// The output's gradient `[b, h, nq, dv]`.
    pub g: AttnView,
    /// The forward's base-2 log-sum-exp `[b, h, nq]`.
    pub lse: DevicePtr,
    /// Scratch `[b, h, nq]` (written, then read).
    pub delta: DevicePtr,
    /// Gradient of the queries (written).
    pub dq: AttnView,
    /// Gradient of the keys (written).
    pub dk: AttnView,
    /// Gradient of the values (written).
    pub dv: AttnView,
}

/// Checks the sizes and the score options; `None` when there is nothing to launch.
fn check(op: &'static str, d: &AttnDims, s: &AttnScores) -> Result<Option<(u32, u32)>> {
    if !attn_supported(d.dh, d.dv) {
        return Err(Error::arg(
            op,
            format!(
                "head dimensions dh = {} and dv = {}: the fused attention kernels take at \
                 most {ATTN_MAX_HEAD_DIM}",
                d.dh, d.dv
            ),
        ));
    }
    if s.causal && d.nq > d.nk {
        return Err(Error::arg(
            op,
            format!(
                "causal attention needs no more queries than keys, got {} queries and {} keys",
                d.nq, d.nk
            ),
        ));
    }
    if !s.alpha.is_finite() {
        return Err(Error::arg(
            op,
            format!("alpha must be finite, got {}", s.alpha),
        ));
    }
    for (what, n) in [
        (
            "batch * heads * queries",
            d.b.saturating_mul(d.h).saturating_mul(d.nq),
        ),
        ("keys", d.nk),
    ] {
        count(op, what, n)?;
    }
    if d.b == 0 || d.h == 0 {
        return Ok(None);
    }
    Ok(Some((
        grid_yz(op, "heads", d.h)?,
        grid_yz(op, "batch", d.b)?,
    )))
}

/// The view's four strides as `u32` kernel arguments.
fn strides(op: &'static str, what: &str, v: &AttnView, out: &mut Vec<KernelArg>) -> Result<()> {
    for (axis, &s) in v.strides.iter().enumerate() {
        // The label is only formatted for the error: this runs on every launch.
        let n = if s > MAX_ELEMENTS {
            count(op, &format!("{what} stride of axis {axis}"), s)?
        } else {
            s as u32
        };
        out.push(KernelArg::U32(n));
    }
    Ok(())
}

/// `alpha * log2(e)`, the kernels' score multiplier.
fn scale_log2(s: &AttnScores) -> f32 {
    (s.alpha as f64 * LOG2_E) as f32
}

fn config(x: usize, (gy, gz): (u32, u32)) -> LaunchConfig {
    LaunchConfig {
        grid: (x as u32, gy, gz),
        block: (THREADS, 1, 1),
        shared_bytes: 0,
    }
}

/// The forward kernel for `precision` and the head dims, with its queries per CTA and its
/// dynamic shared memory in bytes.
fn fwd_kernel(p: AttnPrecision, d: &AttnDims) -> Result<(&'static str, usize, usize)> {
    match (p, d.dh, d.dv) {
        (AttnPrecision::F32, _, _) => Ok(("attn_fwd_f32", QUERY_TILE, 0)),
        (AttnPrecision::Bf16 | AttnPrecision::Bf16Inputs, 64, 64)
        | (AttnPrecision::Bf16 | AttnPrecision::Bf16Inputs, 128, 128) => {
            let bf16 = p == AttnPrecision::Bf16Inputs;
            let name = match (bf16, d.dh) {
                (false, 64) => "attn_fwd_bf16_d64",
                (false, _) => "attn_fwd_bf16_d128",
                (true, 64) => "attn_fwd_bf16s_d64",
                (true, _) => "attn_fwd_bf16s_d128",
            };
            let (tile, _, _) = tc_fwd_tile(bf16, d.dh);
            Ok((name, tile, tc_fwd_shared_bytes(bf16, d.dh)))
        }
        (AttnPrecision::Bf16 | AttnPrecision::Bf16Inputs, dh, dv) => Err(Error::arg(
            "attn_fwd_bf16",
            format!(
                "head dimensions dh = {dh} and dv = {dv}: the bf16 attention kernels take \
                 dh = dv = 64 or 128 (use AttnPrecision::F32)"
            ),
        )),
    }
}

/// The 16-byte rule of the bf16-input forward's `cp.async` loads for one bf16 operand:
/// feature stride 1, the other strides multiples of 8 elements, the address a multiple of 16.
fn check_chunks(op: &'static str, what: &str, v: &AttnView) -> Result<()> {
    let [sb, sh, sn, sd] = v.strides;
    if sd != 1 || [sb, sh, sn].iter().any(|s| !s.is_multiple_of(8)) || !v.ptr.0.is_multiple_of(16) {
        return Err(Error::arg(
            op,
            format!(
                "{what}: the bf16-input kernels load rows in 16-byte chunks and need feature \
                 stride 1, the other strides multiples of 8 elements and a 16-byte aligned \
                 address; got strides {:?} at address 0x{:x}",
                v.strides, v.ptr.0
            ),
        ));
    }
    Ok(())
}

/// Launches the forward kernel `a.precision` selects (`attn_fwd_f32`, `attn_fwd_bf16_d64`,
/// `attn_fwd_bf16_d128`, `attn_fwd_bf16s_d64` or `attn_fwd_bf16s_d128`). Nothing launches
/// when a batch, head or query count is 0.
pub fn attn_fwd(driver: &dyn Driver, a: &AttnFwd) -> Result<()> {
    launch_fwd(driver, a, None)
}

/// [`attn_fwd`] under a bf16 precision that also writes the output rounded to bf16 (to
/// nearest even) at `o_bf16`, token-major `[b, nq, h, dv]` (the rows `[b * nq, h * dv]` an
/// output projection reads as its bf16 input): in the same pass, the copy bf16 training
/// keeps for the backward.
pub fn attn_fwd_saving_bf16(driver: &dyn Driver, a: &AttnFwd, o_bf16: DevicePtr) -> Result<()> {
    if a.precision == AttnPrecision::F32 {
        return Err(Error::arg(
            "attn_fwd",
            "a bf16 copy of the output is written by the bf16 kernels only".to_string(),
        ));
    }
    launch_fwd(driver, a, Some(o_bf16))
}

/// The bf16-input forward at head dims 64 (`AttnPrecision::Bf16Inputs`) on Hopper's
/// warpgroup tensor cores (`attn_fwd_bf16s_d64_wgmma`, `ptx/attention_sm90.cu`: sm_90a, so a
/// compute-capability 9.0 GPU or the interpreter), with its optional bf16 copy of the output
/// as [`attn_fwd_saving_bf16`] writes it. [`attn_fwd`] runs it in place of
/// `attn_fwd_bf16s_d64` when [`super::wgmma_enabled`]. Its results are reproducible and, on
/// the interpreter, `attn_fwd_bf16s_d64`'s bits; on a GPU the two instructions may round a
/// 16-wide step differently.
pub fn attn_fwd_wgmma(driver: &dyn Driver, a: &AttnFwd, o_bf16: Option<DevicePtr>) -> Result<()> {
    const NAME: &str = "attn_fwd_bf16s_d64_wgmma";
    check_sm90_fwd(driver, NAME, a)?;
    let fwd = FwdKernel {
        module: &ATTENTION_SM90,
        name: NAME,
        tile: 128,
        threads: 256,
        shared_bytes: 128 * 64 * 2 + 2 * 2 * 64 * 64 * 2,
        tensor_maps: false,
    };
    launch_fwd_kernel(driver, a, o_bf16, fwd)
}

/// Dynamic shared memory of [`attn_fwd_tma`]: the Q tile (128 x 64 bf16), three stages of a
/// K and a V tile (64 x 64 bf16 each), 1 KiB to align them to the 128-byte swizzle's
/// 1,024-byte pattern, and seven mbarriers (`T_SMEM` in `ptx/attention_sm90.cu`).
pub const ATTN_TMA_SHARED_BYTES: u32 = 128 * 64 * 2 + 3 * 2 * 64 * 64 * 2 + 1024 + 7 * 8;

/// [`attn_fwd_wgmma`] on a warp-specialized CTA fed by TMA (`attn_fwd_bf16s_d64_tma`): one
/// warpgroup copies the Q tile and a ring of K and V tiles through mbarriers, two compute
/// the same tiles as the `wgmma` kernel from the 128-byte swizzled stages, so the results
/// are that kernel's bits. [`attn_fwd`] runs it when [`super::tma_enabled`]. Needs the
/// views' position, head and batch strides non-zero where that axis has more than one
/// entry (a tensor map's strides), besides the `wgmma` kernel's requirements.
pub fn attn_fwd_tma(driver: &dyn Driver, a: &AttnFwd, o_bf16: Option<DevicePtr>) -> Result<()> {
    const NAME: &str = "attn_fwd_bf16s_d64_tma";
    check_sm90_fwd(driver, NAME, a)?;
    let fwd = FwdKernel {
        module: &ATTENTION_SM90,
        name: NAME,
        tile: 128,
        threads: 384,
        shared_bytes: ATTN_TMA_SHARED_BYTES as usize,
        tensor_maps: true,
    };
    launch_fwd_kernel(driver, a, o_bf16, fwd)
}

/// What both Hopper forwards need: the bf16-input precision at head dims 64, and a 9.0 GPU.
fn check_sm90_fwd(driver: &dyn Driver, name: &'static str, a: &AttnFwd) -> Result<()> {
    let d = &a.dims;
    if a.precision != AttnPrecision::Bf16Inputs || d.dh != 64 || d.dv != 64 {
        return Err(Error::arg(
            name,
            format!(
                "the warpgroup forward takes AttnPrecision::Bf16Inputs at dh = dv = 64, got \
                 {:?} at dh = {} and dv = {}",
                a.precision, d.dh, d.dv
            ),
        ));
    }
    super::require_sm90(driver, name, name)
}

/// The tensor map [`attn_fwd_tma`] reads a `[b, h, n, 64]` bf16 view through: dims {64
/// features, `n` positions, `h` heads, `b` batch} with the view's strides, boxes of 64
/// features by `box_rows` positions, 128-byte swizzled. An axis of one entry gets a stride
/// that only has to be valid; a stride of 0 along a longer axis is refused (a tensor map
/// cannot repeat a slice).
fn rows_map(
    driver: &dyn Driver,
    name: &'static str,
    what: &str,
    v: &AttnView,
    (n, h, b): (usize, usize, usize),
    box_rows: u32,
) -> Result<KernelArg> {
    let [sb, sh, sn, _] = v.strides;
    let mut strides = Vec::new();
    for (axis, extent, stride) in [("position", n, sn), ("head", h, sh), ("batch", b, sb)] {
        let bytes = match (extent, stride) {
            (1, _) => 128,
            (_, 0) => {
                return Err(Error::arg(
                    name,
                    format!(
                        "{what}: the TMA kernels read through a tensor map, whose {axis} \
                         stride cannot be 0 over {extent} entries"
                    ),
                ))
            }
            (_, s) => 2 * s as u64,
        };
        strides.push(bytes);
    }
    let map = TensorMap {
        elem_bytes: 2,
        base: v.ptr.0,
        dims: vec![64, n as u64, h as u64, b as u64],
        strides,
        boxes: vec![64, box_rows, 1, 1],
        swizzle: Swizzle::B128,
    };
    Ok(KernelArg::TensorMap(driver.tensor_map(&map)?))
}

/// Which forward kernel a launch runs and how.
struct FwdKernel {
    module: &'static PtxModule,
    name: &'static str,
    /// Queries per CTA.
    tile: usize,
    threads: u32,
    shared_bytes: usize,
    /// Whether the kernel takes tensor maps of q, k and v ([`rows_map`]: boxes of the CTA's
    /// queries and of 64 keys) instead of their addresses.
    tensor_maps: bool,
}

fn launch_fwd(driver: &dyn Driver, a: &AttnFwd, o_bf16: Option<DevicePtr>) -> Result<()> {
    launch_fwd_with(driver, a, o_bf16, hopper_tiles(driver)?)
}

/// [`launch_fwd`] with the Hopper kernels `tiles` allows: the bf16-input forward at head
/// dims 64 on the TMA kernel or the `wgmma` one.
pub(super) fn launch_fwd_with(
    driver: &dyn Driver,
    a: &AttnFwd,
    o_bf16: Option<DevicePtr>,
    tiles: HopperTiles,
) -> Result<()> {
    let d = &a.dims;
    if a.precision == AttnPrecision::Bf16Inputs && (d.dh, d.dv) == (64, 64) {
        match tiles {
            HopperTiles::Tma => return attn_fwd_tma(driver, a, o_bf16),
            HopperTiles::Wgmma => return attn_fwd_wgmma(driver, a, o_bf16),
            HopperTiles::Off => {}
        }
    }
    let (name, tile, shared_bytes) = fwd_kernel(a.precision, d)?;
    let fwd = FwdKernel {
        module: &ATTENTION,
        name,
        tile,
        threads: THREADS,
        shared_bytes,
        tensor_maps: false,
    };
    launch_fwd_kernel(driver, a, o_bf16, fwd)
}

fn launch_fwd_kernel(
    driver: &dyn Driver,
    a: &AttnFwd,
    o_bf16: Option<DevicePtr>,
    fwd: FwdKernel,
) -> Result<()> {
    let d = &a.dims;
    let (name, tile, shared_bytes) = (fwd.name, fwd.tile, fwd.shared_bytes);
    let Some(yz) = check(name, d, &a.scores)? else {
        return Ok(());
    };
    if d.nq == 0 {
        return Ok(());
    }
    if a.precision == AttnPrecision::Bf16Inputs {
        for (what, v) in [("q", &a.q), ("k", &a.k), ("v", &a.v)] {
            check_chunks(name, what, v)?;
        }
    }
    let mut args = vec![KernelArg::Ptr(a.o.ptr), KernelArg::Ptr(a.lse)];
    if a.precision != AttnPrecision::F32 {
        args.push(KernelArg::Ptr(o_bf16.unwrap_or(DevicePtr(0))));
    }
    if fwd.tensor_maps {
        let rows = |what, v, n, box_rows| rows_map(driver, name, what, v, (n, d.h, d.b), box_rows);
        args.extend([
            rows("q", &a.q, d.nq, tile as u32)?,
            rows("k", &a.k, d.nk, 64)?,
            rows("v", &a.v, d.nk, 64)?,
        ]);
    } else {
        args.extend([
            KernelArg::Ptr(a.q.ptr),
            KernelArg::Ptr(a.k.ptr),
            KernelArg::Ptr(a.v.ptr),
        ]);
    }
    args.extend([
        KernelArg::U32(d.nq as u32),
        KernelArg::U32(d.nk as u32),
        KernelArg::U32(d.dh as u32),
        KernelArg::U32(d.dv as u32),
    ]);
    for (what, v) in [("q", &a.q), ("k", &a.k), ("v", &a.v), ("o", &a.o)] {
        strides(name, what, v, &mut args)?;
    }
    args.push(KernelArg::F32(scale_log2(&a.scores)));
    args.push(KernelArg::U32(a.scores.causal as u32));
    let base = config(d.nq.div_ceil(tile), yz);
    let cfg = LaunchConfig {
        shared_bytes: shared_bytes as u32,
        block: (fwd.threads, 1, 1),
        ..base
    };
    driver.launch(fwd.module, name, cfg, &args)
}

/// Launches the backward for `a` with f32 operands: `attn_bwd_dot_f32` (`D`), then
/// `attn_bwd_dkdv_f32` and `attn_bwd_dq_f32`. Every gradient element is written, zeros where
/// no score reaches it.
pub fn attn_bwd(driver: &dyn Driver, a: &AttnBwd) -> Result<()> {
    attn_bwd_stored(driver, a, AttnStorage::F32)
}

/// [`attn_bwd`] with `q`, `k`, `v` and `o` stored as `storage` (the `_bf16s` kernels for
/// [`AttnStorage::Bf16`]). [`AttnStorage::Bf16TensorCores`] runs the warpgroup kernels of
/// [`attn_bwd_wgmma`] instead when [`super::wgmma_enabled`], and those of [`attn_bwd_tma`]
/// when [`super::tma_enabled`].
pub fn attn_bwd_stored(driver: &dyn Driver, a: &AttnBwd, storage: AttnStorage) -> Result<()> {
    let tiles = match storage {
        AttnStorage::Bf16TensorCores => hopper_tiles(driver)?,
        _ => HopperTiles::Off,
    };
    bwd_stored(driver, a, storage, tiles)
}

/// The tensor-core backward ([`AttnStorage::Bf16TensorCores`]: head dims 64, the bf16-input
/// forward's 16-byte rule) with its dK/dV and dQ kernels on Hopper's warpgroup tensor cores
/// (`attn_bwd_dkdv_bf16_d64_wgmma`, `attn_bwd_dq_bf16_d64_wgmma`, `ptx/attention_sm90.cu`:
/// sm_90a, so a compute-capability 9.0 GPU or the interpreter). On the interpreter the bits
/// of the `mma.sync` kernels; on a GPU the two instructions may round a 16-wide step
/// differently.
pub fn attn_bwd_wgmma(driver: &dyn Driver, a: &AttnBwd) -> Result<()> {
    super::require_sm90(driver, "attn_bwd", "attn_bwd_*_bf16_d64_wgmma")?;
    bwd_stored(driver, a, AttnStorage::Bf16TensorCores, HopperTiles::Wgmma)
}

/// [`attn_bwd_wgmma`] on warp-specialized CTAs fed by TMA (`attn_bwd_dkdv_bf16_d64_tma`,
/// `attn_bwd_dq_bf16_d64_tma`): one warpgroup copies the other side's tiles (Q and dO with
/// their lse and D, or K and V) into a ring through mbarriers, two compute 64 keys or 64
/// queries each with the `wgmma` kernels' tile steps from the 128-byte swizzled stages, so
/// the results are those kernels' bits. Needs, besides their requirements, the tensor maps'
/// rules: q's position, head and batch strides non-zero where that axis has more than one
/// entry (k and v likewise), and `lse` and `delta` 16-byte aligned.
pub fn attn_bwd_tma(driver: &dyn Driver, a: &AttnBwd) -> Result<()> {
    super::require_sm90(driver, "attn_bwd", "attn_bwd_*_bf16_d64_tma")?;
    bwd_stored(driver, a, AttnStorage::Bf16TensorCores, HopperTiles::Tma)
}

/// Dynamic shared memory of [`attn_bwd_tma`]'s dK/dV kernel (`BK_SMEM` in
/// `ptx/attention_sm90.cu`): three stages of a Q and a dO tile (64 x 64 bf16 each) and 64
/// entries each of lse and D, padded to 1 KiB, another 1 KiB to align them to the 128-byte
/// swizzle's pattern, and six mbarriers.
pub const ATTN_BWD_TMA_DKDV_SHARED_BYTES: u32 = 3 * (2 * 64 * 64 * 2 + 1024) + 1024 + 6 * 8;

/// Dynamic shared memory of [`attn_bwd_tma`]'s dQ kernel (`BQ_SMEM`): three stages of a K
/// and a V tile, 1 KiB of alignment and six mbarriers.
pub const ATTN_BWD_TMA_DQ_SHARED_BYTES: u32 = 3 * 2 * 64 * 64 * 2 + 1024 + 6 * 8;

/// The dK/dV and dQ kernels a backward runs, and how.
struct BwdKernels {
    module: &'static PtxModule,
    dot: &'static str,
    dkdv: &'static str,
    dq: &'static str,
    /// Keys per dK/dV CTA and queries per dQ CTA.
    key_tile: usize,
    query_tile: usize,
    threads: u32,
    /// Dynamic shared memory of the dK/dV and the dQ kernel.
    shared: (u32, u32),
    /// Whether they take tensor maps of the ring's operands ([`rows_map`], [`rows_vec_map`])
    /// in place of their addresses.
    tensor_maps: bool,
}

impl BwdKernels {
    fn of(storage: AttnStorage, tiles: HopperTiles) -> BwdKernels {
        let ([dot, dkdv, dq], key_tile, query_tile) = storage.kernels();
        let base = BwdKernels {
            module: &ATTENTION,
            dot,
            dkdv,
            dq,
            key_tile,
            query_tile,
            threads: THREADS,
            shared: (0, 0),
            tensor_maps: false,
        };
        if storage != AttnStorage::Bf16TensorCores {
            return base;
        }
        match tiles {
            HopperTiles::Off => BwdKernels {
                shared: (SHARED_BWD_TENSOR_CORES, SHARED_BWD_TENSOR_CORES),
                ..base
            },
            HopperTiles::Wgmma => BwdKernels {
                module: &ATTENTION_SM90,
                dkdv: "attn_bwd_dkdv_bf16_d64_wgmma",
                dq: "attn_bwd_dq_bf16_d64_wgmma",
                shared: (SHARED_BWD_WGMMA, SHARED_BWD_WGMMA),
                ..base
            },
            HopperTiles::Tma => BwdKernels {
                module: &ATTENTION_SM90,
                dkdv: "attn_bwd_dkdv_bf16_d64_tma",
                dq: "attn_bwd_dq_bf16_d64_tma",
                key_tile: 128,
                query_tile: 128,
                threads: 384,
                shared: (ATTN_BWD_TMA_DKDV_SHARED_BYTES, ATTN_BWD_TMA_DQ_SHARED_BYTES),
                tensor_maps: true,
                ..base
            },
        }
    }
}

pub(super) fn bwd_stored(
    driver: &dyn Driver,
    a: &AttnBwd,
    storage: AttnStorage,
    tiles: HopperTiles,
) -> Result<()> {
    const OP: &str = "attn_bwd";
    let d = &a.dims;
    if storage == AttnStorage::Bf16TensorCores && (d.dh != 64 || d.dv != 64) {
        return Err(Error::arg(
            OP,
            format!(
                "the tensor-core backward takes head dims dh = dv = 64, got dh = {} and dv = {}",
                d.dh, d.dv
            ),
        ));
    }
    let Some(yz) = check(OP, d, &a.scores)? else {
        return Ok(());
    };
    let kernels = BwdKernels::of(storage, tiles);
    if storage != AttnStorage::Bf16TensorCores {
        return launch_bwd(driver, a, yz, None, &kernels);
    }
    for (what, v) in [("q", &a.q), ("k", &a.k), ("v", &a.v)] {
        check_chunks(OP, what, v)?;
    }
    // The dot kernel rounds dO into a contiguous bf16 `[b, h, nq, dv]` copy, which the dK/dV
    // and dQ kernels load by cp.async or TMA.
    let n = d.b * d.h * d.nq * d.dv;
    let scratch = driver.alloc((2 * n).max(16))?;
    let g16 = AttnView {
        ptr: scratch,
        strides: [d.h * d.nq * d.dv, d.nq * d.dv, d.dv, 1],
    };
    let ran = launch_bwd(driver, a, yz, Some(g16), &kernels);
    // Launches run in order, so the copy may go back as soon as they are queued.
    let freed = driver.free(scratch);
    ran.and(freed)
}

/// The one-dimensional f32 tensor map over all `[b, h, nq]` rows of the backward's `lse` or
/// `delta`, in boxes of 64 entries: a TMA copy of a tile's entries from row `(b h) nq + i0`.
fn rows_vec_map(
    driver: &dyn Driver,
    name: &'static str,
    what: &str,
    ptr: DevicePtr,
    rows: usize,
) -> Result<KernelArg> {
    if rows >= 1 << 31 {
        return Err(Error::arg(
            name,
            format!("{what}: {rows} rows are more than a TMA coordinate reaches (2^31)"),
        ));
    }
    let map = TensorMap {
        elem_bytes: 4,
        base: ptr.0,
        dims: vec![rows as u64],
        strides: vec![],
        boxes: vec![64],
        swizzle: Swizzle::None,
    };
    driver
        .tensor_map(&map)
        .map(KernelArg::TensorMap)
        .map_err(|e| Error::arg(name, format!("{what}: {e}")))
}

/// The backward's three launches. With `g16` (the tensor-core backward), the dot kernel also
/// writes dO rounded to bf16 there and the dK/dV and dQ kernels read it.
fn launch_bwd(
    driver: &dyn Driver,
    a: &AttnBwd,
    yz: (u32, u32),
    g16: Option<AttnView>,
    kernels: &BwdKernels,
) -> Result<()> {
    const OP: &str = "attn_bwd";
    let g_tiles = g16.unwrap_or(a.g);
    let d = &a.dims;
    let tiles = |x: usize, shared_bytes| LaunchConfig {
        shared_bytes,
        block: (kernels.threads, 1, 1),
        ..config(x, yz)
    };
    let sizes = || {
        [d.nq, d.nk, d.dh, d.dv]
            .into_iter()
            .map(|n| KernelArg::U32(n as u32))
    };
    let tail = |args: &mut Vec<KernelArg>| {
        args.push(KernelArg::F32(scale_log2(&a.scores)));
        args.push(KernelArg::F32(a.scores.alpha));
        args.push(KernelArg::U32(a.scores.causal as u32));
    };
    let maps = kernels.tensor_maps;
    let rows = |what, v, n| rows_map(driver, OP, what, v, (n, d.h, d.b), 64);
    let vec = |what, ptr| rows_vec_map(driver, OP, what, ptr, d.b * d.h * d.nq);
    let ptr = |v: &AttnView| KernelArg::Ptr(v.ptr);
    if d.nq > 0 {
        let mut args = vec![KernelArg::Ptr(a.delta)];
        if let Some(g16) = g16 {
            args.push(KernelArg::Ptr(g16.ptr));
        }
        args.extend([
            KernelArg::Ptr(a.o.ptr),
            KernelArg::Ptr(a.g.ptr),
            KernelArg::U32(d.nq as u32),
            KernelArg::U32(d.dv as u32),
        ]);
        strides(OP, "o", &a.o, &mut args)?;
        strides(OP, "g", &a.g, &mut args)?;
        let cfg = config(d.nq.div_ceil(DOT_ROWS), yz);
        driver.launch(&ATTENTION, kernels.dot, cfg, &args)?;
    }
    if d.nk > 0 {
        let mut args = vec![ptr(&a.dk), ptr(&a.dv)];
        if maps {
            args.extend([
                rows("q", &a.q, d.nq)?,
                ptr(&a.k),
                ptr(&a.v),
                rows("the bf16 copy of g", &g_tiles, d.nq)?,
                vec("lse", a.lse)?,
                vec("delta", a.delta)?,
            ]);
        } else {
            args.extend([ptr(&a.q), ptr(&a.k), ptr(&a.v), ptr(&g_tiles)]);
            args.extend([KernelArg::Ptr(a.lse), KernelArg::Ptr(a.delta)]);
        }
        args.extend(sizes());
        for (what, v) in [
            ("q", &a.q),
            ("k", &a.k),
            ("v", &a.v),
            ("g", &g_tiles),
            ("dk", &a.dk),
            ("dv", &a.dv),
        ] {
            strides(OP, what, v, &mut args)?;
        }
        tail(&mut args);
        let cfg = tiles(d.nk.div_ceil(kernels.key_tile), kernels.shared.0);
        driver.launch(kernels.module, kernels.dkdv, cfg, &args)?;
    }
    if d.nq > 0 {
        let mut args = vec![ptr(&a.dq), ptr(&a.q)];
        if maps {
            args.extend([rows("k", &a.k, d.nk)?, rows("v", &a.v, d.nk)?]);
        } else {
            args.extend([ptr(&a.k), ptr(&a.v)]);
        }
        args.extend([
            ptr(&g_tiles),
            KernelArg::Ptr(a.lse),
            KernelArg::Ptr(a.delta),
        ]);
        args.extend(sizes());
        for (what, v) in [
            ("q", &a.q),
            ("k", &a.k),
            ("v", &a.v),
            ("g", &g_tiles),
            ("dq", &a.dq),
        ] {
            strides(OP, what, v, &mut args)?;
        }
        tail(&mut args);
        let cfg = tiles(d.nq.div_ceil(kernels.query_tile), kernels.shared.1);
        driver.launch(kernels.module, kernels.dq, cfg, &args)?;
    }
    Ok(())
}

/// Keys per CTA of the decode kernel: fixed, so the order of its sums depends on the cache
/// length alone.
pub const DECODE_CHUNK: usize = 256;

/// Chunks of [`DECODE_CHUNK`] keys the decode kernel splits a cache of `nk` keys into (at
/// least one, so an empty cache still writes its zero output).
fn decode_splits(nk: usize) -> usize {
    nk.div_ceil(DECODE_CHUNK).max(1)
}

/// f32 elements of the scratch [`attn_decode`] needs: `[b, h, splits, dv + 2]`.
pub fn decode_scratch_len(b: usize, h: usize, nk: usize, dv: usize) -> usize {
    b * h * decode_splits(nk) * (dv + 2)
}

/// One new query per (batch, head) over a KV cache of `dims.nk` keys (`dims.nq` must be 1;
/// no causal rule: the query sees the whole cache): `o` (`[b, h, 1, dv]`, any strides) and
/// the base-2 `lse` (`[b, h]`), through `scratch` (at least [`decode_scratch_len`] f32).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnDecode {
    /// Sizes (`nq == 1`).
    pub dims: AttnDims,
    /// `scale / temperature`; finite.
    pub alpha: f32,
    /// The queries `[b, h, 1, dh]`.
    pub q: AttnView,
    /// Cached keys `[b, h, nk, dh]`.
    pub k: AttnView,
    /// Cached values `[b, h, nk, dv]`.
    pub v: AttnView,
    /// Output `[b, h, 1, dv]` (written).
    pub o: AttnView,
    /// `[b, h]` base-2 log-sum-exp (written).
    pub lse: DevicePtr,
    /// Partial results of the key chunks (written, then read).
    pub scratch: DevicePtr,
    /// The key and value of the last cached position, taken from here instead of the cache
    /// and written into it by the same launch (see [`DecodeAppend`]).
    pub append: Option<DecodeAppend>,
}

/// The new position of a decode step: its key `[b, h, 1, dh]` and value `[b, h, 1, dv]`
/// (views of the projection). The decode kernels read them in place of the cache's last
/// position (`nk - 1`) and write them there, one launch instead of a copy and a decode with
/// the same bits. The cache's views must be writable there.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DecodeAppend {
    /// The new keys.
    pub k: AttnView,
    /// The new values.
    pub v: AttnView,
}

/// How [`attn_decode_with`] runs a decode step; every way gives the same bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeLaunch {
    /// [`DecodeLaunch::Fused`] when the cache is one chunk or there are at least
    /// [`DECODE_FUSED_HEADS`] (batch, head) pairs to fill the GPU with, else
    /// [`DecodeLaunch::Split`].
    Auto,
    /// `attn_decode_partial_f32`, one CTA per chunk of [`DECODE_CHUNK`] keys, then
    /// `attn_decode_combine_f32`, which merges the chunks in order: parallel over the
    /// cache, for few heads and long caches.
    Split,
    /// `attn_decode_f32`: one CTA per (batch, head) walking its chunks in order, in one
    /// launch and without the scratch.
    Fused,
}

/// (batch, head) pairs from which [`DecodeLaunch::Auto`] runs a long cache in one launch
/// (one CTA each): about two per multiprocessor of a large GPU.
pub const DECODE_FUSED_HEADS: usize = 256;

/// [`attn_decode_with`] as [`DecodeLaunch::Auto`] picks.
pub fn attn_decode(driver: &dyn Driver, a: &AttnDecode) -> Result<()> {
    attn_decode_with(driver, a, DecodeLaunch::Auto)
}

/// One decode step over chunks of [`DECODE_CHUNK`] keys merged in order, launched as `how`
/// says (the scratch is only used by [`DecodeLaunch::Split`]).
pub fn attn_decode_with(driver: &dyn Driver, a: &AttnDecode, how: DecodeLaunch) -> Result<()> {
    const OP: &str = "attn_decode";
    let d = &a.dims;
    if d.nq != 1 {
        return Err(Error::arg(
            OP,
            format!("decoding takes one query per head, got {}", d.nq),
        ));
    }
    let scores = AttnScores {
        alpha: a.alpha,
        causal: false,
    };
    let Some(yz) = check(OP, d, &scores)? else {
        return Ok(());
    };
    let splits = decode_splits(d.nk);
    count(OP, "scratch", decode_scratch_len(d.b, d.h, d.nk, d.dv))?;
    let fused = match how {
        DecodeLaunch::Auto => splits == 1 || d.b * d.h >= DECODE_FUSED_HEADS,
        DecodeLaunch::Split => false,
        DecodeLaunch::Fused => true,
    };
    let o3 = AttnView {
        strides: [a.o.strides[0], a.o.strides[1], a.o.strides[3], 0],
        ..a.o
    };
    let mut o_strides = Vec::new();
    strides(OP, "o", &o3, &mut o_strides)?;
    let mut args = vec![
        KernelArg::Ptr(a.scratch),
        KernelArg::Ptr(a.q.ptr),
        KernelArg::Ptr(a.k.ptr),
        KernelArg::Ptr(a.v.ptr),
        KernelArg::U32(d.nk as u32),
        KernelArg::U32(d.dh as u32),
        KernelArg::U32(d.dv as u32),
        KernelArg::U32(DECODE_CHUNK as u32),
    ];
    let q3 = AttnView {
        strides: [a.q.strides[0], a.q.strides[1], a.q.strides[3], 0],
        ..a.q
    };
    for (i, (what, v)) in [("q", &q3), ("k", &a.k), ("v", &a.v)]
        .into_iter()
        .enumerate()
    {
        let mut s = Vec::new();
        strides(OP, what, v, &mut s)?;
        // The query has no position axis: batch, head and feature strides only.
        args.extend(if i == 0 { &s[..3] } else { &s[..] }.iter().copied());
    }
    let scale = KernelArg::F32(scale_log2(&scores));
    // Both kernels end with the appended row: its views' batch, head and feature strides and
    // the cache's own addresses to write it to; null pointers when there is none.
    let mut append = vec![KernelArg::Ptr(DevicePtr(0)); 4];
    append.extend([KernelArg::U32(0); 6]);
    if let Some(ap) = &a.append {
        if d.nk == 0 {
            return Err(Error::arg(
                OP,
                "appending needs a cache of at least one position",
            ));
        }
        append = vec![
            KernelArg::Ptr(ap.k.ptr),
            KernelArg::Ptr(ap.v.ptr),
            KernelArg::Ptr(a.k.ptr),
            KernelArg::Ptr(a.v.ptr),
        ];
        for (what, v) in [("new k", &ap.k), ("new v", &ap.v)] {
            let mut s = Vec::new();
            strides(OP, what, v, &mut s)?;
            append.extend([s[0], s[1], s[3]]);
        }
    }
    if fused {
        // The partial kernel's arguments with the output's in place of the scratch.
        args[0] = KernelArg::Ptr(a.lse);
        args.insert(0, KernelArg::Ptr(a.o.ptr));
        args.extend(o_strides[..3].iter().copied());
        args.push(scale);
        args.extend(append);
        return driver.launch(&ATTENTION, "attn_decode_f32", config(1, yz), &args);
    }
    args.push(scale);
    args.extend(append);
    driver.launch(
        &ATTENTION,
        "attn_decode_partial_f32",
        config(splits, yz),
        &args,
    )?;
    let mut args = vec![
        KernelArg::Ptr(a.o.ptr),
        KernelArg::Ptr(a.lse),
        KernelArg::Ptr(a.scratch),
        KernelArg::U32(splits as u32),
        KernelArg::U32(d.dv as u32),
    ];
    args.extend(o_strides[..3].iter().copied());
    let combine = LaunchConfig {
        grid: (1, yz.0, yz.1),
        block: (32, 1, 1),
        shared_bytes: 0,
    };
    driver.launch(&ATTENTION, "attn_decode_combine_f32", combine, &args)
}
