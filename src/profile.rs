//! Opt-in accounting of time spent inside the engine's heavy kernels, to tell how much of a
//! step is arithmetic and how much is everything around it (autograd bookkeeping, views,
//! small elementwise ops, allocation).
//!
//! Off by default; while off, each kernel pays one relaxed atomic load. [`enable`] turns it
//! on for the whole process, [`snapshot`] reads the totals. Times are wall-clock on the
//! calling thread, so a kernel that fans out over rayon counts its wall time once. A kernel
//! that calls another (linear's backward runs matmul) is timed only as the outermost one, so
//! each second is counted under exactly one kind.
//!
//! ```
//! use tarflow::{profile, Tensor};
//! profile::reset();
//! profile::enable(true);
//! let a = Tensor::<f32>::ones(&[64, 64]);
//! let _ = a.matmul(&a).unwrap();
//! profile::enable(false);
//! assert_eq!(profile::snapshot().calls[profile::Kernel::Matmul as usize], 1);
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// The kernel families that are timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// `matmul` and `linear`, forward and backward (products, and `linear`'s bias and its
    /// gradient).
    Matmul = 0,
    /// Fused attention, forward and backward.
    Attention = 1,
    /// Fused layer norm, forward and backward.
    LayerNorm = 2,
    /// GELU, forward and backward.
    Gelu = 3,
}

impl Kernel {
    /// Every kind, in index order (`ALL[k as usize] == k`).
    pub const ALL: [Kernel; 4] = [
        Kernel::Matmul,
        Kernel::Attention,
        Kernel::LayerNorm,
        Kernel::Gelu,
    ];

    /// Short lower-case name for reports, e.g. `"layer_norm"`.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Matmul => "matmul",
            Kernel::Attention => "attention",
            Kernel::LayerNorm => "layer_norm",
            Kernel::Gelu => "gelu",
        }
    }
}

static ENABLED: AtomicBool = AtomicBool::new(false);
static NANOS: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
static CALLS: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

/// Turns the accounting on or off for the whole process.
pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Zeroes the totals.
pub fn reset() {
    for a in NANOS.iter().chain(CALLS.iter()) {
        a.store(0, Ordering::Relaxed);
    }
}

/// Totals since the last [`reset`], indexed by `Kernel as usize`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Wall-clock seconds spent in each kind of kernel.
    pub seconds: [f64; 4],
    /// Number of outermost timed calls of each kind.
    pub calls: [u64; 4],
}

impl Snapshot {
    /// Seconds spent in all timed kernels together.
    pub fn total_seconds(&self) -> f64 {
        self.seconds.iter().sum()
    }
}

/// Reads the process-wide totals accumulated since the last [`reset`].
pub fn snapshot() -> Snapshot {
    let mut s = Snapshot::default();
    for i in 0..4 {
        s.seconds[i] = NANOS[i].load(Ordering::Relaxed) as f64 * 1e-9;
        s.calls[i] = CALLS[i].load(Ordering::Relaxed);
    }
    s
}

thread_local! {
    /// Timers open on this thread: only the outermost one counts, so a kernel built from
    /// another (linear's backward runs matmul) is not counted twice.
    static DEPTH: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Times its scope under a kernel kind when accounting is on.
pub(crate) struct Timer {
    kind: Kernel,
    /// Whether this timer raised `DEPTH`, and its start time if it is the outermost.
    open: bool,
    start: Option<Instant>,
}

impl Timer {
    #[inline]
    pub(crate) fn start(kind: Kernel) -> Timer {
        if !ENABLED.load(Ordering::Relaxed) {
            return Timer {
                kind,
                open: false,
                start: None,
            };
        }
        let outer = DEPTH.with(|d| {
            d.set(d.get() + 1);
            d.get() == 1
        });
        Timer {
            kind,
            open: true,
            start: outer.then(Instant::now),
        }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        if self.open {
            DEPTH.with(|d| d.set(d.get() - 1));
        }
        if let Some(t) = self.start {
            let i = self.kind as usize;
            NANOS[i].fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
            CALLS[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A timer inside another counts nothing: the outer one already covers its time.
    #[test]
    fn nested_timers_count_once() {
        // Other tests may run kernels concurrently; count only this thread's calls by
        // comparing before and after under the Gelu kind, which no other lib test times.
        enable(true);
        let before = snapshot().calls[Kernel::Gelu as usize];
        {
            let _outer = Timer::start(Kernel::Gelu);
            let _inner = Timer::start(Kernel::Gelu);
        }
        let after = snapshot().calls[Kernel::Gelu as usize];
        enable(false);
        assert_eq!(after - before, 1);
        assert_eq!(DEPTH.with(|d| d.get()), 0);
    }
}
