//! Argument parsing and the subcommands. Library calls do the work; this module only parses,
//! prints and decides exit codes.

pub(crate) mod out;

mod bench;
mod config;
mod flow;
mod interop;
mod kernels;
mod pack;
mod shape;
mod train;

use clap::{Parser, Subcommand};

use tarflow::{Error, Result};

#[derive(Parser)]
#[command(
    name = "tarflow",
    version,
    about = "TarFlow normalizing flows: train, sample, evaluate and audit"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
enum Command {
    /// Train a model (default: class-conditional TarFlow on the embedded MNIST digits).
    Train(train::TrainArgs),
    /// Bits/dim of a checkpoint on a data set.
    Eval(train::EvalArgs),
    /// Time training, likelihood and sampling for a model shape, or the kernels (--kernels).
    Bench(bench::BenchArgs),
    /// Create a checkpoint from a preset without training.
    Init(flow::InitArgs),
    /// Check invertibility and the exact log-determinant of a model.
    Audit(flow::AuditArgs),
    /// Images -> latents: PNG/JPEG files or x [B,C,H,W] in [-1,1] to z, logdet, bpd, labels.
    Encode(flow::EncodeArgs),
    /// Latents -> images: z [B,C,H,W] (or [B,N,D]) to x (safetensors) or a PNG/JPEG grid.
    Decode(flow::DecodeArgs),
    /// Draw samples from a checkpoint into a PNG or JPEG grid.
    Sample(flow::SampleArgs),
    /// Write a data source once into a memory-mapped pack file for `--data`.
    Pack(pack::PackArgs),
    /// Convert another implementation's checkpoint into ours (--from ml-tarflow).
    Import(interop::ImportArgs),
    /// Write our checkpoint in another implementation's names (--to ml-tarflow).
    Export(interop::ExportArgs),
}

impl Command {
    /// Every check of the command's options that writes nothing, computes nothing heavy and
    /// reads no file but `train`'s --config: ranges, NaN, options that would be ignored,
    /// sizes. `run` calls it before the command starts, so each rule lives in one place.
    fn check(&self) -> Result<()> {
        match self {
            Command::Train(a) => train::check_train(a),
            // Eval's options are checked against its data set once that is read.
            Command::Eval(_) => Ok(()),
            Command::Bench(a) => a.check(),
            Command::Init(a) => a.check(),
            Command::Audit(a) => a.check(),
            Command::Encode(a) => a.check(),
            Command::Decode(a) => a.check(),
            Command::Sample(a) => a.check(),
            Command::Pack(a) => a.check(),
            Command::Import(a) => a.check(),
            Command::Export(a) => a.check(),
        }
    }
}

/// Parses `args` (the program name first, as in `std::env::args_os`) and runs the chosen
/// command's pre-flight checks without reading or writing a file: the entry point of the
/// argument-parser fuzz target. A clap error (including `--help`) is an [`Error::Config`]
/// carrying clap's message.
#[allow(dead_code)] // the binary parses with `Cli::parse`, which prints help and exits
pub fn check_args<I, T>(args: I) -> Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::try_parse_from(args).map_err(|e| Error::Config(e.to_string()))?;
    cli.command.check()
}

/// Parses the command line, checks its options and runs the chosen subcommand.
pub fn run() -> Result<()> {
    let cli = Cli::parse();
    cli.command.check()?;
    match cli.command {
        Command::Train(a) => train::train(a),
        Command::Eval(a) => train::eval(a),
        Command::Bench(a) => bench::bench(a),
        Command::Init(a) => flow::init(a),
        Command::Audit(a) => flow::audit(a),
        Command::Encode(a) => flow::encode(a),
        Command::Decode(a) => flow::decode(a),
        Command::Sample(a) => flow::sample(a),
        Command::Pack(a) => pack::pack(a),
        Command::Import(a) => interop::import(a),
        Command::Export(a) => interop::export(a),
    }
}

#[cfg(test)]
mod tests {
    use super::check_args;

    fn err(args: &[&str]) -> String {
        let argv = std::iter::once("tarflow").chain(args.iter().copied());
        match check_args(argv) {
            Ok(()) => panic!("{args:?} passed the checks"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn good_command_lines_pass() {
        for args in [
            &[
                "sample",
                "--checkpoint",
                "x",
                "--num",
                "2",
                "--cfg",
                "1.5",
                "--cfg-anneal",
            ][..],
            &[
                "sample",
                "--checkpoint",
                "x",
                "--attn-temp",
                "2",
                "--attn-weight",
                "0.5",
            ],
            &["sample", "--checkpoint", "x", "--denoise", "--sigma", "0.1"],
            &[
                "init",
                "--preset",
                "tiny",
                "--out",
                "x",
                "--randomize-output",
                "0.02",
            ],
            &["audit", "--preset", "tiny"],
            &[
                "bench",
                "--preset",
                "tiny",
                "--batch",
                "2",
                "--sample-batch",
                "1",
            ],
            &["bench", "--kernels", "--repeats", "3"],
            &["train", "--preset", "tiny", "--steps", "3"],
            &["train", "--no-sample-cfg-anneal", "--print-config"],
            &[
                "sample",
                "--checkpoint",
                "x",
                "--out",
                "g.JPG",
                "--scale",
                "16",
                "--no-row-labels",
            ],
            &[
                "decode",
                "--checkpoint",
                "a",
                "--input",
                "b",
                "--output",
                "c.png",
                "--scale",
                "2",
            ],
            &[
                "encode",
                "--checkpoint",
                "a",
                "--input",
                "b",
                "--output",
                "c",
            ],
        ] {
            let argv = std::iter::once("tarflow").chain(args.iter().copied());
            check_args(argv).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        }
    }

    /// Each rule names the option, the value and what was expected.
    #[test]
    fn bad_options_are_named() {
        let s = |extra: &[&'static str]| {
            let mut v = vec!["sample", "--checkpoint", "x"];
            v.extend_from_slice(extra);
            err(&v)
        };
        let cases: Vec<(String, &[&str])> = vec![
            (s(&["--num", "0"]), &["--num 0", "at least 1"]),
            (
                s(&["--sigma", "NaN", "--denoise"]),
                &["--sigma NaN", "finite"],
            ),
            (s(&["--sigma", "0.1"]), &["--sigma 0.1", "--denoise"]),
            (s(&["--cfg", "inf"]), &["--cfg inf", "finite"]),
            (s(&["--attn-temp", "0"]), &["--attn-temp 0", "> 0"]),
            (
                s(&["--attn-weight", "2"]),
                &["--attn-weight 2", "--attn-temp"],
            ),
            (
                s(&["--attn-temp", "2", "--attn-weight", "NaN"]),
                &["--attn-weight NaN"],
            ),
            (
                s(&["--cfg-anneal"]),
                &["--cfg-anneal", "--cfg or --attn-temp"],
            ),
            (s(&["--prior-std=-1"]), &["--prior-std -1", ">= 0"]),
            (
                s(&["--cfg", "1", "--attn-temp", "2", "--attn-weight", "3"]),
                &["--attn-weight", "the weight is --cfg's"],
            ),
            (
                err(&[
                    "init",
                    "--preset",
                    "tiny",
                    "--out",
                    "x",
                    "--randomize-output",
                    "NaN",
                ]),
                &["--randomize-output NaN", "finite"],
            ),
            (
                err(&["init", "--preset", "nope", "--out", "x"]),
                &["unknown preset"],
            ),
            (
                err(&["audit", "--preset", "tiny", "--samples", "0"]),
                &["--samples 0"],
            ),
            (err(&["audit"]), &["--checkpoint PATH or --preset NAME"]),
            (
                err(&["bench", "--batch", "0"]),
                &["--batch 0", "at least 1"],
            ),
            (
                err(&["bench", "--sample-batch", "0"]),
                &["--sample-batch 0"],
            ),
            (err(&["bench", "--repeats", "0"]), &["--repeats 0"]),
            (
                err(&["bench", "--batch", "100000000000"]),
                &["--batch 100000000000", "needs at least", "of memory"],
            ),
            (
                err(&["bench", "--image-size", "1000000"]),
                &["needs at least", "TB", "of memory"],
            ),
            (
                err(&["train", "--width", "64000000"]),
                &["width 64000000", "needs at least", "EB"],
            ),
            (
                err(&["sample", "--checkpoint", "x", "--num=-3"]),
                &["--num"],
            ),
            (err(&["nonsense"]), &["nonsense"]),
            (s(&["--scale", "17"]), &["--scale 17", "1..=16"]),
            (
                s(&["--out", "g.webp"]),
                &["--out g.webp", ".png, .jpg or .jpeg"],
            ),
            (
                err(&[
                    "decode",
                    "--checkpoint",
                    "a",
                    "--input",
                    "b",
                    "--output",
                    "c.tiff",
                ]),
                &["--output c.tiff"],
            ),
            (
                err(&["train", "--preset", "imagenet64"]),
                &["--preset imagenet64", "needs --data"],
            ),
            (
                err(&["train", "--sample-cfg-anneal", "--no-sample-cfg-anneal"]),
                &["--no-sample-cfg-anneal"],
            ),
            (
                err(&["train", "--resume", "r", "--config", "c.toml"]),
                &["--config"],
            ),
        ];
        for (e, words) in cases {
            for w in words {
                assert!(e.contains(w), "{w:?} not in {e:?}");
            }
        }
    }
}
