#![cfg(feature = "cli")]
//! `train`'s configuration as a user meets it: `--print-config`, `--config FILE` with flags
//! on top, the `config.toml` of a run read back, the help's defaults, and the errors.

use std::process::Output;

mod common;

use common::cli::{ok, s, tarflow};
use common::TempDir;

fn err(out: &Output) -> String {
    assert!(!out.status.success(), "succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The value of top-level `key` in printed TOML (`key = value` lines before any table).
fn value<'a>(toml: &'a str, key: &str) -> Option<&'a str> {
    toml.lines()
        .take_while(|l| !l.starts_with('['))
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(" = "))
}

#[test]
fn flags_override_the_config_file_which_overrides_the_preset() {
    let dir = TempDir::new("cli-config-precedence");
    let preset = ok(&tarflow(&["train", "--preset", "tiny", "--print-config"]));
    assert_eq!(value(&preset, "preset"), Some("\"tiny\""), "{preset}");
    assert_eq!(value(&preset, "steps"), Some("200"));
    assert_eq!(value(&preset, "lr"), Some("0.002"));

    let file = dir.join("c.toml");
    std::fs::write(
        &file,
        "preset = \"tiny\"\nsteps = 7\nlr = 0.001\n[model]\nwidth = 128\n",
    )
    .unwrap();
    let from_file = ok(&tarflow(&["train", "--config", s(&file), "--print-config"]));
    assert_eq!(value(&from_file, "steps"), Some("7"));
    assert_eq!(value(&from_file, "lr"), Some("0.001"));
    assert_eq!(
        value(&from_file, "batch_size"),
        value(&preset, "batch_size")
    );
    assert!(from_file.contains("width = 128"), "{from_file}");
    assert!(
        from_file.contains("blocks = 2"),
        "the tiny preset's blocks: {from_file}"
    );

    let flagged = ok(&tarflow(&[
        "train",
        "--config",
        s(&file),
        "--steps",
        "9",
        "--print-config",
    ]));
    assert_eq!(value(&flagged, "steps"), Some("9"));
    assert_eq!(value(&flagged, "lr"), Some("0.001"));
    // --preset on the command line wins over the file's.
    let other = ok(&tarflow(&[
        "train",
        "--config",
        s(&file),
        "--preset",
        "mnist",
        "--print-config",
    ]));
    assert_eq!(value(&other, "preset"), Some("\"mnist\""));
    assert_eq!(value(&other, "steps"), Some("7"));

    // The grid's annealing is a flag both ways.
    let off = ok(&tarflow(&[
        "train",
        "--no-sample-cfg-anneal",
        "--print-config",
    ]));
    assert_eq!(value(&off, "sample_cfg_anneal"), Some("false"));
    let on = ok(&tarflow(&[
        "train",
        "--preset",
        "tiny",
        "--sample-cfg-anneal",
        "--print-config",
    ]));
    assert_eq!(value(&on, "sample_cfg_anneal"), Some("true"));
    assert_eq!(value(&preset, "sample_cfg_anneal"), Some("false"));

    // What the layers recompute: absent unless set, from a file or a flag.
    assert_eq!(value(&preset, "recompute"), None, "{preset}");
    std::fs::write(&file, "recompute = \"mlp\"\n").unwrap();
    let from_file = ok(&tarflow(&["train", "--config", s(&file), "--print-config"]));
    assert_eq!(value(&from_file, "recompute"), Some("\"mlp\""));
    let flagged = ok(&tarflow(&[
        "train",
        "--config",
        s(&file),
        "--recompute",
        "layer",
        "--print-config",
    ]));
    assert_eq!(value(&flagged, "recompute"), Some("\"layer\""));
}

/// A run writes its resolved configuration; read back, it describes the same run.
#[test]
fn a_runs_config_toml_reads_back_to_the_same_configuration() {
    let dir = TempDir::new("cli-config-run");
    let out = dir.join("run");
    let text = ok(&tarflow(&[
        "train",
        "--preset",
        "tiny",
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--eval-every",
        "0",
        "--sample-every",
        "0",
        "--quiet",
        "--out",
        s(&out),
    ]));
    assert!(text.contains("configuration (also in"), "{text}");
    assert!(text.contains("  steps = 2"), "{text}");
    assert!(text.contains("done in ") && text.contains(" s"), "{text}");
    let written = std::fs::read_to_string(out.join("config.toml")).unwrap();
    let printed = ok(&tarflow(&[
        "train",
        "--preset",
        "tiny",
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--eval-every",
        "0",
        "--sample-every",
        "0",
        "--out",
        s(&out),
        "--print-config",
    ]));
    assert_eq!(written.trim_end(), printed.trim_end());
    let again = ok(&tarflow(&[
        "train",
        "--config",
        s(&out.join("config.toml")),
        "--print-config",
    ]));
    assert_eq!(again.trim_end(), written.trim_end());
}

#[test]
fn config_mistakes_are_named() {
    let dir = TempDir::new("cli-config-bad");
    let bad = |text: &str| {
        let f = dir.join("bad.toml");
        std::fs::write(&f, text).unwrap();
        err(&tarflow(&["train", "--config", s(&f), "--print-config"]))
    };
    for (text, words) in [
        ("stepz = 3", &["bad.toml", "unknown setting `stepz`"][..]),
        ("steps = \"many\"", &["bad.toml", "`steps` is a string"]),
        ("steps = ", &["bad.toml"]),
        ("preset = \"nope\"", &["unknown preset 'nope'"]),
        ("steps = 0", &["steps must be positive"]),
    ] {
        let e = bad(text);
        for w in words {
            assert!(e.contains(w), "{text}: {w:?} not in {e:?}");
        }
    }
    let e = err(&tarflow(&[
        "train",
        "--config",
        s(&dir.join("missing.toml")),
    ]));
    assert!(e.contains("missing.toml"), "{e}");

    let e = err(&tarflow(&["train", "--preset", "cifar10"]));
    assert!(
        e.contains("--preset cifar10") && e.contains("needs --data"),
        "{e}"
    );
}

/// Every option of every command has a description, and the train options show the
/// preset's value.
#[test]
fn help_describes_every_option_with_its_default() {
    for cmd in [
        "train", "eval", "bench", "init", "audit", "encode", "decode", "sample",
    ] {
        let help = ok(&tarflow(&[cmd, "--help"]));
        let mut lines = help.lines().peekable();
        while let Some(line) = lines.next() {
            let t = line.trim_start();
            if !t.starts_with("--") && !t.starts_with("-h") && !t.starts_with("-V") {
                continue;
            }
            // clap puts the description on the option's line, or (for long ones) on the next.
            let (opt, rest) = t.split_once("  ").unwrap_or((t, ""));
            let described = !rest.trim().is_empty()
                || lines.peek().is_some_and(|n| {
                    let n = n.trim_start();
                    !n.is_empty() && !n.starts_with('-')
                });
            assert!(described, "{cmd} {opt} has no description:\n{help}");
        }
    }
    let help = ok(&tarflow(&["train", "--help"]));
    for want in [
        "[default: the preset's; mnist: 2000]",
        "[default: the preset's; mnist: 0.003]",
        "[default: the preset's; mnist: 128]",
        "--config <FILE>",
    ] {
        assert!(help.contains(want), "{want:?} not in\n{help}");
    }
}
