//! Whole-model timings for `tarflow bench`: a training step, the forward NLL, and KV-cached
//! sampling, for any model shape; on a GPU-like device also the training step's device
//! memory (its activations and its peak, from [`crate::gpu::memory`]).

use std::time::Instant;

use serde::Serialize;

use super::Timing;
use crate::autograd::no_grad;
use crate::backend::{matmul_precision, Precision};
use crate::error::{Error, Result};
use crate::gpu::profile::{self, KernelShare};
use crate::gpu::{memory_stats, reset_peak, LaunchWork};
use crate::model::memory::check_fits;
use crate::model::{Recompute, SampleOptions, Sampler, TarFlow, TarFlowConfig};
use crate::nn::ParamStore;
use crate::optim::{AdamW, AdamWConfig};
use crate::rng::Rng;
use crate::tensor::{Device, Tensor};

/// Timing of one workload over repeated runs.
#[derive(Clone, Debug, Serialize)]
pub struct ModelTiming {
    /// The workload, e.g. `train step (fwd+bwd+AdamW)`, `forward NLL`, `sample (KV cache)`.
    pub name: String,
    /// Images per run.
    pub batch: usize,
    /// Median wall-clock time of one run, in seconds (the mean of the middle two when the
    /// number of repeats is even, as in every bench).
    pub median_s: f64,
    /// Fastest run, in seconds.
    pub min_s: f64,
    /// Slowest run, in seconds.
    pub max_s: f64,
    /// Throughput at the median, in images/s.
    pub images_per_s: f64,
    /// Estimated arithmetic throughput at the median, in GFLOP/s, from [`forward_flops`]
    /// (a training step counts as three forwards) or [`sampling_flops`].
    pub gflops: f64,
    /// The training step's device memory, on a GPU-like device (absent elsewhere and on the
    /// other workloads).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<StepMemory>,
    /// The workload's launches, profiled on one more run, when [`StepSettings::profile`]
    /// asked for it (GPU-like devices only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernels: Option<KernelProfile>,
    /// What launch batches did over the timed runs (see [`crate::gpu::batch`]), on the row
    /// that samples with them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batches: Option<crate::gpu::BatchCounts>,
}

/// The launches of one run of a workload, from [`crate::gpu::profile`].
#[derive(Clone, Debug, Serialize)]
pub struct KernelProfile {
    /// Wall-clock time of the profiled run in seconds. The marks recorded around each launch
    /// on a GPU add to it; against [`KernelProfile::device_s`] it shows how much of a run
    /// the device spends waiting for the host.
    pub wall_s: f64,
    /// Launches in the run.
    pub launches: usize,
    /// Device time of all launches in seconds, on a GPU.
    pub device_s: Option<f64>,
    /// Warp-instructions and global traffic of all launches, on the interpreter.
    pub work: Option<LaunchWork>,
    /// Host time inside the driver's launch calls in seconds: issuing them on a GPU,
    /// running them on the interpreter.
    pub launch_host_s: f64,
    /// Host time the profiler spent on its own marks and records in seconds.
    pub profiler_s: f64,
    /// Host time of the driver's other calls (allocation, copies, synchronisation) in
    /// seconds.
    pub driver_other_s: f64,
    /// One row per kernel, the most expensive first.
    pub kernels: Vec<KernelShare>,
}

impl KernelProfile {
    /// The host's own time between launches in seconds: the wall time less the driver's
    /// calls and the profiler. It is what the crate spends per operation above the driver (shape
    /// checks, allocation, views, autograd's bookkeeping); on a GPU, a device that waits
    /// for the host waits for this plus the launch calls.
    pub fn host_between_s(&self) -> f64 {
        (self.wall_s - self.launch_host_s - self.driver_other_s - self.profiler_s).max(0.0)
    }
}

/// Runs `f` (a workload that ends with the device synchronised) once under a launch profile
/// of `device`; the profile ends whether or not `f` succeeds.
fn profiled(device: Device, f: &mut dyn FnMut() -> Result<()>) -> Result<KernelProfile> {
    profile::start(device)?;
    let t0 = Instant::now();
    let ran = f();
    let wall_s = t0.elapsed().as_secs_f64();
    let p = profile::finish(device)?;
    ran?;
    Ok(KernelProfile {
        wall_s,
        launches: p.launches.len(),
        device_s: p.device_ms().map(|ms| ms / 1e3),
        work: p.work(),
        launch_host_s: p.launch_host_s(),
        profiler_s: p.profiler_s,
        driver_other_s: p.driver_other_s,
        kernels: p.by_kernel(),
    })
}

/// How the benchmarked training step runs: the precision of its matrix products and what its
/// layers recompute in the backward (the training row's time and memory depend on both;
/// the forward NLL and sampling rows on neither).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StepSettings {
    /// The precision of the step's matrix products (bf16 needs a GPU-like device).
    pub precision: Precision,
    /// What each Transformer layer recomputes instead of keeping.
    pub recompute: Recompute,
    /// After timing each workload, run it once more under a launch profile
    /// ([`ModelTiming::kernels`]); GPU-like devices only.
    pub profile: bool,
}

/// The device memory of one training step (forward, loss, backward, AdamW), as counted by
/// [`crate::gpu::memory_stats`]: the bytes of the crate's own device buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct StepMemory {
    /// The precision of the step's matrix products.
    pub precision: Precision,
    /// What the layers recomputed.
    pub recompute: Recompute,
    /// Live bytes before the forward: the weights, the AdamW moments and the batch.
    pub baseline_bytes: u64,
    /// What the forward and the loss keep for the backward: the live bytes once the loss is
    /// computed (before the backward) minus [`StepMemory::baseline_bytes`].
    pub activation_bytes: u64,
    /// The most bytes live at once during the step, the baseline included.
    pub peak_bytes: u64,
}

/// Forward FLOPs of one image (dense attention, as computed).
pub fn forward_flops(c: &TarFlowConfig) -> f64 {
    let (n, d, w) = (c.seq_len() as f64, c.token_dim() as f64, c.width as f64);
    let m = (c.width * c.mlp_ratio) as f64;
    let layer = 2.0 * n * w * 3.0 * w + 4.0 * n * n * w + 2.0 * n * w * w + 4.0 * n * w * m;
    let block = 2.0 * n * d * w + c.layers_per_block as f64 * layer + 2.0 * n * w * 2.0 * d;
    c.blocks as f64 * block
}

/// FLOPs of sampling one image with the KV cache (no guidance).
pub fn sampling_flops(c: &TarFlowConfig) -> f64 {
    let (n, d, w) = (c.seq_len(), c.token_dim() as f64, c.width as f64);
    let m = (c.width * c.mlp_ratio) as f64;
    let mut block = 0.0;
    for pos in 0..n - 1 {
        let att = 4.0 * (pos + 1) as f64 * w;
        let layer = 2.0 * w * 3.0 * w + att + 2.0 * w * w + 4.0 * w * m;
        block += 2.0 * d * w + c.layers_per_block as f64 * layer + 2.0 * w * 2.0 * d;
    }
    c.blocks as f64 * block
}

/// [`super::time_it`] for a fallible workload: the first error stops the timing.
fn time(repeats: usize, warmup: usize, mut f: impl FnMut() -> Result<()>) -> Result<Timing> {
    for _ in 0..warmup {
        f()?;
    }
    let repeats = repeats.max(1);
    let mut ts = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let t0 = Instant::now();
        f()?;
        ts.push(t0.elapsed().as_secs_f64());
    }
    Ok(super::stats(ts, repeats))
}

fn timing(name: &str, batch: usize, t: Timing, flops: f64) -> ModelTiming {
    ModelTiming {
        name: name.into(),
        batch,
        median_s: t.median_s,
        min_s: t.min_s,
        max_s: t.max_s,
        images_per_s: batch as f64 / t.median_s,
        gflops: flops / t.median_s / 1e9,
        memory: None,
        kernels: None,
        batches: None,
    }
}

/// The standard deviation of the output projections the bench draws, so that the flow it
/// times is neither the identity (they start at zero) nor overflowing: 0.02 up to width 128,
/// then falling as 1/width. There is no norm before the projection, so its output grows
/// with the width and the depth, and the blocks compound it: at ImageNet64's shape (p2 C768
/// T8 K8) 0.02 sends the forward to infinity (NaN bits/dim), while 0.0082 and 0.01 still
/// give finite ones (9.33 and 10.14 bits/dim on one random image; 8.57 for the identity).
fn output_projection_std(cfg: &TarFlowConfig) -> f64 {
    0.02 * (128.0 / cfg.width as f64).min(1.0)
}

/// Checks a [`bench_model`] request before anything is allocated: a valid config, batches
/// of at least one image, and a training step on `batch` images (its layers recomputing
/// what `recompute` says) and sampling of `sample_batch` images that fit this machine's
/// memory (see [`crate::model::memory`]).
pub fn check_request(
    cfg: &TarFlowConfig,
    batch: usize,
    sample_batch: usize,
    recompute: Recompute,
) -> Result<()> {
    check_shape(cfg, batch, sample_batch)?;
    check_fits(cfg.training_bytes(batch, 4, recompute), || {
        format!(
            "a training step on {batch} images of {} values (f32 weights, gradients, AdamW \
             moments and the activations kept for the backward pass)",
            cfg.image_dim()
        )
    })?;
    check_fits(cfg.sampling_bytes(sample_batch, 1, 4), || {
        format!(
            "sampling {sample_batch} images of {} values (with the key/value caches of {} \
             layers)",
            cfg.image_dim(),
            cfg.layers_per_block
        )
    })
}

/// A valid config and batches of at least one image.
fn check_shape(cfg: &TarFlowConfig, batch: usize, sample_batch: usize) -> Result<()> {
    cfg.validate()?;
    if batch == 0 || sample_batch == 0 {
        return Err(Error::arg(
            "bench_model",
            format!("batch {batch} and sample batch {sample_batch}: each must be at least 1 image"),
        ));
    }
    Ok(())
}

/// Times a training step (forward + loss + backward + AdamW), the forward NLL, and sampling
/// `sample_batch` images with the KV cache, on the CPU.
pub fn bench_model(
    cfg: &TarFlowConfig,
    batch: usize,
    sample_batch: usize,
    repeats: usize,
) -> Result<Vec<ModelTiming>> {
    bench_model_on(cfg, batch, sample_batch, repeats, Device::Cpu)
}

/// [`bench_model`] on `device`: the model, the batch, the optimiser state and the sampler's
/// caches live there, and each timed run ends with the device synchronised, so a run's time
/// is its kernels' time and not only their launch. The host-memory check applies to the CPU
/// only (a device reports its own out-of-memory error).
pub fn bench_model_on(
    cfg: &TarFlowConfig,
    batch: usize,
    sample_batch: usize,
    repeats: usize,
    device: Device,
) -> Result<Vec<ModelTiming>> {
    bench_model_with(
        cfg,
        batch,
        sample_batch,
        repeats,
        device,
        StepSettings::default(),
    )
}

/// [`bench_model_on`] with the training step as `step` says: its matrix products at
/// `step.precision` (bf16 needs a GPU-like device; the forward NLL and sampling stay f32,
/// as in training's evaluation) and its layers recomputing `step.recompute`. On a
/// GPU-like device the training row carries the step's [`StepMemory`], counted on the
/// warm-up step (whose allocations are those of every step: the AdamW moments exist
/// before it).
pub fn bench_model_with(
    cfg: &TarFlowConfig,
    batch: usize,
    sample_batch: usize,
    repeats: usize,
    device: Device,
    step: StepSettings,
) -> Result<Vec<ModelTiming>> {
    let mut rows = Vec::new();
    bench_model_each(cfg, batch, sample_batch, repeats, device, step, &mut |r| {
        rows.push(r.clone())
    })?;
    Ok(rows)
}

/// [`bench_model_with`], handing each row to `on_row` as soon as it is measured (a caller
/// can print the training step's row before sampling, the slow part on a GPU, has run).
pub fn bench_model_each(
    cfg: &TarFlowConfig,
    batch: usize,
    sample_batch: usize,
    repeats: usize,
    device: Device,
    step: StepSettings,
    on_row: &mut dyn FnMut(&ModelTiming),
) -> Result<()> {
    let StepSettings {
        precision,
        recompute,
        profile,
    } = step;
    check_shape(cfg, batch, sample_batch)?;
    if profile && !device.is_gpu() {
        return Err(Error::arg(
            "bench_model",
            format!("a launch profile needs a GPU device (cuda[:N] or ptx-sim), not {device}"),
        ));
    }
    // One more run of `f` under a launch profile, when asked for.
    let kernels = |f: &mut dyn FnMut() -> Result<()>| -> Result<Option<KernelProfile>> {
        profile.then(|| profiled(device, f)).transpose()
    };
    if !device.is_gpu() {
        check_request(cfg, batch, sample_batch, recompute)?;
        if precision != Precision::F32 {
            return Err(Error::arg(
                "bench_model",
                format!(
                    "precision {precision} needs a GPU device (cuda[:N] or ptx-sim), not {device}"
                ),
            ));
        }
    }
    let sync = |device: Device| -> Result<()> {
        if device.is_gpu() {
            crate::gpu::registry::driver(device)?.synchronize()?;
        }
        Ok(())
    };
    let model = TarFlow::<f32>::new(cfg.clone(), 0)?;
    model.randomize_output_projections(output_projection_std(cfg), 1)?;
    let model = model.to_device(device)?;
    let mut rng = Rng::new(2);
    let x = Tensor::<f32>::rand(
        &[batch, cfg.channels, cfg.image_size, cfg.image_size],
        -1.0,
        1.0,
        &mut rng,
    )
    .to_device(device)?;
    let labels: Vec<Option<usize>> = (0..batch)
        .map(|i| (cfg.num_classes > 0).then_some(i % cfg.num_classes.max(1)))
        .collect();
    let lab = (cfg.num_classes > 0).then_some(labels.as_slice());
    let mut params = ParamStore::new();
    params.insert("", model.parameters())?;
    let mut opt = AdamW::new(
        &params,
        AdamWConfig {
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 1e-4,
        },
    )?;
    let fwd = forward_flops(cfg) * batch as f64;
    let mut memory = None;
    let mut train = || {
        params.zero_grad();
        // Counted once, on the first (warm-up) step; the counters are host-side bookkeeping
        // of allocations, so they need no synchronisation.
        let measure = device.is_gpu() && memory.is_none();
        let before = if measure {
            reset_peak(device)?;
            memory_stats(device)?.live_bytes
        } else {
            0
        };
        let _precision = matmul_precision(precision);
        let _recompute = crate::model::recompute(recompute);
        let o = model.forward(&x, lab)?;
        let loss = model.loss(&o)?;
        let after_loss = if measure {
            memory_stats(device)?.live_bytes
        } else {
            0
        };
        loss.backward()?;
        // As the training loop does: the graph goes before the optimiser step.
        drop((loss, o));
        opt.step(1e-4)?;
        if measure {
            memory = Some(StepMemory {
                precision,
                recompute,
                baseline_bytes: before,
                activation_bytes: after_loss.saturating_sub(before),
                peak_bytes: memory_stats(device)?.peak_bytes,
            });
        }
        sync(device)
    };
    let t = time(repeats, 1, &mut train)?;
    let profile_train = kernels(&mut train)?;
    let mut row = timing("train step (fwd+bwd+AdamW)", batch, t, 3.0 * fwd);
    row.memory = memory;
    row.kernels = profile_train;
    on_row(&row);
    let mut forward = || {
        let _g = no_grad();
        let o = model.forward(&x, lab)?;
        model.bits_per_dim(&o)?;
        sync(device)
    };
    let t = time(repeats, 1, &mut forward)?;
    let mut row = timing("forward NLL", batch, t, fwd);
    row.kernels = kernels(&mut forward)?;
    on_row(&row);
    let sampler = Sampler::new(&model)?;
    let slabels: Vec<Option<usize>> = (0..sample_batch)
        .map(|i| (cfg.num_classes > 0).then_some(i % cfg.num_classes.max(1)))
        .collect();
    let slab: Vec<Option<usize>> = if cfg.num_classes > 0 {
        slabels
    } else {
        Vec::new()
    };
    let mut sample = || {
        sampler
            .sample(
                sample_batch,
                &slab,
                &mut Rng::new(3),
                // One pass is what is timed: a redraw of non-finite samples would repeat it.
                &SampleOptions {
                    max_redraws: 0,
                    ..Default::default()
                },
            )
            .map(|_| ())
        // The samples come back to the host: that synchronises.
    };
    let t = time(repeats, 1, &mut sample)?;
    let mut row = timing(
        "sample (KV cache)",
        sample_batch,
        t,
        sampling_flops(cfg) * sample_batch as f64,
    );
    row.kernels = kernels(&mut sample)?;
    on_row(&row);
    if device.is_gpu() {
        // The same sampling with launch batches on (one CUDA graph per step), side by side
        // with the row above; what the batches did over the timed runs rides on the row.
        let _on = crate::gpu::launch_batches(true);
        let driver = crate::gpu::registry::driver(device)?;
        let counts = || driver.batch_counts().unwrap_or_default();
        let before = counts();
        let t = time(repeats, 1, &mut sample)?;
        let after = counts();
        let mut row = timing(
            "sample (KV cache, batched)",
            sample_batch,
            t,
            sampling_flops(cfg) * sample_batch as f64,
        );
        row.batches = Some(after.since(before));
        on_row(&row);
    }
    Ok(())
}
