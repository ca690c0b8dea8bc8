//! `tarflow pack`: any `--data` source written once into a memory-mapped `.tfpack` file.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;

use super::out::say;
use tarflow::data::{PackHeader, PackWriter, PackedData};
use tarflow::train::pack_data;
use tarflow::{Error, Result, Rng};

#[derive(Args)]
pub struct PackArgs {
    /// Data to pack: a directory of IDX files, CIFAR-10 batches or images (default: the
    /// embedded MNIST digits). The train/test split `train --data DIR` uses is kept.
    #[arg(long)]
    data: Option<PathBuf>,
    /// The pack file to write (`train/eval --data FILE` read it).
    #[arg(long)]
    out: PathBuf,
    /// The preset whose image size and channels a folder of images is scaled to (the preset
    /// `train` will use), e.g. imagenet64 for 3x64x64.
    #[arg(long, default_value = "mnist")]
    preset: String,
    /// Image height and width for a folder of images [default: the preset's].
    #[arg(long)]
    image_size: Option<usize>,
    /// Channels for a folder of images, 1 (gray) or 3 (RGB) [default: the preset's].
    #[arg(long)]
    channels: Option<usize>,
    /// Replace --out when it exists.
    #[arg(long)]
    overwrite: bool,
    /// After writing, read every pixel back and check the pixel checksum.
    #[arg(long)]
    verify: bool,
    /// Instead of --data: N images of uniformly random pixels of the preset's shape with
    /// random labels of 1,000 classes (every 20th a test image), to measure the loader at
    /// scale without the data set.
    #[arg(long, value_name = "N", conflicts_with = "data")]
    synthetic: Option<usize>,
}

impl PackArgs {
    /// `(channels, size)` a folder of images is scaled to.
    fn target(&self) -> Result<(usize, usize)> {
        let m = super::shape::preset_model(&self.preset)?;
        Ok((
            self.channels.unwrap_or(m.channels),
            self.image_size.unwrap_or(m.image_size),
        ))
    }

    /// Checks that read no data: the preset, the target shape, the output path.
    pub fn check(&self) -> Result<()> {
        let (c, s) = self.target()?;
        if c != 1 && c != 3 {
            return Err(Error::arg(
                "pack",
                format!("--channels {c}: expected 1 (gray) or 3 (RGB)"),
            ));
        }
        if s == 0 {
            return Err(Error::arg("pack", "--image-size 0: expected at least 1"));
        }
        if self.synthetic == Some(0) {
            return Err(Error::arg(
                "pack",
                "--synthetic 0: expected at least 1 image",
            ));
        }
        if self.out.is_dir() {
            return Err(Error::arg(
                "pack",
                format!(
                    "--out {} is a directory, expected a file",
                    self.out.display()
                ),
            ));
        }
        Ok(())
    }
}

pub fn pack(a: PackArgs) -> Result<()> {
    if a.out.exists() && !a.overwrite {
        return Err(Error::Config(format!(
            "--out {} exists; give --overwrite to replace it",
            a.out.display()
        )));
    }
    let (c, s) = a.target()?;
    let t0 = Instant::now();
    let h = match a.synthetic {
        Some(n) => pack_synthetic(n, [c, s, s], &a.out)?,
        None => pack_data(a.data.as_deref(), c, s, &a.out)?,
    };
    let secs = t0.elapsed().as_secs_f64();
    // Reading the result back checks what was written, as a reader will see it.
    let pack = PackedData::open(&a.out)?;
    if a.verify {
        pack.verify_pixels()?;
    }
    say!(
        "packed {} images ({} train, {} test) of {}x{}x{}, {} classes -> {} ({:.1} MB, {:.1}s, \
         {:.0} images/s{})",
        h.count,
        h.count - h.test_count,
        h.test_count,
        h.channels,
        h.height,
        h.width,
        h.num_classes,
        a.out.display(),
        h.file_len as f64 / 1e6,
        secs,
        h.count as f64 / secs.max(1e-9),
        if a.verify { ", pixels verified" } else { "" }
    );
    Ok(())
}

/// `--synthetic N`: random pixels and labels, written in chunks so memory stays small.
fn pack_synthetic(n: usize, shape: [usize; 3], out: &std::path::Path) -> Result<PackHeader> {
    const CLASSES: usize = 1000;
    let mut rng = Rng::new(0x5eed);
    let labels: Vec<u32> = (0..n).map(|_| rng.below(CLASSES as u64) as u32).collect();
    let mut w = PackWriter::create(out, shape, CLASSES, &[], &labels, n / 20)?;
    let per = shape.iter().product::<usize>();
    let mut left = n;
    while left > 0 {
        let k = left.min(1024);
        let mut pixels = vec![0u8; k * per];
        for word in pixels.chunks_mut(8) {
            let r = rng.next_u64().to_le_bytes();
            word.copy_from_slice(&r[..word.len()]);
        }
        w.write_images(&pixels)?;
        left -= k;
    }
    w.finish()
}
