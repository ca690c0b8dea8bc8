#![cfg(feature = "cli")]
//! `tarflow pack` and `--data FILE.tfpack` as a user runs them: a pack trains and evaluates
//! exactly like its source, the loader bench reads it, and a damaged pack is a clear error.

use std::path::Path;

mod common;

use common::cli::{ok, s, tarflow};
use common::TempDir;
use tarflow::model::load_checkpoint;

#[test]
fn a_pack_of_the_digits_trains_and_evaluates_as_the_digits_do() {
    let d = TempDir::new("cli-pack");
    let pack = d.join("digits.bin");
    let text = ok(&tarflow(&["pack", "--out", s(&pack), "--verify"]));
    assert!(
        text.contains("10000 images (9000 train, 1000 test) of 1x28x28, 10 classes"),
        "{text}"
    );
    assert!(text.contains("pixels verified"), "{text}");
    let again = tarflow(&["pack", "--out", s(&pack)]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--overwrite"));
    ok(&tarflow(&["pack", "--out", s(&pack), "--overwrite"]));

    // Two short runs, from the embedded digits and from their pack (found by its magic,
    // whatever its name): the same weights.
    let train = |out: &Path, data: Option<&Path>| {
        let mut args = vec![
            "train",
            "--preset",
            "tiny",
            "--steps",
            "3",
            "--batch-size",
            "8",
            "--eval-every",
            "0",
            "--sample-every",
            "0",
            "--quiet",
            "--out",
            s(out),
        ];
        if let Some(p) = data {
            args.extend(["--data", s(p)]);
        }
        ok(&tarflow(&args));
        let mut t = load_checkpoint(&out.join("model-0000003.safetensors"))
            .unwrap()
            .tensors;
        t.sort_by(|a, b| a.0.cmp(&b.0));
        t
    };
    let (a, b) = (d.join("a"), d.join("b"));
    assert_eq!(train(&a, None), train(&b, Some(&pack)));

    let ck = a.join("model-0000003.safetensors");
    let eval = |data: Option<&Path>| {
        let mut args = vec![
            "eval",
            "--checkpoint",
            s(&ck),
            "--limit",
            "16",
            "--draws",
            "1",
        ];
        if let Some(p) = data {
            args.extend(["--data", s(p)]);
        }
        let text = ok(&tarflow(&args));
        text.split_whitespace().nth(1).unwrap().to_string()
    };
    assert_eq!(eval(None), eval(Some(&pack)));

    // The loader bench over the mapped pack.
    let text = ok(&tarflow(&[
        "bench",
        "--loader",
        "--data",
        s(&pack),
        "--images",
        "256",
        "--cold",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(
        (v["images"].as_u64(), v["mapped"].as_bool()),
        (Some(9000), Some(true))
    );
    let passes = v["passes"].as_array().expect("passes");
    assert!(!passes.is_empty());
    for p in passes {
        assert!(p["images"].as_u64().unwrap() >= 256, "{p}");
        assert!(p["images_per_s"].as_f64().unwrap() > 0.0, "{p}");
    }
}

#[test]
fn a_damaged_pack_is_named_in_the_error() {
    let d = TempDir::new("cli-pack-bad");
    let pack = d.join("digits.tfpack");
    ok(&tarflow(&["pack", "--out", s(&pack)]));
    let bytes = std::fs::read(&pack).unwrap();
    std::fs::write(&pack, &bytes[..bytes.len() - 1]).unwrap();
    let out = tarflow(&[
        "train",
        "--preset",
        "tiny",
        "--steps",
        "1",
        "--data",
        s(&pack),
        "--out",
        s(&d.join("run")),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("digits.tfpack") && err.contains("truncated"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let out = tarflow(&["pack", "--data", s(&pack), "--out", s(&d.join("x.tfpack"))]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("already a tarflow pack"));
    let out = tarflow(&["pack", "--out", s(d.path())]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("is a directory"));
}

/// `encode --input F.tfpack`: a range of the pack, in chunks, gives the latents of the same
/// images given as a tensor file, with the pack's labels; bad ranges and shapes are named.
#[test]
fn encode_reads_a_pack_in_chunks_as_it_reads_the_same_images_as_tensors() {
    use tarflow::tensorio::{read_tensors, write_tensors};
    use tarflow::{DType, Tensor};
    let d = TempDir::new("cli-pack-encode");
    let pack = d.join("digits.tfpack");
    ok(&tarflow(&["pack", "--out", s(&pack)]));
    let ck = d.join("tiny.safetensors");
    ok(&tarflow(&[
        "init",
        "--preset",
        "tiny",
        "--out",
        s(&ck),
        "--randomize-output",
        "0.05",
    ]));
    let z_pack = d.join("z-pack.safetensors");
    let text = ok(&tarflow(&[
        "encode",
        "--checkpoint",
        s(&ck),
        "--input",
        s(&pack),
        "--range",
        "8990..9013",
        "--batch",
        "5",
        "--output",
        s(&z_pack),
    ]));
    assert!(text.contains("encoded 23 images"), "{text}");

    // The same images (across the train/test boundary at 9000) and labels as a tensor file.
    let data = tarflow::data::PackedData::open(&pack)
        .unwrap()
        .dataset()
        .unwrap()
        .slice(8990..9013)
        .unwrap();
    let x: Vec<f32> = data
        .images()
        .iter()
        .map(|&p| (2.0 * f64::from(p) / 255.0 - 1.0) as f32)
        .collect();
    let labels: Vec<f32> = data.labels().iter().map(|&l| l as f32).collect();
    let x = Tensor::from_vec(x, &[23, 1, 28, 28]).unwrap();
    let labels = Tensor::from_vec(labels, &[23]).unwrap();
    let xin = d.join("x.safetensors");
    write_tensors(&xin, &[("x", &x), ("labels", &labels)], DType::F32).unwrap();
    let z_x = d.join("z-x.safetensors");
    ok(&tarflow(&[
        "encode",
        "--checkpoint",
        s(&ck),
        "--input",
        s(&xin),
        "--output",
        s(&z_x),
    ]));
    let (a, b) = (
        read_tensors::<f32>(&z_pack).unwrap(),
        read_tensors::<f32>(&z_x).unwrap(),
    );
    for name in ["z", "logdet", "logdet_blocks", "bpd", "labels"] {
        let bits = |t: &Tensor<f32>| t.to_vec().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a[name]), bits(&b[name]), "{name} differs");
    }
    assert_eq!(a["labels"].to_vec(), labels.to_vec());

    let never = d.join("never.safetensors");
    let fails = |args: &[&str], want: &[&str]| {
        let mut all = vec!["encode", "--checkpoint", s(&ck), "--output", s(&never)];
        all.extend(args);
        let out = tarflow(&all);
        assert!(!out.status.success(), "{all:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        for w in want {
            assert!(err.contains(w), "{all:?}: `{w}` not in: {err}");
        }
        assert!(!never.exists());
    };
    fails(
        &["--input", s(&pack), "--range", "0..10001"],
        &["--range 0..10001", "10000 images"],
    );
    fails(&["--input", s(&pack), "--range", "7..7"], &["non-empty"]);
    fails(&["--input", s(&pack), "--range", "a..b"], &["START..END"]);
    fails(&["--input", s(&pack), "--batch", "0"], &["--batch 0"]);
    fails(
        &["--input", s(&pack), "--class", "3"],
        &["--class 3", "pack"],
    );
    fails(
        &["--input", s(&xin), "--range", "0..3"],
        &["--range", ".tfpack"],
    );
    let rgb = d.join("rgb.tfpack");
    ok(&tarflow(&[
        "pack",
        "--synthetic",
        "4",
        "--preset",
        "cifar10",
        "--out",
        s(&rgb),
    ]));
    fails(
        &["--input", s(&rgb)],
        &["rgb.tfpack", "[3, 32, 32]", "[1, 28, 28]"],
    );
}
