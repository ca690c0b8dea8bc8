//! Property tests: the engine against the naive reference model in
//! `tarflow::tensor::reference` on random shapes, random broadcast patterns and random chains
//! of view ops (so strides are zero, negative, offset and non-mergeable).

use proptest::prelude::*;
use tarflow::tensor::reference::{decode_program, run_view_program, Dense, ViewOp};
use tarflow::Tensor;

type T = Tensor<f64>;
type EngineOp = fn(&T, &T) -> tarflow::Result<T>;
type RefOp = fn(f64, f64) -> f64;

/// Relative closeness for results whose summation order may differ from the reference.
fn close(a: &Dense, b: &Dense, tol: f64) -> bool {
    a.shape == b.shape
        && a.data
            .iter()
            .zip(&b.data)
            .all(|(x, y)| (x == y) || (x - y).abs() <= tol * (1.0 + x.abs().max(y.abs())))
}

/// A shape of rank 0..=4 with sizes 1..=4.
fn shape() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..=4, 0..=4)
}

/// An output shape and two operand shapes that broadcast to it: each operand keeps a suffix
/// of the axes and sets some of them to 1.
fn broadcast_pair() -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
    shape().prop_flat_map(|out| {
        let r = out.len();
        let operand = {
            let out = out.clone();
            (0..=r, prop::collection::vec(any::<bool>(), r)).prop_map(move |(keep, ones)| {
                out[r - keep..]
                    .iter()
                    .zip(&ones[r - keep..])
                    .map(|(&d, &one)| if one { 1 } else { d })
                    .collect::<Vec<usize>>()
            })
        };
        (operand.clone(), operand)
    })
}

/// How an operand of a given shape is materialised: as a plain contiguous tensor, as the
/// transpose of a tensor stored the other way round, or as a flipped view.
#[derive(Clone, Copy, Debug)]
enum Storage {
    Plain,
    Transposed,
    Flipped,
}

fn storage() -> impl Strategy<Value = Storage> {
    prop_oneof![
        Just(Storage::Plain),
        Just(Storage::Transposed),
        Just(Storage::Flipped)
    ]
}

/// An engine tensor with the values of `d`, laid out in storage as `how` says.
fn materialise(d: &Dense, how: Storage) -> T {
    let r = d.shape.len();
    match how {
        Storage::Transposed if r >= 2 => {
            let stored = d.apply(&ViewOp::Transpose(r - 2, r - 1)).unwrap();
            let t = stored.to_tensor::<f64>().t().unwrap();
            assert!(!t.is_contiguous() || d.shape[r - 2] <= 1 || d.shape[r - 1] <= 1);
            t
        }
        Storage::Flipped if r >= 1 => {
            let stored = d.apply(&ViewOp::Flip(0)).unwrap();
            stored.to_tensor::<f64>().flip(0).unwrap()
        }
        _ => d.to_tensor(),
    }
}

fn values(shape: &[usize], seed: u64, lo: f64, hi: f64) -> Dense {
    let mut rng = tarflow::Rng::new(seed);
    Dense::from_fn(shape, |_| lo + (hi - lo) * rng.uniform())
}

// 256 cases each by default; set PROPTEST_CASES for a longer run.
proptest! {
    #[test]
    fn binary_broadcasting_matches_reference(
        (sa, sb) in broadcast_pair(),
        ha in storage(),
        hb in storage(),
        swap in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let (sa, sb) = if swap { (sb, sa) } else { (sa, sb) };
        let da = values(&sa, seed, -2.0, 2.0);
        let db = values(&sb, seed ^ 1, 0.5, 2.0);
        let (a, b) = (materialise(&da, ha), materialise(&db, hb));
        let cases: [(&str, EngineOp, RefOp); 5] = [
            ("add", |a, b| a.add(b), |x, y| x + y),
            ("sub", |a, b| a.sub(b), |x, y| x - y),
            ("mul", |a, b| a.mul(b), |x, y| x * y),
            ("div", |a, b| a.div(b), |x, y| x / y),
            ("maximum", |a, b| a.maximum(b), |x, y| if x >= y { x } else { y }),
        ];
        for (name, op, f) in cases {
            let got = Dense::of_tensor(&op(&a, &b).unwrap());
            let want = da.zip(&db, f).unwrap();
            prop_assert_eq!(&got, &want, "{} {:?} {:?}", name, sa, sb);
        }
    }

    #[test]
    fn incompatible_shapes_are_rejected(a in shape(), b in shape()) {
        let ok = Dense::iota(&a).zip(&Dense::iota(&b), |x, _| x).is_some();
        prop_assert_eq!(T::zeros(&a).add(&T::zeros(&b)).is_ok(), ok);
    }

    #[test]
    fn view_programs_match_reference(
        start in prop::collection::vec(0usize..=4, 0..=4),
        program in prop::collection::vec(any::<u8>(), 0..48),
    ) {
        let d = Dense::iota(&start);
        let t: T = d.to_tensor();
        let ops = decode_program(&mut program.into_iter(), &start, 64, 4096);
        let (view, want) = run_view_program(&t, &d, &ops).map_err(TestCaseError::fail)?;
        // Kernels read through the final layout: unary, binary (with itself, so both operands
        // share storage) and a full reduction.
        let neg = Dense::of_tensor(&view.neg().unwrap());
        prop_assert_eq!(neg.data, want.data.iter().map(|v| -v).collect::<Vec<_>>());
        let twice = Dense::of_tensor(&view.add(&view).unwrap());
        prop_assert_eq!(twice.data, want.data.iter().map(|v| 2.0 * v).collect::<Vec<_>>());
        // GELU maps whole runs (gathering strided inputs first): same values, same order.
        let gelu = Dense::of_tensor(&view.gelu().unwrap());
        let want_gelu: Vec<f64> = want.data.iter().map(|&v| tarflow::ops::gelu_scalar(v)).collect();
        prop_assert_eq!(gelu.data, want_gelu);
        let s = view.sum_all().unwrap().item().unwrap();
        prop_assert_eq!(s, want.data.iter().sum::<f64>());
    }

    #[test]
    fn reductions_match_reference(
        s in shape(),
        axis_bits in any::<u8>(),
        keepdim in any::<bool>(),
        perm_seed in any::<u8>(),
        flip in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let r = s.len();
        let d0 = values(&s, seed, -3.0, 3.0);
        // Read through a rotated and optionally flipped view.
        let mut p: Vec<usize> = (0..r).collect();
        if r > 0 {
            p.rotate_left(perm_seed as usize % r);
        }
        let mut ops = vec![ViewOp::Permute(p)];
        if flip && r > 0 {
            ops.push(ViewOp::Flip(perm_seed as usize % r));
        }
        let (t, d) = run_view_program(&d0.to_tensor::<f64>(), &d0, &ops)
            .map_err(TestCaseError::fail)?;
        let axes: Vec<usize> = (0..r).filter(|i| axis_bits >> i & 1 == 1).collect();
        let iaxes: Vec<isize> = axes.iter().map(|&a| a as isize).collect();

        let want = d.reduce(&axes, keepdim, false);
        let got = Dense::of_tensor(&t.sum(&iaxes, keepdim).unwrap());
        prop_assert!(close(&got, &want, 1e-13), "sum {:?} {:?}: {:?} vs {:?}", s, axes, got, want);

        let count: usize = axes.iter().map(|&a| d.shape[a]).product();
        let mean = Dense::of_tensor(&t.mean(&iaxes, keepdim).unwrap());
        let want_mean = Dense {
            shape: want.shape.clone(),
            data: want.data.iter().map(|v| v / count as f64).collect(),
        };
        prop_assert!(close(&mean, &want_mean, 1e-13));

        let got = Dense::of_tensor(&t.max(&iaxes, keepdim).unwrap());
        prop_assert_eq!(got, d.reduce(&axes, keepdim, true));
    }

    #[test]
    fn large_reductions_match_reference(
        rows in 1usize..300,
        cols in 1usize..300,
        transpose in any::<bool>(),
        axis in 0usize..2,
    ) {
        // Big enough to cross the parallel thresholds of both reduction strategies.
        let d = values(&[rows, cols], (rows * 1000 + cols) as u64, -1.0, 1.0);
        let mut t: T = d.to_tensor();
        let mut d = d;
        if transpose {
            t = t.t().unwrap();
            d = d.apply(&ViewOp::Transpose(0, 1)).unwrap();
        }
        let got = Dense::of_tensor(&t.sum(&[axis as isize], false).unwrap());
        prop_assert!(close(&got, &d.reduce(&[axis], false, false), 1e-12));
        let got = Dense::of_tensor(&t.max(&[axis as isize], true).unwrap());
        prop_assert_eq!(got, d.reduce(&[axis], true, true));
    }

    #[test]
    fn large_full_reductions_match_reference(
        rows in 150usize..400,
        cols in 150usize..400,
        transpose in any::<bool>(),
        flip in any::<bool>(),
    ) {
        // One output over more than 64Ki elements read through a transposed/flipped layout.
        let d = values(&[rows, cols], (rows * 7919 + cols) as u64, -1.0, 1.0);
        let mut ops = Vec::new();
        if transpose {
            ops.push(ViewOp::Transpose(0, 1));
        }
        if flip {
            ops.push(ViewOp::Flip(1));
        }
        let (t, d) = run_view_program(&d.to_tensor::<f64>(), &d, &ops)
            .map_err(TestCaseError::fail)?;
        let got = Dense::of_tensor(&t.sum(&[0, 1], true).unwrap());
        let want = d.reduce(&[0, 1], true, false);
        // Two summation orders of n values differ by at most 2 (n - 1) eps sum |v| (the
        // engine adds slices in parallel, the reference one value at a time). A tolerance
        // relative to the sum itself would fail whenever the values cancel.
        let n = d.data.len() as f64;
        let bound = 2.0 * n * f64::EPSILON * d.data.iter().map(|v| v.abs()).sum::<f64>();
        prop_assert!(
            got.shape == want.shape && (got.data[0] - want.data[0]).abs() <= bound,
            "sum {} against {} (bound {bound:e})", got.data[0], want.data[0]
        );
        prop_assert_eq!(t.max(&[1, 0], false).unwrap().item().unwrap(), d.reduce(&[0, 1], false, true).data[0]);
    }

    #[test]
    fn matmul_matches_triple_loop(
        (ba, bb) in broadcast_pair().prop_filter("small batch", |(a, b)| a.len() <= 2 && b.len() <= 2),
        m in 1usize..6,
        k in 0usize..6,
        n in 1usize..6,
        ha in storage(),
        hb in storage(),
        narrow_a in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let mut sa = ba.clone();
        sa.extend([m, k]);
        let mut sb = bb.clone();
        sb.extend([k, n]);
        let da = values(&sa, seed, -1.0, 1.0);
        let db = values(&sb, seed ^ 7, -1.0, 1.0);
        let mut a = materialise(&da, ha);
        if narrow_a {
            // Embed A in a wider tensor and narrow back: a row stride larger than k.
            let wide = T::concat(&[&a, &T::ones(&sa)], -1).unwrap();
            a = wide.narrow(-1, 0, k).unwrap();
        }
        let b = materialise(&db, hb);
        let got = Dense::of_tensor(&a.matmul(&b).unwrap());
        let want = da.matmul(&db).unwrap();
        prop_assert!(close(&got, &want, 1e-12), "{:?} x {:?}", sa, sb);
    }

    #[test]
    fn linear_matches_reference(
        lead in prop::collection::vec(1usize..4, 0..3),
        fin in 1usize..6,
        fout in 1usize..6,
        bias in any::<bool>(),
        wt in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let mut sx = lead.clone();
        sx.push(fin);
        let dx = values(&sx, seed, -1.0, 1.0);
        let dw = values(&[fout, fin], seed ^ 3, -1.0, 1.0);
        let db = values(&[fout], seed ^ 5, -1.0, 1.0);
        let w = materialise(&dw, if wt { Storage::Transposed } else { Storage::Plain });
        let b: T = db.to_tensor();
        let x: T = dx.to_tensor();
        let got = Dense::of_tensor(&x.linear(&w, bias.then_some(&b)).unwrap());
        let wt_ref = dw.apply(&ViewOp::Transpose(0, 1)).unwrap();
        let x2 = dx.apply(&ViewOp::Reshape(vec![sx[..sx.len() - 1].iter().product(), fin])).unwrap();
        let mut want = x2.matmul(&wt_ref).unwrap();
        if bias {
            want = want.zip(&db, |a, b| a + b).unwrap();
        }
        let mut out_shape = sx.clone();
        *out_shape.last_mut().unwrap() = fout;
        let want = want.apply(&ViewOp::Reshape(out_shape)).unwrap();
        prop_assert!(close(&got, &want, 1e-12));
    }
}

#[test]
fn empty_views_after_flip_and_narrow() {
    // Narrowing a flipped axis to length 0 at its end moves the offset one step before the
    // start of storage; reading must still work, before and after flipping back.
    let d = Dense::iota(&[3, 2]);
    let t: T = d.to_tensor();
    for ops in [
        vec![
            ViewOp::Flip(0),
            ViewOp::Narrow {
                axis: 0,
                start: 3,
                len: 0,
            },
            ViewOp::Flip(0),
        ],
        vec![
            ViewOp::Flip(1),
            ViewOp::Narrow {
                axis: 1,
                start: 2,
                len: 0,
            },
            ViewOp::Flip(1),
            ViewOp::Reshape(vec![0, 3]),
            ViewOp::Contiguous,
        ],
        vec![
            ViewOp::Narrow {
                axis: 0,
                start: 3,
                len: 0,
            },
            ViewOp::Transpose(0, 1),
        ],
    ] {
        let (v, _) = run_view_program(&t, &d, &ops).unwrap();
        assert_eq!(v.numel(), 0);
        assert!(v.to_vec().is_empty());
        assert_eq!(v.sum_all().unwrap().item().unwrap(), 0.0);
        assert_eq!(v.exp().unwrap().numel(), 0);
        assert_eq!(v.add(&v).unwrap().numel(), 0);
    }
}
