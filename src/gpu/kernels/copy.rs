//! Launch wrappers for `ptx/copy.cu`: strided copies between views and fills.

use super::{count, linear_config, pack_view, COPY};
use crate::error::Result;
use crate::gpu::driver::{DevicePtr, Driver, KernelArg};

/// `dst[view] = src[view]` over `shape`, with element strides `dst_strides` and
/// `src_strides` (either may be negative or 0; a 0 destination stride makes the writes race,
/// so callers give the destination distinct offsets). Used for contiguous copies of views,
/// and for concat / pad / narrow's backward by copying into sub-views of the destination.
pub fn strided_copy_f32(
    driver: &dyn Driver,
    dst: DevicePtr,
    dst_strides: &[isize],
    src: DevicePtr,
    src_strides: &[isize],
    shape: &[usize],
) -> Result<()> {
    copy(
        "strided_copy_f32",
        driver,
        dst,
        dst_strides,
        src,
        src_strides,
        shape,
    )
}

/// [`strided_copy_f32`] from a bf16 source to an f32 destination (exact).
pub fn strided_copy_bf16_f32(
    driver: &dyn Driver,
    dst: DevicePtr,
    dst_strides: &[isize],
    src: DevicePtr,
    src_strides: &[isize],
    shape: &[usize],
) -> Result<()> {
    copy(
        "strided_copy_bf16_f32",
        driver,
        dst,
        dst_strides,
        src,
        src_strides,
        shape,
    )
}

/// [`strided_copy_f32`] from an f32 source to a bf16 destination, rounding to nearest even.
pub fn strided_copy_f32_bf16(
    driver: &dyn Driver,
    dst: DevicePtr,
    dst_strides: &[isize],
    src: DevicePtr,
    src_strides: &[isize],
    shape: &[usize],
) -> Result<()> {
    copy(
        "strided_copy_f32_bf16",
        driver,
        dst,
        dst_strides,
        src,
        src_strides,
        shape,
    )
}

fn copy(
    kernel: &'static str,
    driver: &dyn Driver,
    dst: DevicePtr,
    dst_strides: &[isize],
    src: DevicePtr,
    src_strides: &[isize],
    shape: &[usize],
) -> Result<()> {
    let (n, view) = pack_view(kernel, shape, &[dst_strides, src_strides])?;
    if n == 0 {
        return Ok(());
    }
    let mut args = vec![KernelArg::Ptr(dst), KernelArg::Ptr(src), KernelArg::U32(n)];
    args.extend(view);
    driver.launch(&COPY, kernel, linear_config(n), &args)
}

/// `dst[0..n) = value` (contiguous f32).
pub fn fill_f32(driver: &dyn Driver, dst: DevicePtr, n: usize, value: f32) -> Result<()> {
    let n = count("fill_f32", "n", n)?;
    if n == 0 {
        return Ok(());
    }
    let args = [
        KernelArg::Ptr(dst),
        KernelArg::U32(n),
        KernelArg::F32(value),
    ];
    driver.launch(&COPY, "fill_f32", linear_config(n), &args)
}
