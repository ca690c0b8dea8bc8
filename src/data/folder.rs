//! A folder of PNG/JPEG images as a labelled data set.
//!
//! Layout: either one subfolder per class (labels are the positions of the subfolder names in
//! byte-wise sorted order) or a flat folder of images (a single class 0). Files are taken in
//! sorted name order; files without a `.png`, `.jpg` or `.jpeg` extension (any case) and names
//! starting with `.` are skipped.
//!
//! Every image goes through [`decode_image`]: decoded, converted to grayscale or RGB, scaled
//! (aspect preserved) so that it just covers the target size, and centre-cropped to it.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use image::{ImageReader, Limits};
use rayon::prelude::*;

use super::{read_file, Dataset};
use crate::error::{Error, Result};
use crate::tensor::layout::checked_product;

/// Largest width or height a source image may declare; bounds decoder allocations on
/// untrusted files.
pub const MAX_DECODE_SIDE: u32 = 16_384;
/// Largest decoded buffer (in bytes) a source image may need.
pub const MAX_DECODE_BYTES: u64 = 256 << 20;

/// A data set read from a folder, with what is needed to trace an image back to its file.
#[derive(Clone, Debug)]
pub struct ImageFolder {
    /// The decoded images, all scaled and cropped to one size, with their labels.
    pub dataset: Dataset,
    /// Class names, indexed by label: the subfolder names, or the folder's own name for a flat
    /// folder.
    pub classes: Vec<String>,
    /// Source file of each image, in data set order.
    pub files: Vec<PathBuf>,
}

fn is_image_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    !name.starts_with('.')
        && (lower.ends_with(".png") || lower.ends_with(".jpg") || lower.ends_with(".jpeg"))
}

/// Sorted subfolders `(name, path)` and image files of one directory.
struct DirEntries {
    dirs: Vec<(String, PathBuf)>,
    files: Vec<PathBuf>,
}

/// The image files under a folder and their labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FolderListing {
    /// Class names, indexed by label.
    pub classes: Vec<String>,
    /// Every image file with its label, in data set order.
    pub items: Vec<(PathBuf, u32)>,
}

/// Sorted entries of `dir`, hidden names skipped.
fn list_dir(dir: &Path) -> Result<DirEntries> {
    let mut dirs = Vec::new();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        // Follows symbolic links, so a folder of links to images works.
        if path.is_dir() {
            dirs.push((name, path));
        } else if is_image_name(&name) {
            files.push(path);
        }
    }
    dirs.sort();
    files.sort();
    Ok(DirEntries { dirs, files })
}

/// The images under `dir` with their labels, and the class names (see the module docs).
pub fn list_image_folder(dir: impl AsRef<Path>) -> Result<FolderListing> {
    let dir = dir.as_ref();
    let DirEntries {
        dirs: subdirs,
        files: loose,
    } = list_dir(dir)?;
    if subdirs.is_empty() {
        let name = dir
            .file_name()
            .map_or_else(|| "0".to_string(), |n| n.to_string_lossy().into_owned());
        return Ok(FolderListing {
            classes: vec![name],
            items: loose.into_iter().map(|p| (p, 0)).collect(),
        });
    }
    if let Some(f) = loose.first() {
        return Err(Error::format(
            dir.display().to_string(),
            format!(
                "mixes class subfolders with loose images (e.g. {}); put every image in a \
                 class folder, or use a flat folder",
                f.display()
            ),
        ));
    }
    let num_classes = u32::try_from(subdirs.len())
        .map_err(|_| Error::format(dir.display().to_string(), "too many class folders"))?;
    let mut items = Vec::new();
    let mut classes = Vec::with_capacity(subdirs.len());
    for (label, (name, path)) in (0..num_classes).zip(subdirs) {
        let files = list_dir(&path)?.files;
        items.extend(files.into_iter().map(|p| (p, label)));
        classes.push(name);
    }
    Ok(FolderListing { classes, items })
}

fn check_target(op: &'static str, channels: usize, height: usize, width: usize) -> Result<()> {
    if channels != 1 && channels != 3 {
        return Err(Error::arg(
            op,
            format!("channels must be 1 (grayscale) or 3 (RGB), got {channels}"),
        ));
    }
    if height == 0 || width == 0 || u32::try_from(height.max(width)).is_err() {
        return Err(Error::arg(
            op,
            format!("target size {height}x{width} must be positive and fit in u32"),
        ));
    }
    // Bounds the resized buffer as the decoder limits bound the source.
    let bytes = checked_product([channels, height, width]);
    if bytes.is_none_or(|b| b as u64 > MAX_DECODE_BYTES) {
        return Err(Error::arg(
            op,
            format!(
                "target size {channels}x{height}x{width} exceeds {MAX_DECODE_BYTES} bytes per image"
            ),
        ));
    }
    Ok(())
}

/// The centred region of a `w x h` source with the aspect ratio of `tw x th`: the part that
/// survives "scale until the target is covered, then centre-crop". Cropping first and scaling
/// the region gives the same image up to rounding, with allocations bounded by the target size
/// even for extreme aspect ratios.
fn centre_region(w: u32, h: u32, tw: u32, th: u32) -> (u32, u32, u32, u32) {
    let (w64, h64, tw64, th64) = (w as u64, h as u64, tw as u64, th as u64);
    if w64 * th64 >= h64 * tw64 {
        // Source relatively wider: keep full height.
        let cw = ((h64 * tw64 + th64 / 2) / th64).clamp(1, w64) as u32;
        ((w - cw) / 2, 0, cw, h)
    } else {
        let ch = ((w64 * th64 + tw64 / 2) / tw64).clamp(1, h64) as u32;
        (0, (h - ch) / 2, w, ch)
    }
}

/// Decodes one PNG or JPEG held in memory to `channels x height x width` bytes
/// (channel-major), converting to grayscale (`channels == 1`) or RGB (`3`; alpha is dropped),
/// then scaling so the image covers the target with its aspect ratio kept and cropping the
/// centre. `name` is used in errors.
pub fn decode_image(
    bytes: &[u8],
    name: &str,
    channels: usize,
    height: usize,
    width: usize,
) -> Result<Vec<u8>> {
    check_target("decode_image", channels, height, width)?;
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::format(name, format!("cannot read image: {e}")))?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_DECODE_SIDE);
    limits.max_image_height = Some(MAX_DECODE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let img = reader
        .decode()
        .map_err(|e| Error::format(name, format!("cannot decode image: {e}")))?;
    let (w, h) = (img.width(), img.height());
    if w == 0 || h == 0 {
        return Err(Error::format(name, format!("empty image ({w}x{h})")));
    }
    let (tw, th) = (width as u32, height as u32);
    let (x0, y0, cw, ch) = centre_region(w, h, tw, th);
    let cropped = img.crop_imm(x0, y0, cw, ch);
    let out = if channels == 1 {
        image::imageops::resize(&cropped.to_luma8(), tw, th, FilterType::Triangle).into_raw()
    } else {
        let rgb = cropped.to_rgb8();
        let hwc = image::imageops::resize(&rgb, tw, th, FilterType::Triangle).into_raw();
        // Interleaved RGB to channel planes.
        let plane = height * width;
        let mut chw = vec![0u8; 3 * plane];
        for (p, px) in hwc.chunks_exact(3).enumerate() {
            chw[p] = px[0];
            chw[plane + p] = px[1];
            chw[2 * plane + p] = px[2];
        }
        chw
    };
    Ok(out)
}

/// Loads every image under `dir` (see the module docs for the layout) as
/// `channels x height x width` bytes. Images are decoded in parallel; the first unreadable
/// file in data set order is reported by path.
pub fn load_image_folder(
    dir: impl AsRef<Path>,
    channels: usize,
    height: usize,
    width: usize,
) -> Result<ImageFolder> {
    check_target("load_image_folder", channels, height, width)?;
    let dir = dir.as_ref();
    let FolderListing { classes, items } = list_image_folder(dir)?;
    if items.is_empty() {
        return Err(Error::format(
            dir.display().to_string(),
            "no .png/.jpg/.jpeg images found",
        ));
    }
    let decoded: Vec<Result<Vec<u8>>> = items
        .par_iter()
        .map(|(path, _)| {
            let bytes = read_file(path)?;
            decode_image(&bytes, &path.display().to_string(), channels, height, width)
        })
        .collect();
    let mut images = Vec::with_capacity(items.len() * channels * height * width);
    for r in decoded {
        images.extend_from_slice(&r?);
    }
    let labels = items.iter().map(|(_, l)| *l).collect();
    let dataset = Dataset::new(
        &dir.display().to_string(),
        images,
        labels,
        classes.len(),
        channels,
        height,
        width,
    )?;
    Ok(ImageFolder {
        dataset,
        classes,
        files: items.into_iter().map(|(p, _)| p).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::centre_region;

    #[test]
    fn centre_region_keeps_target_aspect() {
        // Wide source, square target: full height, centred width.
        assert_eq!(centre_region(40, 20, 8, 8), (10, 0, 20, 20));
        // Tall source, square target.
        assert_eq!(centre_region(10, 30, 4, 4), (0, 10, 10, 10));
        // Same aspect: everything.
        assert_eq!(centre_region(64, 32, 16, 8), (0, 0, 64, 32));
        // Extreme aspect never yields an empty region.
        assert_eq!(centre_region(1, 10_000, 32, 32), (0, 4999, 1, 1));
        assert_eq!(centre_region(10_000, 1, 3, 1), (4998, 0, 3, 1));
    }
}
