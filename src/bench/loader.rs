//! The data loader alone: how many images per second batch assembly (the shuffled gather the
//! [`Loader`] does on the prefetch thread) and dequantisation to `f32` (what the training step
//! does with each batch before the model sees it) deliver, from memory or from a mapped pack,
//! and how much memory the process holds while doing it.
//!
//! A training step of `t` seconds at batch `b` needs `b / t` images per second; the bench
//! reports the loader's rate so the margin can be read off (`docs/performance.md`).

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::data::loader::dequantize;
use crate::data::{Dataset, Loader, LoaderConfig};
use crate::error::{Error, Result};
use crate::rng::Rng;

/// Resident memory of this process from `/proc/self/status`, in KiB.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Memory {
    /// All resident pages (`VmRSS`).
    pub rss_kb: u64,
    /// Resident anonymous pages (`RssAnon`): heap and stacks, what the process itself holds.
    pub anon_kb: u64,
    /// Resident file-backed pages (`RssFile`): mapped files, among them a pack's pixels.
    /// Clean page-cache pages the kernel may drop under memory pressure and read again.
    pub file_kb: u64,
    /// Peak resident set (`VmHWM`).
    pub peak_kb: u64,
}

/// This process's memory, or `None` where `/proc/self/status` is not available.
pub fn memory() -> Option<Memory> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    };
    Some(Memory {
        rss_kb: field("VmRSS:")?,
        anon_kb: field("RssAnon:")?,
        file_kb: field("RssFile:")?,
        peak_kb: field("VmHWM:")?,
    })
}

/// One timed pass of the loader.
#[derive(Clone, Debug, Serialize)]
pub struct LoaderPass {
    /// What the pass measures, e.g. "1 thread, cold cache".
    pub label: String,
    /// Loader threads working at once (each with its own loader and generator).
    pub threads: usize,
    /// Images per batch.
    pub batch: usize,
    /// Images assembled and dequantised, all threads together.
    pub images: usize,
    /// Wall-clock seconds of the pass.
    pub seconds: f64,
    /// `images / seconds`.
    pub images_per_s: f64,
    /// Pixel bytes read from the data set per second, in MB/s (10^6 bytes).
    pub mb_per_s: f64,
    /// `f32` bytes written per second by dequantisation, in MB/s.
    pub f32_mb_per_s: f64,
    /// Memory right after the pass (on Linux).
    pub memory_after: Option<Memory>,
}

/// Runs `threads` loaders over `data` at once, each assembling batches of `batch` shuffled
/// images (seeded `seed + thread`) and dequantising every batch to `f32`, until `images`
/// images are done together; returns the timing and the memory after it.
pub fn loader_pass(
    label: &str,
    data: &Arc<Dataset>,
    batch: usize,
    images: usize,
    threads: usize,
    seed: u64,
) -> Result<LoaderPass> {
    if threads == 0 || batch == 0 || images == 0 {
        return Err(Error::arg(
            "loader_pass",
            format!("threads {threads}, batch {batch} and images {images} must be positive"),
        ));
    }
    let per_thread = images.div_ceil(threads).div_ceil(batch);
    let loaders = (0..threads)
        .map(|t| Loader::new(data.clone(), LoaderConfig::train(batch, seed + t as u64)))
        .collect::<Result<Vec<_>>>()?;
    let start = Instant::now();
    let done: Option<usize> = std::thread::scope(|s| {
        let handles: Vec<_> = loaders
            .into_iter()
            .enumerate()
            .map(|(t, mut loader)| {
                s.spawn(move || {
                    let mut rng = Rng::new(seed ^ (0xdeca_f000 + t as u64));
                    let mut n = 0;
                    for _ in 0..per_thread {
                        let b = loader.next_batch();
                        let x = dequantize::<f32>(&b.images, &mut rng);
                        std::hint::black_box(&x);
                        n += b.n;
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().ok()).sum()
    });
    let done = done.ok_or_else(|| Error::arg("loader_pass", "a loader thread panicked"))?;
    let seconds = start.elapsed().as_secs_f64().max(1e-9);
    let bytes = (done * data.image_len()) as f64;
    Ok(LoaderPass {
        label: label.to_string(),
        threads,
        batch,
        images: done,
        seconds,
        images_per_s: done as f64 / seconds,
        mb_per_s: bytes / seconds / 1e6,
        f32_mb_per_s: 4.0 * bytes / seconds / 1e6,
        memory_after: memory(),
    })
}

/// Images per second a training step of `step_s` seconds at `batch` images consumes.
pub fn images_needed(batch: usize, step_s: f64) -> f64 {
    batch as f64 / step_s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_counts_every_image_of_its_batches() {
        let n = 40;
        let d = Dataset::new(
            "bench",
            (0..n * 2 * 3 * 3).map(|i| i as u8).collect(),
            vec![0; n],
            1,
            2,
            3,
            3,
        )
        .unwrap();
        let d = Arc::new(d);
        // 3 threads x ceil(ceil(50/3)/8) = 3 batches of 8 each.
        let p = loader_pass("t", &d, 8, 50, 3, 1).unwrap();
        assert_eq!((p.images, p.threads, p.batch), (72, 3, 8));
        assert!(p.images_per_s > 0.0 && p.mb_per_s > 0.0);
        assert!((p.f32_mb_per_s - 4.0 * p.mb_per_s).abs() <= 1e-9 * p.f32_mb_per_s);
        assert!(loader_pass("t", &d, 8, 50, 0, 1).is_err());
        assert_eq!(images_needed(64, 0.1), 640.0);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn memory_reads_proc_status() {
        let m = memory().expect("/proc/self/status on Linux");
        assert!(m.rss_kb > 0 && m.peak_kb >= m.rss_kb);
        assert!(m.anon_kb + m.file_kb <= m.rss_kb);
    }
}
