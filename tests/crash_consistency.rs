#![cfg(all(unix, feature = "cli"))]
//! A training run killed with SIGKILL at random (seeded) moments and resumed each time ends
//! where an uninterrupted run ends, byte for byte, and leaves a directory in which every
//! file loads, no temporary file remains and every logged step appears once.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::TempDir;

use tarflow::model::load_checkpoint;
use tarflow::tensorio::parse_tensors_with_metadata;
use tarflow::train::Trainer;

const STEPS: usize = 60;

fn run_args(out: &Path) -> Vec<String> {
    let args = [
        "train",
        "--preset",
        "tiny",
        "--steps",
        "60",
        "--batch-size",
        "16",
        "--eval-every",
        "0",
        "--sample-every",
        "0",
        "--checkpoint-every",
        "3",
        "--keep-checkpoints",
        "2",
        "--quiet",
        "--out",
    ];
    let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    v.push(out.to_str().unwrap().to_string());
    v
}

fn command(args: &[String]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tarflow"));
    c.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
    c
}

/// The arguments that continue the run in `dir`: a resume once a checkpoint exists, a fresh
/// start replacing what a run killed before its first checkpoint left otherwise.
fn next_args(dir: &Path) -> Vec<String> {
    let has_checkpoint = dir.is_dir() && !Trainer::checkpoint_steps(dir).unwrap().is_empty();
    if has_checkpoint {
        vec![
            "train".into(),
            "--resume".into(),
            dir.to_str().unwrap().into(),
            "--quiet".into(),
        ]
    } else {
        let mut a = run_args(dir);
        a.push("--overwrite".into());
        a
    }
}

/// xorshift64*: the kill delays, seeded so a failure can be replayed.
fn next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

#[test]
fn a_run_killed_at_random_points_resumes_to_the_uninterrupted_result() {
    let root = TempDir::new("crash");
    let whole = root.join("whole");
    let out = command(&run_args(&whole)).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let dir = root.join("killed");
    let mut seed = 0x5eed_cafe_f00d_u64;
    let mut kills = 0;
    let start = Instant::now();
    while kills < 6 {
        let mut child = command(&next_args(&dir)).spawn().unwrap();
        let delay = 150 + next(&mut seed) % 1200;
        std::thread::sleep(Duration::from_millis(delay));
        if child.try_wait().unwrap().is_some() {
            // Finished before the kill: nothing left to interrupt.
            break;
        }
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success());
        kills += 1;
        assert!(start.elapsed() < Duration::from_secs(120), "no progress");
    }
    let out = command(&next_args(&dir)).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let final_model = format!("model-{STEPS:07}.safetensors");
    assert_eq!(
        std::fs::read(dir.join(&final_model)).unwrap(),
        std::fs::read(whole.join(&final_model)).unwrap(),
        "the resumed run ended elsewhere"
    );

    // Every file loads; only the lock is hidden; states come with their models.
    let mut states = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let path = dir.join(&name);
        if name.starts_with('.') {
            assert_eq!(name, ".lock", "leftover {name}");
        } else if name.starts_with("model-") {
            load_checkpoint(&path).unwrap();
        } else if let Some(step) = name.strip_prefix("state-") {
            let bytes = std::fs::read(&path).unwrap();
            parse_tensors_with_metadata::<f32>(&bytes, &name).unwrap();
            states.push(step[..7].parse::<usize>().unwrap());
        } else if name.ends_with(".png") {
            image::open(&path).unwrap();
        } else if name == "config.toml" {
            // The command's record of the run's settings.
        } else {
            assert_eq!(name, "metrics.jsonl", "unexpected file");
        }
    }
    states.sort_unstable();
    assert_eq!(Trainer::checkpoint_steps(&dir).unwrap(), states);

    // One line per logged step, the same steps as the uninterrupted run.
    let keys = |d: &Path| -> Vec<(u64, bool)> {
        let text = std::fs::read_to_string(d.join("metrics.jsonl")).unwrap();
        assert!(text.ends_with('\n'), "partial last line");
        text.lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (v["step"].as_u64().unwrap(), v.get("test_bpd").is_some())
            })
            .collect()
    };
    let want: Vec<(u64, bool)> = (10..=STEPS as u64)
        .step_by(10)
        .map(|s| (s, false))
        .chain([(STEPS as u64, true)])
        .collect();
    assert_eq!(keys(&whole), want);
    assert_eq!(keys(&dir), want);
}
