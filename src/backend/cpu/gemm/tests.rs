use super::*;

fn reference(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    (rsa, csa): (usize, usize),
    b: &[f32],
    (rsb, csb): (usize, usize),
) -> Vec<f64> {
    let mut c = vec![0.0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            for p in 0..k {
                c[i * n + j] += a[i * rsa + p * csa] as f64 * b[p * rsb + j * csb] as f64;
            }
        }
    }
    c
}

fn data(len: usize, seed: u32) -> Vec<f32> {
    (0..len)
        .map(|i| {
            let h = (i as u32 ^ seed)
                .wrapping_mul(2_654_435_761)
                .rotate_left(13);
            (h % 2001) as f32 / 1000.0 - 1.0
        })
        .collect()
}

fn kernels() -> Vec<GemmKernel> {
    let all = [GemmKernel::Avx512, GemmKernel::Avx2, GemmKernel::Portable];
    let mut ks: Vec<_> = all.into_iter().filter(|k| k.supported()).collect();
    if ks.len() < all.len() {
        eprintln!("gemm tests: this CPU runs only {ks:?}");
    }
    ks.dedup();
    ks
}

/// Every kernel against an f64 reference over shapes that hit full tiles, edges in both
/// directions, several K blocks, every operand layout, alpha/beta and strided C.
#[test]
fn microkernel_ceiling_counts_its_flops() {
    for kernel in [GemmKernel::Avx512, GemmKernel::Avx2, GemmKernel::Portable] {
        let ran = if kernel.supported() {
            kernel
        } else {
            GemmKernel::best()
        };
        let tile = match ran {
            GemmKernel::Avx512 => 12 * 32,
            GemmKernel::Avx2 => 6 * 16,
            GemmKernel::Portable => 8 * 8,
        };
        assert_eq!(kernel.microkernel_flops(3), (2 * 3 * tile * KC) as f64);
    }
}

/// Packing buffers start on a cache line, however the thread's buffer grew, and so do
/// prepacked weights.
#[test]
fn packed_buffers_start_on_cache_lines() {
    for len in [1, 100, 5_000, 70_000, 300_000, 1 << 20, 3] {
        with_buf(&BUF_B, len, |buf| {
            assert_eq!(buf.len(), len);
            assert_eq!(buf.as_ptr() as usize % 64, 0, "len {len}");
        });
    }
    let b = data(40 * 70, 3);
    for (rsb, csb) in [(70, 1), (1, 40)] {
        let packed = PackedB::new(40, 70, &b, rsb, csb);
        if packed.kernel != GemmKernel::Portable {
            assert_eq!(packed.data[packed.start..].as_ptr() as usize % 64, 0);
        }
    }
}

/// Packing `A` and `B` is a pure rearrangement: every path (8 x 8 transposed blocks,
/// vector copies, the element-by-element remainders and zero padding) against the
/// definition, for row- and column-major operands.
#[test]
fn packing_matches_the_definition() {
    let src = data(64 * 80, 7);
    for &(rows, kc) in &[
        (12usize, 8usize),
        (12, 13),
        (25, 7),
        (24, 33),
        (5, 4),
        (30, 1),
    ] {
        // Row-major rows 80 apart, and column-major columns 70 apart.
        for (rsa, csa) in [(80isize, 1isize), (1, 70)] {
            for mr in [12usize, 6] {
                let panels = rows.div_ceil(mr);
                let mut got = vec![f32::NAN; panels * mr * kc];
                // SAFETY: row-major, the last element read is (rows - 1) * 80 + kc - 1;
                // column-major (rows - 1) + (kc - 1) * 70; both below 64 * 80. `got`
                // holds the `panels * mr * kc` values `pack_a` writes; the pack kernels
                // are plain Rust, so any CPU runs them.
                unsafe {
                    match mr {
                        12 => pack_a::<12>(rows, kc, src.as_ptr(), rsa, csa, &mut got),
                        _ => pack_a::<6>(rows, kc, src.as_ptr(), rsa, csa, &mut got),
                    }
                }
                for (at, &g) in got.iter().enumerate() {
                    let (panel, p, i) = (at / (mr * kc), at % (mr * kc) / mr, at % mr);
                    let r = panel * mr + i;
                    let want = if r < rows {
                        src[(r as isize * rsa + p as isize * csa) as usize]
                    } else {
                        0.0
                    };
                    assert_eq!(
                        g, want,
                        "A {rows}x{kc} mr {mr} strides ({rsa}, {csa}) at {at}"
                    );
                }
            }
        }
    }
    for &(cols, kc, q) in &[
        (32usize, 8usize, 0usize),
        (70, 13, 1),
        (70, 9, 2),
        (40, 16, 1),
        (16, 5, 0),
    ] {
        // Row-major, column-major, and column-major with the columns flipped (from the
        // last one at offset 4900).
        for (rsb, csb, base) in [(80isize, 1isize, 0isize), (1, 70, 0), (1, -70, 4900)] {
            for nr in [32usize, 16] {
                if q * nr >= cols {
                    continue;
                }
                let mut got = vec![f32::NAN; kc * nr];
                // SAFETY: `base` is 0 or 4900, inside the 5120 values of `src`.
                let b = unsafe { src.as_ptr().offset(base) };
                // SAFETY: every element read, base + p * rsb + j * csb for p < kc and
                // j < cols, lies in 0..5120 for the strides above (the flipped layout
                // starts column j at 4900 - 70 j, from 4900 down to 70); `got` holds the
                // `kc * nr` values of one panel.
                unsafe { pack_b_panel(nr, q, cols, kc, b, rsb, csb, &mut got) };
                for (at, &g) in got.iter().enumerate() {
                    let (p, j) = (at / nr, q * nr + at % nr);
                    let want = if j < cols {
                        src[(base + p as isize * rsb + j as isize * csb) as usize]
                    } else {
                        0.0
                    };
                    assert_eq!(
                        g, want,
                        "B panel {q} of {kc}x{cols} nr {nr} strides ({rsb}, {csb}) at {at}"
                    );
                }
            }
        }
    }
}

#[test]
fn split_over_k_gives_the_same_bits_in_either_orientation() {
    // 64 x 96 is split over K as 96 x 64 slices (fewer tiles); computing C^T = B^T A^T
    // directly must give the very same bits.
    let (m, k, n) = (64, 1100, 96);
    let (a, b) = (data(m * k, 6), data(k * n, 7));
    for kernel in kernels() {
        let mut c = vec![0.0f32; m * n];
        let mut ct = vec![0.0f32; n * m];
        // SAFETY: `a` (m x k), `b` (k x n), `c` (m x n) and `ct` (n x m) are distinct
        // vectors of exactly the sizes the strides address; `kernels()` lists only
        // kernels this CPU supports.
        unsafe {
            let (ap, bp) = (a.as_ptr(), b.as_ptr());
            let (k_, n_) = (k as isize, n as isize);
            sgemm_with(
                kernel,
                m,
                k,
                n,
                1.0,
                ap,
                k_,
                1,
                bp,
                n_,
                1,
                0.0,
                c.as_mut_ptr(),
                n_,
                1,
            );
            let m_ = m as isize;
            sgemm_with(
                kernel,
                n,
                k,
                m,
                1.0,
                bp,
                1,
                n_,
                ap,
                1,
                k_,
                0.0,
                ct.as_mut_ptr(),
                m_,
                1,
            );
        }
        for i in 0..m {
            for j in 0..n {
                assert_eq!(
                    c[i * n + j].to_bits(),
                    ct[j * m + i].to_bits(),
                    "{kernel:?}"
                );
            }
        }
    }
}

#[test]
fn kernels_match_reference() {
    let shapes = [
        (1, 1, 1),
        (5, 3, 7),
        (12, 9, 32),
        (13, 300, 33),
        (150, 257, 70),
        (49, 64, 49),
        // Two column stripes (under the tests' PACK_B_MAX); three NC blocks in one.
        (300, 40, 1100),
        (30, 8, 2100),
        // Long K into a small output: split over K; the second as C^T = B^T A^T.
        (20, 1500, 37),
        (64, 1100, 96),
    ];
    for kernel in kernels() {
        for &(m, k, n) in &shapes {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let a = data(m * k, 1);
                let b = data(k * n, 2);
                let sa = if ta { (1, m) } else { (k, 1) };
                let sb = if tb { (1, k) } else { (n, 1) };
                let want = reference(m, k, n, &a, sa, &b, sb);
                for (alpha, beta, col_major_c) in
                    [(1.0, 0.0, false), (0.5, 2.0, false), (1.0, 1.0, true)]
                {
                    let c0 = data(m * n, 3);
                    let mut c = c0.clone();
                    let (rsc, csc) = if col_major_c { (1, m) } else { (n, 1) };
                    // SAFETY: `a`, `b` and `c` are distinct vectors of m*k, k*n and m*n
                    // values, each addressed by its strides within those sizes;
                    // `kernels()` lists only kernels this CPU supports.
                    unsafe {
                        sgemm_with(
                            kernel,
                            m,
                            k,
                            n,
                            alpha,
                            a.as_ptr(),
                            sa.0 as isize,
                            sa.1 as isize,
                            b.as_ptr(),
                            sb.0 as isize,
                            sb.1 as isize,
                            beta,
                            c.as_mut_ptr(),
                            rsc as isize,
                            csc as isize,
                        )
                    };
                    for i in 0..m {
                        for j in 0..n {
                            let got = c[i * rsc + j * csc] as f64;
                            let w = alpha as f64 * want[i * n + j]
                                + beta as f64 * c0[i * rsc + j * csc] as f64;
                            let tol = 1e-5 * (k as f64).sqrt() * (1.0 + w.abs());
                            assert!(
                                (got - w).abs() <= tol,
                                "{kernel:?} {m}x{k}x{n} ta={ta} tb={tb} alpha={alpha} \
                                 beta={beta}: C[{i},{j}] = {got}, want {w}"
                            );
                        }
                    }
                }
            }
        }
    }
}

/// `C = A B` for row-major `A` (`m x k`) and `B` (`k x n`) on a pool of `threads`; `C`
/// starts as NaN, which the product (`beta = 0`) must never read.
fn row_major_in_pool(
    kernel: GemmKernel,
    threads: usize,
    (m, k, n): (usize, usize, usize),
    a: &[f32],
    b: &[f32],
) -> Vec<f32> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let mut c = vec![f32::NAN; m * n];
    // SAFETY: the callers pass `a` and `b` of m*k and k*n values, row-major as the
    // strides say; `c` is a fresh m*n vector; `kernel` comes from `kernels()` (supported).
    pool.install(|| unsafe {
        sgemm_with(
            kernel,
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            k as isize,
            1,
            b.as_ptr(),
            n as isize,
            1,
            0.0,
            c.as_mut_ptr(),
            n as isize,
            1,
        )
    });
    c
}

/// Tall tasks with enough rows pack their own blocks of `B` (one thread, or two here),
/// and with fewer rows per task share one packing (three): the same bits either way, and
/// the reference's values.
#[test]
fn tasks_packing_their_own_b_match_the_shared_packing() {
    // Two K blocks; the second shape also two column stripes and two NC blocks.
    for &(m, k, n) in &[(640usize, 300usize, 200usize), (600, 300, 1100)] {
        let b_bytes = k * n.div_ceil(32) * 32 * 4;
        let plan = |threads| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| split(m, 12, n.div_ceil(32), m * k * n, b_bytes, false))
        };
        assert!(plan(1).private_b && !plan(1).parallel);
        assert!(plan(2).private_b && plan(2).parallel);
        assert!(!plan(3).private_b && plan(3).parallel);
        let (a, b) = (data(m * k, 12), data(k * n, 13));
        let want = reference(m, k, n, &a, (k, 1), &b, (n, 1));
        for kernel in kernels() {
            let one = row_major_in_pool(kernel, 1, (m, k, n), &a, &b);
            for (&got, &w) in one.iter().zip(&want) {
                let got = got as f64;
                assert!(
                    (got - w).abs() <= 1e-4 * (1.0 + w.abs()),
                    "{kernel:?}: {got} vs {w}"
                );
            }
            for threads in [2, 3] {
                let c = row_major_in_pool(kernel, threads, (m, k, n), &a, &b);
                assert!(
                    one.iter().zip(&c).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{kernel:?} {m}x{k}x{n}: {threads} threads differ from 1"
                );
            }
        }
    }
}

/// The split of a product over threads changes which thread computes what, never the
/// order in which any output element is summed: bit-identical results on 1, 2 and 3
/// threads (row tasks, column chunks, stripes and the K split all differ between them).
#[test]
fn results_do_not_depend_on_thread_count() {
    let shapes = [
        (300, 40, 1100),
        (200, 300, 96),
        (64, 2100, 40),
        (7, 1500, 700),
    ];
    for kernel in kernels() {
        for &(m, k, n) in &shapes {
            let (a, b) = (data(m * k, 4), data(k * n, 5));
            let one = row_major_in_pool(kernel, 1, (m, k, n), &a, &b);
            for threads in [2, 3] {
                let c = row_major_in_pool(kernel, threads, (m, k, n), &a, &b);
                assert!(
                    one.iter().zip(&c).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{kernel:?} {m}x{k}x{n}: {threads} threads differ from 1"
                );
            }
        }
    }
}

/// The bias epilogue adds the bias once, also when K spans several blocks, and at edges.
#[test]
fn bias_epilogue_matches_reference() {
    for &(m, k, n) in &[
        (13, 300, 70),
        (3, 5, 7),
        (40, 64, 32),
        (25, 600, 33),
        (30, 1300, 70),
        // Split over K, each slice as C^T = B^T A^T: the bias goes along C's columns.
        (64, 1100, 96),
    ] {
        let (a, b, bias) = (data(m * k, 9), data(k * n, 10), data(n, 11));
        let want = reference(m, k, n, &a, (k, 1), &b, (1, k));
        let mut c = vec![f32::NAN; m * n];
        // SAFETY: `a` (m x k row-major), `b` (read as k x n with strides (1, k)), `bias`
        // (n values) and `c` (m x n) are distinct vectors of exactly those sizes.
        unsafe {
            sgemm_bias(
                m,
                k,
                n,
                a.as_ptr(),
                k as isize,
                1,
                b.as_ptr(),
                1,
                k as isize,
                bias.as_ptr(),
                c.as_mut_ptr(),
                n as isize,
                1,
            )
        };
        for i in 0..m {
            for j in 0..n {
                let w = want[i * n + j] + bias[j] as f64;
                let got = c[i * n + j] as f64;
                assert!(
                    (got - w).abs() <= 1e-4 * (1.0 + w.abs()),
                    "{m}x{k}x{n} [{i},{j}]"
                );
            }
        }
    }
}

/// beta = 0 never reads C: NaN there must not leak into the result.
#[test]
fn beta_zero_ignores_c() {
    for kernel in kernels() {
        let (m, k, n) = (14, 5, 35);
        let (a, b) = (data(m * k, 4), data(k * n, 5));
        // The helper's C starts as NaN.
        let c = row_major_in_pool(kernel, 1, (m, k, n), &a, &b);
        assert!(c.iter().all(|v| v.is_finite()), "{kernel:?}");
    }
}

/// Prepacked weights give the same product as the general path, for the `[out, in]`
/// weight layout read transposed.
#[test]
fn packed_b_matches_reference() {
    for &(m, k, n) in &[(1, 128, 384), (8, 512, 128), (13, 7, 5), (30, 64, 33)] {
        let a = data(m * k, 6);
        let w = data(n * k, 7); // [n, k]
        let packed = PackedB::new(k, n, &w, 1, k);
        let want = reference(m, k, n, &a, (k, 1), &w, (1, k));
        for beta in [0.0f32, 1.0] {
            let c0 = data(m * n, 8);
            let mut c = c0.clone();
            packed.gemm(m, &a, k, 1, beta, &mut c, n);
            for i in 0..m * n {
                let w = want[i] + beta as f64 * c0[i] as f64;
                assert!(
                    (c[i] as f64 - w).abs() <= 1e-4 * (1.0 + w.abs()),
                    "{m}x{k}x{n} beta {beta}: {} vs {w}",
                    c[i]
                );
            }
        }
    }
}
