//! Launch batches (`tarflow::gpu::batch`): launches held back and issued together, as one
//! CUDA graph on a GPU.
//!
//! - The rules a batch keeps, on the interpreter's own driver: held launches run in the
//!   order they were made and only when issued; an upload, a download or a synchronisation
//!   issues them first; memory freed meanwhile is released after them; a wrong launch fails
//!   where it is made and a faulting one at the batch's end; and the graph plan (build once,
//!   then patch what changed) is what the counts say.
//! - The sampler with batches on gives the bits it gives with them off, on `ptx-sim` and,
//!   in the `_cuda` twin, on `cuda:0` where a driver loads (there, through CUDA graphs).
#![cfg(feature = "ptx-sim")]

use std::sync::{Arc, Mutex};

use tarflow::gpu::kernels::fill_f32;
use tarflow::gpu::{
    launch_batches, size_class, BatchCounts, BufferCache, DevicePtr, Driver, Forward, PtxSim,
};
use tarflow::model::{Guidance, SampleOptions, Sampler, TarFlow, TarFlowConfig};
use tarflow::{Device, Rng};

fn floats(d: &dyn Driver, p: tarflow::gpu::DevicePtr, n: usize) -> Vec<f32> {
    let mut bytes = vec![0u8; 4 * n];
    d.download(p, &mut bytes).unwrap();
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn a_batch_holds_launches_until_anything_else_needs_them() {
    let sim = PtxSim::new();
    let d: &dyn Driver = &sim;
    let a = d.alloc(64 * 4).unwrap();
    fill_f32(d, a, 64, 0.0).unwrap();
    assert!(d.begin_batch().unwrap(), "the interpreter has batches");
    assert!(!d.begin_batch().unwrap(), "one batch at a time");
    fill_f32(d, a, 64, 1.0).unwrap();
    // An upload goes after what is held: the fill of 1.0 runs first.
    d.upload(a, &2.0f32.to_le_bytes()).unwrap();
    assert_eq!(floats(d, a, 2), [2.0, 1.0]);
    // Freed while held: released after the launch that writes it (an immediate release
    // would make the held fill write freed memory, which the interpreter refuses).
    let b = d.alloc(64 * 4).unwrap();
    fill_f32(d, b, 64, 3.0).unwrap();
    d.free(b).unwrap();
    let c = d.alloc(16).unwrap();
    fill_f32(d, c, 4, 4.0).unwrap();
    d.end_batch().unwrap();
    assert_eq!(floats(d, c, 4), [4.0; 4]);
    // A launch that cannot be made fails at once; one that faults, when the batch ends.
    assert!(d.begin_batch().unwrap());
    let e = d
        .launch(
            &tarflow::gpu::kernels::COPY,
            "no_such_kernel",
            tarflow::gpu::LaunchConfig::linear(1, 32),
            &[],
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("no_such_kernel"), "{e}");
    // Held, so the write to freed memory is only found when the batch runs.
    fill_f32(d, b, 64, 5.0).unwrap();
    let e = d.end_batch().unwrap_err().to_string();
    assert!(
        e.contains("fill"),
        "the freed buffer's fill faults at the end: {e}"
    );
    // Closed after the error: launches run at once again.
    fill_f32(d, a, 64, 6.0).unwrap();
    assert_eq!(floats(d, a, 1), [6.0]);
}

#[test]
fn batches_with_the_same_kernels_patch_one_graph() {
    let sim = PtxSim::new();
    let d: &dyn Driver = &sim;
    let (a, b) = (d.alloc(256).unwrap(), d.alloc(256).unwrap());
    // Four launches, the last one's value and buffer changing: one node to patch is close
    // enough to reuse the graph.
    let step = |x: f32, ptr| {
        assert!(d.begin_batch().unwrap());
        for n in [64, 32, 16] {
            fill_f32(d, a, n, 1.0).unwrap();
        }
        fill_f32(d, ptr, 64, x).unwrap();
        d.end_batch().unwrap();
    };
    step(1.0, b);
    step(1.0, b);
    step(2.0, b);
    step(2.0, a);
    assert_eq!(
        d.batch_counts().unwrap(),
        BatchCounts {
            batches: 4,
            launches: 16,
            graphs_built: 1,
            nodes_patched: 2,
        }
    );
    assert_eq!(floats(d, a, 1), [2.0]);
    // An empty batch issues nothing.
    assert!(d.begin_batch().unwrap());
    d.end_batch().unwrap();
    assert_eq!(d.batch_counts().unwrap().batches, 4);
}

/// The tiny model sampled on `device` with launch batches on, against the same run with
/// them off: the same bits, with classifier-free guidance annealed over the positions (so
/// the coupling's weight changes at every step).
fn batched_sampling_is_unbatched_sampling(device: Device) {
    let mut cfg = TarFlowConfig::preset("tiny").unwrap();
    cfg.image_size = 16;
    let model = TarFlow::<f32>::new(cfg, 31).unwrap();
    model.randomize_output_projections(0.02, 32).unwrap();
    let model = model.to_device(device).unwrap();
    let labels = [Some(2), None];
    let opts = SampleOptions {
        guidance: Guidance::ClassifierFree {
            weight: 1.5,
            anneal: true,
        },
        ..Default::default()
    };
    let sample = |batches: bool| {
        let _b = launch_batches(batches);
        let s = Sampler::new(&model).unwrap();
        let (x, report) = s.sample(2, &labels, &mut Rng::new(5), &opts).unwrap();
        assert_eq!(report.failed, 0);
        x.to_vec().iter().map(|v| v.to_bits()).collect::<Vec<u32>>()
    };
    let driver = tarflow::gpu::registry::driver(device).unwrap();
    let before = driver.batch_counts().unwrap_or_default();
    let batched = sample(true);
    let after = driver.batch_counts().unwrap_or_default();
    let plain = sample(false);
    assert_eq!(batched, plain, "{device}: batched samples differ");
    let steps = (model.config.image_size / model.config.patch_size).pow(2) - 1;
    let blocks = model.config.blocks as u64;
    let n = after.since(before);
    println!("{device}: {n:?}");
    assert_eq!(
        n.batches,
        steps as u64 * blocks,
        "{device}: one batch per step"
    );
    assert!(
        n.graphs_built <= 2 * blocks,
        "{device}: {n:?}: the steps of a block share their graphs"
    );
    assert!(n.nodes_patched < n.launches, "{device}: {n:?}");
}

#[test]
fn batched_sampling_on_the_ptx_interpreter_is_unbatched_sampling() {
    batched_sampling_is_unbatched_sampling(Device::PtxSim);
}

/// The interpreter behind the CUDA driver's buffer cache ([`BufferCache`]: size classes,
/// freed buffers reused last in, first out, and never given back). The addresses a sampling step gets
/// then repeat from step to step as they do on a GPU, so the nodes a kept graph needs
/// patched are the ones whose parameters really change with the position.
struct PooledSim {
    sim: PtxSim,
    pool: Mutex<BufferCache>,
}

impl Forward for PooledSim {
    fn inner(&self) -> &dyn Driver {
        &self.sim
    }
    fn alloc(&self, bytes: usize) -> tarflow::Result<DevicePtr> {
        let class = size_class(bytes);
        let mut pool = self.pool.lock().unwrap();
        let p = match pool.reuse(class) {
            Some(p) => p,
            None => {
                let p = self.sim.alloc(class)?.0;
                pool.insert(p, class);
                p
            }
        };
        Ok(DevicePtr(p))
    }
    fn free(&self, ptr: DevicePtr) -> tarflow::Result<()> {
        self.pool
            .lock()
            .unwrap()
            .release(ptr.0)
            .expect("a live buffer");
        Ok(())
    }
}

#[test]
fn with_a_gpus_buffer_cache_a_step_patches_only_what_the_position_changes() {
    let device = Device::Cuda(97);
    let pooled = PooledSim {
        sim: PtxSim::new(),
        pool: Mutex::new(Default::default()),
    };
    tarflow::gpu::registry::register(device, Arc::new(pooled)).unwrap();
    batched_sampling_is_unbatched_sampling(device);
    let n = tarflow::gpu::registry::driver(device)
        .unwrap()
        .batch_counts()
        .unwrap();
    tarflow::gpu::registry::unregister(device);
    // Per step of the tiny model (one layer per block, two branches): the input projection
    // reads the step's token and bias row, the decode a longer cache, the coupling the
    // next latent, slot and guidance weight.
    assert!(
        n.nodes_patched * 3 <= n.launches,
        "{n:?}: most nodes should run again as they were"
    );
}

#[test]
fn batched_sampling_is_unbatched_sampling_on_cuda() {
    match tarflow::gpu::registry::driver(Device::Cuda(0)) {
        Ok(_) => batched_sampling_is_unbatched_sampling(Device::Cuda(0)),
        Err(e) => eprintln!("cuda:0 skipped: {e}"),
    }
}
