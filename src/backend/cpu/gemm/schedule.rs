//! How one product is divided among rayon tasks: row tasks over a shared packed `B`, column
//! stripes, K-split for tall-thin products. Every output element is summed by one task.

use super::*;

/// Bytes of packed `B` that stay in a core's L2 cache (2 MiB here, shared with blocks of `A`
/// and `C`) while a thread runs several row tasks against it. Tests use a small limit so that
/// their shapes take both task layouts of [`split`].
pub(super) const L2_B_BYTES: usize = if cfg!(test) { 16 << 10 } else { 1 << 20 };

/// How a stripe's product is divided among tasks: see [`split`].
pub(super) struct Split {
    /// Row tasks; [`task_rows`] deals the rows out, and a task runs its rows `MC` at a time.
    pub(super) mtasks: usize,
    /// Column chunks per row task.
    pub(super) nchunks: usize,
    /// Whether to run the tasks over rayon.
    pub(super) parallel: bool,
    /// Whether each task packs every `KC x NC` block of `B` itself, just before using it,
    /// instead of all tasks sharing one packing pass.
    pub(super) private_b: bool,
}

/// Fewest rows a task must have to pack its own copy of `B` (see [`split`]).
pub(super) const PRIVATE_B_MIN_ROWS: usize = 2 * MC;

/// How to split `m` rows and `panels` column panels into tasks. Serial and small products
/// keep the same tasks, run one after another on the calling thread.
pub(super) fn split(
    m: usize,
    mr: usize,
    panels: usize,
    macs: usize,
    b_bytes: usize,
    serial: bool,
) -> Split {
    // Packed `B` larger than L2 comes from L3 once per task, and the first row tile of each
    // block waits on it (the kernel reads 128 bytes of `B` every 12 cycles). So tasks are
    // then few and tall: one per thread, each running all of its rows, `MC` at a time,
    // against a `KC x NC` block of `B` while the block is in L2 (Goto's loop order). With a
    // smaller `B`, a task of `MC` rows keeps its block of `C` in cache over all of `K`.
    //
    // A tall task packs each block of `B` itself, right before using it: the block is then
    // already in the core's L2 when the microkernel first reads it, where a shared packing
    // pass would have written all of `B` (more than L2) out to L3 and the tasks read it
    // back, and one fork/join less. Each thread packs all of `B`, which costs little next to
    // the arithmetic of its hundreds of rows (measured in docs/performance.md).
    let tall = b_bytes > L2_B_BYTES;
    let threads = rayon::current_num_threads();
    let mblocks = m.div_ceil(MC);
    if serial || threads <= 1 || macs < PAR_MIN_MACS {
        return Split {
            mtasks: if tall { 1 } else { mblocks },
            nchunks: 1,
            parallel: false,
            private_b: tall,
        };
    }
    if tall && m >= threads * MC {
        return Split {
            mtasks: threads,
            nchunks: 1,
            parallel: true,
            private_b: m / threads >= PRIVATE_B_MIN_ROWS,
        };
    }
    // A whole number of row tasks per thread: 2,048 rows as 15 blocks of 144 would leave one
    // of two threads idle for a fifteenth of the product.
    let mtasks = (mblocks.div_ceil(threads) * threads).min(m.div_ceil(mr));
    // Enough tasks for every thread to take a few, so one slow thread does not hold up the
    // rest; column chunks only when there are too few row tasks.
    let want = 3 * threads;
    let nchunks = if mtasks >= want {
        1
    } else {
        want.div_ceil(mtasks).min(panels)
    };
    let nchunks = nchunks.max(1);
    Split {
        mtasks,
        nchunks,
        parallel: mtasks * nchunks > 1,
        private_b: false,
    }
}

/// Rows `i0..i1` of row task `t` of `mtasks`: whole `mr`-row tiles dealt out evenly (the
/// last task also takes a partial tile).
pub(super) fn task_rows(t: usize, mtasks: usize, m: usize, mr: usize) -> (usize, usize) {
    let tiles = m.div_ceil(mr);
    let (t0, t1) = (t * tiles / mtasks, (t + 1) * tiles / mtasks);
    ((t0 * mr).min(m), (t1 * mr).min(m))
}

/// Depth of the slices a long-`K` product is split into (see [`ksplit`]).
pub(super) const KSPLIT_CHUNK: usize = 512;

/// Whether to split `K` across threads: a long reduction into a small output, like a weight
/// gradient `g^T x` (`K` = every token of the batch). Split by rows and columns, such a
/// product gives each thread a few row tiles and packs all of the long `B` for them; split
/// over `K`, each thread packs only its slice (1.2-1.5x faster at 128 x 3,136 x 128-512).
///
/// The choice depends on the shape alone, not on the number of threads, so that a product
/// sums in the same order on any machine.
pub(super) fn use_ksplit(m: usize, k: usize, n: usize) -> bool {
    k >= 2 * KSPLIT_CHUNK && m * n <= 512 * 512 && m * n * k >= PAR_MIN_MACS
}

/// `C = alpha A B + bias + beta C` with `K` cut into equal slices of about `KSPLIT_CHUNK`,
/// each slice's product computed on one thread into its own buffer, and the buffers summed
/// in slice order. The slicing depends only on `K`, so the result does not depend on the
/// number of threads.
///
/// # Safety
/// As for [`gemm_dispatch`] with the kernel `K`.
pub(super) unsafe fn ksplit<K: Micro>(args: Args, bias: *const f32) {
    let (m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc) = args;
    // A multiple of 4 slices keeps 2 or 4 threads evenly loaded (7 slices on 2 threads
    // would leave one idle for an eighth of the time).
    let slices = k.div_ceil(KSPLIT_CHUNK).next_multiple_of(4);
    let per = k.div_ceil(slices);
    // Each slice may be computed as `C^T = B^T A^T` instead, when that needs fewer tiles:
    // a weight gradient with 64 rows fills its last 12-row tile only a third, while its 192
    // or 256 columns would fill 16 or 22 tiles exactly (10-16 % faster measured). Every
    // element still sums the same products in the same order, so the bits do not change.
    let tiles = |rows: usize, cols: usize| rows.div_ceil(K::MR) * cols.div_ceil(K::NR);
    let swap = tiles(n, m) < tiles(m, n);
    let (a, b, c, bias) = (CPtr(a), CPtr(b), Ptr(c), CPtr(bias));
    with_buf(&BUF_K, slices * m * n, |parts| {
        parts
            .par_chunks_mut(m * n)
            .enumerate()
            .for_each(|(t, part)| {
                let k0 = t * per;
                let (a, b) = (
                    a.get().offset(k0 as isize * csa),
                    b.get().offset(k0 as isize * rsb),
                );
                let kt = per.min(k - k0);
                let out = part.as_mut_ptr();
                let sub = if swap {
                    (
                        n, kt, m, alpha, b, csb, rsb, a, csa, rsa, 0.0, out, m as isize, 1,
                    )
                } else {
                    (
                        m, kt, n, alpha, a, rsa, csa, b, rsb, csb, 0.0, out, n as isize, 1,
                    )
                };
                blocked::<K>(sub, std::ptr::null(), true);
            });
        let parts: &[f32] = parts;
        // Each part holds `lines` contiguous lines of `len`: rows of `C`, or of `C^T` when
        // swapped. Summed a chunk of a line at a time, slice after slice (vector adds along
        // the line; each element still sums its slices in order), then stored.
        let (lines, len) = if swap { (n, m) } else { (m, n) };
        (0..lines).into_par_iter().for_each(|l| {
            const CHUNK: usize = 64;
            let mut acc = [0.0f32; CHUNK];
            for x0 in (0..len).step_by(CHUNK) {
                let at = l * len + x0;
                let acc = &mut acc[..CHUNK.min(len - x0)];
                acc.copy_from_slice(&parts[at..at + acc.len()]);
                for part in parts.chunks_exact(m * n).skip(1) {
                    for (a, &p) in acc.iter_mut().zip(&part[at..]) {
                        *a += p;
                    }
                }
                for (x, &v) in acc.iter().enumerate() {
                    let (i, j) = if swap { (x0 + x, l) } else { (l, x0 + x) };
                    let v = if bias.get().is_null() {
                        v
                    } else {
                        v + *bias.get().add(j)
                    };
                    let p = c.get().offset(i as isize * rsc + j as isize * csc);
                    *p = if beta == 0.0 { v } else { v + beta * *p };
                }
            }
        });
    });
}

/// Floats of packed `B` a product holds at once (16 MB). A larger `B` is multiplied in
/// column stripes, each packed whole and then used. Tests use a small limit so that their
/// shapes take several stripes.
pub(super) const PACK_B_MAX: usize = if cfg!(test) { 64 << 10 } else { 4 << 20 };

/// The blocked product; `serial` keeps it on the calling thread.
///
/// Each column stripe of `B` (all of `B` for the products a TarFlow runs) is packed in one
/// parallel pass, as `KC x NC` blocks of `NR`-wide panels, and then every task (a block of
/// `MC` rows times a range of panels) runs all of its `KC` and `NC` blocks on its own. Two
/// fork/joins per stripe instead of two per `KC` block: between blocks, rayon's workers
/// would go to sleep and have to be woken for little work each time. Tall tasks with enough
/// rows (a `B` larger than L2) skip the shared pass and pack their own blocks as they go (see
/// [`split`]): one fork/join.
///
/// # Safety
/// As for [`gemm_dispatch`] with the kernel `K`.
pub(super) unsafe fn blocked<K: Micro>(args: Args, bias: *const f32, serial: bool) {
    let (m, k, n, ..) = args;
    let nr = K::NR;
    // NC is a multiple of every kernel's NR, so NC blocks start on panel boundaries.
    let stripe = (PACK_B_MAX / (k * NC)).max(1) * NC;
    let stripe = stripe.min(n.div_ceil(nr) * nr);
    let plan = |cols: usize| {
        let panels = cols.div_ceil(nr);
        let b_bytes = k * panels * nr * std::mem::size_of::<f32>();
        split(m, K::MR, panels, m * k * cols, b_bytes, serial)
    };
    // The shared buffer only for stripes whose tasks share one packing of `B`.
    let shared = (0..n)
        .step_by(stripe)
        .any(|js| !plan(stripe.min(n - js)).private_b);
    with_buf(&BUF_B, if shared { k * stripe } else { 0 }, |bp| {
        for js in (0..n).step_by(stripe) {
            let cols = stripe.min(n - js);
            stripe_product::<K>(args, bias, plan(cols), js, cols, bp);
        }
    });
}

/// Offset in a packed stripe of the `KC x NC` block at columns `jc` and depth `pc` (both
/// relative to the stripe): earlier `NC` blocks hold `k` rows of their panels, earlier `KC`
/// blocks of this one `KC` rows of its `panels`.
pub(super) fn block_offset(k: usize, nr: usize, jc: usize, pc: usize, panels: usize) -> usize {
    jc * k + pc * panels * nr
}

/// [`blocked`] for the `cols` columns of `B` and `C` from column `js`.
///
/// # Safety
/// As for [`blocked`], with `js + cols <= n`, `sp` planned for these `cols`, and `bp` large
/// enough for the stripe's packed panels when the plan shares them.
pub(super) unsafe fn stripe_product<K: Micro>(
    args: Args,
    bias: *const f32,
    sp: Split,
    js: usize,
    cols: usize,
    bp: &mut [f32],
) {
    let (m, k, _, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc) = args;
    let nr = K::NR;
    let panels = cols.div_ceil(nr);
    let Split {
        mtasks,
        nchunks,
        parallel,
        private_b,
    } = sp;
    let (a, b, c, bias) = (
        CPtr(a),
        CPtr(b.offset(js as isize * csb)),
        Ptr(c),
        CPtr(bias),
    );
    // Pack: one unit per (NC block, KC block, panel). Only the last NC block may be
    // narrower, so a unit's NC block is its index over a full block's unit count.
    let full_units = k.div_ceil(KC) * (NC / nr);
    let units = (cols / NC) * full_units + k.div_ceil(KC) * (cols % NC).div_ceil(nr);
    let dst = Ptr(bp.as_mut_ptr());
    let pack = |u: usize| {
        let (jc, u) = (u / full_units * NC, u % full_units);
        let ncols = NC.min(cols - jc);
        let np = ncols.div_ceil(nr);
        let (pb, q) = (u / np, u % np);
        let pc = pb * KC;
        let kc = KC.min(k - pc);
        let off = block_offset(k, nr, jc, pc, np) + q * kc * nr;
        let panel = std::slice::from_raw_parts_mut(dst.get().add(off), kc * nr);
        let src = b.get().offset(pc as isize * rsb + jc as isize * csb);
        pack_b_panel(nr, q, ncols, kc, src, rsb, csb, panel);
    };
    // Private tasks pack their own blocks below.
    if !private_b && parallel {
        (0..units).into_par_iter().for_each(pack);
    } else if !private_b {
        (0..units).for_each(pack);
    }
    let bp: &[f32] = bp;
    let per = panels.div_ceil(nchunks);
    let task = |t: usize| {
        let (ib, ch) = (t / nchunks, t % nchunks);
        let (q_lo, q_hi) = ((ch * per).min(panels), ((ch + 1) * per).min(panels));
        let (t0, t1) = task_rows(ib, mtasks, m, K::MR);
        for jc in (0..cols).step_by(NC) {
            let ncols = NC.min(cols - jc);
            let np = ncols.div_ceil(nr);
            // This chunk's panels inside the NC block.
            let first = jc / nr;
            let qs = q_lo.max(first) - first..q_hi.min(first + np).max(first) - first;
            if qs.is_empty() {
                continue;
            }
            for pc in (0..k).step_by(KC) {
                let kc = KC.min(k - pc);
                let run = |block: &[f32]| {
                    // The bias goes in with the first K block; later ones accumulate.
                    let epi = Epi {
                        alpha,
                        beta: if pc == 0 { beta } else { 1.0 },
                        bias: if pc == 0 && !bias.get().is_null() {
                            bias.get().add(js + jc)
                        } else {
                            std::ptr::null()
                        },
                    };
                    // MC is a multiple of MR, so every block but a task's last is whole tiles.
                    for i0 in (t0..t1).step_by(MC) {
                        macro_kernel_a::<K>(
                            MC.min(t1 - i0),
                            ncols,
                            kc,
                            a.get().offset(i0 as isize * rsa + pc as isize * csa),
                            rsa,
                            csa,
                            block,
                            qs.clone(),
                            epi,
                            c.get().offset(i0 as isize * rsc + (js + jc) as isize * csc),
                            rsc,
                            csc,
                        );
                    }
                };
                if private_b {
                    // The whole NC block: private tasks are never cut into column chunks.
                    with_buf(&BUF_P, np * kc * nr, |block| {
                        let src = b.get().offset(pc as isize * rsb + jc as isize * csb);
                        for (q, panel) in block.chunks_exact_mut(kc * nr).enumerate() {
                            pack_b_panel(nr, q, ncols, kc, src, rsb, csb, panel);
                        }
                        run(block);
                    });
                } else {
                    run(&bp[block_offset(k, nr, jc, pc, np)..]);
                }
            }
        }
    };
    if parallel {
        (0..mtasks * nchunks).into_par_iter().for_each(task);
    } else {
        (0..mtasks * nchunks).for_each(task);
    }
}
