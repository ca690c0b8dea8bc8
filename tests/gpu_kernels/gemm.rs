//! `ptx/gemm.cu`: the f32 GEMM (transposed operands as strides, alpha / beta, bias, batches
//! with a shared operand) and the bf16 tensor-core GEMM in all four layouts on both tiles, on
//! shapes that are not multiples of the tile (at least three tiles each way on the 128 x 128
//! one) and have three full k-tiles plus a ragged one. Outputs
//! are compared with an f64 product of the same (bf16-rounded) inputs, within `1e-5` of the
//! sum of the magnitudes of the terms; the f32 Linear case also with the CPU's `linear`, and
//! the GELU-derivative epilogue with the CPU's product and `gelu` backward. The bf16
//! epilogue kernels are compared bit for bit with the bf16 product followed by the
//! elementwise kernels they replace. Both tiles give the same bits.

use half::bf16;
use tarflow::backend::{BinaryOp, UnaryOp};
use tarflow::gpu::kernels::{
    binary_f32, gemm_bf16_epilogue, gemm_bf16_on, gemm_bf16_split_k, gemm_bf16_split_k_wgmma,
    gemm_bf16_wgmma, gemm_f32, gemm_f32_epilogue, strided_copy_f32, unary_f32, Bf16Layout,
    Bf16Tile, GemmBf16, GemmEpilogue, GemmF32, WgmmaTile,
};
use tarflow::gpu::{DevicePtr, Driver};
use tarflow::{Rng, Tensor};

use crate::harness::*;

/// `alpha * A B + beta * C0 + bias` in f64 with the bound on its f32 error, for one batch:
/// `a(i, l)`, `b(l, j)`, `c0(i, j)` read the operands.
fn reference(
    (m, n, k): (usize, usize, usize),
    a: impl Fn(usize, usize) -> f64,
    b: impl Fn(usize, usize) -> f64,
    c0: impl Fn(usize, usize) -> f64,
    bias: Option<&[f32]>,
    alpha: f64,
    beta: f64,
) -> (Vec<f64>, Vec<f64>) {
    let (mut want, mut bound) = (Vec::with_capacity(m * n), Vec::with_capacity(m * n));
    for i in 0..m {
        for j in 0..n {
            let (mut s, mut mag) = (0.0, 0.0);
            for l in 0..k {
                let p = a(i, l) * b(l, j);
                s += p;
                mag += p.abs();
            }
            let c = if beta == 0.0 { 0.0 } else { beta * c0(i, j) };
            let bj = bias.map_or(0.0, |bv| bv[j] as f64);
            want.push(alpha * s + c + bj);
            bound.push(1e-5 * (alpha.abs() * mag + c.abs() + bj.abs()));
        }
    }
    (want, bound)
}

/// Rows `0..m` of a `[.., ldc]` output as one `[m, n]` list.
fn rows(c: &[f32], m: usize, n: usize, ldc: usize) -> Vec<f32> {
    (0..m)
        .flat_map(|i| c[i * ldc..i * ldc + n].to_vec())
        .collect()
}

/// `x W^T + b` with `x [150, 53]`, `W [141, 53]` (three output tiles each way, ragged): B is `W` read transposed by strides, against
/// the CPU's `linear`.
fn f32_linear(d: &dyn Driver) {
    let mut rng = Rng::new(51);
    let (m, n, k) = (150usize, 141usize, 53usize);
    let (xs, ws, bs) = (
        normal(&mut rng, m * k),
        normal(&mut rng, n * k),
        normal(&mut rng, n),
    );
    let x = Tensor::from_vec(xs.clone(), &[m, k]).unwrap();
    let w = Tensor::from_vec(ws.clone(), &[n, k]).unwrap();
    let b = Tensor::from_vec(bs.clone(), &[n]).unwrap();
    let cpu = wide(&x.linear(&w, Some(&b)).unwrap().to_vec());
    let c = poisoned_f32(d, m * n);
    let g = GemmF32 {
        m,
        n,
        k,
        batch: 1,
        c,
        c_rs: n,
        c_bs: 0,
        a: upload::<f32>(d, &xs),
        a_rs: k,
        a_cs: 1,
        a_bs: 0,
        b: upload::<f32>(d, &ws),
        b_rs: 1,
        b_cs: k,
        b_bs: 0,
        bias: Some(upload::<f32>(d, &bs)),
        alpha: 1.0,
        beta: 0.0,
    };
    gemm_f32(d, &g).unwrap();
    let got = download::<f32>(d, c, m * n);
    let (_, bound) = reference(
        (m, n, k),
        |i, l| xs[i * k + l] as f64,
        |l, j| ws[j * k + l] as f64,
        |_, _| 0.0,
        Some(&bs),
        1.0,
        0.0,
    );
    assert_within(
        &format!("gemm_f32 as linear on {}", d.name()),
        &got,
        &cpu,
        &bound,
    );
}

/// Batched `0.5 A^T B + C + bias` accumulating into padded rows of `C`: A stored `[k, m]`
/// per batch, B shared by both batches (batch stride 0), `k = 3 * 16 + 5`.
fn f32_transposed_accumulate(d: &dyn Driver) {
    let mut rng = Rng::new(52);
    let (m, n, k, batch) = (150usize, 141usize, 53usize, 2usize);
    let ldc = n + 3;
    let (alpha, beta) = (0.5f32, 1.0f32);
    let a_s = normal(&mut rng, batch * k * m);
    let b_s = normal(&mut rng, k * n);
    let bias = normal(&mut rng, n);
    let mut c0 = normal(&mut rng, batch * m * ldc);
    for i in 0..batch * m {
        c0[i * ldc + n..(i + 1) * ldc].fill(f32::NAN); // padding: neither read nor written
    }
    let c = upload::<f32>(d, &c0);
    let g = GemmF32 {
        m,
        n,
        k,
        batch,
        c,
        c_rs: ldc,
        c_bs: m * ldc,
        a: upload::<f32>(d, &a_s),
        a_rs: 1,
        a_cs: m,
        a_bs: k * m,
        b: upload::<f32>(d, &b_s),
        b_rs: n,
        b_cs: 1,
        b_bs: 0,
        bias: Some(upload::<f32>(d, &bias)),
        alpha,
        beta,
    };
    gemm_f32(d, &g).unwrap();
    let got = download::<f32>(d, c, batch * m * ldc);
    for z in 0..batch {
        let (want, bound) = reference(
            (m, n, k),
            |i, l| a_s[z * k * m + l * m + i] as f64,
            |l, j| b_s[l * n + j] as f64,
            |i, j| c0[z * m * ldc + i * ldc + j] as f64,
            Some(&bias),
            alpha as f64,
            beta as f64,
        );
        let zc = &got[z * m * ldc..(z + 1) * m * ldc];
        assert_within(
            &format!("gemm_f32 batch {z} on {}", d.name()),
            &rows(zc, m, n, ldc),
            &want,
            &bound,
        );
        for i in 0..m {
            assert!(
                zc[i * ldc + n..(i + 1) * ldc].iter().all(|v| v.is_nan()),
                "padding of row {i} written"
            );
        }
    }
    // k = 0: C = beta C + bias; and a 1 x 1 x 1 product.
    let c = upload::<f32>(d, &[1.0, 2.0, 3.0]);
    let bias1 = upload::<f32>(d, &[10.0, 20.0, 30.0]);
    let zero_k = GemmF32 {
        m: 1,
        n: 3,
        k: 0,
        batch: 1,
        c,
        c_rs: 3,
        bias: Some(bias1),
        beta: 2.0,
        ..g
    };
    gemm_f32(d, &zero_k).unwrap();
    assert_bits(
        "gemm_f32 with k = 0",
        &download::<f32>(d, c, 3),
        &[12.0, 24.0, 36.0],
    );
    let a1 = upload::<f32>(d, &[3.0]);
    let b1 = upload::<f32>(d, &[-0.5]);
    let c1 = poisoned_f32(d, 2);
    let one = GemmF32 {
        m: 1,
        n: 1,
        k: 1,
        batch: 1,
        c: c1,
        c_rs: 1,
        c_bs: 0,
        a: a1,
        a_rs: 1,
        a_cs: 1,
        a_bs: 0,
        b: b1,
        b_rs: 1,
        b_cs: 1,
        b_bs: 0,
        bias: None,
        alpha: 1.0,
        beta: 0.0,
    };
    gemm_f32(d, &one).unwrap();
    let got = download::<f32>(d, c1, 2);
    assert_eq!(got[0], -1.5);
    assert!(got[1].is_nan(), "a 1 x 1 GEMM wrote past its output");
}

/// A bf16 operand stored with leading dimension `ld` over `outer` rows of `inner` values,
/// batched; padding holds bf16 NaN so a read past the extent shows.
struct Bf16Operand {
    values: Vec<f32>,
    bits: Vec<u16>,
    ld: usize,
    batch_stride: usize,
}

fn bf16_operand(rng: &mut Rng, batch: usize, outer: usize, inner: usize, ld: usize) -> Bf16Operand {
    let bs = outer * ld;
    let mut bits = vec![0x7fc0u16; batch * bs];
    let mut values = vec![f32::NAN; batch * bs];
    for z in 0..batch {
        for o in 0..outer {
            for i in 0..inner {
                let v = bf16::from_f32(rng.normal() as f32);
                bits[z * bs + o * ld + i] = v.to_bits();
                values[z * bs + o * ld + i] = v.to_f32();
            }
        }
    }
    Bf16Operand {
        values,
        bits,
        ld,
        batch_stride: bs,
    }
}

/// `A [m, k]` and `B [k, n]`, batched, stored as `layout` says, each leading dimension a
/// multiple of 8 past its extent (NaN in the padding).
fn operands_for(
    rng: &mut Rng,
    layout: Bf16Layout,
    (m, n, k): (usize, usize, usize),
    batch: usize,
) -> (Bf16Operand, Bf16Operand) {
    let pad = |x: usize| x.div_ceil(8) * 8 + 8;
    let (a_k, b_k) = k_major(layout);
    let a = if a_k {
        bf16_operand(rng, batch, m, k, pad(k))
    } else {
        bf16_operand(rng, batch, k, m, pad(m))
    };
    let b = if b_k {
        bf16_operand(rng, batch, n, k, pad(k))
    } else {
        bf16_operand(rng, batch, k, n, pad(n))
    };
    (a, b)
}

/// Whether `layout` stores A, and B, with k contiguous.
fn k_major(layout: Bf16Layout) -> (bool, bool) {
    match layout {
        Bf16Layout::NN => (true, false),
        Bf16Layout::NT => (true, true),
        Bf16Layout::TN => (false, false),
        Bf16Layout::TT => (false, true),
    }
}

/// The product of the operands `(a, b)` (uploaded here), stored as `layout` says, into the
/// contiguous `[batch, m, n]` output `c`.
#[allow(clippy::too_many_arguments)]
fn bf16_product(
    d: &dyn Driver,
    layout: Bf16Layout,
    (m, n, k, batch): (usize, usize, usize, usize),
    c: DevicePtr,
    (a, b): (&Bf16Operand, &Bf16Operand),
    bias: Option<DevicePtr>,
    alpha: f32,
    beta: f32,
) -> GemmBf16 {
    GemmBf16 {
        layout,
        m,
        n,
        k,
        batch,
        c,
        ldc: n,
        c_bs: m * n,
        a: upload::<u16>(d, &a.bits),
        lda: a.ld,
        a_bs: a.batch_stride,
        b: upload::<u16>(d, &b.bits),
        ldb: b.ld,
        b_bs: b.batch_stride,
        bias,
        alpha,
        beta,
    }
}

/// A tile of either family: gemm.cu's `mma.sync` tiles or gemm_sm90.cu's warpgroup tiles.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Tile {
    Mma(Bf16Tile),
    Wgmma(WgmmaTile),
}

/// The bf16 product `g` (with `epi`) on `tile`.
fn run(d: &dyn Driver, g: &GemmBf16, epi: Option<GemmEpilogue>, tile: Tile) -> tarflow::Result<()> {
    match tile {
        Tile::Mma(t) => gemm_bf16_on(d, g, epi, t),
        Tile::Wgmma(t) => gemm_bf16_wgmma(d, g, epi, t),
    }
}

/// The tiles `d` runs: the warpgroup ones need compute capability 9.0 on a GPU (the
/// interpreter runs them all).
fn tiles(d: &dyn Driver) -> Vec<Tile> {
    let mut all = vec![Tile::Mma(Bf16Tile::Small), Tile::Mma(Bf16Tile::Large)];
    match d.compute_capability().unwrap() {
        Some(cc) if cc != (9, 0) => {
            println!("{}: wgmma skipped: compute capability {cc:?}", d.name())
        }
        _ => all.extend([Tile::Wgmma(WgmmaTile::N128), Tile::Wgmma(WgmmaTile::N256)]),
    }
    all
}

/// `[m, n]` outputs ragged against `tile` in both directions: three tiles each way, the last
/// a part (on the `mma.sync` 128 tile three and a part).
fn ragged(tile: Tile) -> (usize, usize) {
    match tile {
        Tile::Mma(Bf16Tile::Small) => (150, 141),
        Tile::Mma(Bf16Tile::Large) => (300, 270),
        Tile::Wgmma(t) => (2 * 128 + 45, 2 * t.cols() + 37),
    }
}

/// A k of three full k-tiles and a ragged one (not a multiple of 8, so the last chunk of 8
/// crosses the edge): k-tiles of 32 on the `mma.sync` tiles, 64 on the warpgroup ones.
fn ragged_k(tile: Tile) -> usize {
    match tile {
        Tile::Mma(_) => 3 * 32 + 19,
        Tile::Wgmma(_) => 3 * 64 + 19,
    }
}

fn bf16_layouts(d: &dyn Driver) {
    for tile in tiles(d) {
        bf16_layouts_on(d, tile);
    }
}

fn bf16_layouts_on(d: &dyn Driver, tile: Tile) {
    let mut rng = Rng::new(53);
    let (m, n) = ragged(tile);
    let (k, batch) = (ragged_k(tile), 2usize);
    let (alpha, beta) = (1.25f32, 1.0f32);
    for layout in [
        Bf16Layout::NN,
        Bf16Layout::NT,
        Bf16Layout::TN,
        Bf16Layout::TT,
    ] {
        let (a_k, b_k) = k_major(layout);
        let (a, b) = operands_for(&mut rng, layout, (m, n, k), batch);
        let bias = normal(&mut rng, n);
        let c0 = normal(&mut rng, batch * m * n);
        let c = upload::<f32>(d, &c0);
        let bias_dev = Some(upload::<f32>(d, &bias));
        let g = bf16_product(
            d,
            layout,
            (m, n, k, batch),
            c,
            (&a, &b),
            bias_dev,
            alpha,
            beta,
        );
        run(d, &g, None, tile).unwrap();
        let got = download::<f32>(d, c, batch * m * n);
        for z in 0..batch {
            let (ao, bo) = (z * a.batch_stride, z * b.batch_stride);
            let av = |i: usize, l: usize| {
                let at = if a_k { i * a.ld + l } else { l * a.ld + i };
                a.values[ao + at] as f64
            };
            let bv = |l: usize, j: usize| {
                let at = if b_k { j * b.ld + l } else { l * b.ld + j };
                b.values[bo + at] as f64
            };
            let (want, bound) = reference(
                (m, n, k),
                av,
                bv,
                |i, j| c0[z * m * n + i * n + j] as f64,
                Some(&bias),
                alpha as f64,
                beta as f64,
            );
            let what = format!("gemm_bf16 {layout:?} {tile:?} batch {z} on {}", d.name());
            assert_within(&what, &got[z * m * n..(z + 1) * m * n], &want, &bound);
        }
    }
}

/// The bf16 GEMM's edges in every layout: a 1 x 1 x 1 product with NaN in the padding, and
/// `k = 0`, where `C = beta C + bias`.
fn bf16_edges(d: &dyn Driver) {
    for (layout, tile) in [
        Bf16Layout::NN,
        Bf16Layout::NT,
        Bf16Layout::TN,
        Bf16Layout::TT,
    ]
    .into_iter()
    .flat_map(|l| tiles(d).into_iter().map(move |t| (l, t)))
    {
        let mut a = vec![0x7fc0u16; 8];
        let mut b = vec![0x7fc0u16; 8];
        a[0] = bf16::from_f32(3.0).to_bits();
        b[0] = bf16::from_f32(-0.5).to_bits();
        let c = poisoned_f32(d, 2);
        let g = GemmBf16 {
            layout,
            m: 1,
            n: 1,
            k: 1,
            batch: 1,
            c,
            ldc: 1,
            c_bs: 0,
            a: upload::<u16>(d, &a),
            lda: 8,
            a_bs: 0,
            b: upload::<u16>(d, &b),
            ldb: 8,
            b_bs: 0,
            bias: None,
            alpha: 1.0,
            beta: 0.0,
        };
        run(d, &g, None, tile).unwrap();
        let got = download::<f32>(d, c, 2);
        assert_eq!(
            got[0],
            -1.5,
            "{layout:?} {tile:?} 1 x 1 x 1 on {}",
            d.name()
        );
        assert!(
            got[1].is_nan(),
            "{layout:?} 1 x 1 x 1 wrote past its output"
        );
        let c = upload::<f32>(d, &[1.0, 2.0, 3.0]);
        let zero_k = GemmBf16 {
            n: 3,
            k: 0,
            c,
            ldc: 3,
            bias: Some(upload::<f32>(d, &[10.0, 20.0, 30.0])),
            beta: 2.0,
            ..g
        };
        run(d, &zero_k, None, tile).unwrap();
        let what = format!("{layout:?} {tile:?} with k = 0 on {}", d.name());
        assert_bits(&what, &download::<f32>(d, c, 3), &[12.0, 24.0, 36.0]);
    }
}

/// `gemm_f32_gelu_grad`, the MLP's data gradient `(g W2) * gelu'(pre)`: `g [150, 53]`,
/// `W2 [53, 141]` read in place (three ragged output tiles each way, k three full k-tiles and
/// a ragged one), `pre` and `C` with rows padded to 144. Against the CPU's `matmul` and
/// `gelu` backward within the product's f32 bound, and bit for bit against the same device's
/// two-launch version (`gemm_f32`, then `binary_f32` with `GeluBackward`).
fn f32_gelu_grad_epilogue(d: &dyn Driver) {
    let mut rng = Rng::new(53);
    let (m, n, k) = (150usize, 141usize, 53usize);
    let ld = n + 3;
    let (gs, ws) = (normal(&mut rng, m * k), normal(&mut rng, k * n));
    // Pre-activations over the GELU's whole shape: both erf branches and the saturated tails.
    let pres: Vec<f32> = normal(&mut rng, m * n).iter().map(|v| 3.0 * v).collect();
    let mut pre_pad = vec![f32::NAN; m * ld];
    for i in 0..m {
        pre_pad[i * ld..i * ld + n].copy_from_slice(&pres[i * n..(i + 1) * n]);
    }
    let (da, db, dpre) = (
        upload::<f32>(d, &gs),
        upload::<f32>(d, &ws),
        upload::<f32>(d, &pre_pad),
    );
    let gemm = |c| GemmF32 {
        m,
        n,
        k,
        batch: 1,
        c,
        c_rs: ld,
        c_bs: 0,
        a: da,
        a_rs: k,
        a_cs: 1,
        a_bs: 0,
        b: db,
        b_rs: n,
        b_cs: 1,
        b_bs: 0,
        bias: None,
        alpha: 1.0,
        beta: 0.0,
    };
    let c = poisoned_f32(d, m * ld);
    let epi = GemmEpilogue::GeluGrad {
        aux: dpre,
        aux_rs: ld,
    };
    gemm_f32_epilogue(d, &gemm(c), epi).unwrap();
    let got = download::<f32>(d, c, m * ld);
    for i in 0..m {
        assert!(
            got[i * ld + n..(i + 1) * ld].iter().all(|v| v.is_nan()),
            "gemm_f32_gelu_grad on {}: row {i} padding written",
            d.name()
        );
    }
    let got = rows(&got, m, n, ld);

    // The CPU: the product, then gelu's backward with it as the incoming gradient.
    let g = Tensor::from_vec(gs.clone(), &[m, k]).unwrap();
    let w = Tensor::from_vec(ws.clone(), &[k, n]).unwrap();
    let gh = g.matmul(&w).unwrap();
    let pre = Tensor::from_vec(pres.clone(), &[m, n])
        .unwrap()
        .requires_grad_();
    let y = pre.gelu().unwrap().mul(&gh).unwrap().sum_all().unwrap();
    let want = wide(&tarflow::autograd::grad(&y, &[&pre]).unwrap()[0].to_vec());
    // The product's f32 bound scaled by |gelu'| <= 1.13, plus the multiply's rounding.
    let (_, bound) = reference(
        (m, n, k),
        |i, l| gs[i * k + l] as f64,
        |l, j| ws[l * n + j] as f64,
        |_, _| 0.0,
        None,
        1.0,
        0.0,
    );
    let bound: Vec<f64> = bound
        .iter()
        .zip(&want)
        .map(|(b, w)| 1.13 * b + 1e-6 * w.abs())
        .collect();
    assert_within(
        &format!("gemm_f32_gelu_grad on {}", d.name()),
        &got,
        &want,
        &bound,
    );

    // The two-launch version on the same device: the epilogue changes no bit.
    let c2 = poisoned_f32(d, m * ld);
    gemm_f32(d, &gemm(c2)).unwrap();
    let prod = download::<f32>(d, c2, m * ld);
    let prod = upload::<f32>(d, &rows(&prod, m, n, ld));
    let out = poisoned_f32(d, m * n);
    binary_f32(
        d,
        BinaryOp::GeluBackward,
        out,
        prod,
        &[1],
        upload::<f32>(d, &pres),
        &[1],
        &[m * n],
    )
    .unwrap();
    let two = download::<f32>(d, out, m * n);
    let differing = got
        .iter()
        .zip(&two)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    assert_eq!(
        differing,
        0,
        "gemm_f32_gelu_grad on {}: elements differing from gemm_f32 + GeluBackward",
        d.name()
    );
    // beta != 0 is refused, as for the other epilogues.
    let acc = GemmF32 {
        beta: 1.0,
        ..gemm(c)
    };
    assert!(gemm_f32_epilogue(d, &acc, epi).is_err());
}

/// B of `[k, n]` stored both ways with the same values: row-major (`ld_n`, for the `N`
/// layouts) and transposed (`ld_t`, for the `T` layouts), NaN between rows.
fn bf16_both_ways(rng: &mut Rng, batch: usize, k: usize, n: usize) -> (Bf16Operand, Bf16Operand) {
    let bn = bf16_operand(rng, batch, k, n, n.div_ceil(8) * 8 + 8);
    let ld = k.div_ceil(8) * 8;
    let mut bt = Bf16Operand {
        values: vec![f32::NAN; batch * n * ld],
        bits: vec![0x7fc0; batch * n * ld],
        ld,
        batch_stride: n * ld,
    };
    for z in 0..batch {
        for l in 0..k {
            for j in 0..n {
                let (from, to) = (z * bn.batch_stride + l * bn.ld + j, z * n * ld + j * ld + l);
                bt.values[to] = bn.values[from];
                bt.bits[to] = bn.bits[from];
            }
        }
    }
    (bn, bt)
}

/// The bf16 products of one `A` `[m, k]` and one `B` `[k, n]` (two batches, ragged tiles,
/// three k-tiles and a ragged one, a bias, `alpha = 0.75`) in all four layouts and on both
/// tiles give the same bits: `ldmatrix.trans` of a stored-transposed operand yields the
/// fragments the plain `ldmatrix` yields of the other storage, and a tile only changes which
/// CTA computes an output, so the tensor cores see the same products in the same order. (The backend picks each operand's layout by its strides, so that converting
/// an operand to bf16 never transposes it.)
fn bf16_layouts_agree(d: &dyn Driver) {
    let mut rng = Rng::new(59);
    let (m, n, k, batch) = (150usize, 141usize, 115usize, 2usize);
    let (a_n, a_t) = bf16_both_ways(&mut rng, batch, k, m);
    // a_n holds A^T row-major ([k][m]): that is A stored transposed; a_t holds A row-major.
    let (b_n, b_t) = bf16_both_ways(&mut rng, batch, k, n);
    let bias = upload::<f32>(d, &normal(&mut rng, n));
    let mut results = Vec::new();
    for layout in [
        Bf16Layout::NN,
        Bf16Layout::NT,
        Bf16Layout::TN,
        Bf16Layout::TT,
    ] {
        let (a_k, b_k) = k_major(layout);
        let a = if a_k { &a_t } else { &a_n };
        let b = if b_k { &b_t } else { &b_n };
        let c = DevicePtr(0);
        let g = bf16_product(
            d,
            layout,
            (m, n, k, batch),
            c,
            (a, b),
            Some(bias),
            0.75,
            0.0,
        );
        for tile in tiles(d) {
            let c = poisoned_f32(d, batch * m * n);
            run(d, &GemmBf16 { c, ..g }, None, tile).unwrap();
            results.push((layout, tile, download::<f32>(d, c, batch * m * n)));
        }
    }
    // Each family against its first result (NN); on a GPU the two instructions may round a
    // k-step differently, so the families meet only on the interpreter.
    let interpreter = d.compute_capability().unwrap().is_none();
    let first = |wgmma: bool| {
        results
            .iter()
            .find(|(_, t, _)| matches!(t, Tile::Wgmma(_)) == (wgmma && !interpreter))
            .expect("a first result")
    };
    for (layout, tile, got) in &results {
        let (l0, t0, want) = first(matches!(tile, Tile::Wgmma(_)));
        assert!(want.iter().all(|v| v.is_finite()));
        assert_bits(
            &format!(
                "gemm_bf16 {layout:?} {tile:?} against {l0:?} {t0:?} on {}",
                d.name()
            ),
            got,
            want,
        );
    }
}

/// `gemm_bf16_split_k` in all four layouts, `[150, 288] x [288, 141]` in three k-ranges of
/// 96 (three k-tiles each) on the 128 tile, with alpha 1.25, beta 1 over a C0 and a bias:
/// within the f64 bound, and bit for bit the in-order f32 sum of the three ranges' products
/// (each its own `gemm_bf16_on` launch on offset operands) followed by the epilogue's
/// rounded steps (`alpha * acc`, `fma(beta, C0, .)`, `+ bias`). One split is the plain
/// product's bits.
fn bf16_split_k(d: &dyn Driver) {
    // The ranges' products on the mma.sync 128 tile, and on the warpgroup 128 tile where the
    // device runs it.
    for tile in tiles(d) {
        if matches!(
            tile,
            Tile::Mma(Bf16Tile::Large) | Tile::Wgmma(WgmmaTile::N128)
        ) {
            bf16_split_k_on(d, tile);
        }
    }
}

fn bf16_split_k_on(d: &dyn Driver, tile: Tile) {
    let mut rng = Rng::new(61);
    let (m, n, splits) = (150usize, 141usize, 3usize);
    let k = 96 * splits;
    let (alpha, beta) = (1.25f32, 1.0f32);
    for layout in [
        Bf16Layout::NN,
        Bf16Layout::NT,
        Bf16Layout::TN,
        Bf16Layout::TT,
    ] {
        let (a_k, b_k) = k_major(layout);
        let (a, b) = operands_for(&mut rng, layout, (m, n, k), 1);
        let bias = normal(&mut rng, n);
        let c0 = normal(&mut rng, m * n);
        let c = upload::<f32>(d, &c0);
        let g = bf16_product(
            d,
            layout,
            (m, n, k, 1),
            c,
            (&a, &b),
            Some(upload::<f32>(d, &bias)),
            alpha,
            beta,
        );
        split(d, &g, tile, splits).unwrap();
        let got = download::<f32>(d, c, m * n);
        let what = format!("gemm_bf16_split_k {layout:?} {tile:?} on {}", d.name());
        let av =
            |i: usize, l: usize| a.values[if a_k { i * a.ld + l } else { l * a.ld + i }] as f64;
        let bv =
            |l: usize, j: usize| b.values[if b_k { j * b.ld + l } else { l * b.ld + j }] as f64;
        let (want, bound) = reference(
            (m, n, k),
            av,
            bv,
            |i, j| c0[i * n + j] as f64,
            Some(&bias),
            alpha as f64,
            beta as f64,
        );
        assert_within(&what, &got, &want, &bound);

        // The same sum by hand: each range's product, then the rounded epilogue.
        let ks = k / splits;
        let mut acc = vec![0f32; m * n];
        for s in 0..splits {
            let part = poisoned_f32(d, m * n);
            let (a_step, b_step) = (if a_k { 1 } else { a.ld }, if b_k { 1 } else { b.ld });
            let range = GemmBf16 {
                k: ks,
                c: part,
                a: g.a.offset((2 * s * ks * a_step) as u64),
                b: g.b.offset((2 * s * ks * b_step) as u64),
                bias: None,
                alpha: 1.0,
                beta: 0.0,
                ..g
            };
            run(d, &range, None, tile).unwrap();
            let p = download::<f32>(d, part, m * n);
            for (x, y) in acc.iter_mut().zip(&p) {
                *x = if s == 0 { *y } else { *x + *y };
            }
        }
        let by_hand: Vec<f32> = (0..m * n)
            .map(|e| beta.mul_add(c0[e], alpha * acc[e]) + bias[e % n])
            .collect();
        assert_bits(&format!("{what}: against the ranges"), &got, &by_hand);

        // One split: the plain product.
        let (c1, c2) = (upload::<f32>(d, &c0), upload::<f32>(d, &c0));
        split(d, &GemmBf16 { c: c1, ..g }, tile, 1).unwrap();
        run(d, &GemmBf16 { c: c2, ..g }, None, tile).unwrap();
        assert_bits(
            &format!("{what}: one split"),
            &download::<f32>(d, c1, m * n),
            &download::<f32>(d, c2, m * n),
        );
    }
}

/// The product `g` split over `splits` k-ranges on `tile`.
fn split(d: &dyn Driver, g: &GemmBf16, tile: Tile, splits: usize) -> tarflow::Result<()> {
    match tile {
        Tile::Mma(t) => gemm_bf16_split_k(d, g, t, splits),
        Tile::Wgmma(t) => gemm_bf16_split_k_wgmma(d, g, t, splits),
    }
}

#[test]
fn gemm_bf16_split_k_sums_its_ranges_in_order() {
    on_each_device(bf16_split_k);
}

#[test]
fn gemm_bf16_layouts_give_the_same_bits() {
    on_each_device(bf16_layouts_agree);
}

/// `gemm_bf16_{nn,nt}_{gelu,residual,gelu_grad}` and their `_128` twins on two batches of
/// `[150, 115] x [115, 141]` (small tile) and `[300, 115] x [115, 270]` (large) with a bias
/// (ragged tiles, three k-tiles and a ragged one), `C` and `aux` rows padded by 3: bit for bit the plain product in the same layout followed by the elementwise kernel
/// each stage stands for (`strided_copy_f32` + `unary_f32` Gelu, `binary_f32` Add,
/// `binary_f32` GeluBackward), as the backend ran them before, and no padding written. Then
/// what the wrapper refuses: `A` stored transposed, `beta != 0`, and overlapping `aux` rows.
fn bf16_epilogues(d: &dyn Driver) {
    // The warpgroup epilogue stages are built for the 256 tile only.
    for tile in tiles(d) {
        if tile != Tile::Wgmma(WgmmaTile::N128) {
            bf16_epilogues_on(d, tile);
        }
    }
}

fn bf16_epilogues_on(d: &dyn Driver, tile: Tile) {
    let mut rng = Rng::new(57);
    let (m, n) = ragged(tile);
    let (k, batch) = (ragged_k(tile), 2usize);
    let ld = n + 3;
    let a = bf16_operand(&mut rng, batch, m, k, k.div_ceil(8) * 8);
    let (b_n, b_t) = bf16_both_ways(&mut rng, batch, k, n);
    let bias = upload::<f32>(d, &normal(&mut rng, n));
    // Residuals, and pre-activations over the GELU's whole shape: both erf branches and the
    // saturated tails.
    let mut aux_values = vec![f32::NAN; batch * m * ld];
    for z in 0..batch {
        for i in 0..m {
            for j in 0..n {
                aux_values[(z * m + i) * ld + j] = 3.0 * rng.normal() as f32;
            }
        }
    }
    let da = upload::<u16>(d, &a.bits);
    let (db_n, db_t) = (upload::<u16>(d, &b_n.bits), upload::<u16>(d, &b_t.bits));
    let product = |layout, c| {
        let b = if layout == Bf16Layout::NT { &b_t } else { &b_n };
        GemmBf16 {
            layout,
            m,
            n,
            k,
            batch,
            c,
            ldc: ld,
            c_bs: m * ld,
            a: da,
            lda: a.ld,
            a_bs: a.batch_stride,
            b: if layout == Bf16Layout::NT { db_t } else { db_n },
            ldb: b.ld,
            b_bs: b.batch_stride,
            bias: Some(bias),
            alpha: 0.75,
            beta: 0.0,
        }
    };
    let total = batch * m * ld;
    let padded = |v: &[f32]| v.chunks(ld).all(|row| row[n..].iter().all(|x| x.is_nan()));
    for layout in [Bf16Layout::NN, Bf16Layout::NT] {
        let plain = poisoned_f32(d, total);
        run(d, &product(layout, plain), None, tile).unwrap();
        // Padding stays NaN through the elementwise kernels too, so whole buffers compare.
        for name in ["gelu", "residual", "gelu_grad"] {
            let aux = upload::<f32>(d, &aux_values);
            let aux_rs = ld;
            let epi = match name {
                "gelu" => GemmEpilogue::Gelu { aux, aux_rs },
                "residual" => GemmEpilogue::Residual { aux, aux_rs },
                _ => GemmEpilogue::GeluGrad { aux, aux_rs },
            };
            let fused = poisoned_f32(d, total);
            run(d, &product(layout, fused), Some(epi), tile).unwrap();
            let got = download::<f32>(d, fused, total);
            let what = format!("{tile:?} {layout:?} {name} on {}", d.name());
            assert!(padded(&got), "{what}: C's padding written");

            let want = poisoned_f32(d, total);
            let all = [total];
            let aux0 = upload::<f32>(d, &aux_values);
            match name {
                "gelu" => unary_f32(d, UnaryOp::Gelu, want, plain, &[1], &all).unwrap(),
                "residual" => {
                    binary_f32(d, BinaryOp::Add, want, plain, &[1], aux0, &[1], &all).unwrap()
                }
                _ => binary_f32(
                    d,
                    BinaryOp::GeluBackward,
                    want,
                    plain,
                    &[1],
                    aux0,
                    &[1],
                    &all,
                )
                .unwrap(),
            }
            assert_bits(&what, &got, &download::<f32>(d, want, total));
            let aux_after = download::<f32>(d, aux, total);
            if name == "gelu" {
                // The pre-activation is the plain product, padding untouched.
                let pre = poisoned_f32(d, total);
                strided_copy_f32(d, pre, &[1], plain, &[1], &all).unwrap();
                assert_bits(
                    &format!("{what}: aux"),
                    &aux_after,
                    &download::<f32>(d, pre, total),
                );
                assert!(padded(&aux_after), "{what}: aux padding written");
            } else {
                assert_bits(
                    &format!("{what}: aux is read only"),
                    &aux_after,
                    &aux_values,
                );
            }
        }
    }

    let aux = poisoned_f32(d, total);
    let epi = GemmEpilogue::Gelu { aux, aux_rs: ld };
    let tn = GemmBf16 {
        layout: Bf16Layout::TN,
        lda: 152,
        ..product(Bf16Layout::NN, aux)
    };
    let accumulate = GemmBf16 {
        beta: 1.0,
        ..product(Bf16Layout::NN, aux)
    };
    let c = poisoned_f32(d, total);
    let overlapping = GemmEpilogue::Residual { aux, aux_rs: n - 1 };
    for (g, e, why) in [
        (tn, epi, "layout NN or NT"),
        (accumulate, epi, "beta 0"),
        (product(Bf16Layout::NN, c), overlapping, "would overlap"),
    ] {
        let err = match tile {
            Tile::Mma(_) => gemm_bf16_epilogue(d, &g, e),
            Tile::Wgmma(_) => run(d, &g, Some(e), tile),
        }
        .unwrap_err()
        .to_string();
        assert!(err.contains(why), "{err}");
    }
}

#[test]
fn gemm_bf16_epilogues_match_the_product_and_its_elementwise_kernels() {
    on_each_device(bf16_epilogues);
}

#[test]
fn gemm_f32_gelu_grad_epilogue_matches_cpu_and_the_two_launches() {
    on_each_device(f32_gelu_grad_epilogue);
}

#[test]
fn gemm_bf16_edges() {
    on_each_device(bf16_edges);
}

#[test]
fn gemm_f32_matches_cpu_linear() {
    on_each_device(f32_linear);
}

#[test]
fn gemm_f32_transposed_batched_accumulating() {
    on_each_device(f32_transposed_accumulate);
}

#[test]
fn gemm_bf16_all_layouts_match_f64() {
    on_each_device(bf16_layouts);
}
