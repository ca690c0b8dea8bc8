//! Output lines that never take the program down. `println!` panics when stdout is a closed
//! pipe (`tarflow train | head -1`), which would lose the work in progress; these helpers drop
//! the line instead and let the command finish (a training run still saves its checkpoint).

use std::io::Write;

/// Writes one line to stdout. A closed or failing stdout is ignored: output is a report of
/// the work, never a reason to stop it.
pub fn line(args: std::fmt::Arguments<'_>) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{args}");
    let _ = o.flush();
}

/// Writes one line to stderr, ignoring a closed stderr.
pub fn err_line(args: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr().lock(), "{args}");
}

/// `println!` that survives a closed stdout (see [`line`]).
macro_rules! say {
    ($($t:tt)*) => { $crate::cli::out::line(format_args!($($t)*)) };
}

/// `eprintln!` that survives a closed stderr.
macro_rules! say_err {
    ($($t:tt)*) => { $crate::cli::out::err_line(format_args!($($t)*)) };
}

pub(crate) use say;
pub(crate) use say_err;
