//! How much global memory each device's tensors hold: live bytes now and the peak since the
//! last [`reset_peak`].
//!
//! Every device allocation of the crate goes through [`crate::tensor::GpuBuffer`], which adds
//! its size to its driver's [`MemoryCounter`] when it is made and takes it off when it drops.
//! The counters are those of the driver the [registry](super::registry) hands out for a
//! device (it wraps every driver it opens or is given), so they count what the crate asked
//! for, in the sizes it asked for: not the CUDA context, not the allocator's rounding, not
//! memory a kernel bench takes from a driver directly. The cost is two atomic operations per
//! allocation and one per free.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::tensor::Device;

/// Live and peak allocated bytes of one driver.
#[derive(Debug, Default)]
pub struct MemoryCounter {
    live: AtomicU64,
    peak: AtomicU64,
}

impl MemoryCounter {
    /// A counter at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts an allocation of `bytes`.
    pub fn allocated(&self, bytes: u64) {
        let live = self.live.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(live, Ordering::Relaxed);
    }

    /// Counts the free of an allocation of `bytes`.
    pub fn freed(&self, bytes: u64) {
        self.live.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// The counts now.
    pub fn stats(&self) -> MemoryStats {
        MemoryStats {
            live_bytes: self.live.load(Ordering::Relaxed),
            peak_bytes: self.peak.load(Ordering::Relaxed),
        }
    }

    /// Starts a new peak from the live bytes now.
    pub fn reset_peak(&self) {
        // Relaxed throughout: an allocation racing with the reset may raise the peak before
        // or after it, both of which are a correct peak of some interval around the call.
        self.peak
            .store(self.live.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// A device's allocated bytes (see the [module](self) for what is counted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MemoryStats {
    /// Bytes held by live buffers now.
    pub live_bytes: u64,
    /// The most bytes live at once since the driver was opened or the last [`reset_peak`].
    pub peak_bytes: u64,
}

/// The counter of `device`'s driver (opening it if needed); the CPU is an error: host memory
/// is not allocated through a driver (the process's resident set is what `bench --loader`
/// reports).
fn counter<R>(op: &'static str, device: Device, f: impl FnOnce(&MemoryCounter) -> R) -> Result<R> {
    if !device.is_gpu() {
        return Err(Error::Device {
            op,
            detail: format!(
                "{device} is the host: memory counters are kept for GPU-like devices only"
            ),
        });
    }
    let driver = super::registry::driver(device)?;
    let m = driver.memory().ok_or_else(|| Error::Device {
        op,
        detail: format!(
            "the driver of {device} ({}) keeps no counters",
            driver.name()
        ),
    })?;
    Ok(f(m))
}

/// The live and peak bytes of `device`'s tensors. An error for [`Device::Cpu`] and for a
/// device this build or machine cannot open.
pub fn memory_stats(device: Device) -> Result<MemoryStats> {
    counter("memory_stats", device, MemoryCounter::stats)
}

/// Starts a new peak on `device` from its live bytes now; the same errors as
/// [`memory_stats`].
pub fn reset_peak(device: Device) -> Result<()> {
    counter("reset_peak", device, MemoryCounter::reset_peak)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_follows_allocations_and_peak_keeps_the_most() {
        let m = MemoryCounter::new();
        m.allocated(100);
        m.allocated(50);
        m.freed(100);
        assert_eq!(
            m.stats(),
            MemoryStats {
                live_bytes: 50,
                peak_bytes: 150
            }
        );
        m.reset_peak();
        assert_eq!(m.stats().peak_bytes, 50);
        m.allocated(20);
        m.freed(20);
        assert_eq!(
            m.stats(),
            MemoryStats {
                live_bytes: 50,
                peak_bytes: 70
            }
        );
    }

    #[test]
    fn the_host_has_no_counters() {
        let e = memory_stats(Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("host") && e.contains("memory_stats"), "{e}");
        let e = reset_peak(Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("reset_peak"), "{e}");
    }
}
