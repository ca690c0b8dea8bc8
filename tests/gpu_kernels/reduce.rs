//! `ptx/reduce.cu` through `reduce_axis_f32`: sum, mean and max over the middle axis of
//! `[outer, r, inner]`, on the warp-per-row path (`inner == 1`), the one-pass chunked path
//! and the two-pass chunked path (`r` over three chunks plus a ragged one), against the CPU's
//! `sum` / `mean` / `max`.

use tarflow::gpu::kernels::{reduce_axis_f32, reduce_scratch_len, ReduceOp};
use tarflow::gpu::Driver;
use tarflow::{Rng, Tensor};

use crate::harness::*;

/// What a reduction of `x` `[outer, r, inner]` is compared with.
enum Kind {
    Sum,
    Mean,
    Max,
}

/// Runs one reduction on the device (output poisoned, or preset to `base` when
/// accumulating) and checks it against the CPU op; sums within `1e-5` of the sum of
/// magnitudes, max exactly (NaN included).
fn check(
    d: &dyn Driver,
    kind: Kind,
    xs: &[f32],
    dims: (usize, usize, usize),
    base: Option<&[f32]>,
) {
    let (outer, r, inner) = dims;
    let x = Tensor::from_vec(xs.to_vec(), &[outer, r, inner]).unwrap();
    let (op, mean, cpu) = match kind {
        Kind::Sum => (ReduceOp::Sum, false, x.sum(&[1], false).unwrap()),
        Kind::Mean => (ReduceOp::Sum, true, x.mean(&[1], false).unwrap()),
        Kind::Max => (ReduceOp::Max, false, x.max(&[1], false).unwrap()),
    };
    let n_out = outer * inner;
    let mut want = wide(&cpu.to_vec());
    let out = match base {
        Some(b) => {
            for (w, &b) in want.iter_mut().zip(b) {
                *w += b as f64;
            }
            upload::<f32>(d, b)
        }
        None => poisoned_f32(d, n_out),
    };
    let scratch_len = reduce_scratch_len(outer, r, inner);
    let scratch = (scratch_len > 0).then(|| poisoned_f32(d, scratch_len));
    let din = upload::<f32>(d, xs);
    reduce_axis_f32(
        d,
        op,
        mean,
        out,
        din,
        scratch,
        outer,
        r,
        inner,
        base.is_some(),
    )
    .unwrap();
    let got = download::<f32>(d, out, n_out);
    let bound: Vec<f64> = (0..n_out)
        .map(|j| {
            let (o, i) = (j / inner, j % inner);
            let mag: f64 = (0..r)
                .map(|l| xs[(o * r + l) * inner + i].abs() as f64)
                .sum();
            match kind {
                Kind::Max => 0.0,
                Kind::Sum => 1e-5 * (mag + base.map_or(0.0, |b| b[j].abs() as f64)),
                Kind::Mean => 1e-5 * (mag / r as f64 + base.map_or(0.0, |b| b[j].abs() as f64)),
            }
        })
        .collect();
    let what = format!(
        "{op:?} (mean {mean}) over [{outer}, {r}, {inner}] on {}",
        d.name()
    );
    assert_within(&what, &got, &want, &bound);
}

fn all_kinds(d: &dyn Driver, xs: &[f32], dims: (usize, usize, usize)) {
    check(d, Kind::Sum, xs, dims, None);
    check(d, Kind::Mean, xs, dims, None);
    check(d, Kind::Max, xs, dims, None);
}

fn warp_per_row(d: &dyn Driver) {
    let mut rng = Rng::new(31);
    // 21 rows: three CTAs of 8 rows, the last ragged; rows of 70 = two full warps' sweeps
    // plus a ragged one.
    let dims = (21, 70, 1);
    let mut xs = normal(&mut rng, 21 * 70);
    all_kinds(d, &xs, dims);
    xs[5 * 70 + 33] = f32::NAN;
    xs[9 * 70 + 3] = f32::INFINITY;
    check(d, Kind::Max, &xs, dims, None);
    let base = normal(&mut rng, 21);
    check(d, Kind::Sum, &xs, dims, Some(&base));
    // One element; an empty axis (sum 0, max -inf, mean NaN as on the CPU).
    all_kinds(d, &[2.5], (1, 1, 1));
    all_kinds(d, &[], (3, 0, 1));
}

fn chunked(d: &dyn Driver) {
    let mut rng = Rng::new(32);
    // One pass: r within one chunk.
    let xs = normal(&mut rng, 3 * 40 * 9);
    all_kinds(d, &xs, (3, 40, 9));
    // Two passes: 805 = 3 chunks of 256 + 37.
    let dims = (2, 805, 5);
    let mut xs = normal(&mut rng, 2 * 805 * 5);
    all_kinds(d, &xs, dims);
    let base = normal(&mut rng, 10);
    check(d, Kind::Sum, &xs, dims, Some(&base));
    check(d, Kind::Mean, &xs, dims, Some(&base));
    xs[(805 + 700) * 5 + 2] = f32::NAN;
    check(d, Kind::Max, &xs, dims, None);
    // inner over one CTA's 256 columns, r over one chunk: two passes on a 2-wide grid.
    let xs = normal(&mut rng, 300 * 260);
    all_kinds(d, &xs, (1, 260, 300));
    all_kinds(d, &[], (2, 0, 3));
    all_kinds(d, &[1.0, -1.0, 4.0], (1, 1, 3));
}

#[test]
fn reduce_axis_warp_per_row_matches_cpu() {
    on_each_device(warp_per_row);
}

#[test]
fn reduce_axis_chunked_matches_cpu() {
    on_each_device(chunked);
}
