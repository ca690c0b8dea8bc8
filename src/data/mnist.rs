//! The 10,000 MNIST digits embedded in the crate, and their fixed train/test split.
//!
//! The digits live in `data/` as gzipped IDX files made by `scripts/convert_mnist.py` (see
//! `data/README.md`): 28x28 grayscale, labels 0..9, ordered by class (all 0s, then all 1s,
//! ...) and within a class in the order of the source archive. Class sizes range from 863
//! (digit 5) to 1127 (digit 1).

use super::idx::{idx_dataset, parse_idx_images, parse_idx_labels};
use super::Dataset;
use crate::error::{Error, Result};

const IMAGES_GZ: &[u8] = include_bytes!("../../data/mnist10k-images-idx3-ubyte.gz");
const LABELS_GZ: &[u8] = include_bytes!("../../data/mnist10k-labels-idx1-ubyte.gz");

/// Number of embedded digits.
pub const EMBEDDED_LEN: usize = 10_000;
/// Test digits per class in [`embedded_mnist_split`].
pub const TEST_PER_CLASS: usize = 100;

/// All 10,000 embedded digits (1x28x28, 10 classes), in file order.
pub fn embedded_mnist() -> Result<Dataset> {
    let name = "embedded MNIST (data/mnist10k-*-ubyte.gz)";
    let images = parse_idx_images(IMAGES_GZ, "data/mnist10k-images-idx3-ubyte.gz")?;
    let labels = parse_idx_labels(LABELS_GZ, "data/mnist10k-labels-idx1-ubyte.gz")?;
    let d = idx_dataset(images, labels, Some(10), name)?;
    if d.len() != EMBEDDED_LEN || d.height != 28 || d.width != 28 {
        return Err(Error::format(
            name,
            format!(
                "expected {EMBEDDED_LEN} digits of 28x28, found {} of {}x{}",
                d.len(),
                d.height,
                d.width
            ),
        ));
    }
    Ok(d)
}

/// Indices of the test digits of [`embedded_mnist_split`] within [`embedded_mnist`]: the last
/// [`TEST_PER_CLASS`] digits of each class in file order, in ascending index order.
pub fn embedded_test_indices(d: &Dataset) -> Result<Vec<usize>> {
    let mut remaining = vec![TEST_PER_CLASS; d.num_classes];
    let mut picked = Vec::with_capacity(TEST_PER_CLASS * d.num_classes);
    // Walk backwards so "the last 100 of each class" needs no per-class index lists.
    for i in (0..d.len()).rev() {
        let c = d.labels[i] as usize;
        if let Some(r) = remaining.get_mut(c) {
            if *r > 0 {
                *r -= 1;
                picked.push(i);
            }
        }
    }
    if let Some(c) = remaining.iter().position(|&r| r > 0) {
        return Err(Error::format(
            "embedded MNIST",
            format!("class {c} has fewer than {TEST_PER_CLASS} digits"),
        ));
    }
    picked.reverse();
    Ok(picked)
}

/// The fixed, class-balanced split of the embedded digits: `(train, test)` with 9,000 and
/// 1,000 digits.
///
/// The test set is the last 100 digits of each class in file order (so exactly 100 per class);
/// the train set is every other digit. Both keep file order (class-major). The split depends
/// on nothing but the embedded files, so every run and every machine sees the same sets.
pub fn embedded_mnist_split() -> Result<(Dataset, Dataset)> {
    let all = embedded_mnist()?;
    let test_idx = embedded_test_indices(&all)?;
    let mut is_test = vec![false; all.len()];
    for &i in &test_idx {
        is_test[i] = true;
    }
    let train_idx: Vec<usize> = (0..all.len()).filter(|&i| !is_test[i]).collect();
    Ok((all.subset(&train_idx)?, all.subset(&test_idx)?))
}
