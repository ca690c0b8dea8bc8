//! One driver per GPU-like device, opened on first use and shared by every tensor on it.
//!
//! [`driver`] is how the rest of the crate reaches a device. Which devices this build can
//! open is decided in one place (`open`): today none (CUDA and the PTX interpreter plug in
//! there when they land), so asking for one is an error that says what is missing.
//! [`register`] installs a driver by hand (tests use an in-memory one; an embedder could
//! bring its own).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use crate::error::{Error, Result};
use crate::gpu::Driver;
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
    let d = open(device)?;
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
    Ok(table().insert(device, driver))
}

/// Forgets the driver of `device` (the next [`driver`] call opens it again), returning it.
pub fn unregister(device: Device) -> Option<Arc<dyn Driver>> {
    table().remove(&device)
}

/// Opens a device this build knows how to drive.
///
/// Tensors cannot live on the CUDA device or the interpreter yet: most ops have no GPU
/// dispatch, and the infallible ones would have to panic on a device operand. Until they
/// do, both devices are refused here with what can be used instead (the kernels themselves
/// run through [`crate::gpu::CudaDriver`], [`crate::gpu::kernels`] and the interpreter).
fn open(device: Device) -> Result<Arc<dyn Driver>> {
    let detail = match device {
        Device::Cpu => "cpu is the host: it has no GPU driver".to_string(),
        Device::Cuda(i) => {
            // Say first what is missing on this machine, if anything.
            crate::gpu::CudaDriver::new(i)?;
            format!(
                "cuda:{i}: tensors on a GPU are not supported yet (the ops have no GPU \
                 dispatch); run on cpu"
            )
        }
        Device::PtxSim => "ptx-sim: tensors on the PTX interpreter are not supported yet (the \
             ops have no GPU dispatch); run on cpu"
            .to_string(),
    };
    Err(Error::Device {
        op: "open device",
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unopenable_devices_say_why() {
        let e = driver(Device::Cuda(3))
            .err()
            .expect("no CUDA in this build")
            .to_string();
        assert!(e.contains("cuda:3"), "{e}");
        let e = driver(Device::PtxSim)
            .err()
            .expect("no tensors on the interpreter yet")
            .to_string();
        assert!(e.contains("ptx-sim") && e.contains("not supported"), "{e}");
        let e = driver(Device::Cpu)
            .err()
            .expect("cpu has no driver")
            .to_string();
        assert!(e.contains("host"), "{e}");
    }
}
