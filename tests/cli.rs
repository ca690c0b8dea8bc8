#![cfg(feature = "cli")]
//! The command-line program as a user runs it: init, audit, encode/decode, errors.

use std::path::Path;
use std::process::Command;

mod common;

use common::TempDir;

use tarflow::tensorio::{read_tensors, write_tensors};
use tarflow::{DType, Rng, Tensor};

fn tarflow(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tarflow"))
        .args(args)
        .output()
        .expect("binary runs")
}

fn tmp(name: &str) -> TempDir {
    TempDir::new(&format!("cli-{name}"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn init_encode_decode_roundtrip_and_audit() {
    let dir = tmp("roundtrip");
    let ck = dir.join("tiny.safetensors");
    let out = tarflow(&[
        "init",
        "--preset",
        "tiny",
        "--out",
        s(&ck),
        "--randomize-output",
        "0.02",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let x = Tensor::<f64>::rand(&[2, 1, 28, 28], -1.0, 1.0, &mut Rng::new(0));
    let labels = Tensor::<f64>::from_vec(vec![3.0, -1.0], &[2]).unwrap();
    let xin = dir.join("x.safetensors");
    write_tensors(&xin, &[("x", &x), ("labels", &labels)], DType::F64).unwrap();
    let zf = dir.join("z.safetensors");
    let out = tarflow(&[
        "encode",
        "--checkpoint",
        s(&ck),
        "--input",
        s(&xin),
        "--output",
        s(&zf),
        "--dtype",
        "f64",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let z = read_tensors::<f64>(&zf).unwrap();
    assert_eq!(z["z"].shape(), &[2, 1, 28, 28]);
    assert_eq!(z["logdet_blocks"].shape(), &[2, 2]);
    assert!(z["bpd"].to_vec().iter().all(|v| v.is_finite() && *v > 0.0));

    // Decode z (with the same labels) back to x.
    let zin = dir.join("zin.safetensors");
    write_tensors(&zin, &[("z", &z["z"]), ("labels", &labels)], DType::F64).unwrap();
    let xf = dir.join("x2.safetensors");
    let out = tarflow(&[
        "decode",
        "--checkpoint",
        s(&ck),
        "--input",
        s(&zin),
        "--output",
        s(&xf),
        "--dtype",
        "f64",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let back = read_tensors::<f64>(&xf).unwrap()["x"].to_vec();
    let err = common::worst(back.iter().zip(x.to_vec()).map(|(a, b)| (a - b).abs()));
    // The checkpoint stores f32 weights; the f64 pipeline inverts that model exactly.
    assert!(err < 1e-10, "roundtrip error {err}");

    let out = tarflow(&[
        "audit",
        "--checkpoint",
        s(&ck),
        "--samples",
        "1",
        "--window",
        "2",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("all checks passed") && text.contains("per-block log-determinant"),
        "{text}"
    );
    // 784 dimensions are above the default --full-jacobian-max-dim: the audit says it left
    // that check out, and why.
    assert!(
        text.contains("\nskipped:\n  model log-det vs log|det J| (full Jacobian): the image has 784 dimensions, above --full-jacobian-max-dim 256"),
        "{text}"
    );
}

/// A preset name means the same model in every command: `init --preset mnist` builds the
/// model `train --preset mnist` trains, and the `train`-only names work everywhere.
#[test]
fn preset_names_mean_the_trained_model_in_every_command() {
    let dir = tmp("presets");
    for preset in ["mnist", "mnist-likelihood-long"] {
        let ck = dir.join(format!("{preset}.safetensors"));
        let out = tarflow(&["init", "--preset", preset, "--out", s(&ck)]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got = tarflow::model::load_checkpoint(&ck).unwrap().config;
        let trained = tarflow::train::TrainConfig::preset(preset).unwrap().model;
        assert_eq!(got, trained, "init --preset {preset}");
    }
    let out = tarflow(&["init", "--preset", "nope", "--out", s(&dir.join("x"))]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown preset 'nope'") && err.contains("mnist-likelihood-long"),
        "{err}"
    );
}

#[test]
fn bad_input_is_a_clear_error_not_a_panic() {
    let dir = tmp("bad");
    let junk = dir.join("junk.safetensors");
    std::fs::write(&junk, b"not a checkpoint").unwrap();
    let out = tarflow(&["audit", "--checkpoint", s(&junk)]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("junk.safetensors") && !err.contains("panicked"),
        "{err}"
    );

    let out = tarflow(&["init", "--preset", "nope", "--out", s(&dir.join("x"))]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown preset"));

    let out = tarflow(&["train", "--device", "cuda", "--steps", "1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("CUDA"));
    let out = tarflow(&["train", "--device", "tpu", "--steps", "1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown device") && err.contains("ptx-sim"),
        "{err}"
    );
}

/// A model whose log-determinant overflows to NaN fails the audit with a non-zero exit, and
/// the table says where the NaN is (it used to print "all checks passed").
#[test]
fn audit_fails_on_a_nan_model() {
    let dir = tmp("audit-nan");
    let ck = dir.join("big.safetensors");
    let out = tarflow(&[
        "init",
        "--preset",
        "tiny",
        "--out",
        s(&ck),
        "--randomize-output",
        "1e30",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = tarflow(&["audit", "--checkpoint", s(&ck), "--samples", "1"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(!stdout.contains("all checks passed"), "{stdout}");
    assert!(
        stdout.contains("FAIL") && stdout.contains("non-finite in logdet"),
        "{stdout}"
    );
}

/// The kernel entries the GPU kernel table launches (`tarflow::bench::gpu`).
const GPU_TABLE_KERNELS: [&str; 24] = [
    "peak_mma_bf16",
    "peak_copy_b128",
    "strided_copy_f32",
    "strided_copy_f32_bf16",
    "unary_f32",
    "binary_f32",
    "reduce_rows_f32",
    "reduce_chunks_f32",
    "softmax_rows_f32",
    "layer_norm_fwd_f32",
    "layer_norm_bwd_dx_f32",
    "layer_norm_bwd_params_f32",
    "gemm_f32",
    "gemm_bf16_nt",
    "gemm_bf16_nt_128",
    "gemm_bf16_nt_gelu",
    "index_select_f32",
    "index_add_f32",
    "adamw_f32",
    "ema_f32",
    "sum_squares_partial_f32",
    "sum_f64",
    "attn_bwd_dkdv_bf16_d64",
    "attn_bwd_dq_bf16_d64",
];

#[cfg(feature = "ptx-sim")]
#[test]
fn bench_kernels_on_the_interpreter_counts_every_kernel() {
    let out = tarflow(&["bench", "--kernels", "--device", "ptx-sim", "--quick"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for k in GPU_TABLE_KERNELS {
        assert!(
            text.contains(&format!("    {k}: grid ")),
            "{k} not in\n{text}"
        );
    }

    // The default (interpreter-sized) table as JSON: every case counted instructions and
    // traffic, and no GPU-only rate is claimed.
    let out = tarflow(&["bench", "--kernels", "--device", "ptx-sim", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON output");
    assert_eq!(v["device"], "ptx-sim");
    assert_eq!(v["sizes"], "interpreter");
    let results = v["results"].as_array().expect("results");
    let mut launched = Vec::new();
    for r in results {
        let c = &r["counters"];
        let case = r["case"].as_str().unwrap_or("?");
        for field in [
            "warp_instructions",
            "global_bytes_read",
            "global_bytes_written",
        ] {
            // The tensor-core ceiling keeps its operands in registers: it reads nothing.
            if field == "global_bytes_read" && case.starts_with("ceiling: bf16 mma") {
                assert_eq!(c[field], 0, "{case}");
                continue;
            }
            assert!(
                c[field].as_u64().unwrap_or(0) > 0,
                "{case}: {field} = {}",
                c[field]
            );
        }
        assert!(r["gbps"].is_null() && r["tflops"].is_null(), "{case}");
        for k in r["kernels"].as_array().expect("kernels") {
            launched.push(k.as_str().expect("kernel name").to_string());
        }
    }
    for k in GPU_TABLE_KERNELS {
        assert!(launched.iter().any(|l| l == k), "{k} not launched");
    }
}

/// `--device cuda` says what is missing (the feature, the driver library or the GPU: the
/// CUDA driver's own error); where a GPU opens, the smoke table runs on it instead.
#[test]
fn bench_kernels_on_cuda_without_a_gpu_names_what_is_missing() {
    let args = ["bench", "--kernels", "--device", "cuda", "--quick"];
    match tarflow::gpu::CudaDriver::new(0) {
        Err(e) => {
            let out = tarflow(&args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{err}");
            assert!(err.contains(&e.to_string()), "{err:?} lacks {e}");
            assert!(err.contains("cuda:0") && err.contains("driver"), "{err}");
        }
        Ok(_) => {
            let out = tarflow(&args);
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            for k in GPU_TABLE_KERNELS {
                assert!(
                    text.contains(&format!("    {k}: grid ")),
                    "{k} not in\n{text}"
                );
            }
        }
    }
    for (args, words) in [
        (
            &["bench", "--kernels", "--quick"][..],
            &["--quick", "ptx-sim"][..],
        ),
        (
            &["bench", "--kernels", "--device", "gpu"],
            &["\"gpu\"", "cuda:N"],
        ),
    ] {
        let out = tarflow(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        for w in words {
            assert!(err.contains(w), "{args:?}: {w:?} not in {err:?}");
        }
    }
}

/// The whole-model bench runs on a device: on the interpreter, the tiny preset's training
/// step, forward NLL and KV-cached sampling each give a timing, and with --profile-kernels
/// the launches of one more run, per kernel, adding up to the run's; sampling runs again in
/// launch batches, with what the batches did.
#[test]
fn bench_model_runs_on_the_ptx_interpreter() {
    let out = tarflow(&[
        "bench",
        "--preset",
        "tiny",
        "--device",
        "ptx-sim",
        "--batch",
        "2",
        "--sample-batch",
        "1",
        "--repeats",
        "1",
        "--profile-kernels",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let rows = v["results"].as_array().expect("results");
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "train step (fwd+bwd+AdamW)",
            "forward NLL",
            "sample (KV cache)",
            "sample (KV cache, batched)"
        ]
    );
    // The batched sampling row: one launch batch per position and block over its warm-up
    // and timed run, 11 launches each (one layer per block, no guidance), and no profile.
    let b = &rows[3]["batches"];
    let count = |f: &str| b[f].as_u64().unwrap_or_else(|| panic!("{f}: {b}"));
    assert_eq!(count("batches"), 2 * 96, "{b}");
    assert_eq!(count("launches"), 11 * count("batches"), "{b}");
    assert!(
        count("graphs_built") >= 1 && count("graphs_built") <= 4,
        "{b}"
    );
    assert!(rows[3]["kernels"].is_null());
    // The kernels each workload must launch: the tiny preset has 2 blocks of 1 layer, 49
    // tokens, so sampling decodes 48 positions per block, each through one layer.
    let expect = [
        ("attn_bwd_dkdv_f32", 2),
        ("attn_fwd_f32", 2),
        // One chunk of keys: each step is one fused decode launch.
        ("attn_decode_f32", 96),
    ];
    for (r, (kernel, launches)) in rows.iter().zip(expect) {
        let t = r["median_s"].as_f64().expect("median_s");
        assert!(t > 0.0 && t.is_finite(), "{r}");
        let p = &r["kernels"];
        let kernels = p["kernels"].as_array().expect("kernels");
        let n = |k: &serde_json::Value, f: &str| k[f].as_u64().unwrap_or_else(|| panic!("{f}"));
        let total: u64 = kernels.iter().map(|k| n(k, "launches")).sum();
        assert_eq!(total, n(p, "launches"), "{}", r["name"]);
        for f in ["warp_instructions", "bytes_read", "bytes_written"] {
            let sum: u64 = kernels.iter().map(|k| n(&k["work"], f)).sum();
            assert_eq!(sum, n(&p["work"], f), "{} {f}", r["name"]);
        }
        assert!(
            p["device_s"].is_null(),
            "the interpreter has no device clock"
        );
        let row = kernels.iter().find(|k| k["kernel"] == kernel);
        let row = row.unwrap_or_else(|| panic!("{} launches no {kernel}: {p}", r["name"]));
        assert_eq!(n(row, "launches"), launches, "{kernel}");
        // The most expensive kernel first.
        let instr: Vec<u64> = kernels
            .iter()
            .map(|k| n(&k["work"], "warp_instructions"))
            .collect();
        assert!(instr.windows(2).all(|w| w[0] >= w[1]), "{instr:?}");
        // The host's time: the interpreter's launch calls take nearly all of the wall time
        // and fit inside it with the other parts.
        let f = |k: &str| p[k].as_f64().unwrap_or_else(|| panic!("{k}: {p}"));
        let (wall, calls) = (f("wall_s"), f("launch_host_s"));
        let others = f("driver_other_s") + f("profiler_s");
        assert!(calls > 0.5 * wall && calls + others <= wall, "{p}");
    }
    // On the CPU there is nothing to profile.
    let out = tarflow(&["bench", "--preset", "tiny", "--profile-kernels"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("--profile-kernels"), "{err}");
}

/// Every command that computes takes `--device`: on `ptx-sim` (the GPU kernels on the PTX
/// interpreter) the tiny preset trains two steps (evaluating and sampling at the end, on the
/// device), and `sample`, `eval`, `encode` and `decode` run there; the results agree with
/// the same commands on the CPU.
#[test]
fn commands_run_on_the_ptx_interpreter() {
    let dir = TempDir::new("cli-ptx-sim");
    let d = dir.path();
    // Keep the run's end cheap on the interpreter: few test images, one sample per class.
    let cfg = d.join("small.toml");
    std::fs::write(
        &cfg,
        "eval_images = 8\nsamples_per_class = 1\nsample_cfg = 0.0\nsample_denoise = false\n",
    )
    .unwrap();
    let run = d.join("run");
    let out = tarflow(&[
        "train",
        "--preset",
        "tiny",
        "--config",
        s(&cfg),
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--device",
        "ptx-sim",
        "--quiet",
        "--out",
        s(&run),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ck = run.join("model-0000002.safetensors");
    assert!(ck.exists() && run.join("samples-0000002.png").exists());

    // sample: the same image on both devices (f32 rounding apart, so the PNG pixels agree
    // to one level).
    let png = |dev: &str| {
        let p = d.join(format!("sample-{dev}.png"));
        let out = tarflow(&[
            "sample",
            "--checkpoint",
            s(&ck),
            "--class",
            "3",
            "--num",
            "1",
            "--device",
            dev,
            "--out",
            s(&p),
        ]);
        assert!(
            out.status.success(),
            "{dev}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        image::open(&p).unwrap().to_luma8().into_raw()
    };
    let (cpu, sim) = (png("cpu"), png("ptx-sim"));
    assert_eq!(cpu.len(), sim.len());
    let off = cpu
        .iter()
        .zip(&sim)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    assert!(
        off <= 1,
        "sample pixels differ by {off} levels between cpu and ptx-sim"
    );

    // eval: the same bits/dim to the printed digits.
    let bpd = |dev: &str| {
        let out = tarflow(&[
            "eval",
            "--checkpoint",
            s(&ck),
            "--limit",
            "4",
            "--batch-size",
            "4",
            "--device",
            dev,
        ]);
        assert!(
            out.status.success(),
            "{dev}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string()
    };
    assert_eq!(bpd("cpu"), bpd("ptx-sim"));

    // encode on the device, decode on the device: the same latents and images as on the CPU.
    let run_flow = |dev: &str| {
        let (z, back) = (
            d.join(format!("z-{dev}.safetensors")),
            d.join(format!("x-{dev}.safetensors")),
        );
        for args in [
            vec![
                "encode",
                "--checkpoint",
                s(&ck),
                "--input",
                s(&png_input(d)),
                "--class",
                "1",
                "--device",
                dev,
                "--output",
                s(&z),
            ],
            vec![
                "decode",
                "--checkpoint",
                s(&ck),
                "--input",
                s(&z),
                "--device",
                dev,
                "--output",
                s(&back),
            ],
        ] {
            let out = tarflow(&args);
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let z = read_tensors::<f32>(&z).unwrap()["z"].to_vec();
        let x = read_tensors::<f32>(&back).unwrap()["x"].to_vec();
        (z, x)
    };
    let ((zc, xc), (zs, xs)) = (run_flow("cpu"), run_flow("ptx-sim"));
    let worst = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(p, q)| (p - q).abs() as f64)
            .fold(0.0, f64::max)
    };
    assert!(worst(&zc, &zs) <= 1e-4, "z: {}", worst(&zc, &zs));
    assert!(worst(&xc, &xs) <= 1e-4, "x: {}", worst(&xc, &xs));
}

/// A 28 x 28 gray PNG digit-sized image in `d`.
fn png_input(d: &Path) -> std::path::PathBuf {
    let p = d.join("in.png");
    let img =
        image::GrayImage::from_fn(28, 28, |x, y| image::Luma([((x * 9 + y * 5) % 256) as u8]));
    img.save(&p).unwrap();
    p
}
