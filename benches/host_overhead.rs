//! The host's own cost per launch: the crate's work above the driver (shape checks, views,
//! allocation from the pool, autograd's bookkeeping, argument packing) for GPU work, on a
//! device whose driver does nothing. A launch on a real GPU costs this plus the CUDA
//! driver's own call; when a workload's kernels are shorter than the sum, the device waits
//! for the host (KV-cached sampling at small batch is such a workload).
//!
//! Throughput is in launches: criterion's elements per second are launches per second, so
//! its time per element is the host time per launch.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tarflow::gpu::batch::{GraphCache, HeldLaunch};
use tarflow::gpu::{
    launch_batches, registry, size_class, BatchCounts, BufferCache, DevicePtr, Driver, KernelArg,
    LaunchConfig, PtxModule,
};
use tarflow::model::{Guidance, SampleOptions, Sampler, TarFlow, TarFlowConfig};
use tarflow::nn::ParamStore;
use tarflow::optim::{AdamW, AdamWConfig};
use tarflow::{Device, Rng, Tensor};

/// A driver that computes nothing: copies and launches return at once (downloads read
/// zeros); allocation hands out addresses from the CUDA driver's buffer cache
/// ([`BufferCache`]: sizes rounded to a power of two up to 1 MiB and to whole MiB above,
/// freed buffers reused last in, first out), so that a step's buffers get the addresses they would get on a GPU. It counts
/// launches. Its launch batches do the host's part of the CUDA driver's: each launch
/// recorded, each batch planned against the kept graphs ([`GraphCache`]); the CUDA calls
/// that follow (node updates, one graph launch) are not made.
#[derive(Default)]
struct Null {
    next: AtomicU64,
    pool: Mutex<BufferCache>,
    launches: AtomicU64,
    open: AtomicBool,
    batch: Mutex<(bool, Vec<HeldLaunch>, GraphCache)>,
}

impl Driver for Null {
    fn name(&self) -> String {
        "null".into()
    }
    fn alloc(&self, bytes: usize) -> tarflow::Result<DevicePtr> {
        let class = size_class(bytes);
        let mut pool = self.pool.lock().unwrap();
        let p = match pool.reuse(class) {
            Some(p) => p,
            None => {
                let p = (1 << 20) + self.next.fetch_add(class as u64, Ordering::Relaxed);
                pool.insert(p, class);
                p
            }
        };
        Ok(DevicePtr(p))
    }
    fn free(&self, ptr: DevicePtr) -> tarflow::Result<()> {
        self.pool.lock().unwrap().release(ptr.0);
        Ok(())
    }
    fn upload(&self, _: DevicePtr, _: &[u8]) -> tarflow::Result<()> {
        Ok(())
    }
    fn download(&self, _: DevicePtr, dst: &mut [u8]) -> tarflow::Result<()> {
        dst.fill(0);
        Ok(())
    }
    fn launch(
        &self,
        module: &PtxModule,
        kernel: &str,
        config: LaunchConfig,
        args: &[KernelArg],
    ) -> tarflow::Result<()> {
        self.launches.fetch_add(1, Ordering::Relaxed);
        if !self.open.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut b = self.batch.lock().unwrap();
        if b.0 {
            b.1.push(HeldLaunch::new(module, kernel, config, args));
        }
        Ok(())
    }
    fn synchronize(&self) -> tarflow::Result<()> {
        Ok(())
    }
    fn begin_batch(&self) -> tarflow::Result<bool> {
        self.open.store(true, Ordering::Relaxed);
        Ok(!std::mem::replace(&mut self.batch.lock().unwrap().0, true))
    }
    fn end_batch(&self) -> tarflow::Result<()> {
        let mut b = self.batch.lock().unwrap();
        let held = std::mem::take(&mut b.1);
        if !held.is_empty() {
            b.2.plan(held);
        }
        b.0 = false;
        self.open.store(false, Ordering::Relaxed);
        Ok(())
    }
    fn batch_counts(&self) -> Option<BatchCounts> {
        Some(self.batch.lock().unwrap().2.counts())
    }
}

/// Launches of one call of `f` (printed with `what`).
fn launches_of(null: &Null, what: &str, f: &mut dyn FnMut()) -> u64 {
    let before = null.launches.load(Ordering::Relaxed);
    f();
    let n = null.launches.load(Ordering::Relaxed) - before;
    println!("{what}: {n} launches per iteration");
    n
}

/// [`launches_of`] under launch batches, printing what the batches did.
fn batched_launches_of(null: &Null, what: &str, f: &mut dyn FnMut()) -> u64 {
    let before = null.batch_counts().unwrap();
    let launches = launches_of(null, what, f);
    let n = null.batch_counts().unwrap().since(before);
    println!(
        "  {} batches, {} graphs built, {} nodes patched",
        n.batches, n.graphs_built, n.nodes_patched
    );
    launches
}

fn host_overhead(c: &mut Criterion) {
    let null = Arc::new(Null::default());
    // A device number no machine has, so that the bench never shadows a real GPU.
    let device = Device::Cuda(99);
    registry::register(device, null.clone()).unwrap();
    let mut g = c.benchmark_group("host_per_launch");
    g.sample_size(20);

    let on = |t: Tensor<f32>| t.to_device(device).unwrap();
    let mut rng = Rng::new(1);
    let (a, b) = (
        on(Tensor::randn(&[16, 768], 0.0, 1.0, &mut rng)),
        on(Tensor::randn(&[16, 768], 0.0, 1.0, &mut rng)),
    );
    let (w, bias) = (
        on(Tensor::randn(&[768, 768], 0.0, 0.02, &mut rng)),
        on(Tensor::zeros(&[768])),
    );
    let mut add = || drop(a.add(&b).unwrap());
    let n = launches_of(&null, "add [16, 768]", &mut add);
    g.throughput(Throughput::Elements(n));
    g.bench_function("add [16, 768]", |bch| bch.iter(&mut add));
    let mut linear = || drop(a.linear(&w, Some(&bias)).unwrap());
    let n = launches_of(&null, "linear [16, 768] x 768", &mut linear);
    g.throughput(Throughput::Elements(n));
    g.bench_function("linear [16, 768] x 768", |bch| bch.iter(&mut linear));

    // The tiny preset: KV-cached sampling of 4 images with classifier-free guidance, and a
    // training step of 8 images.
    let cfg = TarFlowConfig::preset("tiny").unwrap();
    let model = TarFlow::<f32>::new(cfg.clone(), 0)
        .unwrap()
        .to_device(device)
        .unwrap();
    let sampler = Sampler::new(&model).unwrap();
    let labels: Vec<Option<usize>> = (0..4).map(|i| Some(i % cfg.num_classes)).collect();
    let opts = SampleOptions {
        guidance: Guidance::ClassifierFree {
            weight: 1.0,
            anneal: true,
        },
        max_redraws: 0,
        ..Default::default()
    };
    let mut sample = || {
        sampler.sample(4, &labels, &mut Rng::new(3), &opts).unwrap();
    };
    let n = launches_of(&null, "tiny: sample 4 images, guided", &mut sample);
    g.throughput(Throughput::Elements(n));
    g.bench_function("tiny: sample 4 images, guided", |bch| bch.iter(&mut sample));
    {
        // The same with launch batches: each launch recorded, each step planned.
        let _on = launch_batches(true);
        let n = batched_launches_of(&null, "tiny: sample 4 images, guided, batched", &mut sample);
        g.throughput(Throughput::Elements(n));
        g.bench_function("tiny: sample 4 images, guided, batched", |bch| {
            bch.iter(&mut sample)
        });
    }

    let x = on(Tensor::rand(
        &[8, cfg.channels, cfg.image_size, cfg.image_size],
        -1.0,
        1.0,
        &mut rng,
    ));
    let ls: Vec<Option<usize>> = (0..8).map(|i| Some(i % cfg.num_classes)).collect();
    let mut params = ParamStore::new();
    params.insert("", model.parameters()).unwrap();
    let adamw = AdamWConfig {
        lr: 1e-4,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 1e-4,
    };
    let mut opt = AdamW::new(&params, adamw).unwrap();
    let mut step = || {
        params.zero_grad();
        let o = model.forward(&x, Some(&ls)).unwrap();
        let loss = model.loss(&o).unwrap();
        loss.backward().unwrap();
        drop((loss, o));
        opt.step(1e-4).unwrap();
    };
    let n = launches_of(&null, "tiny: training step, 8 images", &mut step);
    g.throughput(Throughput::Elements(n));
    g.bench_function("tiny: training step, 8 images", |bch| bch.iter(&mut step));

    // ImageNet64 (p2 C768 T8 K8, 600 k launches per sampling run) when asked for: building
    // the model takes 1.8 GB and a few seconds.
    if std::env::var_os("TARFLOW_BENCH_IMAGENET64").is_some() {
        let cfg = TarFlowConfig::preset("imagenet64").unwrap();
        let model = TarFlow::<f32>::new(cfg, 0)
            .unwrap()
            .to_device(device)
            .unwrap();
        let sampler = Sampler::new(&model).unwrap();
        let opts = SampleOptions {
            max_redraws: 0,
            ..Default::default()
        };
        let mut sample = || {
            sampler.sample(16, &[], &mut Rng::new(3), &opts).unwrap();
        };
        g.sample_size(10);
        let n = launches_of(&null, "imagenet64: sample 16 images", &mut sample);
        g.throughput(Throughput::Elements(n));
        g.bench_function("imagenet64: sample 16 images", |bch| bch.iter(&mut sample));
        let _on = launch_batches(true);
        let n = batched_launches_of(&null, "imagenet64: sample 16 images, batched", &mut sample);
        g.throughput(Throughput::Elements(n));
        g.bench_function("imagenet64: sample 16 images, batched", |bch| {
            bch.iter(&mut sample)
        });
    }
    g.finish();
}

criterion_group!(benches, host_overhead);
criterion_main!(benches);
