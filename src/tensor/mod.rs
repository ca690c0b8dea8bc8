//! The n-dimensional tensor.
//!
//! A [`Tensor`] is a cheap handle (`Arc`) to an immutable description: a shared storage
//! buffer, a [`Layout`] (shape, strides, offset) into it, and, when it was produced by an op
//! that must be differentiated, the autograd node that produced it. Views share storage; ops
//! allocate fresh contiguous outputs. See `docs/architecture.md`.

pub mod element;
pub(crate) mod iter;
pub mod layout;
pub(crate) mod node;
#[doc(hidden)]
pub mod reference;
pub(crate) mod storage;
mod transfer;

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub use element::{DType, Element};
pub use layout::Layout;
pub(crate) use node::{Input, Node};
pub use storage::GpuBuffer;
pub(crate) use storage::Storage;

use crate::error::{Error, Result};
use crate::rng::Rng;

/// Where a tensor's storage lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Device {
    /// Host memory; the default, and the device all storage is created on.
    #[default]
    Cpu,
    /// A CUDA device by ordinal (requires the `cuda` feature and a GPU at run time).
    Cuda(usize),
    /// The PTX interpreter: the GPU kernels run on the CPU, for tests without a GPU.
    PtxSim,
}

impl Device {
    /// Whether tensors here live in device memory reached through a [`crate::gpu::Driver`].
    pub fn is_gpu(self) -> bool {
        !matches!(self, Device::Cpu)
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
            Device::PtxSim => write!(f, "ptx-sim"),
        }
    }
}

impl std::str::FromStr for Device {
    type Err = Error;

    /// `cpu`, `cuda` (device 0), `cuda:N` or `ptx-sim`; what [`Device`]'s `Display` writes
    /// parses back to the same device.
    fn from_str(s: &str) -> Result<Device> {
        let t = s.trim();
        match t {
            "cpu" => return Ok(Device::Cpu),
            "cuda" => return Ok(Device::Cuda(0)),
            "ptx-sim" => return Ok(Device::PtxSim),
            _ => {}
        }
        if let Some(n) = t.strip_prefix("cuda:") {
            if let Ok(i) = n.parse::<usize>() {
                return Ok(Device::Cuda(i));
            }
        }
        Err(Error::arg(
            "device",
            format!("unknown device {s:?}: expected cpu, cuda, cuda:N or ptx-sim"),
        ))
    }
}

static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

pub(crate) struct Inner<E: Element> {
    id: usize,
    storage: Arc<Storage<E>>,
    layout: Layout,
    requires_grad: bool,
    pub(crate) node: Option<Arc<Node<E>>>,
    /// Accumulated gradient; only leaves (tensors without a node) keep one.
    grad: Mutex<Option<Tensor<E>>>,
}

/// An n-dimensional array of `E` (default `f32`) with optional gradient tracking.
pub struct Tensor<E: Element = f32>(pub(crate) Arc<Inner<E>>);

impl<E: Element> Clone for Tensor<E> {
    fn clone(&self) -> Self {
        Tensor(self.0.clone())
    }
}

impl<E: Element> Tensor<E> {
    // ---------------------------------------------------------------- construction

    pub(crate) fn from_parts(
        storage: Arc<Storage<E>>,
        layout: Layout,
        requires_grad: bool,
        node: Option<Node<E>>,
    ) -> Self {
        let node = node.map(Arc::new);
        Tensor(Arc::new(Inner {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            storage,
            layout,
            requires_grad,
            node,
            grad: Mutex::new(None),
        }))
    }

    /// A contiguous tensor that owns `data` (no checks; internal).
    pub(crate) fn from_raw(data: Vec<E>, shape: &[usize]) -> Self {
        debug_assert_eq!(data.len(), shape.iter().product::<usize>());
        Self::from_parts(
            Arc::new(Storage::new(data)),
            Layout::contiguous(shape),
            false,
            None,
        )
    }

    /// A view of this tensor's storage with another layout (no gradient bookkeeping).
    pub(crate) fn view_raw(&self, layout: Layout) -> Self {
        Self::from_parts(self.0.storage.clone(), layout, false, None)
    }

    /// Tensor from row-major data; fails when `data.len()` does not match the shape.
    pub fn from_vec(data: Vec<E>, shape: &[usize]) -> Result<Self> {
        let n = layout::checked_numel("from_vec", shape, &[shape], E::DTYPE.name())?;
        if data.len() != n {
            return Err(Error::shape(
                "from_vec",
                &[shape],
                E::DTYPE.name(),
                format!("{} elements given for {n}", data.len()),
            ));
        }
        Ok(Self::from_raw(data, shape))
    }

    /// Tensor from a slice (copied).
    pub fn from_slice(data: &[E], shape: &[usize]) -> Result<Self> {
        Self::from_vec(data.to_vec(), shape)
    }

    /// A 0-dimensional tensor.
    pub fn scalar(v: E) -> Self {
        Self::from_raw(vec![v], &[])
    }

    /// A contiguous tensor of `shape` with every element `v`.
    pub fn full(shape: &[usize], v: E) -> Self {
        Self::from_raw(vec![v; shape.iter().product()], shape)
    }

    /// A contiguous tensor of `shape` filled with zeros.
    pub fn zeros(shape: &[usize]) -> Self {
        Self::full(shape, E::ZERO)
    }

    /// A contiguous tensor of `shape` filled with ones.
    pub fn ones(shape: &[usize]) -> Self {
        Self::full(shape, E::ONE)
    }

    /// A tensor of `shape` filled with `v` on `device` (filled there, nothing uploaded).
    pub fn full_on(shape: &[usize], v: f64, device: Device) -> Result<Self> {
        if device.is_gpu() {
            if E::DTYPE != DType::F32 {
                return Err(Error::Device {
                    op: "full_on",
                    detail: format!(
                        "{} tensors stay on the CPU: {device} holds f32 only",
                        E::DTYPE
                    ),
                });
            }
            return crate::backend::gpu::full(device, shape, v);
        }
        Ok(Self::full(shape, E::from_f64(v)))
    }

    /// Zeros of `shape` on `device`.
    pub fn zeros_on(shape: &[usize], device: Device) -> Result<Self> {
        Self::full_on(shape, 0.0, device)
    }

    /// Zeros with this tensor's shape on its device (a new contiguous leaf without gradient
    /// tracking).
    pub fn zeros_like(&self) -> Result<Self> {
        Self::full_on(self.shape(), 0.0, self.device())
    }

    /// Ones with this tensor's shape on its device.
    pub fn ones_like(&self) -> Result<Self> {
        Self::full_on(self.shape(), 1.0, self.device())
    }

    /// `[start, start+step, ...)` below `end`.
    pub fn arange(start: f64, end: f64, step: f64) -> Result<Self> {
        if step == 0.0 || !step.is_finite() || !start.is_finite() || !end.is_finite() {
            return Err(Error::arg(
                "arange",
                format!("invalid range {start}..{end} step {step}"),
            ));
        }
        let count = ((end - start) / step).ceil().max(0.0);
        // `as usize` saturates: a count past what a buffer can hold (or an infinite one, from
        // `end - start` overflowing) must be an error, not a capacity-overflow panic.
        let max = (isize::MAX as usize / std::mem::size_of::<E>()) as f64;
        if count > max {
            return Err(Error::arg(
                "arange",
                format!("range {start}..{end} step {step} has too many elements ({count})"),
            ));
        }
        let n = count as usize;
        let mut data = Vec::new();
        data.try_reserve_exact(n).map_err(|e| {
            Error::arg(
                "arange",
                format!("range {start}..{end} step {step}: cannot allocate {n} elements: {e}"),
            )
        })?;
        data.extend((0..n).map(|i| E::from_f64(start + i as f64 * step)));
        Ok(Self::from_raw(data, &[n]))
    }

    /// Uniform samples in `[lo, hi)`.
    pub fn rand(shape: &[usize], lo: f64, hi: f64, rng: &mut Rng) -> Self {
        let n = shape.iter().product();
        let data = (0..n)
            .map(|_| E::from_f64(lo + (hi - lo) * rng.uniform()))
            .collect();
        Self::from_raw(data, shape)
    }

    /// Normal samples with the given mean and standard deviation.
    pub fn randn(shape: &[usize], mean: f64, std: f64, rng: &mut Rng) -> Self {
        let n = shape.iter().product();
        let mut buf = vec![0.0f64; n];
        rng.fill_normal(&mut buf);
        let data = buf.iter().map(|&v| E::from_f64(mean + std * v)).collect();
        Self::from_raw(data, shape)
    }

    // ---------------------------------------------------------------- accessors

    /// Unique id of this handle's node in a graph.
    pub fn id(&self) -> usize {
        self.0.id
    }
    /// Size of each axis, outermost first.
    pub fn shape(&self) -> &[usize] {
        self.0.layout.shape()
    }
    /// Alias of [`Tensor::shape`].
    pub fn dims(&self) -> &[usize] {
        self.shape()
    }
    /// Number of axes (0 for a scalar).
    pub fn rank(&self) -> usize {
        self.0.layout.rank()
    }
    /// Number of elements: the product of the shape (1 for a scalar).
    pub fn numel(&self) -> usize {
        self.0.layout.numel()
    }
    /// Storage step of each axis, in elements; 0 on broadcast axes, negative on flipped ones.
    pub fn strides(&self) -> &[isize] {
        self.0.layout.strides()
    }
    /// Shape, strides and offset of this view into its storage.
    pub fn layout(&self) -> &Layout {
        &self.0.layout
    }
    /// The element type, `E::DTYPE`.
    pub fn dtype(&self) -> DType {
        E::DTYPE
    }
    /// Where the storage lives.
    pub fn device(&self) -> Device {
        self.0.storage.device()
    }
    /// Whether the elements lie row-major and dense in storage (see [`Layout::is_contiguous`]).
    pub fn is_contiguous(&self) -> bool {
        self.0.layout.is_contiguous()
    }
    /// Whether two tensors share one storage buffer.
    pub fn shares_storage(&self, other: &Tensor<E>) -> bool {
        Arc::ptr_eq(&self.0.storage, &other.0.storage)
    }
    /// Size of one axis (negative counts from the end).
    pub fn dim(&self, axis: isize) -> Result<usize> {
        let a = layout::resolve_axis("dim", axis, self.rank())?;
        Ok(self.shape()[a])
    }

    pub(crate) fn storage(&self) -> &Arc<Storage<E>> {
        &self.0.storage
    }
    pub(crate) fn node(&self) -> Option<&Node<E>> {
        self.0.node.as_deref()
    }

    /// Runs `f` on the storage slice and layout. Host storage only: ops check their operands'
    /// device before they get here (see [`crate::backend::cpu_only`]).
    pub(crate) fn with_data<R>(&self, f: impl FnOnce(&[E], &Layout) -> R) -> R {
        let guard = self.0.storage.read();
        f(&guard, &self.0.layout)
    }

    /// Runs `f` on the elements in row-major order, borrowing when contiguous. Host storage
    /// only, as for [`Tensor::with_data`].
    pub(crate) fn with_contiguous<R>(&self, f: impl FnOnce(&[E]) -> R) -> R {
        let guard = self.0.storage.read();
        let l = &self.0.layout;
        let n = l.numel();
        if n == 0 {
            f(&[])
        } else if l.is_contiguous() {
            f(&guard[l.offset()..l.offset() + n])
        } else {
            let v = iter::gather_strided(&guard, l.shape(), l.strides(), l.offset());
            drop(guard);
            f(&v)
        }
    }

    /// Elements in row-major order (downloaded first when the tensor is on a device).
    ///
    /// # Panics
    /// When downloading a device tensor fails; [`Tensor::try_to_vec`] returns that error
    /// instead. Host tensors never panic here.
    pub fn to_vec(&self) -> Vec<E> {
        self.host_copy_or_panic("to_vec")
            .with_contiguous(|s| s.to_vec())
    }

    /// Elements as f64, row-major (downloaded first, panicking as [`Tensor::to_vec`] does).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        self.host_copy_or_panic("to_f64_vec")
            .with_contiguous(|s| s.iter().map(|v| v.to_f64()).collect())
    }

    /// Elements converted to IEEE half precision (storage format for kernels and files);
    /// downloaded first, panicking as [`Tensor::to_vec`] does.
    pub fn to_f16_vec(&self) -> Vec<half::f16> {
        self.host_copy_or_panic("to_f16_vec")
            .with_contiguous(|s| s.iter().map(|v| half::f16::from_f32(v.to_f32())).collect())
    }

    /// Elements converted to bfloat16; downloaded first, panicking as [`Tensor::to_vec`] does.
    pub fn to_bf16_vec(&self) -> Vec<half::bf16> {
        self.host_copy_or_panic("to_bf16_vec")
            .with_contiguous(|s| s.iter().map(|v| half::bf16::from_f32(v.to_f32())).collect())
    }

    /// Tensor from half-precision values.
    pub fn from_f16(data: &[half::f16], shape: &[usize]) -> Result<Self> {
        Self::from_vec(
            data.iter().map(|v| E::from_f32(v.to_f32())).collect(),
            shape,
        )
    }

    /// Tensor from bfloat16 values.
    pub fn from_bf16(data: &[half::bf16], shape: &[usize]) -> Result<Self> {
        Self::from_vec(
            data.iter().map(|v| E::from_f32(v.to_f32())).collect(),
            shape,
        )
    }

    /// The single value of a one-element tensor.
    pub fn item(&self) -> Result<E> {
        if self.numel() != 1 {
            return Err(Error::shape(
                "item",
                &[self.shape()],
                E::DTYPE.name(),
                "tensor must have exactly one element",
            ));
        }
        Ok(self.host_copy()?.with_data(|d, l| d[l.offset()]))
    }

    /// Element at a multi-index.
    pub fn get(&self, idx: &[usize]) -> Result<E> {
        if idx.len() != self.rank() || idx.iter().zip(self.shape()).any(|(i, d)| i >= d) {
            return Err(Error::index(
                "get",
                format!("index {idx:?} out of range for shape {:?}", self.shape()),
            ));
        }
        Ok(self.host_copy()?.with_data(|d, l| d[l.index_of(idx)]))
    }

    /// Same values in another element type (a new leaf in host memory: a device tensor is
    /// downloaded first, panicking as [`Tensor::to_vec`] does if that fails).
    pub fn cast<F: Element>(&self) -> Tensor<F> {
        let v = self
            .host_copy_or_panic("cast")
            .with_contiguous(|s| s.iter().map(|v| F::from_f64(v.to_f64())).collect());
        Tensor::<F>::from_raw(v, self.shape())
    }

    /// True when every element is finite (downloaded first, panicking as [`Tensor::to_vec`]
    /// does).
    pub fn all_finite(&self) -> bool {
        self.host_copy_or_panic("all_finite")
            .with_contiguous(|s| s.iter().all(|v| v.is_finite()))
    }

    // ---------------------------------------------------------------- autograd state

    /// Whether gradients flow to or through this tensor.
    pub fn requires_grad(&self) -> bool {
        self.0.requires_grad
    }

    /// Whether this tensor is a leaf (not produced by a recorded op).
    pub fn is_leaf(&self) -> bool {
        self.0.node.is_none()
    }

    /// A leaf sharing this storage that records gradients (use for parameters and for inputs
    /// whose gradient you want, e.g. `d log p / d x`).
    pub fn requires_grad_(&self) -> Tensor<E> {
        Self::from_parts(self.0.storage.clone(), self.0.layout.clone(), true, None)
    }

    /// A leaf sharing this storage, cut from the graph.
    pub fn detach(&self) -> Tensor<E> {
        Self::from_parts(self.0.storage.clone(), self.0.layout.clone(), false, None)
    }

    /// The accumulated gradient of a leaf, if any.
    pub fn grad(&self) -> Option<Tensor<E>> {
        self.0
            .grad
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Clears the accumulated gradient.
    pub fn zero_grad(&self) {
        *self.0.grad.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Replaces the accumulated gradient (e.g. after clipping).
    pub fn set_grad(&self, g: Option<Tensor<E>>) {
        *self.0.grad.lock().unwrap_or_else(|e| e.into_inner()) = g;
    }

    pub(crate) fn accumulate_grad(&self, g: &Tensor<E>) -> Result<()> {
        let mut slot = self.0.grad.lock().unwrap_or_else(|e| e.into_inner());
        let new = match slot.take() {
            None => g.detach(),
            Some(old) => old.add(g)?,
        };
        *slot = Some(new);
        Ok(())
    }

    // ---------------------------------------------------------------- in-place updates

    /// Overwrites the values of a contiguous leaf in place (optimisers, checkpoint loading).
    /// Every view of the storage sees the change; do not call while a graph that saved this
    /// tensor is still going to be differentiated.
    /// A tensor on a GPU device is refused (no in-place host access to device memory).
    pub fn update_data(&self, f: impl FnOnce(&mut [E])) -> Result<()> {
        crate::backend::cpu_only("update_data", &[self])?;
        if !self.is_contiguous() {
            return Err(Error::shape(
                "update_data",
                &[self.shape()],
                E::DTYPE.name(),
                "in-place update needs a contiguous tensor",
            ));
        }
        let (o, n) = (self.0.layout.offset(), self.numel());
        if n == 0 {
            f(&mut []);
            return Ok(());
        }
        let mut guard = self.0.storage.write();
        f(&mut guard[o..o + n]);
        Ok(())
    }

    /// Copies `src` (same shape) into this tensor's storage.
    pub fn assign(&self, src: &Tensor<E>) -> Result<()> {
        if src.shape() != self.shape() {
            return Err(Error::shape(
                "assign",
                &[self.shape(), src.shape()],
                E::DTYPE.name(),
                "shapes differ",
            ));
        }
        if self.device().is_gpu() {
            // On the device: a copy kernel from `src` (moved here first if it lives
            // elsewhere) into this tensor's elements.
            if !self.is_contiguous() {
                return Err(Error::shape(
                    "assign",
                    &[self.shape()],
                    E::DTYPE.name(),
                    "the destination must be contiguous",
                ));
            }
            let src = src.detach().to_device(self.device())?;
            return crate::backend::gpu::copy_into(self, &src);
        }
        let v = src.try_to_vec()?;
        self.update_data(|d| d.copy_from_slice(&v))
    }
}

// -------------------------------------------------------------------- formatting

impl<E: Element> fmt::Debug for Tensor<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Tensor<{}>(shape={:?}, strides={:?}, offset={}, device={}, requires_grad={}",
            E::DTYPE,
            self.shape(),
            self.strides(),
            self.layout().offset(),
            self.device(),
            self.requires_grad()
        )?;
        if let Some(n) = self.node() {
            write!(f, ", grad_fn={}", n.name)?;
        }
        write!(f, ")")
    }
}

impl<E: Element> fmt::Display for Tensor<E> {
    /// NumPy-like nested brackets; long axes are elided with `...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const EDGE: usize = 3;
        const FULL: usize = 8;
        let shape = self.shape().to_vec();
        let data = match self.try_to_vec() {
            Ok(d) => d,
            Err(e) => return write!(f, "<tensor on {}: {e}>", self.device()),
        };
        fn rec<E: Element>(
            f: &mut fmt::Formatter<'_>,
            data: &[E],
            shape: &[usize],
            depth: usize,
        ) -> fmt::Result {
            if shape.is_empty() {
                return write!(f, "{:.4}", data[0]);
            }
            let n = shape[0];
            let stride: usize = shape[1..].iter().product();
            write!(f, "[")?;
            let show = |i: usize| n <= FULL || i < EDGE || i >= n - EDGE;
            let mut skipped = false;
            for i in 0..n {
                if !show(i) {
                    if !skipped {
                        write!(f, "...")?;
                        if shape.len() > 1 {
                            write!(f, ",\n{:width$}", "", width = depth + 1)?;
                        } else {
                            write!(f, ", ")?;
                        }
                        skipped = true;
                    }
                    continue;
                }
                rec(
                    f,
                    &data[i * stride..(i + 1) * stride],
                    &shape[1..],
                    depth + 1,
                )?;
                if i + 1 < n {
                    if shape.len() > 1 {
                        write!(f, ",\n{:width$}", "", width = depth + 1)?;
                    } else {
                        write!(f, ", ")?;
                    }
                }
            }
            write!(f, "]")
        }
        if data.is_empty() {
            write!(f, "[]")?;
        } else {
            rec(f, &data, &shape, 0)?;
        }
        write!(f, " Tensor<{}>{:?}", E::DTYPE, shape)
    }
}
