//! Bad input to the public API of the modules, models, optimisers, trainer, data sets and
//! file formats: each case is an `Err` naming what was wrong, never a panic.

use std::sync::Arc;

use tarflow::data::{decode_image, Batch, Dataset, Loader, LoaderConfig, Prefetcher};
use tarflow::model::{
    FlowBlock, FlowOutput, Guidance, SampleOptions, Sampler, TarFlow, TarFlowConfig,
};
use tarflow::nn::{Linear, ParamStore};
use tarflow::optim::{AdamW, Ema};
use tarflow::train::{TrainConfig, Trainer};
use tarflow::{DType, Result, Rng, Tensor};

/// 4x4 grayscale images in 2x2 patches: 4 tokens of 4 values, width 4, two blocks.
fn micro(classes: usize) -> TarFlowConfig {
    TarFlowConfig {
        channels: 1,
        image_size: 4,
        patch_size: 2,
        width: 4,
        blocks: 2,
        layers_per_block: 1,
        head_dim: 2,
        mlp_ratio: 2,
        num_classes: classes,
        noise_sigma: 0.0,
        alpha_clip: None,
        additive: false,
    }
}

fn model(classes: usize) -> TarFlow<f32> {
    TarFlow::new(micro(classes), 0).unwrap()
}

/// The error's message, asserting that it names every one of `words`.
fn err_names<T>(r: Result<T>, words: &[&str]) -> String {
    let Err(e) = r else {
        panic!("expected an error naming {words:?}")
    };
    let m = e.to_string();
    for w in words {
        assert!(m.contains(w), "`{w}` missing from: {m}");
    }
    m
}

/// Two 4x4 grayscale images of classes 0 and 1.
fn tiny_data() -> Dataset {
    Dataset::new("tiny", vec![7; 32], vec![0, 1], 2, 1, 4, 4).unwrap()
}

fn train_config() -> TrainConfig {
    let mut c = TrainConfig::preset("tiny").unwrap();
    c.model = micro(2);
    c.batch_size = 1;
    c.out_dir = std::env::temp_dir().join(format!("tarflow-bad-input-api-{}", std::process::id()));
    c
}

// ------------------------------------------------------------------ flow blocks

#[test]
fn flow_block_shift_rejects_a_tensor_that_is_not_tokens() {
    let r = FlowBlock::<f32>::shift(&Tensor::zeros(&[3]));
    err_names(r, &["FlowBlock::shift", "[3]", "expected tokens"]);
    let r = FlowBlock::<f32>::shift(&Tensor::zeros(&[2, 0, 4]));
    err_names(r, &["FlowBlock::shift", "[2, 0, 4]"]);
}

#[test]
fn flow_block_params_rejects_a_tensor_that_is_not_tokens() {
    let m = model(0);
    let r = m.blocks[0].params(&Tensor::zeros(&[4]), None, 1.0);
    err_names(r.map(|p| p.alpha), &["FlowBlock::params", "[4]"]);
}

#[test]
fn flow_block_forward_rejects_a_tensor_that_is_not_tokens() {
    let m = model(0);
    let r = m.blocks[0].forward(&Tensor::zeros(&[4]), None, 1.0);
    err_names(r, &["FlowBlock::forward", "[4]"]);
}

#[test]
fn reverse_reference_rejects_latents_that_are_not_tokens() {
    let m = model(0);
    let r = m.blocks[1].reverse_reference(&Tensor::zeros(&[4, 4]), None, 1.0);
    err_names(r, &["FlowBlock::reverse_reference", "[4, 4]"]);
    let r = m.reverse_reference(&Tensor::zeros(&[4, 4]), None);
    err_names(r, &["reverse_reference", "[4, 4]", "expected tokens"]);
    let r = m.reverse_reference(&Tensor::zeros(&[1, 0, 4]), None);
    err_names(r, &["reverse_reference", "[1, 0, 4]"]);
}

// ------------------------------------------------------------------ TarFlow

#[test]
fn bits_per_dim_rejects_a_malformed_flow_output() {
    let m = model(0);
    let scalar = FlowOutput {
        z: Tensor::scalar(1.0),
        logdet: Tensor::scalar(1.0),
        logdet_blocks: Tensor::scalar(1.0),
    };
    err_names(m.bits_per_dim(&scalar), &["bits_per_dim", "[B, N, D]"]);
    // One log-determinant for two samples used to give one figure silently.
    let short = FlowOutput {
        z: Tensor::zeros(&[2, 4, 4]),
        logdet: Tensor::zeros(&[1]),
        logdet_blocks: Tensor::zeros(&[1, 2]),
    };
    err_names(
        m.bits_per_dim(&short),
        &["bits_per_dim", "[2, 4, 4]", "[1]"],
    );
}

#[test]
fn load_parameters_rejects_a_record_with_too_few_values() {
    let m = model(0);
    let mut records = m.export_parameters();
    records[0].2.truncate(1);
    let name = records[0].0.clone();
    err_names(
        m.load_parameters(&records),
        &[&name, "needs 16 values, got 1"],
    );
}

#[test]
fn labels_out_of_range_or_of_the_wrong_length_are_errors() {
    let m = model(3);
    let x = Tensor::zeros(&[2, 1, 4, 4]);
    err_names(
        m.forward(&x, Some(&[Some(3), None])),
        &["class 3 out of range", "3 classes"],
    );
    err_names(m.forward(&x, Some(&[Some(1)])), &["one label per sample"]);
}

// ------------------------------------------------------------------ sampler and audit

#[test]
fn sampler_rejects_a_model_edited_after_construction() {
    let mut m = model(3);
    m.config.width = 8;
    m.config.head_dim = 4;
    err_names(
        Sampler::new(&m).map(|_| ()),
        &[
            "Sampler::new",
            "blocks.0.proj_in.weight",
            "[4, 4]",
            "[8, 4]",
        ],
    );

    let mut m = TarFlow::<f64>::new(micro(0), 0).unwrap();
    m.config.mlp_ratio = 8;
    err_names(
        Sampler::new(&m).map(|_| ()),
        &["Sampler::new", "mlp.fc1.weight"],
    );

    let mut m = model(3);
    m.config.num_classes = 5;
    err_names(
        Sampler::new(&m).map(|_| ()),
        &["Sampler::new", "class_embed.weight"],
    );

    let mut m = model(0);
    m.config.blocks = 3;
    err_names(
        Sampler::new(&m).map(|_| ()),
        &["Sampler::new", "2 blocks", "config says 3"],
    );
}

#[test]
fn audit_rejects_a_model_whose_blocks_disagree_with_its_config() {
    let mut m = TarFlow::<f64>::new(micro(0), 0).unwrap();
    m.blocks.pop();
    let r = tarflow::audit::audit(&m, &Default::default());
    err_names(r.map(|_| ()), &["audit", "1 blocks", "config says 2"]);
}

/// `tarflow audit --samples 1e11` aborted in its first allocation.
#[test]
fn audit_sample_count_past_memory_is_an_error() {
    let m = TarFlow::<f64>::new(micro(0), 0).unwrap();
    let opts = tarflow::audit::AuditOptions {
        samples: 100_000_000_000,
        ..Default::default()
    };
    let r = tarflow::audit::audit(&m, &opts);
    err_names(
        r.map(|_| ()),
        &["auditing 100000000000 random inputs", "needs at least"],
    );
}

#[test]
fn sample_count_too_large_to_allocate_is_an_error() {
    let s = Sampler::new(&model(0)).unwrap();
    let r = s.sample(usize::MAX, &[], &mut Rng::new(0), &SampleOptions::default());
    err_names(r.map(|_| ()), &["sample", "too many"]);
}

/// A count that indexes but cannot fit memory aborted the process in the noise's allocation.
#[test]
fn sample_count_past_memory_is_an_error_naming_the_size() {
    let s = Sampler::new(&model(0)).unwrap();
    let opts = SampleOptions::default();
    let r = s.sample(1 << 50, &[], &mut Rng::new(0), &opts);
    err_names(
        r.map(|_| ()),
        &["sampling 1125899906842624 images", "needs at least", "PB"],
    );
    let r = s.check_memory(1 << 50, Guidance::None);
    err_names(r, &["needs at least", "of memory"]);
    s.check_memory(16, Guidance::None).unwrap();
}

#[test]
fn output_scale_denoise_sigma_and_empty_batches() {
    let m = model(0);
    for std in [f64::NAN, f64::INFINITY, -1.0] {
        let r = m.randomize_output_projections(std, 0);
        err_names(r, &["randomize_output_projections", "finite and >= 0"]);
    }
    // Weights past f32 would make a checkpoint that no reader accepts.
    err_names(
        m.randomize_output_projections(1e39, 0),
        &["beyond the f32 range"],
    );
    assert!(m.parameters().iter().all(|(_, t)| t.all_finite()));
    let x = Tensor::<f32>::zeros(&[1, 1, 4, 4]);
    err_names(m.denoise(&x, None, f64::NAN), &["denoise", "sigma", "NaN"]);
    // B = 0 said "reshape: cannot infer dimension ... 18446744073709551615".
    let out = m
        .forward(&Tensor::<f32>::zeros(&[0, 1, 4, 4]), None)
        .unwrap();
    assert_eq!(m.bits_per_dim(&out).unwrap(), Vec::<f64>::new());
}

#[test]
fn bench_requests_are_checked_before_allocation() {
    use tarflow::bench::model::check_request;
    use tarflow::model::Recompute;
    let c = micro(0);
    err_names(
        check_request(&c, 0, 1, Recompute::None),
        &["batch 0", "at least 1"],
    );
    err_names(
        check_request(&c, 1, 0, Recompute::None),
        &["sample batch 0"],
    );
    let r = check_request(&c, 1 << 50, 1, Recompute::None);
    err_names(
        r,
        &[
            "a training step on 1125899906842624 images",
            "needs at least",
        ],
    );
    err_names(
        check_request(&c, 1, 1 << 50, Recompute::None),
        &["sampling", "needs at least"],
    );
    for r in [Recompute::None, Recompute::Mlp, Recompute::Layer] {
        check_request(&c, 4, 4, r).unwrap();
    }
}

#[test]
fn sample_count_and_labels_must_agree() {
    let s = Sampler::new(&model(3)).unwrap();
    let r = s.sample(3, &[Some(1)], &mut Rng::new(0), &SampleOptions::default());
    err_names(r.map(|_| ()), &["1 labels for 3 samples"]);
    // No labels: `count` samples of the null class.
    let (x, _) = s
        .sample(2, &[], &mut Rng::new(0), &SampleOptions::default())
        .unwrap();
    assert_eq!(x.shape()[0], 2);
}

#[test]
fn sample_labels_for_an_unconditional_model_are_an_error() {
    let s = Sampler::new(&model(0)).unwrap();
    let r = s.sample(1, &[Some(1)], &mut Rng::new(0), &SampleOptions::default());
    err_names(r.map(|_| ()), &["labels given to an unconditional model"]);
}

#[test]
fn sample_guidance_weight_and_prior_std_must_be_finite() {
    let s = Sampler::new(&model(3)).unwrap();
    let mut rng = Rng::new(0);
    for guidance in [
        Guidance::ClassifierFree {
            weight: f64::NAN,
            anneal: false,
        },
        Guidance::Temperature {
            weight: f64::INFINITY,
            tau: 1.0,
            anneal: true,
        },
    ] {
        let opts = SampleOptions {
            guidance,
            ..Default::default()
        };
        let r = s.sample(1, &[Some(1)], &mut rng, &opts);
        err_names(r.map(|_| ()), &["guidance weight must be finite"]);
    }
    let opts = SampleOptions {
        prior_std: f64::NAN,
        ..Default::default()
    };
    let r = s.sample(1, &[Some(1)], &mut rng, &opts);
    err_names(r.map(|_| ()), &["prior_std must be finite", "NaN"]);
    let opts = SampleOptions {
        guidance: Guidance::Temperature {
            weight: 1.0,
            tau: 0.0,
            anneal: false,
        },
        ..Default::default()
    };
    let r = s.sample(1, &[Some(1)], &mut rng, &opts);
    err_names(r.map(|_| ()), &["attention temperature must be > 0"]);
}

// ------------------------------------------------------------------ data

/// A data set is checked when it is built: 20 pixel bytes where two 4x4 images need 32, or
/// image dimensions whose product overflows, never reach a reader of the pixels.
#[test]
fn inconsistent_data_sets_cannot_be_built() {
    let r = Dataset::new("mine", vec![0; 20], vec![0, 0], 1, 1, 4, 4);
    err_names(r, &["mine", "20 pixel bytes for 2 labels"]);
    let r = Dataset::new("big", vec![], vec![0], 1, 1 << 32, 1 << 32, 1);
    err_names(r, &["big", "too large to index"]);
}

#[test]
fn prefetcher_depth_is_clamped_instead_of_allocating_without_bound() {
    let l = Loader::new(Arc::new(tiny_data()), LoaderConfig::eval(1)).unwrap();
    let mut p = Prefetcher::new(l, usize::MAX);
    assert_eq!(p.next_batch().unwrap().n, 1);
}

#[test]
fn decode_image_rejects_a_target_size_too_large_to_allocate() {
    let path = std::env::temp_dir().join(format!("tarflow-bad-input-{}.png", std::process::id()));
    tarflow::imageio::write_png(&path, &[0, 64, 128, 255], 2, 2, 1).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    let r = decode_image(&bytes, "src.png", 1, 1 << 31, 1 << 31);
    err_names(r, &["decode_image", "2147483648x2147483648", "exceeds"]);
    assert_eq!(decode_image(&bytes, "src.png", 3, 4, 4).unwrap().len(), 48);
}

// ------------------------------------------------------------------ files

#[test]
fn tensors_to_bytes_rejects_duplicate_and_reserved_names() {
    let (a, b) = (Tensor::<f32>::zeros(&[2]), Tensor::<f32>::zeros(&[3]));
    let r = tarflow::tensorio::tensors_to_bytes(&[("a", &a), ("a", &b)], DType::F32, None);
    err_names(r, &["tensors_to_bytes", "'a'", "more than once"]);
    let r = tarflow::tensorio::tensors_to_bytes(&[("__metadata__", &a)], DType::F32, None);
    err_names(r, &["tensors_to_bytes", "__metadata__", "reserved"]);
}

// ------------------------------------------------------------------ training

#[test]
fn sample_grid_too_large_is_a_config_error() {
    let mut c = train_config();
    c.samples_per_class = usize::MAX;
    let e = err_names(c.validate(), &["samples_per_class", "sample grid"]);
    assert!(e.starts_with("invalid configuration"), "{e}");
    let r = Trainer::new(c, tiny_data(), tiny_data());
    err_names(r.map(|_| ()), &["samples_per_class"]);
}

#[test]
fn train_step_rejects_labels_out_of_range_and_mismatched_batches() {
    let mut c = train_config();
    c.label_dropout = 0.0;
    let mut t = Trainer::new(c, tiny_data(), tiny_data()).unwrap();
    let batch = |n: usize, images: usize, labels: Vec<u32>| Batch {
        images: vec![0; images],
        indices: vec![0; labels.len()],
        flipped: vec![false; labels.len()],
        labels,
        n,
        channels: 1,
        height: 4,
        width: 4,
        epoch: 0,
    };
    err_names(
        t.train_step(&batch(1, 16, vec![7])),
        &["class 7 out of range"],
    );
    err_names(t.train_step(&batch(1, 15, vec![0])), &["15"]);
    err_names(
        t.train_step(&batch(1, 16, vec![0, 1])),
        &["one label per sample"],
    );
}

// ------------------------------------------------------------------ nn and optim

#[test]
fn optimisers_reject_mismatched_gradients_and_decays() {
    let l = Linear::<f32>::new(2, 2, true, &mut Rng::new(0));
    let mut st = ParamStore::new();
    st.insert("", l.parameters()).unwrap();
    let mut ema = Ema::new(&st);
    err_names(ema.update(&st, f64::NAN), &["Ema::update", "NaN"]);
    l.weight.set_grad(Some(Tensor::zeros(&[3])));
    let mut opt = AdamW::new(&st, Default::default()).unwrap();
    err_names(opt.step(0.1), &["AdamW::step", "`weight`", "[3]"]);
    err_names(
        st.require("nope").map(|_| ()),
        &["no parameter named `nope`"],
    );
    let w: Vec<f32> = vec![0.0; 3];
    err_names(st.load("weight", &[2, 2], &w), &["`weight`", "3 values"]);
}
