//! Memory estimates of models, batches and sampling, checked before anything is allocated.
//!
//! A request far beyond the machine (a billion samples, a model of width 64 million) would
//! otherwise end in an allocation failure, which aborts the process without a message. The
//! estimates here count only the buffers the work certainly holds at once (weights, inputs,
//! the activations a backward pass keeps, the sampler's key/value caches), so they are lower
//! bounds: a request they refuse could never have run, and one they accept may still be
//! tight. The limit is the machine's physical memory (`MemTotal` of `/proc/meminfo`), or
//! [`FALLBACK_LIMIT`] where that cannot be read.

use std::sync::OnceLock;

use super::config::TarFlowConfig;
use crate::error::{Error, Result};

/// The memory limit where the machine's memory cannot be read (1 TiB): generous enough for
/// any model this crate trains on a CPU, small enough to stop a request of petabytes.
pub const FALLBACK_LIMIT: u64 = 1 << 40;

/// Bytes of memory a request may use: the machine's physical memory on Linux, else
/// [`FALLBACK_LIMIT`]. Read once per process.
pub fn memory_limit() -> u64 {
    static LIMIT: OnceLock<u64> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| mem_total(&s))
            .unwrap_or(FALLBACK_LIMIT)
    })
}

/// `MemTotal` of a `/proc/meminfo` text, in bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024).filter(|&b| b > 0)
}

/// A byte count in decimal units, e.g. `31.4 TB`.
pub fn format_bytes(bytes: f64) -> String {
    const UNITS: [&str; 9] = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"];
    let mut v = bytes;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Errors when `bytes` exceed [`memory_limit`]; `what` describes the request and is only
/// built on failure.
pub fn check_fits(bytes: f64, what: impl FnOnce() -> String) -> Result<()> {
    let limit = memory_limit();
    if bytes.is_finite() && bytes <= limit as f64 {
        return Ok(());
    }
    Err(Error::Config(format!(
        "{} needs at least {}; this machine has {} of memory",
        what(),
        format_bytes(bytes),
        format_bytes(limit as f64)
    )))
}

impl TarFlowConfig {
    /// Parameter count as a float (no overflow for configs not yet validated).
    pub(crate) fn parameters_f64(&self) -> f64 {
        let (c, d, n, q) = (
            self.width as f64,
            self.token_dim() as f64,
            self.seq_len() as f64,
            self.num_classes as f64,
        );
        let m = self.mlp_ratio as f64 * c;
        let layer = 9.0 * c + 4.0 * c * c + 2.0 * m * c + m;
        let out = self.proj_out_dim() as f64;
        // proj_in, position and class embeddings, layers, proj_out.
        let block =
            c * d + c + n * c + q * c + self.layers_per_block as f64 * layer + out * c + out;
        self.blocks as f64 * block
    }

    /// Bytes of the weights alone with `element_bytes` per value (4 for `f32`).
    pub fn parameter_bytes(&self, element_bytes: usize) -> f64 {
        self.parameters_f64() * element_bytes as f64
    }

    /// Lower bound of the bytes a training step on `batch` images holds at its peak with
    /// `element_bytes` per value, its layers recomputing what `recompute` says: the weights
    /// with their gradients and two AdamW moments, the input batch, and per image the
    /// activations the backward pass keeps. A plain layer keeps its two normalised inputs,
    /// q/k/v, the attention output and the MLP's pre-activation; with
    /// [`Recompute::Mlp`](super::Recompute) the MLP half keeps only its input, with
    /// `Layer` a layer keeps its input alone, and one layer's plain activations are alive
    /// while it is recomputed.
    pub fn training_bytes(
        &self,
        batch: usize,
        element_bytes: usize,
        recompute: super::Recompute,
    ) -> f64 {
        let (c, n, d) = (
            self.width as f64,
            self.seq_len() as f64,
            self.token_dim() as f64,
        );
        let m = self.mlp_ratio as f64 * c;
        let plain = n * (2.0 * c + 3.0 * c + c + m);
        let (per_layer, transient) = match recompute {
            super::Recompute::None => (plain, 0.0),
            super::Recompute::Mlp => (n * (c + 3.0 * c + c + c), plain),
            super::Recompute::Layer => (n * c, plain),
        };
        let per_block = n * (2.0 * d + c) + self.layers_per_block as f64 * per_layer;
        let per_image = self.image_dim() as f64 + self.blocks as f64 * per_block + transient;
        let e = element_bytes as f64;
        4.0 * self.parameter_bytes(element_bytes) + batch as f64 * per_image * e
    }

    /// The least recomputation ([`Recompute::None`](super::Recompute), then `Mlp`, then
    /// `Layer`) whose training step on `batch` images fits in `device_bytes` by
    /// [`TarFlowConfig::training_bytes`] (f32 values) with a quarter to spare for the device
    /// pool's rounding and what the estimate leaves out (on an H200, ImageNet64's bf16 step at
    /// batch 16 peaked at 36,857 MiB against an estimate of 38,138); `None` when even `Layer`
    /// does not fit.
    pub fn recompute_to_fit(&self, batch: usize, device_bytes: u64) -> Option<super::Recompute> {
        use super::Recompute;
        [Recompute::None, Recompute::Mlp, Recompute::Layer]
            .into_iter()
            .find(|&r| 1.25 * self.training_bytes(batch, 4, r) <= device_bytes as f64)
    }

    /// Lower bound of the bytes KV-cached sampling of `count` images holds with
    /// `element_bytes` per value, `branches` rows per image (2 with guidance): the noise,
    /// the tokens and the images (`3 x N x D` values per image) and the key and value caches
    /// of one block (`2 x K x N x C` per row).
    pub fn sampling_bytes(&self, count: usize, branches: usize, element_bytes: usize) -> f64 {
        let (c, n, d) = (
            self.width as f64,
            self.seq_len() as f64,
            self.token_dim() as f64,
        );
        let per_image = 3.0 * n * d + branches as f64 * 2.0 * self.layers_per_block as f64 * n * c;
        count as f64 * per_image * element_bytes as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_and_units() {
        let s = "MemTotal:       24683664 kB\nMemFree:        19117020 kB\n";
        assert_eq!(mem_total(s), Some(24683664 * 1024));
        assert_eq!(mem_total("MemFree: 1 kB\n"), None);
        assert_eq!(mem_total("MemTotal: lots kB\n"), None);
        assert_eq!(format_bytes(512.0), "512 B");
        assert_eq!(format_bytes(31.36e12), "31.4 TB");
        assert!(memory_limit() > 0);
    }

    #[test]
    fn recomputation_is_picked_to_fit_the_device() {
        use crate::model::Recompute;
        let c = TarFlowConfig::preset("imagenet64").unwrap();
        let h200 = 143_771u64 << 20; // nvidia-smi's 143,771 MiB on the GPU check's H200
                                     // Batch 16 keeps everything (it ran so: peak 36,857 MiB); batch 64 needs the MLP
                                     // recomputed (the GPU check trains it so), the preset's 256 every layer.
        assert_eq!(c.recompute_to_fit(16, h200), Some(Recompute::None));
        assert_eq!(c.recompute_to_fit(64, h200), Some(Recompute::Mlp));
        assert_eq!(c.recompute_to_fit(256, h200), Some(Recompute::Layer));
        assert_eq!(c.recompute_to_fit(4096, h200), None);
        // The estimates fall in that order at every batch.
        let bytes = |r| c.training_bytes(256, 4, r);
        assert!(bytes(Recompute::None) > bytes(Recompute::Mlp));
        assert!(bytes(Recompute::Mlp) > bytes(Recompute::Layer));
    }

    #[test]
    fn estimates_grow_with_the_request_and_refuse_the_impossible() {
        let c = TarFlowConfig::preset("tiny").unwrap();
        let m = crate::model::TarFlow::<f32>::new(c.clone(), 0).unwrap();
        assert_eq!(c.parameter_bytes(4), 4.0 * m.num_parameters() as f64);
        use crate::model::Recompute;
        let none = |b| c.training_bytes(b, 4, Recompute::None);
        assert!(none(2) > none(1));
        let mut deep = c.clone();
        deep.layers_per_block = 8;
        let at = |r| deep.training_bytes(16, 4, r);
        assert!(at(Recompute::Layer) < at(Recompute::Mlp));
        assert!(at(Recompute::Mlp) < at(Recompute::None));
        assert!(c.sampling_bytes(1, 2, 4) > c.sampling_bytes(1, 1, 4));
        // A tiny sample batch fits anywhere; 1e12 images of 784 values cannot fit anywhere.
        check_fits(c.sampling_bytes(10, 1, 4), || "ten samples".into()).unwrap();
        let e = check_fits(c.sampling_bytes(1_000_000_000_000, 1, 4), || {
            "1e12 samples".into()
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("1e12 samples needs at least") && e.contains("PB"),
            "{e}"
        );
        assert!(check_fits(f64::NAN, || "NaN".into()).is_err());
    }
}
