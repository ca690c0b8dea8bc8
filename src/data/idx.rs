//! The IDX format of the MNIST files: a big-endian header (magic, then one `u32` per
//! dimension) followed by the raw array.
//!
//! Images use magic `0x00000803` (unsigned bytes, 3 dimensions: count, rows, columns), labels
//! `0x00000801` (unsigned bytes, 1 dimension: count). Files may be gzip-compressed; the gzip
//! magic is detected, so the official `train-images-idx3-ubyte.gz` and its uncompressed twin
//! both load as they are.

use std::borrow::Cow;
use std::io::{Read, Write};
use std::path::Path;

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;

use super::{read_file, Dataset};
use crate::error::{Error, Result};

/// Magic number of an IDX array of unsigned bytes with 3 dimensions (images).
pub const IDX_IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX array of unsigned bytes with 1 dimension (labels).
pub const IDX_LABELS_MAGIC: u32 = 0x0000_0801;

/// Largest decompressed stream accepted (1 GiB). The full 60k MNIST training images are
/// 47 MB; the cap stops a small compressed input from expanding without bound.
pub const MAX_DECOMPRESSED: u64 = 1 << 30;

/// Images read from an IDX file: `count` images of `rows x cols` bytes, row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxImages {
    /// Number of images.
    pub count: usize,
    /// Height of each image in pixels.
    pub rows: usize,
    /// Width of each image in pixels.
    pub cols: usize,
    /// `count * rows * cols` bytes: image `i` is `pixels[i*rows*cols .. (i+1)*rows*cols]`.
    pub pixels: Vec<u8>,
}

/// Returns `bytes` decompressed when they start with the gzip magic, unchanged otherwise.
///
/// The output is capped at [`MAX_DECOMPRESSED`] bytes; a longer stream is an error.
pub fn maybe_gunzip<'a>(bytes: &'a [u8], name: &str) -> Result<Cow<'a, [u8]>> {
    if bytes.len() < 2 || bytes[0] != 0x1f || bytes[1] != 0x8b {
        return Ok(Cow::Borrowed(bytes));
    }
    let mut out = Vec::new();
    GzDecoder::new(bytes)
        .take(MAX_DECOMPRESSED + 1)
        .read_to_end(&mut out)
        .map_err(|e| Error::format(name, format!("invalid gzip stream: {e}")))?;
    if out.len() as u64 > MAX_DECOMPRESSED {
        return Err(Error::format(
            name,
            format!("decompresses to more than {MAX_DECOMPRESSED} bytes"),
        ));
    }
    Ok(Cow::Owned(out))
}

/// Splits an IDX header with the expected magic and dimension count from its payload.
fn header<'a>(
    bytes: &'a [u8],
    name: &str,
    magic: u32,
    kind: &str,
) -> Result<(Vec<usize>, &'a [u8])> {
    let ndim = (magic & 0xff) as usize;
    let head_len = 4 + 4 * ndim;
    if bytes.len() < head_len {
        return Err(Error::format(
            name,
            format!(
                "truncated IDX {kind} header: {} bytes, need {head_len}",
                bytes.len()
            ),
        ));
    }
    let word = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let found = word(0);
    if found != magic {
        return Err(Error::format(
            name,
            format!("bad IDX magic {found:#010x}, expected {magic:#010x} ({kind})"),
        ));
    }
    let dims = (0..ndim).map(|d| word(4 + 4 * d) as usize).collect();
    Ok((dims, &bytes[head_len..]))
}

/// Checks that the payload holds exactly `product(dims)` bytes, without overflowing.
fn check_payload(name: &str, kind: &str, dims: &[usize], payload: &[u8]) -> Result<()> {
    let expected = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    match expected {
        Some(e) if e == payload.len() => Ok(()),
        Some(e) if e > payload.len() => Err(Error::format(
            name,
            format!(
                "truncated: header claims {kind} of dimensions {dims:?} ({e} bytes) but only {} \
                 bytes follow",
                payload.len()
            ),
        )),
        Some(e) => Err(Error::format(
            name,
            format!(
                "{} unexpected bytes after the {kind} of dimensions {dims:?}",
                payload.len() - e
            ),
        )),
        None => Err(Error::format(
            name,
            format!("header dimensions {dims:?} overflow the address space"),
        )),
    }
}

/// Parses an IDX image file (gzip or raw) held in memory; `name` is used in errors.
pub fn parse_idx_images(bytes: &[u8], name: &str) -> Result<IdxImages> {
    let raw = maybe_gunzip(bytes, name)?;
    let (dims, payload) = header(&raw, name, IDX_IMAGES_MAGIC, "images")?;
    check_payload(name, "images", &dims, payload)?;
    let (count, rows, cols) = (dims[0], dims[1], dims[2]);
    if count > 0 && (rows == 0 || cols == 0) {
        return Err(Error::format(
            name,
            format!("{count} images of zero size {rows}x{cols}"),
        ));
    }
    Ok(IdxImages {
        count,
        rows,
        cols,
        pixels: payload.to_vec(),
    })
}

/// Parses an IDX label file (gzip or raw) held in memory; `name` is used in errors.
pub fn parse_idx_labels(bytes: &[u8], name: &str) -> Result<Vec<u32>> {
    let raw = maybe_gunzip(bytes, name)?;
    let (dims, payload) = header(&raw, name, IDX_LABELS_MAGIC, "labels")?;
    check_payload(name, "labels", &dims, payload)?;
    Ok(payload.iter().map(|&b| u32::from(b)).collect())
}

/// Pairs parsed images and labels into a single-channel [`Dataset`].
///
/// `num_classes` is given by the caller when known (10 for MNIST); `None` takes the largest
/// label plus one. `name` is used in errors.
pub fn idx_dataset(
    images: IdxImages,
    labels: Vec<u32>,
    num_classes: Option<usize>,
    name: &str,
) -> Result<Dataset> {
    if images.count != labels.len() {
        return Err(Error::format(
            name,
            format!("{} images but {} labels", images.count, labels.len()),
        ));
    }
    if images.count == 0 {
        return Err(Error::format(name, "no images"));
    }
    let num_classes =
        num_classes.unwrap_or_else(|| labels.iter().max().map_or(0, |&m| m as usize + 1));
    Dataset::new(
        name,
        images.pixels,
        labels,
        num_classes,
        1,
        images.rows,
        images.cols,
    )
}

/// Loads an IDX image file and its label file (each gzip or raw) into a [`Dataset`] whose
/// number of classes is the largest label plus one.
pub fn load_idx_pair(
    images_path: impl AsRef<Path>,
    labels_path: impl AsRef<Path>,
) -> Result<Dataset> {
    let (ip, lp) = (images_path.as_ref(), labels_path.as_ref());
    let iname = ip.display().to_string();
    let lname = lp.display().to_string();
    let images = parse_idx_images(&read_file(ip)?, &iname)?;
    let labels = parse_idx_labels(&read_file(lp)?, &lname)?;
    idx_dataset(images, labels, None, &format!("{iname} + {lname}"))
}

/// Encodes `n` images of `rows x cols` bytes as an uncompressed IDX image file.
pub fn encode_idx_images(pixels: &[u8], n: usize, rows: usize, cols: usize) -> Result<Vec<u8>> {
    let dims = [n, rows, cols];
    let fits = dims.iter().all(|&d| u32::try_from(d).is_ok());
    if !fits || n.checked_mul(rows).and_then(|x| x.checked_mul(cols)) != Some(pixels.len()) {
        return Err(Error::arg(
            "encode_idx_images",
            format!(
                "{} bytes do not make {n} images of {rows}x{cols} (each dimension must fit in u32)",
                pixels.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(16 + pixels.len());
    out.extend_from_slice(&IDX_IMAGES_MAGIC.to_be_bytes());
    for d in dims {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(pixels);
    Ok(out)
}

/// Encodes labels (each below 256) as an uncompressed IDX label file.
pub fn encode_idx_labels(labels: &[u32]) -> Result<Vec<u8>> {
    let n = u32::try_from(labels.len())
        .map_err(|_| Error::arg("encode_idx_labels", "more than u32::MAX labels"))?;
    let mut out = Vec::with_capacity(8 + labels.len());
    out.extend_from_slice(&IDX_LABELS_MAGIC.to_be_bytes());
    out.extend_from_slice(&n.to_be_bytes());
    for (i, &l) in labels.iter().enumerate() {
        let b = u8::try_from(l).map_err(|_| {
            Error::arg(
                "encode_idx_labels",
                format!("label {l} of item {i} does not fit in a byte"),
            )
        })?;
        out.push(b);
    }
    Ok(out)
}

/// Gzip-compresses `bytes` with a fixed header (no name, mtime 0), so equal input gives equal
/// files.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::best());
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(bytes);
    enc.finish().unwrap_or_default()
}

/// Writes a single-channel data set as an IDX image file and an IDX label file, gzipped when
/// `compress` is set.
pub fn write_idx_pair(
    dataset: &Dataset,
    images_path: impl AsRef<Path>,
    labels_path: impl AsRef<Path>,
    compress: bool,
) -> Result<()> {
    if dataset.channels != 1 {
        return Err(Error::arg(
            "write_idx_pair",
            format!(
                "IDX image files hold one channel, the data set has {}",
                dataset.channels
            ),
        ));
    }
    let images = encode_idx_images(
        &dataset.images,
        dataset.len(),
        dataset.height,
        dataset.width,
    )?;
    let labels = encode_idx_labels(&dataset.labels)?;
    for (path, bytes) in [
        (images_path.as_ref(), images),
        (labels_path.as_ref(), labels),
    ] {
        let bytes = if compress { gzip(&bytes) } else { bytes };
        std::fs::write(path, bytes).map_err(|e| Error::io(path, e))?;
    }
    Ok(())
}
