//! Results do not depend on the thread pool: the same bits on one to four threads, called
//! from the main thread or from inside a pool, call after call. Parallel reductions
//! (layer_norm's parameter gradients, sums, products split over `K`) combine their parts in
//! an order fixed by the shapes alone, never by how rayon happened to split the work.

use tarflow::model::{SampleOptions, Sampler, TarFlow, TarFlowConfig};
use tarflow::{Rng, Tensor};

/// The loss and every parameter gradient of one forward + backward of a small TarFlow (64
/// images, so that layer_norm, the sums and the weight gradients all split into tasks).
fn step_bits() -> Vec<u32> {
    let cfg = TarFlowConfig::preset("tiny").unwrap();
    let model = TarFlow::<f32>::new(cfg, 3).unwrap();
    model.randomize_output_projections(0.05, 4).unwrap();
    let mut rng = Rng::new(5);
    let x = Tensor::<f32>::randn(&[64, 1, 28, 28], 0.0, 1.0, &mut rng);
    let labels: Vec<Option<usize>> = (0..64).map(|i| Some(i % 10)).collect();
    let out = model.forward(&x, Some(&labels)).unwrap();
    let loss = model.loss(&out).unwrap();
    loss.backward().unwrap();
    let mut bits: Vec<u32> = loss.to_vec().iter().map(|v| v.to_bits()).collect();
    for (name, p) in model.parameters() {
        let g = p.grad().unwrap_or_else(|| panic!("{name} has no gradient"));
        bits.extend(g.to_vec().iter().map(|v| v.to_bits()));
    }
    bits
}

fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

/// `bits()` inside pools of 1 to 4 threads against `want` from the main thread.
fn assert_same_in_every_pool(what: &str, want: &[u32], bits: fn() -> Vec<u32>) {
    for threads in 1..=4 {
        assert!(
            in_pool(threads, bits) == want,
            "{what} on {threads} threads inside a pool differs from the main thread"
        );
    }
}

#[test]
fn a_training_step_gives_the_same_bits_on_any_pool() {
    let want = step_bits();
    assert_same_in_every_pool("a training step", &want, step_bits);
    in_pool(4, || {
        for call in 0..4 {
            assert!(step_bits() == want, "call {call} on 4 threads differs");
        }
    });
}

/// Eight samples with classifier-free guidance, then denoised (a gradient of the model's
/// log-density), as bits: the sampler splits the batch over threads, so each thread count
/// multiplies differently sized batches.
fn sample_bits() -> Vec<u32> {
    let cfg = TarFlowConfig::preset("tiny").unwrap();
    let model = TarFlow::<f32>::new(cfg, 6).unwrap();
    model.randomize_output_projections(0.05, 7).unwrap();
    let labels: Vec<Option<usize>> = (0..8).map(|i| Some(i % 10)).collect();
    let opts = SampleOptions {
        guidance: tarflow::model::Guidance::ClassifierFree {
            weight: 1.5,
            anneal: true,
        },
        ..Default::default()
    };
    let (x, _) = Sampler::new(&model)
        .unwrap()
        .sample(8, &labels, &mut Rng::new(8), &opts)
        .unwrap();
    let x = model.denoise(&x, Some(&labels), 0.1).unwrap();
    x.to_vec().iter().map(|v| v.to_bits()).collect()
}

#[test]
fn sampling_gives_the_same_bits_on_any_pool() {
    assert_same_in_every_pool("sampling", &sample_bits(), sample_bits);
}
