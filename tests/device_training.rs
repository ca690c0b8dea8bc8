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

/// Sampling a model on `device` (the composed engine, every step on the device) against
/// the same model's host sampler on the CPU: the same latents, guidance on, within f32
/// rounding.
fn sampling_matches_cpu(device: Device) {
    use tarflow::model::{Guidance, SampleOptions, Sampler};
    let mut cfg = TarFlowConfig::preset("tiny").unwrap();
    // 16 tokens instead of 49: the interpreter runs every step's launches one by one.
    cfg.image_size = 16;
    let cpu_model = TarFlow::<f32>::new(cfg, 21).unwrap();
    cpu_model.randomize_output_projections(0.02, 22).unwrap();
    let gpu_model = cpu_model.to_device(device).unwrap();
    let sampler = Sampler::new(&gpu_model).unwrap();
    assert_eq!(sampler.device(), device);
    let labels = [Some(3), None];
    let opts = SampleOptions {
        guidance: Guidance::ClassifierFree {
            weight: 1.0,
            anneal: true,
        },
        ..Default::default()
    };
    let (want, _) = Sampler::new(&cpu_model)
        .unwrap()
        .sample(2, &labels, &mut Rng::new(3), &opts)
        .unwrap();
    let (got, report) = sampler.sample(2, &labels, &mut Rng::new(3), &opts).unwrap();
    assert_eq!(got.device(), Device::Cpu, "samples come back to the host");
    assert_eq!(got.shape(), want.shape());
    assert_eq!(report.failed, 0);
    let e = rel_err(&got.to_vec(), &want.to_vec());
    println!("sampling on {device}: relative error {e:.2e}");
    assert!(e <= 1e-5, "samples on {device}: relative error {e}");
}

#[test]
fn sampling_on_the_ptx_interpreter_matches_cpu() {
    sampling_matches_cpu(Device::PtxSim);
}

#[test]
fn sampling_matches_cpu_on_cuda() {
    match tarflow::gpu::registry::driver(Device::Cuda(0)) {
        Ok(_) => sampling_matches_cpu(Device::Cuda(0)),
        Err(e) => eprintln!("cuda:0 skipped: {e}"),
    }
}
