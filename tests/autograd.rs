//! Behaviour of the autograd machinery itself: accumulation, zeroing, `no_grad`, `detach`,
//! input gradients, `autograd::grad`, shared subgraphs, deep graphs and memory release.

use tarflow::autograd::{grad, is_grad_enabled};
use tarflow::{no_grad, with_no_grad, Rng, Tensor};

type T = Tensor<f64>;

fn randn(shape: &[usize], seed: u64) -> T {
    Tensor::randn(shape, 0.0, 1.0, &mut Rng::new(seed))
}

fn close(a: &[f64], b: &[f64], tol: f64) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| (x - y).abs() <= tol * (1.0 + y.abs()))
}

#[track_caller]
fn assert_close(a: &[f64], b: &[f64]) {
    assert!(close(a, b, 1e-12), "{a:?} != {b:?}");
}

#[test]
fn gradients_accumulate_across_backward_calls() {
    let w = randn(&[3], 1).requires_grad_();
    let x = randn(&[3], 2);
    // d/dw sum(w * x) = x
    w.mul(&x).unwrap().sum_all().unwrap().backward().unwrap();
    assert_close(&w.grad().unwrap().to_vec(), &x.to_vec());
    w.mul(&x).unwrap().sum_all().unwrap().backward().unwrap();
    let twice: Vec<f64> = x.to_vec().iter().map(|v| 2.0 * v).collect();
    assert_close(&w.grad().unwrap().to_vec(), &twice);
    // A different loss adds its own gradient on top: d/dw sum(w^2) = 2w.
    w.square().unwrap().sum_all().unwrap().backward().unwrap();
    let want: Vec<f64> = twice
        .iter()
        .zip(w.to_vec())
        .map(|(g, w)| g + 2.0 * w)
        .collect();
    assert_close(&w.grad().unwrap().to_vec(), &want);
}

#[test]
fn zero_grad_clears() {
    let w = randn(&[2, 2], 3).requires_grad_();
    assert!(w.grad().is_none());
    w.sum_all().unwrap().backward().unwrap();
    assert!(w.grad().is_some());
    w.zero_grad();
    assert!(w.grad().is_none());
    w.mul_scalar(3.0)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert_close(&w.grad().unwrap().to_vec(), &[3.0; 4]);
}

#[test]
fn no_grad_guard_nests_and_stops_recording() {
    let w = randn(&[3], 4).requires_grad_();
    assert!(is_grad_enabled());
    {
        let _outer = no_grad();
        assert!(!is_grad_enabled());
        let y = w.exp().unwrap();
        assert!(!y.requires_grad() && y.is_leaf());
        {
            let _inner = no_grad();
            let z = w.mul(&w).unwrap().sum_all().unwrap();
            assert!(!z.requires_grad());
            assert!(z.backward().is_err());
        }
        // Leaving the inner guard must not switch recording back on.
        assert!(!is_grad_enabled());
        assert!(!w.square().unwrap().requires_grad());
    }
    assert!(is_grad_enabled());
    let y = w.square().unwrap();
    assert!(y.requires_grad() && !y.is_leaf());
    let v = with_no_grad(|| w.tanh());
    assert!(!v.unwrap().requires_grad());
    assert!(is_grad_enabled());
}

#[test]
fn no_grad_is_per_thread() {
    let w = randn(&[3], 5).requires_grad_();
    let _g = no_grad();
    let w2 = w.clone();
    let other = std::thread::spawn(move || w2.exp().unwrap().requires_grad())
        .join()
        .unwrap();
    assert!(
        other,
        "a guard on this thread must not affect another thread"
    );
    assert!(!w.exp().unwrap().requires_grad());
}

#[test]
fn detach_cuts_the_graph() {
    let w = randn(&[3], 6).requires_grad_();
    let h = w.square().unwrap();
    let d = h.detach();
    assert!(!d.requires_grad() && d.is_leaf());
    assert!(d.shares_storage(&h));
    // Loss = sum(h) + sum(detach(h) * w): only the first term and the explicit w reach w.
    let loss = h
        .sum_all()
        .unwrap()
        .add(&d.mul(&w).unwrap().sum_all().unwrap())
        .unwrap();
    loss.backward().unwrap();
    let want: Vec<f64> = w.to_vec().iter().map(|w| 2.0 * w + w * w).collect();
    assert_close(&w.grad().unwrap().to_vec(), &want);
}

#[test]
fn input_gradients_via_requires_grad() {
    // d/dx sum(tanh(x @ w)) for a constant w: TarFlow's denoising needs exactly this.
    let x0 = randn(&[2, 3], 7);
    let w = randn(&[3, 4], 8);
    let x = x0.requires_grad_();
    assert!(x.shares_storage(&x0) && x.requires_grad() && x.is_leaf());
    let y = x.matmul(&w).unwrap().tanh().unwrap().sum_all();
    y.unwrap().backward().unwrap();
    let g = x.grad().unwrap();
    assert!(!g.requires_grad());
    // Reference: (1 - tanh^2(xw)) @ w^T.
    let t = x0.matmul(&w).unwrap().tanh();
    let want = t
        .unwrap()
        .square()
        .unwrap()
        .rsub_scalar(1.0)
        .unwrap()
        .matmul(&w.t().unwrap())
        .unwrap();
    assert!(close(&g.to_vec(), &want.to_vec(), 1e-12));
    assert!(x0.grad().is_none(), "the original handle is not the leaf");
}

#[test]
fn grad_leaves_accumulated_grads_untouched() {
    let w = randn(&[3, 3], 9).requires_grad_();
    let x = randn(&[2, 3], 10).requires_grad_();
    // Accumulate something in both first.
    x.matmul(&w).unwrap().sum_all().unwrap().backward().unwrap();
    let (w0, x0) = (w.grad().unwrap().to_vec(), x.grad().unwrap().to_vec());

    let loss = x.matmul(&w).unwrap().square().unwrap().sum_all().unwrap();
    let gs = grad(&loss, &[&x]).unwrap();
    // Neither the requested input nor any other parameter changed its slot.
    assert_eq!(w.grad().unwrap().to_vec(), w0);
    assert_eq!(x.grad().unwrap().to_vec(), x0);
    // And the returned value is right: d/dx sum((xw)^2) = 2 (xw) w^T.
    let want = x
        .matmul(&w)
        .unwrap()
        .mul_scalar(2.0)
        .unwrap()
        .matmul(&w.t().unwrap())
        .unwrap();
    assert!(close(&gs[0].to_vec(), &want.to_vec(), 1e-12));
    // The same loss can still be backpropagated normally afterwards.
    loss.backward().unwrap();
    assert!(!close(&w.grad().unwrap().to_vec(), &w0, 1e-12));
}

#[test]
fn grad_of_intermediate_and_unrelated() {
    let x = randn(&[4], 11).requires_grad_();
    let h = x.exp().unwrap();
    let loss = h.mul_scalar(3.0).unwrap().sum_all();
    let unrelated = randn(&[2], 12).requires_grad_();
    let gs = grad(&loss.unwrap(), &[&h, &x, &unrelated]).unwrap();
    assert_close(&gs[0].to_vec(), &[3.0; 4]);
    let want: Vec<f64> = x.to_vec().iter().map(|v| 3.0 * v.exp()).collect();
    assert!(close(&gs[1].to_vec(), &want, 1e-12));
    assert_eq!(gs[2].to_vec(), vec![0.0, 0.0]);
    assert!(x.grad().is_none() && unrelated.grad().is_none());
    assert!(grad(&h, &[&x]).is_err(), "non-scalar output");
}

#[test]
fn diamond_graph_sums_both_paths() {
    // y = a*b + a where a = x^2 and b = exp(x): x reaches y through a (twice) and b.
    let x = randn(&[5], 13).requires_grad_();
    let a = x.square().unwrap();
    let b = x.exp();
    let y = a.mul(&b.unwrap()).unwrap().add(&a).unwrap().sum_all();
    y.unwrap().backward().unwrap();
    let want: Vec<f64> = x
        .to_vec()
        .iter()
        .map(|&v| 2.0 * v * v.exp() + v * v * v.exp() + 2.0 * v)
        .collect();
    assert!(close(&x.grad().unwrap().to_vec(), &want, 1e-12));
    // A tensor used twice in one op.
    let x2 = randn(&[3], 14).requires_grad_();
    x2.add(&x2).unwrap().sum_all().unwrap().backward().unwrap();
    assert_close(&x2.grad().unwrap().to_vec(), &[2.0; 3]);
}

#[test]
fn leaf_that_does_not_require_grad_gets_nothing() {
    let w = randn(&[3], 15).requires_grad_();
    let c = randn(&[3], 16);
    w.mul(&c).unwrap().sum_all().unwrap().backward().unwrap();
    assert!(c.grad().is_none());
    assert!(w.grad().is_some());
}

#[test]
fn backward_on_non_scalar_is_a_clear_error() {
    let w = randn(&[2, 3], 17).requires_grad_();
    let msg = w.exp().unwrap().backward().unwrap_err().to_string();
    assert!(
        msg.contains("one-element") && msg.contains("[2, 3]"),
        "{msg}"
    );
    // A one-element tensor of any rank is accepted.
    w.sum(&[0, 1], true).unwrap().backward().unwrap();
    assert_close(&w.grad().unwrap().to_vec(), &[1.0; 6]);
    // Explicit output gradient for non-scalars.
    w.zero_grad();
    let g = randn(&[2, 3], 18);
    w.mul_scalar(2.0).unwrap().backward_with(&g).unwrap();
    let want: Vec<f64> = g.to_vec().iter().map(|v| 2.0 * v).collect();
    assert_close(&w.grad().unwrap().to_vec(), &want);
}

/// Serialises the tests that allocate a lot, so the RSS measurement of one does not see the
/// other's allocations (tests in a binary run on parallel threads).
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn very_deep_chain_backward_and_drop() {
    let _heavy = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    // 100k recorded ops: backward must not recurse, and neither may dropping the graph.
    let w = Tensor::<f64>::from_vec(vec![0.5], &[1])
        .unwrap()
        .requires_grad_();
    let mut h = w.clone();
    for _ in 0..100_000 {
        h = h.add_scalar(1e-6).unwrap();
    }
    let loss = h.sum_all().unwrap();
    loss.backward().unwrap();
    assert_close(&w.grad().unwrap().to_vec(), &[1.0]);
    drop(loss);
    drop(h);
}

/// Resident set size in pages, from /proc (Linux only).
fn rss_pages() -> Option<usize> {
    let s = std::fs::read_to_string("/proc/self/statm").ok()?;
    s.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn graphs_are_freed_when_dropped() {
    let _heavy = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    // Each iteration builds a ~2 MB graph (saved activations) and drops it. If nodes or saved
    // tensors leaked, 1000 iterations would grow the process by ~2 GB.
    let w1 = randn(&[64, 64], 19).requires_grad_();
    let w2 = randn(&[64, 64], 20).requires_grad_();
    let x = randn(&[256, 64], 21);
    let step = || {
        let h = x.linear(&w1, None).unwrap().gelu();
        let y = h
            .unwrap()
            .linear(&w2, None)
            .unwrap()
            .tanh()
            .unwrap()
            .mean_all();
        y.unwrap().backward().unwrap();
        w1.zero_grad();
        w2.zero_grad();
    };
    for _ in 0..50 {
        step();
    }
    let Some(before) = rss_pages() else {
        return; // no /proc: nothing to measure on this platform
    };
    for _ in 0..1000 {
        step();
    }
    let after = rss_pages().unwrap();
    let grown_mb = after.saturating_sub(before) * 4096 / (1 << 20);
    assert!(grown_mb < 64, "RSS grew by {grown_mb} MB over 1000 steps");
}
