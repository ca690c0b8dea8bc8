#![cfg(feature = "cli")]
//! The command-line program never reports success on a wrong result, never aborts or panics
//! on a request it cannot serve, and leaves no output behind when it fails (issue #15).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

mod common;

use common::TempDir;

use tarflow::model::{save_checkpoint, TarFlow, TarFlowConfig};
use tarflow::tensorio::{read_tensors, write_tensors};
use tarflow::{DType, Rng, Tensor};

fn tarflow(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tarflow"))
        .args(args)
        .output()
        .expect("binary runs")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The command failed with exit status 1 (an error, not a signal or a panic's 101), said
/// each of `words` on stderr, and wrote nothing to `not_written`.
fn assert_refused(out: &Output, words: &[&str], not_written: &[&Path]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "status {:?}: {err}", out.status);
    assert!(!err.contains("panicked"), "{err}");
    for w in words {
        assert!(err.contains(w), "{w:?} not in: {err}");
    }
    for p in not_written {
        assert!(!p.exists(), "{} was written: {err}", p.display());
    }
}

fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A directory with `tiny.safetensors` (`init --preset tiny`, output projections N(0, std^2)).
fn with_tiny(tag: &str, std: &str) -> (TempDir, PathBuf) {
    let dir = TempDir::new(&format!("clirel-{tag}"));
    let ck = dir.join("tiny.safetensors");
    assert_ok(&tarflow(&[
        "init",
        "--preset",
        "tiny",
        "--out",
        s(&ck),
        "--randomize-output",
        std,
    ]));
    (dir, ck)
}

/// An unconditional variant of the tiny model.
fn unconditional(dir: &Path) -> PathBuf {
    let cfg = TarFlowConfig {
        num_classes: 0,
        ..TarFlowConfig::preset("tiny").unwrap()
    };
    let m = TarFlow::<f32>::new(cfg, 0).unwrap();
    let ck = dir.join("uncond.safetensors");
    save_checkpoint(&ck, &m, &[]).unwrap();
    ck
}

/// A safetensors file holding `x` as U8 pixels 0..=255, as an image tool would store them.
fn u8_images(path: &Path, b: usize) {
    let n = b * 28 * 28;
    let header =
        format!(r#"{{"x":{{"dtype":"U8","shape":[{b},1,28,28],"data_offsets":[0,{n}]}}}}"#);
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend((0..n).map(|i| (i % 256) as u8));
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn sample_counts_past_memory_are_errors_before_allocation() {
    let (dir, ck) = with_tiny("samplenum", "0.02");
    let png = dir.join("g.png");
    // Aborted (SIGABRT) in the allocation of the noise.
    let out = tarflow(&[
        "sample",
        "--checkpoint",
        s(&ck),
        "--num",
        "1000000000000",
        "--out",
        s(&png),
    ]);
    assert_refused(
        &out,
        &[
            "--num 1000000000000",
            "10 classes",
            "needs at least",
            "PB",
            "of memory",
        ],
        &[&png],
    );
    // Panicked with "capacity overflow" building the label list before any size check.
    let out = tarflow(&[
        "sample",
        "--checkpoint",
        s(&ck),
        "--num",
        "2305843009213693952",
        "--out",
        s(&png),
    ]);
    assert_refused(&out, &["--num 2305843009213693952", "10 classes"], &[&png]);
    let out = tarflow(&[
        "sample",
        "--checkpoint",
        s(&ck),
        "--num",
        "2305843009213693952",
        "--class",
        "3",
        "--out",
        s(&png),
    ]);
    assert_refused(
        &out,
        &["--num 2305843009213693952", "needs at least"],
        &[&png],
    );
    let un = unconditional(&dir);
    let out = tarflow(&[
        "sample",
        "--checkpoint",
        s(&un),
        "--num",
        "1000000000000",
        "--out",
        s(&png),
    ]);
    assert_refused(&out, &["--num 1000000000000", "needs at least"], &[&png]);
}

#[test]
fn sample_options_out_of_range_or_ignored_are_errors() {
    let (dir, ck) = with_tiny("sampleopts", "0.02");
    let png = dir.join("g.png");
    let un = unconditional(&dir);
    let cases: [(&[&str], &[&str]); 10] = [
        (&["--num", "0"], &["--num 0", "at least 1"]),
        // A blank grid with exit 0.
        (&["--denoise", "--sigma", "NaN"], &["--sigma NaN", "finite"]),
        // Silently ignored without --denoise.
        (&["--sigma", "0.2"], &["--sigma 0.2", "--denoise"]),
        (&["--cfg", "NaN"], &["--cfg NaN", "finite"]),
        (&["--attn-temp=-1"], &["--attn-temp -1", "> 0"]),
        (&["--attn-weight", "3"], &["--attn-weight 3", "--attn-temp"]),
        (&["--prior-std", "inf"], &["--prior-std inf", "finite"]),
        (&["--prior-std=-0.5"], &["--prior-std -0.5", ">= 0"]),
        (&["--cfg-anneal"], &["--cfg-anneal", "--cfg or --attn-temp"]),
        // With --cfg the null-class branch takes --attn-temp; the weight is --cfg's.
        (
            &["--cfg", "1", "--attn-temp", "0.7", "--attn-weight", "2"],
            &["--attn-weight", "--cfg"],
        ),
    ];
    for (extra, words) in cases {
        let mut args = vec!["sample", "--checkpoint", s(&ck), "--out", s(&png)];
        args.extend_from_slice(extra);
        assert_refused(&tarflow(&args), words, &[&png]);
    }
    // Both together are the official sampler's guidance (null class at temperature tau).
    let out = tarflow(&[
        "sample",
        "--checkpoint",
        s(&ck),
        "--out",
        s(&png),
        "--num",
        "1",
        "--cfg",
        "1",
        "--attn-temp",
        "0.7",
    ]);
    assert!(
        out.status.success() && png.exists(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_file(&png).unwrap();
    // --class on an unconditional model was silently ignored.
    let out = tarflow(&[
        "sample",
        "--checkpoint",
        s(&un),
        "--class",
        "3",
        "--out",
        s(&png),
    ]);
    assert_refused(&out, &["--class 3", "unconditional"], &[&png]);
    // The same options in range work.
    assert_ok(&tarflow(&[
        "sample",
        "--checkpoint",
        s(&ck),
        "--num",
        "1",
        "--class",
        "2",
        "--denoise",
        "--sigma",
        "0.05",
        "--attn-temp",
        "1.5",
        "--attn-weight",
        "0.5",
        "--prior-std",
        "0.9",
        "--out",
        s(&png),
    ]));
    assert!(png.exists());
}

#[test]
fn init_refuses_output_scales_no_reader_accepts() {
    let dir = TempDir::new("clirel-init");
    let ck = dir.join("bad.safetensors");
    for v in ["NaN", "inf", "-1", "1e39"] {
        let opt = format!("--randomize-output={v}");
        let out = tarflow(&["init", "--preset", "tiny", "--out", s(&ck), &opt]);
        assert_refused(&out, &["--randomize-output"], &[&ck]);
    }
}

#[test]
fn bench_and_train_sizes_past_memory_are_errors() {
    let dir = TempDir::new("clirel-bench");
    let cases: [(&[&str], &[&str]); 5] = [
        (
            &["bench", "--batch", "100000000000"],
            &["--batch 100000000000", "needs at least", "of memory"],
        ),
        (
            &["bench", "--image-size", "1000000"],
            &["62500000000 tokens", "needs at least", "TB"],
        ),
        // "reshape: cannot infer dimension ... 18446744073709551615"
        (&["bench", "--batch", "0"], &["--batch 0", "at least 1"]),
        (&["bench", "--sample-batch", "0"], &["--sample-batch 0"]),
        (&["bench", "--repeats", "0"], &["--repeats 0"]),
    ];
    for (args, words) in cases {
        assert_refused(&tarflow(args), words, &[]);
    }
    let run = dir.join("run");
    let out = tarflow(&["train", "--width", "64000000", "--out", s(&run)]);
    assert_refused(&out, &["width 64000000", "needs at least", "EB"], &[&run]);
    // Mixed precision needs a GPU device; an unknown precision is named.
    let out = tarflow(&["train", "--precision", "bf16", "--out", s(&run)]);
    assert_refused(&out, &["bf16", "GPU device", "cpu"], &[&run]);
    let out = tarflow(&["train", "--precision", "fp16", "--out", s(&run)]);
    assert_refused(&out, &["\"fp16\"", "f32 or bf16"], &[&run]);
    let out = tarflow(&["train", "--recompute", "all", "--out", s(&run)]);
    assert_refused(&out, &["\"all\"", "none, mlp or layer"], &[&run]);
}

#[test]
fn encode_refuses_inputs_out_of_range_and_nonfinite_outputs() {
    let (dir, ck) = with_tiny("encode", "0.02");
    let zf = dir.join("z.safetensors");
    let encode = |ck: &Path, input: &Path| {
        tarflow(&[
            "encode",
            "--checkpoint",
            s(ck),
            "--input",
            s(input),
            "--output",
            s(&zf),
        ])
    };
    // Pixels stored as U8 0..255: NaN/inf z and bpd with exit 0.
    let u8f = dir.join("u8.safetensors");
    u8_images(&u8f, 2);
    assert_refused(
        &encode(&ck, &u8f),
        &["holds values in [0, 255]", "[-1, 1]", "x/127.5 - 1"],
        &[&zf],
    );
    let big = dir.join("big.safetensors");
    let x = Tensor::<f64>::full(&[1, 1, 28, 28], 1e30);
    write_tensors(&big, &[("x", &x)], DType::F64).unwrap();
    assert_refused(
        &encode(&ck, &big),
        &["holds values in [1e30, 1e30]"],
        &[&zf],
    );
    // B = 0: "reshape: cannot infer dimension ... 18446744073709551615".
    let empty = dir.join("empty.safetensors");
    let x0 = Tensor::<f64>::zeros(&[0, 1, 28, 28]);
    write_tensors(&empty, &[("x", &x0)], DType::F64).unwrap();
    assert_refused(&encode(&ck, &empty), &["B >= 1", "[0, 1, 28, 28]"], &[&zf]);
    // Labels below -1 were taken as "no label".
    let lab = dir.join("lab.safetensors");
    let x = Tensor::<f64>::rand(&[2, 1, 28, 28], -1.0, 1.0, &mut Rng::new(0));
    let labels = Tensor::<f64>::from_vec(vec![-1.0, -2.0], &[2]).unwrap();
    write_tensors(&lab, &[("x", &x), ("labels", &labels)], DType::F64).unwrap();
    assert_refused(
        &encode(&ck, &lab),
        &["`labels`[1] is -2", "-1 for none"],
        &[&zf],
    );
    let good = dir.join("good.safetensors");
    write_tensors(&good, &[("x", &x)], DType::F64).unwrap();
    let un = unconditional(&dir);
    let labels = Tensor::<f64>::from_vec(vec![-1.0, 4.0], &[2]).unwrap();
    write_tensors(&lab, &[("x", &x), ("labels", &labels)], DType::F64).unwrap();
    assert_refused(
        &encode(&un, &lab),
        &["`labels`[1] is 4", "unconditional"],
        &[&zf],
    );
    // A model whose flow overflows on valid input: its z and bpd are not finite.
    let (_d2, broken) = with_tiny("encode-broken", "1e30");
    assert_refused(
        &encode(&broken, &good),
        &["non-finite", "image 0", "was not written"],
        &[&zf],
    );
    // Valid input to a sound model still encodes.
    assert_ok(&encode(&ck, &good));
    let z = read_tensors::<f64>(&zf).unwrap();
    assert!(z["bpd"].all_finite() && z["z"].all_finite());
}

#[test]
fn decode_refuses_latents_whose_images_overflow() {
    let (dir, ck) = with_tiny("decode", "0.02");
    let xf = dir.join("x.safetensors");
    let decode = |input: &Path| {
        tarflow(&[
            "decode",
            "--checkpoint",
            s(&ck),
            "--input",
            s(input),
            "--output",
            s(&xf),
        ])
    };
    // z = 1e30 wrote an all-NaN x with exit 0.
    let huge = dir.join("huge.safetensors");
    let z = Tensor::<f64>::full(&[2, 1, 28, 28], 1e30);
    write_tensors(&huge, &[("z", &z)], DType::F64).unwrap();
    assert_refused(
        &decode(&huge),
        &["non-finite", "latent 0", "|z| = 1e30", "was not written"],
        &[&xf],
    );
    let empty = dir.join("empty.safetensors");
    let z0 = Tensor::<f64>::zeros(&[0, 1, 28, 28]);
    write_tensors(&empty, &[("z", &z0)], DType::F64).unwrap();
    assert_refused(&decode(&empty), &["B >= 1"], &[&xf]);
    let labelled = dir.join("lab.safetensors");
    let z = Tensor::<f64>::zeros(&[1, 1, 28, 28]);
    let labels = Tensor::<f64>::from_vec(vec![-3.0], &[1]).unwrap();
    write_tensors(&labelled, &[("z", &z), ("labels", &labels)], DType::F64).unwrap();
    assert_refused(&decode(&labelled), &["`labels`[0] is -3"], &[&xf]);
}

#[test]
fn audit_of_no_samples_is_an_error() {
    let (_dir, ck) = with_tiny("audit", "0.02");
    let out = tarflow(&["audit", "--checkpoint", s(&ck), "--samples", "0"]);
    assert_refused(&out, &["--samples 0", "at least 1"], &[]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("all checks passed"));
}

/// An I/O error printed its OS text twice: in the message and again as "caused by".
#[test]
fn io_errors_print_the_os_text_once() {
    let (dir, ck) = with_tiny("io", "0.02");
    let missing = dir.join("missing.safetensors");
    let out = tarflow(&[
        "encode",
        "--checkpoint",
        s(&ck),
        "--input",
        s(&missing),
        "--output",
        s(&dir.join("z.safetensors")),
    ]);
    assert_refused(&out, &["missing.safetensors"], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    let os = std::fs::read(&missing).unwrap_err().to_string();
    assert_eq!(err.matches(&os).count(), 1, "{err}");
}

/// Runs `args` with stdout closed before the program writes a line.
fn with_closed_stdout(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tarflow"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary runs");
    drop(child.stdout.take());
    child.wait_with_output().expect("binary finishes")
}

/// `bench --json | head -c 600` panicked on the closed pipe; output is a report, never a
/// reason to lose the work.
#[test]
fn a_closed_stdout_neither_panics_nor_loses_output_files() {
    let (dir, ck) = with_tiny("pipe", "0.02");
    let out = with_closed_stdout(&[
        "bench",
        "--preset",
        "tiny",
        "--batch",
        "1",
        "--sample-batch",
        "1",
        "--repeats",
        "1",
        "--json",
    ]);
    assert_ok(&out);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    let png = dir.join("g.png");
    let out = with_closed_stdout(&[
        "sample",
        "--checkpoint",
        s(&ck),
        "--num",
        "1",
        "--out",
        s(&png),
    ]);
    assert_ok(&out);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    assert!(png.exists());
}
