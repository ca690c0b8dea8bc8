//! Moving tensors between the host and GPU-like devices, and reading a device tensor's
//! values on the host (which downloads them).

use std::sync::Arc;

use super::storage::{GpuBuffer, Storage, StorageData};
use super::{DType, Device, Element, Layout, Tensor};
use crate::error::{Error, Result};

impl<E: Element> Tensor<E> {
    /// This tensor on `device`: `self` when it is already there, else a copy. The copy records
    /// a backward that moves the gradient back, so `x.to_device(d)?` can be differentiated.
    ///
    /// Device memory holds `f32` only: asking a GPU device for an `f64` tensor is an error
    /// (`f64` stays on the CPU). A device without a driver in this build (see
    /// [`crate::gpu::registry`]) is an error naming it.
    pub fn to_device(&self, device: Device) -> Result<Tensor<E>> {
        if device == self.device() {
            return Ok(self.clone());
        }
        let out = if device.is_gpu() {
            self.upload_raw(device)?
        } else {
            self.download_raw()?
        };
        let from = self.device();
        Ok(out.record("to_device", &[self], move |g| {
            Ok(vec![Some(g.to_device(from)?)])
        }))
    }

    /// This tensor in host memory (`self` when it is there already); see [`Tensor::to_device`].
    pub fn to_host(&self) -> Result<Tensor<E>> {
        self.to_device(Device::Cpu)
    }

    /// Elements in row-major order, downloading them from a device first; the error says
    /// why a download failed. [`Tensor::to_vec`] is the same without the `Result`.
    pub fn try_to_vec(&self) -> Result<Vec<E>> {
        Ok(self.host_copy()?.with_contiguous(|s| s.to_vec()))
    }

    /// `self` when its storage is on the host, else a download of it with the same
    /// layout (no gradient bookkeeping): the readers (`to_vec`, `item`, `Display` ...) go
    /// through this.
    pub(crate) fn host_copy(&self) -> Result<Tensor<E>> {
        if self.device().is_gpu() {
            self.download_raw()
        } else {
            Ok(self.clone())
        }
    }

    /// [`Tensor::host_copy`] for readers that return no `Result`.
    ///
    /// # Panics
    /// When the download fails (a driver error); the message names the reader and the device.
    #[track_caller]
    pub(crate) fn host_copy_or_panic(&self, reader: &'static str) -> Tensor<E> {
        self.host_copy()
            .unwrap_or_else(|e| panic!("{reader}: reading a tensor on {}: {e}", self.device()))
    }

    /// The whole storage buffer downloaded into host memory, viewed with this layout.
    fn download_raw(&self) -> Result<Tensor<E>> {
        let StorageData::Gpu(buf) = self.storage().data() else {
            // Host to host: nothing to move.
            return Ok(self.detach());
        };
        let mut host = vec![E::ZERO; buf.len()];
        buf.driver()
            .download(buf.ptr(), bytemuck::cast_slice_mut(&mut host))
            .map_err(|e| Error::Device {
                op: "to_host",
                detail: format!(
                    "downloading {} elements from {}: {e}",
                    buf.len(),
                    self.device()
                ),
            })?;
        Ok(Tensor::from_parts(
            Arc::new(Storage::new(host)),
            self.layout().clone(),
            false,
            None,
        ))
    }

    /// A contiguous copy of this tensor's elements in fresh memory on the GPU `device`.
    fn upload_raw(&self, device: Device) -> Result<Tensor<E>> {
        if E::DTYPE != DType::F32 {
            return Err(Error::Device {
                op: "to_device",
                detail: format!(
                    "{} tensors stay on the CPU: {device} holds f32 only (cast to f32 first)",
                    E::DTYPE
                ),
            });
        }
        let driver = crate::gpu::registry::driver(device)?;
        let host = self.try_to_vec()?;
        let buf = GpuBuffer::alloc(driver, host.len(), std::mem::size_of::<E>())?;
        if !host.is_empty() {
            buf.driver()
                .upload(buf.ptr(), bytemuck::cast_slice(&host))
                .map_err(|e| Error::Device {
                    op: "to_device",
                    detail: format!("uploading {} elements to {device}: {e}", host.len()),
                })?;
        }
        Ok(Tensor::from_parts(
            Arc::new(Storage::gpu(buf, device)),
            Layout::contiguous(self.shape()),
            false,
            None,
        ))
    }
}
