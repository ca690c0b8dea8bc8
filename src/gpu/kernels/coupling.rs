//! Launch wrappers for `ptx/coupling.cu`: the affine coupling's forward (z and the per-image
//! log-determinant), backward, and inverse with the guidance combination.

use super::{count, linear_config, product, BLOCK, COUPLING};
use crate::error::{Error, Result};
use crate::gpu::driver::{DevicePtr, Driver, KernelArg, LaunchConfig};

// Bits of coupling_bwd_f32's `flags` (`enum CouplingGrads` in ptx/coupling.cu).
const COUPLING_DX: u32 = 1;
const COUPLING_DALPHA: u32 = 2;
const COUPLING_DMU: u32 = 4;

/// A strided `[B, L, D]` operand: the address of element `(0, 0, 0)` and the strides in
/// elements (any sign).
#[derive(Clone, Copy, Debug)]
pub struct Tokens {
    /// Address of element `(0, 0, 0)`.
    pub ptr: DevicePtr,
    /// Strides of the batch, token and value axes, in elements.
    pub strides: [isize; 3],
}

impl Tokens {
    /// A row-major `[B, L, D]` operand of `dims` at `ptr`.
    pub fn contiguous(ptr: DevicePtr, dims: [usize; 3]) -> Tokens {
        let [_, l, d] = dims;
        Tokens {
            ptr,
            strides: [(l * d) as isize, d as isize, 1],
        }
    }
}

/// The coupling's sizes and soft clip, shared by the forward and backward.
#[derive(Clone, Copy, Debug)]
pub struct CouplingShape {
    /// `[B, L, D]`: images, tokens per image, values per token.
    pub dims: [usize; 3],
    /// The soft clip bound `c` of `c * tanh(alpha / c)`, when there is one.
    pub clip: Option<f64>,
}

/// The stride arguments of `t`, each checked to fit an `int`.
fn stride_args(op: &'static str, t: &Tokens) -> Result<[KernelArg; 3]> {
    let mut out = [KernelArg::U32(0); 3];
    for (o, &s) in out.iter_mut().zip(&t.strides) {
        let s = i32::try_from(s)
            .map_err(|_| Error::arg(op, format!("stride {s} does not fit the kernel's int")))?;
        *o = KernelArg::U32(s as u32);
    }
    Ok(out)
}

/// Checks the sizes; `None` when there is nothing to compute.
fn sizes(op: &'static str, dims: [usize; 3]) -> Result<Option<[u32; 3]>> {
    count(
        op,
        "B * L * D + B",
        product(op, &[dims[0], dims[1] * dims[2] + 1])?,
    )?;
    let [b, l, d] = dims;
    if b == 0 || l == 0 || d == 0 {
        return Ok(None);
    }
    Ok(Some([b as u32, l as u32, d as u32]))
}

/// The clip arguments `has_clip, c, 1 / c`, each rounded from f64 as the CPU's
/// `mul_scalar` rounds its scalar.
fn clip_args(op: &'static str, clip: Option<f64>) -> Result<[KernelArg; 3]> {
    match clip {
        None => Ok([KernelArg::U32(0), KernelArg::F32(1.0), KernelArg::F32(1.0)]),
        Some(c) if c.is_finite() && c > 0.0 => Ok([
            KernelArg::U32(1),
            KernelArg::F32(c as f32),
            KernelArg::F32((1.0 / c) as f32),
        ]),
        Some(c) => Err(Error::arg(
            op,
            format!("the soft clip bound must be finite and positive, got {c}"),
        )),
    }
}

/// `out = [z (B * L * D, row-major), logdet (B)]` from tokens `x` and the unshifted
/// parameters `alpha`, `mu` (see ptx/coupling.cu). One CTA per image.
pub fn coupling_fwd_f32(
    driver: &dyn Driver,
    out: DevicePtr,
    x: Tokens,
    alpha: Tokens,
    mu: Tokens,
    shape: CouplingShape,
) -> Result<()> {
    const NAME: &str = "coupling_fwd_f32";
    let clip = clip_args(NAME, shape.clip)?;
    let Some([b, l, d]) = sizes(NAME, shape.dims)? else {
        if shape.dims[0] > 0 {
            // No tokens: every log-determinant is minus an empty sum, -0 as on the CPU.
            super::fill_f32(driver, out, shape.dims[0], -0.0)?;
        }
        return Ok(());
    };
    let mut args = vec![
        KernelArg::Ptr(out),
        KernelArg::Ptr(x.ptr),
        KernelArg::Ptr(alpha.ptr),
        KernelArg::Ptr(mu.ptr),
        KernelArg::U32(b),
        KernelArg::U32(l),
        KernelArg::U32(d),
    ];
    for t in [&x, &alpha, &mu] {
        args.extend(stride_args(NAME, t)?);
    }
    args.extend(clip);
    driver.launch(&COUPLING, NAME, LaunchConfig::linear(b, BLOCK), &args)
}

/// Where the backward writes: each gradient only when given.
#[derive(Clone, Copy, Debug)]
pub struct CouplingGrads {
    /// `dx` `[B, L, D]`, contiguous.
    pub dx: Option<DevicePtr>,
    /// `dalpha` `[B, L, D]` (unshifted), contiguous.
    pub dalpha: Option<DevicePtr>,
    /// `dmu` `[B, L, D]` (unshifted), contiguous.
    pub dmu: Option<DevicePtr>,
}

/// The coupling's gradients from `g`, the contiguous gradient of the packed output
/// `[gz (B * L * D), glogdet (B)]`.
pub fn coupling_bwd_f32(
    driver: &dyn Driver,
    grads: CouplingGrads,
    g: DevicePtr,
    x: Tokens,
    alpha: Tokens,
    mu: Tokens,
    shape: CouplingShape,
) -> Result<()> {
    const NAME: &str = "coupling_bwd_f32";
    let clip = clip_args(NAME, shape.clip)?;
    let Some([b, l, d]) = sizes(NAME, shape.dims)? else {
        return Ok(());
    };
    let flags = grads.dx.map_or(0, |_| COUPLING_DX)
        | grads.dalpha.map_or(0, |_| COUPLING_DALPHA)
        | grads.dmu.map_or(0, |_| COUPLING_DMU);
    if flags == 0 {
        return Ok(());
    }
    let none = DevicePtr(0);
    let mut args = vec![
        KernelArg::Ptr(grads.dx.unwrap_or(none)),
        KernelArg::Ptr(grads.dalpha.unwrap_or(none)),
        KernelArg::Ptr(grads.dmu.unwrap_or(none)),
        KernelArg::Ptr(g),
        KernelArg::Ptr(x.ptr),
        KernelArg::Ptr(alpha.ptr),
        KernelArg::Ptr(mu.ptr),
        KernelArg::U32(b),
        KernelArg::U32(l),
        KernelArg::U32(d),
    ];
    for t in [&x, &alpha, &mu] {
        args.extend(stride_args(NAME, t)?);
    }
    args.extend(clip);
    args.push(KernelArg::U32(flags));
    driver.launch(&COUPLING, NAME, linear_config(b * l * d), &args)
}

/// `out = z * exp(a) + m` over `[B, L, D]` (`dims`), every operand and the output a strided
/// view, with `a = alpha + w (alpha - alpha_u)` and likewise `m` when
/// `guidance = Some((alpha_u, mu_u, w))`. The output must not overlap the inputs.
pub fn coupling_inverse_f32(
    driver: &dyn Driver,
    out: Tokens,
    z: Tokens,
    alpha: Tokens,
    mu: Tokens,
    guidance: Option<(Tokens, Tokens, f32)>,
    dims: [usize; 3],
) -> Result<()> {
    const NAME: &str = "coupling_inverse_f32";
    let Some([b, l, d]) = sizes(NAME, dims)? else {
        return Ok(());
    };
    // Unread without guidance.
    let none = Tokens {
        ptr: DevicePtr(0),
        strides: [0; 3],
    };
    let (au, mu_u, w) = guidance.unwrap_or((none, none, 0.0));
    let mut args = vec![
        KernelArg::Ptr(out.ptr),
        KernelArg::Ptr(z.ptr),
        KernelArg::Ptr(alpha.ptr),
        KernelArg::Ptr(mu.ptr),
        KernelArg::Ptr(au.ptr),
        KernelArg::Ptr(mu_u.ptr),
        KernelArg::U32(b),
        KernelArg::U32(l),
        KernelArg::U32(d),
    ];
    for t in [&out, &z, &alpha, &mu, &au, &mu_u] {
        args.extend(stride_args(NAME, t)?);
    }
    args.push(KernelArg::U32(guidance.is_some() as u32));
    args.push(KernelArg::F32(w));
    driver.launch(&COUPLING, NAME, linear_config(b * l * d), &args)
}
