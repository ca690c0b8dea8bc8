//! Helpers shared by the integration tests.
// Each test binary uses its own part of these helpers.
#![allow(dead_code)]

#[cfg(feature = "cli")]
pub mod cli;
pub mod gpu;

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The largest of `values`, or NaN if any is NaN. `fold(0.0, f64::max)` drops NaN operands,
/// so a comparison judged with it would pass on a NaN result.
pub fn worst(values: impl IntoIterator<Item = f64>) -> f64 {
    values.into_iter().fold(0.0, |m: f64, v| {
        if m.is_nan() || v.is_nan() {
            f64::NAN
        } else {
            m.max(v)
        }
    })
}

/// The bit patterns of a tensor's values (downloaded from a device), for comparisons that
/// must be exact.
pub fn bits(t: &tarflow::Tensor<f32>) -> Vec<u32> {
    t.try_to_vec()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

/// A fresh, empty directory under the system temp dir, removed (with what the test wrote in
/// it) when dropped. Derefs to its path.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let k = COUNTER.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("tarflow-{tag}-{}-{k}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
