//! One unfused training step of the `tiny` TarFlow (batch 4) on a GPU device against the
//! same step on the CPU: the loss, the gradient of every parameter, the global gradient
//! norm, and (from the same gradients) the weights after AdamW and the EMA. The GPU step runs the
//! model's ops through the device's kernels (`src/backend/gpu.rs`): on `ptx-sim` (the PTX
//! interpreter, always) and on `cuda:0` where a CUDA driver and GPU are present.

mod common;

use tarflow::model::{TarFlow, TarFlowConfig};
use tarflow::nn::ParamStore;
use tarflow::optim::{clip_grad_norm, AdamW, AdamWConfig, Ema};
use tarflow::{Device, Rng, Tensor};

/// Largest `|gpu - cpu|` over a tensor, relative to the tensor's largest `|cpu|` (NaN-safe:
/// a NaN anywhere gives NaN).
fn rel_err(gpu: &[f32], cpu: &[f32]) -> f64 {
    assert_eq!(gpu.len(), cpu.len());
    let scale = common::worst(cpu.iter().map(|&v| (v as f64).abs())).max(1e-30);
    common::worst(
        gpu.iter()
            .zip(cpu)
            .map(|(&g, &c)| (g as f64 - c as f64).abs()),
    ) / scale
}

/// A model, its parameter store, and the optimiser state of one side of the comparison.
struct Side {
    model: TarFlow<f32>,
    store: ParamStore<f32>,
}

impl Side {
    fn new(model: TarFlow<f32>) -> Side {
        let mut store = ParamStore::new();
        store.insert("", model.parameters()).unwrap();
        Side { model, store }
    }

    /// Forward, loss and backward on `x`; returns the loss.
    fn loss_and_grads(&self, x: &Tensor<f32>, labels: &[Option<usize>]) -> f64 {
        let x = x.to_device(self.model.device()).unwrap();
        let out = self.model.forward(&x, Some(labels)).unwrap();
        let loss = self.model.loss(&out).unwrap();
        loss.backward().unwrap();
        loss.item().unwrap() as f64
    }
}

fn step_matches_cpu(device: Device) {
    let cfg = TarFlowConfig::preset("tiny").unwrap();
    let cpu_model = TarFlow::<f32>::new(cfg.clone(), 11).unwrap();
    // Non-zero output projections, so that every block's scale and shift (and so every
    // gradient) depend on the whole network.
    cpu_model.randomize_output_projections(0.05, 12).unwrap();
    let gpu_model = cpu_model.to_device(device).unwrap();
    assert_eq!(gpu_model.device(), device);
    let (cpu, gpu) = (Side::new(cpu_model), Side::new(gpu_model));

    let mut rng = Rng::new(13);
    let n = cfg.image_size;
    let x = Tensor::<f32>::rand(&[4, cfg.channels, n, n], -1.0, 1.0, &mut rng);
    let labels = [Some(1), Some(7), None, Some(3)];

    let (lc, lg) = (
        cpu.loss_and_grads(&x, &labels),
        gpu.loss_and_grads(&x, &labels),
    );
    assert!(lc.is_finite(), "cpu loss {lc}");
    assert!(
        (lg - lc).abs() <= 1e-5 * lc.abs().max(1.0),
        "loss on {device}: {lg}, cpu {lc}"
    );

    // Every parameter's gradient, on the device's own tensors.
    let names: Vec<String> = cpu.store.iter().map(|(n, _)| n.to_string()).collect();
    assert!(!names.is_empty());
    let mut worst_grad = 0.0f64;
    for ((name, pc), (_, pg)) in cpu.store.iter().zip(gpu.store.iter()) {
        assert_eq!(pg.device(), device, "{name}");
        let gc = pc
            .grad()
            .unwrap_or_else(|| panic!("no cpu grad for {name}"));
        let gg = pg
            .grad()
            .unwrap_or_else(|| panic!("no {device} grad for {name}"));
        assert_eq!(gg.device(), device, "gradient of {name}");
        let e = rel_err(&gg.try_to_vec().unwrap(), &gc.to_vec());
        assert!(
            e <= 2e-4,
            "gradient of {name} on {device}: relative error {e}"
        );
        worst_grad = common::worst([worst_grad, e]);
    }
    eprintln!(
        "{device}: loss {lg} (cpu {lc}), worst gradient error {worst_grad:.2e} over {} tensors",
        names.len()
    );

    // Clipping measures the same norm (a small max forces the rescale on both sides).
    let (nc, ng) = (
        clip_grad_norm(&cpu.store, 0.5).unwrap(),
        clip_grad_norm(&gpu.store, 0.5).unwrap(),
    );
    assert!(nc > 0.5, "the clip must rescale: norm {nc}");
    assert!(
        (ng - nc).abs() <= 1e-4 * nc,
        "grad norm on {device}: {ng}, cpu {nc}"
    );

    // The optimiser alone: the device gets the CPU's (clipped) gradients, so that a tiny
    // gradient whose sign the two devices' rounding decides cannot flip an Adam update.
    for ((_, pc), (_, pg)) in cpu.store.iter().zip(gpu.store.iter()) {
        let g = pc.grad().unwrap().to_device(device).unwrap();
        pg.set_grad(Some(g));
    }
    // One AdamW step and one EMA update with the same settings.
    let acfg = AdamWConfig {
        lr: 1e-3,
        weight_decay: 0.01,
        ..AdamWConfig::default()
    };
    let mut emas = [Ema::new(&cpu.store), Ema::new(&gpu.store)];
    for (side, ema) in [&cpu, &gpu].into_iter().zip(emas.iter_mut()) {
        let mut opt = AdamW::new(&side.store, acfg).unwrap();
        opt.step(acfg.lr).unwrap();
        ema.update(&side.store, 0.9).unwrap();
    }
    for ((name, pc), (_, pg)) in cpu.store.iter().zip(gpu.store.iter()) {
        assert_eq!(pg.device(), device, "{name} after the step");
        let e = rel_err(&pg.try_to_vec().unwrap(), &pc.to_vec());
        assert!(
            e <= 1e-6,
            "{name} after AdamW on {device}: relative error {e}"
        );
    }
    let [ec, eg] = &emas;
    for name in &names {
        let (sc, sg) = (ec.shadow(name).unwrap(), eg.shadow(name).unwrap());
        let e = rel_err(&sg.try_to_vec().unwrap(), &sc.to_vec());
        assert!(e <= 1e-6, "EMA of {name} on {device}: relative error {e}");
    }
}

#[test]
fn tiny_training_step_on_the_ptx_interpreter_matches_cpu() {
    step_matches_cpu(Device::PtxSim);
}

#[test]
fn tiny_training_step_matches_cpu_on_cuda() {
    match tarflow::gpu::registry::driver(Device::Cuda(0)) {
        Ok(_) => step_matches_cpu(Device::Cuda(0)),
        Err(e) => eprintln!("cuda:0 skipped: {e}"),
    }
}

#[test]
fn sampling_a_model_on_a_device_is_a_clear_error() {
    let cfg = TarFlowConfig::preset("tiny").unwrap();
    let model = TarFlow::<f32>::new(cfg, 1)
        .unwrap()
        .to_device(Device::PtxSim)
        .unwrap();
    let e = tarflow::model::Sampler::new(&model)
        .err()
        .expect("the sampler runs on the CPU")
        .to_string();
    assert!(e.contains("ptx-sim") && e.contains("Device::Cpu"), "{e}");
    // Moved back, it samples.
    assert!(tarflow::model::Sampler::new(&model.to_device(Device::Cpu).unwrap()).is_ok());
}
