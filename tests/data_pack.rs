//! Packed data sets (`.tfpack`): the bytes and split survive a round trip, a mapped data set
//! gives exactly the batches of the same data in memory (loader, prefetcher, resume, training),
//! and every damaged or truncated file is a clear `Error::Format` naming it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

mod common;

use common::TempDir;
use tarflow::data::packed::{write_pack, HEADER_LEN, PACK_MAGIC};
use tarflow::data::*;
use tarflow::train::{open_data, pack_data, TrainConfig, Trainer};
use tarflow::{Error, Rng};

fn random_dataset(seed: u64, n: usize, [c, h, w]: [usize; 3], classes: usize) -> Dataset {
    let mut rng = Rng::new(seed);
    let images = (0..n * c * h * w).map(|_| rng.below(256) as u8).collect();
    let labels = (0..n).map(|_| rng.below(classes as u64) as u32).collect();
    Dataset::new("random", images, labels, classes, c, h, w).unwrap()
}

fn names(k: usize) -> Vec<String> {
    (0..k).map(|i| format!("class-{i}")).collect()
}

/// A pack of 37 train and 11 test images of 3x5x4 in 4 named classes, and the two sets.
fn small_pack(dir: &Path) -> (PathBuf, Dataset, Dataset) {
    let train = random_dataset(1, 37, [3, 5, 4], 4);
    let test = random_dataset(2, 11, [3, 5, 4], 4);
    let path = dir.join("small.tfpack");
    write_pack(&path, &train, &test, &names(4)).unwrap();
    (path, train, test)
}

/// Asserts an `Error::Format` naming `path` whose detail contains `needle`.
fn assert_format<T: std::fmt::Debug>(r: tarflow::Result<T>, path: &Path, needle: &str) {
    match r {
        Err(Error::Format { what, detail }) => {
            assert!(
                what.contains(&path.display().to_string()),
                "error names {what:?}, expected {}",
                path.display()
            );
            assert!(detail.contains(needle), "{detail:?} lacks {needle:?}");
        }
        other => panic!("expected a Format error mentioning {needle:?}, got {other:?}"),
    }
}

fn fnv1a64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in parts.iter().flat_map(|p| p.iter()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Rewrites the metadata checksum of `bytes` (whose pixels start at `pixels_at`) after a
/// deliberate change, so the check behind the checksum is what the test reaches.
fn reseal(bytes: &mut [u8], pixels_at: usize) {
    let sum = fnv1a64(&[&bytes[..96], &bytes[HEADER_LEN..pixels_at]]);
    bytes[96..104].copy_from_slice(&sum.to_le_bytes());
}

#[test]
fn a_pack_keeps_every_byte_label_name_and_the_split() {
    let dir = TempDir::new("pack-roundtrip");
    let (path, train, test) = small_pack(&dir);
    let pack = PackedData::open(&path).unwrap();
    let h = pack.header();
    assert_eq!((h.count, h.test_count), (48, 11));
    assert_eq!((h.channels, h.height, h.width, h.num_classes), (3, 5, 4, 4));
    assert_eq!(h.pixels_offset % 4096, 0);
    assert_eq!(h.file_len, std::fs::metadata(&path).unwrap().len());
    assert_eq!(pack.classes(), names(4).as_slice());
    pack.verify_pixels().unwrap();
    let (tr, te) = pack.split().unwrap();
    assert!(tr.is_mapped() && te.is_mapped());
    assert_eq!(tr, train);
    assert_eq!(te, test);
    // A mapped data set behaves as an owned one wherever it is used.
    assert_eq!(
        tr.subset(&[3, 0, 3]).unwrap(),
        train.subset(&[3, 0, 3]).unwrap()
    );
    assert_eq!(tr.slice(5..9).unwrap(), train.slice(5..9).unwrap());
    assert!(tr.slice(5..38).is_err());
    let mut joined = tr.clone();
    joined.extend(&te).unwrap();
    assert!(!joined.is_mapped());
    assert_eq!(joined, pack.dataset().unwrap());
    assert_eq!(te.clone().into_parts(), test.clone().into_parts());
    // Detected by its magic bytes whatever the name; the split is open_data's.
    let renamed = dir.join("data.bin");
    std::fs::copy(&path, &renamed).unwrap();
    assert!(is_pack(&renamed).unwrap() && !is_pack(dir.path()).unwrap());
    let (otr, ote) = open_data(Some(&renamed), 1, 28).unwrap();
    assert_eq!((otr, ote), (train, test));
}

#[test]
fn mapped_batches_are_the_in_memory_batches() {
    let dir = TempDir::new("pack-loader");
    let (path, train, _) = small_pack(&dir);
    let mapped = Arc::new(PackedData::open(&path).unwrap().split().unwrap().0);
    let owned = Arc::new(train);
    let cfg = LoaderConfig {
        batch_size: 5,
        shuffle: true,
        drop_last: true,
        hflip: true,
        seed: 17,
    };
    let mut a = Loader::new(owned.clone(), cfg.clone()).unwrap();
    let mut b = Loader::new(mapped.clone(), cfg.clone()).unwrap();
    // Three epochs, so reshuffles and flips are covered.
    for _ in 0..3 * a.batches_per_epoch() {
        assert_eq!(a.next_batch(), b.next_batch());
    }
    // Resuming a state saved on one source continues identically on the other.
    let state = a.state();
    let mut c = Loader::from_state(mapped.clone(), &state).unwrap();
    let mut pf = Prefetcher::new(Loader::from_state(mapped, &state).unwrap(), 3);
    for _ in 0..10 {
        let want = a.next_batch();
        assert_eq!(c.next_batch(), want);
        assert_eq!(pf.next_batch().unwrap(), want);
    }
    assert_eq!(pf.state(), a.state());
}

#[test]
fn training_on_a_pack_gives_the_weights_of_training_in_memory() {
    let dir = TempDir::new("pack-train");
    let (train, test) = embedded_mnist_split().unwrap();
    let (train, test) = (
        train.subset(&(0..256).collect::<Vec<_>>()).unwrap(),
        test.subset(&(0..32).collect::<Vec<_>>()).unwrap(),
    );
    let path = dir.join("digits.tfpack");
    write_pack(&path, &train, &test, &[]).unwrap();
    let run = |out: &str, train: Dataset, test: Dataset| {
        let mut c = TrainConfig::preset("tiny").unwrap();
        (c.steps, c.batch_size, c.warmup_steps) = (3, 16, 1);
        (c.eval_every, c.sample_every, c.checkpoint_every) = (0, 0, 0);
        c.eval_images = 32;
        c.out_dir = dir.join(out);
        let mut t = Trainer::new(c, train, test).unwrap();
        for _ in 0..3 {
            // The loader path the run uses: a prefetcher over the trainer's data.
            t.run_until(t.step + 1, |_| {}).unwrap();
        }
        t.model.export_parameters()
    };
    let (ptr, pte) = PackedData::open(&path).unwrap().split().unwrap();
    assert!(ptr.is_mapped());
    assert_eq!(run("memory", train, test), run("mapped", ptr, pte));
}

#[test]
fn packing_the_embedded_digits_keeps_their_split() {
    let dir = TempDir::new("pack-mnist");
    let out = dir.join("mnist.tfpack");
    let h = pack_data(None, 1, 28, &out).unwrap();
    assert_eq!((h.count, h.test_count, h.num_classes), (10_000, 1_000, 10));
    let (tr, te) = open_data(Some(&out), 1, 28).unwrap();
    let (etr, ete) = embedded_mnist_split().unwrap();
    assert!(tr.is_mapped());
    assert_eq!((tr, te), (etr, ete));
    // A pack is not packed again.
    let e = pack_data(Some(&out), 1, 28, &dir.join("again.tfpack")).unwrap_err();
    assert!(e.to_string().contains("already a tarflow pack"), "{e}");
}

#[test]
fn every_truncation_is_a_format_error_naming_the_file() {
    let dir = TempDir::new("pack-truncate");
    let (path, _, _) = small_pack(&dir);
    let bytes = std::fs::read(&path).unwrap();
    let h = PackedData::open(&path).unwrap().header().clone();
    let names_end = (h.names_offset + h.names_len) as usize;
    let labels_end = (h.labels_offset + 4 * h.count) as usize;
    let cut_at = [
        0,
        1,
        7,
        8,
        12,
        HEADER_LEN - 1,
        HEADER_LEN,
        names_end - 1,
        names_end,
        h.labels_offset as usize,
        h.labels_offset as usize + 1,
        labels_end,
        h.pixels_offset as usize - 1,
        h.pixels_offset as usize,
        h.pixels_offset as usize + 1,
        h.file_len as usize - 1,
    ];
    let cut = dir.join("cut.tfpack");
    for n in cut_at {
        std::fs::write(&cut, &bytes[..n]).unwrap();
        let needle = if n < HEADER_LEN {
            "truncated"
        } else {
            "truncated: the file is"
        };
        assert_format(PackedData::open(&cut), &cut, needle);
        // The training entry point reports it too, without a panic.
        if n >= 8 {
            assert!(matches!(
                open_data(Some(&cut), 1, 28),
                Err(Error::Format { .. })
            ));
        }
    }
    let mut longer = bytes.clone();
    longer.push(0);
    std::fs::write(&cut, &longer).unwrap();
    assert_format(PackedData::open(&cut), &cut, "1 bytes follow the end");
}

#[test]
fn every_flipped_header_or_label_byte_is_caught() {
    let dir = TempDir::new("pack-flip");
    let (path, _, _) = small_pack(&dir);
    let bytes = std::fs::read(&path).unwrap();
    let h = PackedData::open(&path).unwrap().header().clone();
    let bad = dir.join("bad.tfpack");
    // Every bit-flip of the header, the names and the labels: each one fails to open.
    for at in 0..h.pixels_offset as usize {
        for bit in [0, 7] {
            let mut b = bytes.clone();
            b[at] ^= 1 << bit;
            std::fs::write(&bad, &b).unwrap();
            match PackedData::open(&bad) {
                Err(Error::Format { what, .. }) => assert!(what.contains("bad.tfpack")),
                other => panic!("byte {at} bit {bit} flipped: {other:?}"),
            }
        }
    }
    // Named reasons for the fields, with the checksum made consistent again.
    let cases: [(usize, &[u8], &str); 6] = [
        (0, b"\x89TFPACX", "bad magic"),
        (8, &2u32.to_le_bytes(), "version 2 is not supported"),
        (12, &1u32.to_le_bytes(), "unknown header flags"),
        (24, &49u64.to_le_bytes(), "test split of 49 images"),
        (32, &0u32.to_le_bytes(), "dimensions must be positive"),
        (72, &0u64.to_le_bytes(), "pixels offset is 0"),
    ];
    for (at, value, needle) in cases {
        let mut b = bytes.clone();
        b[at..at + value.len()].copy_from_slice(value);
        reseal(&mut b, h.pixels_offset as usize);
        std::fs::write(&bad, &b).unwrap();
        assert_format(PackedData::open(&bad), &bad, needle);
    }
    let mut b = bytes.clone();
    b[h.labels_offset as usize..][..4].copy_from_slice(&99u32.to_le_bytes());
    reseal(&mut b, h.pixels_offset as usize);
    std::fs::write(&bad, &b).unwrap();
    assert_format(
        PackedData::open(&bad),
        &bad,
        "label 99 of image 0 is out of range",
    );
    let mut b = bytes.clone();
    b[HEADER_LEN..][..4].copy_from_slice(&1000u32.to_le_bytes());
    reseal(&mut b, h.pixels_offset as usize);
    std::fs::write(&bad, &b).unwrap();
    assert_format(
        PackedData::open(&bad),
        &bad,
        "class names: name 0 claims 1000",
    );
    // Pixels are checked on demand: a flipped pixel opens, and verification names it.
    let mut b = bytes.clone();
    b[h.pixels_offset as usize + 17] ^= 0x40;
    std::fs::write(&bad, &b).unwrap();
    let p = PackedData::open(&bad).unwrap();
    assert_format(p.verify_pixels(), &bad, "pixel checksum mismatch");
    // A file that is not a pack at all.
    std::fs::write(&bad, b"P5 not a pack, just some bytes that are long enough to hold a header of one hundred and four bytes, or more").unwrap();
    assert!(!is_pack(&bad).unwrap());
    assert_format(PackedData::open(&bad), &bad, "bad magic");
    let e = open_data(Some(&bad), 1, 28).unwrap_err().to_string();
    assert!(e.contains("neither a directory nor a tarflow pack"), "{e}");
    assert_eq!(&bytes[..8], &PACK_MAGIC);
}

#[test]
fn a_writer_refuses_wrong_input_and_leaves_no_file_behind() {
    let dir = TempDir::new("pack-writer");
    let out = dir.join("w.tfpack");
    let labels = [0u32, 1, 2];
    let shape = [1, 2, 2];
    assert!(PackWriter::create(&out, shape, 2, &[], &labels, 0).is_err()); // label 2 of 2
    assert!(PackWriter::create(&out, [0, 2, 2], 3, &[], &labels, 0).is_err());
    assert!(PackWriter::create(&out, shape, 3, &names(2), &labels, 0).is_err());
    assert!(PackWriter::create(&out, shape, 3, &[], &labels, 4).is_err());
    let mut w = PackWriter::create(&out, shape, 3, &[], &labels, 1).unwrap();
    assert!(w.write_images(&[1, 2, 3]).is_err()); // not whole images
    w.write_images(&[0; 8]).unwrap();
    assert!(w.write_images(&[0; 8]).is_err()); // a fourth image
    assert!(w.finish().is_err()); // two of three written
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    // A complete one appears only on finish.
    let mut w = PackWriter::create(&out, shape, 3, &[], &labels, 1).unwrap();
    w.write_images(&[7; 12]).unwrap();
    assert!(!out.exists());
    w.finish().unwrap();
    let (tr, te) = PackedData::open(&out).unwrap().split().unwrap();
    assert_eq!((tr.len(), te.len(), te.labels()), (2, 1, &[2u32][..]));
}
