//! Device buffers for the tests that run kernels through a `Driver`.

use tarflow::gpu::{DevicePtr, Driver};

/// A device copy of `bytes` (at least 16 bytes are allocated, so empty inputs still get a
/// valid address).
pub fn upload_bytes(d: &dyn Driver, bytes: &[u8]) -> DevicePtr {
    let p = d.alloc(bytes.len().max(16)).expect("alloc");
    if !bytes.is_empty() {
        d.upload(p, bytes).expect("upload");
    }
    p
}

/// A device copy of `values`.
pub fn upload<T: bytemuck::Pod>(d: &dyn Driver, values: &[T]) -> DevicePtr {
    upload_bytes(d, bytemuck::cast_slice(values))
}

/// `n` values of `T` read back from `p`.
pub fn download<T: bytemuck::Pod>(d: &dyn Driver, p: DevicePtr, n: usize) -> Vec<T> {
    let mut out = vec![T::zeroed(); n];
    if n > 0 {
        d.download(p, bytemuck::cast_slice_mut(&mut out))
            .expect("download");
    }
    out
}
