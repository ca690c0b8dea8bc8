//! Fuzzes view programs and broadcasting: the input bytes choose a small starting shape and a
//! chain of view ops (permute, transpose, narrow, flip, broadcast, unsqueeze/squeeze,
//! reshape, contiguous); the engine and the naive reference model in
//! `tarflow::tensor::reference` must agree on every step's values, on which steps fail, and
//! on broadcasting binary ops between the final view and other views of the same storage.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tarflow::tensor::reference::{decode_program, run_view_program, Dense, ViewOp};
use tarflow::Tensor;

fuzz_target!(|data: &[u8]| {
    let mut bytes = data.iter().copied();
    let rank = bytes.next().unwrap_or(0) as usize % 5;
    let shape: Vec<usize> = (0..rank)
        .map(|_| bytes.next().unwrap_or(1) as usize % 5)
        .collect();
    let d = Dense::iota(&shape);
    let t: Tensor<f64> = d.to_tensor();
    let ops = decode_program(&mut bytes, &shape, 32, 4096);
    let (view, want) = match run_view_program(&t, &d, &ops) {
        Ok(pair) => pair,
        Err(e) => panic!("{e}\nstart {shape:?}\nprogram {ops:?}"),
    };

    // Broadcasting against the start tensor and against a flipped copy of the final view:
    // both operands read the same storage through different layouts.
    let others: Vec<(Tensor<f64>, Dense)> = {
        let mut v = vec![(t.clone(), d.clone())];
        if !want.shape.is_empty() {
            let f = ViewOp::Flip(0);
            v.push((f.apply(&view).expect("axis 0 exists"), want.apply(&f).expect("axis 0")));
        }
        v
    };
    for (ot, od) in &others {
        let got = view.sub(ot);
        let exp = want.zip(od, |x, y| x - y);
        match (got, exp) {
            (Ok(g), Some(e)) => assert_eq!(Dense::of_tensor(&g), e, "sub {ops:?}"),
            (Err(_), None) => {}
            (g, e) => panic!(
                "broadcast disagreement {:?} vs {:?}: engine ok={} reference ok={}",
                want.shape,
                od.shape,
                g.is_ok(),
                e.is_some()
            ),
        }
    }
    // A reduction over the last axis reads the final layout once more.
    if !want.shape.is_empty() {
        let axis = want.shape.len() - 1;
        let got = Dense::of_tensor(&view.max(&[axis as isize], false).expect("axis exists"));
        assert_eq!(got, want.reduce(&[axis], false, true), "max {ops:?}");
    }
});
