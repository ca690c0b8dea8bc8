//! Train a tiny TarFlow for a few steps on the embedded digits and sample from it, through
//! the library API only.
//!
//! ```sh
//! cargo run --release --example train_and_sample
//! ```

use tarflow::data::{embedded_mnist_split, Loader, LoaderConfig};
use tarflow::imageio::{f32_to_u8_images, write_png_grid};
use tarflow::model::{Guidance, SampleOptions, Sampler, TarFlow, TarFlowConfig};
use tarflow::nn::ParamStore;
use tarflow::optim::{AdamW, AdamWConfig};
use tarflow::train::with_gaussian_noise;
use tarflow::{Rng, Tensor};

fn main() -> tarflow::Result<()> {
    let cfg = TarFlowConfig::preset("tiny")?;
    let model = TarFlow::<f32>::new(cfg.clone(), 0)?;
    let mut params = ParamStore::new();
    params.insert("", model.parameters())?;
    let mut opt = AdamW::new(
        &params,
        AdamWConfig {
            lr: 2e-3,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 1e-4,
        },
    )?;

    let (train, _test) = embedded_mnist_split()?;
    let mut loader = Loader::new(std::sync::Arc::new(train), LoaderConfig::train(32, 0))?;
    let mut rng = Rng::new(1);
    for step in 1..=30 {
        let batch = loader.next_batch();
        let x = Tensor::from_vec(
            with_gaussian_noise(&batch.images, cfg.noise_sigma, &mut rng),
            &[batch.n, 1, 28, 28],
        )?;
        let labels: Vec<Option<usize>> = batch.labels.iter().map(|&l| Some(l as usize)).collect();
        params.zero_grad();
        let out = model.forward(&x, Some(&labels))?;
        let loss = model.loss(&out)?;
        loss.backward()?;
        opt.step(2e-3)?;
        if step % 10 == 0 {
            println!("step {step}: loss {:.4} nats/dim", loss.item()?);
        }
    }

    let sampler = Sampler::new(&model)?;
    let labels: Vec<Option<usize>> = (0..10).map(Some).collect();
    let opts = SampleOptions {
        guidance: Guidance::ClassifierFree {
            weight: 1.0,
            anneal: false,
        },
        ..Default::default()
    };
    let (x, report) = sampler.sample(10, &labels, &mut rng, &opts)?;
    let x = model.denoise(&x, Some(&labels), cfg.noise_sigma)?;
    let path = std::env::temp_dir().join("tarflow-example.png");
    write_png_grid(&path, &f32_to_u8_images(&x.to_vec()), 10, 1, 28, 28, 10, 2)?;
    println!(
        "10 samples (one per class) -> {} ({} redrawn)",
        path.display(),
        report.redrawn
    );
    Ok(())
}
