#![cfg(feature = "cli")]
//! Images in and out of the command-line program: labels through encode -> decode, PNG/JPEG
//! inputs and outputs, upscaled and labelled grids, and the errors for bad image input.

use std::path::{Path, PathBuf};
use std::process::Output;

mod common;

use common::cli::{ok, s, tarflow};
use common::TempDir;

use tarflow::imageio::write_png;
use tarflow::tensorio::{read_tensors, write_tensors};
use tarflow::{DType, Rng, Tensor};

/// The stderr of a command that must fail, checked to name every word of `words`.
fn fails(out: &Output, words: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "succeeded: {err}");
    assert!(!err.contains("panicked"), "{err}");
    for w in words {
        assert!(err.contains(w), "{w:?} not in {err:?}");
    }
}

/// A tiny class-conditional (10 classes, 1x28x28) model whose flow is far from the identity.
fn model(dir: &TempDir) -> PathBuf {
    let ck = dir.join("tiny.safetensors");
    ok(&tarflow(&[
        "init",
        "--preset",
        "tiny",
        "--out",
        s(&ck),
        "--randomize-output",
        "0.05",
    ]));
    ck
}

/// 28x28 gray digits-like images with every byte value present somewhere.
fn pixels(seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    (0..28 * 28)
        .map(|i| {
            if i < 256 {
                i as u8
            } else {
                (rng.uniform() * 256.0) as u8
            }
        })
        .collect()
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    common::worst(a.iter().zip(b).map(|(x, y)| (x - y).abs()))
}

/// `encode` writes the input's labels beside z, and `decode` of that very file inverts with
/// them: the class-conditional round trip is exact (it used to decode unconditionally).
#[test]
fn encode_keeps_the_labels_and_decode_uses_them() {
    let dir = TempDir::new("cli-images-labels");
    let ck = model(&dir);
    let x = Tensor::<f32>::rand(&[3, 1, 28, 28], -1.0, 1.0, &mut Rng::new(1));
    let labels = Tensor::<f32>::from_vec(vec![3.0, -1.0, 7.0], &[3]).unwrap();
    let xin = dir.join("x.safetensors");
    write_tensors(&xin, &[("x", &x), ("labels", &labels)], DType::F32).unwrap();
    let zf = dir.join("z.safetensors");
    ok(&tarflow(&[
        "encode",
        "--checkpoint",
        s(&ck),
        "--input",
        s(&xin),
        "--output",
        s(&zf),
    ]));
    let z = read_tensors::<f32>(&zf).unwrap();
    assert_eq!(z["labels"].to_vec(), labels.to_vec());

    let xf = dir.join("back.safetensors");
    ok(&tarflow(&[
        "decode",
        "--checkpoint",
        s(&ck),
        "--input",
        s(&zf),
        "--output",
        s(&xf),
    ]));
    let back = read_tensors::<f64>(&xf).unwrap()["x"].to_vec();
    let err = max_abs_diff(&back, &x.to_f64_vec());
    assert!(err < 1e-4, "round trip with labels: error {err}");

    // The same latents decoded without their labels give other images: the labels matter,
    // so the round trip above is evidence that decode used them.
    let bare = dir.join("bare.safetensors");
    write_tensors(&bare, &[("z", &z["z"])], DType::F32).unwrap();
    let xf2 = dir.join("uncond.safetensors");
    ok(&tarflow(&[
        "decode",
        "--checkpoint",
        s(&ck),
        "--input",
        s(&bare),
        "--output",
        s(&xf2),
    ]));
    let uncond = read_tensors::<f64>(&xf2).unwrap()["x"].to_vec();
    let per = 28 * 28;
    let labelled = max_abs_diff(&uncond[..per], &x.to_f64_vec()[..per]);
    assert!(
        labelled > 1e-3,
        "image 0 (class 3) decoded without its label: error {labelled}"
    );
}

/// A PNG goes in, its latents come out with the file name, and a PNG of the decoded latents
/// holds the same bytes; a folder gives one latent per image, labelled by --class.
#[test]
fn png_files_and_folders_round_trip_through_encode_and_decode() {
    let dir = TempDir::new("cli-images-png");
    let ck = model(&dir);
    let folder = dir.join("digits");
    std::fs::create_dir_all(&folder).unwrap();
    let (a, b) = (pixels(2), pixels(3));
    write_png(folder.join("a.png"), &a, 28, 28, 1).unwrap();
    write_png(folder.join("b.png"), &b, 28, 28, 1).unwrap();

    let zf = dir.join("z.safetensors");
    let one = folder.join("b.png");
    ok(&tarflow(&[
        "encode",
        "--checkpoint",
        s(&ck),
        "--input",
        s(&one),
        "--output",
        s(&zf),
        "--dtype",
        "f64",
    ]));
    let z = read_tensors::<f64>(&zf).unwrap();
    assert_eq!(z["z"].shape(), &[1, 1, 28, 28]);
    assert_eq!(z["labels"].to_vec(), vec![-1.0]);
    let png = dir.join("back.png");
    ok(&tarflow(&[
        "decode",
        "--checkpoint",
        s(&ck),
        "--input",
        s(&zf),
        "--output",
        s(&png),
        "--dtype",
        "f64",
    ]));
    let img = image::open(&png).unwrap().to_luma8();
    assert_eq!(img.dimensions(), (28 + 4, 28 + 4), "one cell, padding 2");
    let cell: Vec<u8> = (0..28)
        .flat_map(|y| (0..28).map(move |x| (x, y)))
        .map(|(x, y)| img.get_pixel(x + 2, y + 2).0[0])
        .collect();
    assert_eq!(cell, b, "decode(encode(png)) changed pixels");

    let zf = dir.join("zs.safetensors");
    ok(&tarflow(&[
        "encode",
        "--checkpoint",
        s(&ck),
        "--input",
        s(&folder),
        "--output",
        s(&zf),
        "--class",
        "4",
    ]));
    let z = read_tensors::<f32>(&zf).unwrap();
    assert_eq!(z["z"].shape(), &[2, 1, 28, 28]);
    assert_eq!(z["labels"].to_vec(), vec![4.0, 4.0]);
    let bytes = std::fs::read(&zf).unwrap();
    let header = String::from_utf8_lossy(&bytes[..2000.min(bytes.len())]);
    assert!(
        header.contains("a.png") && header.contains("b.png"),
        "{header}"
    );

    // JPEG out, and one PNG per image at twice the size.
    let jpg = dir.join("back.jpg");
    let each = dir.join("each");
    ok(&tarflow(&[
        "decode",
        "--checkpoint",
        s(&ck),
        "--input",
        s(&zf),
        "--output",
        s(&jpg),
        "--out-dir",
        s(&each),
        "--scale",
        "2",
    ]));
    let bytes = std::fs::read(&jpg).unwrap();
    assert_eq!(&bytes[..3], &[0xFF, 0xD8, 0xFF], "JPEG magic");
    assert_eq!(image::open(&jpg).unwrap().width(), 2 * 56 + 3 * 2);
    let second = image::open(each.join("image_0001.png")).unwrap().to_luma8();
    assert_eq!(second.dimensions(), (56, 56));
    // Within JPEG's loss of the folder's second image, pixel (2x, 2y) is image b's (x, y).
    assert_eq!(second.get_pixel(20, 30).0[0], second.get_pixel(21, 31).0[0]);
}

/// `sample --out x.jpg` writes a JPEG, any other extension is refused before sampling, and
/// --scale and the row labels change the grid as documented.
#[test]
fn sample_grids_are_jpeg_or_png_upscaled_and_labelled() {
    let dir = TempDir::new("cli-images-sample");
    let ck = model(&dir);
    let run = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "sample",
            "--checkpoint",
            s(&ck),
            "--num",
            "1",
            "--out",
            s(out),
        ];
        args.extend_from_slice(extra);
        tarflow(&args)
    };
    let jpg = dir.join("grid.jpg");
    ok(&run(&jpg, &[]));
    assert_eq!(&std::fs::read(&jpg).unwrap()[..3], &[0xFF, 0xD8, 0xFF]);

    let gif = dir.join("grid.gif");
    fails(
        &run(&gif, &[]),
        &["--out", "grid.gif", ".png, .jpg or .jpeg"],
    );
    assert!(!gif.exists());
    fails(&run(&dir.join("grid"), &[]), &["--out", "grid:", ".jpg"]);
    fails(&run(&jpg, &["--scale", "0"]), &["--scale 0", "1..=16"]);

    // 10 classes x 1 sample: one cell per row; labels add a margin on the left only.
    let plain = dir.join("plain.png");
    ok(&run(&plain, &["--no-row-labels"]));
    let labelled = dir.join("labelled.png");
    ok(&run(&labelled, &[]));
    let big = dir.join("big.png");
    ok(&run(&big, &["--scale", "3", "--no-row-labels"]));
    let p = image::open(&plain).unwrap().to_luma8();
    let l = image::open(&labelled).unwrap().to_luma8();
    let g = image::open(&big).unwrap().to_luma8();
    assert_eq!(p.dimensions(), (28 + 4, 10 * 30 + 2));
    assert_eq!(g.dimensions(), (3 * 28 + 4, 10 * (3 * 28 + 2) + 2));
    assert_eq!(l.height(), p.height());
    let margin = l.width() - p.width();
    assert!(margin > 0);
    // The samples are the same (same seed); the margin of each row holds ink (its digit).
    for y in 0..p.height() {
        for x in 0..p.width() {
            assert_eq!(l.get_pixel(x + margin, y), p.get_pixel(x, y));
        }
    }
    for row in 0..10u32 {
        let ink = (row * 30 + 2..row * 30 + 30)
            .flat_map(|y| (0..margin).map(move |x| (x, y)))
            .filter(|&(x, y)| l.get_pixel(x, y).0[0] == 0)
            .count();
        assert!(ink > 0, "row {row} has no label");
    }
}

#[test]
fn bad_image_input_names_the_file_and_the_problem() {
    let dir = TempDir::new("cli-images-bad");
    let ck = model(&dir);
    let out = dir.join("z.safetensors");
    let encode = |input: &Path, extra: &[&str]| {
        let mut args = vec![
            "encode",
            "--checkpoint",
            s(&ck),
            "--input",
            s(input),
            "--output",
            s(&out),
        ];
        args.extend_from_slice(extra);
        tarflow(&args)
    };
    let corrupt = dir.join("corrupt.png");
    std::fs::write(&corrupt, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    fails(&encode(&corrupt, &[]), &["corrupt.png", "cannot"]);

    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("notes.txt"), b"no images here").unwrap();
    fails(
        &encode(&empty, &[]),
        &["empty", "no .png/.jpg/.jpeg images"],
    );

    let good = dir.join("good.png");
    write_png(&good, &pixels(5), 28, 28, 1).unwrap();
    fails(&encode(&good, &["--class", "10"]), &["--class 10", "0..=9"]);

    let x = Tensor::<f32>::zeros(&[1, 1, 28, 28]);
    let xin = dir.join("x.safetensors");
    write_tensors(&xin, &[("x", &x)], DType::F32).unwrap();
    fails(
        &encode(&xin, &["--class", "1"]),
        &["--class 1", "PNG/JPEG input"],
    );
    assert!(!out.exists(), "an output was written");

    // An image format the writers do not produce is refused, not written as safetensors.
    let gif = dir.join("x.gif");
    let z = Tensor::<f32>::zeros(&[1, 1, 28, 28]);
    let zin = dir.join("z.safetensors");
    write_tensors(&zin, &[("z", &z)], DType::F32).unwrap();
    fails(
        &tarflow(&[
            "decode",
            "--checkpoint",
            s(&ck),
            "--input",
            s(&zin),
            "--output",
            s(&gif),
        ]),
        &["--output", "x.gif", ".png, .jpg or .jpeg"],
    );
    assert!(!gif.exists());
}
