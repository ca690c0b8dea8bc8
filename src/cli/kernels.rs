//! `tarflow bench --kernels`.

use super::out::say;
use tarflow::bench::fused::bench_fused;
use tarflow::bench::kernels::{format_table, run_kernel_benches, BenchConfig};
use tarflow::bench::peak::{measure_peak, PeakConfig};
use tarflow::{Error, Result};

pub fn bench_kernels(json: bool, repeats: Option<usize>) -> Result<()> {
    let peak = measure_peak(&PeakConfig::default());
    let defaults = BenchConfig::default();
    let cfg = BenchConfig {
        repeats: repeats.unwrap_or(defaults.repeats).max(3),
        ..defaults
    };
    let mut results = run_kernel_benches(&peak, &cfg);
    results.extend(bench_fused(&peak, &cfg)?);
    if json {
        let v = serde_json::json!({ "peak": peak, "results": results });
        say!(
            "{}",
            serde_json::to_string_pretty(&v).map_err(|e| Error::format("bench", e.to_string()))?
        );
    } else {
        say!(
            "machine peak: {:.1} GFLOP/s f32 FMA ({} threads, {}), {:.1} GFLOP/s one thread, DRAM {:.1} GB/s, cache {:.1} GB/s",
            peak.gflops, peak.threads, peak.isa, peak.gflops_one_thread, peak.dram_gbps, peak.cache_gbps
        );
        say!("{}", format_table(&results).trim_end_matches('\n'));
    }
    Ok(())
}
