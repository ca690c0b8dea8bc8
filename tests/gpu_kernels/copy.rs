//! `ptx/copy.cu`: strided copies (f32, bf16 both ways) and fills against the CPU's views,
//! concat and bf16 conversions.

use tarflow::gpu::kernels::{
    fill_f32, strided_copy_bf16_f32, strided_copy_f32, strided_copy_f32_bf16,
};
use tarflow::gpu::Driver;
use tarflow::{Rng, Tensor};

use crate::harness::*;

/// A permuted, flipped view copied contiguous gives the CPU's `permute(..).flip(..)` bits;
/// two parts copied into sub-views of one buffer give `concat`'s.
fn strided_f32(d: &dyn Driver) {
    let mut rng = Rng::new(11);
    let (a0, a1, a2) = (3usize, 37usize, 29usize);
    let xs = normal(&mut rng, a0 * a1 * a2);
    let x = Tensor::from_vec(xs.clone(), &[a0, a1, a2]).unwrap();
    let want = x.permute(&[2, 0, 1]).unwrap().flip(1).unwrap().to_vec();
    let src = upload::<f32>(d, &xs);
    // permute [2, 0, 1] then flip axis 1 (the old axis 0): start at the last a0 slab.
    let shape = [a2, a0, a1];
    let src_strides = [1isize, -((a1 * a2) as isize), a2 as isize];
    let start = src.offset(((a0 - 1) * a1 * a2 * 4) as u64);
    let dst = poisoned_f32(d, want.len());
    strided_copy_f32(
        d,
        dst,
        &contiguous_strides(&shape),
        start,
        &src_strides,
        &shape,
    )
    .unwrap();
    assert_bits(
        "permuted, flipped copy",
        &download::<f32>(d, dst, want.len()),
        &want,
    );

    let ys = normal(&mut rng, a0 * 5 * a2);
    let y = Tensor::from_vec(ys.clone(), &[a0, 5, a2]).unwrap();
    let want = Tensor::concat(&[&x, &y], 1).unwrap().to_vec();
    let out = poisoned_f32(d, want.len());
    let out_strides = [((a1 + 5) * a2) as isize, a2 as isize, 1];
    let ysrc = upload::<f32>(d, &ys);
    strided_copy_f32(
        d,
        out,
        &out_strides,
        src,
        &contiguous_strides(&[a0, a1, a2]),
        &[a0, a1, a2],
    )
    .unwrap();
    let tail = out.offset((a1 * a2 * 4) as u64);
    strided_copy_f32(
        d,
        tail,
        &out_strides,
        ysrc,
        &contiguous_strides(&[a0, 5, a2]),
        &[a0, 5, a2],
    )
    .unwrap();
    assert_bits(
        "concat by sub-view copies",
        &download::<f32>(d, out, want.len()),
        &want,
    );

    // Rank 8, the kernels' limit: an 8-d tensor with its axes reversed.
    let shape8 = [2usize, 3, 1, 2, 3, 2, 1, 3];
    let n8: usize = shape8.iter().product();
    let zs = normal(&mut rng, n8);
    let z = Tensor::from_vec(zs.clone(), &shape8).unwrap();
    let perm = [7usize, 6, 5, 4, 3, 2, 1, 0];
    let want = z.permute(&perm).unwrap().to_vec();
    let zst = contiguous_strides(&shape8);
    let src_strides: Vec<isize> = perm.iter().map(|&p| zst[p]).collect();
    let out_shape: Vec<usize> = perm.iter().map(|&p| shape8[p]).collect();
    let out = poisoned_f32(d, n8);
    let zsrc = upload::<f32>(d, &zs);
    strided_copy_f32(
        d,
        out,
        &contiguous_strides(&out_shape),
        zsrc,
        &src_strides,
        &out_shape,
    )
    .unwrap();
    assert_bits("rank-8 permuted copy", &download::<f32>(d, out, n8), &want);

    // A negative destination stride: the copy lands reversed, as `flip` reads it.
    let out = poisoned_f32(d, n8);
    let last = out.offset(4 * (n8 as u64 - 1));
    strided_copy_f32(d, last, &[-1], zsrc, &[1], &[n8]).unwrap();
    let want = Tensor::from_vec(zs.clone(), &[n8])
        .unwrap()
        .flip(0)
        .unwrap()
        .to_vec();
    assert_bits(
        "copy into a reversed destination",
        &download::<f32>(d, out, n8),
        &want,
    );

    // A broadcast source (stride 0), one element, and nothing at all.
    let b = upload::<f32>(d, &[1.5, -2.0]);
    let out = poisoned_f32(d, 6);
    strided_copy_f32(d, out, &[2, 1], b, &[0, 1], &[3, 2]).unwrap();
    assert_bits(
        "broadcast copy",
        &download::<f32>(d, out, 6),
        &[1.5, -2.0, 1.5, -2.0, 1.5, -2.0],
    );
    let out = poisoned_f32(d, 2);
    strided_copy_f32(d, out, &[1], b, &[1], &[1]).unwrap();
    let got = download::<f32>(d, out, 2);
    assert_eq!(got[0].to_bits(), 1.5f32.to_bits());
    assert!(
        got[1].is_nan(),
        "a one-element copy wrote past its end: {}",
        got[1]
    );
    strided_copy_f32(d, out, &[1, 1], b, &[1, 1], &[0, 3]).unwrap();
    assert!(
        download::<f32>(d, out, 2)[1].is_nan(),
        "an empty copy wrote"
    );
}

/// f32 -> bf16 rounds to nearest even as the CPU's `to_bf16_vec` (ties, subnormals,
/// overflow to infinity, NaN), and bf16 -> f32 is exact, through transposed views.
fn bf16_conversions(d: &dyn Driver) {
    let mut rng = Rng::new(12);
    let (rows, cols) = (23usize, 41usize);
    let mut xs = normal(&mut rng, rows * cols);
    let specials = [
        0.0f32,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MAX,
        -f32::MAX,
        f32::MIN_POSITIVE,
        1.0e-40,
        -3.0e-42,
        f32::from_bits(0x3f80_8000), // a tie, rounds down to even
        f32::from_bits(0x3f81_8000), // a tie, rounds up to even
        f32::from_bits(0x3f80_8001),
        f32::from_bits(0x7f7f_ffff),
    ];
    xs[..specials.len()].copy_from_slice(&specials);
    let x = Tensor::from_vec(xs.clone(), &[rows, cols]).unwrap();
    // The CPU's conversion of the transposed matrix, made contiguous.
    let xt = x.t().unwrap();
    let want: Vec<u16> = xt.to_bf16_vec().iter().map(|b| b.to_bits()).collect();
    let src = upload::<f32>(d, &xs);
    let dst = upload::<u16>(d, &vec![0xffff; rows * cols]);
    let shape = [cols, rows];
    strided_copy_f32_bf16(
        d,
        dst,
        &[rows as isize, 1],
        src,
        &[1, cols as isize],
        &shape,
    )
    .unwrap();
    let got = download::<u16>(d, dst, rows * cols);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "f32 -> bf16 element {i} (input {})", xt.to_vec()[i]);
    }
    // NaN stays NaN (its payload is not specified).
    let nan_src = upload::<f32>(d, &[f32::NAN]);
    let nan_dst = upload::<u16>(d, &[0]);
    strided_copy_f32_bf16(d, nan_dst, &[1], nan_src, &[1], &[1]).unwrap();
    let h = download::<u16>(d, nan_dst, 1)[0];
    assert!(
        f32::from_bits((h as u32) << 16).is_nan(),
        "bf16 of NaN is {h:#06x}"
    );

    // Back to f32, transposing again: the CPU's exact widening of the same bf16 values.
    let back = poisoned_f32(d, rows * cols);
    strided_copy_bf16_f32(
        d,
        back,
        &[cols as isize, 1],
        dst,
        &[1, rows as isize],
        &[rows, cols],
    )
    .unwrap();
    let bf: Vec<half::bf16> = want.iter().map(|&b| half::bf16::from_bits(b)).collect();
    let want_back = Tensor::<f32>::from_bf16(&bf, &[cols, rows])
        .unwrap()
        .t()
        .unwrap()
        .to_vec();
    assert_bits(
        "bf16 -> f32",
        &download::<f32>(d, back, rows * cols),
        &want_back,
    );
}

/// `fill_f32` writes exactly `n` values, for n = 0, 1 and several CTAs' worth.
fn fill(d: &dyn Driver) {
    for n in [0usize, 1, 3 * 256 + 17] {
        let p = poisoned_f32(d, n + 1);
        fill_f32(d, p, n, -0.75).unwrap();
        let got = download::<f32>(d, p, n + 1);
        assert_bits(&format!("fill of {n}"), &got[..n], &vec![-0.75; n]);
        assert!(got[n].is_nan(), "fill of {n} wrote past its end");
    }
}

#[test]
fn strided_copy_f32_matches_cpu_views() {
    on_each_device(strided_f32);
}

#[test]
fn bf16_copies_round_like_the_cpu() {
    on_each_device(bf16_conversions);
}

#[test]
fn fill_f32_writes_exactly_n() {
    on_each_device(fill);
}
