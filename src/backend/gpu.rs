//! The GPU backend: the device half of each op, for tensors on a GPU-like device (CUDA or the
//! PTX interpreter). `src/ops` checks shapes and records autograd once for every device, then
//! calls in here with operands that already live on one GPU device; each function sizes the
//! launch, allocates a fresh contiguous output on that device and launches the kernels of
//! [`crate::gpu::kernels`] through the device's [`Driver`]. Nothing here reads device memory
//! on the host.
//!
//! Device memory holds f32 only ([`Tensor::to_device`] refuses other element types), so the
//! element type parameter is carried for the signatures alone: every buffer is f32.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::kernels::{self as k, BinaryOp, ReduceOp, UnaryOp};
use crate::gpu::{DevicePtr, Driver};
use crate::optim::AdamWConfig;
use crate::tensor::layout::contiguous_strides;
use crate::tensor::storage::{GpuBuffer, Storage, StorageData};
use crate::tensor::{Device, Element, Layout, Tensor};

/// Bytes of one device element (f32).
const ELEM: usize = 4;

/// The driver of a tensor on a GPU device, and the address of its first element.
fn operand<E: Element>(t: &Tensor<E>) -> Result<(Arc<dyn Driver>, DevicePtr)> {
    match t.storage().data() {
        StorageData::Gpu(buf) => Ok((
            buf.driver().clone(),
            buf.ptr().offset((t.layout().offset() * ELEM) as u64),
        )),
        StorageData::Host(_) => Err(Error::Device {
            op: "gpu backend",
            detail: "internal error: a host tensor reached a GPU kernel".to_string(),
        }),
    }
}

/// The address of a tensor's first element (its driver is the caller's).
fn ptr<E: Element>(t: &Tensor<E>) -> Result<DevicePtr> {
    Ok(operand(t)?.1)
}

/// A fresh contiguous tensor of `shape` on `device`, contents unspecified.
pub(crate) fn empty<E: Element>(
    driver: &Arc<dyn Driver>,
    device: Device,
    shape: &[usize],
) -> Result<Tensor<E>> {
    let n: usize = shape.iter().product();
    let buf = GpuBuffer::alloc(driver.clone(), n, ELEM)?;
    Ok(Tensor::from_parts(
        Arc::new(Storage::gpu(buf, device)),
        Layout::contiguous(shape),
        false,
        None,
    ))
}

/// A tensor of `shape` on `device` with every element `value`.
pub(crate) fn full<E: Element>(device: Device, shape: &[usize], value: f64) -> Result<Tensor<E>> {
    let driver = crate::gpu::registry::driver(device)?;
    let out = empty(&driver, device, shape)?;
    k::fill_f32(&*driver, ptr(&out)?, out.numel(), value as f32)?;
    Ok(out)
}

/// `op(x)` elementwise.
pub(crate) fn unary<E: Element>(op: UnaryOp, x: &Tensor<E>) -> Result<Tensor<E>> {
    let (driver, xp) = operand(x)?;
    let out = empty(&driver, x.device(), x.shape())?;
    let (shape, st) = k::merge_dims(x.shape(), &[x.strides()]);
    k::unary_f32(&*driver, op, ptr(&out)?, xp, &st[0], &shape)?;
    Ok(out)
}

/// `op(a, b)` over the broadcast `shape`, the operands seen through `la`, `lb` (their layouts
/// broadcast to `shape`).
pub(crate) fn binary<E: Element>(
    op: BinaryOp,
    shape: &[usize],
    a: &Tensor<E>,
    la: &Layout,
    b: &Tensor<E>,
    lb: &Layout,
) -> Result<Tensor<E>> {
    let (driver, ap) = operand(a)?;
    let bp = ptr(b)?;
    let out = empty(&driver, a.device(), shape)?;
    let (ms, st) = k::merge_dims(shape, &[la.strides(), lb.strides()]);
    k::binary_f32(&*driver, op, ptr(&out)?, ap, &st[0], bp, &st[1], &ms)?;
    Ok(out)
}

/// Copies the view `src` into the view `dst` (same shape) on one device.
pub(crate) fn copy_into<E: Element>(dst: &Tensor<E>, src: &Tensor<E>) -> Result<()> {
    let (driver, sp) = operand(src)?;
    let dp = ptr(dst)?;
    let (shape, st) = k::merge_dims(src.shape(), &[dst.strides(), src.strides()]);
    k::strided_copy_f32(&*driver, dp, &st[0], sp, &st[1], &shape)
}

/// A contiguous copy of `x`.
pub(crate) fn contiguous<E: Element>(x: &Tensor<E>) -> Result<Tensor<E>> {
    let (driver, _) = operand(x)?;
    let out = empty(&driver, x.device(), x.shape())?;
    copy_into(&out, x)?;
    Ok(out)
}

/// `x` itself when contiguous, else a contiguous copy (no autograd).
fn dense<E: Element>(x: &Tensor<E>) -> Result<Tensor<E>> {
    if x.is_contiguous() {
        Ok(x.clone())
    } else {
        contiguous(x)
    }
}

/// Sum (or max) over `axes` (sorted, distinct), returning the reduced tensor of `out_shape`.
/// Reduced axes that sit next to each other in the middle of a contiguous tensor are reduced
/// in place; any other pattern first moves the reduced axes last.
pub(crate) fn reduce<E: Element>(
    x: &Tensor<E>,
    axes: &[usize],
    max: bool,
    out_shape: &[usize],
) -> Result<Tensor<E>> {
    let (driver, _) = operand(x)?;
    let op = if max { ReduceOp::Max } else { ReduceOp::Sum };
    let shape = x.shape();
    let out = empty(&driver, x.device(), out_shape)?;
    let run = axes.windows(2).all(|w| w[1] == w[0] + 1);
    let (src, outer, r, inner) = if run && !axes.is_empty() {
        let (lo, hi) = (axes[0], axes[axes.len() - 1] + 1);
        let p = |s: &[usize]| s.iter().product::<usize>();
        (
            dense(x)?,
            p(&shape[..lo]),
            p(&shape[lo..hi]),
            p(&shape[hi..]),
        )
    } else {
        let kept: Vec<usize> = (0..shape.len()).filter(|a| !axes.contains(a)).collect();
        let perm: Vec<usize> = kept.iter().chain(axes).copied().collect();
        let moved = x.view_raw(x.layout().permute(&perm));
        let outer: usize = kept.iter().map(|&a| shape[a]).product();
        let r: usize = axes.iter().map(|&a| shape[a]).product();
        (dense(&moved)?, outer, r, 1)
    };
    let scratch_len = k::reduce_scratch_len(outer, r, inner);
    let scratch = if scratch_len > 0 {
        Some(GpuBuffer::alloc(driver.clone(), scratch_len, ELEM)?)
    } else {
        None
    };
    k::reduce_axis_f32(
        &*driver,
        op,
        false,
        ptr(&out)?,
        ptr(&src)?,
        scratch.as_ref().map(GpuBuffer::ptr),
        outer,
        r,
        inner,
        false,
    )?;
    Ok(out)
}

/// `t` seen through `l` with strides the GEMM kernel takes (none negative): the view itself,
/// or a contiguous copy of it when it walks backwards (a flipped axis).
fn gemm_operand<E: Element>(t: &Tensor<E>, l: &Layout) -> Result<Tensor<E>> {
    let view = t.view_raw(l.clone());
    if l.strides().iter().all(|&s| s >= 0) {
        Ok(view)
    } else {
        contiguous(&view)
    }
}

/// A 2-d operand's row and column strides as the kernel's unsigned strides.
fn gemm_strides(rs: isize, cs: isize) -> Option<(usize, usize)> {
    Some((usize::try_from(rs).ok()?, usize::try_from(cs).ok()?))
}

/// `a @ b` over the last two axes with the batch axes of `out_shape[..rank - 2]`; `la`, `lb`
/// are the operands' layouts broadcast to `[batch.., m, k]` and `[batch.., k, n]`.
pub(crate) fn matmul<E: Element>(
    a: &Tensor<E>,
    la: &Layout,
    b: &Tensor<E>,
    lb: &Layout,
    out_shape: &[usize],
) -> Result<Tensor<E>> {
    let (driver, _) = operand(a)?;
    let out = empty(&driver, a.device(), out_shape)?;
    let r = out_shape.len();
    let (m, n) = (out_shape[r - 2], out_shape[r - 1]);
    let kk = la.shape()[r - 1];
    let (a, b) = (gemm_operand(a, la)?, gemm_operand(b, lb)?);
    let (la, lb) = (a.layout().clone(), b.layout().clone());
    let batch = &out_shape[..r - 2];
    let cst = contiguous_strides(out_shape);
    let (bshape, bst) = k::merge_dims(
        batch,
        &[
            &la.strides()[..r - 2],
            &lb.strides()[..r - 2],
            &cst[..r - 2],
        ],
    );
    // One launch per index of the merged batch axes but the last, which the grid covers.
    let (last, outer_shape) = match bshape.split_last() {
        Some((&l, rest)) => (l, rest.to_vec()),
        None => (1, Vec::new()),
    };
    let last_st = |i: usize| bst[i].last().copied().unwrap_or(0) as usize;
    let (a_rs, a_cs) = gemm_strides(la.strides()[r - 2], la.strides()[r - 1]).expect("fixed");
    let (b_rs, b_cs) = gemm_strides(lb.strides()[r - 2], lb.strides()[r - 1]).expect("fixed");
    let (ap, bp, cp) = (ptr(&a)?, ptr(&b)?, ptr(&out)?);
    let outer_n: usize = outer_shape.iter().product();
    for o in 0..outer_n {
        // Element offsets of this outer batch index in each operand.
        let (mut rem, mut offs) = (o, [0isize; 3]);
        for d in (0..outer_shape.len()).rev() {
            let i = (rem % outer_shape[d]) as isize;
            rem /= outer_shape[d];
            for (t, off) in offs.iter_mut().enumerate() {
                *off += i * bst[t][d];
            }
        }
        let at =
            |p: DevicePtr, off: isize| DevicePtr((p.0 as i64 + off as i64 * ELEM as i64) as u64);
        gemm(
            &driver,
            &k::GemmF32 {
                m,
                n,
                k: kk,
                batch: last,
                c: at(cp, offs[2]),
                c_rs: n,
                c_bs: last_st(2),
                a: at(ap, offs[0]),
                a_rs,
                a_cs,
                a_bs: last_st(0),
                b: at(bp, offs[1]),
                b_rs,
                b_cs,
                b_bs: last_st(1),
                bias: None,
                alpha: 1.0,
                beta: 0.0,
            },
            None,
        )?;
    }
    Ok(out)
}

/// `x2 @ w^T + bias` for `x2` `[rows, in]`, `w` `[out, in]`: one GEMM with the bias in its
/// epilogue; with `keep_x`, also the bf16 copy of `x2` the GEMM made when this thread's
/// matrix products are bf16 (see [`Bf16Rows`]; `None` in f32).
pub(crate) fn linear<E: Element>(
    x2: &Tensor<E>,
    w: &Tensor<E>,
    bias: Option<&Tensor<E>>,
    keep_x: bool,
) -> Result<WithKeptInput<Tensor<E>>> {
    let (driver, _) = operand(x2)?;
    let out = empty(&driver, x2.device(), &[x2.shape()[0], w.shape()[0]])?;
    let kept = linear_into(x2, w, bias, &out, None, keep_x)?;
    Ok((out, kept))
}

/// Softmax (or log-softmax) over the last axis of `x`, rows of `d`.
pub(crate) fn softmax_last<E: Element>(x: &Tensor<E>, log: bool) -> Result<Tensor<E>> {
    let (driver, _) = operand(x)?;
    let x = dense(x)?;
    let d = *x.shape().last().unwrap_or(&1);
    let rows = x.numel().checked_div(d).unwrap_or(0);
    let out = empty(&driver, x.device(), x.shape())?;
    k::softmax_rows_f32(&*driver, ptr(&out)?, ptr(&x)?, rows, d, log)?;
    Ok(out)
}

/// The input gradient of [`softmax_last`] from its output `y` and the output gradient `g`.
pub(crate) fn softmax_last_backward<E: Element>(
    y: &Tensor<E>,
    g: &Tensor<E>,
    log: bool,
) -> Result<Tensor<E>> {
    let (driver, _) = operand(y)?;
    let (y, g) = (dense(y)?, dense(g)?);
    let d = *y.shape().last().unwrap_or(&1);
    let rows = y.numel().checked_div(d).unwrap_or(0);
    let dx = empty(&driver, y.device(), y.shape())?;
    k::softmax_bwd_rows_f32(&*driver, ptr(&dx)?, ptr(&y)?, ptr(&g)?, rows, d, log)?;
    Ok(dx)
}

/// Layer normalisation over rows of `d`; with `save`, also each row's `[mean, rstd]`.
pub(crate) fn layer_norm<E: Element>(
    x: &Tensor<E>,
    weight: Option<&Tensor<E>>,
    bias: Option<&Tensor<E>>,
    d: usize,
    eps: f64,
    save: bool,
) -> Result<(Tensor<E>, Option<Tensor<E>>)> {
    let (driver, _) = operand(x)?;
    let x = dense(x)?;
    let (w, b) = (weight.map(dense).transpose()?, bias.map(dense).transpose()?);
    let rows = x.numel().checked_div(d).unwrap_or(0);
    let y = empty(&driver, x.device(), x.shape())?;
    let stats = if save {
        Some(empty(&driver, x.device(), &[rows, 2])?)
    } else {
        None
    };
    k::layer_norm_fwd_f32(
        &*driver,
        ptr(&y)?,
        stats.as_ref().map(ptr).transpose()?,
        ptr(&x)?,
        w.as_ref().map(ptr).transpose()?,
        b.as_ref().map(ptr).transpose()?,
        rows,
        d,
        eps as f32,
    )?;
    Ok((y, stats))
}

/// Rows of layer normalisation's parameter-gradient partials per chunk: fixed, so the order
/// of the sums depends on the shape alone.
const LN_CHUNK: usize = 256;

/// Layer normalisation's gradients `(dx, dweight, dbias)`, each only when asked for.
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub(crate) fn layer_norm_backward<E: Element>(
    x: &Tensor<E>,
    g: &Tensor<E>,
    stats: &Tensor<E>,
    weight: Option<&Tensor<E>>,
    d: usize,
    want: [bool; 3],
) -> Result<(Option<Tensor<E>>, Option<Tensor<E>>, Option<Tensor<E>>)> {
    let (driver, _) = operand(x)?;
    let dev = x.device();
    let (x, g) = (dense(x)?, dense(g)?);
    let w = weight.map(dense).transpose()?;
    let rows = x.numel().checked_div(d).unwrap_or(0);
    let dx = if want[0] {
        let dx = empty(&driver, dev, x.shape())?;
        k::layer_norm_bwd_dx_f32(
            &*driver,
            ptr(&dx)?,
            ptr(&x)?,
            ptr(&g)?,
            ptr(stats)?,
            w.as_ref().map(ptr).transpose()?,
            rows,
            d,
        )?;
        Some(dx)
    } else {
        None
    };
    let chunks = rows.div_ceil(LN_CHUNK).max(1);
    let partial = |on: bool| -> Result<Option<Tensor<E>>> {
        if !on {
            return Ok(None);
        }
        // Zeroed, so that no rows at all still sum to 0.
        Ok(Some(full(dev, &[chunks, d], 0.0)?))
    };
    let (pw, pb) = (partial(want[1])?, partial(want[2])?);
    k::layer_norm_bwd_params_f32(
        &*driver,
        k::LayerNormParamGrads {
            dweight: pw.as_ref().map(ptr).transpose()?,
            dbias: pb.as_ref().map(ptr).transpose()?,
        },
        ptr(&x)?,
        ptr(&g)?,
        ptr(stats)?,
        rows,
        d,
        LN_CHUNK,
    )?;
    let finish = |p: Option<Tensor<E>>| -> Result<Option<Tensor<E>>> {
        p.map(|p| reduce(&p, &[0], false, &[d])).transpose()
    };
    Ok((dx, finish(pw)?, finish(pb)?))
}

/// Uploads `values` (u32) into a fresh device buffer.
fn upload_u32(driver: &Arc<dyn Driver>, values: &[u32]) -> Result<GpuBuffer> {
    let buf = GpuBuffer::alloc(driver.clone(), values.len().max(1), 4)?;
    if !values.is_empty() {
        driver.upload(buf.ptr(), bytemuck::cast_slice(values))?;
    }
    Ok(buf)
}

/// `x` indexed along `axis` by `indices` (checked by the caller), as `[outer, n, inner]`.
pub(crate) fn index_select<E: Element>(
    x: &Tensor<E>,
    axis: usize,
    indices: &[usize],
    out_shape: &[usize],
) -> Result<Tensor<E>> {
    let (driver, _) = operand(x)?;
    let x = dense(x)?;
    let s = x.shape();
    let outer: usize = s[..axis].iter().product();
    let inner: usize = s[axis + 1..].iter().product();
    let idx = upload_u32(&driver, &k::u32_indices("index_select", indices, s[axis])?)?;
    let out = empty(&driver, x.device(), out_shape)?;
    k::index_select_f32(
        &*driver,
        ptr(&out)?,
        ptr(&x)?,
        idx.ptr(),
        outer,
        s[axis],
        indices.len(),
        inner,
    )?;
    Ok(out)
}

/// The adjoint of [`index_select`]: `g` `[outer, n, inner]` summed into zeros of `shape` at
/// `indices` along `axis`, in a fixed order.
pub(crate) fn index_add<E: Element>(
    g: &Tensor<E>,
    axis: usize,
    indices: &[usize],
    shape: &[usize],
) -> Result<Tensor<E>> {
    let (driver, _) = operand(g)?;
    let g = dense(g)?;
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let plan = k::scatter_plan(indices, shape[axis])?;
    let (order, starts) = (
        upload_u32(&driver, &plan.order)?,
        upload_u32(&driver, &plan.starts)?,
    );
    let out = full(g.device(), shape, 0.0)?;
    k::index_add_f32(
        &*driver,
        ptr(&out)?,
        ptr(&g)?,
        order.ptr(),
        starts.ptr(),
        outer,
        shape[axis],
        indices.len(),
        inner,
    )?;
    Ok(out)
}

/// `src` placed at `start` along `axis` inside zeros of `shape`.
pub(crate) fn pad_axis<E: Element>(
    src: &Tensor<E>,
    axis: usize,
    start: usize,
    shape: &[usize],
) -> Result<Tensor<E>> {
    let out = full(src.device(), shape, 0.0)?;
    let len = src.shape()[axis];
    let window = out.view_raw(out.layout().narrow(axis, start, len));
    copy_into(&window, src)?;
    Ok(out)
}

/// The operands side by side along `axis` into a fresh tensor of `shape`.
pub(crate) fn concat<E: Element>(
    parts: &[&Tensor<E>],
    axis: usize,
    shape: &[usize],
) -> Result<Tensor<E>> {
    let (driver, _) = operand(parts[0])?;
    let out = empty(&driver, parts[0].device(), shape)?;
    let mut start = 0;
    for p in parts {
        let len = p.shape()[axis];
        copy_into(&out.view_raw(out.layout().narrow(axis, start, len)), p)?;
        start += len;
    }
    Ok(out)
}

/// One AdamW step on contiguous `param`, `m`, `v` from `grad`, in place.
pub(crate) fn adamw<E: Element>(
    param: &Tensor<E>,
    grad: &Tensor<E>,
    m: &Tensor<E>,
    v: &Tensor<E>,
    config: &AdamWConfig,
    lr: f64,
    step: u64,
) -> Result<()> {
    let (driver, pp) = operand(param)?;
    let g = dense(grad)?;
    let coeffs = k::AdamWCoeffs::new(config, lr, step)?;
    k::adamw_f32(
        &*driver,
        pp,
        ptr(m)?,
        ptr(v)?,
        ptr(&g)?,
        param.numel(),
        &coeffs,
    )
}

/// `shadow = decay * shadow + (1 - decay) * param`, in place.
pub(crate) fn ema<E: Element>(shadow: &Tensor<E>, param: &Tensor<E>, decay: f64) -> Result<()> {
    let (driver, sp) = operand(shadow)?;
    let p = dense(param)?;
    k::ema_f32(&*driver, sp, ptr(&p)?, shadow.numel(), decay)
}

/// Elements per partial sum of [`sum_squares`]: fixed, so the order depends on the size alone.
const SUMSQ_CHUNK: usize = 4096;

/// The sum of squares of `x` in f64 (one download of 8 bytes).
pub(crate) fn sum_squares<E: Element>(x: &Tensor<E>) -> Result<f64> {
    let (driver, _) = operand(x)?;
    let x = dense(x)?;
    let n = x.numel();
    if n == 0 {
        return Ok(0.0);
    }
    let parts = k::sum_squares_partials(n, SUMSQ_CHUNK);
    let partial = GpuBuffer::alloc(driver.clone(), parts, 8)?;
    let total = GpuBuffer::alloc(driver.clone(), 1, 8)?;
    k::sum_squares_partial_f32(&*driver, partial.ptr(), ptr(&x)?, n, SUMSQ_CHUNK)?;
    k::sum_f64(&*driver, total.ptr(), partial.ptr(), parts)?;
    let mut bytes = [0u8; 8];
    driver.download(total.ptr(), &mut bytes)?;
    Ok(f64::from_le_bytes(bytes))
}

/// The permutation moving `axis` of a rank-`rank` tensor last, and its inverse.
fn axis_last(axis: usize, rank: usize) -> (Vec<usize>, Vec<usize>) {
    let perm: Vec<usize> = (0..rank).filter(|&a| a != axis).chain([axis]).collect();
    let mut inv = vec![0; rank];
    for (i, &p) in perm.iter().enumerate() {
        inv[p] = i;
    }
    (perm, inv)
}

/// Softmax (or log-softmax) over `axis`: over rows when it is the last axis, otherwise with
/// the axis moved last and the result moved back.
pub(crate) fn softmax<E: Element>(x: &Tensor<E>, axis: usize, log: bool) -> Result<Tensor<E>> {
    if axis + 1 == x.rank() {
        return softmax_last(x, log);
    }
    let (perm, inv) = axis_last(axis, x.rank());
    let y = softmax_last(&x.view_raw(x.layout().permute(&perm)), log)?;
    contiguous(&y.view_raw(y.layout().permute(&inv)))
}

/// The input gradient of [`softmax`] over `axis` from its output `y`.
pub(crate) fn softmax_backward<E: Element>(
    y: &Tensor<E>,
    g: &Tensor<E>,
    axis: usize,
    log: bool,
) -> Result<Tensor<E>> {
    if axis + 1 == y.rank() {
        return softmax_last_backward(y, g, log);
    }
    let (perm, inv) = axis_last(axis, y.rank());
    let moved = |t: &Tensor<E>| t.view_raw(t.layout().permute(&perm));
    let dx = softmax_last_backward(&moved(y), &moved(g), log)?;
    contiguous(&dx.view_raw(dx.layout().permute(&inv)))
}

/// `t` as a view the attention kernels read in place: `t` itself, or a contiguous copy when a
/// stride is negative (a flipped axis), with its `[B, H, N, D]` element strides.
fn attn_operand<E: Element>(t: &Tensor<E>) -> Result<(Tensor<E>, k::AttnView)> {
    let t = if t.strides().iter().all(|&s| s >= 0) {
        t.clone()
    } else {
        contiguous(t)?
    };
    let st = t.strides();
    let strides = [st[0], st[1], st[2], st[3]].map(|s| s as usize);
    let view = k::AttnView {
        ptr: ptr(&t)?,
        strides,
    };
    Ok((t, view))
}

/// Where the fused attention writes its output and gradients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AttnLayout {
    /// `attention`: the output `[B, H, Nq, Dv]` and gradients `[B, H, N, D]`, each contiguous.
    Heads,
    /// `attention_qkv`: the output `[B, N, H Dv]` (heads side by side) and one `[B, N, 3 H Dh]`
    /// gradient holding dq, dk, dv where q, k, v sit in the projection.
    Qkv,
}

/// The `[B, H, n, d]` view of a fresh buffer laid out as `layout` says; `part` picks q, k
/// or v (0, 1, 2) of a fused `[B, n, 3 H d]` buffer.
fn attn_dest(
    layout: AttnLayout,
    base: DevicePtr,
    h: usize,
    n: usize,
    d: usize,
    part: usize,
) -> k::AttnView {
    match layout {
        AttnLayout::Heads => k::AttnView {
            ptr: base,
            strides: [h * n * d, n * d, d, 1],
        },
        AttnLayout::Qkv => k::AttnView {
            ptr: base.offset((part * h * d * ELEM) as u64),
            strides: [n * 3 * h * d, d, 3 * h * d, 1],
        },
    }
}

/// What the fused attention's backward reads of its forward, besides the log-sum-exp.
pub(crate) enum AttnSaved<E: Element> {
    /// f32 precision: the `[B, H, N, D]` views of q, k, v the forward read in place (so a
    /// fused projection they were cut from stays alive) and of its output.
    F32 {
        q: Tensor<E>,
        k: Tensor<E>,
        v: Tensor<E>,
        o: Tensor<E>,
    },
    /// bf16 precision: contiguous `[B, H, N, D]` bf16 copies of q, k, v and the token-major
    /// `[B * N, H * Dv]` bf16 copy of the output (the rows an output projection can take as
    /// its bf16 input, sharing the buffer), read by the `_bf16s` backward kernels; no f32
    /// operand is kept.
    Bf16 {
        q: GpuBuffer,
        k: GpuBuffer,
        v: GpuBuffer,
        o: Bf16Rows,
    },
}

/// What the fused attention forward returns.
pub(crate) struct AttnForward<E: Element> {
    /// The output, shaped as the layout says.
    pub out: Tensor<E>,
    /// The base-2 log-sum-exp `[B, H, Nq]`.
    pub lse: Tensor<E>,
    /// The backward's operands, when asked for.
    pub saved: Option<AttnSaved<E>>,
}

/// The forward's arithmetic: the bf16 tensor-core kernels when this thread's matrix
/// products are bf16 ([`crate::backend::matmul_precision`]) and they take the head dims
/// (`Dh == Dv`, 64 or 128); f32 otherwise, bit for bit the f32 path.
fn attn_precision(dims: &k::AttnDims) -> k::AttnPrecision {
    let bf16 = crate::backend::current_matmul_precision() == crate::backend::Precision::Bf16;
    if bf16 && dims.dh == dims.dv && matches!(dims.dh, 64 | 128) {
        k::AttnPrecision::Bf16
    } else {
        k::AttnPrecision::F32
    }
}

/// A fresh contiguous bf16 copy of `t` (rounded to nearest even), in a buffer of 2-byte
/// elements.
fn bf16_copy<E: Element>(t: &Tensor<E>) -> Result<GpuBuffer> {
    let (driver, p) = operand(t)?;
    let buf = GpuBuffer::alloc(driver.clone(), t.numel().max(1), 2)?;
    if t.numel() > 0 {
        let dst = contiguous_strides(t.shape());
        k::strided_copy_f32_bf16(&*driver, buf.ptr(), &dst, p, t.strides(), t.shape())?;
    }
    Ok(buf)
}

/// Fused attention forward of the `[B, H, N, D]` views `q`, `k`, `v` (read in place): the
/// output (shaped as `layout` says), the base-2 log-sum-exp `[B, H, Nq]` the backward needs
/// (see `ptx/attention.cu`) and, with `save`, the operands the backward reads: the f32
/// views, or under bf16 precision (see [`attn_precision`]) bf16 copies of q, k, v and the
/// output, so that the f32 operands can be freed as soon as the caller drops them.
pub(crate) fn attention_forward<E: Element>(
    q: &Tensor<E>,
    k: &Tensor<E>,
    v: &Tensor<E>,
    dims: k::AttnDims,
    scores: k::AttnScores,
    layout: AttnLayout,
    save: bool,
) -> Result<AttnForward<E>> {
    let (driver, _) = operand(q)?;
    let dev = q.device();
    let k::AttnDims { b, h, nq, dv, .. } = dims;
    let out_shape = match layout {
        AttnLayout::Heads => vec![b, h, nq, dv],
        AttnLayout::Qkv => vec![b, nq, h * dv],
    };
    let out = empty(&driver, dev, &out_shape)?;
    let lse = empty(&driver, dev, &[b, h, nq])?;
    let o = match layout {
        AttnLayout::Heads => attn_dest(layout, ptr(&out)?, h, nq, dv, 0),
        // The output is [B, N, H Dv], not part of a fused buffer.
        AttnLayout::Qkv => k::AttnView {
            ptr: ptr(&out)?,
            strides: [nq * h * dv, dv, h * dv, 1],
        },
    };
    let precision = attn_precision(&dims);
    // Under bf16 with a backward to come, q, k and v are rounded once into the contiguous
    // bf16 copies the backward keeps, and the forward loads those by cp.async; without one,
    // the f32-input kernel reads q, k, v in place. Both round alike, so the results agree.
    let copies = match (precision, save) {
        (k::AttnPrecision::Bf16, true) => Some((bf16_copy(q)?, bf16_copy(k)?, bf16_copy(v)?)),
        _ => None,
    };
    let ((_q, qv), (_k, kv), (_v, vv)) = (attn_operand(q)?, attn_operand(k)?, attn_operand(v)?);
    let (qv, kv, vv, precision) = match &copies {
        Some((qb, kb, vb)) => {
            let heads = |buf: &GpuBuffer, n: usize, d: usize| k::AttnView {
                ptr: buf.ptr(),
                strides: [h * n * d, n * d, d, 1],
            };
            (
                heads(qb, nq, dims.dh),
                heads(kb, dims.nk, dims.dh),
                heads(vb, dims.nk, dv),
                k::AttnPrecision::Bf16Inputs,
            )
        }
        None => (qv, kv, vv, precision),
    };
    let fwd = k::AttnFwd {
        dims,
        scores,
        q: qv,
        k: kv,
        v: vv,
        o,
        lse: ptr(&lse)?,
        precision,
    };
    // With the bf16 copies, the kernel also writes the bf16 copy of the output the backward
    // reads, token-major [B, Nq, H, Dv], in the same pass.
    let o_bf16 = if copies.is_some() {
        let buf = GpuBuffer::alloc(driver.clone(), (b * h * nq * dv).max(8), 2)?;
        k::attn_fwd_saving_bf16(&*driver, &fwd, buf.ptr())?;
        Some(Bf16Rows {
            buf: Arc::new(buf),
            rows: b * nq,
            cols: h * dv,
            ld: h * dv,
        })
    } else {
        k::attn_fwd(&*driver, &fwd)?;
        None
    };
    let saved = if !save {
        None
    } else if let Some(((q, k, v), o)) = copies.zip(o_bf16) {
        Some(AttnSaved::Bf16 { q, k, v, o })
    } else {
        let o_heads = match layout {
            AttnLayout::Heads => out.clone(),
            // [B, N, H Dv] seen as [B, H, N, Dv]; a fresh contiguous output always reshapes.
            AttnLayout::Qkv => {
                let l = out
                    .layout()
                    .reshape(&[b, nq, h, dv])
                    .ok_or_else(|| Error::Device {
                        op: "attention",
                        detail: "internal error: the output cannot be seen by heads".to_string(),
                    })?;
                out.view_raw(l.permute(&[0, 2, 1, 3]))
            }
        };
        Some(AttnSaved::F32 {
            q: q.clone(),
            k: k.clone(),
            v: v.clone(),
            o: o_heads,
        })
    };
    Ok(AttnForward { out, lse, saved })
}

/// One query per (batch, head) over `nk` keys, no gradient (a KV-cached sampling step): the
/// decode kernels split the keys into chunks that run in parallel and merge them in order,
/// where the flash forward would walk every key in one block. `q` is `[B, H, 1, Dh]`, `k` and
/// `v` `[B, H, Nk, D]` views read in place; returns a fresh `[B, H, 1, Dv]`.
pub(crate) fn attention_decode<E: Element>(
    q: &Tensor<E>,
    k: &Tensor<E>,
    v: &Tensor<E>,
    dims: k::AttnDims,
    alpha: f32,
) -> Result<Tensor<E>> {
    attention_decode_append(q, k, v, None, dims, alpha)
}

/// [`attention_decode`] that first appends: `append = Some((k_new, v_new))`, `[B, H, 1, D]`,
/// are the keys and values of the cache's last position, which the kernels read from them
/// and write into `k` and `v` (views of the cache, writable there) in the same launch.
pub(crate) fn attention_decode_append<E: Element>(
    q: &Tensor<E>,
    k: &Tensor<E>,
    v: &Tensor<E>,
    append: Option<(&Tensor<E>, &Tensor<E>)>,
    dims: k::AttnDims,
    alpha: f32,
) -> Result<Tensor<E>> {
    let (driver, _) = operand(q)?;
    let k::AttnDims { b, h, nk, dv, .. } = dims;
    let out = empty(&driver, q.device(), &[b, h, 1, dv])?;
    let lse = GpuBuffer::alloc(driver.clone(), (b * h).max(1), ELEM)?;
    let scratch = GpuBuffer::alloc(
        driver.clone(),
        k::decode_scratch_len(b, h, nk, dv).max(1),
        ELEM,
    )?;
    let ((_q, qv), (_k, kv), (_v, vv)) = (attn_operand(q)?, attn_operand(k)?, attn_operand(v)?);
    if append.is_some() && (!_k.shares_storage(k) || !_v.shares_storage(v)) {
        // A flipped cache view was copied: the kernels would write the copy.
        return Err(Error::arg(
            "attention_append",
            "the cache views must have non-negative strides",
        ));
    }
    let new = append
        .map(|(kn, vn)| Ok::<_, Error>((attn_operand(kn)?, attn_operand(vn)?)))
        .transpose()?;
    k::attn_decode(
        &*driver,
        &k::AttnDecode {
            dims,
            alpha,
            q: qv,
            k: kv,
            v: vv,
            o: attn_dest(AttnLayout::Heads, ptr(&out)?, h, 1, dv, 0),
            lse: lse.ptr(),
            scratch: scratch.ptr(),
            append: new
                .as_ref()
                .map(|((_, kn), (_, vn))| k::DecodeAppend { k: *kn, v: *vn }),
        },
    )?;
    Ok(out)
}

/// Fused attention backward: from the forward's saved operands, the output gradient `g`
/// (a `[B, H, Nq, Dv]` view) and the saved `lse`, the gradients of q, k and v (three tensors
/// for [`AttnLayout::Heads`], one fused `[B, N, 3 H Dh]` for [`AttnLayout::Qkv`]), every
/// element written. bf16-saved operands run the tensor-core kernels for heads of 64
/// (`attn_bwd_*_bf16_d64`) and the `_bf16s` kernels (f32 arithmetic on the widened values)
/// for other head dims.
pub(crate) fn attention_backward<E: Element>(
    saved: &AttnSaved<E>,
    g: &Tensor<E>,
    lse: &Tensor<E>,
    dims: k::AttnDims,
    scores: k::AttnScores,
    layout: AttnLayout,
) -> Result<Vec<Tensor<E>>> {
    let (driver, _) = operand(g)?;
    let dev = g.device();
    let k::AttnDims {
        b,
        h,
        nq,
        nk,
        dh,
        dv,
    } = dims;
    // The f32 views (or copies of flipped ones) live until the launches are issued.
    let mut keep = Vec::new();
    let (storage, [qv, kv, vv, ov]) = match saved {
        AttnSaved::F32 { q, k, v, o } => {
            let ops = [
                attn_operand(q)?,
                attn_operand(k)?,
                attn_operand(v)?,
                attn_operand(o)?,
            ];
            let views = [ops[0].1, ops[1].1, ops[2].1, ops[3].1];
            keep.extend(ops.into_iter().map(|(t, _)| t));
            (k::AttnStorage::F32, views)
        }
        AttnSaved::Bf16 { q, k, v, o } => (
            // Heads of 64 (ImageNet64's) run every product on the tensor cores.
            if dh == 64 && dv == 64 {
                k::AttnStorage::Bf16TensorCores
            } else {
                k::AttnStorage::Bf16
            },
            [
                attn_dest(AttnLayout::Heads, q.ptr(), h, nq, dh, 0),
                attn_dest(AttnLayout::Heads, k.ptr(), h, nk, dh, 0),
                attn_dest(AttnLayout::Heads, v.ptr(), h, nk, dv, 0),
                // Token-major, as the forward kernels write it.
                k::AttnView {
                    ptr: o.buf.ptr(),
                    strides: [nq * h * dv, dv, h * dv, 1],
                },
            ],
        ),
    };
    let (_g, gv) = attn_operand(g)?;
    let delta = GpuBuffer::alloc(driver.clone(), (b * h * nq).max(1), ELEM)?;
    let grads: Vec<Tensor<E>> = match layout {
        AttnLayout::Heads => vec![
            empty(&driver, dev, &[b, h, nq, dh])?,
            empty(&driver, dev, &[b, h, nk, dh])?,
            empty(&driver, dev, &[b, h, nk, dv])?,
        ],
        AttnLayout::Qkv => vec![empty(&driver, dev, &[b, nq, 3 * h * dh])?],
    };
    let base = |i: usize| ptr(&grads[i.min(grads.len() - 1)]);
    k::attn_bwd_stored(
        &*driver,
        &k::AttnBwd {
            dims,
            scores,
            q: qv,
            k: kv,
            v: vv,
            o: ov,
            g: gv,
            lse: ptr(lse)?,
            delta: delta.ptr(),
            dq: attn_dest(layout, base(0)?, h, nq, dh, 0),
            dk: attn_dest(layout, base(1)?, h, nk, dh, 1),
            dv: attn_dest(layout, base(2)?, h, nk, dv, 2),
        },
        storage,
    )?;
    Ok(grads)
}

/// A `[B, L, D]` operand of the coupling kernels, read in place through its strides.
fn tokens<E: Element>(t: &Tensor<E>) -> Result<k::Tokens> {
    let s = t.strides();
    Ok(k::Tokens {
        ptr: ptr(t)?,
        strides: [s[0], s[1], s[2]],
    })
}

/// The affine coupling's packed output `[z (B * L * D), logdet (B)]` (see
/// [`Tensor::affine_coupling`]): one kernel, the parameters shifted by indexing.
pub(crate) fn affine_coupling<E: Element>(
    x: &Tensor<E>,
    alpha: &Tensor<E>,
    mu: &Tensor<E>,
    dims: [usize; 3],
    clip: Option<f64>,
) -> Result<Tensor<E>> {
    let (driver, _) = operand(x)?;
    let [b, l, d] = dims;
    let out = empty(&driver, x.device(), &[b * l * d + b])?;
    k::coupling_fwd_f32(
        &*driver,
        ptr(&out)?,
        tokens(x)?,
        tokens(alpha)?,
        tokens(mu)?,
        k::CouplingShape { dims, clip },
    )?;
    Ok(out)
}

/// The affine coupling's gradients `(dx, dalpha, dmu)` from the packed output's gradient
/// `g`, each only when `want` asks for it.
#[allow(clippy::type_complexity)]
pub(crate) fn affine_coupling_backward<E: Element>(
    g: &Tensor<E>,
    x: &Tensor<E>,
    alpha: &Tensor<E>,
    mu: &Tensor<E>,
    dims: [usize; 3],
    clip: Option<f64>,
    want: [bool; 3],
) -> Result<(Option<Tensor<E>>, Option<Tensor<E>>, Option<Tensor<E>>)> {
    let (driver, _) = operand(x)?;
    let g = dense(g)?;
    let fresh = |on: bool| -> Result<Option<Tensor<E>>> {
        on.then(|| empty(&driver, x.device(), &dims)).transpose()
    };
    let (dx, da, dm) = (fresh(want[0])?, fresh(want[1])?, fresh(want[2])?);
    k::coupling_bwd_f32(
        &*driver,
        k::CouplingGrads {
            dx: dx.as_ref().map(ptr).transpose()?,
            dalpha: da.as_ref().map(ptr).transpose()?,
            dmu: dm.as_ref().map(ptr).transpose()?,
        },
        ptr(&g)?,
        tokens(x)?,
        tokens(alpha)?,
        tokens(mu)?,
        k::CouplingShape { dims, clip },
    )?;
    Ok((dx, da, dm))
}

/// `x = z * exp(alpha) + mu`, the parameters first combined with the unconditional ones
/// when `guidance` is given (see [`Tensor::affine_coupling_inverse`]).
pub(crate) fn affine_coupling_inverse<E: Element>(
    z: &Tensor<E>,
    alpha: &Tensor<E>,
    mu: &Tensor<E>,
    guidance: Option<(&Tensor<E>, &Tensor<E>, f64)>,
) -> Result<Tensor<E>> {
    let (driver, _) = operand(z)?;
    let out = empty(&driver, z.device(), z.shape())?;
    affine_coupling_inverse_into(z, alpha, mu, guidance, &out)?;
    Ok(out)
}

/// [`affine_coupling_inverse`] written into the contiguous `out`, every operand read in place
/// when it is a `[B, L, D]` view (operands of other ranks are made contiguous first).
pub(crate) fn affine_coupling_inverse_into<E: Element>(
    z: &Tensor<E>,
    alpha: &Tensor<E>,
    mu: &Tensor<E>,
    guidance: Option<(&Tensor<E>, &Tensor<E>, f64)>,
    out: &Tensor<E>,
) -> Result<()> {
    let (driver, _) = operand(z)?;
    let s = z.shape();
    let dims = match *s {
        [b, l, d] => [b, l, d],
        _ => [1, 1, z.numel()],
    };
    // The operands as `[B, L, D]` views, kept alive until the launch is issued.
    let view = |t: &Tensor<E>| -> Result<(Tensor<E>, k::Tokens)> {
        if t.rank() == 3 {
            Ok((t.clone(), tokens(t)?))
        } else {
            let t = dense(t)?;
            let v = k::Tokens::contiguous(ptr(&t)?, dims);
            Ok((t, v))
        }
    };
    let ov = k::Tokens::contiguous(ptr(out)?, dims);
    let (zv, av, mv) = (view(z)?, view(alpha)?, view(mu)?);
    let u = guidance
        .map(|(au, mu_u, w)| Ok::<_, Error>((view(au)?, view(mu_u)?, w)))
        .transpose()?;
    let up = u.as_ref().map(|(au, mu_u, w)| (au.1, mu_u.1, *w as f32));
    k::coupling_inverse_f32(&*driver, ov, zv.1, av.1, mv.1, up, dims)
}

/// `out = x2 @ w^T + bias` as one GEMM, with an optional second epilogue stage: the GELU
/// (returning the pre-activation and the activation) or a residual added; with `keep_x`,
/// returns the bf16 copy of `x2` a bf16 GEMM made.
fn linear_into<E: Element>(
    x2: &Tensor<E>,
    w: &Tensor<E>,
    bias: Option<&Tensor<E>>,
    out: &Tensor<E>,
    epi: Option<k::GemmEpilogue>,
    keep_x: bool,
) -> Result<Option<Bf16Rows>> {
    product_into(x2, w, true, bias, out, epi, keep_x)
}

/// A row-major bf16 copy of an f32 `[rows, cols]` matrix on a device, its rows `ld`
/// elements apart (`ld` is `cols` padded to a multiple of 8, as the tensor-core GEMM's
/// 16-byte loads need): the left operand a bf16 GEMM converted, kept so that a linear
/// layer's backward can use its input in bf16 without keeping (or converting again) the
/// f32 input.
#[derive(Clone)]
pub(crate) struct Bf16Rows {
    /// The `rows * ld` bf16 elements (2 bytes each; at least 8), shared when the copy serves
    /// two backward passes (attention's output and the output projection's input).
    pub buf: Arc<GpuBuffer>,
    /// Rows of the matrix.
    pub rows: usize,
    /// Columns of the matrix (the elements of a row that are data).
    pub cols: usize,
    /// Elements from one row to the next.
    pub ld: usize,
}

/// What a linear forward returns: its output, and the bf16 copy of its input when it was
/// asked to keep one and made one.
pub(crate) type WithKeptInput<T> = (T, Option<Bf16Rows>);

/// `out = a @ op(b) + bias` for a `[m, k]` matrix `a` and `op(b)` `[k, n]` (`b` itself, or
/// `b^T` when `b_transposed`) as one GEMM into the contiguous `[m, n]` `out`, with an
/// optional epilogue stage; with `keep_a`, returns the bf16 copy of `a` a bf16 GEMM made.
fn product_into<E: Element>(
    a: &Tensor<E>,
    b: &Tensor<E>,
    b_transposed: bool,
    bias: Option<&Tensor<E>>,
    out: &Tensor<E>,
    epi: Option<k::GemmEpilogue>,
    keep_a: bool,
) -> Result<Option<Bf16Rows>> {
    let (driver, _) = operand(a)?;
    let (m, kk) = (a.shape()[0], a.shape()[1]);
    let n = if b_transposed {
        b.shape()[0]
    } else {
        b.shape()[1]
    };
    let (a, b) = (gemm_operand(a, a.layout())?, gemm_operand(b, b.layout())?);
    let bias = bias.map(dense).transpose()?;
    let (a_rs, a_cs) = gemm_strides(a.strides()[0], a.strides()[1]).expect("checked");
    let (b_rs, b_cs) = if b_transposed {
        // B = b^T: B[l, j] = b[j, l].
        gemm_strides(b.strides()[1], b.strides()[0])
    } else {
        gemm_strides(b.strides()[0], b.strides()[1])
    }
    .expect("checked");
    let g = k::GemmF32 {
        m,
        n,
        k: kk,
        batch: 1,
        c: ptr(out)?,
        c_rs: n,
        c_bs: 0,
        a: ptr(&a)?,
        a_rs,
        a_cs,
        a_bs: 0,
        b: ptr(&b)?,
        b_rs,
        b_cs,
        b_bs: 0,
        bias: bias.as_ref().map(ptr).transpose()?,
        alpha: 1.0,
        beta: 0.0,
    };
    gemm_keeping_a(&driver, &g, epi, keep_a)
}

/// Every f32 GEMM of the backend goes through here, at this thread's
/// [`crate::backend::Precision`]: the f32 kernels (with the epilogue fused), or the operands
/// rounded to bf16 and multiplied on the tensor cores.
fn gemm(driver: &Arc<dyn Driver>, g: &k::GemmF32, epi: Option<k::GemmEpilogue>) -> Result<()> {
    gemm_keeping_a(driver, g, epi, false).map(|_| ())
}

/// [`gemm`], returning with `keep_a` (for a single product, `batch == 1`) the bf16 copy of
/// A a bf16 GEMM made; `None` in f32, where no copy is made.
fn gemm_keeping_a(
    driver: &Arc<dyn Driver>,
    g: &k::GemmF32,
    epi: Option<k::GemmEpilogue>,
    keep_a: bool,
) -> Result<Option<Bf16Rows>> {
    match (crate::backend::current_matmul_precision(), epi) {
        (crate::backend::Precision::F32, None) => k::gemm_f32(&**driver, g).map(|()| None),
        (crate::backend::Precision::F32, Some(epi)) => {
            k::gemm_f32_epilogue(&**driver, g, epi).map(|()| None)
        }
        (crate::backend::Precision::Bf16, epi) => {
            gemm_bf16_operands(driver, g, epi, keep_a, None, None)
        }
    }
}

/// `g2^T @ x` (`[out, in]`) for the gradient `g2` (`[rows, out]`) of a linear layer's output
/// and the bf16 copy `x` (`[rows, in]`) its forward GEMM made of its input: the weight
/// gradient as a bf16 GEMM with `g2^T` converted as [`gemm`] converts it and `x` read where
/// it is as the right operand. That is bit for bit what `matmul(g2^T, x2)` gives under bf16
/// from the f32 input `x2`, which converts `x2` to these same values in this same layout;
/// it is bf16 whatever this thread's precision is now (the input was rounded in the
/// forward).
pub(crate) fn linear_weight_grad_bf16<E: Element>(
    g2: &Tensor<E>,
    x: &Bf16Rows,
) -> Result<Tensor<E>> {
    let (driver, _) = operand(g2)?;
    let (rows, out_f) = (g2.shape()[0], g2.shape()[1]);
    if rows != x.rows {
        return Err(Error::Device {
            op: "linear",
            detail: format!(
                "internal error: a gradient of {rows} rows for a saved input of {} rows",
                x.rows
            ),
        });
    }
    // As matmul_raw: an empty product, or an empty sum, is all zeros.
    if rows == 0 || out_f == 0 || x.cols == 0 {
        return Tensor::full_on(&[out_f, x.cols], 0.0, g2.device());
    }
    // g2's row-major bf16 copy read as a `T` operand is g2^T.
    let g16 = bf16_rows(g2)?;
    saved_a_product(
        &driver,
        g2.device(),
        SavedA::Transposed(&g16),
        RightOperand::<E>::Saved(x),
        None,
    )
}

/// [`gemm`] in bf16: A and B are copied into fresh bf16 buffers, each in the orientation it
/// is stored in (rows padded to a multiple of 8 elements, as the tensor-core kernel's
/// 16-byte loads need), multiplied by the `gemm_bf16_*` entry of that layout into the f32
/// `C` with the bias, `alpha` and `beta`, and an epilogue stage in the same launch
/// (`gemm_bf16_nt_gelu` and its siblings). `saved_b`, a
/// bf16 copy already made of B (`[k, n]`, one product), is used in place of converting B;
/// with `keep_a` (one product) the copy of A is returned instead of freed.
fn gemm_bf16_operands(
    driver: &Arc<dyn Driver>,
    g: &k::GemmF32,
    epi: Option<k::GemmEpilogue>,
    keep_a: bool,
    saved_b: Option<&Bf16Rows>,
    saved_a: Option<SavedA>,
) -> Result<Option<Bf16Rows>> {
    let d = &**driver;
    if g.m == 0 || g.n == 0 || g.batch == 0 {
        return Ok(None);
    }
    let (lda, ldb) = (bf16_ld(g.k), bf16_ld(g.n));
    let single = g.batch == 1;
    let saved_a_fits = |a: SavedA| match a {
        SavedA::Rows(r) => [r.rows, r.cols] == [g.m, g.k],
        SavedA::Transposed(r) => [r.rows, r.cols] == [g.k, g.m],
    };
    if saved_a.is_some_and(|a| !single || keep_a || !saved_a_fits(a))
        || saved_a.is_some_and(|a| matches!(a, SavedA::Transposed(_)) && epi.is_some())
    {
        return Err(Error::Device {
            op: "gemm_bf16",
            detail: format!(
                "internal error: a saved bf16 A needs one product with A [{}, {}], neither kept \
                 nor (transposed) under an epilogue; got {} products",
                g.m, g.k, g.batch
            ),
        });
    }
    if (keep_a && !single) || saved_b.is_some_and(|b| !single || b.rows != g.k || b.cols != g.n) {
        return Err(Error::Device {
            op: "gemm_bf16",
            detail: format!(
                "internal error: a kept or saved bf16 operand needs one product with B [{}, {}], \
                 got {} products and B {:?}",
                g.k,
                g.n,
                g.batch,
                saved_b.map(|b| [b.rows, b.cols])
            ),
        });
    }
    // A shared operand (batch stride 0) is converted once.
    let to_bf16 = |src: DevicePtr,
                   rs: usize,
                   cs: usize,
                   bs: usize,
                   rows: usize,
                   cols: usize,
                   lead: usize|
     -> Result<(GpuBuffer, usize)> {
        let batches = if bs == 0 { 1 } else { g.batch };
        let buf = GpuBuffer::alloc(driver.clone(), (batches * rows * lead).max(8), 2)?;
        let signed = |v: usize| v as isize;
        k::strided_copy_f32_bf16(
            d,
            buf.ptr(),
            &[signed(rows * lead), signed(lead), 1],
            src,
            &[signed(bs), signed(rs), signed(cs)],
            &[batches, rows, cols],
        )?;
        Ok((buf, if bs == 0 { 0 } else { rows * lead }))
    };
    // Each operand is converted in the orientation it is stored in (a transposed view, row
    // stride 1, becomes a `T` operand), so that the copy reads and writes contiguously
    // instead of gathering a column per output row; the tensor cores see the same values in
    // every layout and give the same bits. A kept A, and A under an epilogue stage, stay
    // row-major.
    let transposed = |rs: usize, cs: usize| cs != 1 && rs == 1;
    let b_t = saved_b.is_none() && transposed(g.b_rs, g.b_cs);
    // The converted A (None for a saved one) lives until the product has run.
    let (a_ptr, a_t, a_bs, lda, a) = match saved_a {
        Some(SavedA::Rows(r)) => (r.buf.ptr(), false, 0, r.ld, None),
        Some(SavedA::Transposed(r)) => (r.buf.ptr(), true, 0, r.ld, None),
        None if epi.is_none() && !keep_a && transposed(g.a_rs, g.a_cs) => {
            let lda = bf16_ld(g.m);
            let (a, a_bs) = to_bf16(g.a, g.a_cs, g.a_rs, g.a_bs, g.k, g.m, lda)?;
            (a.ptr(), true, a_bs, lda, Some(a))
        }
        None => {
            let (a, a_bs) = to_bf16(g.a, g.a_rs, g.a_cs, g.a_bs, g.m, g.k, lda)?;
            (a.ptr(), false, a_bs, lda, Some(a))
        }
    };
    // The converted B lives until the product has run.
    let (b_ptr, ldb, b_bs, _b) = match saved_b {
        Some(saved) => (saved.buf.ptr(), saved.ld, 0, None),
        None if b_t => {
            let ldb = bf16_ld(g.k);
            let (b, b_bs) = to_bf16(g.b, g.b_cs, g.b_rs, g.b_bs, g.n, g.k, ldb)?;
            (b.ptr(), ldb, b_bs, Some(b))
        }
        None => {
            let (b, b_bs) = to_bf16(g.b, g.b_rs, g.b_cs, g.b_bs, g.k, g.n, ldb)?;
            (b.ptr(), ldb, b_bs, Some(b))
        }
    };
    let layout = match (a_t, b_t) {
        (false, false) => k::Bf16Layout::NN,
        (false, true) => k::Bf16Layout::NT,
        (true, false) => k::Bf16Layout::TN,
        (true, true) => k::Bf16Layout::TT,
    };
    let product = k::GemmBf16 {
        layout,
        m: g.m,
        n: g.n,
        k: g.k,
        batch: g.batch,
        c: g.c,
        ldc: g.c_rs,
        c_bs: g.c_bs,
        a: a_ptr,
        lda,
        a_bs,
        b: b_ptr,
        ldb,
        b_bs,
        bias: g.bias,
        alpha: g.alpha,
        beta: g.beta,
    };
    match epi {
        None => k::gemm_bf16(d, &product)?,
        Some(epi) => k::gemm_bf16_epilogue(d, &product, epi)?,
    }
    Ok(a.filter(|_| keep_a).map(|buf| Bf16Rows {
        buf: Arc::new(buf),
        rows: g.m,
        cols: g.k,
        ld: lda,
    }))
}

/// A bf16 left operand converted once and used by more than one product: its rows are A
/// (`[m, k]`), or A's columns (`[k, m]`: A = rows^T, the `T` layout).
#[derive(Clone, Copy)]
enum SavedA<'a> {
    Rows(&'a Bf16Rows),
    Transposed(&'a Bf16Rows),
}

/// The row-major bf16 copy of a `[rows, cols]` f32 matrix (any strides), rows padded as the
/// tensor-core kernel needs.
fn bf16_rows<E: Element>(t: &Tensor<E>) -> Result<Bf16Rows> {
    let (driver, p) = operand(t)?;
    let (rows, cols) = (t.shape()[0], t.shape()[1]);
    let ld = bf16_ld(cols);
    let buf = GpuBuffer::alloc(driver.clone(), (rows * ld).max(8), 2)?;
    k::strided_copy_f32_bf16(
        &*driver,
        buf.ptr(),
        &[ld as isize, 1],
        p,
        t.strides(),
        t.shape(),
    )?;
    Ok(Bf16Rows {
        buf: Arc::new(buf),
        rows,
        cols,
        ld,
    })
}

/// The right operand of [`saved_a_product`]: an f32 `[k, n]` matrix (any strides, converted
/// by the product), or a bf16 copy already made.
enum RightOperand<'a, E: Element> {
    F32(&'a Tensor<E>),
    Saved(&'a Bf16Rows),
}

impl<E: Element> RightOperand<'_, E> {
    fn cols(&self) -> usize {
        match self {
            RightOperand::F32(t) => t.shape()[1],
            RightOperand::Saved(r) => r.cols,
        }
    }
}

/// One `[m, n] = A [m, k] @ B [k, n] (+ bias)` product into the contiguous `c` whose A is a
/// bf16 copy passed beside it (the f32 A is not read), B given by pointer and strides.
fn saved_a_gemm(
    [m, n, kk]: [usize; 3],
    c: DevicePtr,
    (b, b_rs, b_cs): (DevicePtr, usize, usize),
    bias: Option<DevicePtr>,
) -> k::GemmF32 {
    k::GemmF32 {
        m,
        n,
        k: kk,
        batch: 1,
        c,
        c_rs: n,
        c_bs: 0,
        a: DevicePtr(0),
        a_rs: 0,
        a_cs: 0,
        a_bs: 0,
        b,
        b_rs,
        b_cs,
        b_bs: 0,
        bias,
        alpha: 1.0,
        beta: 0.0,
    }
}

/// `op(A) @ B` into a fresh `[m, n]` f32 tensor on `device` for a saved bf16 A, with an
/// optional epilogue stage (whose `aux` is `[m, n]` contiguous). `m`, `k` come from A.
fn saved_a_product<E: Element>(
    driver: &Arc<dyn Driver>,
    device: Device,
    a: SavedA,
    b: RightOperand<E>,
    epi: Option<k::GemmEpilogue>,
) -> Result<Tensor<E>> {
    let (m, kk) = match a {
        SavedA::Rows(r) => (r.rows, r.cols),
        SavedA::Transposed(r) => (r.cols, r.rows),
    };
    let n = b.cols();
    let out = empty(driver, device, &[m, n])?;
    let (b_ptr, b_rs, b_cs, _b, saved_b) = match b {
        RightOperand::F32(t) => {
            let t = gemm_operand(t, t.layout())?;
            let (rs, cs) = gemm_strides(t.strides()[0], t.strides()[1]).expect("checked");
            (ptr(&t)?, rs, cs, Some(t), None)
        }
        RightOperand::Saved(r) => (r.buf.ptr(), r.ld, 1, None, Some(r)),
    };
    let g = saved_a_gemm([m, n, kk], ptr(&out)?, (b_ptr, b_rs, b_cs), None);
    gemm_bf16_operands(driver, &g, epi, false, saved_b, Some(a))?;
    Ok(out)
}

/// A linear layer's input and weight gradients under bf16 from the gradient `g2`
/// (`[rows, out]`) of its output, its weight `w` (`[out, in]`) and the bf16 copy `x` of its
/// input the forward kept: `g2 W` (with `want_x`) and `g2^T x`, with `g2` converted to bf16
/// once for both products (the bits of converting it for each).
pub(crate) fn linear_grads_bf16<E: Element>(
    g2: &Tensor<E>,
    w: &Tensor<E>,
    x: &Bf16Rows,
    want_x: bool,
) -> Result<(Option<Tensor<E>>, Tensor<E>)> {
    let (driver, _) = operand(g2)?;
    let dev = g2.device();
    let (rows, out_f, in_f) = (g2.shape()[0], g2.shape()[1], w.shape()[1]);
    if rows != x.rows || in_f != x.cols {
        return Err(Error::Device {
            op: "linear",
            detail: format!(
                "internal error: a gradient of {rows} rows for a saved input [{}, {}] and a \
                 weight of {in_f} in-features",
                x.rows, x.cols
            ),
        });
    }
    // As matmul_raw: an empty product, or an empty sum, is all zeros.
    if rows == 0 || out_f == 0 || in_f == 0 {
        let gx = want_x
            .then(|| Tensor::full_on(&[rows, in_f], 0.0, dev))
            .transpose()?;
        return Ok((gx, Tensor::full_on(&[out_f, in_f], 0.0, dev)?));
    }
    let g16 = bf16_rows(g2)?;
    let gx = want_x
        .then(|| saved_a_product(&driver, dev, SavedA::Rows(&g16), RightOperand::F32(w), None))
        .transpose()?;
    let gw = saved_a_product(
        &driver,
        dev,
        SavedA::Transposed(&g16),
        RightOperand::<E>::Saved(x),
        None,
    )?;
    Ok((gx, gw))
}

/// The MLP's second layer's gradients under bf16 from the gradient `g2` (`[rows, out]`) of
/// its output: `(g2 W2) * gelu'(pre)` (the hidden layer's gradient, one GEMM with the GELU
/// derivative in its epilogue) and, given the recomputed activation `act`, `g2^T act`, with
/// `g2` converted to bf16 once for both (the bits of [`linear_grad_gelu`] and of `matmul`).
/// The weight gradient comes first and `act` is dropped before the hidden layer's gradient
/// is made, so the two `[rows, hidden]` tensors are never alive together.
pub(crate) fn mlp_out_grads_bf16<E: Element>(
    g2: &Tensor<E>,
    w2: &Tensor<E>,
    pre: &Tensor<E>,
    act: Option<Tensor<E>>,
) -> Result<(Tensor<E>, Option<Tensor<E>>)> {
    let (driver, _) = operand(g2)?;
    let dev = g2.device();
    let g16 = bf16_rows(g2)?;
    let gw2 = act
        .map(|a| {
            let at = SavedA::Transposed(&g16);
            saved_a_product(&driver, dev, at, RightOperand::F32(&a), None)
        })
        .transpose()?;
    let pre = dense(pre)?;
    let epi = k::GemmEpilogue::GeluGrad {
        aux: ptr(&pre)?,
        aux_rs: w2.shape()[1],
    };
    let gp = saved_a_product(
        &driver,
        dev,
        SavedA::Rows(&g16),
        RightOperand::F32(w2),
        Some(epi),
    )?;
    Ok((gp, gw2))
}

/// The leading dimension of a bf16 GEMM operand with `cols` columns: a multiple of 8
/// elements (at least 8), as the tensor-core kernel's 16-byte loads need.
fn bf16_ld(cols: usize) -> usize {
    cols.max(1).div_ceil(8) * 8
}

/// `(pre, gelu(pre))` with `pre = x2 @ w^T + bias`, for `x2` `[rows, in]`, `w` `[out, in]`:
/// one GEMM with the bias and the GELU in its epilogue; with `keep_x`, also the bf16 copy
/// of `x2` a bf16 GEMM made (as [`linear`]).
pub(crate) fn linear_gelu<E: Element>(
    x2: &Tensor<E>,
    w: &Tensor<E>,
    bias: Option<&Tensor<E>>,
    keep_x: bool,
) -> Result<WithKeptInput<(Tensor<E>, Tensor<E>)>> {
    let (driver, _) = operand(x2)?;
    let shape = [x2.shape()[0], w.shape()[0]];
    let pre = empty(&driver, x2.device(), &shape)?;
    let act = empty(&driver, x2.device(), &shape)?;
    let epi = k::GemmEpilogue::Gelu {
        aux: ptr(&pre)?,
        aux_rs: shape[1],
    };
    let kept = linear_into(x2, w, bias, &act, Some(epi), keep_x)?;
    Ok(((pre, act), kept))
}

/// `(g2 @ w) * gelu'(pre)` for the gradient `g2` `[rows, out]` of a linear layer's output,
/// its weight `w` `[out, in]` and the pre-activation `pre` `[rows, in]` of the GELU that fed
/// it: the MLP's data gradient as one GEMM with the GELU derivative in its epilogue (the
/// bits of `matmul` then `binary(GeluBackward)`).
pub(crate) fn linear_grad_gelu<E: Element>(
    g2: &Tensor<E>,
    w: &Tensor<E>,
    pre: &Tensor<E>,
) -> Result<Tensor<E>> {
    let (driver, _) = operand(g2)?;
    let (rows, in_f) = (g2.shape()[0], w.shape()[1]);
    let pre = dense(pre)?;
    let out = empty(&driver, g2.device(), &[rows, in_f])?;
    let epi = k::GemmEpilogue::GeluGrad {
        aux: ptr(&pre)?,
        aux_rs: in_f,
    };
    product_into(g2, w, false, None, &out, Some(epi), false)?;
    Ok(out)
}

/// [`linear_residual`] under bf16 whose input is given only as its bf16 copy `x16`
/// (`[rows, in]`, as a bf16 GEMM would have converted the f32 input: the attention
/// forward's token-major copy of its output), read where it is: the same GEMM, so the bits
/// of `linear_residual` on the f32 input whose rounding `x16` is. bf16 whatever this
/// thread's precision is now (the input was rounded already).
pub(crate) fn linear_residual_bf16_input<E: Element>(
    x16: &Bf16Rows,
    w: &Tensor<E>,
    bias: Option<&Tensor<E>>,
    r2: &Tensor<E>,
) -> Result<Tensor<E>> {
    let (driver, _) = operand(w)?;
    let (m, kk, n) = (x16.rows, x16.cols, w.shape()[0]);
    if w.shape() != [n, kk] || r2.shape() != [m, n] {
        return Err(Error::Device {
            op: "linear_residual",
            detail: format!(
                "internal error: a bf16 input [{m}, {kk}] with weight {:?} and residual {:?}",
                w.shape(),
                r2.shape()
            ),
        });
    }
    let r2 = dense(r2)?;
    let out = empty(&driver, w.device(), &[m, n])?;
    let b = gemm_operand(w, w.layout())?;
    let bias = bias.map(dense).transpose()?;
    // B = w^T: B[l, j] = w[j, l].
    let (b_rs, b_cs) = gemm_strides(b.strides()[1], b.strides()[0]).expect("checked");
    let bias_ptr = bias.as_ref().map(ptr).transpose()?;
    let g = saved_a_gemm([m, n, kk], ptr(&out)?, (ptr(&b)?, b_rs, b_cs), bias_ptr);
    let epi = k::GemmEpilogue::Residual {
        aux: ptr(&r2)?,
        aux_rs: n,
    };
    gemm_bf16_operands(&driver, &g, Some(epi), false, None, Some(SavedA::Rows(x16)))?;
    Ok(out)
}

/// `r2 + x2 @ w^T + bias` for `x2` `[rows, in]`, `w` `[out, in]`, `r2` `[rows, out]`: one
/// GEMM with the bias and the residual in its epilogue; with `keep_x`, also the bf16 copy
/// of `x2` a bf16 GEMM made (as [`linear`]).
pub(crate) fn linear_residual<E: Element>(
    x2: &Tensor<E>,
    w: &Tensor<E>,
    bias: Option<&Tensor<E>>,
    r2: &Tensor<E>,
    keep_x: bool,
) -> Result<WithKeptInput<Tensor<E>>> {
    let (driver, _) = operand(x2)?;
    let r2 = dense(r2)?;
    let out = empty(&driver, x2.device(), r2.shape())?;
    let epi = k::GemmEpilogue::Residual {
        aux: ptr(&r2)?,
        aux_rs: r2.shape()[1],
    };
    let kept = linear_into(x2, w, bias, &out, Some(epi), keep_x)?;
    Ok((out, kept))
}
