//! This machine's ceilings: f32 FMA throughput with every rayon thread busy, and memory
//! bandwidth (STREAM-style triad) from DRAM and from cache.
//!
//! The FMA kernels keep 12 independent accumulator chains in registers, more than the FMA
//! latency (4 cycles on recent x86) times the number of FMA ports (2) needs, so the loop is
//! bound by issue rate, not by latency. On x86-64 the widest instruction set present is
//! used: AVX-512 (inline assembly, so the crate needs no newer compiler than its minimum),
//! else AVX2+FMA (intrinsics behind `#[target_feature]`), else a portable loop that the
//! compiler may or may not vectorise (reported as `portable`, a lower bound).

use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

/// Sizes and durations for [`measure_peak`].
#[derive(Clone, Debug)]
pub struct PeakConfig {
    /// Approximate seconds for one timed FMA run.
    pub fma_seconds: f64,
    /// Timed runs per measurement (the best is kept: a ceiling, not a typical value).
    pub repeats: usize,
    /// Elements (f32) per array of the DRAM triad; three arrays are allocated.
    pub dram_elems: usize,
    /// Elements (f32) per array of the cache triad, per thread.
    pub cache_elems_per_thread: usize,
}

impl Default for PeakConfig {
    fn default() -> Self {
        PeakConfig {
            fma_seconds: 0.25,
            repeats: 3,
            // 3 x 96 MB: larger than the last-level cache of the machines we run on.
            dram_elems: 24 << 20,
            // 3 x 512 KB per thread: inside a 2 MB L2 (on smaller L2s, the L3), and with two
            // threads as large as an elementwise op on 1 MB tensors (3 MB moved).
            cache_elems_per_thread: 128 << 10,
        }
    }
}

impl PeakConfig {
    /// Shorter runs and smaller arrays, for smoke tests.
    pub fn quick() -> Self {
        PeakConfig {
            fma_seconds: 0.05,
            repeats: 2,
            dram_elems: 8 << 20,
            cache_elems_per_thread: 128 << 10,
        }
    }
}

/// Measured ceilings of this machine.
#[derive(Clone, Debug, Serialize)]
pub struct Peak {
    /// Threads that ran simultaneously (the rayon pool size).
    pub threads: usize,
    /// Instruction set of the fastest FMA kernel: `avx512f`, `avx2+fma` or `portable`.
    pub isa: &'static str,
    /// f32 GFLOP/s of the fastest kernel on all threads (an FMA counts as 2 flops).
    pub gflops: f64,
    /// f32 GFLOP/s with AVX2+FMA on all threads, where available.
    pub avx2_gflops: Option<f64>,
    /// f32 GFLOP/s with AVX-512 on all threads, where available.
    pub avx512_gflops: Option<f64>,
    /// f32 GFLOP/s of the fastest kernel on one thread.
    pub gflops_one_thread: f64,
    /// Triad `a = b + s*c` bandwidth in GB/s on arrays far larger than the caches.
    pub dram_gbps: f64,
    /// Triad bandwidth in GB/s with each thread's arrays in its cache.
    pub cache_gbps: f64,
    /// Bytes of the cache triad's working set, all threads together: kernels that move no
    /// more than this are compared with `cache_gbps`, larger ones with `dram_gbps`.
    pub cache_working_set: usize,
}

impl Peak {
    /// The bandwidth ceiling for a kernel touching `bytes` in total.
    pub fn bandwidth_for(&self, bytes: usize) -> f64 {
        if bytes <= self.cache_working_set {
            self.cache_gbps
        } else {
            self.dram_gbps
        }
    }
}

/// One FMA kernel: `iters` iterations; returns (flops per iteration, a value to keep alive).
type FmaKernel = fn(u64) -> (f64, f32);

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// 12 chains of `acc = acc * a + b` on 8-lane vectors.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn fma_avx2_inner(iters: u64) -> f32 {
        let a = _mm256_set1_ps(0.999_999);
        let b = _mm256_set1_ps(1e-7);
        let mut acc = [_mm256_setzero_ps(); 12];
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = _mm256_fmadd_ps(*v, a, b);
            }
        }
        let mut s = _mm256_setzero_ps();
        for v in acc {
            s = _mm256_add_ps(s, v);
        }
        let mut out = [0f32; 8];
        _mm256_storeu_ps(out.as_mut_ptr(), s);
        out.iter().sum()
    }

    pub fn fma_avx2(iters: u64) -> (f64, f32) {
        // SAFETY: only selected after `is_x86_feature_detected!("avx2")` and `("fma")`.
        (12.0 * 8.0 * 2.0, unsafe { fma_avx2_inner(iters) })
    }

    /// 12 chains of `zmm_i += zmm12 * zmm13` on 16-lane vectors. All registers start at zero
    /// (zero operands never take a slow denormal path) and are clobbered explicitly.
    pub fn fma_avx512(iters: u64) -> (f64, f32) {
        if iters == 0 {
            return (384.0, 0.0);
        }
        // SAFETY: only selected after `is_x86_feature_detected!("avx512f")`; every register
        // written is declared clobbered, and the loop touches no memory.
        unsafe {
            std::arch::asm!(
                "vxorps xmm0, xmm0, xmm0",
                "vxorps xmm1, xmm1, xmm1",
                "vxorps xmm2, xmm2, xmm2",
                "vxorps xmm3, xmm3, xmm3",
                "vxorps xmm4, xmm4, xmm4",
                "vxorps xmm5, xmm5, xmm5",
                "vxorps xmm6, xmm6, xmm6",
                "vxorps xmm7, xmm7, xmm7",
                "vxorps xmm8, xmm8, xmm8",
                "vxorps xmm9, xmm9, xmm9",
                "vxorps xmm10, xmm10, xmm10",
                "vxorps xmm11, xmm11, xmm11",
                "vxorps xmm12, xmm12, xmm12",
                "vxorps xmm13, xmm13, xmm13",
                "2:",
                "vfmadd231ps zmm0, zmm12, zmm13",
                "vfmadd231ps zmm1, zmm12, zmm13",
                "vfmadd231ps zmm2, zmm12, zmm13",
                "vfmadd231ps zmm3, zmm12, zmm13",
                "vfmadd231ps zmm4, zmm12, zmm13",
                "vfmadd231ps zmm5, zmm12, zmm13",
                "vfmadd231ps zmm6, zmm12, zmm13",
                "vfmadd231ps zmm7, zmm12, zmm13",
                "vfmadd231ps zmm8, zmm12, zmm13",
                "vfmadd231ps zmm9, zmm12, zmm13",
                "vfmadd231ps zmm10, zmm12, zmm13",
                "vfmadd231ps zmm11, zmm12, zmm13",
                "dec {n}",
                "jnz 2b",
                "vzeroupper",
                n = inout(reg) iters => _,
                out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _,
                out("zmm4") _, out("zmm5") _, out("zmm6") _, out("zmm7") _,
                out("zmm8") _, out("zmm9") _, out("zmm10") _, out("zmm11") _,
                out("zmm12") _, out("zmm13") _,
                options(nostack, nomem),
            );
        }
        (12.0 * 16.0 * 2.0, 0.0)
    }
}

/// Portable fallback: 8 chains of 8-wide arrays; a lower bound on the true peak.
fn fma_portable(iters: u64) -> (f64, f32) {
    let a = std::hint::black_box(0.999_999f32);
    let b = std::hint::black_box(1e-7f32);
    let mut acc = [[0f32; 8]; 8];
    for _ in 0..iters {
        for chain in acc.iter_mut() {
            for v in chain.iter_mut() {
                *v = *v * a + b;
            }
        }
    }
    (8.0 * 8.0 * 2.0, acc.iter().flatten().sum())
}

/// The kernels this CPU can run, fastest instruction set first.
fn kernels() -> Vec<(&'static str, FmaKernel)> {
    #[allow(unused_mut)]
    let mut v: Vec<(&'static str, FmaKernel)> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            v.push(("avx512f", x86::fma_avx512));
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            v.push(("avx2+fma", x86::fma_avx2));
        }
    }
    if v.is_empty() {
        v.push(("portable", fma_portable));
    }
    v
}

/// Iterations of `k` that take about `seconds` on one thread.
fn calibrate(k: FmaKernel, seconds: f64) -> u64 {
    calibrate_count(1 << 16, seconds, |n| {
        std::hint::black_box(k(std::hint::black_box(n)));
    })
}

/// A count `n` for which `run(n)` takes about `seconds`, growing from `start` fourfold until
/// a run lasts long enough to time.
fn calibrate_count(start: u64, seconds: f64, run: impl Fn(u64)) -> u64 {
    let mut n = start.max(1);
    loop {
        let t = Instant::now();
        run(n);
        let dt = t.elapsed().as_secs_f64();
        if dt > 0.02 || n >= 1 << 40 {
            return ((n as f64 * seconds / dt.max(1e-9)) as u64).max(1);
        }
        n *= 4;
    }
}

/// GFLOP/s of `run` (which returns the flops it did) on every rayon thread at once. Each
/// thread times itself; the slowest thread bounds the aggregate rate.
fn gflops_all_threads(run: impl Fn() -> f64 + Sync) -> f64 {
    let per_thread: Vec<(f64, f64)> = rayon::broadcast(|_| {
        let t = Instant::now();
        let flops = run();
        (flops, t.elapsed().as_secs_f64())
    });
    let flops: f64 = per_thread.iter().map(|p| p.0).sum();
    let slowest = per_thread.iter().map(|p| p.1).fold(0.0, f64::max);
    flops / slowest / 1e9
}

/// GFLOP/s of `k` running `iters` iterations on every rayon thread at once (best of
/// `repeats`).
fn fma_all_threads(k: FmaKernel, iters: u64, repeats: usize) -> f64 {
    (0..repeats.max(1))
        .map(|_| {
            gflops_all_threads(|| {
                let (flops, keep) = k(std::hint::black_box(iters));
                std::hint::black_box(keep);
                flops * iters as f64
            })
        })
        .fold(0.0, f64::max)
}

fn fma_one_thread(k: FmaKernel, iters: u64, repeats: usize) -> f64 {
    (0..repeats.max(1))
        .map(|_| {
            let t = Instant::now();
            let (flops, keep) = k(std::hint::black_box(iters));
            std::hint::black_box(keep);
            flops * iters as f64 / t.elapsed().as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max)
}

/// Triad `a = b + s*c` over `n`-element arrays split across the rayon pool; best GB/s over
/// `passes`, counting 12 bytes per element (two reads, one write; write-allocate traffic is
/// not counted, as in STREAM).
fn triad_gbps(a: &mut [f32], b: &[f32], c: &[f32], passes: usize) -> f64 {
    let n = a.len();
    let chunk = n.div_ceil(rayon::current_num_threads().max(1)).max(1);
    let s = std::hint::black_box(1.000_1f32);
    (0..passes.max(1))
        .map(|_| {
            let t = Instant::now();
            a.par_chunks_mut(chunk)
                .zip(b.par_chunks(chunk))
                .zip(c.par_chunks(chunk))
                .for_each(|((a, b), c)| {
                    for ((a, &b), &c) in a.iter_mut().zip(b).zip(c) {
                        *a = b + s * c;
                    }
                });
            std::hint::black_box(&mut *a);
            12.0 * n as f64 / t.elapsed().as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max)
}

/// Cache-resident triad: each thread repeats the triad on its own small arrays many times,
/// all threads at once.
fn cache_triad_gbps(elems: usize, repeats: usize) -> f64 {
    let reps = (64usize << 20) / elems.max(1);
    (0..repeats.max(1))
        .map(|_| {
            let per_thread: Vec<(f64, f64)> = rayon::broadcast(|_| {
                let mut a = vec![0f32; elems];
                let b = vec![1f32; elems];
                let c = vec![2f32; elems];
                let s = std::hint::black_box(1.000_1f32);
                for ((a, &b), &c) in a.iter_mut().zip(&b).zip(&c) {
                    *a = b + s * c;
                }
                let t = Instant::now();
                for _ in 0..reps {
                    for ((a, &b), &c) in a.iter_mut().zip(&b).zip(&c) {
                        *a = b + s * c;
                    }
                    std::hint::black_box(&mut a);
                }
                (12.0 * (elems * reps) as f64, t.elapsed().as_secs_f64())
            });
            let bytes: f64 = per_thread.iter().map(|p| p.0).sum();
            let slowest = per_thread.iter().map(|p| p.1).fold(0.0, f64::max);
            bytes / slowest / 1e9
        })
        .fold(0.0, f64::max)
}

/// A probe that runs the fastest FMA kernel on every thread for about `seconds` and returns
/// the GFLOP/s it reached: for timing the peak in the same rounds as a kernel, so that a
/// fraction of peak does not compare two different phases of a noisy machine.
pub fn peak_probe(seconds: f64) -> impl FnMut() -> f64 {
    let (_, k) = kernels()[0];
    let iters = calibrate(k, seconds);
    move || fma_all_threads(k, iters, 1)
}

/// A probe that runs the active GEMM microkernel on L1-resident panels
/// ([`GemmKernel::microkernel_flops`](crate::ops::gemm::GemmKernel::microkernel_flops)) on
/// every thread for about `seconds` and returns the GFLOP/s it reached. On a core shared
/// with another hardware thread this ceiling drops below [`peak_probe`]'s (the microkernel
/// needs the load ports and the front end that the FMA loop leaves idle), so a product
/// timed in the same rounds can be read against both.
pub fn microkernel_probe(seconds: f64) -> impl FnMut() -> f64 {
    let kernel = crate::ops::gemm::GemmKernel::active();
    let tiles = calibrate_count(64, seconds, |n| {
        std::hint::black_box(kernel.microkernel_flops(n as usize));
    }) as usize;
    move || gflops_all_threads(|| kernel.microkernel_flops(tiles))
}

/// Measures this machine's f32 FMA peak and memory bandwidth. Takes about
/// `(kernels + 1) * repeats * fma_seconds` plus a second or two for the triads.
pub fn measure_peak(cfg: &PeakConfig) -> Peak {
    let threads = rayon::current_num_threads();
    let mut avx2 = None;
    let mut avx512 = None;
    let mut best: Option<(&'static str, f64, FmaKernel, u64)> = None;
    for (name, k) in kernels() {
        let iters = calibrate(k, cfg.fma_seconds);
        let g = fma_all_threads(k, iters, cfg.repeats);
        match name {
            "avx2+fma" => avx2 = Some(g),
            "avx512f" => avx512 = Some(g),
            _ => {}
        }
        if best.is_none_or(|b| g > b.1) {
            best = Some((name, g, k, iters));
        }
    }
    let (isa, gflops, k, iters) = best.expect("the portable kernel always runs");
    let gflops_one_thread = fma_one_thread(k, iters, cfg.repeats);

    let n = cfg.dram_elems.max(1);
    let b = vec![1f32; n];
    let c = vec![2f32; n];
    let mut a = vec![0f32; n];
    triad_gbps(&mut a, &b, &c, 1); // first touch: page faults, not bandwidth
    let dram_gbps = triad_gbps(&mut a, &b, &c, 3 * cfg.repeats);
    drop((a, b, c));

    let cache_gbps = cache_triad_gbps(cfg.cache_elems_per_thread, cfg.repeats);
    Peak {
        threads,
        isa,
        gflops,
        avx2_gflops: avx2,
        avx512_gflops: avx512,
        gflops_one_thread,
        dram_gbps,
        cache_gbps,
        cache_working_set: 12 * cfg.cache_elems_per_thread * threads,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_available_kernel_runs_and_counts_flops() {
        let mut all = kernels();
        all.push(("portable", fma_portable));
        for (name, k) in all {
            let (flops, _) = k(1000);
            assert!(flops > 0.0, "{name}");
            assert!(fma_one_thread(k, 1000, 1) > 0.0, "{name}");
        }
    }

    #[test]
    fn quick_peak_is_positive() {
        let p = measure_peak(&PeakConfig {
            fma_seconds: 0.005,
            repeats: 1,
            dram_elems: 1 << 16,
            cache_elems_per_thread: 1 << 12,
        });
        assert!(p.gflops > 0.0 && p.dram_gbps > 0.0 && p.cache_gbps > 0.0);
        assert!(p.gflops >= p.avx2_gflops.unwrap_or(0.0));
        assert_eq!(p.bandwidth_for(1), p.cache_gbps);
        assert_eq!(p.bandwidth_for(usize::MAX), p.dram_gbps);
    }
}
