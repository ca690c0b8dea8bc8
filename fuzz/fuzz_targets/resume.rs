//! The training state file read by `tarflow train --resume`: the fuzzed bytes are written as
//! the step-2 state file next to a valid step-2 model file of the `tiny` preset cut to one
//! block (`--blocks 1`, half the bytes to mutate) in a temporary run directory, and
//! `Trainer::resume` must return Ok or an error, never panic.
//! The data set is synthetic with the shape of the embedded MNIST split (9,000 + 1,000
//! digits of 1x28x28, 10 classes) so that the state of a real `--preset tiny` run (see
//! fuzz/seed.sh) resumes, and the fuzzer starts from inputs that get past every check.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tarflow::data::Dataset;
use tarflow::model::{checkpoint_bytes, TarFlow, TarFlowConfig};
use tarflow::train::{TrainConfig, Trainer};

const STEP: usize = 2;

/// The run directory, made once per process (and per process id, so parallel jobs do not
/// share it), holding the fixed model file.
fn run_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("tarflow-fuzz-resume-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let model = TarFlow::<f32>::new(model_config(), 0).expect("tiny model");
        let bytes = checkpoint_bytes(&model, &[]).expect("serialises");
        let path = dir.join(format!("model-{STEP:07}.safetensors"));
        std::fs::write(path, bytes).expect("write model");
        dir
    })
}

/// The model of `tarflow train --preset tiny --blocks 1`.
fn model_config() -> TarFlowConfig {
    let mut c = TrainConfig::preset("tiny").expect("preset").model;
    c.blocks = 1;
    c
}

/// `n` blank digits; zero-filled vectors are cheap to allocate, so each run builds its own.
fn digits(n: usize) -> Dataset {
    let labels = (0..n).map(|i| (i % 10) as u32).collect();
    Dataset::new("synthetic", vec![0; n * 28 * 28], labels, 10, 1, 28, 28).expect("valid")
}

fuzz_target!(|data: &[u8]| {
    let dir = run_dir();
    std::fs::write(dir.join(format!("state-{STEP:07}.safetensors")), data).expect("write state");
    match Trainer::resume(dir, digits(9000), digits(1000)) {
        Ok(t) => {
            assert_eq!(&t.config().out_dir, dir);
            assert_eq!(t.config().model, model_config());
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.is_empty());
        }
    }
});
