//! `ptx/gemm_sm90.cu`, the bf16 GEMM on Hopper's warpgroup tensor cores (`wgmma`): what its
//! wrapper refuses, then the interpreter's `wgmma` checks, each against the real kernel with
//! one line of its PTX changed: a missing proxy fence, a missing `wgmma.fence`, a wait that
//! leaves a stage in use when the ring refills it, and a missing final wait. (Its products,
//! every layout on both tiles and the epilogue stages, are tested with gemm.cu's in gemm.rs.)
//!
//! Then the warp-specialized TMA tile (`gemm_bf16_*_tma_256`): its products (every layout)
//! and epilogue stages give the `wgmma` 256 tile's bits (batched, with a shared operand,
//! ragged in m, n and k; split in k-ranges), what its wrapper refuses, and the mbarrier checks against its PTX
//! changed: a
//! consumer that does not wait for a stage's copies, a consumer that never releases a stage,
//! and a release while the batch reading the stage is still in flight.

use half::bf16;
use tarflow::gpu::kernels::{
    gemm_bf16_split_k_tma, gemm_bf16_split_k_wgmma, gemm_bf16_tma, gemm_bf16_wgmma, Bf16Layout,
    GemmBf16, GemmEpilogue, WgmmaTile, ATTENTION_SM90, GEMM_SM90,
};
use tarflow::gpu::{Driver, Forward, PtxModule, PtxSim};
use tarflow::Rng;

use crate::harness::*;

/// A k-contiguous bf16 operand `[rows, k]` with leading dimension `ld` (NaN padding).
fn operand(rng: &mut Rng, rows: usize, k: usize, ld: usize) -> Vec<u16> {
    let mut bits = vec![0x7fc0u16; rows * ld];
    for r in 0..rows {
        for l in 0..k {
            bits[r * ld + l] = bf16::from_f32(rng.normal() as f32).to_bits();
        }
    }
    bits
}

/// An operand of `rows` x `k` stored as `layout` says for its side: `[rows, k]` when k is
/// contiguous, else `[k, rows]`; its leading dimension (8 past the contiguous extent,
/// rounded to 8) and the bits.
fn stored(rng: &mut Rng, rows: usize, k: usize, k_major: bool) -> (usize, Vec<u16>) {
    let (outer, inner) = if k_major { (rows, k) } else { (k, rows) };
    let ld = inner.div_ceil(8) * 8 + 8;
    (ld, operand(rng, outer, inner, ld))
}

/// `C = 1.25 A B^T + C0 + bias` for `[m, k] x [n, k]`, uploaded.
fn case(d: &dyn Driver, (m, n, k): (usize, usize, usize), seed: u64) -> GemmBf16 {
    let mut rng = Rng::new(seed);
    let ld = k.div_ceil(8) * 8 + 8;
    let (a, b) = (operand(&mut rng, m, k, ld), operand(&mut rng, n, k, ld));
    GemmBf16 {
        layout: Bf16Layout::NT,
        m,
        n,
        k,
        batch: 1,
        c: upload::<f32>(d, &normal(&mut rng, m * n)),
        ldc: n,
        c_bs: 0,
        a: upload::<u16>(d, &a),
        lda: ld,
        a_bs: 0,
        b: upload::<u16>(d, &b),
        ldb: ld,
        b_bs: 0,
        bias: Some(upload::<f32>(d, &normal(&mut rng, n))),
        alpha: 1.25,
        beta: 1.0,
    }
}

#[test]
fn gemm_bf16_wgmma_refuses_stages_off_the_256_tile_and_misaligned_operands() {
    let d = PtxSim::new();
    let c = case(&d, (8, 8, 8), 5);
    let epi = GemmEpilogue::Residual {
        aux: c.c,
        aux_rs: 8,
    };
    for (layout, tile) in [
        (Bf16Layout::NT, WgmmaTile::N128),
        (Bf16Layout::TN, WgmmaTile::N256),
        (Bf16Layout::TT, WgmmaTile::N256),
    ] {
        let g = GemmBf16 {
            layout,
            beta: 0.0,
            ..c
        };
        let e = gemm_bf16_wgmma(&d, &g, Some(epi), tile).unwrap_err();
        assert!(e.to_string().contains("need the 256 tile"), "{e}");
    }
    let e = gemm_bf16_wgmma(
        &d,
        &GemmBf16 {
            a: c.a.offset(2),
            ..c
        },
        None,
        WgmmaTile::N256,
    )
    .unwrap_err();
    assert!(e.to_string().contains("16-byte aligned"), "{e}");
}

/// Runs the N128 kernel with `from` replaced by `to` in its PTX (exactly once) on a product
/// of three by two tiles and six k-tiles; the error it ends with.
fn mutant(from: &str, to: &str) -> String {
    let d = swapped(mutated(&GEMM_SM90, "gemm_bf16_nt_wgmma_128", from, 0, to));
    let d: &dyn Driver = &d;
    let c = case(d, (300, 200, 6 * 64), 9);
    let r = gemm_bf16_wgmma(d, &c, None, WgmmaTile::N128).and_then(|()| d.synchronize());
    expect_error(r, &format!("`{from}` -> `{to}`"))
}

#[test]
fn wgmma_checks_catch_each_mutation_of_the_kernel() {
    let e = mutant("fence.proxy.async.shared::cta;", "");
    assert!(e.contains("no fence.proxy.async"), "{e}");
    let e = mutant("wgmma.fence.sync.aligned;", "");
    assert!(e.contains("without a wgmma.fence"), "{e}");
    // Waiting for all but two batches leaves the batch of k-tile kt - 2 in flight when the
    // ring's load of k-tile kt + 2 goes into its stage.
    let e = mutant(
        "wgmma.wait_group.sync.aligned 1;",
        "wgmma.wait_group.sync.aligned 2;",
    );
    assert!(
        e.contains("before the wgmma.wait_group that retires it"),
        "{e}"
    );
    let e = mutant("wgmma.wait_group.sync.aligned 0;", "");
    assert!(e.contains("before anything wrote it"), "{e}");
}

/// The interpreter dressed as a compute-capability 8.0 GPU.
struct Ampere(PtxSim);

impl Forward for Ampere {
    fn inner(&self) -> &dyn Driver {
        &self.0
    }
    fn compute_capability(&self) -> tarflow::Result<Option<(u32, u32)>> {
        Ok(Some((8, 0)))
    }
}

#[test]
fn the_warpgroup_kernels_refuse_a_gpu_that_is_not_9_0() {
    let d = Ampere(PtxSim::new());
    let c = case(&d, (8, 8, 8), 7);
    let e = gemm_bf16_wgmma(&d, &c, None, WgmmaTile::N128)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("compute capability 9.0") && e.contains("8.0"),
        "{e}"
    );
    // gemm_bf16 keeps the mma.sync tiles there, whatever TARFLOW_WGMMA says.
    tarflow::gpu::kernels::gemm_bf16(&d, &c).unwrap();
}

/// A `layout` product with `batch` products (A shared by all when `shared_a`), ragged
/// against the TMA tile: three row tiles and a part, two column tiles and a part, three
/// k-tiles and a part. `C`'s rows are `n + pad` apart (an odd `ldc` keeps the kernel's stores
/// of C to single floats, an even one lets it store pairs).
fn batched_case(
    d: &dyn Driver,
    layout: Bf16Layout,
    batch: usize,
    shared_a: bool,
    pad: usize,
    seed: u64,
) -> GemmBf16 {
    let (m, n, k): (usize, usize, usize) = (2 * 128 + 45, 2 * 256 + 37, 3 * 64 + 19);
    let mut rng = Rng::new(seed);
    let (a_k, b_k) = match layout {
        Bf16Layout::NN => (true, false),
        Bf16Layout::NT => (true, true),
        Bf16Layout::TN => (false, false),
        Bf16Layout::TT => (false, true),
    };
    let a_mats = if shared_a { 1 } else { batch };
    let mut a = Vec::new();
    let mut lda = 0;
    for _ in 0..a_mats {
        let (ld, bits) = stored(&mut rng, m, k, a_k);
        (lda, a) = (ld, [a, bits].concat());
    }
    let mut b = Vec::new();
    let mut ldb = 0;
    for _ in 0..batch {
        let (ld, bits) = stored(&mut rng, n, k, b_k);
        (ldb, b) = (ld, [b, bits].concat());
    }
    let ldc = n + pad;
    GemmBf16 {
        layout,
        batch,
        c: upload::<f32>(d, &normal(&mut rng, batch * m * ldc)),
        ldc,
        c_bs: m * ldc,
        lda,
        a_bs: if shared_a { 0 } else { a.len() / a_mats },
        a: upload::<u16>(d, &a),
        ldb,
        b_bs: b.len() / batch,
        b: upload::<u16>(d, &b),
        ..case(d, (m, n, k), seed)
    }
}

/// The output of `g` run by `f` into a fresh copy of its `C` (and of `aux`, if `epi` has one):
/// `C`, then `aux`.
fn outputs(
    d: &dyn Driver,
    g: &GemmBf16,
    epi: Option<GemmEpilogue>,
    f: impl Fn(&GemmBf16, Option<GemmEpilogue>) -> tarflow::Result<()>,
) -> (Vec<f32>, Vec<f32>) {
    let total = g.batch * g.c_bs;
    let c = upload::<f32>(d, &download::<f32>(d, g.c, total));
    let (epi, aux) = match epi {
        None => (None, None),
        Some(e) => {
            let (_, aux, aux_rs) = e.parts();
            let copy = upload::<f32>(d, &download::<f32>(d, aux, total));
            let e = match e {
                GemmEpilogue::Gelu { .. } => GemmEpilogue::Gelu { aux: copy, aux_rs },
                GemmEpilogue::Residual { .. } => GemmEpilogue::Residual { aux: copy, aux_rs },
                GemmEpilogue::GeluGrad { .. } => GemmEpilogue::GeluGrad { aux: copy, aux_rs },
            };
            (Some(e), Some(copy))
        }
    };
    f(&GemmBf16 { c, ..*g }, epi).unwrap();
    let aux = aux.map_or(Vec::new(), |p| download::<f32>(d, p, total));
    (download::<f32>(d, c, total), aux)
}

fn tma_matches_wgmma(d: &dyn Driver) {
    if d.compute_capability()
        .unwrap()
        .is_some_and(|cc| cc != (9, 0))
    {
        println!("{}: TMA tile skipped: not compute capability 9.0", d.name());
        return;
    }
    use Bf16Layout::{NN, NT, TN, TT};
    // NT in each batch form; the other layouts batched (each operand's own swizzled reads
    // and boxes: NN and TN read B MN-major, TN and TT read A MN-major).
    let cases = [
        (NT, 1, false, 0, 21),
        (NT, 2, false, 3, 22),
        (NT, 2, true, 1, 23),
        (NN, 2, false, 0, 26),
        (TN, 2, false, 3, 27),
        (TT, 2, true, 0, 28),
    ];
    for (layout, batch, shared_a, pad, seed) in cases {
        let g = batched_case(d, layout, batch, shared_a, pad, seed);
        let want = outputs(d, &g, None, |g, e| {
            gemm_bf16_wgmma(d, g, e, WgmmaTile::N256)
        });
        let got = outputs(d, &g, None, |g, e| gemm_bf16_tma(d, g, e));
        let what = format!(
            "TMA tile, {layout:?}, batch {batch}, shared A {shared_a}, ldc n + {pad}, on {}",
            d.name()
        );
        assert!(want.0.iter().all(|v| v.is_finite()), "{what}");
        assert_bits(&what, &got.0, &want.0);
    }
    // The epilogue stages (beta 0), over an aux of normal values.
    for (layout, pad) in [(NT, 0), (NT, 3), (NN, 0)] {
        tma_epilogues(d, layout, pad);
    }
    for layout in [NN, NT, TN, TT] {
        tma_split_k(d, layout);
    }
}

/// A single `layout` product with k = 216 split three ways (72 per range: a k-tile and a
/// part, so each range's second copy reaches past its map's k extent, where memory holds
/// the next range's values and the copy must give zeros), alpha 1.25, beta 1 and a bias: the
/// TMA tile's split product against the `wgmma` 256 tile's.
fn tma_split_k(d: &dyn Driver, layout: Bf16Layout) {
    let (m, n, k) = (2 * 128 + 45, 2 * 256 + 37, 216);
    let mut rng = Rng::new(29);
    let (a_k, b_k) = match layout {
        Bf16Layout::NN => (true, false),
        Bf16Layout::NT => (true, true),
        Bf16Layout::TN => (false, false),
        Bf16Layout::TT => (false, true),
    };
    let (lda, a) = stored(&mut rng, m, k, a_k);
    let (ldb, b) = stored(&mut rng, n, k, b_k);
    let g = GemmBf16 {
        layout,
        k,
        c_bs: m * n,
        a: upload::<u16>(d, &a),
        lda,
        b: upload::<u16>(d, &b),
        ldb,
        ..case(d, (m, n, k), 30)
    };
    let want = outputs(d, &g, None, |g, _| {
        gemm_bf16_split_k_wgmma(d, g, WgmmaTile::N256, 3)
    });
    let got = outputs(d, &g, None, |g, _| gemm_bf16_split_k_tma(d, g, 3));
    let what = format!("TMA tile, {layout:?} split in 3, on {}", d.name());
    assert!(want.0.iter().all(|v| v.is_finite()), "{what}");
    assert_bits(&what, &got.0, &want.0);
}

/// The epilogue stages (beta 0) on the TMA tile against the `wgmma` 256 tile, over an aux of
/// normal values laid out as C.
fn tma_epilogues(d: &dyn Driver, layout: Bf16Layout, pad: usize) {
    let g = GemmBf16 {
        beta: 0.0,
        ..batched_case(d, layout, 2, false, pad, 24)
    };
    let mut rng = Rng::new(25);
    let aux = upload::<f32>(d, &normal(&mut rng, 2 * g.c_bs));
    for epi in [
        GemmEpilogue::Gelu { aux, aux_rs: g.ldc },
        GemmEpilogue::Residual { aux, aux_rs: g.ldc },
        GemmEpilogue::GeluGrad { aux, aux_rs: g.ldc },
    ] {
        let want = outputs(d, &g, Some(epi), |g, e| {
            gemm_bf16_wgmma(d, g, e, WgmmaTile::N256)
        });
        let got = outputs(d, &g, Some(epi), |g, e| gemm_bf16_tma(d, g, e));
        let what = format!(
            "TMA tile, {layout:?} with {}, ldc n + {pad}, on {}",
            epi.parts().0,
            d.name()
        );
        assert_bits(&format!("{what}: C"), &got.0, &want.0);
        assert_bits(&format!("{what}: aux"), &got.1, &want.1);
    }
}

#[test]
fn the_tma_tile_gives_the_warpgroup_tiles_bits() {
    on_each_device(tma_matches_wgmma);
}

#[test]
fn the_tma_tile_refuses_stages_on_transposed_a_and_other_gpus() {
    let d = PtxSim::new();
    let c = case(&d, (8, 8, 8), 11);
    let aux = upload::<f32>(&d, &[0.0; 64]);
    for layout in [Bf16Layout::TN, Bf16Layout::TT] {
        let g = GemmBf16 {
            layout,
            beta: 0.0,
            ..c
        };
        let epi = GemmEpilogue::Gelu { aux, aux_rs: 8 };
        let e = gemm_bf16_tma(&d, &g, Some(epi)).unwrap_err().to_string();
        assert!(e.contains("layout NN or NT"), "{e}");
    }
    let e = gemm_bf16_tma(&d, &GemmBf16 { ldb: 4, ..c }, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("ldb = 4 must be a multiple of 8"), "{e}");
    let a = Ampere(PtxSim::new());
    let c = case(&a, (8, 8, 8), 12);
    let e = gemm_bf16_tma(&a, &c, None).unwrap_err().to_string();
    assert!(e.contains("compute capability 9.0"), "{e}");
}

/// Runs the plain TMA kernel, changed as [`mutated`] says, on one tile of eight k-tiles (the
/// ring of four turns twice); the error it ends with.
fn tma_mutant(from: &str, nth: usize, to: &str) -> String {
    let d = swapped(mutated(&GEMM_SM90, "gemm_bf16_nt_tma_256", from, nth, to));
    let d: &dyn Driver = &d;
    let c = case(d, (128, 256, 8 * 64), 13);
    let r = gemm_bf16_tma(d, &c, None).and_then(|()| d.synchronize());
    expect_error(r, &format!("`{from}` ({nth}) -> `{to}`"))
}

#[test]
fn mbarrier_checks_catch_each_mutation_of_the_tma_kernel() {
    // The unchanged kernel runs this case cleanly.
    let d = PtxSim::new();
    gemm_bf16_tma(&d, &case(&d, (128, 256, 8 * 64), 13), None).unwrap();
    // The consumers' wait (the second try_wait in the body) always says yes.
    const WAIT: &str = "mbarrier.try_wait.parity.shared::cta.b64 p,";
    let consumer = GEMM_SM90.ptx.contains(WAIT);
    assert!(consumer, "no try_wait in the module");
    let e = tma_mutant(WAIT, 1, "setp.eq.u32 p, 1, 1; //");
    assert!(
        e.contains("without waiting for that mbarrier's phase"),
        "{e}"
    );
    // The consumers never release a stage: the producer waits forever for the fifth k-tile.
    let e = tma_mutant("mbarrier.arrive.shared::cta.b64", 0, "// ");
    assert!(e.contains("deadlock"), "{e}");
    // Releasing a stage while the batch that reads it is in flight: the ring refills it
    // under the running wgmma.
    let e = tma_mutant(
        "wgmma.wait_group.sync.aligned 1;",
        0,
        "wgmma.wait_group.sync.aligned 2;",
    );
    assert!(
        e.contains("before the wgmma.wait_group that retires it"),
        "{e}"
    );
}

/// The TMA tile's MN-major reads hang on their descriptors: the NN kernel with B's leading
/// byte offset (between its boxes of 64 columns) zeroed in the first k16 step, or with B read
/// k-major (imm-trans-b 0), no longer gives the unchanged kernel's bits (the interpreter reads
/// what the changed descriptor names).
#[test]
fn the_tma_tiles_mn_major_reads_hang_on_the_box_offset_and_the_transpose() {
    let d = PtxSim::new();
    let g = batched_case(&d, Bf16Layout::NN, 1, false, 0, 29);
    let want = outputs(&d, &g, None, |g, e| gemm_bf16_tma(&d, g, e));
    // The MN-major descriptor's constant bits: swizzle mode 1, SBO 1,024, LBO 8,192.
    let mn_desc = |lbo: u64| (1u64 << 62) | (1024 >> 4) << 32 | (lbo >> 4) << 16;
    let changes = [
        (format!("{}", mn_desc(8192)), format!("{}", mn_desc(0))),
        ("p, 1, 1, 0, 1;".to_string(), "p, 1, 1, 0, 0;".to_string()),
    ];
    for (from, to) in changes {
        let m = swapped(mutated(&GEMM_SM90, "gemm_bf16_nn_tma_256", &from, 0, &to));
        let m: &dyn Driver = &m;
        // The same case (same seed) on the changed interpreter.
        let g = batched_case(m, Bf16Layout::NN, 1, false, 0, 29);
        let r = gemm_bf16_tma(m, &g, None).and_then(|()| m.synchronize());
        // An error is a catch too; the reads named here stay inside the stages.
        if let Err(e) = r {
            println!("`{from}` -> `{to}`: {e}");
            continue;
        }
        let got = download::<f32>(m, g.c, g.m * g.ldc);
        let same = got
            .iter()
            .zip(&want.0)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(!same, "`{from}` -> `{to}` gave the same bits");
    }
}

/// A 128-byte swizzled descriptor must start its 1024-byte pattern on a 1024-byte boundary
/// when its base offset is 0 (the PTX ISA's rule): the NN kernel's MN-major descriptor moved
/// on by one 128-byte row is refused, where the interpreter would otherwise read the bytes
/// through a pattern the hardware does not use there.
#[test]
fn a_swizzled_descriptor_off_its_pattern_boundary_is_refused() {
    let mn_desc = |lbo: u64| (1u64 << 62) | (1024 >> 4) << 32 | (lbo >> 4) << 16;
    let (from, to) = (
        format!("{}", mn_desc(8192)),
        format!("{}", mn_desc(8192) + (128 >> 4)),
    );
    let m = swapped(mutated(&GEMM_SM90, "gemm_bf16_nn_tma_256", &from, 0, &to));
    let m: &dyn Driver = &m;
    let g = batched_case(m, Bf16Layout::NN, 1, false, 0, 29);
    let r = gemm_bf16_tma(m, &g, None).and_then(|()| m.synchronize());
    let e = expect_error(r, &format!("`{from}` -> `{to}`"));
    assert!(e.contains("in row 1 of a 1024-byte swizzle pattern"), "{e}");
}

/// The entries of `m` whose body moves registers with `setmaxnreg`.
fn setmaxnreg_entries(m: &'static PtxModule) -> Vec<(&'static PtxModule, String)> {
    m.ptx
        .split(".visible .entry ")
        .skip(1)
        .filter(|body| body.contains("setmaxnreg."))
        .map(|body| (m, body[..body.find('(').unwrap()].trim().to_string()))
        .collect()
}

/// The warp-specialized kernels move registers on a budget of 168 a thread at launch (the
/// share of 384 threads, one CTA): the producer warpgroup decreases to 40 and each consumer
/// increases to 232, 40 + 2 x 232 = 3 x 168. The interpreter models the 168 from the launch
/// bounds; a 9.0 GPU must allocate the same, or the consumers' `setmaxnreg.inc` would wait
/// for ever there.
#[test]
fn the_warp_specialized_kernels_start_with_the_registers_their_budget_needs() {
    let entries: Vec<_> = [&GEMM_SM90, &ATTENTION_SM90]
        .into_iter()
        .flat_map(setmaxnreg_entries)
        .collect();
    // The TMA GEMM tile's ten entries (its layouts and epilogue stages) and the attention
    // backward's two.
    assert_eq!(entries.len(), 12, "{entries:?}");
    for (m, e) in &entries {
        let body = m
            .ptx
            .split(".visible .entry ")
            .find(|b| b.starts_with(e.as_str()));
        let body = body.unwrap();
        assert!(body.contains("setmaxnreg.dec.sync.aligned.u32 40;"), "{e}");
        assert!(body.contains("setmaxnreg.inc.sync.aligned.u32 232;"), "{e}");
        assert!(
            body.contains(".maxntid 384, 1, 1") && body.contains(".minnctapersm 1"),
            "{e}"
        );
    }
    assert_eq!(40 + 2 * 232, 3 * 168);
    on_each_device(|d| {
        if d.compute_capability()
            .unwrap()
            .is_some_and(|cc| cc != (9, 0))
        {
            println!("{}: skipped: not compute capability 9.0", d.name());
            return;
        }
        for (m, e) in &entries {
            let regs = d.kernel_registers(m, e).unwrap();
            assert_eq!(regs, Some(168), "{e} on {}", d.name());
        }
    });
}
