//! A right-hand operand packed once for many products (a layer's weights while sampling).

use super::*;

/// A right-hand operand `B` (`k x n`) packed once for many products, as a layer's weights
/// are during sampling: every product with it skips packing `B`, which for a few rows costs
/// as much as the arithmetic. Panels span all of `k`.
#[derive(Clone, Debug)]
pub struct PackedB {
    pub(super) kernel: GemmKernel,
    pub(super) k: usize,
    pub(super) n: usize,
    /// Panels for the register kernels from `data[start]`, the first cache line; row-major
    /// `k x n` for the portable one (`start` 0).
    pub(super) data: Vec<f32>,
    pub(super) start: usize,
}

impl PackedB {
    /// Packs `B` with element `(p, j)` at `b[p * rsb + j * csb]` for the active kernel.
    ///
    /// # Panics
    /// If the view reaches outside `b` (an internal invariant: callers pass their own
    /// buffers).
    pub fn new(k: usize, n: usize, b: &[f32], rsb: usize, csb: usize) -> PackedB {
        if k > 0 && n > 0 {
            // Checked: a wrapped product could pass the test and send the packing outside `b`.
            let last = (k - 1)
                .checked_mul(rsb)
                .zip((n - 1).checked_mul(csb))
                .and_then(|(r, c)| r.checked_add(c));
            assert!(
                last.is_some_and(|l| l < b.len()),
                "PackedB: view out of bounds"
            );
        }
        let kernel = GemmKernel::active();
        let nr = match kernel {
            GemmKernel::Avx512 => 32,
            GemmKernel::Avx2 => 16,
            GemmKernel::Portable => 0,
        };
        if nr == 0 {
            let data = (0..k)
                .flat_map(|p| (0..n).map(move |j| b[p * rsb + j * csb]))
                .collect();
            return PackedB {
                kernel,
                k,
                n,
                data,
                start: 0,
            };
        }
        let len = n.div_ceil(nr) * k * nr;
        let (mut data, start) = zeroed_on_line(len);
        let panels = data[start..start + len].chunks_mut((k * nr).max(1));
        for (q, panel) in panels.enumerate() {
            // SAFETY: the assertion above keeps the k x n view inside b.
            unsafe { pack_b_panel(nr, q, n, k, b.as_ptr(), rsb as isize, csb as isize, panel) };
        }
        PackedB {
            kernel,
            k,
            n,
            data,
            start,
        }
    }

    /// Rows of `B` (the inner dimension of the product).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Columns of `B` (and of every product's `C`).
    pub fn n(&self) -> usize {
        self.n
    }

    /// `C = A B + beta * C` on the calling thread, `A` `m x k` with element `(i, p)` at
    /// `a[i * rsa + p * csa]`, `C` `m x n` row-major with rows `ldc` apart.
    ///
    /// # Panics
    /// If a view reaches outside its slice.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &self,
        m: usize,
        a: &[f32],
        rsa: usize,
        csa: usize,
        beta: f32,
        c: &mut [f32],
        ldc: usize,
    ) {
        let (k, n) = (self.k, self.n);
        if m == 0 || n == 0 {
            return;
        }
        // Checked: a wrapped product could pass a test and send the kernel outside a slice.
        let end_c = (m - 1).checked_mul(ldc).and_then(|r| r.checked_add(n));
        assert!(
            end_c.is_some_and(|e| e <= c.len()) && ldc >= n,
            "PackedB::gemm: C out of bounds"
        );
        if k > 0 {
            let last_a = (m - 1)
                .checked_mul(rsa)
                .zip((k - 1).checked_mul(csa))
                .and_then(|(r, c)| r.checked_add(c));
            assert!(
                last_a.is_some_and(|l| l < a.len()),
                "PackedB::gemm: A out of bounds"
            );
        }
        let (ap, cp) = (a.as_ptr(), c.as_mut_ptr());
        let (rsa, csa, ldc) = (rsa as isize, csa as isize, ldc as isize);
        // SAFETY: bounds asserted above; c is a distinct &mut slice.
        unsafe {
            if k == 0 {
                return scale_c(m, n, beta, cp, ldc, 1);
            }
            match self.kernel {
                #[cfg(target_arch = "x86_64")]
                GemmKernel::Avx512 => self.run::<x86::Avx512>(m, ap, rsa, csa, beta, cp, ldc),
                #[cfg(target_arch = "x86_64")]
                GemmKernel::Avx2 => self.run::<x86::Avx2>(m, ap, rsa, csa, beta, cp, ldc),
                _ => matrixmultiply::sgemm(
                    m,
                    k,
                    n,
                    1.0,
                    ap,
                    rsa,
                    csa,
                    self.data.as_ptr(),
                    n as isize,
                    1,
                    beta,
                    cp,
                    ldc,
                    1,
                ),
            }
        }
    }

    /// [`PackedB::gemm`] with the kernel `K`, after its bounds checks.
    ///
    /// # Safety
    /// The CPU supports `K` (the one this `B` was packed for); `A`'s `m x k` view at `a` must
    /// be readable, and `C`'s `m x n` rows `ldc` apart at `c` valid for writes (and reads if
    /// `beta != 0`), overlapping neither `A` nor the packed data.
    #[allow(clippy::too_many_arguments)]
    unsafe fn run<K: Micro>(
        &self,
        m: usize,
        a: *const f32,
        rsa: isize,
        csa: isize,
        beta: f32,
        c: *mut f32,
        ldc: isize,
    ) {
        let (k, n) = (self.k, self.n);
        let panels = n.div_ceil(K::NR);
        for i0 in (0..m).step_by(MC) {
            let rows = MC.min(m - i0);
            macro_kernel_a::<K>(
                rows,
                n,
                k,
                a.offset(i0 as isize * rsa),
                rsa,
                csa,
                &self.data[self.start..],
                0..panels,
                Epi {
                    alpha: 1.0,
                    beta,
                    bias: std::ptr::null(),
                },
                c.offset(i0 as isize * ldc),
                ldc,
                1,
            );
        }
    }
}
