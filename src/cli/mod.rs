//! Argument parsing and the subcommands. Library calls do the work; this module only parses,
//! prints and decides exit codes.

pub(crate) mod out;

mod bench;
mod flow;
mod kernels;
mod shape;
mod train;

use clap::{Parser, Subcommand};

use tarflow::Result;

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
    /// Images -> latents: x [B,C,H,W] in [-1,1] to z, logdet, logdet_blocks, bpd.
    Encode(flow::EncodeArgs),
    /// Latents -> images: z [B,C,H,W] (or [B,N,D]) to x.
    Decode(flow::DecodeArgs),
    /// Draw samples from a checkpoint into PNG files.
    Sample(flow::SampleArgs),
}

/// Parses the command line and runs the chosen subcommand.
pub fn run() -> Result<()> {
    match Cli::parse().command {
        Command::Train(a) => train::train(a),
        Command::Eval(a) => train::eval(a),
        Command::Bench(a) => bench::bench(a),
        Command::Init(a) => flow::init(a),
        Command::Audit(a) => flow::audit(a),
        Command::Encode(a) => flow::encode(a),
        Command::Decode(a) => flow::decode(a),
        Command::Sample(a) => flow::sample(a),
    }
}
