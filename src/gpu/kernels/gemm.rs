//! Launch wrappers for `ptx/gemm.cu`: f32 GEMM with any strides, and bf16 GEMM on tensor
//! cores.

use super::{grid_yz, GEMM, GEMM_SM90};
use crate::error::{Error, Result};
use crate::gpu::driver::{DevicePtr, Driver, KernelArg, LaunchConfig, PtxModule};
use crate::gpu::tensor_map::{Swizzle, TensorMap};

/// `flags` bit: add `bias[j]` to every row (`enum GemmFlags` in ptx/gemm.cu).
pub(super) const GEMM_HAS_BIAS: u32 = 1;

/// Output tile of the f32 GEMM (rows and columns per CTA).
const TILE: usize = 64;

/// `C = alpha * A B + beta * C + bias` in f32, batched: `A` is `[m, k]` at
/// `a[i * a_rs + l * a_cs]`, `B` is `[k, n]` at `b[l * b_rs + j * b_cs]`, `C` is `[m, n]` at
/// `c[i * c_rs + j]`; batch `z` adds `z * a_bs` (and `b_bs`, `c_bs`) elements. A transposed
/// operand is just its strides. With `beta == 0`, `C` is not read.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GemmF32 {
    /// Rows of `A` and `C`.
    pub m: usize,
    /// Columns of `B` and `C`.
    pub n: usize,
    /// The reduced dimension.
    pub k: usize,
    /// Number of independent products (grid z).
    pub batch: usize,
    /// Output.
    pub c: DevicePtr,
    /// Row stride of `C` (its column stride is 1).
    pub c_rs: usize,
    /// Batch stride of `C`.
    pub c_bs: usize,
    /// Left operand.
    pub a: DevicePtr,
    /// Row and column strides of `A`.
    pub a_rs: usize,
    /// See `a_rs`.
    pub a_cs: usize,
    /// Batch stride of `A` (0 shares one `A` across the batch).
    pub a_bs: usize,
    /// Right operand.
    pub b: DevicePtr,
    /// Row and column strides of `B`.
    pub b_rs: usize,
    /// See `b_rs`.
    pub b_cs: usize,
    /// Batch stride of `B` (0 shares one `B`, e.g. a weight).
    pub b_bs: usize,
    /// Optional `[n]` f32 bias added to every row.
    pub bias: Option<DevicePtr>,
    /// Scale of the product.
    pub alpha: f32,
    /// Scale of the previous `C` (0: overwrite; 1: accumulate a gradient).
    pub beta: f32,
}

/// A size or stride as the kernels' `u32` parameter, at most [`super::MAX_ELEMENTS`] so that
/// no loop or index in the kernel overflows.
fn u32_of(op: &'static str, what: &str, v: usize) -> Result<u32> {
    super::count(op, what, v)
}

/// The grid of a GEMM tiled `tile.0` rows x `tile.1` columns, or `None` when the output is
/// empty.
fn tiled_grid(
    op: &'static str,
    tile: (usize, usize),
    m: usize,
    n: usize,
    batch: usize,
) -> Result<Option<(u32, u32, u32)>> {
    if m == 0 || n == 0 || batch == 0 {
        return Ok(None);
    }
    let gx = u32_of(op, "column tiles", n.div_ceil(tile.1))?;
    Ok(Some((
        gx,
        grid_yz(op, "row tiles", m.div_ceil(tile.0))?,
        grid_yz(op, "batch", batch)?,
    )))
}

/// Checks that `C` rows do not overlap (`c_rs >= n`): overlapping outputs would race.
fn check_c(op: &'static str, c_rs: usize, n: usize, m: usize) -> Result<()> {
    if m > 1 && c_rs < n {
        return Err(Error::arg(
            op,
            format!("C's row stride {c_rs} is smaller than its {n} columns: rows would overlap"),
        ));
    }
    Ok(())
}

/// Launches `gemm_f32` for `g`. Nothing launches when `m`, `n` or `batch` is 0; with `k ==
/// 0` the product is 0 and `C = beta * C + bias`.
pub fn gemm_f32(driver: &dyn Driver, g: &GemmF32) -> Result<()> {
    const NAME: &str = "gemm_f32";
    check_c(NAME, g.c_rs, g.n, g.m)?;
    if !(g.alpha.is_finite() && g.beta.is_finite()) {
        return Err(Error::arg(
            NAME,
            format!("alpha {} and beta {} must be finite", g.alpha, g.beta),
        ));
    }
    let Some(grid) = tiled_grid(NAME, (TILE, TILE), g.m, g.n, g.batch)? else {
        return Ok(());
    };
    let u = |what, v| u32_of(NAME, what, v).map(KernelArg::U32);
    let args = [
        KernelArg::Ptr(g.c),
        KernelArg::Ptr(g.a),
        KernelArg::Ptr(g.b),
        KernelArg::Ptr(g.bias.unwrap_or(DevicePtr(0))),
        u("m", g.m)?,
        u("n", g.n)?,
        u("k", g.k)?,
        u("a_rs", g.a_rs)?,
        u("a_cs", g.a_cs)?,
        u("b_rs", g.b_rs)?,
        u("b_cs", g.b_cs)?,
        u("c_rs", g.c_rs)?,
        u("a_bs", g.a_bs)?,
        u("b_bs", g.b_bs)?,
        u("c_bs", g.c_bs)?,
        KernelArg::F32(g.alpha),
        KernelArg::F32(g.beta),
        KernelArg::U32(g.bias.map_or(0, |_| GEMM_HAS_BIAS)),
    ];
    let config = LaunchConfig {
        grid,
        block: (256, 1, 1),
        shared_bytes: 0,
    };
    driver.launch(&GEMM, NAME, config, &args)
}

/// The second epilogue stage of [`gemm_f32_epilogue`], over an `[m, n]` matrix `aux` with
/// row stride `aux_rs` (batch stride `c_bs`, as `C`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmEpilogue {
    /// `aux = v` (the pre-activation, written for the backward), `C = gelu(v)` (exact erf).
    Gelu {
        /// Where the pre-activation goes.
        aux: DevicePtr,
        /// Its row stride.
        aux_rs: usize,
    },
    /// `C = aux + v`: a residual added to the product (`aux` is read only).
    Residual {
        /// The residual.
        aux: DevicePtr,
        /// Its row stride.
        aux_rs: usize,
    },
    /// `C = v * gelu'(aux)` (exact erf GELU's derivative, `aux` read only): the MLP's data
    /// gradient `(g W2) * gelu'(pre)` with the saved pre-activation.
    GeluGrad {
        /// The pre-activation.
        aux: DevicePtr,
        /// Its row stride.
        aux_rs: usize,
    },
}

impl GemmEpilogue {
    /// The kernel that applies this stage, and its `aux` matrix with its row stride.
    pub fn parts(self) -> (&'static str, DevicePtr, usize) {
        match self {
            GemmEpilogue::Gelu { aux, aux_rs } => ("gemm_f32_gelu", aux, aux_rs),
            GemmEpilogue::Residual { aux, aux_rs } => ("gemm_f32_residual", aux, aux_rs),
            GemmEpilogue::GeluGrad { aux, aux_rs } => ("gemm_f32_gelu_grad", aux, aux_rs),
        }
    }
}

impl GemmEpilogue {
    /// The bf16 tensor-core kernel that applies this stage after a product in `layout` on the
    /// small tile: `A` must be stored as is ([`Bf16Layout::NN`] or [`Bf16Layout::NT`]).
    pub fn bf16_kernel(self, layout: Bf16Layout) -> Option<&'static str> {
        self.bf16_kernel_on(layout, Bf16Tile::Small)
    }

    /// [`GemmEpilogue::bf16_kernel`] on `tile`.
    pub fn bf16_kernel_on(self, layout: Bf16Layout, tile: Bf16Tile) -> Option<&'static str> {
        use Bf16Layout::{NN, NT};
        use Bf16Tile::{Large, Small};
        use GemmEpilogue::*;
        Some(match (layout, self, tile) {
            (NN, Gelu { .. }, Small) => "gemm_bf16_nn_gelu",
            (NN, Residual { .. }, Small) => "gemm_bf16_nn_residual",
            (NN, GeluGrad { .. }, Small) => "gemm_bf16_nn_gelu_grad",
            (NT, Gelu { .. }, Small) => "gemm_bf16_nt_gelu",
            (NT, Residual { .. }, Small) => "gemm_bf16_nt_residual",
            (NT, GeluGrad { .. }, Small) => "gemm_bf16_nt_gelu_grad",
            (NN, Gelu { .. }, Large) => "gemm_bf16_nn_gelu_128",
            (NN, Residual { .. }, Large) => "gemm_bf16_nn_residual_128",
            (NN, GeluGrad { .. }, Large) => "gemm_bf16_nn_gelu_grad_128",
            (NT, Gelu { .. }, Large) => "gemm_bf16_nt_gelu_128",
            (NT, Residual { .. }, Large) => "gemm_bf16_nt_residual_128",
            (NT, GeluGrad { .. }, Large) => "gemm_bf16_nt_gelu_grad_128",
            (Bf16Layout::TN | Bf16Layout::TT, _, _) => return None,
        })
    }
}

/// [`gemm_f32`] with a second epilogue stage: `gemm_f32_gelu`, `gemm_f32_residual` or
/// `gemm_f32_gelu_grad`. `beta` must be 0 (the stages follow a product that overwrites `C`).
pub fn gemm_f32_epilogue(driver: &dyn Driver, g: &GemmF32, epi: GemmEpilogue) -> Result<()> {
    let (name, aux, aux_rs) = epi.parts();
    check_c(name, g.c_rs, g.n, g.m)?;
    check_c(name, aux_rs, g.n, g.m)?;
    if !g.alpha.is_finite() || g.beta != 0.0 {
        return Err(Error::arg(
            name,
            format!("alpha {} must be finite and beta {} zero", g.alpha, g.beta),
        ));
    }
    let Some(grid) = tiled_grid(name, (TILE, TILE), g.m, g.n, g.batch)? else {
        return Ok(());
    };
    let u = |what, v| u32_of(name, what, v).map(KernelArg::U32);
    let args = [
        KernelArg::Ptr(g.c),
        KernelArg::Ptr(g.a),
        KernelArg::Ptr(g.b),
        KernelArg::Ptr(g.bias.unwrap_or(DevicePtr(0))),
        KernelArg::Ptr(aux),
        u("m", g.m)?,
        u("n", g.n)?,
        u("k", g.k)?,
        u("a_rs", g.a_rs)?,
        u("a_cs", g.a_cs)?,
        u("b_rs", g.b_rs)?,
        u("b_cs", g.b_cs)?,
        u("c_rs", g.c_rs)?,
        u("aux_rs", aux_rs)?,
        u("a_bs", g.a_bs)?,
        u("b_bs", g.b_bs)?,
        u("c_bs", g.c_bs)?,
        KernelArg::F32(g.alpha),
        KernelArg::F32(g.beta),
        KernelArg::U32(g.bias.map_or(0, |_| GEMM_HAS_BIAS)),
    ];
    let config = LaunchConfig {
        grid,
        block: (256, 1, 1),
        shared_bytes: 0,
    };
    driver.launch(&GEMM, name, config, &args)
}

/// How the bf16 GEMM's operands are stored (BLAS letters for row-major storage): the first
/// letter for `A` (`[m, k]`), the second for `B` (`[k, n]`); `N` = as is, `T` = stored
/// transposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bf16Layout {
    /// `A` at `a[i * lda + l]`, `B` at `b[l * ldb + j]`.
    NN,
    /// `A` at `a[i * lda + l]`, `B` at `b[j * ldb + l]`: `x W^T` for a Linear weight
    /// `W [out, in]`.
    NT,
    /// `A` at `a[l * lda + i]`, `B` at `b[l * ldb + j]`: a weight gradient `g^T x`.
    TN,
    /// `A` at `a[l * lda + i]`, `B` at `b[j * ldb + l]`.
    TT,
}

impl Bf16Layout {
    /// The kernel's entry name on the small tile.
    pub fn kernel(self) -> &'static str {
        self.kernel_on(Bf16Tile::Small)
    }

    /// The kernel's entry name on `tile`.
    pub fn kernel_on(self, tile: Bf16Tile) -> &'static str {
        match (self, tile) {
            (Bf16Layout::NN, Bf16Tile::Small) => "gemm_bf16_nn",
            (Bf16Layout::NT, Bf16Tile::Small) => "gemm_bf16_nt",
            (Bf16Layout::TN, Bf16Tile::Small) => "gemm_bf16_tn",
            (Bf16Layout::TT, Bf16Tile::Small) => "gemm_bf16_tt",
            (Bf16Layout::NN, Bf16Tile::Large) => "gemm_bf16_nn_128",
            (Bf16Layout::NT, Bf16Tile::Large) => "gemm_bf16_nt_128",
            (Bf16Layout::TN, Bf16Tile::Large) => "gemm_bf16_tn_128",
            (Bf16Layout::TT, Bf16Tile::Large) => "gemm_bf16_tt_128",
        }
    }

    /// Whether `A` is stored with `k` contiguous, and whether `B` is.
    fn k_contiguous(self) -> (bool, bool) {
        match self {
            Bf16Layout::NN => (true, false),
            Bf16Layout::NT => (true, true),
            Bf16Layout::TN => (false, false),
            Bf16Layout::TT => (false, true),
        }
    }
}

/// The CTA tile of the bf16 GEMM. Both give the same bits (each output sums the same
/// 16-wide k-steps in the same order); they differ in speed only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bf16Tile {
    /// 64 x 64 outputs per CTA (4 warps of 32 x 32, two pipeline stages, 20 KiB of shared
    /// memory): many CTAs for a small product.
    Small,
    /// 128 x 128 outputs per CTA (4 warps of 64 x 64, four stages, 80 KiB): half the
    /// shared- and global-memory traffic per flop, for products that fill the GPU anyway.
    Large,
}

/// Large-tile CTAs a product needs before [`Bf16Tile::pick`] takes the large tile: one per
/// multiprocessor of the large cards the tile is for (132 on an H100 or H200). Below it the
/// small tile's four times as many CTAs keep more of the GPU busy.
pub const LARGE_TILE_MIN_CTAS: usize = 132;

impl Bf16Tile {
    /// The tile for an `[m, n]` output over `batch` products.
    pub fn pick(m: usize, n: usize, batch: usize) -> Bf16Tile {
        let ctas = m.div_ceil(128) * n.div_ceil(128) * batch;
        if ctas >= LARGE_TILE_MIN_CTAS {
            Bf16Tile::Large
        } else {
            Bf16Tile::Small
        }
    }

    /// Rows (and columns) of `C` per CTA.
    pub fn edge(self) -> usize {
        match self {
            Bf16Tile::Small => 64,
            Bf16Tile::Large => 128,
        }
    }

    /// Dynamic shared memory per CTA, in bytes: the pipeline's stages of both operands, as
    /// `Bf16Tile::SMEM_BYTES` in ptx/gemm.cu.
    pub fn shared_bytes(self) -> u32 {
        // Per stage and operand, the larger of [edge][32 + 8] and [32][edge + 8] bf16.
        let stage = |edge: u32| (edge * 40).max(32 * (edge + 8)) * 2;
        match self {
            Bf16Tile::Small => 2 * 2 * stage(64),
            Bf16Tile::Large => 4 * 2 * stage(128),
        }
    }
}

/// `C = alpha * A B + beta * C + bias` with bf16 `A`, `B` (tensor cores, f32 accumulation)
/// and f32 `C` (`c[i * ldc + j]`), batched. Requirements (checked): `lda`, `ldb` and the
/// operand batch strides are multiples of 8 elements, `a` and `b` 16-byte aligned, and each
/// leading dimension at least its contiguous extent.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GemmBf16 {
    /// Storage of the operands.
    pub layout: Bf16Layout,
    /// Rows of `A` and `C`.
    pub m: usize,
    /// Columns of `B` and `C`.
    pub n: usize,
    /// The reduced dimension.
    pub k: usize,
    /// Number of independent products (grid z).
    pub batch: usize,
    /// Output (f32).
    pub c: DevicePtr,
    /// Row stride of `C`.
    pub ldc: usize,
    /// Batch stride of `C`.
    pub c_bs: usize,
    /// Left operand (bf16).
    pub a: DevicePtr,
    /// Leading dimension of `A` in its storage.
    pub lda: usize,
    /// Batch stride of `A` (0 shares it).
    pub a_bs: usize,
    /// Right operand (bf16).
    pub b: DevicePtr,
    /// Leading dimension of `B` in its storage.
    pub ldb: usize,
    /// Batch stride of `B` (0 shares it).
    pub b_bs: usize,
    /// Optional `[n]` f32 bias.
    pub bias: Option<DevicePtr>,
    /// Scale of the product.
    pub alpha: f32,
    /// Scale of the previous `C`.
    pub beta: f32,
}

/// Launches the bf16 tensor-core GEMM for `g` (the entry named by `g.layout`, on the tile
/// [`Bf16Tile::pick`] chooses), split over `k` as [`split_k_plan`] says; with
/// [`wgmma_enabled`], on the warpgroup tile [`WgmmaTile::pick`] chooses (a split product's
/// ranges on the 128 tile).
pub fn gemm_bf16(driver: &dyn Driver, g: &GemmBf16) -> Result<()> {
    gemm_bf16_with(driver, g, hopper_tiles(driver)?)
}

/// [`gemm_bf16`] with the Hopper tiles `tiles` allows.
pub(super) fn gemm_bf16_with(driver: &dyn Driver, g: &GemmBf16, tiles: HopperTiles) -> Result<()> {
    if tiles == HopperTiles::Tma {
        // Planned for the TMA tile's 128 x 256 CTAs; when it does not split, neither does
        // split_k_plan (fewer CTAs per split can only ask for more splits).
        let splits = split_k_plan_tma(g);
        if splits > 1 {
            return gemm_bf16_split_k_tma(driver, g, splits);
        }
    }
    let splits = split_k_plan(g);
    if tiles != HopperTiles::Off {
        if splits > 1 {
            return gemm_bf16_split_k_wgmma(driver, g, WgmmaTile::N128, splits);
        }
        if let Some(tile) = WgmmaTile::pick(g.m, g.n, g.batch) {
            if tile == WgmmaTile::N256 && tiles == HopperTiles::Tma {
                return gemm_bf16_tma(driver, g, None);
            }
            return gemm_bf16_wgmma(driver, g, None, tile);
        }
    }
    match splits {
        1 => launch_bf16(driver, g, None, Bf16Tile::pick(g.m, g.n, g.batch)),
        splits => gemm_bf16_split_k(driver, g, Bf16Tile::Large, splits),
    }
}

/// Fewest `k` values per split of [`split_k_plan`] (16 k-tiles: the pipeline's prologue and
/// the split's second pass stay small against the products).
pub const SPLIT_MIN_K: usize = 512;

/// Most splits [`split_k_plan`] makes.
pub const SPLIT_MAX: usize = 16;

/// Into how many `k`-ranges [`gemm_bf16`] splits `g` (1: none). A product with few outputs
/// and a long `k`, such as a weight gradient `g^T x` over every token of a batch (ImageNet64:
/// `[768, 768]` outputs, `k` = 16,384 rows per 16 images), has too few 128 x 128 tiles to
/// occupy the GPU: it doubles the splits until there are [`LARGE_TILE_MIN_CTAS`] CTAs,
/// keeping at least [`SPLIT_MIN_K`] of `k` per split, at most [`SPLIT_MAX`] splits, and `k`
/// a multiple of 8 per split. Only single products (`batch` 1) split.
pub fn split_k_plan(g: &GemmBf16) -> usize {
    split_plan(g, 128)
}

/// [`split_k_plan`] for the TMA tile's CTAs of 128 x 256 outputs ([`gemm_bf16_split_k_tma`]).
pub fn split_k_plan_tma(g: &GemmBf16) -> usize {
    split_plan(g, 256)
}

/// The splits of [`split_k_plan`] for CTAs of 128 rows by `cols` columns.
fn split_plan(g: &GemmBf16, cols: usize) -> usize {
    if g.batch != 1 || g.m == 0 || g.n == 0 {
        return 1;
    }
    let ctas = g.m.div_ceil(128) * g.n.div_ceil(cols);
    let mut splits = 1;
    while ctas * splits < LARGE_TILE_MIN_CTAS && splits < SPLIT_MAX {
        let next = 2 * splits;
        if !g.k.is_multiple_of(8 * next) || g.k / next < SPLIT_MIN_K {
            break;
        }
        splits = next;
    }
    splits
}

/// [`gemm_bf16`] on `tile` with `k` split into `splits` equal ranges: the ranges' products go
/// to a workspace of `splits` f32 `[m, n]` matrices (one launch, the ranges as its batches),
/// then `gemm_splitk_reduce` adds them in increasing order and applies `alpha`, `beta` and
/// the bias. The result is deterministic but not the unsplit product's bits (the k-sum is
/// rounded per range first). Needs `batch` 1 and `k` a multiple of `8 * splits`; `splits` 1
/// is the plain product.
pub fn gemm_bf16_split_k(
    driver: &dyn Driver,
    g: &GemmBf16,
    tile: Bf16Tile,
    splits: usize,
) -> Result<()> {
    split_k_with(driver, g, splits, &|p| launch_bf16(driver, p, None, tile))
}

/// [`gemm_bf16_split_k`] with the ranges' products on a warpgroup tile
/// ([`gemm_bf16_wgmma`]).
pub fn gemm_bf16_split_k_wgmma(
    driver: &dyn Driver,
    g: &GemmBf16,
    tile: WgmmaTile,
    splits: usize,
) -> Result<()> {
    split_k_with(driver, g, splits, &|p| {
        gemm_bf16_wgmma(driver, p, None, tile)
    })
}

/// [`gemm_bf16_split_k`] with the ranges' products on the TMA tile ([`gemm_bf16_tma`]: the
/// ranges are the batches of its tensor maps, each map's `k` extent one range, so a copy past
/// a range's end reads the zero fill, not the next range).
pub fn gemm_bf16_split_k_tma(driver: &dyn Driver, g: &GemmBf16, splits: usize) -> Result<()> {
    split_k_with(driver, g, splits, &|p| gemm_bf16_tma(driver, p, None))
}

/// The split product of [`gemm_bf16_split_k`], each launch of a product through `product`.
fn split_k_with(
    driver: &dyn Driver,
    g: &GemmBf16,
    splits: usize,
    product: &dyn Fn(&GemmBf16) -> Result<()>,
) -> Result<()> {
    const OP: &str = "gemm_bf16_split_k";
    if splits == 1 {
        return product(g);
    }
    if splits == 0 || g.batch != 1 || !g.k.is_multiple_of(8 * splits) {
        return Err(Error::arg(
            OP,
            format!(
                "{splits} splits need batch 1 (got {}) and k a multiple of {} (got {})",
                g.batch,
                8 * splits.max(1),
                g.k
            ),
        ));
    }
    if g.m == 0 || g.n == 0 {
        return Ok(());
    }
    check_c(OP, g.ldc, g.n, g.m)?;
    let mn = g.m * g.n;
    let total = super::product(OP, &[splits, mn])?;
    u32_of(OP, "workspace", total)?;
    let ks = g.k / splits;
    let (a_k, b_k) = g.layout.k_contiguous();
    let ws = driver.alloc(4 * total)?;
    let partial = GemmBf16 {
        k: ks,
        batch: splits,
        c: ws,
        ldc: g.n,
        c_bs: mn,
        a_bs: ks * if a_k { 1 } else { g.lda },
        b_bs: ks * if b_k { 1 } else { g.ldb },
        bias: None,
        alpha: 1.0,
        beta: 0.0,
        ..*g
    };
    let ran = product(&partial).and_then(|()| {
        let u = |what, v| u32_of(OP, what, v).map(KernelArg::U32);
        let args = [
            KernelArg::Ptr(g.c),
            KernelArg::Ptr(ws),
            KernelArg::Ptr(g.bias.unwrap_or(DevicePtr(0))),
            u("m", g.m)?,
            u("n", g.n)?,
            u("ldc", g.ldc)?,
            u("splits", splits)?,
            KernelArg::F32(g.alpha),
            KernelArg::F32(g.beta),
            KernelArg::U32(g.bias.map_or(0, |_| GEMM_HAS_BIAS)),
        ];
        let config = super::linear_config(mn as u32);
        driver.launch(&GEMM, "gemm_splitk_reduce", config, &args)
    });
    // Launches run in order, so the workspace may go back as soon as they are queued.
    let freed = driver.free(ws);
    ran.and(freed)
}

/// [`gemm_bf16`] or, with `epi`, [`gemm_bf16_epilogue`] on the given tile (to compare the
/// tiles; both give the same bits).
pub fn gemm_bf16_on(
    driver: &dyn Driver,
    g: &GemmBf16,
    epi: Option<GemmEpilogue>,
    tile: Bf16Tile,
) -> Result<()> {
    launch_bf16(driver, g, epi, tile)
}

/// [`gemm_bf16`] with a second epilogue stage (`gemm_bf16_nn_gelu`, `gemm_bf16_nt_residual`,
/// ...): the bits of [`gemm_bf16`] followed by the stage's elementwise kernel, in one launch.
/// `A` must be stored as is ([`Bf16Layout::NN`] or [`Bf16Layout::NT`]), and `beta` must be 0.
pub fn gemm_bf16_epilogue(driver: &dyn Driver, g: &GemmBf16, epi: GemmEpilogue) -> Result<()> {
    gemm_bf16_epilogue_with(driver, g, epi, hopper_tiles(driver)?)
}

/// [`gemm_bf16_epilogue`] with the Hopper tiles `tiles` allows.
pub(super) fn gemm_bf16_epilogue_with(
    driver: &dyn Driver,
    g: &GemmBf16,
    epi: GemmEpilogue,
    tiles: HopperTiles,
) -> Result<()> {
    if WgmmaTile::pick(g.m, g.n, g.batch) == Some(WgmmaTile::N256)
        && epi.wgmma_kernel(g.layout).is_some()
        && tiles != HopperTiles::Off
    {
        if tiles == HopperTiles::Tma {
            return gemm_bf16_tma(driver, g, Some(epi));
        }
        return gemm_bf16_wgmma(driver, g, Some(epi), WgmmaTile::N256);
    }
    launch_bf16(driver, g, Some(epi), Bf16Tile::pick(g.m, g.n, g.batch))
}

/// The warpgroup tiles of the bf16 GEMM on Hopper (`ptx/gemm_sm90.cu`: `wgmma.mma_async`,
/// compiled for sm_90a, so only a compute-capability 9.0 GPU loads it; the PTX interpreter
/// runs it anywhere): 128 x `N` outputs per CTA of two warpgroups, k-tiles of 64 through a
/// four-stage `cp.async` ring. Every layout; the epilogue stages on the 256 tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WgmmaTile {
    /// 128 x 128 per CTA (`m64n128k16`, 128 KiB of shared memory).
    N128,
    /// 128 x 256 per CTA (`m64n256k16`, 192 KiB).
    N256,
}

impl WgmmaTile {
    /// Columns of `C` per CTA (rows: 128).
    pub fn cols(self) -> usize {
        match self {
            WgmmaTile::N128 => 128,
            WgmmaTile::N256 => 256,
        }
    }

    /// The kernel's name in `ptx/gemm_sm90.ptx`, for a product without an epilogue stage.
    pub fn kernel(self, layout: Bf16Layout) -> &'static str {
        use Bf16Layout::{NN, NT, TN, TT};
        match (self, layout) {
            (WgmmaTile::N128, NN) => "gemm_bf16_nn_wgmma_128",
            (WgmmaTile::N128, NT) => "gemm_bf16_nt_wgmma_128",
            (WgmmaTile::N128, TN) => "gemm_bf16_tn_wgmma_128",
            (WgmmaTile::N128, TT) => "gemm_bf16_tt_wgmma_128",
            (WgmmaTile::N256, NN) => "gemm_bf16_nn_wgmma_256",
            (WgmmaTile::N256, NT) => "gemm_bf16_nt_wgmma_256",
            (WgmmaTile::N256, TN) => "gemm_bf16_tn_wgmma_256",
            (WgmmaTile::N256, TT) => "gemm_bf16_tt_wgmma_256",
        }
    }

    /// Dynamic shared memory per CTA, in bytes: four stages of a 128 x 64 and an `N` x 64
    /// bf16 k-tile (`WgTile::SMEM_BYTES` in ptx/gemm_sm90.cu).
    pub fn shared_bytes(self) -> u32 {
        4 * (128 + self.cols() as u32) * 64 * 2
    }

    /// The tile [`gemm_bf16`] takes for an `[m, n]` output over `batch` products when the
    /// warpgroup tiles are on ([`wgmma_enabled`]): the 256 tile when it has
    /// [`LARGE_TILE_MIN_CTAS`] CTAs, else the 128 tile when that one has, else none (the
    /// `mma.sync` tiles keep more of the GPU busy).
    pub fn pick(m: usize, n: usize, batch: usize) -> Option<WgmmaTile> {
        let ctas = |cols: usize| m.div_ceil(128) * n.div_ceil(cols) * batch;
        if ctas(256) >= LARGE_TILE_MIN_CTAS {
            Some(WgmmaTile::N256)
        } else if ctas(128) >= LARGE_TILE_MIN_CTAS {
            Some(WgmmaTile::N128)
        } else {
            None
        }
    }
}

impl GemmEpilogue {
    /// The warpgroup kernel (256 tile) that applies this stage, for `A` stored as is.
    pub fn wgmma_kernel(self, layout: Bf16Layout) -> Option<&'static str> {
        use Bf16Layout::{NN, NT};
        use GemmEpilogue::{Gelu, GeluGrad, Residual};
        Some(match (layout, self) {
            (NN, Gelu { .. }) => "gemm_bf16_nn_gelu_wgmma_256",
            (NN, Residual { .. }) => "gemm_bf16_nn_residual_wgmma_256",
            (NN, GeluGrad { .. }) => "gemm_bf16_nn_gelu_grad_wgmma_256",
            (NT, Gelu { .. }) => "gemm_bf16_nt_gelu_wgmma_256",
            (NT, Residual { .. }) => "gemm_bf16_nt_residual_wgmma_256",
            (NT, GeluGrad { .. }) => "gemm_bf16_nt_gelu_grad_wgmma_256",
            _ => return None,
        })
    }
}

/// The environment variable that turns the warpgroup tiles on for [`gemm_bf16`] and
/// [`gemm_bf16_epilogue`] on a compute-capability 9.0 GPU: `1` for the `cp.async` tiles of
/// [`gemm_bf16_wgmma`], `tma` for those plus the warp-specialized TMA tile
/// ([`gemm_bf16_tma`]) on the products the 256 tile would take. Off by default until a GPU
/// check has compared them with the `mma.sync` tiles on hardware.
pub const WGMMA_ENV: &str = "TARFLOW_WGMMA";

/// Which Hopper tiles the bf16 products may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum HopperTiles {
    /// The `mma.sync` tiles only.
    Off,
    /// The `cp.async` warpgroup tiles.
    Wgmma,
    /// Those, and the TMA tile for the products the 256 tile would take.
    Tma,
}

/// What [`WGMMA_ENV`] asks for (read once), on `driver`: nothing off a 9.0 GPU.
pub(super) fn hopper_tiles(driver: &dyn Driver) -> Result<HopperTiles> {
    static CHOICE: std::sync::OnceLock<HopperTiles> = std::sync::OnceLock::new();
    let choice = *CHOICE.get_or_init(|| match std::env::var(WGMMA_ENV).as_deref() {
        Ok("1") => HopperTiles::Wgmma,
        Ok("tma") => HopperTiles::Tma,
        _ => HopperTiles::Off,
    });
    if choice == HopperTiles::Off || driver.compute_capability()? != Some((9, 0)) {
        return Ok(HopperTiles::Off);
    }
    Ok(choice)
}

/// Whether [`gemm_bf16`] and [`gemm_bf16_epilogue`] run the warpgroup tiles on `driver`:
/// [`WGMMA_ENV`] is `1` or `tma` and the device has compute capability 9.0 (the interpreter
/// has none, so its products keep the `mma.sync` tiles; tests call [`gemm_bf16_wgmma`] and
/// [`gemm_bf16_tma`]).
pub fn wgmma_enabled(driver: &dyn Driver) -> Result<bool> {
    Ok(hopper_tiles(driver)? != HopperTiles::Off)
}

/// Whether [`gemm_bf16`] and [`gemm_bf16_epilogue`] run a product that the 256 tile would
/// take on the TMA tile instead ([`WGMMA_ENV`] is `tma`, on a 9.0 GPU).
pub fn tma_enabled(driver: &dyn Driver) -> Result<bool> {
    Ok(hopper_tiles(driver)? == HopperTiles::Tma)
}

/// [`gemm_bf16`] (or with `epi`, [`gemm_bf16_epilogue`]) on Hopper's warpgroup tensor cores
/// ([`WgmmaTile`]); the same requirements, and an epilogue stage needs the 256 tile. Its
/// results are reproducible but need not be the `mma.sync` tiles' bits on a GPU (the two
/// instructions may round a 16-wide k-step differently; the interpreter gives the same bits).
pub fn gemm_bf16_wgmma(
    driver: &dyn Driver,
    g: &GemmBf16,
    epi: Option<GemmEpilogue>,
    tile: WgmmaTile,
) -> Result<()> {
    const OP: &str = "gemm_bf16";
    let name = match epi {
        None => tile.kernel(g.layout),
        Some(e) => match (tile, e.wgmma_kernel(g.layout)) {
            (WgmmaTile::N256, Some(name)) => name,
            _ => {
                return Err(Error::arg(
                    OP,
                    format!(
                        "the warpgroup epilogue stages need the 256 tile and A stored as is \
                         (layout NN or NT); got {tile:?} and {:?}",
                        g.layout
                    ),
                ))
            }
        },
    };
    super::require_sm90(driver, OP, name)?;
    let kernel = Kernel {
        module: &GEMM_SM90,
        name,
        tile: (128, tile.cols()),
        threads: 256,
        shared_bytes: tile.shared_bytes(),
        tensor_maps: false,
    };
    launch_bf16_kernel(driver, g, epi, kernel)
}

/// Dynamic shared memory of the TMA tile: four stages of a 128 x 64 and a 256 x 64 bf16
/// box, 1 KiB to align the ring to the 128-byte swizzle's 1,024-byte pattern, and the
/// eight mbarriers.
pub const TMA_SHARED_BYTES: u32 = 4 * (128 + 256) * 64 * 2 + 1024 + 8 * 8;

/// The warp-specialized TMA tile's kernel for a `layout` product with `epi` (`None`: the
/// plain product); `None` for an epilogue stage with `A` transposed (TN, TT).
pub fn tma_kernel(layout: Bf16Layout, epi: Option<GemmEpilogue>) -> Option<&'static str> {
    use Bf16Layout::{NN, NT, TN, TT};
    use GemmEpilogue::{Gelu, GeluGrad, Residual};
    Some(match (layout, epi) {
        (NN, None) => "gemm_bf16_nn_tma_256",
        (NT, None) => "gemm_bf16_nt_tma_256",
        (TN, None) => "gemm_bf16_tn_tma_256",
        (TT, None) => "gemm_bf16_tt_tma_256",
        (NN, Some(Gelu { .. })) => "gemm_bf16_nn_gelu_tma_256",
        (NN, Some(Residual { .. })) => "gemm_bf16_nn_residual_tma_256",
        (NN, Some(GeluGrad { .. })) => "gemm_bf16_nn_gelu_grad_tma_256",
        (NT, Some(Gelu { .. })) => "gemm_bf16_nt_gelu_tma_256",
        (NT, Some(Residual { .. })) => "gemm_bf16_nt_residual_tma_256",
        (NT, Some(GeluGrad { .. })) => "gemm_bf16_nt_gelu_grad_tma_256",
        (TN | TT, Some(_)) => return None,
    })
}

/// `g` (with the epilogue stage `epi` if any) on the warp-specialized 128 x 256 tile of
/// `gemm_sm90.cu`: one warpgroup feeding a four-stage ring with TMA copies through
/// mbarriers, two multiplying with `wgmma` from the 128-byte swizzled stages (a k-major
/// operand as one box per k-tile, an MN-major one as a box per 64 rows). Every layout; an
/// epilogue stage needs `A` stored as is (NN or NT). Needs a compute-capability 9.0 GPU (or
/// the interpreter).
pub fn gemm_bf16_tma(driver: &dyn Driver, g: &GemmBf16, epi: Option<GemmEpilogue>) -> Result<()> {
    const OP: &str = "gemm_bf16";
    let Some(name) = tma_kernel(g.layout, epi) else {
        return Err(Error::arg(
            OP,
            format!(
                "the TMA tile's epilogue stages need A stored as is (layout NN or NT), got {:?}",
                g.layout
            ),
        ));
    };
    super::require_sm90(driver, OP, name)?;
    let kernel = Kernel {
        module: &GEMM_SM90,
        name,
        tile: (128, 256),
        threads: 384,
        shared_bytes: TMA_SHARED_BYTES,
        tensor_maps: true,
    };
    launch_bf16_kernel(driver, g, epi, kernel)
}

/// The tensor map the TMA tile reads operand `A` (or `B`, `b_side`) of `g` through, for a
/// tile of `tile_rows` rows (columns, for `B`) of `C`, 128-byte swizzled. A k-major operand
/// (`k` contiguous): dims {`k`, rows}, boxes of 64 k values by `tile_rows` rows. An MN-major
/// one (rows contiguous): dims {rows, `k`}, boxes of 64 rows by 64 k values (the swizzle
/// spans 128 bytes of the contiguous dimension, 64 elements). Then the batch: stride `a_bs`
/// (`b_bs`; 0: one matrix for every batch).
fn operand_map(
    driver: &dyn Driver,
    g: &GemmBf16,
    b_side: bool,
    tile_rows: u32,
) -> Result<KernelArg> {
    let (a_k, b_k) = g.layout.k_contiguous();
    let (p, rows, ld, bs, k_major) = if b_side {
        (g.b, g.n, g.ldb, g.b_bs, b_k)
    } else {
        (g.a, g.m, g.lda, g.a_bs, a_k)
    };
    let (inner, outer, boxes) = if k_major {
        (g.k, rows, vec![64, tile_rows, 1])
    } else {
        (rows, g.k, vec![64, 64, 1])
    };
    // A shared operand (or a single product) still gets a third dimension, of one matrix;
    // its stride only has to be valid.
    let (mats, mat_stride) = if bs == 0 || g.batch == 1 {
        (1, (ld * outer.max(1) * 2).next_multiple_of(16))
    } else {
        (g.batch, bs * 2)
    };
    let map = TensorMap {
        elem_bytes: 2,
        base: p.0,
        dims: vec![inner as u64, outer as u64, mats as u64],
        strides: vec![(ld * 2) as u64, mat_stride as u64],
        boxes,
        swizzle: Swizzle::B128,
    };
    Ok(KernelArg::TensorMap(driver.tensor_map(&map)?))
}

/// Which kernel a bf16 launch runs and how.
struct Kernel {
    module: &'static PtxModule,
    name: &'static str,
    /// Rows and columns of `C` per CTA.
    tile: (usize, usize),
    threads: u32,
    shared_bytes: u32,
    /// Whether the kernel takes tensor maps of `A` and `B` ([`operand_map`]) instead of
    /// their addresses.
    tensor_maps: bool,
}

fn launch_bf16(
    driver: &dyn Driver,
    g: &GemmBf16,
    epi: Option<GemmEpilogue>,
    tile: Bf16Tile,
) -> Result<()> {
    let name = match epi {
        None => g.layout.kernel_on(tile),
        Some(e) => e.bf16_kernel_on(g.layout, tile).ok_or_else(|| {
            Error::arg(
                "gemm_bf16",
                format!(
                    "an epilogue stage needs A stored as is (layout NN or NT), got {:?}",
                    g.layout
                ),
            )
        })?,
    };
    let kernel = Kernel {
        module: &GEMM,
        name,
        tile: (tile.edge(), tile.edge()),
        threads: 128,
        shared_bytes: tile.shared_bytes(),
        tensor_maps: false,
    };
    launch_bf16_kernel(driver, g, epi, kernel)
}

fn launch_bf16_kernel(
    driver: &dyn Driver,
    g: &GemmBf16,
    epi: Option<GemmEpilogue>,
    kernel: Kernel,
) -> Result<()> {
    // One &'static str for errors whatever the layout.
    const OP: &str = "gemm_bf16";
    let name = kernel.name;
    check_c(OP, g.ldc, g.n, g.m)?;
    if !(g.alpha.is_finite() && g.beta.is_finite()) {
        return Err(Error::arg(
            OP,
            format!("alpha {} and beta {} must be finite", g.alpha, g.beta),
        ));
    }
    if let Some(epi) = epi {
        let (_, _, aux_rs) = epi.parts();
        check_c(OP, aux_rs, g.n, g.m)?;
        if g.beta != 0.0 {
            return Err(Error::arg(
                OP,
                format!("{name}: an epilogue stage needs beta 0, got {}", g.beta),
            ));
        }
    }
    let (a_k, b_k) = g.layout.k_contiguous();
    let (a_extent, b_extent) = (if a_k { g.k } else { g.m }, if b_k { g.k } else { g.n });
    for (what, ld, extent) in [("lda", g.lda, a_extent), ("ldb", g.ldb, b_extent)] {
        if ld % 8 != 0 || ld < extent {
            return Err(Error::arg(
                OP,
                format!(
                    "{name}: {what} = {ld} must be a multiple of 8 and at least {extent} (the \
                     operand's contiguous extent)"
                ),
            ));
        }
    }
    for (what, bs) in [("a_bs", g.a_bs), ("b_bs", g.b_bs)] {
        if bs % 8 != 0 {
            return Err(Error::arg(
                OP,
                format!("{name}: {what} = {bs} must be a multiple of 8"),
            ));
        }
    }
    for (what, p) in [("a", g.a), ("b", g.b)] {
        if p.0 % 16 != 0 {
            return Err(Error::arg(
                OP,
                format!(
                    "{name}: operand {what} at {:#x} is not 16-byte aligned",
                    p.0
                ),
            ));
        }
    }
    let Some(grid) = tiled_grid(OP, kernel.tile, g.m, g.n, g.batch)? else {
        return Ok(());
    };
    let u = |what, v| u32_of(OP, what, v).map(KernelArg::U32);
    let (a, b) = if kernel.tensor_maps {
        let (rows, cols) = (kernel.tile.0 as u32, kernel.tile.1 as u32);
        (
            operand_map(driver, g, false, rows)?,
            operand_map(driver, g, true, cols)?,
        )
    } else {
        (KernelArg::Ptr(g.a), KernelArg::Ptr(g.b))
    };
    let mut args = vec![
        KernelArg::Ptr(g.c),
        a,
        b,
        KernelArg::Ptr(g.bias.unwrap_or(DevicePtr(0))),
    ];
    let aux = epi.map(|e| {
        let (_, aux, aux_rs) = e.parts();
        (aux, aux_rs)
    });
    if let Some((aux, _)) = aux {
        args.push(KernelArg::Ptr(aux));
    }
    args.extend([u("m", g.m)?, u("n", g.n)?, u("k", g.k)?]);
    args.extend([u("lda", g.lda)?, u("ldb", g.ldb)?, u("ldc", g.ldc)?]);
    if let Some((_, aux_rs)) = aux {
        args.push(u("aux_rs", aux_rs)?);
    }
    args.extend([
        u("a_bs", g.a_bs)?,
        u("b_bs", g.b_bs)?,
        u("c_bs", g.c_bs)?,
        KernelArg::F32(g.alpha),
        KernelArg::F32(g.beta),
        KernelArg::U32(g.bias.map_or(0, |_| GEMM_HAS_BIAS)),
    ]);
    let config = LaunchConfig {
        grid,
        block: (kernel.threads, 1, 1),
        shared_bytes: kernel.shared_bytes,
    };
    driver.launch(kernel.module, name, config, &args)
}
