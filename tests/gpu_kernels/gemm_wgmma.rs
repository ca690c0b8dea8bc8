//! `ptx/gemm_sm90.cu`: the bf16 NT GEMM on Hopper's warpgroup tensor cores (`wgmma`), both
//! tiles, on outputs ragged against the tile with at least three tiles each way and a k of
//! three full k-tiles of 64 plus a ragged one. On the interpreter it gives the bits of the
//! `mma.sync` tiles (the interpreter sums each 16-wide k-step exactly, whichever instruction
//! asks); on a GPU it is compared with an f64 product within `1e-5` of the sum of the terms'
//! magnitudes. Then the interpreter's `wgmma` checks, each against the real kernel with one
//! line of its PTX changed: a missing proxy fence, a missing `wgmma.fence`, a wait that
//! leaves a stage in use when the ring refills it, and a missing final wait.

use half::bf16;
use tarflow::gpu::kernels::{
    gemm_bf16_on, gemm_bf16_wgmma, Bf16Layout, Bf16Tile, GemmBf16, WgmmaTile, GEMM_SM90,
};
use tarflow::gpu::{Driver, Forward, KernelArg, LaunchConfig, PtxModule, PtxSim};
use tarflow::Rng;

use crate::harness::*;

/// A k-contiguous bf16 operand `[rows, k]` with leading dimension `ld` (NaN padding).
fn operand(rng: &mut Rng, rows: usize, k: usize, ld: usize) -> (Vec<u16>, Vec<f64>) {
    let mut bits = vec![0x7fc0u16; rows * ld];
    let mut values = vec![f64::NAN; rows * ld];
    for r in 0..rows {
        for l in 0..k {
            let v = bf16::from_f32(rng.normal() as f32);
            bits[r * ld + l] = v.to_bits();
            values[r * ld + l] = v.to_f64();
        }
    }
    (bits, values)
}

struct Case {
    g: GemmBf16,
    a: Vec<f64>,
    b: Vec<f64>,
    c0: Vec<f32>,
    bias: Vec<f32>,
}

/// `C = 1.25 A B^T + C0 + bias` for `[m, k] x [n, k]`, uploaded.
fn case(d: &dyn Driver, (m, n, k): (usize, usize, usize), seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    let ld = k.div_ceil(8) * 8 + 8;
    let (abits, a) = operand(&mut rng, m, k, ld);
    let (bbits, b) = operand(&mut rng, n, k, ld);
    let c0 = normal(&mut rng, m * n);
    let bias = normal(&mut rng, n);
    let g = GemmBf16 {
        layout: Bf16Layout::NT,
        m,
        n,
        k,
        batch: 1,
        c: upload::<f32>(d, &c0),
        ldc: n,
        c_bs: 0,
        a: upload::<u16>(d, &abits),
        lda: ld,
        a_bs: 0,
        b: upload::<u16>(d, &bbits),
        ldb: ld,
        b_bs: 0,
        bias: Some(upload::<f32>(d, &bias)),
        alpha: 1.25,
        beta: 1.0,
    };
    Case { g, a, b, c0, bias }
}

fn shape(tile: WgmmaTile) -> (usize, usize, usize) {
    // Three row tiles of 128 and a part; three column tiles and a part; k = 3 x 64 + 19.
    (3 * 128 + 45, 3 * tile.cols() + 37, 211)
}

fn wgmma_matches_f64_and_the_mma_tiles(d: &dyn Driver) {
    for tile in [WgmmaTile::N128, WgmmaTile::N256] {
        let (m, n, k) = shape(tile);
        let c = case(d, (m, n, k), 71 + tile.cols() as u64);
        gemm_bf16_wgmma(d, &c.g, tile).unwrap();
        let got = download::<f32>(d, c.g.c, m * n);
        let ld = c.g.lda;
        let mut want = Vec::with_capacity(m * n);
        let mut bound = Vec::with_capacity(m * n);
        for i in 0..m {
            for j in 0..n {
                let (mut s, mut mag) = (0.0f64, 0.0f64);
                for l in 0..k {
                    let p = c.a[i * ld + l] * c.b[j * ld + l];
                    s += p;
                    mag += p.abs();
                }
                let rest = c.c0[i * n + j] as f64 + c.bias[j] as f64;
                want.push(1.25 * s + rest);
                bound.push(1e-5 * (1.25 * mag + rest.abs()));
            }
        }
        let what = format!("gemm_bf16_wgmma {tile:?} on {}", d.name());
        assert_within(&what, &got, &want, &bound);
        if d.compute_capability().unwrap().is_none() {
            // The interpreter: the same bits as the mma.sync tile.
            let c2 = upload::<f32>(d, &c.c0);
            gemm_bf16_on(d, &GemmBf16 { c: c2, ..c.g }, None, Bf16Tile::Large).unwrap();
            let other = download::<f32>(d, c2, m * n);
            for (e, (x, y)) in got.iter().zip(&other).enumerate() {
                assert_eq!(x.to_bits(), y.to_bits(), "{what}: element {e}: {x} vs {y}");
            }
        }
    }
}

#[test]
fn gemm_bf16_wgmma_matches_f64_and_the_mma_tiles() {
    on_each_device(|d| {
        // The cuda:0 half needs a compute-capability 9.0 GPU.
        match d.compute_capability().unwrap() {
            Some(cc) if cc != (9, 0) => {
                println!("{}: skipped: compute capability {cc:?}", d.name())
            }
            _ => wgmma_matches_f64_and_the_mma_tiles(d),
        }
    });
}

#[test]
fn gemm_bf16_wgmma_refuses_other_layouts_and_misaligned_operands() {
    let d = PtxSim::new();
    let c = case(&d, (8, 8, 8), 5);
    for layout in [Bf16Layout::NN, Bf16Layout::TN, Bf16Layout::TT] {
        let e = gemm_bf16_wgmma(&d, &GemmBf16 { layout, ..c.g }, WgmmaTile::N128).unwrap_err();
        assert!(e.to_string().contains("layout NT only"), "{e}");
    }
    let e = gemm_bf16_wgmma(
        &d,
        &GemmBf16 {
            a: c.g.a.offset(2),
            ..c.g
        },
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
    let r = gemm_bf16_wgmma(d, &c.g, WgmmaTile::N128).and_then(|()| d.synchronize());
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
