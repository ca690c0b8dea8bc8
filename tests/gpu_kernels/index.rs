//! `ptx/index.cu`: `index_select_f32` against the CPU's `index_select`, and `index_add_f32`
//! (with duplicate and unused indices) against the CPU's autograd of it, accumulated onto
//! existing values.

use tarflow::gpu::kernels::{index_add_f32, index_select_f32, scatter_plan, u32_indices};
use tarflow::gpu::Driver;
use tarflow::{Rng, Tensor};

use crate::harness::*;

const OUTER: usize = 3;
const LEN: usize = 10;
const INNER: usize = 37;
/// Duplicates (9, 3), and rows never selected (2, 4, 5, 6, 8).
const IDX: [usize; 8] = [9, 0, 9, 3, 3, 1, 7, 3];

fn select(d: &dyn Driver) {
    let mut rng = Rng::new(61);
    let xs = normal(&mut rng, OUTER * LEN * INNER);
    let x = Tensor::from_vec(xs.clone(), &[OUTER, LEN, INNER]).unwrap();
    let want = x.index_select(1, &IDX).unwrap().to_vec();
    let idx = upload::<u32>(d, &u32_indices("test", &IDX, LEN).unwrap());
    let src = upload::<f32>(d, &xs);
    let n = OUTER * IDX.len() * INNER;
    let out = poisoned_f32(d, n + 1);
    index_select_f32(d, out, src, idx, OUTER, LEN, IDX.len(), INNER).unwrap();
    let got = download::<f32>(d, out, n + 1);
    assert_bits(&format!("index_select on {}", d.name()), &got[..n], &want);
    assert!(got[n].is_nan(), "index_select wrote past its output");
    // No indices: nothing launches.
    index_select_f32(d, out.offset(4 * n as u64), src, idx, OUTER, LEN, 0, INNER).unwrap();
    assert!(download::<f32>(d, out, n + 1)[n].is_nan());
    // One index into an axis of one.
    let one = upload::<f32>(d, &[5.5]);
    let zero = upload::<u32>(d, &[0]);
    let o1 = poisoned_f32(d, 1);
    index_select_f32(d, o1, one, zero, 1, 1, 1, 1).unwrap();
    assert_bits("index_select of one", &download::<f32>(d, o1, 1), &[5.5]);
}

fn add(d: &dyn Driver) {
    let mut rng = Rng::new(62);
    let xs = normal(&mut rng, OUTER * LEN * INNER);
    let gs = normal(&mut rng, OUTER * IDX.len() * INNER);
    let base = normal(&mut rng, OUTER * LEN * INNER);
    let x = Tensor::from_vec(xs, &[OUTER, LEN, INNER])
        .unwrap()
        .requires_grad_();
    let y = x.index_select(1, &IDX).unwrap();
    y.backward_with(&Tensor::from_vec(gs.clone(), &[OUTER, IDX.len(), INNER]).unwrap())
        .unwrap();
    let want: Vec<f64> = x
        .grad()
        .unwrap()
        .to_vec()
        .iter()
        .zip(&base)
        .map(|(&g, &b)| g as f64 + b as f64)
        .collect();
    let plan = scatter_plan(&IDX, LEN).unwrap();
    let (order, starts) = (
        upload::<u32>(d, &plan.order),
        upload::<u32>(d, &plan.starts),
    );
    let dst = upload::<f32>(d, &base);
    let src = upload::<f32>(d, &gs);
    index_add_f32(d, dst, src, order, starts, OUTER, LEN, IDX.len(), INNER).unwrap();
    let got = download::<f32>(d, dst, OUTER * LEN * INNER);
    assert_close(
        &format!("index_add on {}", d.name()),
        &got,
        &want,
        1e-6,
        1e-6,
    );
    // Rows nobody selects keep their bits exactly.
    for o in 0..OUTER {
        for j in [2usize, 4, 5, 6, 8] {
            let at = (o * LEN + j) * INNER;
            assert_bits("untouched row", &got[at..at + INNER], &base[at..at + INNER]);
        }
    }
}

#[test]
fn index_select_f32_matches_cpu() {
    on_each_device(select);
}

#[test]
fn index_add_f32_matches_cpu_autograd_with_duplicates() {
    on_each_device(add);
}
