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
    // Score-based denoising of the samples, on the device.
    let lab = Some(&labels[..]);
    let want = cpu_model.denoise(&want, lab, 0.1).unwrap();
    let got = gpu_model
        .denoise(&got.to_device(device).unwrap(), lab, 0.1)
        .unwrap();
    assert_eq!(got.device(), device);
    let e = rel_err(&got.to_vec(), &want.to_vec());
    println!("denoising on {device}: relative error {e:.2e}");
    assert!(
        e <= 1e-5,
        "denoised samples on {device}: relative error {e}"
    );
    // An unconditional model under attention-temperature guidance: both branches start
    // from one input projection, copied to the second branch.
    let mut cfg = TarFlowConfig::preset("tiny").unwrap();
    (cfg.image_size, cfg.num_classes) = (16, 0);
    let cpu_model = TarFlow::<f32>::new(cfg, 23).unwrap();
    cpu_model.randomize_output_projections(0.02, 24).unwrap();
    let opts = SampleOptions {
        guidance: Guidance::Temperature {
            weight: 0.8,
            tau: 0.7,
            anneal: false,
        },
        ..Default::default()
    };
    let sample = |m: &TarFlow<f32>| {
        let s = Sampler::new(m).unwrap();
        s.sample(2, &[], &mut Rng::new(4), &opts)
            .unwrap()
            .0
            .to_vec()
    };
    let want = sample(&cpu_model);
    let got = sample(&cpu_model.to_device(device).unwrap());
    let e = rel_err(&got, &want);
    println!("temperature-guided sampling on {device}: relative error {e:.2e}");
    assert!(
        e <= 1e-5,
        "temperature-guided samples on {device}: relative error {e}"
    );
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

/// The `tiny` preset trained for a few steps by [`Trainer`] on `device` against the same
/// run on the CPU: every step's loss and gradient norm, a checkpoint written and resumed
/// on the device, the evaluation weights at the end, and four samples drawn on the device
/// from them.
fn trainer_matches_cpu(device: Device) {
    use tarflow::data::embedded_mnist_split;
    use tarflow::model::{SampleOptions, Sampler};
    use tarflow::train::{TrainConfig, Trainer};

    let (train, test) = embedded_mnist_split().unwrap();
    let train = train.subset(&(0..64).collect::<Vec<_>>()).unwrap();
    let test = test.subset(&(0..8).collect::<Vec<_>>()).unwrap();
    let dirs = [
        common::TempDir::new("device-trainer-cpu"),
        common::TempDir::new("device-trainer-gpu"),
    ];
    let config = |dir: &common::TempDir, device: Device| {
        let mut c = TrainConfig::preset("tiny").unwrap();
        c.steps = 10;
        c.batch_size = 2;
        c.warmup_steps = 2;
        c.eval_every = 0;
        c.sample_every = 0;
        c.checkpoint_every = 0;
        c.ema = Some(0.9);
        // The run's end evaluates and samples on the device too: keep both small (guidance
        // and denoising on a device have tests of their own).
        c.eval_images = 8;
        c.samples_per_class = 1;
        c.sample_cfg = 0.0;
        c.sample_denoise = false;
        c.out_dir = dir.path().to_path_buf();
        c.device = device;
        c
    };
    let mut cpu = Trainer::new(config(&dirs[0], Device::Cpu), train.clone(), test.clone()).unwrap();
    let mut cpu_stats = Vec::new();
    cpu.run(|ev| {
        if let tarflow::train::Event::Step(s) = ev {
            cpu_stats.push((s.loss, s.grad_norm));
        }
    })
    .unwrap();

    // Five steps on the device, a checkpoint, and the last five after resuming from it.
    let mut gpu = Trainer::new(config(&dirs[1], device), train.clone(), test.clone()).unwrap();
    assert_eq!(gpu.model.device(), device);
    let mut gpu_stats = Vec::new();
    let mut record = |ev: tarflow::train::Event| {
        if let tarflow::train::Event::Step(s) = ev {
            gpu_stats.push((s.loss, s.grad_norm));
        }
    };
    gpu.run_until(5, &mut record).unwrap();
    gpu.save_checkpoint().unwrap();
    drop(gpu);
    let mut gpu = Trainer::resume_on(dirs[1].path(), train, test, device).unwrap();
    assert_eq!((gpu.step, gpu.model.device()), (5, device));
    gpu.run(&mut record).unwrap();

    assert_eq!(gpu_stats.len(), cpu_stats.len());
    for (i, ((gl, gn), (cl, cn))) in gpu_stats.iter().zip(&cpu_stats).enumerate() {
        let (el, en) = ((gl - cl).abs() / cl.abs(), (gn - cn).abs() / cn.abs());
        println!(
            "step {}: loss {gl:.8} vs {cl:.8}, grad norm {gn:.6} vs {cn:.6}",
            i + 1
        );
        assert!(
            el <= 1e-5 && en <= 1e-4,
            "step {}: loss err {el}, norm err {en}",
            i + 1
        );
    }
    let (cm, gm) = (cpu.eval_model().unwrap(), gpu.eval_model().unwrap());
    let mut worst = 0.0f64;
    for ((name, c), (_, g)) in cm.parameters().iter().zip(gm.parameters().iter()) {
        let e = rel_err(&g.to_vec(), &c.to_vec());
        // Ten AdamW steps: an update divides each gradient by its own running RMS, so the
        // f32 rounding of small gradient entries reaches the weights undamped.
        assert!(
            e <= 1e-3,
            "{name} after training on {device}: relative error {e}"
        );
        worst = worst.max(e);
    }
    println!("evaluation weights on {device}: worst relative error {worst:.2e}");

    let labels = [Some(0), Some(1), Some(2), Some(3)];
    let opts = SampleOptions::default();
    let (want, _) = Sampler::new(&cm)
        .unwrap()
        .sample(4, &labels, &mut Rng::new(9), &opts)
        .unwrap();
    let on_device = gm.to_device(device).unwrap();
    let (got, _) = Sampler::new(&on_device)
        .unwrap()
        .sample(4, &labels, &mut Rng::new(9), &opts)
        .unwrap();
    let e = rel_err(&got.to_vec(), &want.to_vec());
    println!("4 samples on {device}: relative error {e:.2e}");
    assert!(e <= 1e-4, "samples on {device}: relative error {e}");
}

#[test]
fn tiny_trainer_on_the_ptx_interpreter_matches_cpu() {
    trainer_matches_cpu(Device::PtxSim);
}

#[test]
fn tiny_trainer_matches_cpu_on_cuda() {
    match tarflow::gpu::registry::driver(Device::Cuda(0)) {
        Ok(_) => trainer_matches_cpu(Device::Cuda(0)),
        Err(e) => eprintln!("cuda:0 skipped: {e}"),
    }
}

/// Mixed precision: `TrainConfig::precision = Bf16` trains on the device with bf16 GEMMs. Its
/// losses follow the f32 run's within bf16's error and are not the f32 run's bits (the path
/// is taken); the CPU refuses bf16 with an error naming the device.
fn bf16_trainer_follows_f32(device: Device) {
    use tarflow::backend::Precision;
    use tarflow::data::{embedded_mnist_split, Loader, LoaderConfig};
    use tarflow::train::{TrainConfig, Trainer};

    let (train, test) = embedded_mnist_split().unwrap();
    let train = train.subset(&(0..32).collect::<Vec<_>>()).unwrap();
    let test = test.subset(&(0..4).collect::<Vec<_>>()).unwrap();
    let run = |precision: Precision| -> Vec<f64> {
        let dir = common::TempDir::new("device-trainer-bf16");
        let mut c = TrainConfig::preset("tiny").unwrap();
        c.steps = 4;
        c.batch_size = 2;
        c.warmup_steps = 1;
        c.eval_every = 0;
        c.sample_every = 0;
        c.checkpoint_every = 0;
        c.eval_images = 4;
        c.samples_per_class = 0;
        c.out_dir = dir.path().to_path_buf();
        c.device = device;
        c.precision = precision;
        let mut t = Trainer::new(c, train.clone(), test.clone()).unwrap();
        let data = std::sync::Arc::new(train.clone());
        let mut batches = Loader::new(data, LoaderConfig::train(2, 7)).unwrap();
        (0..4)
            .map(|_| t.train_step(&batches.next_batch()).unwrap().loss)
            .collect()
    };
    let (f32s, bf16s) = (run(Precision::F32), run(Precision::Bf16));
    for (i, (a, b)) in bf16s.iter().zip(&f32s).enumerate() {
        let e = (a - b).abs() / b.abs();
        println!("step {}: loss {a:.6} in bf16, {b:.6} in f32", i + 1);
        assert!(e <= 2e-2, "step {}: bf16 loss {a} vs f32 {b}", i + 1);
    }
    assert_ne!(bf16s, f32s, "bf16 gave the f32 run's losses bit for bit");

    let mut c = TrainConfig::preset("tiny").unwrap();
    c.precision = Precision::Bf16;
    let e = Trainer::new(c, train, test)
        .err()
        .expect("bf16 on the CPU")
        .to_string();
    assert!(e.contains("bf16") && e.contains("cpu"), "{e}");
}

#[test]
fn bf16_trainer_on_the_ptx_interpreter_follows_f32() {
    bf16_trainer_follows_f32(Device::PtxSim);
}

#[test]
fn bf16_trainer_follows_f32_on_cuda() {
    match tarflow::gpu::registry::driver(Device::Cuda(0)) {
        Ok(_) => bf16_trainer_follows_f32(Device::Cuda(0)),
        Err(e) => eprintln!("cuda:0 skipped: {e}"),
    }
}
