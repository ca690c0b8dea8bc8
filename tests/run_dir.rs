//! The run directory: one owner at a time, no mixing with an earlier run, leftovers of a
//! killed run cleaned, metrics consistent with the checkpoint resumed from, damaged states
//! refused, stop requests honoured, and the training command's option checks and log lines.

use std::path::Path;
use std::process::{Command, Stdio};

mod common;

use common::TempDir;

use tarflow::data::{embedded_mnist_split, Dataset};
use tarflow::model::load_checkpoint;
use tarflow::tensorio::{parse_tensors_with_metadata, tensors_to_bytes};
use tarflow::train::{evaluate_bpd, run_dir, TrainConfig, Trainer};
use tarflow::{DType, Tensor};

fn small_data() -> (Dataset, Dataset) {
    let (train, test) = embedded_mnist_split().unwrap();
    let tr: Vec<usize> = (0..256).collect();
    let te: Vec<usize> = (0..32).collect();
    (train.subset(&tr).unwrap(), test.subset(&te).unwrap())
}

fn config(dir: &Path, steps: usize) -> TrainConfig {
    let mut c = TrainConfig::preset("tiny").unwrap();
    c.steps = steps;
    c.batch_size = 16;
    c.warmup_steps = 2;
    c.eval_every = 0;
    c.sample_every = 0;
    c.checkpoint_every = 0;
    c.eval_images = 32;
    c.samples_per_class = 1;
    c.out_dir = dir.to_path_buf();
    c
}

fn trainer(dir: &Path, steps: usize) -> Trainer {
    let (train, test) = small_data();
    Trainer::new(config(dir, steps), train, test).unwrap()
}

fn resume(dir: &Path) -> tarflow::Result<Trainer> {
    let (train, test) = small_data();
    Trainer::resume(dir, train, test)
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

fn tarflow(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tarflow"))
        .args(args)
        .output()
        .expect("binary runs")
}

#[test]
fn a_second_run_on_a_locked_directory_is_refused() {
    let dir = TempDir::new("rundir-lock");
    let mut a = trainer(&dir, 2);
    a.claim_out_dir(false).unwrap();
    let mut b = trainer(&dir, 2);
    let e = b.run(|_| {}).unwrap_err().to_string();
    assert!(
        e.contains("in use by another training run") && e.contains(&dir.display().to_string()),
        "{e}"
    );
    let e = resume(&dir).err().expect("resume while locked").to_string();
    assert!(e.contains("in use by another training run"), "{e}");
    // The lock goes with its trainer.
    drop(a);
    b.run(|_| {}).unwrap();
    assert_eq!(Trainer::checkpoint_steps(&dir).unwrap(), vec![2]);
}

#[test]
fn a_lock_let_go_of_is_free_at_once_even_while_children_are_spawned() {
    // Between fork and exec a child holds a copy of each open file, the lock file's too; a
    // run that follows another in this process must not take that for a second run.
    let dir = TempDir::new("rundir-spawn");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spawner = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = Command::new("true").status();
            }
        })
    };
    let mut refused = None;
    for _ in 0..300 {
        let held = run_dir::lock(&dir).unwrap();
        let e = run_dir::lock(&dir).expect_err("a second lock in this process");
        assert!(
            e.to_string().contains("in use by another training run"),
            "{e}"
        );
        drop(held);
        if let Err(e) = run_dir::lock(&dir) {
            refused = Some(e.to_string());
            break;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    spawner.join().unwrap();
    assert_eq!(refused, None);
}

#[test]
fn a_fresh_run_does_not_mix_with_an_old_one_unless_told_to_overwrite() {
    let dir = TempDir::new("rundir-overwrite");
    trainer(&dir, 3).run(|_| {}).unwrap();
    std::fs::write(dir.join("notes.txt"), "mine").unwrap();
    let mut t = trainer(&dir, 2);
    let e = t.run(|_| {}).unwrap_err().to_string();
    assert!(
        e.contains("already holds another run's files (model-0000003.safetensors"),
        "{e}"
    );
    assert!(e.contains("--overwrite") && e.contains("--resume"), "{e}");
    assert_eq!(Trainer::checkpoint_steps(&dir).unwrap(), vec![3]);

    let mut t = trainer(&dir, 2);
    t.claim_out_dir(true).unwrap();
    assert_eq!(names(&dir), vec![".lock", "notes.txt"]);
    t.run(|_| {}).unwrap();
    assert_eq!(Trainer::checkpoint_steps(&dir).unwrap(), vec![2]);
    assert_eq!(std::fs::read(dir.join("notes.txt")).unwrap(), b"mine");
}

#[test]
fn resume_removes_a_killed_runs_leftovers_and_uses_a_complete_checkpoint() {
    let dir = TempDir::new("rundir-leftovers");
    let mut c = config(&dir, 3);
    c.checkpoint_every = 1;
    let (train, test) = small_data();
    Trainer::new(c, train, test).unwrap().run(|_| {}).unwrap();
    // What a kill -9 can leave: temporary files, and a state whose model was never written.
    let temps = [
        ".model-0000004.safetensors.tmp-999999",
        ".state-0000004.safetensors.tmp-12",
        ".metrics.jsonl.tmp-7",
        ".samples-0000004.png.31.tmp",
    ];
    for t in temps {
        std::fs::write(dir.join(t), b"partial").unwrap();
    }
    std::fs::copy(
        dir.join("state-0000003.safetensors"),
        dir.join("state-0000005.safetensors"),
    )
    .unwrap();
    // Not the trainer's: left alone.
    std::fs::write(dir.join(".notes.txt.tmp-5"), b"x").unwrap();

    let t = resume(&dir).unwrap();
    assert_eq!(t.step, 3);
    let left = names(&dir);
    for gone in temps.iter().chain(&["state-0000005.safetensors"]) {
        assert!(!left.iter().any(|n| n == gone), "{gone} left: {left:?}");
    }
    assert!(left.iter().any(|n| n == ".notes.txt.tmp-5"), "{left:?}");
}

#[test]
fn resume_cuts_metrics_back_to_the_checkpoint_and_a_failed_resume_writes_nothing() {
    let dir = TempDir::new("rundir-metrics");
    let mut c = config(&dir, 20);
    c.checkpoint_every = 10;
    let (train, test) = small_data();
    Trainer::new(c, train, test).unwrap().run(|_| {}).unwrap();
    // Killed after logging step 20 but before its checkpoint, in the middle of a line.
    for f in ["model-0000020.safetensors", "state-0000020.safetensors"] {
        std::fs::remove_file(dir.join(f)).unwrap();
    }
    let metrics = dir.join("metrics.jsonl");
    let mut text = std::fs::read_to_string(&metrics).unwrap();
    text.push_str("{\"step\":2");
    std::fs::write(&metrics, &text).unwrap();

    // Too few training images for the batch: refused before anything is written.
    let (train, test) = small_data();
    let few = train.subset(&[0, 1, 2]).unwrap();
    assert!(Trainer::resume(&dir, few, test).is_err());
    assert_eq!(std::fs::read_to_string(&metrics).unwrap(), text);

    let mut t = resume(&dir).unwrap();
    let cut = std::fs::read_to_string(&metrics).unwrap();
    let steps = |s: &str| -> Vec<(u64, bool)> {
        s.lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (v["step"].as_u64().unwrap(), v.get("test_bpd").is_some())
            })
            .collect()
    };
    assert!(cut.ends_with('\n'));
    assert_eq!(steps(&cut), vec![(10, false)]);
    t.run(|_| {}).unwrap();
    let all = std::fs::read_to_string(&metrics).unwrap();
    assert_eq!(steps(&all), vec![(10, false), (20, false), (20, true)]);
}

#[test]
fn a_nan_in_a_state_file_is_refused_naming_the_tensor() {
    let dir = TempDir::new("rundir-nan-state");
    let mut c = config(&dir, 2);
    c.ema = Some(0.9);
    let (train, test) = small_data();
    Trainer::new(c, train, test).unwrap().run(|_| {}).unwrap();
    let state = dir.join("state-0000002.safetensors");
    let (mut tensors, meta) =
        parse_tensors_with_metadata::<f32>(&std::fs::read(&state).unwrap(), "state").unwrap();
    let mut victims: Vec<String> = tensors
        .keys()
        .filter(|k| k.starts_with("adamw.v."))
        .cloned()
        .collect();
    victims.sort();
    let name = victims[0].clone();
    let t = &tensors[&name];
    let mut vals = t.to_vec();
    vals[0] = f32::NAN;
    let shape = t.shape().to_vec();
    tensors.insert(name.clone(), Tensor::from_vec(vals, &shape).unwrap());
    let refs: Vec<(&str, &Tensor<f32>)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    std::fs::write(
        &state,
        tensors_to_bytes(&refs, DType::F32, Some(meta)).unwrap(),
    )
    .unwrap();
    let e = resume(&dir).err().expect("NaN state must fail").to_string();
    assert!(
        e.contains("state-0000002.safetensors") && e.contains(&name) && e.contains("NaN"),
        "{e}"
    );
    // From the command line too (it reads the saved config first).
    let out = tarflow(&["train", "--resume", dir.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains(&name), "{err}");
}

/// The hint to the previous checkpoint reaches the user: the command line read the newest
/// state through `saved_config`, which had no hint.
#[test]
fn a_damaged_newest_checkpoint_names_the_previous_one_on_the_command_line() {
    let dir = TempDir::new("rundir-hint");
    let mut c = config(&dir, 4);
    c.checkpoint_every = 2;
    let (train, test) = small_data();
    Trainer::new(c, train, test).unwrap().run(|_| {}).unwrap();
    let model = dir.join("model-0000004.safetensors");
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..bytes.len() / 2]).unwrap();
    let out = tarflow(&["train", "--resume", dir.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("model-0000004.safetensors") && err.contains("previous checkpoint is step 2"),
        "{err}"
    );
}

#[test]
fn a_stop_request_ends_the_run_with_a_checkpoint_of_the_current_step() {
    let dir = TempDir::new("rundir-stop");
    let mut t = trainer(&dir, 50);
    let flag = t.stop_flag();
    let mut seen = Vec::new();
    t.run(|ev| {
        if let tarflow::train::Event::Step(s) = ev {
            seen.push(s.step);
            if s.step == 3 {
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
    })
    .unwrap();
    assert_eq!((seen.len(), t.step), (3, 3));
    assert_eq!(Trainer::checkpoint_steps(&dir).unwrap(), vec![3]);
    drop(t);
    assert_eq!(resume(&dir).unwrap().step, 3);
}

#[test]
fn evaluation_draws_past_memory_are_an_error() {
    let (_, test) = small_data();
    let m =
        tarflow::model::TarFlow::<f32>::new(TrainConfig::preset("tiny").unwrap().model, 0).unwrap();
    let e = evaluate_bpd(&m, &test, 1, 1, usize::MAX / 2, 0)
        .expect_err("huge draws")
        .to_string();
    assert!(e.contains("draws") && e.contains("bytes"), "{e}");
}

#[test]
fn resume_refuses_options_it_would_ignore() {
    let out = tarflow(&[
        "train",
        "--resume",
        "no-such-run",
        "--lr",
        "1",
        "--batch-size",
        "8",
        "--seed",
        "3",
        "--ema",
        "0.99",
        "--grad-clip",
        "2",
        "--out",
        "elsewhere",
        "--width",
        "8",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    for opt in [
        "--out",
        "--lr",
        "--batch-size",
        "--seed",
        "--ema",
        "--grad-clip",
        "--width",
    ] {
        assert!(err.contains(opt), "{opt}: {err}");
    }
}

#[test]
fn values_that_would_switch_features_off_are_errors() {
    let dir = TempDir::new("rundir-bad-values");
    let out_dir = dir.join("run");
    let o = out_dir.to_str().unwrap();
    for (args, want) in [
        (vec!["--ema", "NaN"], "--ema"),
        (vec!["--ema=-0.5"], "--ema"),
        (vec!["--grad-clip", "NaN"], "--grad-clip"),
        (vec!["--grad-clip=-1"], "--grad-clip"),
        (vec!["--steps", "0"], "steps must be positive"),
        (vec!["--label-dropout", "NaN"], "label dropout"),
    ] {
        let mut all = vec!["train", "--preset", "tiny", "--out", o];
        all.extend(&args);
        let out = tarflow(&all);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(want),
            "{args:?}: {err}"
        );
        assert!(!out_dir.exists(), "{args:?} created the run directory");
    }
}

/// With stdout and stderr piped (no terminal: the progress bar is hidden), the evaluation,
/// sample and checkpoint lines still reach stdout.
#[test]
fn log_lines_reach_a_pipe() {
    let dir = TempDir::new("rundir-pipe");
    let o = dir.join("run");
    let out = tarflow(&[
        "train",
        "--preset",
        "tiny",
        "--steps",
        "2",
        "--batch-size",
        "16",
        "--out",
        o.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in ["test bits/dim", "samples -> ", "checkpoint -> ", "done in"] {
        assert!(text.contains(want), "{want} missing from: {text}");
    }
    load_checkpoint(&o.join("model-0000002.safetensors")).unwrap();
}

/// SIGINT stops the run after the step in progress: a checkpoint of that step, a message
/// saying so, and exit status 130.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn an_interrupt_saves_a_checkpoint_before_exiting() {
    use std::io::{BufRead, BufReader};
    let dir = TempDir::new("rundir-sigint");
    let o = dir.join("run");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tarflow"))
        .args([
            "train",
            "--preset",
            "tiny",
            "--steps",
            "100000",
            "--batch-size",
            "16",
        ])
        .args([
            "--eval-every",
            "0",
            "--sample-every",
            "0",
            "--checkpoint-every",
            "100000",
        ])
        .args(["--quiet", "--out", o.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The handler is in place once the run announces itself.
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("training TarFlow"), "{first}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    let steps = Trainer::checkpoint_steps(&o).unwrap();
    assert_eq!(steps.len(), 1, "{steps:?}");
    let want = format!("interrupted by SIGINT at step {}", steps[0]);
    assert!(err.contains(&want), "{err}");
    assert!(
        err.contains(&format!("the last checkpoint is step {}", steps[0])),
        "{err}"
    );
    // The checkpoint is whole (the embedded set's full split, so not resumed here).
    Trainer::saved_config(&o).unwrap();
}
