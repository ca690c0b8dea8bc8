//! A tensor's buffer: host memory behind a lock, or global memory on a GPU-like device.
//!
//! Host storage is what every CPU kernel reads. Device storage is opaque to the host: its
//! elements are only reached by downloading them ([`crate::Tensor::to_host`]) or, once GPU
//! kernels exist, by launching a kernel on them through the device's [`Driver`].

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::{Device, Element};
use crate::error::{Error, Result};
use crate::gpu::{DevicePtr, Driver};

/// Global memory on a device holding `len` elements, freed when the last handle drops. Its
/// bytes are counted in its driver's [`crate::gpu::MemoryCounter`] while it lives.
pub struct GpuBuffer {
    driver: Arc<dyn Driver>,
    ptr: DevicePtr,
    len: usize,
    bytes: usize,
}

impl GpuBuffer {
    /// Allocates room for `len` elements of `elem_bytes` bytes each on `driver`.
    pub fn alloc(driver: Arc<dyn Driver>, len: usize, elem_bytes: usize) -> Result<GpuBuffer> {
        let bytes = len.checked_mul(elem_bytes).ok_or_else(|| Error::Device {
            op: "alloc",
            detail: format!(
                "{len} elements of {elem_bytes} bytes overflow an allocation on {}",
                driver.name()
            ),
        })?;
        let ptr = driver.alloc(bytes)?;
        if let Some(m) = driver.memory() {
            m.allocated(bytes as u64);
        }
        Ok(GpuBuffer {
            driver,
            ptr,
            len,
            bytes,
        })
    }

    /// The device address of element 0.
    pub fn ptr(&self) -> DevicePtr {
        self.ptr
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer holds no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Size in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The driver that owns the memory.
    pub fn driver(&self) -> &Arc<dyn Driver> {
        &self.driver
    }
}

impl Drop for GpuBuffer {
    fn drop(&mut self) {
        // A failed free cannot be reported from a drop; the driver keeps the error for the
        // next synchronize (the CUDA driver does) or it is a leak of this one buffer.
        let _ = self.driver.free(self.ptr);
        // Counted as freed either way: the buffer is gone from the crate's point of view.
        if let Some(m) = self.driver.memory() {
            m.freed(self.bytes as u64);
        }
    }
}

impl std::fmt::Debug for GpuBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "GpuBuffer({} elements at {:#x} on {})",
            self.len,
            self.ptr.0,
            self.driver.name()
        )
    }
}

/// Where the elements are.
pub(crate) enum StorageData<E> {
    /// Host memory.
    Host(RwLock<Vec<E>>),
    /// Device memory (f32 only: `Tensor::to_device` refuses other element types).
    Gpu(GpuBuffer),
}

/// A buffer of elements on one device. Shared by every view of it.
pub(crate) struct Storage<E> {
    data: StorageData<E>,
    device: Device,
}

impl<E: Element> Storage<E> {
    pub(crate) fn new(data: Vec<E>) -> Self {
        Storage {
            data: StorageData::Host(RwLock::new(data)),
            device: Device::Cpu,
        }
    }

    pub(crate) fn gpu(buf: GpuBuffer, device: Device) -> Self {
        Storage {
            data: StorageData::Gpu(buf),
            device,
        }
    }

    pub(crate) fn device(&self) -> Device {
        self.device
    }

    pub(crate) fn data(&self) -> &StorageData<E> {
        &self.data
    }

    /// The host elements for reading.
    ///
    /// # Panics
    /// On device storage. Every op checks its operands' device first
    /// ([`crate::backend::cpu_only`]), so reaching this with a device buffer is a bug in the
    /// op, not a user error.
    #[track_caller]
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, Vec<E>> {
        match &self.data {
            // A poisoned lock means a panic elsewhere while writing; the data is still plain
            // floats.
            StorageData::Host(l) => l.read().unwrap_or_else(|e| e.into_inner()),
            StorageData::Gpu(_) => self.host_access_bug(),
        }
    }

    /// The host elements for writing; panics on device storage as [`Storage::read`] does.
    #[track_caller]
    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, Vec<E>> {
        match &self.data {
            StorageData::Host(l) => l.write().unwrap_or_else(|e| e.into_inner()),
            StorageData::Gpu(_) => self.host_access_bug(),
        }
    }

    #[track_caller]
    fn host_access_bug(&self) -> ! {
        panic!(
            "internal error: a CPU kernel was handed a tensor on {} (the op must check its \
             operands' device first)",
            self.device
        )
    }
}
