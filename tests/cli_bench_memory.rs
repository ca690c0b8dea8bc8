//! `tarflow bench --device ...` reports the training step's device memory: on the PTX
//! interpreter, the tiny preset's training row carries its activation, baseline and peak
//! bytes at the precision and recompute setting asked for, in the JSON and in the table;
//! the CPU refuses bf16.

#![cfg(feature = "cli")]

mod common;

use common::cli::{ok, tarflow};

fn bench(precision: &str, recompute: &str, json: bool) -> String {
    let mut args = vec![
        "bench",
        "--recompute",
        recompute,
        "--preset",
        "tiny",
        "--device",
        "ptx-sim",
        "--precision",
        precision,
        "--batch",
        "2",
        "--sample-batch",
        "1",
        "--repeats",
        "1",
    ];
    if json {
        args.push("--json");
    }
    ok(&tarflow(&args))
}

#[test]
fn the_training_row_reports_activations_and_peak_at_each_precision() {
    // bf16 in the JSON here, f32 in the table below (two interpreter runs, not three).
    let precision = "bf16";
    let v: serde_json::Value = serde_json::from_str(&bench(precision, "mlp", true)).expect("JSON");
    assert_eq!(v["precision"], precision);
    assert_eq!(v["recompute"], "mlp");
    let rows = v["results"].as_array().expect("results");
    let train = &rows[0];
    assert_eq!(train["name"], "train step (fwd+bwd+AdamW)");
    let m = &train["memory"];
    assert_eq!(m["precision"], precision, "{train}");
    assert_eq!(m["recompute"], "mlp", "{train}");
    let field = |k: &str| m[k].as_u64().unwrap_or_else(|| panic!("{k} in {train}"));
    let (act, base, peak) = (
        field("activation_bytes"),
        field("baseline_bytes"),
        field("peak_bytes"),
    );
    assert!(act > 0 && base > 0, "{train}");
    assert!(peak >= base + act, "{train}");
    // Only the training step is measured.
    for r in &rows[1..] {
        assert!(r.get("memory").is_none(), "{r}");
    }
    let table = bench("f32", "none", false);
    assert!(
        table.contains("TarFlow") && table.contains("f32"),
        "{table}"
    );
    assert!(
        table.contains("device memory (f32, recompute none): activations"),
        "{table}"
    );
}

#[test]
fn bf16_needs_a_gpu_device() {
    let out = tarflow(&["bench", "--preset", "tiny", "--precision", "bf16"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--precision bf16") && err.contains("cpu"),
        "{err}"
    );
}
