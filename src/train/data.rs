//! Choosing the training and test sets from a `--data` argument, and packing any such source
//! into one memory-mapped `.tfpack` file ([`pack_data`]).

use std::path::Path;

use rayon::prelude::*;

use crate::data::packed::write_pack;
use crate::data::{
    decode_image, embedded_mnist_split, is_pack, list_image_folder, load_cifar_dir, load_idx_pair,
    load_image_folder, CifarSplit, Dataset, FolderListing, PackHeader, PackWriter, PackedData,
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
///   and centre-cropped to `channels x size x size`; every 20th image is the test set;
/// - a file starting with the pack magic (`tarflow pack`'s output, whatever its name): its
///   pixels stay memory-mapped, and its last `test_count` images are the test set (a pack of
///   any of the sources above holds their split). Its image size is checked by the caller
///   against the model, as for every source.
pub fn open_data(path: Option<&Path>, channels: usize, size: usize) -> Result<(Dataset, Dataset)> {
    let Some(p) = path else {
        return embedded_mnist_split();
    };
    if p.is_file() && is_pack(p)? {
        let pack = PackedData::open(p)?;
        if pack.header().test_count == 0 {
            return Err(Error::Config(format!(
                "{}: the pack has no test split",
                p.display()
            )));
        }
        return pack.split();
    }
    if !p.is_dir() {
        return Err(Error::Config(format!(
            "--data {}: neither a directory nor a tarflow pack",
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
    let (train_idx, test_idx) = folder_split(p, all.len())?;
    Ok((all.subset(&train_idx)?, all.subset(&test_idx)?))
}

/// The train and test positions of a folder of `n` images: every 20th is a test image.
fn folder_split(p: &Path, n: usize) -> Result<(Vec<usize>, Vec<usize>)> {
    let is_test = |i: &usize| i % FOLDER_TEST_EVERY == FOLDER_TEST_EVERY - 1;
    let test_idx: Vec<usize> = (0..n).filter(is_test).collect();
    let train_idx: Vec<usize> = (0..n).filter(|i| !is_test(i)).collect();
    if test_idx.is_empty() {
        return Err(Error::Config(format!(
            "{}: {n} images are too few to hold out a test set (need {FOLDER_TEST_EVERY})",
            p.display()
        )));
    }
    Ok((train_idx, test_idx))
}

/// Images an image folder is decoded in at a time by [`pack_data`]: enough to keep every core
/// busy, few enough that memory stays small (4,096 ImageNet64 images are 50 MB).
pub const PACK_CHUNK: usize = 4096;

/// Packs the data `open_data(path, channels, size)` would open into one file at `out`: the
/// training images, then the test images (their number in the header), so that opening the
/// pack gives the same two sets. Image folders are streamed: decoded on rayon's threads
/// [`PACK_CHUNK`] images at a time and written in order, so memory does not grow with the
/// folder. IDX, CIFAR and the embedded digits are small and read whole first. Packing a pack
/// is refused (copy the file instead).
pub fn pack_data(
    path: Option<&Path>,
    channels: usize,
    size: usize,
    out: &Path,
) -> Result<PackHeader> {
    let folder = match path {
        Some(p) if p.is_dir() => {
            let has = |n: &str| p.join(n).exists() || p.join(format!("{n}.gz")).exists();
            !has("train-images-idx3-ubyte") && !p.join("data_batch_1.bin").exists()
        }
        Some(p) if p.is_file() && is_pack(p)? => {
            return Err(Error::Config(format!(
                "{} is already a tarflow pack",
                p.display()
            )))
        }
        _ => false,
    };
    match path {
        Some(p) if folder => pack_image_folder(p, channels, size, out, PACK_CHUNK),
        _ => {
            let (train, test) = open_data(path, channels, size)?;
            write_pack(out, &train, &test, &[])
        }
    }
}

/// [`pack_data`] for a folder of images: listed, split as [`open_data`] splits it, decoded
/// `chunk` images at a time in parallel and written in order.
fn pack_image_folder(
    dir: &Path,
    channels: usize,
    size: usize,
    out: &Path,
    chunk: usize,
) -> Result<PackHeader> {
    let FolderListing { classes, items } = list_image_folder(dir)?;
    if items.is_empty() {
        return Err(Error::format(
            dir.display().to_string(),
            "no .png/.jpg/.jpeg images found",
        ));
    }
    let (train_idx, test_idx) = folder_split(dir, items.len())?;
    let order: Vec<usize> = train_idx
        .into_iter()
        .chain(test_idx.iter().copied())
        .collect();
    let labels: Vec<u32> = order.iter().map(|&i| items[i].1).collect();
    let mut w = PackWriter::create(
        out,
        [channels, size, size],
        classes.len(),
        &classes,
        &labels,
        test_idx.len(),
    )?;
    for chunk in order.chunks(chunk.max(1)) {
        let decoded: Vec<Result<Vec<u8>>> = chunk
            .par_iter()
            .map(|&i| {
                let path = &items[i].0;
                let bytes = crate::fsutil::read_file(path)?;
                decode_image(&bytes, &path.display().to_string(), channels, size, size)
            })
            .collect();
        let mut pixels = Vec::with_capacity(chunk.len() * channels * size * size);
        for r in decoded {
            pixels.extend_from_slice(&r?);
        }
        w.write_images(&pixels)?;
    }
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder of `n` small RGB PNGs of several sizes in three class folders.
    fn image_folder(dir: &Path, n: usize) {
        let mut rng = crate::rng::Rng::new(5);
        for i in 0..n {
            let class = dir.join(["cat", "dog", "emu"][i % 3]);
            std::fs::create_dir_all(&class).unwrap();
            let (w, h) = (5 + (i % 4) as u32, 4 + (i % 3) as u32);
            let px: Vec<u8> = (0..w * h * 3).map(|_| rng.below(256) as u8).collect();
            let img = image::RgbImage::from_raw(w, h, px).unwrap();
            img.save(class.join(format!("{i:03}.png"))).unwrap();
        }
    }

    #[test]
    fn a_folder_packed_in_chunks_opens_as_the_folder_does() {
        let dir = std::env::temp_dir().join(format!("tarflow-packdir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let src = dir.join("images");
        image_folder(&src, 45);
        let (one, chunked) = (dir.join("one.tfpack"), dir.join("chunked.tfpack"));
        let h = pack_image_folder(&src, 3, 6, &one, PACK_CHUNK).unwrap();
        // Chunks of 4 do not divide 45: the last one is partial.
        pack_image_folder(&src, 3, 6, &chunked, 4).unwrap();
        assert_eq!(
            std::fs::read(&one).unwrap(),
            std::fs::read(&chunked).unwrap()
        );
        assert_eq!((h.count, h.test_count, h.num_classes), (45, 2, 3));
        let pack = PackedData::open(&one).unwrap();
        assert_eq!(pack.classes(), ["cat", "dog", "emu"]);
        let want = open_data(Some(&src), 3, 6).unwrap();
        assert_eq!(open_data(Some(&one), 3, 6).unwrap(), want);
        assert_eq!(pack_data(Some(&src), 3, 6, &one).unwrap(), h);
        // An unreadable image stops the pack, and nothing is left at the target.
        std::fs::write(src.join("dog").join("zzz.png"), b"not a png").unwrap();
        let bad = dir.join("bad.tfpack");
        let e = pack_image_folder(&src, 3, 6, &bad, 4)
            .unwrap_err()
            .to_string();
        assert!(e.contains("zzz.png"), "{e}");
        assert!(!bad.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
