//! One driver per GPU-like device, opened on first use and shared by every tensor on it.
//!
//! [`driver`] is how the rest of the crate reaches a device. Which devices this build can
//! open is decided in one place (`open`): CUDA devices and the PTX interpreter; a device the
//! build or the machine cannot run is an error that says what is missing.
//! [`register`] installs a driver by hand (tests use an in-memory one; an embedder could
//! bring its own). Every driver handed out counts the bytes its buffers hold
//! ([`super::memory`]) and keeps a launch profiler ([`super::profile`]): one that lacks
//! either is wrapped in a driver that adds it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use crate::error::{Error, Result};
use crate::gpu::{
    DevicePtr, Driver, Forward, KernelArg, LaunchConfig, MemoryCounter, Profiler, PtxModule,
};
use crate::tensor::Device;

fn table() -> MutexGuard<'static, HashMap<Device, Arc<dyn Driver>>> {
    static TABLE: OnceLock<Mutex<HashMap<Device, Arc<dyn Driver>>>> = OnceLock::new();
    TABLE
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        // The map is only ever inserted into or removed from whole; a panic elsewhere while
        // holding the lock leaves it consistent.
        .unwrap_or_else(|e| e.into_inner())
}

/// The driver of `device`: the registered or already opened one, else opened now and kept
/// for the rest of the process. An error says why the device cannot be used (the CPU has no
/// driver; a device this build cannot open names what it needs).
pub fn driver(device: Device) -> Result<Arc<dyn Driver>> {
    let mut t = table();
    if let Some(d) = t.get(&device) {
        return Ok(d.clone());
    }
    let d = counted(open(device)?);
    t.insert(device, d.clone());
    Ok(d)
}

/// Installs `driver` for `device`, returning the one it replaces. Tensors already on the
/// device keep the driver they were made with (each buffer holds its own handle).
pub fn register(device: Device, driver: Arc<dyn Driver>) -> Result<Option<Arc<dyn Driver>>> {
    if !device.is_gpu() {
        return Err(Error::Device {
            op: "register",
            detail: format!("{device} is the host: a driver is only for a GPU-like device"),
        });
    }
    Ok(table().insert(device, counted(driver)))
}

/// Forgets the driver of `device` (the next [`driver`] call opens it again), returning it.
pub fn unregister(device: Device) -> Option<Arc<dyn Driver>> {
    table().remove(&device)
}

/// `driver` with a memory counter and a launch profiler: itself when it keeps both, else
/// wrapped in what it lacks.
fn counted(driver: Arc<dyn Driver>) -> Arc<dyn Driver> {
    if driver.memory().is_some() && driver.profiler().is_some() {
        return driver;
    }
    Arc::new(Counted {
        profiler: driver.profiler().is_none().then(Profiler::new),
        inner: driver,
        memory: MemoryCounter::new(),
    })
}

/// A driver with the counter of the bytes its buffers hold and a launch profiler
/// ([`crate::gpu::profile`]) where it has none of its own; everything else is the driver's.
struct Counted {
    inner: Arc<dyn Driver>,
    memory: MemoryCounter,
    profiler: Option<Profiler>,
}

impl Forward for Counted {
    fn inner(&self) -> &dyn Driver {
        &*self.inner
    }
    fn memory(&self) -> Option<&MemoryCounter> {
        self.inner.memory().or(Some(&self.memory))
    }
    fn launch(
        &self,
        module: &PtxModule,
        kernel: &str,
        config: LaunchConfig,
        args: &[KernelArg],
    ) -> Result<()> {
        match &self.profiler {
            Some(p) => p.launch(&*self.inner, module, kernel, config, args),
            None => self.inner.launch(module, kernel, config, args),
        }
    }
    fn profiler(&self) -> Option<&Profiler> {
        self.profiler.as_ref().or_else(|| self.inner.profiler())
    }
    fn alloc(&self, bytes: usize) -> Result<DevicePtr> {
        self.timed(|| self.inner.alloc(bytes))
    }
    fn free(&self, ptr: DevicePtr) -> Result<()> {
        self.timed(|| self.inner.free(ptr))
    }
    fn upload(&self, dst: DevicePtr, src: &[u8]) -> Result<()> {
        self.timed(|| self.inner.upload(dst, src))
    }
    fn download(&self, src: DevicePtr, dst: &mut [u8]) -> Result<()> {
        self.timed(|| self.inner.download(src, dst))
    }
    fn synchronize(&self) -> Result<()> {
        self.timed(|| self.inner.synchronize())
    }
    fn begin_batch(&self) -> Result<bool> {
        // A profile times each launch between two marks, which a batch would issue one by
        // one anyway: no batch while one records.
        if Forward::profiler(self).is_some_and(Profiler::is_on) {
            return Ok(false);
        }
        self.inner.begin_batch()
    }
    fn end_batch(&self) -> Result<()> {
        self.timed(|| self.inner.end_batch())
    }
}

impl Counted {
    /// `f`, a driver call other than a launch, timed by this wrapper's profiler if it has one.
    fn timed<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        match &self.profiler {
            Some(p) => p.other(f),
            None => f(),
        }
    }
}

/// Opens a device this build knows how to drive: `cuda:N` through the CUDA driver (an error
/// saying what is missing when the build, the machine or the driver cannot run it), and
/// `ptx-sim` through the PTX interpreter (when the `ptx-sim` feature is on).
fn open(device: Device) -> Result<Arc<dyn Driver>> {
    match device {
        Device::Cpu => Err(Error::Device {
            op: "open device",
            detail: "cpu is the host: it has no GPU driver".to_string(),
        }),
        Device::Cuda(i) => Ok(Arc::new(crate::gpu::CudaDriver::new(i)?)),
        Device::PtxSim => open_sim(),
    }
}

#[cfg(feature = "ptx-sim")]
fn open_sim() -> Result<Arc<dyn Driver>> {
    Ok(Arc::new(crate::gpu::PtxSim::new()))
}

#[cfg(not(feature = "ptx-sim"))]
fn open_sim() -> Result<Arc<dyn Driver>> {
    Err(Error::Device {
        op: "open device",
        detail: "ptx-sim: this build has no PTX interpreter (enable the `ptx-sim` feature)"
            .to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unopenable_devices_say_why() {
        // A machine without the CUDA driver (or a build without the feature) names what is
        // missing; a machine with one may open it.
        if let Err(e) = driver(Device::Cuda(3)) {
            let e = e.to_string();
            assert!(e.to_lowercase().contains("cuda"), "{e}");
        }
        let e = driver(Device::Cpu)
            .err()
            .expect("cpu has no driver")
            .to_string();
        assert!(e.contains("host"), "{e}");
    }
}
