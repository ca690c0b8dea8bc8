//! CIFAR-10 binary batches.
//!
//! Each file (`data_batch_1.bin` .. `data_batch_5.bin`, `test_batch.bin`) is a plain sequence
//! of 3,073-byte records: one label byte (0..9), then 3,072 pixel bytes laid out as the red
//! 32x32 plane, the green plane and the blue plane, each row-major. That is already the
//! channel-major layout of [`Dataset`], so records are copied as they are.

use std::path::{Path, PathBuf};

use super::{read_file, Dataset};
use crate::error::{Error, Result};

/// Side of a CIFAR-10 image.
pub const CIFAR_SIDE: usize = 32;
/// Pixel bytes per record.
pub const CIFAR_IMAGE_BYTES: usize = 3 * CIFAR_SIDE * CIFAR_SIDE;
/// Bytes per record: the label byte plus the pixels.
pub const CIFAR_RECORD_BYTES: usize = 1 + CIFAR_IMAGE_BYTES;
/// Number of CIFAR-10 classes.
pub const CIFAR_CLASSES: usize = 10;

/// Which files of a CIFAR-10 directory to load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CifarSplit {
    /// Every `data_batch_N.bin`, in increasing `N`.
    Train,
    /// `test_batch.bin`.
    Test,
}

/// Parses one batch held in memory; `name` is used in errors.
pub fn parse_cifar_batch(bytes: &[u8], name: &str) -> Result<Dataset> {
    if bytes.is_empty() {
        return Err(Error::format(name, "empty CIFAR-10 batch"));
    }
    if !bytes.len().is_multiple_of(CIFAR_RECORD_BYTES) {
        return Err(Error::format(
            name,
            format!(
                "{} bytes is not a whole number of {CIFAR_RECORD_BYTES}-byte CIFAR-10 records \
                 ({} complete, {} bytes left over: truncated or not a CIFAR-10 batch)",
                bytes.len(),
                bytes.len() / CIFAR_RECORD_BYTES,
                bytes.len() % CIFAR_RECORD_BYTES
            ),
        ));
    }
    let n = bytes.len() / CIFAR_RECORD_BYTES;
    let mut images = Vec::with_capacity(n * CIFAR_IMAGE_BYTES);
    let mut labels = Vec::with_capacity(n);
    for (i, rec) in bytes.chunks_exact(CIFAR_RECORD_BYTES).enumerate() {
        let label = rec[0];
        if label as usize >= CIFAR_CLASSES {
            return Err(Error::format(
                name,
                format!(
                    "record {i} (byte offset {}) has label {label}, outside 0..{CIFAR_CLASSES}",
                    i * CIFAR_RECORD_BYTES
                ),
            ));
        }
        labels.push(u32::from(label));
        images.extend_from_slice(&rec[1..]);
    }
    Dataset::new(
        name,
        images,
        labels,
        CIFAR_CLASSES,
        3,
        CIFAR_SIDE,
        CIFAR_SIDE,
    )
}

/// Loads one batch file.
pub fn load_cifar_file(path: impl AsRef<Path>) -> Result<Dataset> {
    let path = path.as_ref();
    parse_cifar_batch(&read_file(path)?, &path.display().to_string())
}

/// The batch files of `split` in `dir`, in load order.
///
/// `dir` may be the folder holding the `.bin` files or its parent containing
/// `cifar-10-batches-bin/` (the layout of the official archive).
pub fn cifar_files(dir: impl AsRef<Path>, split: CifarSplit) -> Result<Vec<PathBuf>> {
    let mut dir = dir.as_ref().to_path_buf();
    let nested = dir.join("cifar-10-batches-bin");
    if nested.is_dir() {
        dir = nested;
    }
    match split {
        CifarSplit::Test => {
            let p = dir.join("test_batch.bin");
            if !p.is_file() {
                return Err(Error::format(
                    dir.display().to_string(),
                    "no test_batch.bin in this CIFAR-10 directory",
                ));
            }
            Ok(vec![p])
        }
        CifarSplit::Train => {
            let entries = std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?;
            let mut found: Vec<(u64, PathBuf)> = Vec::new();
            for entry in entries {
                let entry = entry.map_err(|e| Error::io(&dir, e))?;
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                let number = name
                    .strip_prefix("data_batch_")
                    .and_then(|s| s.strip_suffix(".bin"))
                    .and_then(|s| s.parse::<u64>().ok());
                if let Some(k) = number {
                    found.push((k, entry.path()));
                }
            }
            if found.is_empty() {
                return Err(Error::format(
                    dir.display().to_string(),
                    "no data_batch_N.bin files in this CIFAR-10 directory",
                ));
            }
            // Numeric order, so data_batch_10 would follow data_batch_9.
            found.sort();
            Ok(found.into_iter().map(|(_, p)| p).collect())
        }
    }
}

/// Loads every batch of `split` from a CIFAR-10 directory (see [`cifar_files`]) into one data
/// set, batches in file order.
pub fn load_cifar_dir(dir: impl AsRef<Path>, split: CifarSplit) -> Result<Dataset> {
    let files = cifar_files(dir, split)?;
    let mut out: Option<Dataset> = None;
    for f in &files {
        let d = load_cifar_file(f)?;
        match out.as_mut() {
            None => out = Some(d),
            Some(acc) => acc.extend(&d)?,
        }
    }
    // cifar_files never returns an empty list.
    out.ok_or_else(|| Error::format("CIFAR-10", "no batch files"))
}
