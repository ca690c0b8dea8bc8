//! Devices, buffers and NaN-safe comparisons shared by the kernel tests.

use std::sync::Once;

use tarflow::gpu::{CudaDriver, DevicePtr, Driver, PtxSim};
use tarflow::Rng;

use crate::common::worst;

/// Runs `body` on the interpreter and, when `CudaDriver::new(0)` opens, on GPU 0. With
/// `TARFLOW_TEST_GPU_ONLY=1` (the GPU check, whose interpreter halves CI has already run) and
/// a GPU present, on the GPU alone.
pub fn on_each_device(body: impl Fn(&dyn Driver)) {
    let cuda = CudaDriver::new(0);
    let gpu_only = std::env::var("TARFLOW_TEST_GPU_ONLY").is_ok_and(|v| v == "1");
    if !(gpu_only && cuda.is_ok()) {
        body(&PtxSim::new());
    }
    match cuda {
        Ok(cuda) => body(&cuda),
        Err(e) => {
            static SAID: Once = Once::new();
            SAID.call_once(|| println!("cuda: skipped: {e}"));
        }
    }
}

pub use crate::common::gpu::{download, upload, upload_bytes};

/// `n` f32 NaNs on the device: the poison for outputs a kernel writes with `=`.
pub fn poisoned_f32(d: &dyn Driver, n: usize) -> DevicePtr {
    upload(d, &vec![f32::NAN; n])
}

/// `n` standard normal f32 samples.
pub fn normal(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.normal() as f32).collect()
}

/// `n` f32 samples uniform in `[lo, hi)`.
pub fn uniform(rng: &mut Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n)
        .map(|_| lo + (hi - lo) * rng.uniform() as f32)
        .collect()
}

/// Fails unless `got` and `want` agree to `|got - want| <= abs + rel * |want|` everywhere;
/// equal infinities and NaN in both agree, a NaN on one side only is an infinite error.
pub fn assert_close(what: &str, got: &[f32], want: &[f64], rel: f64, abs: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let errs = got.iter().zip(want).map(|(&g, &w)| {
        let g = g as f64;
        if g == w || (g.is_nan() && w.is_nan()) {
            0.0
        } else if g.is_nan() || w.is_nan() {
            f64::INFINITY
        } else {
            (g - w).abs() / (abs + rel * w.abs())
        }
    });
    let errs: Vec<f64> = errs.collect();
    let bad = worst(errs.iter().copied());
    // NaN (from `worst`) must fail, so test for "within" and negate.
    let within = |e: f64| e <= 1.0;
    if !within(bad) {
        let i = errs
            .iter()
            .position(|&e| !within(e))
            .expect("a failing element");
        panic!(
            "{what}: element {i} of {}: got {} want {} (error {bad} times the tolerance)",
            got.len(),
            got[i],
            want[i]
        );
    }
}

/// Fails unless `got` has exactly the bits of `want`, except that any NaN matches any NaN
/// (payloads differ between a GPU's canonical NaN and the CPU's, and mean nothing).
pub fn assert_bits(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if g.is_nan() && w.is_nan() {
            continue;
        }
        assert_eq!(
            g.to_bits(),
            w.to_bits(),
            "{what}: element {i} of {}: got {g} want {w}",
            got.len()
        );
    }
}

/// Fails unless `|got - want| <= bound` everywhere (NaN on both sides agrees, on one side
/// fails): for sums, where the bound scales with the sum of magnitudes, not the result.
pub fn assert_within(what: &str, got: &[f32], want: &[f64], bound: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, ((&g, &w), &b)) in got.iter().zip(want).zip(bound).enumerate() {
        let g = g as f64;
        let ok = g == w || (g.is_nan() && w.is_nan()) || (g - w).abs() <= b;
        assert!(
            ok,
            "{what}: element {i} of {}: got {g} want {w} (bound {b})",
            got.len()
        );
    }
}

/// `v` as f64.
pub fn wide(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Row-major strides of `shape`, in elements.
pub fn contiguous_strides(shape: &[usize]) -> Vec<isize> {
    let mut s = vec![0isize; shape.len()];
    let mut acc = 1isize;
    for d in (0..shape.len()).rev() {
        s[d] = acc;
        acc *= shape[d] as isize;
    }
    s
}
