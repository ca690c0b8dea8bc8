//! Timings of the engine's kernels, with throughput and the fraction of this machine's
//! measured ceiling ([`super::peak`]) each reaches.
//!
//! To add a kernel (softmax, layer norm, attention, ...): time it with [`super::time_it`]
//! (or [`super::time_batched`] for sub-millisecond calls), then push
//! [`KernelResult::compute`] when it is bound by arithmetic (give its flop count) or
//! [`KernelResult::memory`] when it is bound by memory traffic (give the bytes it must move
//! at least once), from a function called by [`run_kernel_benches`].

use serde::Serialize;

use super::peak::Peak;
use super::{time_batched, time_interleaved, time_it, Timing};
use crate::rng::Rng;
use crate::tensor::Tensor;

/// One timed kernel.
#[derive(Clone, Debug, Serialize)]
pub struct KernelResult {
    /// What ran, e.g. `matmul`, `linear`, `sgemm_direct`, `mlp_fwd_bwd`, `gelu`.
    pub name: String,
    /// Problem size in the kernel's own terms, e.g. `3136x128x512` (M x K x N) or `[262144]`.
    pub shape: String,
    /// Median wall-clock time of one call, in seconds.
    pub median_s: f64,
    /// Fastest timed call, in seconds.
    pub min_s: f64,
    /// Slowest timed call, in seconds.
    pub max_s: f64,
    /// Arithmetic throughput at the median in GFLOP/s (10^9 flops per second; an FMA counts
    /// as 2), for compute-bound kernels.
    pub gflops: Option<f64>,
    /// Memory throughput at the median in GB/s (10^9 bytes per second), for memory-bound
    /// kernels, counting each byte the kernel must read or write once.
    pub gbps: Option<f64>,
    /// Throughput over the matching measured ceiling: f32 FMA peak for compute-bound
    /// kernels, triad bandwidth (cache or DRAM by working set) for memory-bound ones.
    pub frac_of_peak: f64,
    /// Which ceiling `frac_of_peak` is measured against.
    pub ceiling: Ceiling,
    /// That ceiling's value, in GFLOP/s for [`Ceiling::Fma`], in GB/s for the others.
    pub ceiling_value: f64,
    /// Free-form remark, e.g. what the flop count includes.
    pub note: String,
}

/// The measured ceiling ([`Peak`]) a kernel is compared with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ceiling {
    /// f32 FMA throughput on every thread ([`Peak::gflops`]): compute-bound kernels.
    Fma,
    /// Triad bandwidth with the arrays in cache ([`Peak::cache_gbps`]): memory-bound kernels
    /// that move at most [`Peak::cache_working_set`] bytes.
    Cache,
    /// Triad bandwidth from DRAM ([`Peak::dram_gbps`]): memory-bound kernels that move more.
    Dram,
}

impl Ceiling {
    /// A short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Ceiling::Fma => "FMA",
            Ceiling::Cache => "cache",
            Ceiling::Dram => "DRAM",
        }
    }
}

impl KernelResult {
    /// A compute-bound result doing `flops` floating-point operations per call.
    pub fn compute(
        name: impl Into<String>,
        shape: impl Into<String>,
        t: Timing,
        flops: f64,
        peak: &Peak,
    ) -> Self {
        let g = flops / t.median_s / 1e9;
        KernelResult {
            name: name.into(),
            shape: shape.into(),
            median_s: t.median_s,
            min_s: t.min_s,
            max_s: t.max_s,
            gflops: Some(g),
            gbps: None,
            frac_of_peak: g / peak.gflops,
            ceiling: Ceiling::Fma,
            ceiling_value: peak.gflops,
            note: String::new(),
        }
    }

    /// A memory-bound result moving `bytes` per call.
    pub fn memory(
        name: impl Into<String>,
        shape: impl Into<String>,
        t: Timing,
        bytes: usize,
        peak: &Peak,
    ) -> Self {
        let g = bytes as f64 / t.median_s / 1e9;
        let ceiling = if bytes <= peak.cache_working_set {
            Ceiling::Cache
        } else {
            Ceiling::Dram
        };
        KernelResult {
            name: name.into(),
            shape: shape.into(),
            median_s: t.median_s,
            min_s: t.min_s,
            max_s: t.max_s,
            gflops: None,
            gbps: Some(g),
            frac_of_peak: g / peak.bandwidth_for(bytes),
            ceiling,
            ceiling_value: peak.bandwidth_for(bytes),
            note: String::new(),
        }
    }

    fn with_note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }
}

/// What [`run_kernel_benches`] runs and how often.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// Untimed calls before timing.
    pub warmup: usize,
    /// Timed calls (or batches of calls, for short kernels); the median is reported.
    pub repeats: usize,
    /// Matrix products to time, as (M, K, N).
    pub matmul_shapes: Vec<(usize, usize, usize)>,
    /// MLP blocks `Linear(d, r*d) -> GELU -> Linear(r*d, d)` on `[batch, seq, d]`, as
    /// (batch, seq, d, r).
    pub mlp_shapes: Vec<(usize, usize, usize, usize)>,
    /// Element counts for the elementwise and reduction kernels (f32).
    pub elementwise_sizes: Vec<usize>,
    /// Causal pre-norm Transformers timed forward + backward with the kernel accounting of
    /// [`crate::profile`] on, as (batch, seq, width, layers).
    pub transformer_shapes: Vec<(usize, usize, usize, usize)>,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            warmup: 3,
            repeats: 15,
            matmul_shapes: MATMUL_SHAPES.to_vec(),
            mlp_shapes: vec![(64, 49, 128, 4), (32, 64, 256, 4)],
            // 1 MiB (split across threads) and 16 KiB (below the parallel threshold).
            elementwise_sizes: vec![1 << 18, 1 << 12],
            transformer_shapes: vec![(64, 49, 128, 4)],
        }
    }
}

impl BenchConfig {
    /// Fewer repeats, for a fast look.
    pub fn quick() -> Self {
        BenchConfig {
            warmup: 1,
            repeats: 5,
            ..BenchConfig::default()
        }
    }
}

/// The product shapes of TarFlow's blocks (M x K x N): patch tokens x width x MLP width and
/// back, a larger block, and a square reference.
pub const MATMUL_SHAPES: [(usize, usize, usize); 4] = [
    (3136, 128, 512),
    (3136, 512, 128),
    (2048, 256, 1024),
    (1024, 1024, 1024),
];

/// Times every kernel in `cfg` against the ceilings in `peak`.
pub fn run_kernel_benches(peak: &Peak, cfg: &BenchConfig) -> Vec<KernelResult> {
    let mut out = Vec::new();
    for &(m, k, n) in &cfg.matmul_shapes {
        out.extend(bench_matmul(m, k, n, peak, cfg));
    }
    for &(b, s, d, r) in &cfg.mlp_shapes {
        out.extend(bench_mlp(b, s, d, r, peak, cfg));
    }
    for &n in &cfg.elementwise_sizes {
        out.extend(bench_elementwise(n, peak, cfg));
    }
    for &(b, s, d, l) in &cfg.transformer_shapes {
        out.push(bench_transformer(b, s, d, l, peak, cfg).0);
    }
    out
}

/// Forward + backward of a `layers`-deep causal pre-norm Transformer (head dim 64, MLP
/// ratio 4) on `[batch, seq, width]`, timed as a whole and then once more with
/// [`crate::profile`] on, to split the time between the heavy kernels and everything else.
/// Returns the timing and the kernel seconds per step (median run's share).
pub fn bench_transformer(
    batch: usize,
    seq: usize,
    width: usize,
    layers: usize,
    peak: &Peak,
    cfg: &BenchConfig,
) -> (KernelResult, crate::profile::Snapshot) {
    use crate::nn::{CausalSelfAttention, LayerNorm, Mlp};
    use crate::profile;
    let mut rng = Rng::new(3);
    let head_dim = 64.min(width);
    let stack: Vec<_> = (0..layers)
        .map(|_| {
            (
                LayerNorm::<f32>::new(width),
                CausalSelfAttention::<f32>::new(width, head_dim, &mut rng)
                    .expect("width is a multiple of the head dim"),
                LayerNorm::<f32>::new(width),
                Mlp::<f32>::new(width, 4, &mut rng),
            )
        })
        .collect();
    let params: Vec<Tensor<f32>> = stack
        .iter()
        .flat_map(|(n1, a, n2, m)| {
            let mut p = n1.parameters();
            p.extend(a.parameters());
            p.extend(n2.parameters());
            p.extend(m.parameters());
            p.into_iter().map(|(_, t)| t)
        })
        .collect();
    let x = Tensor::<f32>::randn(&[batch, seq, width], 0.0, 1.0, &mut rng);
    let step = || -> crate::Result<()> {
        let mut h = x.clone();
        for (n1, a, n2, m) in &stack {
            h = h.add(&a.forward(&n1.forward(&h)?, 1.0)?)?;
            h = h.add(&m.forward(&n2.forward(&h)?)?)?;
        }
        h.square()?.mean_all()?.backward()?;
        for p in &params {
            p.zero_grad();
        }
        Ok(())
    };
    let run = || step().expect("shapes agree");
    let t = time_it(cfg.warmup, cfg.repeats, run);
    profile::reset();
    profile::enable(true);
    let start = std::time::Instant::now();
    for _ in 0..cfg.repeats.max(1) {
        run();
    }
    let total = start.elapsed().as_secs_f64();
    profile::enable(false);
    let snap = profile::snapshot();
    let share = |k: profile::Kernel| 100.0 * snap.seconds[k as usize] / total;
    let heavy =
        100.0 * (snap.total_seconds() - snap.seconds[profile::Kernel::Gelu as usize]) / total;
    let rows = (batch * seq) as f64;
    let (w, s) = (width as f64, seq as f64);
    // Products only: qkv, out, two MLP layers, and the attention scores and mix (causal
    // half counted in full), times three for forward + backward.
    let flops = 3.0 * layers as f64 * (2.0 * rows * w * w * (3.0 + 1.0 + 8.0) + 4.0 * rows * s * w);
    let note = format!(
        "in kernels: matmul {:.0}%, attention {:.0}%, layer_norm {:.0}% (together {heavy:.0}%), gelu {:.0}%",
        share(profile::Kernel::Matmul),
        share(profile::Kernel::Attention),
        share(profile::Kernel::LayerNorm),
        share(profile::Kernel::Gelu),
    );
    let r = KernelResult::compute(
        "transformer_fwd_bwd",
        format!("{batch}x{seq}x{width} L{layers}"),
        t,
        flops,
        peak,
    )
    .with_note(note);
    (r, snap)
}

/// The two single-precision GEMMs the benches compare, called directly on raw buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sgemm {
    /// This crate's `ops::gemm::sgemm` (AVX-512/AVX2 kernels, matrixmultiply elsewhere).
    Ours,
    /// `matrixmultiply::sgemm`.
    MatrixMultiply,
}

/// `c = a @ b` for row-major `m x k`, `k x n` and `m x n` buffers, through `gemm`.
///
/// # Panics
/// If a buffer is smaller than its matrix.
pub fn sgemm_row_major(
    gemm: Sgemm,
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    let gemm = match gemm {
        Sgemm::Ours => crate::ops::gemm::sgemm,
        Sgemm::MatrixMultiply => matrixmultiply::sgemm,
    };
    // SAFETY: both GEMMs touch only the elements of the strided views they are given; the
    // assertion keeps the three row-major views inside their buffers, and c is a distinct
    // &mut slice.
    unsafe {
        gemm(
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
    }
}

/// `Tensor::matmul`, `Tensor::linear` (weight `[N, K]`) and matrixmultiply's `sgemm` called
/// directly on the same shapes, so the cost of the tensor API itself is visible.
pub fn bench_matmul(
    m: usize,
    k: usize,
    n: usize,
    peak: &Peak,
    cfg: &BenchConfig,
) -> Vec<KernelResult> {
    let mut rng = Rng::new(1);
    let a = Tensor::<f32>::randn(&[m, k], 0.0, 1.0, &mut rng);
    let b = Tensor::<f32>::randn(&[k, n], 0.0, 1.0, &mut rng);
    let w = b.t().expect("2-D").contiguous().expect("host tensor"); // [N, K]
    let shape = format!("{m}x{k}x{n}");
    let flops = 2.0 * (m * n * k) as f64;
    // The first product fixes matrixmultiply's thread count for the process (it reads
    // MATMUL_NUM_THREADS once); run it before the direct baseline so both use the same.
    let _ = a.matmul(&b);

    let av = a.to_vec();
    let bv = b.to_vec();
    let mut c = vec![0f32; m * n];
    let mut api = || {
        std::hint::black_box(a.matmul(&b).expect("shapes agree"));
    };
    let mut lin = || {
        std::hint::black_box(a.linear(&w, None).expect("shapes agree"));
    };
    let mut c2 = vec![0f32; m * n];
    let mut own = || {
        sgemm_row_major(Sgemm::Ours, m, k, n, &av, &bv, &mut c2);
        std::hint::black_box(&mut c2);
    };
    let mut direct = || {
        sgemm_row_major(Sgemm::MatrixMultiply, m, k, n, &av, &bv, &mut c);
        std::hint::black_box(&mut c);
    };
    // The peak again, in the same rounds as the products, for about as long as one product.
    let mut probe = super::peak::peak_probe((flops / (peak.gflops * 1e9)).max(1e-3));
    let mut round_peaks = Vec::new();
    let mut fma = || round_peaks.push(probe());
    // And the microkernel on L1-resident panels: what the cores allow a product right now.
    let mut micro_probe = super::peak::microkernel_probe((flops / (peak.gflops * 1e9)).max(1e-3));
    let mut round_micro = Vec::new();
    let mut micro = || round_micro.push(micro_probe());
    let t = time_interleaved(
        cfg.warmup,
        cfg.repeats,
        &mut [
            &mut api,
            &mut lin,
            &mut own,
            &mut direct,
            &mut fma,
            &mut micro,
        ],
    );
    let (t_api, t_lin, t_own, t_direct) = (t[0], t[1], t[2], t[3]);
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let round_peak = median(&mut round_peaks);
    let round_micro = median(&mut round_micro);
    let ratios = |t: &Timing| {
        let g = flops / t.median_s / 1e9;
        format!(
            "{:.3} of direct gemm, {:.2}x matrixmultiply, {:.0}% of the FMA probe rerun in the same rounds \
             ({round_peak:.0} GFLOP/s), {:.0}% of the microkernel on L1 data in them \
             ({round_micro:.0} GFLOP/s)",
            t_own.median_s / t.median_s,
            t_direct.median_s / t.median_s,
            100.0 * g / round_peak,
            100.0 * g / round_micro,
        )
    };
    vec![
        KernelResult::compute("matmul", &shape, t_api, flops, peak).with_note(ratios(&t_api)),
        KernelResult::compute("linear", &shape, t_lin, flops, peak).with_note(ratios(&t_lin)),
        KernelResult::compute("gemm_direct", &shape, t_own, flops, peak).with_note(format!(
            "ops::gemm::sgemm ({}) into a reused buffer",
            crate::ops::gemm::GemmKernel::active().name()
        )),
        KernelResult::compute("sgemm_direct", &shape, t_direct, flops, peak)
            .with_note("matrixmultiply::sgemm into a reused buffer"),
    ]
}

/// `Linear -> GELU -> Linear` on `[batch, seq, d]`, forward and forward+backward. The flop
/// count is that of the products only (forward 2 products, backward 4).
pub fn bench_mlp(
    batch: usize,
    seq: usize,
    d: usize,
    ratio: usize,
    peak: &Peak,
    cfg: &BenchConfig,
) -> Vec<KernelResult> {
    let mut rng = Rng::new(2);
    let h = d * ratio;
    let x = Tensor::<f32>::randn(&[batch, seq, d], 0.0, 1.0, &mut rng);
    let scale = |fan_in: usize| 1.0 / (fan_in as f64).sqrt();
    let w1 = Tensor::<f32>::randn(&[h, d], 0.0, scale(d), &mut rng).requires_grad_();
    let b1 = Tensor::<f32>::zeros(&[h]).requires_grad_();
    let w2 = Tensor::<f32>::randn(&[d, h], 0.0, scale(h), &mut rng).requires_grad_();
    let b2 = Tensor::<f32>::zeros(&[d]).requires_grad_();
    let forward = || {
        x.linear(&w1, Some(&b1))
            .and_then(|y| y.gelu()?.linear(&w2, Some(&b2)))
            .expect("shapes agree")
    };
    let rows = (batch * seq) as f64;
    let fwd_flops = 2.0 * 2.0 * rows * (d * h) as f64;
    let shape = format!("{batch}x{seq}x{d} r{ratio}");
    let t_fwd = time_it(cfg.warmup, cfg.repeats, || {
        let _g = crate::autograd::no_grad();
        forward()
    });
    let t_bwd = time_it(cfg.warmup, cfg.repeats, || {
        let loss = forward().sum_all().expect("scalar");
        loss.backward().expect("scalar loss");
        for p in [&w1, &b1, &w2, &b2] {
            p.zero_grad();
        }
    });
    vec![
        KernelResult::compute("mlp_fwd", &shape, t_fwd, fwd_flops, peak)
            .with_note("flops: the two products"),
        KernelResult::compute("mlp_fwd_bwd", &shape, t_bwd, 3.0 * fwd_flops, peak)
            .with_note("flops: the six products"),
    ]
}

/// add, mul, gelu and a full sum on `n` f32 elements.
pub fn bench_elementwise(n: usize, peak: &Peak, cfg: &BenchConfig) -> Vec<KernelResult> {
    let mut rng = Rng::new(3);
    let a = Tensor::<f32>::randn(&[n], 0.0, 1.0, &mut rng);
    let b = Tensor::<f32>::randn(&[n], 0.0, 1.0, &mut rng);
    let shape = format!("[{n}]");
    let e = std::mem::size_of::<f32>();
    let target = 2e-3;
    let t_add = time_batched(cfg.warmup, cfg.repeats, target, || {
        a.add(&b).expect("same shape")
    });
    let t_mul = time_batched(cfg.warmup, cfg.repeats, target, || {
        a.mul(&b).expect("same shape")
    });
    let t_gelu = time_batched(cfg.warmup, cfg.repeats, target, || a.gelu());
    let t_sum = time_batched(cfg.warmup, cfg.repeats, target, || a.sum_all());
    vec![
        KernelResult::memory("add", &shape, t_add, 3 * n * e, peak),
        KernelResult::memory("mul", &shape, t_mul, 3 * n * e, peak),
        KernelResult::memory("gelu", &shape, t_gelu, 2 * n * e, peak)
            .with_note("erf per element: compute-heavy"),
        KernelResult::memory("sum", &shape, t_sum, n * e, peak),
    ]
}

/// Plain-text tables of results, one line each: the compute-bound kernels against the f32
/// FMA peak, then the memory-bound ones against the triad bandwidth for their working set,
/// each table under a line that says what its "% of peak" is measured against.
pub fn format_table(results: &[KernelResult]) -> String {
    let ms = |v: f64| format!("{:.4}", v * 1e3);
    let pct = |r: &KernelResult| format!("{:.1}%", 100.0 * r.frac_of_peak);
    let mut s = String::new();
    let compute: Vec<&KernelResult> = results.iter().filter(|r| r.gflops.is_some()).collect();
    if let Some(first) = compute.first() {
        s += &format!(
            "compute-bound: % of peak = GFLOP/s over the f32 FMA peak on every thread \
             ({:.1} GFLOP/s)\n",
            first.ceiling_value
        );
        let mut rows = vec![row(&[
            "kernel",
            "shape",
            "median ms",
            "min ms",
            "GFLOP/s",
            "% of peak",
            "note",
        ])];
        for r in &compute {
            rows.push(vec![
                r.name.clone(),
                r.shape.clone(),
                ms(r.median_s),
                ms(r.min_s),
                format!("{:.1}", r.gflops.unwrap_or(f64::NAN)),
                pct(r),
                r.note.clone(),
            ]);
        }
        s += &aligned(&rows, &[false, false, true, true, true, true, false]);
    }
    let memory: Vec<&KernelResult> = results.iter().filter(|r| r.gflops.is_none()).collect();
    if !memory.is_empty() {
        if !s.is_empty() {
            s += "\n";
        }
        let value = |c: Ceiling| {
            memory
                .iter()
                .find(|r| r.ceiling == c)
                .map_or("not reached".into(), |r| {
                    format!("{:.1} GB/s", r.ceiling_value)
                })
        };
        s += &format!(
            "memory-bound: % of peak = GB/s over the triad bandwidth for the kernel's working \
             set: cache ({}) or DRAM ({}), as the ceiling column says\n",
            value(Ceiling::Cache),
            value(Ceiling::Dram)
        );
        let mut rows = vec![row(&[
            "kernel",
            "shape",
            "median ms",
            "min ms",
            "GB/s",
            "ceiling",
            "% of peak",
            "note",
        ])];
        for r in &memory {
            rows.push(vec![
                r.name.clone(),
                r.shape.clone(),
                ms(r.median_s),
                ms(r.min_s),
                format!("{:.1}", r.gbps.unwrap_or(f64::NAN)),
                r.ceiling.name().into(),
                pct(r),
                r.note.clone(),
            ]);
        }
        s += &aligned(&rows, &[false, false, true, true, true, false, true, false]);
    }
    s
}

fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

/// `rows` (the header first) as lines of columns two spaces apart, each column as wide as its
/// widest cell, right-aligned where `right` says; the last column is not padded.
pub fn aligned(rows: &[Vec<String>], right: &[bool]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|v| v.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut s = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, v) in r.iter().enumerate() {
            if c > 0 {
                line += "  ";
            }
            let pad = width[c].saturating_sub(v.chars().count());
            if c + 1 == cols {
                line += v;
            } else if right.get(c).copied().unwrap_or(false) {
                line += &" ".repeat(pad);
                line += v;
            } else {
                line += v;
                line += &" ".repeat(pad);
            }
        }
        s += line.trim_end();
        s += "\n";
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::peak::{measure_peak, PeakConfig};

    #[test]
    fn tiny_run_reports_every_kernel() {
        let peak = measure_peak(&PeakConfig {
            fma_seconds: 0.002,
            repeats: 1,
            dram_elems: 1 << 14,
            cache_elems_per_thread: 1 << 10,
        });
        let cfg = BenchConfig {
            warmup: 0,
            repeats: 1,
            matmul_shapes: vec![(8, 4, 6)],
            mlp_shapes: vec![(2, 3, 4, 2)],
            elementwise_sizes: vec![64],
            transformer_shapes: vec![(2, 5, 8, 1)],
        };
        let r = run_kernel_benches(&peak, &cfg);
        let names: Vec<&str> = r.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "matmul",
                "linear",
                "gemm_direct",
                "sgemm_direct",
                "mlp_fwd",
                "mlp_fwd_bwd",
                "add",
                "mul",
                "gelu",
                "sum",
                "transformer_fwd_bwd"
            ]
        );
        // The API's products are also set against the peak and the microkernel timed in
        // their own rounds (a product this small rounds to 0 % of them; the two ceilings
        // themselves must be positive).
        let ceilings: Vec<f64> = r[0]
            .note
            .split(" GFLOP/s)")
            .filter_map(|part| part.rsplit_once('(')?.1.parse().ok())
            .collect();
        assert!(
            ceilings.len() == 2 && ceilings.iter().all(|&g| g > 0.0),
            "{}",
            r[0].note
        );
        assert!(
            r[0].note.contains("of the microkernel on L1 data"),
            "{}",
            r[0].note
        );
        let t = r.last().unwrap();
        assert!(
            t.note.contains("matmul") && t.note.contains("layer_norm"),
            "{}",
            t.note
        );
        for k in &r {
            assert!(k.median_s > 0.0 && k.frac_of_peak > 0.0, "{k:?}");
            assert!(k.gflops.is_some() != k.gbps.is_some(), "{k:?}");
        }
        let table = format_table(&r);
        // Two tables, each with its definition line and header.
        assert_eq!(table.lines().count(), r.len() + 5, "{table}");
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"frac_of_peak\""));
    }

    fn result(name: &str, shape: &str, ms: f64, rate: f64, ceiling: Ceiling) -> KernelResult {
        let (gflops, gbps, value) = match ceiling {
            Ceiling::Fma => (Some(rate), None, 200.0),
            Ceiling::Cache => (None, Some(rate), 80.0),
            Ceiling::Dram => (None, Some(rate), 20.0),
        };
        KernelResult {
            name: name.into(),
            shape: shape.into(),
            median_s: ms * 1e-3,
            min_s: ms * 0.9e-3,
            max_s: ms * 1.1e-3,
            gflops,
            gbps,
            frac_of_peak: rate / value,
            ceiling,
            ceiling_value: value,
            note: String::new(),
        }
    }

    #[test]
    fn tables_split_by_ceiling_with_aligned_columns() {
        let mut long = result(
            "transformer_fwd_bwd",
            "64x49x128 L2",
            123.25,
            100.0,
            Ceiling::Fma,
        );
        long.note = "a note".into();
        let results = [
            result("matmul", "8x4x6", 0.5, 50.0, Ceiling::Fma),
            long,
            result("add", "[64]", 0.001, 40.0, Ceiling::Cache),
            result("sum", "[25165824]", 12.0, 10.0, Ceiling::Dram),
        ];
        let t = format_table(&results);
        let want = "\
compute-bound: % of peak = GFLOP/s over the f32 FMA peak on every thread (200.0 GFLOP/s)
kernel               shape         median ms    min ms  GFLOP/s  % of peak  note
matmul               8x4x6            0.5000    0.4500     50.0      25.0%
transformer_fwd_bwd  64x49x128 L2   123.2500  110.9250    100.0      50.0%  a note

memory-bound: % of peak = GB/s over the triad bandwidth for the kernel's working set: cache (80.0 GB/s) or DRAM (20.0 GB/s), as the ceiling column says
kernel  shape       median ms   min ms  GB/s  ceiling  % of peak  note
add     [64]           0.0010   0.0009  40.0  cache        50.0%
sum     [25165824]    12.0000  10.8000  10.0  DRAM         50.0%
";
        assert_eq!(t, want);
        // Every line of a table has its columns at the same offsets.
        for block in t.split("\n\n") {
            let lines: Vec<&str> = block.lines().skip(1).collect();
            let at = |l: &str| l.find('%').unwrap();
            assert!(lines[1..].iter().all(|l| at(l) == at(lines[1])), "{block}");
        }
    }
}
