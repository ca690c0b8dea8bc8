//! The GEMM for any element type: the crate's kernels for `f32`, matrixmultiply's `dgemm`
//! for `f64`. Chosen by type here rather than bound as a method of `Element`, so that the
//! element trait does not depend on the kernels (which depend on it).

use std::any::TypeId;

use crate::tensor::Element;

/// `c = alpha * a @ b + beta * c` on strided row/column operands.
///
/// # Safety
/// The pointers and strides must describe `m x k` and `k x n` matrices valid for reads
/// and an `m x n` matrix `c` valid for writes, and for reads when `beta != 0` (with
/// `beta == 0`, `c` is never read and may be uninitialised); `c` must not alias `a` or
/// `b`, and no two of its elements may share an address.
#[allow(clippy::too_many_arguments)]
#[inline]
pub(crate) unsafe fn gemm_any<E: Element>(
    m: usize,
    k: usize,
    n: usize,
    alpha: E,
    a: *const E,
    rsa: isize,
    csa: isize,
    b: *const E,
    rsb: isize,
    csb: isize,
    beta: E,
    c: *mut E,
    rsc: isize,
    csc: isize,
) {
    if TypeId::of::<E>() == TypeId::of::<f32>() {
        // SAFETY: `E` is `f32` (same TypeId), so the casts change no type; the caller's
        // contract is `sgemm`'s.
        unsafe {
            super::gemm::sgemm(
                m,
                k,
                n,
                alpha.to_f32(),
                a.cast(),
                rsa,
                csa,
                b.cast(),
                rsb,
                csb,
                beta.to_f32(),
                c.cast(),
                rsc,
                csc,
            )
        }
    } else if TypeId::of::<E>() == TypeId::of::<f64>() {
        // SAFETY: `E` is `f64`; the caller's contract is `dgemm`'s.
        unsafe {
            matrixmultiply::dgemm(
                m,
                k,
                n,
                alpha.to_f64(),
                a.cast(),
                rsa,
                csa,
                b.cast(),
                rsb,
                csb,
                beta.to_f64(),
                c.cast(),
                rsc,
                csc,
            )
        }
    } else {
        // SAFETY: the caller's contract covers every element read and written here.
        unsafe { gemm_naive(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc) }
    }
}

/// `c = a @ b + bias` with `bias` (`n` values) added to every row; `c` is only written.
/// `f32` adds the bias as the GEMM stores each tile; other types fill `c` with the bias rows
/// and accumulate the product onto them.
///
/// # Safety
/// As for [`gemm_any`], and `bias` holds `n` elements.
#[allow(clippy::too_many_arguments)]
#[inline]
pub(crate) unsafe fn gemm_bias_any<E: Element>(
    m: usize,
    k: usize,
    n: usize,
    a: *const E,
    rsa: isize,
    csa: isize,
    b: *const E,
    rsb: isize,
    csb: isize,
    bias: *const E,
    c: *mut E,
    rsc: isize,
    csc: isize,
) {
    if TypeId::of::<E>() == TypeId::of::<f32>() {
        // SAFETY: `E` is `f32`; the caller's contract is `sgemm_bias`'s.
        unsafe {
            super::gemm::sgemm_bias(
                m,
                k,
                n,
                a.cast(),
                rsa,
                csa,
                b.cast(),
                rsb,
                csb,
                bias.cast(),
                c.cast(),
                rsc,
                csc,
            )
        }
        return;
    }
    for i in 0..m {
        for j in 0..n {
            // SAFETY: `(i, j)` is inside `c`'s `m x n` view and `j < n` inside `bias`.
            unsafe { *c.offset(i as isize * rsc + j as isize * csc) = *bias.add(j) };
        }
    }
    // SAFETY: as for this function; `c` now holds initialised values, so `beta = 1` may read it.
    unsafe {
        gemm_any(
            m,
            k,
            n,
            E::ONE,
            a,
            rsa,
            csa,
            b,
            rsb,
            csb,
            E::ONE,
            c,
            rsc,
            csc,
        )
    }
}

/// The textbook triple loop, for element types without a tuned kernel.
///
/// # Safety
/// As for [`gemm_any`].
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_naive<E: Element>(
    m: usize,
    k: usize,
    n: usize,
    alpha: E,
    a: *const E,
    rsa: isize,
    csa: isize,
    b: *const E,
    rsb: isize,
    csb: isize,
    beta: E,
    c: *mut E,
    rsc: isize,
    csc: isize,
) {
    for i in 0..m as isize {
        for j in 0..n as isize {
            let mut acc = E::ZERO;
            for p in 0..k as isize {
                // SAFETY: `(i, p)` and `(p, j)` lie inside the `a` and `b` views.
                acc += unsafe { *a.offset(i * rsa + p * csa) * *b.offset(p * rsb + j * csb) };
            }
            // SAFETY: `(i, j)` lies inside `c`; it is read only when `beta != 0`.
            unsafe {
                let dst = c.offset(i * rsc + j * csc);
                *dst = if beta == E::ZERO {
                    alpha * acc
                } else {
                    alpha * acc + beta * *dst
                };
            }
        }
    }
}
