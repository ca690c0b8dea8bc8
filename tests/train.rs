//! Training runs end to end on a slice of the embedded digits: files written, exact resume,
//! damaged checkpoints reported without touching the others.

use std::path::Path;

mod common;

use common::TempDir;

use tarflow::data::{embedded_mnist_split, Dataset};
use tarflow::model::load_checkpoint;
use tarflow::tensorio::{parse_tensors_with_metadata, tensors_to_bytes};
use tarflow::train::{TrainConfig, Trainer};
use tarflow::{DType, Tensor};

fn small_data() -> (Dataset, Dataset) {
    let (train, test) = embedded_mnist_split().unwrap();
    let tr: Vec<usize> = (0..256).collect();
    let te: Vec<usize> = (0..32).collect();
    (train.subset(&tr).unwrap(), test.subset(&te).unwrap())
}

fn config(dir: &Path) -> TrainConfig {
    let mut c = TrainConfig::preset("tiny").unwrap();
    c.steps = 6;
    c.batch_size = 16;
    c.warmup_steps = 2;
    c.eval_every = 0;
    c.sample_every = 0;
    c.checkpoint_every = 0;
    c.eval_images = 32;
    c.samples_per_class = 1;
    c.ema = Some(0.9);
    c.out_dir = dir.to_path_buf();
    c
}

fn weights(dir: &Path, step: usize) -> Vec<(String, Vec<usize>, Vec<f64>)> {
    let mut t = load_checkpoint(&dir.join(format!("model-{step:07}.safetensors")))
        .unwrap()
        .tensors;
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t
}

fn tmpdir(name: &str) -> TempDir {
    TempDir::new(&format!("test-{name}"))
}

#[test]
fn resumed_run_is_bit_identical_to_an_uninterrupted_one() {
    let full_dir = tmpdir("full");
    let (train, test) = small_data();
    let mut t = Trainer::new(config(&full_dir), train.clone(), test.clone()).unwrap();
    t.run(|_| {}).unwrap();
    for f in [
        "metrics.jsonl",
        "samples-0000006.png",
        "model-0000006.safetensors",
        "state-0000006.safetensors",
    ] {
        assert!(full_dir.join(f).exists(), "{f} missing");
    }
    // The plot needs the `plot` feature; without it no bpd.png is written.
    assert_eq!(full_dir.join("bpd.png").exists(), cfg!(feature = "plot"));

    let part_dir = tmpdir("part");
    let mut t = Trainer::new(config(&part_dir), train.clone(), test.clone()).unwrap();
    t.run_until(3, |_| {}).unwrap();
    drop(t);
    let mut t = Trainer::resume(&part_dir, train, test).unwrap();
    assert_eq!(t.step, 3);
    t.run(|_| {}).unwrap();

    let (a, b) = (weights(&full_dir, 6), weights(&part_dir, 6));
    assert_eq!(a.len(), b.len());
    for ((na, _, va), (nb, _, vb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        let same = va.iter().zip(vb).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "{na} differs after resume");
    }
    // Training moved the weights at all.
    let unused = tmpdir("unused");
    let start = Trainer::new(config(&unused), small_data().0, small_data().1).unwrap();
    let init = start.model.export_parameters();
    assert!(init.iter().zip(&a).any(|(x, y)| x.2 != y.2));
}

#[test]
fn damaged_checkpoint_is_reported_and_others_survive() {
    let dir = tmpdir("damaged");
    let (train, test) = small_data();
    let mut c = config(&dir);
    c.checkpoint_every = 2;
    c.keep_checkpoints = 2;
    let mut t = Trainer::new(c, train.clone(), test.clone()).unwrap();
    t.run(|_| {}).unwrap();
    drop(t); // releases the run directory
             // Only the last two checkpoints are kept.
    assert_eq!(Trainer::checkpoint_steps(&dir).unwrap(), vec![4, 6]);
    let latest = dir.join("state-0000006.safetensors");
    let bytes = std::fs::read(&latest).unwrap();
    std::fs::write(&latest, &bytes[..bytes.len() / 2]).unwrap();
    let err = Trainer::resume(&dir, train, test)
        .err()
        .expect("truncated state must fail")
        .to_string();
    assert!(err.contains("state-0000006.safetensors"), "{err}");
    assert!(err.contains("step 4"), "{err}");
    // The earlier checkpoint is untouched and loads.
    load_checkpoint(&dir.join("model-0000004.safetensors")).unwrap();
    assert_eq!(std::fs::read(&latest).unwrap().len(), bytes.len() / 2);

    // A state whose model config disagrees with its model file (here: a far wider model) is
    // refused before a model of that size is built.
    std::fs::remove_file(&latest).unwrap();
    std::fs::remove_file(dir.join("model-0000006.safetensors")).unwrap();
    let state = dir.join("state-0000004.safetensors");
    let (tensors, mut meta) =
        parse_tensors_with_metadata::<f32>(&std::fs::read(&state).unwrap(), "state").unwrap();
    let mut run: serde_json::Value = serde_json::from_str(&meta["tarflow.run_state"]).unwrap();
    run["config"]["model"]["width"] = (1u64 << 24).into();
    meta.insert("tarflow.run_state".into(), run.to_string());
    let refs: Vec<(&str, &Tensor<f32>)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    std::fs::write(
        &state,
        tensors_to_bytes(&refs, DType::F32, Some(meta)).unwrap(),
    )
    .unwrap();
    let err = Trainer::resume(&dir, small_data().0, small_data().1)
        .err()
        .expect("mismatched state must fail")
        .to_string();
    assert!(
        err.contains("state-0000004.safetensors") && err.contains("model config differs"),
        "{err}"
    );
}

#[test]
fn bad_configs_and_data_are_errors() {
    let dir = tmpdir("bad");
    let (train, test) = small_data();
    let mut c = config(&dir);
    c.batch_size = 0;
    assert!(Trainer::new(c, train.clone(), test.clone()).is_err());
    for (cfg, std) in [(f64::NAN, 0.8), (2.0, 0.0), (2.0, f64::INFINITY)] {
        let mut c = config(&dir);
        c.sample_cfg = cfg;
        c.sample_prior_std = std;
        let e = Trainer::new(c, train.clone(), test.clone())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("sample"), "{e}");
    }
    let mut c = config(&dir);
    c.model.image_size = 32;
    let e = Trainer::new(c, train, test).err().unwrap().to_string();
    assert!(e.contains("28x28"), "{e}");
    assert!(Trainer::resume(&dir.join("nothing-here"), small_data().0, small_data().1).is_err());
}

/// With `skip_nonfinite`, a step whose loss overflows leaves the weights and the optimiser
/// alone and the run goes on; one more such step in a row than allowed stops it, and an
/// update in between starts the count again.
#[test]
fn nonfinite_steps_are_skipped_up_to_the_limit() {
    use std::sync::Arc;
    use tarflow::data::{Loader, LoaderConfig};
    let (train, test) = small_data();
    let dir = tmpdir("skip");
    let mut c = config(&dir);
    c.skip_nonfinite = 2;
    c.model.alpha_clip = None;
    let mut loader = Loader::new(
        Arc::new(train.clone()),
        LoaderConfig {
            batch_size: 16,
            shuffle: true,
            drop_last: true,
            hflip: false,
            seed: 3,
        },
    )
    .unwrap();
    let mut t = Trainer::new(c.clone(), train.clone(), test.clone()).unwrap();
    let good = t.model.export_parameters();
    // Weights scaled far beyond anything training reaches: the log-scales overflow.
    let poisoned: Vec<_> = good
        .iter()
        .map(|(n, s, v)| (n.clone(), s.clone(), v.iter().map(|x| x * 1e30).collect()))
        .collect();
    t.model.load_parameters(&poisoned).unwrap();
    let poisoned = t.model.export_parameters(); // as stored, in f32
    for k in 1..=2 {
        let s = t.train_step(&loader.next_batch()).unwrap();
        assert!(s.skipped && !s.loss.is_finite(), "step {k}: {s:?}");
        assert_eq!((s.step, t.step), (k, k));
        assert_eq!(
            t.model.export_parameters(),
            poisoned,
            "a skipped step changed weights"
        );
    }
    // An update resets the count: two more skips are allowed after it.
    t.model.load_parameters(&good).unwrap();
    let s = t.train_step(&loader.next_batch()).unwrap();
    assert!(!s.skipped && s.loss.is_finite(), "{s:?}");
    t.model.load_parameters(&poisoned).unwrap();
    for _ in 0..2 {
        assert!(t.train_step(&loader.next_batch()).unwrap().skipped);
    }
    let e = t.train_step(&loader.next_batch()).unwrap_err().to_string();
    assert!(e.contains("after 2 skipped steps in a row"), "{e}");
    assert!(e.contains("skip_nonfinite"), "{e}");

    // The default stops at the first.
    c.skip_nonfinite = 0;
    let mut t = Trainer::new(c, train, test).unwrap();
    t.model.load_parameters(&poisoned).unwrap();
    let e = t.train_step(&loader.next_batch()).unwrap_err().to_string();
    assert!(
        e.contains("training loss at step 0 (the run diverged"),
        "{e}"
    );
}

/// `--resume DIR --steps N`: the schedule is stretched to the new length from the current
/// step, the new length is saved, and a run resumed after the change follows the same rates
/// and ends with the same weights as one that made the change and never stopped.
#[test]
fn a_run_lengthened_mid_way_resumes_exactly() {
    let (train, test) = small_data();
    let lrs = |t: &mut Trainer, stop: usize| {
        let mut out = Vec::new();
        t.run_until(stop, |e| {
            if let tarflow::train::Event::Step(s) = e {
                out.push(s.lr);
            }
        })
        .unwrap();
        out
    };

    let whole_dir = tmpdir("lengthened-whole");
    let mut t = Trainer::new(config(&whole_dir), train.clone(), test.clone()).unwrap();
    let before = lrs(&mut t, 3);
    let e = t.set_steps(2).unwrap_err().to_string();
    assert!(e.contains("already taken 3 steps"), "{e}");
    t.set_steps(10).unwrap();
    assert_eq!(t.config().steps, 10);
    let after = lrs(&mut t, 10);
    assert_eq!((before.len(), after.len()), (3, 7));
    // Stretched: step 4 of a 10-step cosine has a higher rate than step 4 of the 6-step one.
    let mut planned = Trainer::new(
        config(&tmpdir("lengthened-planned")),
        train.clone(),
        test.clone(),
    )
    .unwrap();
    let six = lrs(&mut planned, 4);
    assert!(after[0] > six[3], "{} vs {}", after[0], six[3]);

    let part_dir = tmpdir("lengthened-part");
    let mut t = Trainer::new(config(&part_dir), train.clone(), test.clone()).unwrap();
    lrs(&mut t, 3);
    t.set_steps(10).unwrap();
    lrs(&mut t, 5);
    drop(t);
    assert_eq!(Trainer::saved_config(&part_dir).unwrap().steps, 10);
    let mut t = Trainer::resume(&part_dir, train, test).unwrap();
    let resumed = lrs(&mut t, 10);
    assert_eq!(resumed, after[2..].to_vec());

    let (a, b) = (weights(&whole_dir, 10), weights(&part_dir, 10));
    for ((na, _, va), (_, _, vb)) in a.iter().zip(&b) {
        let same = va.iter().zip(vb).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "{na} differs after a lengthened run was resumed");
    }
}

/// The training run's sample grid of a class-conditional model has each row's class written
/// left of it, as `sample`'s grid of every class does; an unconditional model's has no margin.
#[test]
fn training_sample_grids_label_each_row_with_its_class() {
    use tarflow::imageio::{make_styled_grid, GridStyle};
    let dir = tmpdir("grid-labels");
    let (train, test) = small_data();
    let t = Trainer::new(config(&dir), train.clone(), test.clone()).unwrap();
    let (classes, side) = (t.config().model.num_classes, t.config().model.image_size);
    assert!(classes > 1);
    let p = dir.join("grid.png");
    t.write_samples(&p).unwrap();
    let img = image::open(&p).unwrap().to_luma8();
    // The margin is what a labelled grid of the same layout has left of its cells.
    let style = GridStyle {
        row_labels: (0..classes).map(|k| k.to_string()).collect(),
        ..GridStyle::new(1, 2)
    };
    let blank = vec![0u8; classes * side * side];
    let (want, w, h) = make_styled_grid(&blank, classes, 1, side, side, &style).unwrap();
    assert_eq!(img.dimensions(), (w as u32, h as u32));
    let unlabelled = side + 2 * 2;
    let margin = w - unlabelled;
    assert!(margin > 0);
    for y in 0..h {
        for x in 0..margin {
            assert_eq!(
                img.get_pixel(x as u32, y as u32).0[0],
                want[y * w + x],
                "({x}, {y})"
            );
        }
    }
    // Every row's label has ink (the class digit in black).
    for k in 0..classes {
        let rows = 2 + k * (side + 2)..2 + k * (side + 2) + side;
        let ink = rows
            .flat_map(|y| (0..margin).map(move |x| (x, y)))
            .filter(|&(x, y)| img.get_pixel(x as u32, y as u32).0[0] == 0)
            .count();
        assert!(ink > 0, "row {k} has no label");
    }

    let mut c = config(&dir);
    c.model.num_classes = 0;
    let t = Trainer::new(c, train, test).unwrap();
    t.write_samples(&p).unwrap();
    assert_eq!(image::open(&p).unwrap().width() as usize, unlabelled);
}
