//! `ptx/gemm_sm90.cu`, the bf16 GEMM on Hopper's warpgroup tensor cores (`wgmma`): what its
//! wrapper refuses, then the interpreter's `wgmma` checks, each against the real kernel with
//! one line of its PTX changed: a missing proxy fence, a missing `wgmma.fence`, a wait that
//! leaves a stage in use when the ring refills it, and a missing final wait. (Its products,
//! every layout on both tiles and the epilogue stages, are tested with gemm.cu's in gemm.rs.)

use half::bf16;
use tarflow::gpu::kernels::{
    gemm_bf16_wgmma, Bf16Layout, GemmBf16, GemmEpilogue, WgmmaTile, GEMM_SM90,
};
use tarflow::gpu::{Driver, Forward, KernelArg, LaunchConfig, PtxModule, PtxSim};
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

/// The interpreter with one kernel module swapped for another.
struct Swapped {
    inner: PtxSim,
    module: &'static PtxModule,
}

impl Forward for Swapped {
    fn inner(&self) -> &dyn Driver {
        &self.inner
    }
    fn launch(
        &self,
        module: &PtxModule,
        kernel: &str,
        config: LaunchConfig,
        args: &[KernelArg],
    ) -> tarflow::Result<()> {
        let m = if module.name == self.module.name {
            self.module
        } else {
            module
        };
        self.inner.launch(m, kernel, config, args)
    }
}

/// Runs the N128 kernel with `from` replaced by `to` in its PTX (exactly once) on a product
/// of three by two tiles and six k-tiles; the error it ends with.
fn mutant(from: &str, to: &str) -> String {
    let ptx = GEMM_SM90.ptx;
    let count = ptx.matches(from).count();
    assert!(count >= 1, "`{from}` is not in ptx/gemm_sm90.ptx");
    let at = ptx
        .find("gemm_bf16_nt_wgmma_128(")
        .expect("the kernel's entry");
    let (head, body) = ptx.split_at(at);
    assert!(
        body.contains(from),
        "`{from}` is not in gemm_bf16_nt_wgmma_128"
    );
    let changed = format!("{head}{}", body.replacen(from, to, 1));
    let module: &'static PtxModule = Box::leak(Box::new(PtxModule {
        name: GEMM_SM90.name,
        ptx: Box::leak(changed.into_boxed_str()),
    }));
    let d: &dyn Driver = &Swapped {
        inner: PtxSim::new(),
        module,
    };
    let c = case(d, (300, 200, 6 * 64), 9);
    let r = gemm_bf16_wgmma(d, &c, None, WgmmaTile::N128).and_then(|()| d.synchronize());
    match r {
        Ok(()) => panic!("the kernel with `{from}` -> `{to}` ran without an error"),
        Err(e) => e.to_string(),
    }
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
