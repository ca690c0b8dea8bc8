//! The command line: arbitrary argument vectors through clap and every command's pre-flight
//! checks (ranges, sizes past memory, option combinations, device names). The input is split
//! on NUL bytes into arguments after the program name. Errors only, never a panic; nothing is
//! read or written.
#![no_main]

use libfuzzer_sys::fuzz_target;

// The binary's own argument module, compiled into the target as it is into `tarflow`.
#[allow(dead_code, unused_imports)]
#[path = "../../src/cli/mod.rs"]
mod cli;

fuzz_target!(|data: &[u8]| {
    let args = data
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned());
    let argv = std::iter::once("tarflow".to_string()).chain(args);
    let _ = cli::check_args(argv);
});
