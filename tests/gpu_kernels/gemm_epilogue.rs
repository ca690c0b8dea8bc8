//! `ptx/gemm.cu`'s epilogue variants `gemm_f32_gelu` (pre-activation and GELU written) and
//! `gemm_f32_residual` (residual added), against the CPU's `linear`, `gelu` and `add`.

use tarflow::gpu::kernels::{gemm_f32_epilogue, GemmEpilogue, GemmF32};
use tarflow::gpu::Driver;
use tarflow::{Rng, Tensor};

use crate::harness::*;

/// 70 x 130 outputs: 2 x 3 tiles of 64, both edges ragged; k = 40 is three k-tiles of 16,
/// the last ragged. C and aux rows are padded to 133 to catch a wrong row stride.
const M: usize = 70;
const N: usize = 130;
const K: usize = 40;
const LD: usize = 133;

fn epilogues(d: &dyn Driver) {
    let mut rng = Rng::new(81);
    let xs = normal(&mut rng, M * K);
    let ws: Vec<f32> = normal(&mut rng, N * K).iter().map(|v| 0.3 * v).collect();
    let bs = normal(&mut rng, N);
    let rs = normal(&mut rng, M * N);
    let x = Tensor::from_vec(xs.clone(), &[M, K]).unwrap();
    let w = Tensor::from_vec(ws.clone(), &[N, K]).unwrap();
    let b = Tensor::from_vec(bs.clone(), &[N]).unwrap();
    let pre = x.linear(&w, Some(&b)).unwrap();
    let (dx, dw, db) = (
        upload::<f32>(d, &xs),
        upload::<f32>(d, &ws),
        upload::<f32>(d, &bs),
    );
    // The residual, laid out with row stride LD.
    let mut r_pad = vec![f32::NAN; M * LD];
    for i in 0..M {
        r_pad[i * LD..i * LD + N].copy_from_slice(&rs[i * N..(i + 1) * N]);
    }
    let dr = upload::<f32>(d, &r_pad);
    let gemm = |c| GemmF32 {
        m: M,
        n: N,
        k: K,
        batch: 1,
        c,
        c_rs: LD,
        c_bs: 0,
        a: dx,
        a_rs: K,
        a_cs: 1,
        a_bs: 0,
        // B = W^T read in place.
        b: dw,
        b_rs: 1,
        b_cs: K,
        b_bs: 0,
        bias: Some(db),
        alpha: 1.0,
        beta: 0.0,
    };
    let rows = |v: &[f32]| -> Vec<f32> {
        (0..M)
            .flat_map(|i| v[i * LD..i * LD + N].to_vec())
            .collect()
    };
    let name = d.name();
    // GELU: the pre-activation into aux, the activation into C.
    let (c, aux) = (poisoned_f32(d, M * LD), poisoned_f32(d, M * LD));
    let epi = GemmEpilogue::Gelu { aux, aux_rs: LD };
    gemm_f32_epilogue(d, &gemm(c), epi).unwrap();
    let (got_c, got_aux) = (
        download::<f32>(d, c, M * LD),
        download::<f32>(d, aux, M * LD),
    );
    let want_pre = wide(&pre.to_vec());
    assert_close(
        &format!("gemm_f32_gelu pre on {name}"),
        &rows(&got_aux),
        &want_pre,
        1e-5,
        1e-5,
    );
    let act = wide(&pre.gelu().unwrap().to_vec());
    assert_close(
        &format!("gemm_f32_gelu act on {name}"),
        &rows(&got_c),
        &act,
        1e-5,
        1e-5,
    );
    // Padding columns are never written.
    for i in 0..M {
        assert!(
            got_c[i * LD + N..(i + 1) * LD].iter().all(|v| v.is_nan()),
            "row {i} padding"
        );
        assert!(
            got_aux[i * LD + N..(i + 1) * LD].iter().all(|v| v.is_nan()),
            "row {i} padding"
        );
    }
    // Residual: C = r + (x W^T + b).
    let c = poisoned_f32(d, M * LD);
    let epi = GemmEpilogue::Residual {
        aux: dr,
        aux_rs: LD,
    };
    gemm_f32_epilogue(d, &gemm(c), epi).unwrap();
    let r = Tensor::from_vec(rs, &[M, N]).unwrap();
    let want = wide(&r.add(&pre).unwrap().to_vec());
    let got = download::<f32>(d, c, M * LD);
    assert_close(
        &format!("gemm_f32_residual on {name}"),
        &rows(&got),
        &want,
        1e-5,
        1e-5,
    );
    // beta != 0 is refused: the epilogues follow an overwriting product.
    let acc = GemmF32 {
        beta: 1.0,
        ..gemm(c)
    };
    assert!(gemm_f32_epilogue(d, &acc, epi).is_err());
}

#[test]
fn gemm_epilogues_match_cpu() {
    on_each_device(epilogues);
}
