//! Measuring the engine on this machine: the hardware ceilings ([`peak`]) and the engine's
//! kernels against them ([`kernels`], [`fused`]), whole-model workloads ([`model`]), the
//! GPU kernels on the PTX interpreter or a GPU ([`gpu`]), and the data loader ([`loader`]).
//!
//! Everything here measures and reports; nothing asserts a speed. The command-line program
//! prints [`KernelResult`]s as a table or JSON, and `docs/performance.md` records a run.
//! Timings are wall-clock medians over repeats after warm-up, with `std::time::Instant`.

pub mod fused;
pub mod gpu;
pub mod kernels;
pub mod loader;
pub mod model;
pub mod peak;

pub use kernels::{format_table, run_kernel_benches, BenchConfig, KernelResult};
pub use peak::{measure_peak, Peak, PeakConfig};

use std::time::Instant;

/// Wall-clock statistics of repeated runs, in seconds.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Timing {
    /// Median over the timed repeats (mean of the middle two when `repeats` is even).
    pub median_s: f64,
    /// Fastest timed repeat.
    pub min_s: f64,
    /// Slowest timed repeat.
    pub max_s: f64,
    /// Number of timed repeats the statistics cover (at least 1).
    pub repeats: usize,
}

/// Runs `f` `warmup` times untimed, then `repeats` (at least 1) timed runs.
pub fn time_it<R>(warmup: usize, repeats: usize, mut f: impl FnMut() -> R) -> Timing {
    for _ in 0..warmup {
        std::hint::black_box(f());
    }
    let repeats = repeats.max(1);
    let t: Vec<f64> = (0..repeats)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(f());
            start.elapsed().as_secs_f64()
        })
        .collect();
    stats(t, repeats)
}

/// Times several functions round-robin: each round runs every function once (in an order
/// that rotates between rounds), so a burst of load from elsewhere on the machine hits all of
/// them alike and their ratios stay meaningful on a busy machine.
pub fn time_interleaved(warmup: usize, repeats: usize, fs: &mut [&mut dyn FnMut()]) -> Vec<Timing> {
    let k = fs.len();
    for _ in 0..warmup {
        for f in fs.iter_mut() {
            f();
        }
    }
    let repeats = repeats.max(1);
    let mut samples = vec![Vec::with_capacity(repeats); k];
    for round in 0..repeats {
        for j in 0..k {
            let i = (j + round) % k;
            let start = Instant::now();
            fs[i]();
            samples[i].push(start.elapsed().as_secs_f64());
        }
    }
    samples.into_iter().map(|t| stats(t, repeats)).collect()
}

/// Median (mean of the middle two for an even count), fastest and slowest of `repeats`
/// samples.
fn stats(mut t: Vec<f64>, repeats: usize) -> Timing {
    t.sort_by(|a, b| a.total_cmp(b));
    let median_s = if repeats % 2 == 1 {
        t[repeats / 2]
    } else {
        0.5 * (t[repeats / 2 - 1] + t[repeats / 2])
    };
    Timing {
        median_s,
        min_s: t[0],
        max_s: t[repeats - 1],
        repeats,
    }
}

/// Runs `f` enough times per sample that one sample takes about `target_s`, and returns the
/// per-call timing. For calls far shorter than the timer's resolution and scheduling noise.
pub fn time_batched<R>(
    warmup: usize,
    repeats: usize,
    target_s: f64,
    mut f: impl FnMut() -> R,
) -> Timing {
    let start = Instant::now();
    std::hint::black_box(f());
    let once = start.elapsed().as_secs_f64().max(1e-9);
    let inner = ((target_s / once) as usize).clamp(1, 1_000_000);
    let t = time_it(warmup, repeats, || {
        for _ in 0..inner {
            std::hint::black_box(f());
        }
    });
    let k = inner as f64;
    Timing {
        median_s: t.median_s / k,
        min_s: t.min_s / k,
        max_s: t.max_s / k,
        repeats: t.repeats,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_statistics_are_ordered() {
        let mut n = 0u64;
        let t = time_it(1, 5, || {
            n += 1;
            std::thread::sleep(std::time::Duration::from_micros(200 * (n % 3)));
        });
        assert_eq!(n, 6);
        assert!(t.min_s <= t.median_s && t.median_s <= t.max_s);
        assert!(t.max_s >= 200e-6);
        let b = time_batched(0, 3, 1e-3, || std::hint::black_box(3u64.pow(5)));
        assert!(b.min_s > 0.0 && b.min_s <= b.max_s);
        let (mut x, mut y) = (0, 0);
        let r = time_interleaved(2, 4, &mut [&mut || x += 1, &mut || y += 2]);
        assert_eq!((x, y, r.len()), (6, 12, 2));
        for t in &r {
            assert_eq!(t.repeats, 4);
            assert!(t.min_s >= 0.0 && t.min_s <= t.median_s && t.median_s <= t.max_s);
        }
    }
}
