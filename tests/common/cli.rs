//! Running the built `tarflow` program as a user does.

use std::path::Path;
use std::process::{Command, Output};

/// Runs the `tarflow` binary of this build with `args`.
pub fn tarflow(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tarflow"))
        .args(args)
        .output()
        .expect("binary runs")
}

/// The stdout of a command that must succeed (its stderr in the failure message).
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A path as a command-line argument.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}
