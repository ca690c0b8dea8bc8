//! The device memory counters (`tarflow::gpu::memory_stats`): buffers move a device's live
//! and peak bytes by their size, a dropped tensor gives its bytes back, and a whole training
//! step of the `tiny` TarFlow on the PTX interpreter ends with what it started with, and
//! recomputing layers in the backward keeps fewer bytes and changes no bit.
//!
//! Tests run in parallel and a device's counters are shared by everything on it, so each
//! test that checks exact byte counts has a device of its own: a fresh PTX interpreter
//! registered under a CUDA ordinal no machine has.

use std::sync::Arc;

use tarflow::backend::{matmul_precision, Precision};
use tarflow::gpu::{memory_stats, registry, reset_peak, MemoryStats, PtxSim};
use tarflow::model::{recompute, Recompute, TarFlow, TarFlowConfig};
use tarflow::nn::ParamStore;
use tarflow::optim::{AdamW, AdamWConfig};
use tarflow::tensor::GpuBuffer;
use tarflow::{Device, Rng, Tensor};

/// A PTX interpreter of this test's own, as `cuda:{ordinal}`.
fn private_device(ordinal: usize) -> Device {
    let device = Device::Cuda(ordinal);
    registry::register(device, Arc::new(PtxSim::new())).unwrap();
    device
}

fn stats(device: Device) -> MemoryStats {
    memory_stats(device).unwrap()
}

#[test]
fn buffers_move_live_and_peak_by_their_size() {
    let device = private_device(101);
    let driver = registry::driver(device).unwrap();
    assert_eq!(stats(device), MemoryStats::default());

    let a = GpuBuffer::alloc(driver.clone(), 1000, 4).unwrap();
    let b = GpuBuffer::alloc(driver.clone(), 24, 2).unwrap();
    assert_eq!(
        stats(device),
        MemoryStats {
            live_bytes: 4048,
            peak_bytes: 4048
        }
    );
    drop(a);
    assert_eq!(
        stats(device),
        MemoryStats {
            live_bytes: 48,
            peak_bytes: 4048
        }
    );
    reset_peak(device).unwrap();
    assert_eq!(stats(device).peak_bytes, 48);
    let c = GpuBuffer::alloc(driver, 10, 8).unwrap();
    drop(c);
    drop(b);
    assert_eq!(
        stats(device),
        MemoryStats {
            live_bytes: 0,
            peak_bytes: 128
        }
    );
}

#[test]
fn each_device_counts_its_own_buffers() {
    let (one, two) = (private_device(102), private_device(103));
    let t = Tensor::<f32>::zeros(&[7, 3]).to_device(one).unwrap();
    assert_eq!(stats(one).live_bytes, 7 * 3 * 4);
    assert_eq!(stats(two), MemoryStats::default());
    drop(t);
    assert_eq!(stats(one).live_bytes, 0);
}

#[test]
fn a_dropped_tensor_and_its_intermediates_give_their_bytes_back() {
    let device = private_device(104);
    let mut rng = Rng::new(1);
    let x = Tensor::<f32>::rand(&[8, 16], -1.0, 1.0, &mut rng)
        .to_device(device)
        .unwrap();
    let w = Tensor::<f32>::rand(&[16, 4], -1.0, 1.0, &mut rng)
        .to_device(device)
        .unwrap()
        .requires_grad_();
    let base = stats(device).live_bytes;
    assert_eq!(base, (8 * 16 + 16 * 4) * 4);
    {
        let y = x.matmul(&w).unwrap().tanh().unwrap().sum_all().unwrap();
        // The tanh (its backward needs its output) and the sum; the graph does not keep
        // the product alive, which no backward needs.
        assert_eq!(
            stats(device).live_bytes,
            base + (8 * 4 + 1) * 4,
            "{:?}",
            stats(device)
        );
        y.backward().unwrap();
    }
    assert!(w.grad().is_some());
    w.zero_grad();
    assert_eq!(stats(device).live_bytes, base);
    assert!(stats(device).peak_bytes > base);
    drop((x, w));
    assert_eq!(stats(device).live_bytes, 0);
}

#[test]
fn a_training_step_on_ptx_sim_leaves_live_bytes_where_they_were() {
    let device = Device::PtxSim;
    let cfg = TarFlowConfig::preset("tiny").unwrap();
    let model = TarFlow::<f32>::new(cfg.clone(), 5).unwrap();
    model.randomize_output_projections(0.05, 6).unwrap();
    let model = model.to_device(device).unwrap();
    let mut params = ParamStore::new();
    params.insert("", model.parameters()).unwrap();
    let mut opt = AdamW::new(&params, AdamWConfig::default()).unwrap();
    let n = cfg.image_size;
    let x = Tensor::<f32>::rand(&[2, cfg.channels, n, n], -1.0, 1.0, &mut Rng::new(7))
        .to_device(device)
        .unwrap();
    let labels = [Some(1), None];

    let param_bytes: u64 = params.iter().map(|(_, t)| t.numel() as u64 * 4).sum();
    let base = stats(device).live_bytes;
    // Weights, two AdamW moments per weight, and the batch.
    assert!(base >= 3 * param_bytes + x.numel() as u64 * 4, "{base}");

    let mut after_loss = Vec::new();
    for _ in 0..2 {
        reset_peak(device).unwrap();
        {
            let out = model.forward(&x, Some(&labels)).unwrap();
            let loss = model.loss(&out).unwrap();
            after_loss.push(stats(device).live_bytes);
            loss.backward().unwrap();
        }
        // The gradients are the step's only survivors until the optimiser has used them.
        assert!(stats(device).live_bytes >= base + param_bytes);
        opt.step(1e-3).unwrap();
        params.zero_grad();
        let s = stats(device);
        assert_eq!(s.live_bytes, base, "live bytes after the step ({s:?})");
        assert!(s.peak_bytes >= after_loss[after_loss.len() - 1], "{s:?}");
    }
    assert!(
        after_loss[0] > base,
        "the forward kept nothing? {after_loss:?}"
    );
    // The same step twice keeps the same activations.
    assert_eq!(after_loss[0], after_loss[1]);
}

/// Loss and gradient bits and the activation bytes of one bf16 training step of a tiny
/// model with two layers per block on `device`, its layers recomputing `r`.
fn bf16_step(device: Device, r: Recompute) -> (Vec<Vec<u32>>, u64) {
    let mut cfg = TarFlowConfig::preset("tiny").unwrap();
    cfg.layers_per_block = 2;
    let model = TarFlow::<f32>::new(cfg.clone(), 5).unwrap();
    model.randomize_output_projections(0.05, 6).unwrap();
    let model = model.to_device(device).unwrap();
    let n = cfg.image_size;
    let x = Tensor::<f32>::rand(&[2, cfg.channels, n, n], -1.0, 1.0, &mut Rng::new(7))
        .to_device(device)
        .unwrap();
    let base = stats(device).live_bytes;
    let _p = matmul_precision(Precision::Bf16);
    let _r = recompute(r);
    let out = model.forward(&x, Some(&[Some(1), None])).unwrap();
    let loss = model.loss(&out).unwrap();
    let kept = stats(device).live_bytes - base;
    loss.backward().unwrap();
    let bits = |t: &Tensor<f32>| {
        t.try_to_vec()
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect()
    };
    let mut v = vec![bits(&loss)];
    v.extend(
        model
            .parameters()
            .iter()
            .map(|(_, p)| bits(&p.grad().unwrap())),
    );
    (v, kept)
}

#[test]
fn recomputing_layers_keeps_fewer_bytes_and_changes_no_bit() {
    let device = private_device(93);
    let (plain, none_bytes) = bf16_step(device, Recompute::None);
    let (mlp, mlp_bytes) = bf16_step(device, Recompute::Mlp);
    let (layer, layer_bytes) = bf16_step(device, Recompute::Layer);
    assert!(
        plain == mlp,
        "recomputing the MLP changed the loss or a gradient"
    );
    assert!(
        plain == layer,
        "recomputing the layers changed the loss or a gradient"
    );
    // Per token of a layer of width C = 64: the MLP half's norm output, bf16 input copy and
    // [4C] f32 pre-activation are no longer kept (at least 4 x 4C bytes), and with whole
    // layers the attention half's norm output, q/k/v and output copies too.
    let tokens = 2 * 49 * 4; // batch x tokens x layers
    assert!(
        none_bytes - mlp_bytes >= tokens * 64 * 16,
        "{none_bytes} {mlp_bytes}"
    );
    assert!(
        mlp_bytes - layer_bytes >= tokens * 64 * 8,
        "{mlp_bytes} {layer_bytes}"
    );
}
