//! Devices, buffers and NaN-safe comparisons shared by the kernel tests.

use std::sync::Once;

use tarflow::gpu::{
    CudaDriver, DevicePtr, Driver, Forward, KernelArg, LaunchConfig, PtxModule, PtxSim,
};
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

/// The interpreter with one kernel module swapped for another.
pub struct Swapped {
    inner: PtxSim,
    module: &'static PtxModule,
}

impl Forward for Swapped {
    fn inner(&self) -> &dyn Driver {
        &self.inner
    }
    fn launch(
        &self,
        module: &PtxModule,
        kernel: &str,
        config: LaunchConfig,
        args: &[KernelArg],
    ) -> tarflow::Result<()> {
        let m = if module.name == self.module.name {
            self.module
        } else {
            module
        };
        self.inner.launch(m, kernel, config, args)
    }
}

/// `module` with the `nth` line (from 0) of `kernel`'s body that contains `from` changed
/// to `to` (the first occurrence in that line).
pub fn mutated(
    module: &'static PtxModule,
    kernel: &str,
    from: &str,
    nth: usize,
    to: &str,
) -> &'static PtxModule {
    let ptx = module.ptx;
    let at = ptx
        .find(&format!(".entry {kernel}("))
        .unwrap_or_else(|| panic!("no entry {kernel}"));
    // The body runs to the next entry (inline-asm blocks end with `}` lines too).
    let end = ptx[at + 1..]
        .find(".entry ")
        .map_or(ptx.len(), |e| at + 1 + e);
    let (head, rest) = ptx.split_at(at);
    let (body, tail) = rest.split_at(end - at);
    let mut seen = 0;
    let lines: Vec<String> = body
        .lines()
        .map(|l| {
            if l.contains(from) {
                seen += 1;
                if seen == nth + 1 {
                    return l.replacen(from, to, 1);
                }
            }
            l.to_string()
        })
        .collect();
    assert!(seen > nth, "`{from}` is in {kernel} {seen} times");
    let changed = format!("{head}{}{tail}", lines.join("\n"));
    Box::leak(Box::new(PtxModule {
        name: module.name,
        ptx: Box::leak(changed.into_boxed_str()),
    }))
}

/// The interpreter running `module` in place of gemm_sm90's.
pub fn swapped(module: &'static PtxModule) -> Swapped {
    Swapped {
        inner: PtxSim::new(),
        module,
    }
}

pub fn expect_error(r: tarflow::Result<()>, what: &str) -> String {
    match r {
        Ok(()) => panic!("the kernel with {what} ran without an error"),
        Err(e) => e.to_string(),
    }
}
