//! The interpreter's counters for one representative launch of every kernel: each launch
//! must run the CTAs its wrapper's grid asks for and write exactly its output once. Run
//! with `--nocapture` to print the table kept in docs/kernels.md ("Interpreter counters").

use tarflow::gpu::kernels::*;
use tarflow::gpu::sim::Counters;
use tarflow::gpu::{Driver, PtxSim};
use tarflow::optim::AdamWConfig;
use tarflow::Rng;

use crate::harness::*;

/// One row of the table: the last launch's counters, checked against the CTAs and bytes
/// written the launch must produce.
fn row(sim: &PtxSim, kernel: &str, shape: &str, ctas: u64, written: u64) -> String {
    let c = sim
        .last_counters()
        .unwrap_or_else(|| panic!("{kernel}: no counters (did the launch run?)"));
    counters_row(kernel, shape, &c, ctas, written)
}

/// The row of one launch's counters `c`, checked against the CTAs and bytes written the
/// launch must produce.
fn counters_row(kernel: &str, shape: &str, c: &Counters, ctas: u64, written: u64) -> String {
    assert_eq!(c.ctas, ctas, "{kernel} {shape}: CTAs");
    assert_eq!(
        c.global_bytes_written, written,
        "{kernel} {shape}: bytes written"
    );
    assert!(
        c.warp_instructions() > 0,
        "{kernel}: no instructions counted"
    );
    format!(
        "| `{kernel}` | {shape} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        c.ctas,
        c.warp_instructions(),
        c.int,
        c.fp32,
        c.fp64,
        c.sfu,
        c.memory,
        c.control,
        c.sync,
        c.tensor,
        c.global_bytes_read,
        c.global_bytes_written,
        c.shared_bank_conflicts
    )
}

/// The table's header.
const HEADER: [&str; 2] = [
    "| kernel | shape | CTAs | warp-instructions | int | fp32 | fp64 | sfu | memory | control | sync | tensor | global bytes read | global bytes written | bank conflicts |",
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
];

#[test]
fn interpreter_counters_per_kernel() {
    let sim = PtxSim::new();
    let d: &dyn Driver = &sim;
    let mut rng = Rng::new(81);
    let mut table: Vec<String> = HEADER.map(String::from).to_vec();
    let n = 4096usize;
    let x = upload::<f32>(d, &normal(&mut rng, n));
    let y = upload::<f32>(d, &normal(&mut rng, n));
    let out = poisoned_f32(d, n);
    let h = upload::<u16>(d, &vec![0x3f80; n]);
    let blocks = (n as u64).div_ceil(256);

    strided_copy_f32(d, out, &[64, 1], x, &[1, 64], &[64, 64]).unwrap();
    table.push(row(
        &sim,
        "strided_copy_f32",
        "[64, 64] transposed",
        blocks,
        4 * n as u64,
    ));
    strided_copy_bf16_f32(d, out, &[64, 1], h, &[1, 64], &[64, 64]).unwrap();
    table.push(row(
        &sim,
        "strided_copy_bf16_f32",
        "[64, 64] transposed",
        blocks,
        4 * n as u64,
    ));
    strided_copy_f32_bf16(d, h, &[64, 1], x, &[1, 64], &[64, 64]).unwrap();
    table.push(row(
        &sim,
        "strided_copy_f32_bf16",
        "[64, 64] transposed",
        blocks,
        2 * n as u64,
    ));
    fill_f32(d, out, n, 0.0).unwrap();
    table.push(row(&sim, "fill_f32", "4096", blocks, 4 * n as u64));
    unary_f32(d, UnaryOp::Gelu, out, x, &[1], &[n]).unwrap();
    table.push(row(
        &sim,
        "unary_f32",
        "GELU, 4096 contiguous",
        blocks,
        4 * n as u64,
    ));
    binary_f32(d, BinaryOp::Add, out, x, &[64, 1], y, &[0, 1], &[64, 64]).unwrap();
    table.push(row(
        &sim,
        "binary_f32",
        "add, [64, 64] + [64] broadcast",
        blocks,
        4 * n as u64,
    ));

    reduce_rows_f32(d, ReduceOp::Sum, out, x, 16, 256, 1.0, false).unwrap();
    table.push(row(&sim, "reduce_rows_f32", "sum, [16, 256]", 2, 16 * 4));
    reduce_chunks_f32(d, ReduceOp::Sum, out, x, 1, 64, 64, 16, 1.0, false).unwrap();
    table.push(row(
        &sim,
        "reduce_chunks_f32",
        "sum, [1, 64, 64], chunks of 16",
        4,
        4 * 64 * 4,
    ));

    let stats = poisoned_f32(d, 32);
    softmax_rows_f32(d, out, x, 16, 256, false).unwrap();
    table.push(row(&sim, "softmax_rows_f32", "[16, 256]", 2, 4 * n as u64));
    softmax_bwd_rows_f32(d, out, x, y, 16, 256, false).unwrap();
    table.push(row(
        &sim,
        "softmax_bwd_rows_f32",
        "[16, 256]",
        2,
        4 * n as u64,
    ));
    let w = upload::<f32>(d, &uniform(&mut rng, 256, 0.5, 1.5));
    layer_norm_fwd_f32(d, out, Some(stats), x, Some(w), Some(w), 16, 256, 1e-5).unwrap();
    table.push(row(
        &sim,
        "layer_norm_fwd_f32",
        "[16, 256], weight, bias, stats",
        2,
        4 * (n + 32) as u64,
    ));
    layer_norm_bwd_dx_f32(d, y, x, out, stats, Some(w), 16, 256).unwrap();
    table.push(row(
        &sim,
        "layer_norm_bwd_dx_f32",
        "[16, 256]",
        2,
        4 * n as u64,
    ));
    let parts = poisoned_f32(d, 2 * 4 * 256);
    let grads = LayerNormParamGrads {
        dweight: Some(parts),
        dbias: Some(parts.offset(4 * 4 * 256)),
    };
    layer_norm_bwd_params_f32(d, grads, x, out, stats, 16, 256, 4).unwrap();
    table.push(row(
        &sim,
        "layer_norm_bwd_params_f32",
        "[16, 256], chunks of 4 rows",
        4,
        2 * 4 * 256 * 4,
    ));

    let (m, nn, k) = (128usize, 128usize, 128usize);
    let a = upload::<f32>(d, &normal(&mut rng, m * k));
    let b = upload::<f32>(d, &normal(&mut rng, k * nn));
    let c = poisoned_f32(d, m * nn);
    let g = GemmF32 {
        m,
        n: nn,
        k,
        batch: 1,
        c,
        c_rs: nn,
        c_bs: 0,
        a,
        a_rs: k,
        a_cs: 1,
        a_bs: 0,
        b,
        b_rs: nn,
        b_cs: 1,
        b_bs: 0,
        bias: None,
        alpha: 1.0,
        beta: 0.0,
    };
    gemm_f32(d, &g).unwrap();
    table.push(row(
        &sim,
        "gemm_f32",
        "128 x 128 x 128",
        4,
        (4 * m * nn) as u64,
    ));
    let ah = upload::<u16>(d, &vec![0x3f80; m * k]);
    let bh = upload::<u16>(d, &vec![0xbf00; k * nn]);
    let product = |layout| GemmBf16 {
        layout,
        m,
        n: nn,
        k,
        batch: 1,
        c,
        ldc: nn,
        c_bs: 0,
        a: ah,
        lda: 128,
        a_bs: 0,
        b: bh,
        ldb: 128,
        b_bs: 0,
        bias: None,
        alpha: 1.0,
        beta: 0.0,
    };
    for layout in [
        Bf16Layout::NN,
        Bf16Layout::NT,
        Bf16Layout::TN,
        Bf16Layout::TT,
    ] {
        // The same product on both tiles: four 64 x 64 CTAs, or one 128 x 128.
        for (tile, ctas) in [(Bf16Tile::Small, 4), (Bf16Tile::Large, 1)] {
            gemm_bf16_on(d, &product(layout), None, tile).unwrap();
            table.push(row(
                &sim,
                layout.kernel_on(tile),
                "128 x 128 x 128",
                ctas,
                (4 * m * nn) as u64,
            ));
        }
    }
    // The same products on the warpgroup tiles: one CTA each (the 256 tile's second half of
    // columns is past n).
    for layout in [
        Bf16Layout::NN,
        Bf16Layout::NT,
        Bf16Layout::TN,
        Bf16Layout::TT,
    ] {
        for tile in [WgmmaTile::N128, WgmmaTile::N256] {
            gemm_bf16_wgmma(d, &product(layout), None, tile).unwrap();
            table.push(row(
                &sim,
                tile.kernel(layout),
                "128 x 128 x 128",
                1,
                (4 * m * nn) as u64,
            ));
        }
    }
    // The 128-deep product in two k-ranges of 64: the second pass adds the two [128, 128]
    // partials (128 KiB read) into C.
    gemm_bf16_split_k(d, &product(Bf16Layout::NN), Bf16Tile::Large, 2).unwrap();
    table.push(row(
        &sim,
        "gemm_splitk_reduce",
        "2 x [128, 128]",
        64,
        (4 * m * nn) as u64,
    ));
    // The epilogue stages after the NN product: the GELU writes the pre-activation too.
    let aux = upload::<f32>(d, &vec![0.5; m * nn]);
    for (epi, written) in [
        (GemmEpilogue::Gelu { aux, aux_rs: nn }, 8),
        (GemmEpilogue::Residual { aux, aux_rs: nn }, 4),
        (GemmEpilogue::GeluGrad { aux, aux_rs: nn }, 4),
    ] {
        gemm_bf16_epilogue(d, &product(Bf16Layout::NN), epi).unwrap();
        table.push(row(
            &sim,
            epi.bf16_kernel(Bf16Layout::NN).unwrap(),
            "128 x 128 x 128",
            4,
            (written * m * nn) as u64,
        ));
    }

    let idx = [3usize, 0, 63, 3, 17, 40, 40, 9];
    let iu = upload::<u32>(d, &u32_indices("counters", &idx, 64).unwrap());
    index_select_f32(d, out, x, iu, 4, 64, idx.len(), 16).unwrap();
    table.push(row(
        &sim,
        "index_select_f32",
        "[4, 64, 16], 8 indices",
        2,
        (4 * 4 * 8 * 16) as u64,
    ));
    let plan = scatter_plan(&idx, 64).unwrap();
    let (order, starts) = (
        upload::<u32>(d, &plan.order),
        upload::<u32>(d, &plan.starts),
    );
    index_add_f32(d, out, x, order, starts, 4, 64, idx.len(), 16).unwrap();
    // One thread per destination element; only the 6 selected rows are read and written.
    table.push(row(
        &sim,
        "index_add_f32",
        "[4, 64, 16] from 8 indices",
        16,
        4 * 6 * 16 * 4,
    ));

    let zeros = upload::<f32>(d, &vec![0.0; 2 * n]);
    let coeffs = AdamWCoeffs::new(&AdamWConfig::default(), 1e-3, 1).unwrap();
    adamw_f32(d, out, zeros, zeros.offset(4 * n as u64), y, n, &coeffs).unwrap();
    table.push(row(&sim, "adamw_f32", "4096", blocks, 3 * 4 * n as u64));
    ema_f32(d, out, y, n, 0.999).unwrap();
    table.push(row(&sim, "ema_f32", "4096", blocks, 4 * n as u64));
    let partial = upload_bytes(d, &[0u8; 8 * 4]);
    sum_squares_partial_f32(d, partial, x, n, 1024).unwrap();
    table.push(row(
        &sim,
        "sum_squares_partial_f32",
        "4096, chunks of 1024",
        4,
        4 * 8,
    ));
    sum_f64(d, partial, partial, 4).unwrap();
    table.push(row(&sim, "sum_f64", "4 partials", 1, 8));

    // The bench's ceilings: 2 CTAs x 4 warps x 16 rounds of 8 mma; 1024 16-byte copies.
    let sums = upload::<f32>(d, &vec![0.0; 2 * PEAK_MMA_THREADS]);
    peak_mma_bf16(d, sums, 0x3f80_3f80, 0x3b80_3b80, 2, 16).unwrap();
    table.push(row(
        &sim,
        "peak_mma_bf16",
        "2 CTAs, 16 rounds",
        2,
        (4 * 2 * PEAK_MMA_THREADS) as u64,
    ));
    let copied = upload::<f32>(d, &vec![0.0; 4096]);
    peak_copy_b128(d, copied, x, 1024).unwrap();
    table.push(row(&sim, "peak_copy_b128", "1024 x 16 B", 4, 16 * 1024));

    println!("{}", table.join("\n"));
}

/// The interpreter with each launch's counters kept, for the operations that launch several
/// kernels.
struct PerLaunch {
    sim: PtxSim,
    rows: std::sync::Mutex<Vec<(String, Counters)>>,
}

impl tarflow::gpu::Forward for PerLaunch {
    fn inner(&self) -> &dyn Driver {
        &self.sim
    }
    fn launch(
        &self,
        module: &tarflow::gpu::PtxModule,
        kernel: &str,
        config: tarflow::gpu::LaunchConfig,
        args: &[tarflow::gpu::KernelArg],
    ) -> tarflow::Result<()> {
        self.sim.launch(module, kernel, config, args)?;
        let c = self.sim.last_counters().expect("counters of the launch");
        self.rows.lock().unwrap().push((kernel.to_string(), c));
        Ok(())
    }
}

/// The tensor-core attention backward's kernels, then the bf16-input forward, on each tile
/// family (`mma.sync`, `wgmma`, TMA-fed `wgmma`) at `[1, 2, 512, 64]`, causal and not: each
/// launch runs the CTAs its wrapper's grid asks for and writes its outputs once (dK and dV,
/// dQ, or O and lse). Run with `--nocapture` for the table in docs/kernels.md ("The backward
/// fed by TMA").
#[test]
fn interpreter_counters_of_the_attention_kernels_per_launch() {
    let d = PerLaunch {
        sim: PtxSim::new(),
        rows: Default::default(),
    };
    let drv: &dyn Driver = &d;
    let (h, n) = (2usize, 512usize);
    let mut rng = Rng::new(82);
    let mut bf16s = |scale: f32| {
        let x: Vec<u16> = normal(&mut rng, h * n * 64)
            .iter()
            .map(|&v| half::bf16::from_f32(scale * v).to_bits())
            .collect();
        upload::<u16>(drv, &x)
    };
    let view = |ptr| AttnView {
        ptr,
        strides: [h * n * 64, n * 64, 64, 1],
    };
    let (q, k, v, o) = (bf16s(1.0), bf16s(1.0), bf16s(1.0), bf16s(0.5));
    let g = upload::<f32>(drv, &normal(&mut rng, h * n * 64));
    let lse: Vec<f32> = normal(&mut rng, h * n).iter().map(|x| 9.0 + x).collect();
    let lse = upload::<f32>(drv, &lse);
    let dims = AttnDims {
        b: 1,
        h,
        nq: n,
        nk: n,
        dh: 64,
        dv: 64,
    };
    let scores = |causal| AttnScores {
        alpha: 0.125,
        causal,
    };
    let mut table: Vec<String> = HEADER.map(String::from).to_vec();
    // The launches since the last call, from the `skip`-th on, each against its CTAs and
    // bytes written.
    let mut record = |shape: &str, skip: usize, want: &[(u64, u64)]| {
        let rows = std::mem::take(&mut *d.rows.lock().unwrap());
        assert_eq!(rows.len(), skip + want.len(), "{shape}: launches");
        for ((kernel, c), &(ctas, written)) in rows[skip..].iter().zip(want) {
            table.push(counters_row(kernel, shape, c, ctas, written));
        }
    };
    let grads = (4 * h * n * 64) as u64;
    type Bwd = fn(&dyn Driver, &AttnBwd) -> tarflow::Result<()>;
    let bwds: [(Bwd, usize); 3] = [
        (
            |d, a| attn_bwd_stored(d, a, AttnStorage::Bf16TensorCores),
            64,
        ),
        (attn_bwd_wgmma, 64),
        (attn_bwd_tma, 128),
    ];
    // The bf16-input forwards (the `mma.sync` kernel, `wgmma`, TMA): 128 queries a CTA.
    type Fwd = fn(&dyn Driver, &AttnFwd) -> tarflow::Result<()>;
    let fwds: [Fwd; 3] = [
        attn_fwd,
        |d, a| attn_fwd_wgmma(d, a, None),
        |d, a| attn_fwd_tma(d, a, None),
    ];
    for causal in [true, false] {
        let shape = format!("[1, 2, 512, 64]{}", if causal { ", causal" } else { "" });
        for (run, rows_per_cta) in bwds {
            let bwd = AttnBwd {
                dims,
                scores: scores(causal),
                q: view(q),
                k: view(k),
                v: view(v),
                o: view(o),
                g: view(g),
                lse,
                delta: poisoned_f32(drv, h * n),
                dq: view(poisoned_f32(drv, h * n * 64)),
                dk: view(poisoned_f32(drv, h * n * 64)),
                dv: view(poisoned_f32(drv, h * n * 64)),
            };
            run(drv, &bwd).unwrap();
            // After the D kernel: dK and dV, then dQ.
            let ctas = (h * n.div_ceil(rows_per_cta)) as u64;
            record(&shape, 1, &[(ctas, 2 * grads), (ctas, grads)]);
        }
        for run in fwds {
            let fwd = AttnFwd {
                dims,
                scores: scores(causal),
                q: view(q),
                k: view(k),
                v: view(v),
                o: view(poisoned_f32(drv, h * n * 64)),
                lse: poisoned_f32(drv, h * n),
                precision: AttnPrecision::Bf16Inputs,
            };
            run(drv, &fwd).unwrap();
            // O and lse.
            record(
                &shape,
                0,
                &[((h * n.div_ceil(128)) as u64, (4 * h * n * 65) as u64)],
            );
        }
    }
    println!("{}", table.join("\n"));
}
