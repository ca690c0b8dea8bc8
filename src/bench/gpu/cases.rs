//! The table of cases behind [`super`]: each builds its buffers through a [`Driver`] at
//! the shapes of a [`Sizes`] and returns what one run launches, through the typed wrappers
//! of [`crate::gpu::kernels`]. The cases are the kernel families of `ptx/`; their shapes
//! are the model's (rows of 768 or 1024 features, 64 M-element parameter sets).

use super::Sizes;
use crate::error::Result;
use crate::gpu::kernels as k;
use crate::gpu::{DevicePtr, Driver};
use crate::optim::AdamWConfig;

/// One case: a family of kernels at one shape, with its buffers already on the device.
pub(super) struct Case {
    pub(super) name: &'static str,
    pub(super) shape: String,
    pub(super) flops: Option<f64>,
    pub(super) bytes: f64,
    pub(super) run: Box<Launches>,
}

/// What one run of a case launches, given the driver to launch on.
pub(super) type Launches = dyn Fn(&dyn Driver) -> Result<()>;

/// Builds a case's buffers through the driver and returns the case.
pub(super) type Build = fn(&mut Buffers, Sizes) -> Result<Case>;

/// Every case, in table order.
pub(super) const CASES: [Build; 44] = [
    ceiling_mma,
    ceiling_copy,
    copy_transpose,
    copy_to_bf16,
    unary_exp,
    binary_add_broadcast,
    reduce_rows,
    reduce_columns,
    softmax_rows,
    layer_norm_fwd,
    layer_norm_bwd_dx,
    layer_norm_bwd_params,
    gemm_f32,
    gemm_f32_gelu,
    gemm_bf16_small_tile,
    gemm_bf16_large_tile,
    gemm_bf16_wgmma_128,
    gemm_bf16_wgmma_256,
    gemm_bf16_tma_256,
    gemm_bf16_nn_wgmma_256,
    gemm_bf16_nn_tma_256,
    gemm_bf16_wgrad_split,
    gemm_bf16_wgrad_unsplit,
    gemm_bf16_wgrad_wgmma,
    gemm_bf16_wgrad_tma,
    gemm_bf16_gelu,
    gemm_bf16_gelu_wgmma,
    coupling_fwd,
    coupling_bwd,
    coupling_inverse,
    index_select,
    index_add,
    adamw,
    ema,
    sum_of_squares,
    attention_fwd,
    attention_fwd_bf16,
    attention_fwd_bf16_inputs,
    attention_fwd_wgmma,
    attention_fwd_tma,
    attention_bwd,
    attention_bwd_bf16,
    attention_bwd_wgmma,
    attention_bwd_tma,
];

/// The buffers of one case, freed together when it is done.
pub(super) struct Buffers<'a> {
    pub(super) driver: &'a dyn Driver,
    pub(super) ptrs: Vec<DevicePtr>,
}

impl Buffers<'_> {
    fn put<T: bytemuck::Pod>(&mut self, values: &[T]) -> Result<DevicePtr> {
        let bytes: &[u8] = bytemuck::cast_slice(values);
        let p = self.driver.alloc(bytes.len().max(16))?;
        self.ptrs.push(p);
        if !bytes.is_empty() {
            self.driver.upload(p, bytes)?;
        }
        Ok(p)
    }

    /// `n` values `value(i)`, generated and uploaded a chunk at a time, so that a 64
    /// M-element buffer never exists whole on the host.
    fn generate<T: bytemuck::Pod + Send>(
        &mut self,
        n: usize,
        value: impl Fn(usize) -> T + Sync + Send,
    ) -> Result<DevicePtr> {
        use rayon::prelude::*;
        const CHUNK: usize = 1 << 20;
        let size = std::mem::size_of::<T>();
        let p = self.driver.alloc((n * size).max(16))?;
        self.ptrs.push(p);
        let mut chunk = Vec::with_capacity(n.min(CHUNK));
        for start in (0..n).step_by(CHUNK) {
            (start..(start + CHUNK).min(n))
                .into_par_iter()
                .map(&value)
                .collect_into_vec(&mut chunk);
            self.driver.upload(
                p.offset((start * size) as u64),
                bytemuck::cast_slice(&chunk),
            )?;
        }
        Ok(p)
    }

    /// `n` f32 of [`pattern`] with `seed`.
    fn f32s(&mut self, n: usize, seed: u32) -> Result<DevicePtr> {
        self.generate(n, |i| pattern(i, seed))
    }

    /// `n` f32 outputs, zero-filled (a case never reads memory it did not fill).
    fn out(&mut self, n: usize) -> Result<DevicePtr> {
        self.generate(n, |_| 0f32)
    }

    pub(super) fn free_all(&mut self) -> Result<()> {
        let mut first = Ok(());
        for p in self.ptrs.drain(..) {
            if let Err(e) = self.driver.free(p) {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }
}

/// Value `i` of a deterministic sequence spread over `[-1, 1)`: a hash of the index.
pub(super) fn pattern(i: usize, seed: u32) -> f32 {
    let mut h = (i as u32) ^ seed.wrapping_mul(0x9E37_79B9);
    h = h.wrapping_mul(0x85EB_CA6B);
    h ^= h >> 13;
    h = h.wrapping_mul(0xC2B2_AE35);
    h ^= h >> 16;
    (h >> 8) as f32 / (1u32 << 23) as f32 - 1.0
}

fn dims(s: &[usize]) -> String {
    format!("{s:?}")
}

/// The elementwise launches: the one place that names the op codes' types, so that a
/// change of their home touches only these two functions.
fn launch_exp(d: &dyn Driver, out: DevicePtr, x: DevicePtr, n: usize) -> Result<()> {
    k::unary_f32(d, k::UnaryOp::Exp, out, x, &[1], &[n])
}

/// `out[i, j] = a[i, j] + b[j]` over `[rows, cols]` (a bias or positional row broadcast).
fn launch_add_row(
    d: &dyn Driver,
    out: DevicePtr,
    a: DevicePtr,
    b: DevicePtr,
    rows: usize,
    cols: usize,
) -> Result<()> {
    let (ra, rb) = ([cols as isize, 1], [0, 1]);
    k::binary_f32(d, k::BinaryOp::Add, out, a, &ra, b, &rb, &[rows, cols])
}

fn copy_transpose(b: &mut Buffers, s: Sizes) -> Result<Case> {
    let (r, c) = s.pick((64, 64), (256, 256), (8192, 8192));
    let n = r * c;
    let x = b.f32s(n, 1)?;
    let out = b.out(n)?;
    Ok(Case {
        name: "strided copy, transpose",
        shape: dims(&[r, c]),
        flops: None,
        bytes: 8.0 * n as f64,
        run: Box::new(move |d| {
            k::strided_copy_f32(d, out, &[c as isize, 1], x, &[1, r as isize], &[r, c])
        }),
    })
}

fn copy_to_bf16(b: &mut Buffers, s: Sizes) -> Result<Case> {
    let n = s.pick(4096, 65536, 64 << 20);
    let x = b.f32s(n, 2)?;
    let out = b.generate(n, |_| 0u16)?;
    Ok(Case {
        name: "copy f32 -> bf16",
        shape: dims(&[n]),
        flops: None,
        bytes: 6.0 * n as f64,
        run: Box::new(move |d| k::strided_copy_f32_bf16(d, out, &[1], x, &[1], &[n])),
    })
}

fn unary_exp(b: &mut Buffers, s: Sizes) -> Result<Case> {
    let n = s.pick(4096, 65536, 64 << 20);
    let x = b.f32s(n, 3)?;
    let out = b.out(n)?;
    Ok(Case {
        name: "unary exp",
        shape: dims(&[n]),
        flops: None,
        bytes: 8.0 * n as f64,
        run: Box::new(move |d| launch_exp(d, out, x, n)),
    })
}

fn binary_add_broadcast(b: &mut Buffers, s: Sizes) -> Result<Case> {
    let (r, c) = s.pick((64, 64), (256, 256), (65536, 1024));
    let x = b.f32s(r * c, 4)?;
    let row = b.f32s(c, 5)?;
    let out = b.out(r * c)?;
    Ok(Case {
        name: "binary add, row broadcast",
        shape: format!("{} + [{c}]", dims(&[r, c])),
        flops: None,
        bytes: 4.0 * (2 * r * c + c) as f64,
        run: Box::new(move |d| launch_add_row(d, out, x, row, r, c)),
    })
}

fn reduce_rows(b: &mut Buffers, s: Sizes) -> Result<Case> {
    let (rows, r) = s.pick((16, 256), (256, 1024), (65536, 1024));
    let x = b.f32s(rows * r, 6)?;
    let out = b.out(rows)?;
    Ok(Case {
        name: "reduce sum, last axis",
        shape: dims(&[rows, r]),
        flops: None,
        bytes: 4.0 * (rows * r + rows) as f64,
        run: Box::new(move |d| {
            k::reduce_axis_f32(d, k::ReduceOp::Sum, false, out, x, None, rows, r, 1, false)
        }),
    })
}

fn reduce_columns(b: &mut Buffers, s: Sizes) -> Result<Case> {
    let (r, c) = s.pick((64, 64), (1024, 256), (65536, 1024));
    let x = b.f32s(r * c, 7)?;
    let out = b.out(c)?;
    let scratch_len = k::reduce_scratch_len(1, r, c);
    let scratch = match scratch_len {
        0 => None,
        n => Some(b.out(n)?),
    };
    Ok(Case {
        name: "reduce sum, first axis",
        shape: dims(&[r, c]),
        flops: None,
        bytes: 4.0 * (r * c + c) as f64,
        run: Box::new(move |d| {
            k::reduce_axis_f32(d, k::ReduceOp::Sum, false, out, x, scratch, 1, r, c, false)
        }),
    })
}

fn softmax_rows(b: &mut Buffers, s: Sizes) -> Result<Case> {
    let (rows, c) = s.pick((16, 256), (64, 1024), (65536, 1024));
    let x = b.f32s(rows * c, 8)?;
    let y = b.out(rows * c)?;
    Ok(Case {
        name: "softmax rows",
        shape: dims(&[rows, c]),
        flops: None,
        bytes: 8.0 * (rows * c) as f64,
        run: Box::new(move |d| k::softmax_rows_f32(d, y, x, rows, c, false)),
    })
}

/// Rows and width of the layer-norm cases.
fn ln_shape(s: Sizes) -> (usize, usize) {
    s.pick((16, 256), (256, 768), (65536, 768))
}

/// `[mean, rstd]` per row: plausible statistics for the backward cases.
fn ln_stats(b: &mut Buffers, rows: usize) -> Result<DevicePtr> {
    let stats: Vec<f32> = (0..rows).flat_map(|i| [0.01 * i as f32, 1.5]).collect();
    b.put(&stats)
}

fn layer_norm_fwd(b: &mut Buffers, s: Sizes) -> Result<Case> {
    let (rows, c) = ln_shape(s);
    let x = b.f32s(rows * c, 9)?;
    let w = b.f32s(c, 10)?;
    let bias = b.f32s(c, 11)?;
    let y = b.out(rows * c)?;
    let stats = b.out(2 * rows)?;
    Ok(Case {
        name: "layer_norm fwd (w, b, stats)",
        shape: dims(&[rows, c]),
        flops: None,
        bytes: 4.0 * (2 * rows * c + 2 * c + 2 * rows) as f64,
        run: Box::new(move |d| {
            k::layer_norm_fwd_f32(d, y, Some(stats), x, Some(w), Some(bias), rows, c, 1e-5)
        }),
    })
}

fn layer_norm_bwd_dx(b: &mut Buffers, s: Sizes) -> Result<Case> {
    let (rows, c) = ln_shape(s);
    let x = b.f32s(rows * c, 12)?;
    let g = b.f32s(rows * c, 13)?;
    let w = b.f32s(c, 14)?;
    let stats = ln_stats(b, rows)?;
    let dx = b.out(rows * c)?;
    Ok(Case {
        name: "layer_norm bwd dx",
        shape: dims(&[rows, c]),
        flops: None,
        bytes: 4.0 * (3 * rows * c + c + 2 * rows) as f64,
        run: Box::new(move |d| k::layer_norm_bwd_dx_f32(d, dx, x, g, stats, Some(w), rows, c)),
    })
}

fn layer_norm_bwd_params(b: &mut Buffers, s: Sizes) -> Result<Case> {
    let (rows, c) = ln_shape(s);
    let chunk = s.pick(4, 16, 64);
    let chunks = rows.div_ceil(chunk);
    let x = b.f32s(rows * c, 15)?;
    let g = b.f32s(rows * c, 16)?;
    let stats = ln_stats(b, rows)?;
    let dw = b.out(chunks * c)?;
    let db = b.out(chunks * c)?;
    let grads = k::LayerNormParamGrads {
        dweight: Some(dw),
        dbias: Some(db),
    };
    Ok(Case {
        name: "layer_norm bwd params",
        shape: format!("{}, chunks of {chunk}", dims(&[rows, c])),
        flops: None,
        bytes: 4.0 * (2 * rows * c + 2 * rows + 2 * chunks * c) as f64,
        run: Box::new(move |d| k::layer_norm_bwd_params_f32(d, grads, x, g, stats, rows, c, chunk)),
    })
}

fn gemm_f32(b: &mut Buffers, s: Sizes) -> Result<Case> {
    let n = s.pick(128, 256, 2048);
    let (m, kk) = (n, n);
    let a = b.f32s(m * kk, 17)?;
    let w = b.f32s(n * kk, 18)?;
    let bias = b.f32s(n, 19)?;
    let c = b.out(m * n)?;
    // Linear's product: C = A W^T + bias, W stored [n, k].
    let g = k::GemmF32 {
        m,
        n,
        k: kk,
        batch: 1,
        c,
        c_rs: n,
        c_bs: 0,
        a,
        a_rs: kk,
        a_cs: 1,
        a_bs: 0,
        b: w,
        b_rs: 1,
        b_cs: kk,
        b_bs: 0,
        bias: Some(bias),
        alpha: 1.0,
        beta: 0.0,
    };
    Ok(Case {
        name: "gemm f32, A W^T + bias",
        shape: format!("{m}x{n}x{kk}"),
        flops: Some(2.0 * (m * n * kk) as f64),
        bytes: 4.0 * (m * kk + n * kk + n + m * n) as f64,
        run: Box::new(move |d| k::gemm_f32(d, &g)),
    })
}

/// `gemm_f32`'s case with the GELU epilogue (the pre-activation written too): the MLP's
/// first layer.
fn gemm_f32_gelu(b: &mut Buffers, s: Sizes) -> Result<Case> {
    let n = s.pick(128, 256, 2048);
    let (m, kk) = (n, n);
    let a = b.f32s(m * kk, 40)?;
    let w = b.f32s(n * kk, 41)?;
    let bias = b.f32s(n, 42)?;
    let c = b.out(m * n)?;
    let pre = b.out(m * n)?;
    let g = k::GemmF32 {
        m,
        n,
        k: kk,
        batch: 1,
        c,
        c_rs: n,
        c_bs: 0,
        a,
        a_rs: kk,
        a_cs: 1,
        a_bs: 0,
        b: w,
        b_rs: 1,
        b_cs: kk,
        b_bs: 0,
        bias: Some(bias),
        alpha: 1.0,
        beta: 0.0,
    };
    let epi = k::GemmEpilogue::Gelu {
        aux: pre,
        aux_rs: n,
    };
    Ok(Case {
        name: "gemm f32, gelu(A W^T + bias)",
        shape: format!("{m}x{n}x{kk}"),
        flops: Some(2.0 * (m * n * kk) as f64),
        bytes: 4.0 * (m * kk + n * kk + n + 2 * m * n) as f64,
        run: Box::new(move |d| k::gemm_f32_epilogue(d, &g, epi)),
    })
}

/// The coupling's shapes: `[B, L, D]` images of tokens (ImageNet64 with patch 2 on
/// hardware: 1024 tokens of 12 values).
fn coupling_shape(s: Sizes) -> [usize; 3] {
    s.pick([2, 16, 4], [8, 256, 12], [256, 1024, 12])
}

/// The model's operands: tokens read flipped, the parameters as the halves of one
/// `[B, L, 2D]` projection, the soft clip on.
fn coupling_operands(
    b: &mut Buffers,
    dims: [usize; 3],
) -> Result<(k::Tokens, k::Tokens, k::Tokens, k::CouplingShape)> {
    let [bb, l, d] = dims;
    let x = b.f32s(bb * l * d, 43)?;
    let p = b.f32s(bb * l * 2 * d, 44)?;
    let (ld, l2d) = ((l * d) as isize, (l * 2 * d) as isize);
    Ok((
        k::Tokens {
            ptr: x.offset(((l - 1) * d * 4) as u64),
            strides: [ld, -(d as isize), 1],
        },
        k::Tokens {
            ptr: p,
            strides: [l2d, 2 * d as isize, 1],
        },
        k::Tokens {
            ptr: p.offset((d * 4) as u64),
            strides: [l2d, 2 * d as isize, 1],
        },
        k::CouplingShape {
            dims,
            clip: Some(4.0),
        },
    ))
}

fn coupling_fwd(b: &mut Buffers, s: Sizes) -> Result<Case> {
    let sz = coupling_shape(s);
    let n = sz.iter().product::<usize>();
    let (x, alpha, mu, shape) = coupling_operands(b, sz)?;
    let out = b.out(n + sz[0])?;
    Ok(Case {
        name: "coupling fwd (z, logdet)",
        shape: dims(&sz),
        flops: None,
        bytes: 4.0 * (4 * n + sz[0]) as f64,
        run: Box::new(move |d| k::coupling_fwd_f32(d, out, x, alpha, mu, shape)),
    })
}

fn coupling_bwd(b: &mut Buffers, s: Sizes) -> Result<Case> {
    let sz = coupling_shape(s);
    let n = sz.iter().product::<usize>();
    let (x, alpha, mu, shape) = coupling_operands(b, sz)?;
    let g = b.f32s(n + sz[0], 45)?;
    let grads = k::CouplingGrads {
        dx: Some(b.out(n)?),
        dalpha: Some(b.out(n)?),
        dmu: Some(b.out(n)?),
    };
    Ok(Case {
        name: "coupling bwd (dx, dalpha, dmu)",
        shape: dims(&sz),
        flops: None,
        bytes: 4.0 * (7 * n + sz[0]) as f64,
        run: Box::new(move |d| k::coupling_bwd_f32(d, grads, g, x, alpha, mu, shape)),
    })
}

fn coupling_inverse(b: &mut Buffers, s: Sizes) -> Result<Case> {
    let sz = coupling_shape(s);
    let n = sz.iter().product::<usize>();
    let z = b.f32s(n, 46)?;
    let (ac, mc, au, mu_u) = (
        b.f32s(n, 47)?,
        b.f32s(n, 48)?,
        b.f32s(n, 49)?,
        b.f32s(n, 50)?,
    );
    let out = b.out(n)?;
    Ok(Case {
        name: "coupling inverse, guided",
        shape: dims(&sz),
        flops: None,
        bytes: 4.0 * (6 * n) as f64,
        run: Box::new(move |d| {
            let t = |p| k::Tokens::contiguous(p, sz);
            k::coupling_inverse_f32(
                d,
                t(out),
                t(z),
                t(ac),
                t(mc),
                Some((t(au), t(mu_u), 0.5)),
                sz,
            )
        }),
    })
}

/// A square `x W^T` on the tensor cores (`NT`, the weight read as stored), its operands
/// generated from `seeds`: the size and the product, without bias.
fn bf16_nt_square(b: &mut Buffers, s: Sizes, seeds: (u32, u32)) -> Result<(usize, k::GemmBf16)> {
    let n = s.pick(128, 512, 4096);
    let bf16 = |seed| move |i| half::bf16::from_f32(pattern(i, seed)).to_bits();
    let a = b.generate(n * n, bf16(seeds.0))?;
    let w = b.generate(n * n, bf16(seeds.1))?;
    let c = b.out(n * n)?;
    let g = k::GemmBf16 {
        layout: k::Bf16Layout::NT,
        m: n,
        n,
        k: n,
        batch: 1,
        c,
        ldc: n,
        c_bs: 0,
        a,
        lda: n,
        a_bs: 0,
        b: w,
        ldb: n,
        b_bs: 0,
        bias: None,
        alpha: 1.0,
        beta: 0.0,
    };
    Ok((n, g))
}

/// A square bf16 product's case: `name`, run by `run` (a tile of either family).
fn square_case(
    b: &mut Buffers,
    s: Sizes,
    name: &'static str,
    run: fn(&dyn Driver, &k::GemmBf16) -> Result<()>,
) -> Result<Case> {
    let (n, g) = bf16_nt_square(b, s, (20, 21))?;
    Ok(Case {
        name,
        shape: format!("{n}x{n}x{n}"),
        flops: Some(2.0 * (n * n * n) as f64),
        bytes: (4 * n * n + 4 * n * n) as f64,
        run: Box::new(move |d| run(d, &g)),
    })
}

/// The bf16 GEMM on one tile (the same product and bits on both; `gemm_bf16` picks the
/// 128 tile at 4096^3 and the 64 tile at the interpreter's sizes).
fn gemm_bf16_on(b: &mut Buffers, s: Sizes, tile: k::Bf16Tile) -> Result<Case> {
    match tile {
        k::Bf16Tile::Small => square_case(b, s, "gemm bf16 NT (tensor cores), 64 tile", |d, g| {
            k::gemm_bf16_on(d, g, None, k::Bf16Tile::Small)
        }),
        k::Bf16Tile::Large => square_case(b, s, "gemm bf16 NT (tensor cores), 128 tile", |d, g| {
            k::gemm_bf16_on(d, g, None, k::Bf16Tile::Large)
        }),
    }
}

fn gemm_bf16_small_tile(b: &mut Buffers, s: Sizes) -> Result<Case> {
    gemm_bf16_on(b, s, k::Bf16Tile::Small)
}

fn gemm_bf16_large_tile(b: &mut Buffers, s: Sizes) -> Result<Case> {
    gemm_bf16_on(b, s, k::Bf16Tile::Large)
}

/// The rows that need a compute-capability 9.0 GPU (or the interpreter): the bench leaves
/// them out elsewhere.
pub(super) const SM90_ONLY: [&str; 12] = [
    WGMMA_128,
    WGMMA_256,
    TMA_256,
    WGMMA_256_NN,
    TMA_256_NN,
    WGMMA_WGRAD,
    TMA_WGRAD,
    WGMMA_GELU,
    WGMMA_ATTN,
    TMA_ATTN,
    WGMMA_ATTN_BWD,
    TMA_ATTN_BWD,
];
const WGMMA_ATTN_BWD: &str =
    "attention bwd bf16 (wgmma, sm_90a), causal (D and the bf16 dO, dK dV, dQ)";
const TMA_ATTN_BWD: &str =
    "attention bwd bf16 (TMA + wgmma, warp-specialized), causal (D and the bf16 dO, dK dV, dQ)";
const WGMMA_ATTN: &str = "attention fwd bf16 inputs (wgmma, sm_90a), causal";
const TMA_ATTN: &str = "attention fwd bf16 inputs (TMA + wgmma, warp-specialized), causal";
const WGMMA_128: &str = "gemm bf16 NT (wgmma, sm_90a), 128 x 128 tile";
const WGMMA_256: &str = "gemm bf16 NT (wgmma, sm_90a), 128 x 256 tile";
const TMA_256: &str = "gemm bf16 NT (TMA + wgmma, warp-specialized), 128 x 256 tile";
const WGMMA_256_NN: &str = "gemm bf16 NN (wgmma, sm_90a), 128 x 256 tile";
const TMA_256_NN: &str = "gemm bf16 NN (TMA + wgmma, warp-specialized), 128 x 256 tile";
const WGMMA_WGRAD: &str = "gemm bf16 TN, weight gradient (wgmma, 128 x 128 tile, split)";
const TMA_WGRAD: &str = "gemm bf16 TN, weight gradient (TMA + wgmma, 128 x 256 tile, split)";
const WGMMA_GELU: &str = "gemm bf16 NT, gelu(A W^T + bias) (wgmma, 128 x 256 tile)";

/// The product of [`gemm_bf16_on`] on a warpgroup tile (Hopper's `wgmma`).
fn gemm_bf16_wgmma_on(b: &mut Buffers, s: Sizes, tile: k::WgmmaTile) -> Result<Case> {
    match tile {
        k::WgmmaTile::N128 => square_case(b, s, WGMMA_128, |d, g| {
            k::gemm_bf16_wgmma(d, g, None, k::WgmmaTile::N128)
        }),
        k::WgmmaTile::N256 => square_case(b, s, WGMMA_256, |d, g| {
            k::gemm_bf16_wgmma(d, g, None, k::WgmmaTile::N256)
        }),
    }
}

fn gemm_bf16_wgmma_128(b: &mut Buffers, s: Sizes) -> Result<Case> {
    gemm_bf16_wgmma_on(b, s, k::WgmmaTile::N128)
}

fn gemm_bf16_wgmma_256(b: &mut Buffers, s: Sizes) -> Result<Case> {
    gemm_bf16_wgmma_on(b, s, k::WgmmaTile::N256)
}

/// The product on the warp-specialized TMA tile (one warpgroup feeding, two multiplying).
fn gemm_bf16_tma_256(b: &mut Buffers, s: Sizes) -> Result<Case> {
    square_case(b, s, TMA_256, |d, g| k::gemm_bf16_tma(d, g, None))
}

/// The square product with B read as stored `[k, n]` (NN, a data gradient `g W`: B is
/// MN-major), on the `cp.async` warpgroup tile and on the TMA tile.
fn gemm_bf16_nn_wgmma_256(b: &mut Buffers, s: Sizes) -> Result<Case> {
    square_case(b, s, WGMMA_256_NN, |d, g| {
        let g = k::GemmBf16 {
            layout: k::Bf16Layout::NN,
            ..*g
        };
        k::gemm_bf16_wgmma(d, &g, None, k::WgmmaTile::N256)
    })
}

fn gemm_bf16_nn_tma_256(b: &mut Buffers, s: Sizes) -> Result<Case> {
    square_case(b, s, TMA_256_NN, |d, g| {
        let g = k::GemmBf16 {
            layout: k::Bf16Layout::NN,
            ..*g
        };
        k::gemm_bf16_tma(d, &g, None)
    })
}

/// A Linear layer's weight gradient `g^T x` under bf16 (the TN layout): ImageNet64's
/// `[768, 768]` outputs over the 16,384 tokens of 16 images.
fn wgrad(b: &mut Buffers, s: Sizes) -> Result<(String, f64, k::GemmBf16)> {
    let (c, rows) = s.pick((128, 1024), (256, 2048), (768, 16_384));
    let bf16 = |seed| move |i| half::bf16::from_f32(pattern(i, seed)).to_bits();
    let g = b.generate(rows * c, bf16(25))?;
    let x = b.generate(rows * c, bf16(26))?;
    let out = b.out(c * c)?;
    let prod = k::GemmBf16 {
        layout: k::Bf16Layout::TN,
        m: c,
        n: c,
        k: rows,
        batch: 1,
        c: out,
        ldc: c,
        c_bs: 0,
        a: g,
        lda: c,
        a_bs: 0,
        b: x,
        ldb: c,
        b_bs: 0,
        bias: None,
        alpha: 1.0,
        beta: 0.0,
    };
    Ok((format!("{c}x{c}x{rows}"), 2.0 * (c * c * rows) as f64, prod))
}

/// The weight gradient of [`wgrad`] named `name`, run by `run`.
fn wgrad_case(
    b: &mut Buffers,
    s: Sizes,
    name: &'static str,
    run: fn(&dyn Driver, &k::GemmBf16) -> Result<()>,
) -> Result<Case> {
    let (shape, flops, g) = wgrad(b, s)?;
    let c = g.m;
    Ok(Case {
        name,
        shape,
        flops: Some(flops),
        bytes: (2 * 2 * c * g.k + 4 * c * c) as f64,
        run: Box::new(move |d| run(d, &g)),
    })
}

/// The weight gradient as `gemm_bf16` runs it: split over k ([`k::split_k_plan`]) on the
/// 128 tile where its tiles are too few for the GPU.
fn gemm_bf16_wgrad_split(b: &mut Buffers, s: Sizes) -> Result<Case> {
    wgrad_case(b, s, "gemm bf16 TN, weight gradient", k::gemm_bf16)
}

/// The same product unsplit on the 64 tile (what ran before the split), for comparison.
fn gemm_bf16_wgrad_unsplit(b: &mut Buffers, s: Sizes) -> Result<Case> {
    wgrad_case(
        b,
        s,
        "gemm bf16 TN, weight gradient unsplit (64 tile)",
        |d, g| k::gemm_bf16_on(d, g, None, k::Bf16Tile::Small),
    )
}

/// The weight gradient split over k as [`k::gemm_bf16`] runs it with the warpgroup tiles on:
/// the ranges on the 128 x 128 warpgroup tile.
fn gemm_bf16_wgrad_wgmma(b: &mut Buffers, s: Sizes) -> Result<Case> {
    wgrad_case(b, s, WGMMA_WGRAD, |d, g| {
        k::gemm_bf16_split_k_wgmma(d, g, k::WgmmaTile::N128, k::split_k_plan(g))
    })
}

/// The weight gradient as [`k::gemm_bf16`] runs it under `TARFLOW_WGMMA=tma`: split for the
/// TMA tile's 128 x 256 CTAs, the ranges on that tile.
fn gemm_bf16_wgrad_tma(b: &mut Buffers, s: Sizes) -> Result<Case> {
    wgrad_case(b, s, TMA_WGRAD, |d, g| {
        k::gemm_bf16_split_k_tma(d, g, k::split_k_plan_tma(g))
    })
}

/// [`gemm_bf16_gelu`] on the warpgroup 128 x 256 tile.
fn gemm_bf16_gelu_wgmma(b: &mut Buffers, s: Sizes) -> Result<Case> {
    let (n, g) = bf16_nt_square(b, s, (22, 23))?;
    let g = k::GemmBf16 {
        bias: Some(b.f32s(n, 24)?),
        ..g
    };
    let epi = k::GemmEpilogue::Gelu {
        aux: b.out(n * n)?,
        aux_rs: n,
    };
    Ok(Case {
        name: WGMMA_GELU,
        shape: format!("{n}x{n}x{n}"),
        flops: Some(2.0 * (n * n * n) as f64),
        bytes: (4 * n * n + 4 * n + 8 * n * n) as f64,
        run: Box::new(move |d| k::gemm_bf16_wgmma(d, &g, Some(epi), k::WgmmaTile::N256)),
    })
}

/// The bf16 GEMM with the bias and the GELU epilogue (the pre-activation written too): the
/// MLP's first layer as the backend runs it under bf16.
fn gemm_bf16_gelu(b: &mut Buffers, s: Sizes) -> Result<Case> {
    let (n, g) = bf16_nt_square(b, s, (22, 23))?;
    let g = k::GemmBf16 {
        bias: Some(b.f32s(n, 24)?),
        ..g
    };
    let epi = k::GemmEpilogue::Gelu {
        aux: b.out(n * n)?,
        aux_rs: n,
    };
    Ok(Case {
        name: "gemm bf16 NT, gelu(A W^T + bias)",
        shape: format!("{n}x{n}x{n}"),
        flops: Some(2.0 * (n * n * n) as f64),
        bytes: (4 * n * n + 4 * n + 8 * n * n) as f64,
        run: Box::new(move |d| k::gemm_bf16_epilogue(d, &g, epi)),
    })
}

/// The name of the tensor-core ceiling's row ([`ceiling_mma`]).
pub(super) const CEILING_MMA: &str = "ceiling: bf16 mma.sync, registers only";
/// The name of the copy ceiling's row ([`ceiling_copy`]).
pub(super) const CEILING_COPY: &str = "ceiling: copy, 16 B per thread";

/// The tensor cores' rate for our bf16 instruction with no memory traffic: 16 CTAs of 4
/// warps per multiprocessor of a 132-SM card, 256 rounds of 8 independent mma each (about
/// 0.1 s on an H200).
pub(super) fn ceiling_mma(b: &mut Buffers, s: Sizes) -> Result<Case> {
    let (ctas, iters) = s.pick((2, 4), (8, 16), (132 * 16, 256));
    let out = b.out(ctas * k::PEAK_MMA_THREADS)?;
    let mma = (ctas * (k::PEAK_MMA_THREADS / 32) * iters * k::PEAK_CHAINS) as f64;
    Ok(Case {
        name: CEILING_MMA,
        shape: format!("{ctas} CTAs x {iters} rounds"),
        flops: Some(mma * k::MMA_FLOPS),
        bytes: (4 * ctas * k::PEAK_MMA_THREADS) as f64,
        // a = 1, b = 2^-8: exact sums, never overflowing.
        run: Box::new(move |d| k::peak_mma_bf16(d, out, 0x3f80_3f80, 0x3b80_3b80, ctas, iters)),
    })
}

/// A streaming copy's bandwidth: 256 MiB (five times an H200's L2) read and written.
pub(super) fn ceiling_copy(b: &mut Buffers, s: Sizes) -> Result<Case> {
    let n = s.pick(1 << 10, 1 << 14, 16 << 20);
    let src = b.f32s(4 * n, 30)?;
    let dst = b.out(4 * n)?;
    Ok(Case {
        name: CEILING_COPY,
        shape: format!("{n} x 16 B"),
        flops: None,
        bytes: (2 * 16 * n) as f64,
        run: Box::new(move |d| k::peak_copy_b128(d, dst, src, n)),
    })
}

/// `(outer, table rows, indices, inner)` of the gather / scatter cases, and the indices:
/// a stride through the table that visits rows out of order, with repeats when there are
/// more indices than rows.
fn index_case(s: Sizes) -> ((usize, usize, usize, usize), Vec<usize>) {
    let shape = s.pick((4, 64, 8, 16), (4, 1024, 256, 64), (1, 65536, 65536, 1024));
    let (_, len, n_idx, _) = shape;
    let idx = (0..n_idx).map(|i| (i * 7919 + 3) % len).collect();
    (shape, idx)
}

fn index_select(b: &mut Buffers, s: Sizes) -> Result<Case> {
    let ((outer, len, n_idx, inner), idx) = index_case(s);
    let src = b.f32s(outer * len * inner, 22)?;
    let iu = b.put(&k::u32_indices("bench index_select", &idx, len)?)?;
    let out = b.out(outer * n_idx * inner)?;
    Ok(Case {
        name: "index_select",
        shape: format!("{}, {n_idx} indices", dims(&[outer, len, inner])),
        flops: None,
        bytes: 4.0 * (2 * outer * n_idx * inner + n_idx) as f64,
        run: Box::new(move |d| k::index_select_f32(d, out, src, iu, outer, len, n_idx, inner)),
    })
}

fn index_add(b: &mut Buffers, s: Sizes) -> Result<Case> {
    let ((outer, len, n_idx, inner), idx) = index_case(s);
    let plan = k::scatter_plan(&idx, len)?;
    let touched = plan.starts.windows(2).filter(|w| w[1] > w[0]).count();
    let dst = b.out(outer * len * inner)?;
    let src = b.f32s(outer * n_idx * inner, 23)?;
    let order = b.put(&plan.order)?;
    let starts = b.put(&plan.starts)?;
    Ok(Case {
        name: "index_add (scatter-add)",
        shape: format!("{} from {n_idx} indices", dims(&[outer, len, inner])),
        flops: None,
        bytes: 4.0 * (outer * inner * (n_idx + 2 * touched) + n_idx + len + 1) as f64,
        run: Box::new(move |d| {
            k::index_add_f32(d, dst, src, order, starts, outer, len, n_idx, inner)
        }),
    })
}

/// Parameter count of the optimiser cases.
fn params(s: Sizes) -> usize {
    s.pick(4096, 65536, 64 << 20)
}

fn adamw(b: &mut Buffers, s: Sizes) -> Result<Case> {
    let n = params(s);
    let p = b.f32s(n, 24)?;
    let m = b.f32s(n, 25)?;
    let v = b.generate(n, |i| pattern(i, 26).abs())?;
    let g = b.f32s(n, 27)?;
    let c = k::AdamWCoeffs::new(&AdamWConfig::default(), 1e-3, 1)?;
    Ok(Case {
        name: "AdamW",
        shape: dims(&[n]),
        flops: None,
        bytes: 28.0 * n as f64,
        run: Box::new(move |d| k::adamw_f32(d, p, m, v, g, n, &c)),
    })
}

fn ema(b: &mut Buffers, s: Sizes) -> Result<Case> {
    let n = params(s);
    let shadow = b.f32s(n, 28)?;
    let p = b.f32s(n, 29)?;
    Ok(Case {
        name: "EMA",
        shape: dims(&[n]),
        flops: None,
        bytes: 12.0 * n as f64,
        run: Box::new(move |d| k::ema_f32(d, shadow, p, n, 0.999)),
    })
}

fn sum_of_squares(b: &mut Buffers, s: Sizes) -> Result<Case> {
    let n = params(s);
    let chunk = s.pick(1024, 4096, 65536);
    let parts = k::sum_squares_partials(n, chunk);
    let x = b.f32s(n, 30)?;
    let partial = b.generate(parts, |_| 0f64)?;
    let total = b.put(&[0f64])?;
    Ok(Case {
        name: "sum of squares (2 passes)",
        shape: format!("{}, chunks of {chunk}", dims(&[n])),
        flops: None,
        bytes: (4 * n + 16 * parts + 8) as f64,
        run: Box::new(move |d| {
            k::sum_squares_partial_f32(d, partial, x, n, chunk)?;
            k::sum_f64(d, total, partial, parts)
        }),
    })
}

/// The attention cases' sizes `(batch, heads, tokens, head_dim)`: causal self-attention.
fn attn_case(s: Sizes) -> k::AttnDims {
    let (b, h, n, d) = s.pick((1, 1, 101, 64), (1, 2, 128, 64), (64, 12, 1024, 64));
    k::AttnDims {
        b,
        h,
        nq: n,
        nk: n,
        dh: d,
        dv: d,
    }
}

/// Multiply-adds of causal attention's two products per (batch, head): about half of
/// `n^2` scores, each `dh + dv` long.
fn attn_flops(a: &k::AttnDims) -> f64 {
    let pairs = (a.nq * (a.nq + 1) / 2) as f64;
    2.0 * (a.b * a.h) as f64 * pairs * (a.dh + a.dv) as f64
}

/// Contiguous `[b, h, n, d]` strides.
fn attn_view(p: DevicePtr, a: &k::AttnDims, n: usize, d: usize) -> k::AttnView {
    k::AttnView {
        ptr: p,
        strides: [a.h * n * d, n * d, d, 1],
    }
}

fn attention_fwd(b: &mut Buffers, s: Sizes) -> Result<Case> {
    let a = attn_case(s);
    let (rows, keys) = (a.b * a.h * a.nq, a.b * a.h * a.nk);
    let f = k::AttnFwd {
        dims: a,
        scores: k::AttnScores {
            alpha: 0.125,
            causal: true,
        },
        q: attn_view(b.f32s(rows * a.dh, 31)?, &a, a.nq, a.dh),
        k: attn_view(b.f32s(keys * a.dh, 32)?, &a, a.nk, a.dh),
        v: attn_view(b.f32s(keys * a.dv, 33)?, &a, a.nk, a.dv),
        o: attn_view(b.out(rows * a.dv)?, &a, a.nq, a.dv),
        lse: b.out(rows)?,
        precision: k::AttnPrecision::F32,
    };
    Ok(Case {
        name: "attention fwd f32, causal",
        shape: dims(&[a.b, a.h, a.nq, a.dh]),
        flops: Some(attn_flops(&a)),
        bytes: 4.0 * (rows * (a.dh + 2 * a.dv + 1) + keys * a.dh) as f64,
        run: Box::new(move |d| k::attn_fwd(d, &f)),
    })
}

fn attention_fwd_bf16(b: &mut Buffers, s: Sizes) -> Result<Case> {
    let a = attn_case(s);
    let (rows, keys) = (a.b * a.h * a.nq, a.b * a.h * a.nk);
    let f = k::AttnFwd {
        dims: a,
        scores: k::AttnScores {
            alpha: 0.125,
            causal: true,
        },
        q: attn_view(b.f32s(rows * a.dh, 38)?, &a, a.nq, a.dh),
        k: attn_view(b.f32s(keys * a.dh, 39)?, &a, a.nk, a.dh),
        v: attn_view(b.f32s(keys * a.dv, 40)?, &a, a.nk, a.dv),
        o: attn_view(b.out(rows * a.dv)?, &a, a.nq, a.dv),
        lse: b.out(rows)?,
        precision: k::AttnPrecision::Bf16,
    };
    Ok(Case {
        name: "attention fwd bf16 (tensor cores), causal",
        shape: dims(&[a.b, a.h, a.nq, a.dh]),
        flops: Some(attn_flops(&a)),
        bytes: 4.0 * (rows * (a.dh + 2 * a.dv + 1) + keys * a.dh) as f64,
        run: Box::new(move |d| k::attn_fwd(d, &f)),
    })
}

/// The forward of bf16 training: q, k, v stored as bf16 (loaded by `cp.async`), the output
/// and lse f32. The inputs SDPA takes.
fn attention_fwd_bf16_inputs(b: &mut Buffers, s: Sizes) -> Result<Case> {
    attention_fwd_bf16_inputs_on(b, s, AttnKind::CpAsync)
}

/// The same forward on Hopper's warpgroup tensor cores (`attn_fwd_bf16s_d64_wgmma`).
fn attention_fwd_wgmma(b: &mut Buffers, s: Sizes) -> Result<Case> {
    attention_fwd_bf16_inputs_on(b, s, AttnKind::Wgmma)
}

fn attention_fwd_tma(b: &mut Buffers, s: Sizes) -> Result<Case> {
    attention_fwd_bf16_inputs_on(b, s, AttnKind::Tma)
}

/// Which kernels a bf16 attention row (forward with bf16 inputs, or tensor-core backward)
/// runs.
#[derive(Clone, Copy)]
enum AttnKind {
    /// The default, the `mma.sync` kernels with `cp.async` loads.
    CpAsync,
    /// The `wgmma` kernels.
    Wgmma,
    /// The warp-specialized `wgmma` kernels fed by TMA.
    Tma,
}

fn attention_fwd_bf16_inputs_on(b: &mut Buffers, s: Sizes, kind: AttnKind) -> Result<Case> {
    let a = attn_case(s);
    let (rows, keys) = (a.b * a.h * a.nq, a.b * a.h * a.nk);
    let bf16 = |seed| move |i| half::bf16::from_f32(pattern(i, seed)).to_bits();
    let f = k::AttnFwd {
        dims: a,
        scores: k::AttnScores {
            alpha: 0.125,
            causal: true,
        },
        q: attn_view(b.generate(rows * a.dh, bf16(41))?, &a, a.nq, a.dh),
        k: attn_view(b.generate(keys * a.dh, bf16(42))?, &a, a.nk, a.dh),
        v: attn_view(b.generate(keys * a.dv, bf16(43))?, &a, a.nk, a.dv),
        o: attn_view(b.out(rows * a.dv)?, &a, a.nq, a.dv),
        lse: b.out(rows)?,
        precision: k::AttnPrecision::Bf16Inputs,
    };
    Ok(Case {
        name: match kind {
            AttnKind::CpAsync => "attention fwd bf16 inputs (cp.async), causal",
            AttnKind::Wgmma => WGMMA_ATTN,
            AttnKind::Tma => TMA_ATTN,
        },
        shape: dims(&[a.b, a.h, a.nq, a.dh]),
        flops: Some(attn_flops(&a)),
        bytes: (2 * (rows * a.dh + keys * (a.dh + a.dv)) + 4 * rows * (a.dv + 1)) as f64,
        run: match kind {
            AttnKind::CpAsync => Box::new(move |d| k::attn_fwd(d, &f)),
            AttnKind::Wgmma => Box::new(move |d| k::attn_fwd_wgmma(d, &f, None)),
            AttnKind::Tma => Box::new(move |d| k::attn_fwd_tma(d, &f, None)),
        },
    })
}

fn attention_bwd(b: &mut Buffers, s: Sizes) -> Result<Case> {
    let a = attn_case(s);
    let (rows, keys) = (a.b * a.h * a.nq, a.b * a.h * a.nk);
    let scores = k::AttnScores {
        alpha: 0.125,
        causal: true,
    };
    let q = attn_view(b.f32s(rows * a.dh, 34)?, &a, a.nq, a.dh);
    let kk = attn_view(b.f32s(keys * a.dh, 35)?, &a, a.nk, a.dh);
    let v = attn_view(b.f32s(keys * a.dv, 36)?, &a, a.nk, a.dv);
    let o = attn_view(b.out(rows * a.dv)?, &a, a.nq, a.dv);
    let lse = b.out(rows)?;
    // A real forward fills o and lse, so the backward sees consistent inputs.
    let fwd = k::AttnFwd {
        dims: a,
        scores,
        q,
        k: kk,
        v,
        o,
        lse,
        precision: k::AttnPrecision::F32,
    };
    k::attn_fwd(b.driver, &fwd)?;
    let bwd = k::AttnBwd {
        dims: a,
        scores,
        q,
        k: kk,
        v,
        o,
        g: attn_view(b.f32s(rows * a.dv, 37)?, &a, a.nq, a.dv),
        lse,
        delta: b.out(rows)?,
        dq: attn_view(b.out(rows * a.dh)?, &a, a.nq, a.dh),
        dk: attn_view(b.out(keys * a.dh)?, &a, a.nk, a.dh),
        dv: attn_view(b.out(keys * a.dv)?, &a, a.nk, a.dv),
    };
    Ok(Case {
        name: "attention bwd f32, causal (D, dK dV, dQ)",
        shape: dims(&[a.b, a.h, a.nq, a.dh]),
        // Recomputed scores, dP, and the three gradient products.
        flops: Some(2.5 * attn_flops(&a)),
        bytes: 4.0 * (rows * (2 * a.dh + 3 * a.dv + 2) + keys * 2 * (a.dh + a.dv)) as f64,
        run: Box::new(move |d| k::attn_bwd(d, &bwd)),
    })
}

/// The tensor-core backward of bf16 training: q, k, v and o stored as bf16 (as the forward
/// keeps them), dO, lse and the gradients f32; heads of 64.
fn attention_bwd_bf16(b: &mut Buffers, s: Sizes) -> Result<Case> {
    attention_bwd_bf16_on(b, s, AttnKind::CpAsync)
}

/// The same backward with its dK/dV and dQ kernels on Hopper's warpgroup tensor cores.
fn attention_bwd_wgmma(b: &mut Buffers, s: Sizes) -> Result<Case> {
    attention_bwd_bf16_on(b, s, AttnKind::Wgmma)
}

/// The same on the warp-specialized kernels fed by TMA.
fn attention_bwd_tma(b: &mut Buffers, s: Sizes) -> Result<Case> {
    attention_bwd_bf16_on(b, s, AttnKind::Tma)
}

fn attention_bwd_bf16_on(b: &mut Buffers, s: Sizes, kind: AttnKind) -> Result<Case> {
    let a = attn_case(s);
    let (rows, keys) = (a.b * a.h * a.nq, a.b * a.h * a.nk);
    let scores = k::AttnScores {
        alpha: 0.125,
        causal: true,
    };
    // The f32 forward of the same values (before rounding) gives a consistent lse.
    let o = attn_view(b.out(rows * a.dv)?, &a, a.nq, a.dv);
    let lse = b.out(rows)?;
    let fwd = k::AttnFwd {
        dims: a,
        scores,
        q: attn_view(b.f32s(rows * a.dh, 34)?, &a, a.nq, a.dh),
        k: attn_view(b.f32s(keys * a.dh, 35)?, &a, a.nk, a.dh),
        v: attn_view(b.f32s(keys * a.dv, 36)?, &a, a.nk, a.dv),
        o,
        lse,
        precision: k::AttnPrecision::F32,
    };
    k::attn_fwd(b.driver, &fwd)?;
    let bf16 = |seed| move |i| half::bf16::from_f32(pattern(i, seed)).to_bits();
    let o16 = b.generate(rows * a.dv, |_| 0u16)?;
    // o as bf16: its values only feed D = rowsum(dO o).
    k::strided_copy_f32_bf16(b.driver, o16, &[1], o.ptr, &[1], &[rows * a.dv])?;
    let bwd = k::AttnBwd {
        dims: a,
        scores,
        q: attn_view(b.generate(rows * a.dh, bf16(34))?, &a, a.nq, a.dh),
        k: attn_view(b.generate(keys * a.dh, bf16(35))?, &a, a.nk, a.dh),
        v: attn_view(b.generate(keys * a.dv, bf16(36))?, &a, a.nk, a.dv),
        o: attn_view(o16, &a, a.nq, a.dv),
        g: attn_view(b.f32s(rows * a.dv, 37)?, &a, a.nq, a.dv),
        lse,
        delta: b.out(rows)?,
        dq: attn_view(b.out(rows * a.dh)?, &a, a.nq, a.dh),
        dk: attn_view(b.out(keys * a.dh)?, &a, a.nk, a.dh),
        dv: attn_view(b.out(keys * a.dv)?, &a, a.nk, a.dv),
    };
    Ok(Case {
        name: match kind {
            AttnKind::CpAsync => {
                "attention bwd bf16 (tensor cores), causal (D and the bf16 dO, dK dV, dQ)"
            }
            AttnKind::Wgmma => WGMMA_ATTN_BWD,
            AttnKind::Tma => TMA_ATTN_BWD,
        },
        shape: dims(&[a.b, a.h, a.nq, a.dh]),
        flops: Some(2.5 * attn_flops(&a)),
        bytes: (2 * (rows * (a.dh + a.dv) + keys * (a.dh + a.dv))
            + 4 * (rows * (a.dv + a.dh + 2) + keys * (a.dh + a.dv))) as f64,
        run: match kind {
            AttnKind::CpAsync => {
                Box::new(move |d| k::attn_bwd_stored(d, &bwd, k::AttnStorage::Bf16TensorCores))
            }
            AttnKind::Wgmma => Box::new(move |d| k::attn_bwd_wgmma(d, &bwd)),
            AttnKind::Tma => Box::new(move |d| k::attn_bwd_tma(d, &bwd)),
        },
    })
}
