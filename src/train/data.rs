//! Choosing the training and test sets from a `--data` argument.

use std::path::Path;

use crate::data::{
    embedded_mnist_split, load_cifar_dir, load_idx_pair, load_image_folder, CifarSplit, Dataset,
};
use crate::error::{Error, Result};

/// Every `k`-th image of an image folder is held out for testing.
const FOLDER_TEST_EVERY: usize = 20;

/// Training and test sets for `path`:
/// - `None`: the embedded MNIST digits with their fixed 9,000/1,000 split;
/// - a directory with `train-images-idx3-ubyte[.gz]` (and `t10k-...` for the test set): IDX
///   files such as the official MNIST release;
/// - a directory with `data_batch_*.bin` and `test_batch.bin`: CIFAR-10 binary batches;
/// - any other directory: a folder of PNG/JPEG images (class subfolders optional), resized
///   and centre-cropped to `channels x size x size`; every 20th image is the test set.
pub fn open_data(path: Option<&Path>, channels: usize, size: usize) -> Result<(Dataset, Dataset)> {
    let Some(p) = path else {
        return embedded_mnist_split();
    };
    if !p.is_dir() {
        return Err(Error::Config(format!(
            "--data {}: not a directory",
            p.display()
        )));
    }
    let find = |stem: &str| -> Option<std::path::PathBuf> {
        [stem.to_string(), format!("{stem}.gz")]
            .iter()
            .map(|n| p.join(n))
            .find(|q| q.exists())
    };
    if let (Some(ti), Some(tl)) = (
        find("train-images-idx3-ubyte"),
        find("train-labels-idx1-ubyte"),
    ) {
        let train = load_idx_pair(&ti, &tl)?;
        let test = match (
            find("t10k-images-idx3-ubyte"),
            find("t10k-labels-idx1-ubyte"),
        ) {
            (Some(a), Some(b)) => load_idx_pair(&a, &b)?,
            _ => {
                return Err(Error::Config(format!(
                    "{}: IDX training files found but no t10k-* test files",
                    p.display()
                )))
            }
        };
        return Ok((train, test));
    }
    if p.join("data_batch_1.bin").exists() {
        return Ok((
            load_cifar_dir(p, CifarSplit::Train)?,
            load_cifar_dir(p, CifarSplit::Test)?,
        ));
    }
    let all = load_image_folder(p, channels, size, size)?.dataset;
    let n = all.len();
    let test_idx: Vec<usize> = (0..n)
        .filter(|i| i % FOLDER_TEST_EVERY == FOLDER_TEST_EVERY - 1)
        .collect();
    let train_idx: Vec<usize> = (0..n)
        .filter(|i| i % FOLDER_TEST_EVERY != FOLDER_TEST_EVERY - 1)
        .collect();
    if test_idx.is_empty() {
        return Err(Error::Config(format!(
            "{}: {n} images are too few to hold out a test set (need {FOLDER_TEST_EVERY})",
            p.display()
        )));
    }
    Ok((all.subset(&train_idx)?, all.subset(&test_idx)?))
}
