//! Bad input to the tensor engine's public API (constructors, ops, attention and its KV cache,
//! the packed GEMM operand, autograd guards) gives an `Err` that names the op, never a panic,
//! an abort or a tensor whose shape disagrees with its storage.

use tarflow::ops::attention::{
    attention, attention_decode, attention_qkv, AttentionOptions, KvCache,
};
use tarflow::ops::gemm::PackedB;
use tarflow::{Result, Tensor};

type T = Tensor<f32>;

/// A size that cannot be allocated but fits in a shape whose other sizes are zero.
const HUGE: usize = 1 << 40;

#[track_caller]
fn assert_err_names<X: std::fmt::Debug>(r: Result<X>, op: &str) {
    match r {
        Ok(x) => panic!("expected an error from {op}, got Ok({x:?})"),
        Err(e) => {
            let m = e.to_string();
            assert!(m.contains(op), "error does not name {op}: {m}");
        }
    }
}

fn opts(causal: bool) -> AttentionOptions {
    AttentionOptions {
        causal,
        scale: 1.0,
        temperature: 1.0,
    }
}

fn empty(shape: &[usize]) -> T {
    T::from_vec(Vec::new(), shape).unwrap()
}

#[test]
fn from_vec_rejects_shapes_whose_size_overflows() {
    // Wrapped to 0 elements, this made a [2^63, 2] tensor with no storage; `get` then indexed
    // past the end.
    assert_err_names(T::from_vec(Vec::new(), &[1 << 63, 2]), "from_vec");
    assert_err_names(T::from_slice(&[], &[usize::MAX, usize::MAX, 0]), "from_vec");
    assert_err_names(T::from_vec(Vec::new(), &[0, HUGE, HUGE]), "from_vec");
    // Large but representable empty shapes stay valid.
    assert_eq!(empty(&[0, HUGE]).numel(), 0);
}

#[test]
fn arange_with_too_many_elements_is_an_error() {
    // Both used to panic with "capacity overflow".
    assert_err_names(T::arange(0.0, 1e30, 1.0), "arange");
    assert_err_names(T::arange(-1e308, 1e308, 1e-300), "arange");
    // More than memory holds, though the count itself fits.
    assert_err_names(T::arange(0.0, 1e17, 1.0), "arange");
    assert_eq!(
        T::arange(0.0, 3.0, 1.0).unwrap().to_vec(),
        vec![0.0, 1.0, 2.0]
    );
}

#[test]
fn view_ops_reject_shapes_whose_size_overflows() {
    let t = T::ones(&[1, 1]);
    assert_err_names(t.broadcast_to(&[1 << 32, 1 << 32]), "broadcast_to");
    assert_err_names(t.broadcast_to(&[1 << 33, 1 << 32]), "broadcast_to");
    assert_err_names(T::zeros(&[0]).reshape(&[0, HUGE, HUGE]), "reshape");
    assert!(T::zeros(&[0]).reshape(&[0, HUGE]).is_ok());
}

#[test]
fn broadcasting_ops_reject_outputs_whose_size_overflows() {
    let a = empty(&[HUGE, 1, 0]);
    let b = empty(&[HUGE, 0]);
    assert_err_names(a.add(&b), "add");
    assert_err_names(a.mul(&b), "mul");
    assert_err_names(T::where_cond(&a, &b, &b), "where");
}

#[test]
fn concat_rejects_sizes_that_add_up_past_usize() {
    let a = empty(&[usize::MAX, 0]);
    assert_err_names(T::concat(&[&a, &a], 0), "concat");
}

#[test]
fn gather_rejects_an_index_shape_whose_size_overflows() {
    let a = T::ones(&[2, 2]);
    assert_err_names(a.gather(0, &[], &[1 << 63, 2]), "gather");
}

#[test]
fn matmul_and_linear_reject_outputs_whose_size_overflows() {
    // k == 0: the inputs are empty but the output would have 2^64 elements.
    let a = empty(&[1 << 32, 0]);
    let b = empty(&[0, 1 << 32]);
    assert_err_names(a.matmul(&b), "matmul");
    assert_err_names(a.linear(&a, None), "linear");
}

#[test]
fn attention_without_queries_keeps_its_gradient() {
    // Used to panic with "chunk size must be non-zero" while keeping probabilities.
    for causal in [false, true] {
        let q = T::zeros(&[1, 1, 0, 2]).requires_grad_();
        let k = T::ones(&[1, 1, 3, 2]).requires_grad_();
        let y = attention(&q, &k, &k, None, opts(causal)).unwrap();
        assert_eq!(y.shape(), &[1, 1, 0, 2]);
        y.sum_all().unwrap().backward().unwrap();
        assert_eq!(k.grad().unwrap().to_vec(), vec![0.0; 6]);
        let qkv = T::zeros(&[1, 0, 6]).requires_grad_();
        let y = attention_qkv(&qkv, 1, None, opts(causal)).unwrap();
        y.sum_all().unwrap().backward().unwrap();
        assert_eq!(qkv.grad().unwrap().shape(), &[1, 0, 6]);
    }
}

#[test]
fn attention_rejects_an_output_whose_size_overflows() {
    // Empty q and v whose output would be [1, 1, 2^40, 2^40]: used to abort on an 8 TB
    // scratch allocation.
    let q = empty(&[1, 1, HUGE, 0]);
    let k = empty(&[1, 1, 0, 0]);
    let v = empty(&[1, 1, 0, HUGE]);
    assert_err_names(attention(&q, &k, &v, None, opts(false)), "attention");
}

#[test]
fn attention_with_an_empty_output_sizes_nothing_by_its_empty_axes() {
    // 2^40 queries of width 0 over one key of width 0: the output is empty, and no scratch
    // of queries x keys may be allocated for it.
    let q = empty(&[1, 1, HUGE, 0]);
    let k = empty(&[1, 1, 1, 0]);
    let y = attention(&q, &k, &k, None, opts(false)).unwrap();
    assert_eq!(y.shape(), &[1, 1, HUGE, 0]);
    let qkv = empty(&[1, HUGE, 0]);
    let y = attention_qkv(&qkv, 4, None, opts(true)).unwrap();
    assert_eq!(y.shape(), &[1, HUGE, 0]);
}

#[test]
fn attention_qkv_rejects_a_head_count_that_overflows() {
    // 3 * heads wraps to 2, which divides 6; the error used to come from `reshape`.
    let qkv = T::zeros(&[1, 1, 6]);
    let heads = usize::MAX / 3 + 1;
    assert_err_names(
        attention_qkv(&qkv, heads, None, opts(false)),
        "attention_qkv",
    );
}

#[test]
fn kv_cache_too_large_to_allocate_is_an_error() {
    // The buffer size wrapped to 0 and `append` indexed past the end of it; a size that
    // does not wrap but cannot be allocated aborted the process.
    for size in [
        [1, 1, 1 << 63, 2],
        [HUGE, HUGE, 1, 1],
        [1 << 20, 1 << 20, 1 << 10, 1],
    ] {
        let e = KvCache::<f32>::new(size[0], size[1], size[2], size[3]).err();
        assert!(
            e.is_some_and(|e| e.to_string().contains("KvCache::new")),
            "{size:?}"
        );
    }
}

#[test]
fn kv_cache_append_rejects_a_position_count_that_overflows() {
    let mut c = KvCache::<f32>::new(0, 1, 4, 1).unwrap();
    let one = T::zeros(&[0, 1, 1, 1]);
    c.append(&one, &one).unwrap();
    // len + T wrapped to 0 and the append was accepted.
    let k = empty(&[0, 1, usize::MAX, 1]);
    assert_err_names(c.append(&k, &k), "KvCache::append");
    assert_eq!(c.len(), 1);
}

#[test]
fn kv_cache_and_decode_misuse_is_reported() {
    let mut c = KvCache::<f32>::new(1, 2, 2, 4).unwrap();
    let k = T::ones(&[1, 2, 2, 4]);
    c.append(&k, &k).unwrap();
    // Full.
    let one = T::ones(&[1, 2, 1, 4]);
    assert_err_names(c.append(&one, &one), "KvCache::append");
    // Wrong batch, heads, head_dim, rank; k and v differing.
    for bad in [
        T::ones(&[2, 2, 1, 4]),
        T::ones(&[1, 3, 1, 4]),
        T::ones(&[1, 2, 1, 5]),
        T::ones(&[2, 1, 4]),
    ] {
        assert_err_names(c.append(&bad, &bad), "KvCache::append");
        assert_err_names(attention_decode(&bad, &c, opts(true)), "attention_decode");
    }
    c.reset();
    assert_err_names(c.append(&one, &T::ones(&[1, 2, 2, 4])), "KvCache::append");
    // More queries than cached positions.
    assert_err_names(attention_decode(&one, &c, opts(true)), "attention_decode");
}

#[test]
fn attention_operand_misuse_is_reported() {
    let q = T::ones(&[1, 2, 3, 4]);
    let bad_opts = AttentionOptions {
        causal: false,
        scale: f64::NAN,
        temperature: 1.0,
    };
    assert_err_names(attention(&q, &q, &q, None, bad_opts), "attention");
    assert_err_names(
        attention(&q, &q, &T::ones(&[1, 2, 4, 4]), None, opts(false)),
        "attention",
    );
    assert_err_names(
        attention(&q, &T::ones(&[1, 2, 3, 5]), &q, None, opts(false)),
        "attention",
    );
    assert_err_names(
        attention(&q, &T::ones(&[2, 2, 3, 4]), &q, None, opts(false)),
        "attention",
    );
    assert_err_names(
        attention(&T::ones(&[2, 3, 4]), &q, &q, None, opts(false)),
        "attention",
    );
    let mask = T::ones(&[1, 1, 1, 3, 3]);
    assert_err_names(attention(&q, &q, &q, Some(&mask), opts(false)), "attention");
    let long_q = T::ones(&[1, 2, 5, 4]);
    assert_err_names(attention(&long_q, &q, &q, None, opts(true)), "attention");
    assert_err_names(
        attention_qkv(&T::ones(&[1, 3, 7]), 1, None, opts(false)),
        "attention_qkv",
    );
    assert_err_names(
        attention_qkv(&T::ones(&[1, 3, 6]), 0, None, opts(false)),
        "attention_qkv",
    );
}

#[test]
#[should_panic(expected = "PackedB: view out of bounds")]
fn packed_b_checks_its_view_without_wrapping() {
    // (k - 1) * rsb wraps to 0 and passed the bounds assertion; the packing then read far
    // outside `b`. The documented panic must fire instead.
    let b = [1.0f32];
    let _ = PackedB::new(3, 1, &b, 1 << 63, 0);
}

#[test]
#[should_panic(expected = "PackedB::gemm: A out of bounds")]
fn packed_b_gemm_checks_its_views_without_wrapping() {
    let b = [1.0f32; 4];
    let p = PackedB::new(2, 2, &b, 2, 1);
    let a = [1.0f32; 2];
    let mut c = [0.0f32; 6];
    // (m - 1) * rsa wraps to 0.
    p.gemm(3, &a, 1 << 63, 1, 0.0, &mut c, 2);
}

#[test]
fn no_grad_guard_stays_on_its_thread() {
    // Dropped on another thread, the guard decremented that thread's count (an underflow)
    // and left recording off on this one for good. It is neither `Send` nor `Sync` now: this
    // resolves only because the `Send` impl below does not apply.
    trait AmbiguousIfSend<A> {
        fn check() {}
    }
    impl<X: ?Sized> AmbiguousIfSend<()> for X {}
    impl<X: ?Sized + Send> AmbiguousIfSend<u8> for X {}
    <tarflow::autograd::NoGradGuard as AmbiguousIfSend<_>>::check();
    assert!(tarflow::autograd::is_grad_enabled());
    {
        let _g = tarflow::no_grad();
        assert!(!tarflow::autograd::is_grad_enabled());
    }
    assert!(tarflow::autograd::is_grad_enabled());
}
