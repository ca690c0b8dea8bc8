//! Packed data sets (`.tfpack`): every image of a data set in one file, written once by
//! `tarflow pack` and memory-mapped for training, so memory stays bounded by the operating
//! system's page cache instead of growing with the data set (ImageNet64's 1.28 M images are
//! 15.7 GB of pixels).
//!
//! The layout is in `docs/data-format.md`: a 104-byte header, the class names, the labels
//! (`u32`), then the pixels (`N*C*H*W` bytes, page-aligned so that every image of a power-of-two
//! size starts on a page boundary). The last `test_count` images are the test split.
//!
//! Opening checks everything but the pixel bytes: the magic, the version, that every offset
//! and size agrees with the counts and with the file's length, and a checksum over the header,
//! names and labels. The pixels (any byte is a valid pixel) have their own checksum, checked
//! on demand by [`PackedData::verify_pixels`] since reading them all would defeat streaming.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::Dataset;
use crate::error::{Error, Result};
use crate::tensor::layout::checked_product;

/// First bytes of every pack. The high first byte and the newline catch files mangled by a
/// text-mode transfer, as in PNG.
pub const PACK_MAGIC: [u8; 8] = *b"\x89TFPACK\n";
/// The format version this build writes and reads.
pub const PACK_VERSION: u32 = 1;
/// Bytes of the fixed header.
pub const HEADER_LEN: usize = 104;
/// Alignment of the pixel section in the file (a page on every common system).
pub const PIXEL_ALIGN: u64 = 4096;
/// Longest class name a pack stores, in bytes.
pub const MAX_CLASS_NAME: usize = 4096;

/// Byte offset of the metadata checksum in the header; it covers everything before it and
/// the names and labels sections.
const META_CHECKSUM_AT: usize = 96;

/// The fixed header of a pack: counts, image shape, and where each section is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackHeader {
    /// Number of images (train and test together).
    pub count: u64,
    /// The last `test_count` images are the test split.
    pub test_count: u64,
    /// Channels per image.
    pub channels: u32,
    /// Image height in pixels.
    pub height: u32,
    /// Image width in pixels.
    pub width: u32,
    /// Number of classes the labels range over.
    pub num_classes: u32,
    /// Byte offset of the class names (always [`HEADER_LEN`]).
    pub names_offset: u64,
    /// Bytes of the class names section (0 when the source has no names).
    pub names_len: u64,
    /// Byte offset of the labels, 8-aligned after the names.
    pub labels_offset: u64,
    /// Byte offset of the pixels, [`PIXEL_ALIGN`]-aligned after the labels.
    pub pixels_offset: u64,
    /// Length of the whole file.
    pub file_len: u64,
    /// FNV-1a 64 of the pixel bytes.
    pub pixels_checksum: u64,
    /// FNV-1a 64 of the header's first 96 bytes and of every byte from `names_offset` to
    /// `pixels_offset`.
    pub meta_checksum: u64,
}

impl PackHeader {
    /// The header of a pack of `count` images of `channels x height x width` with a names
    /// section of `names_len` bytes: every offset follows from the counts. `None` on overflow.
    fn layout(
        count: u64,
        test_count: u64,
        [channels, height, width]: [u32; 3],
        num_classes: u32,
        names_len: u64,
    ) -> Option<PackHeader> {
        let names_offset = HEADER_LEN as u64;
        let labels_offset = names_offset
            .checked_add(names_len)?
            .checked_next_multiple_of(8)?;
        let labels_end = labels_offset.checked_add(count.checked_mul(4)?)?;
        let pixels_offset = labels_end.checked_next_multiple_of(PIXEL_ALIGN)?;
        let per = u64::from(channels)
            .checked_mul(u64::from(height))?
            .checked_mul(u64::from(width))?;
        let file_len = pixels_offset.checked_add(count.checked_mul(per)?)?;
        Some(PackHeader {
            count,
            test_count,
            channels,
            height,
            width,
            num_classes,
            names_offset,
            names_len,
            labels_offset,
            pixels_offset,
            file_len,
            pixels_checksum: 0,
            meta_checksum: 0,
        })
    }

    /// Bytes per image, `C*H*W`.
    pub fn image_len(&self) -> u64 {
        u64::from(self.channels) * u64::from(self.height) * u64::from(self.width)
    }

    /// The header's bytes.
    fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&PACK_MAGIC);
        b[8..12].copy_from_slice(&PACK_VERSION.to_le_bytes());
        // 12..16: flags, none defined.
        b[16..24].copy_from_slice(&self.count.to_le_bytes());
        b[24..32].copy_from_slice(&self.test_count.to_le_bytes());
        for (at, v) in [
            (32, self.channels),
            (36, self.height),
            (40, self.width),
            (44, self.num_classes),
        ] {
            b[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
        for (at, v) in [
            (48, self.names_offset),
            (56, self.names_len),
            (64, self.labels_offset),
            (72, self.pixels_offset),
            (80, self.file_len),
            (88, self.pixels_checksum),
            (96, self.meta_checksum),
        ] {
            b[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    /// Reads and checks the header of a `file_len`-byte file; `what` names it in errors.
    fn parse(what: &str, b: &[u8], file_len: u64) -> Result<PackHeader> {
        let bad = |detail: String| Error::format(what, detail);
        if b.len() < HEADER_LEN {
            return Err(bad(format!(
                "truncated: {} bytes, a pack header alone is {HEADER_LEN}",
                b.len()
            )));
        }
        if b[0..8] != PACK_MAGIC {
            return Err(bad("not a tarflow pack (bad magic bytes)".into()));
        }
        let u32_at = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let u64_at = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(w)
        };
        let version = u32_at(8);
        if version != PACK_VERSION {
            return Err(bad(format!(
                "pack format version {version} is not supported (this build reads version \
                 {PACK_VERSION})"
            )));
        }
        let flags = u32_at(12);
        if flags != 0 {
            return Err(bad(format!(
                "unknown header flags {flags:#x} (version {PACK_VERSION} defines none)"
            )));
        }
        let h = PackHeader {
            count: u64_at(16),
            test_count: u64_at(24),
            channels: u32_at(32),
            height: u32_at(36),
            width: u32_at(40),
            num_classes: u32_at(44),
            names_offset: u64_at(48),
            names_len: u64_at(56),
            labels_offset: u64_at(64),
            pixels_offset: u64_at(72),
            file_len: u64_at(80),
            pixels_checksum: u64_at(88),
            meta_checksum: u64_at(96),
        };
        if h.channels == 0 || h.height == 0 || h.width == 0 {
            return Err(bad(format!(
                "image dimensions must be positive, header says {}x{}x{} (CxHxW)",
                h.channels, h.height, h.width
            )));
        }
        if h.count > 0 && h.num_classes == 0 {
            return Err(bad(format!(
                "{} images but 0 classes in the header",
                h.count
            )));
        }
        if h.test_count > h.count {
            return Err(bad(format!(
                "test split of {} images is larger than the {} images in the pack",
                h.test_count, h.count
            )));
        }
        let expected = PackHeader::layout(
            h.count,
            h.test_count,
            [h.channels, h.height, h.width],
            h.num_classes,
            h.names_len,
        )
        .ok_or_else(|| {
            bad(format!(
                "sizes overflow: {} images of {}x{}x{} with {} bytes of class names",
                h.count, h.channels, h.height, h.width, h.names_len
            ))
        })?;
        for (field, got, want) in [
            ("names offset", h.names_offset, expected.names_offset),
            ("labels offset", h.labels_offset, expected.labels_offset),
            ("pixels offset", h.pixels_offset, expected.pixels_offset),
            ("file length", h.file_len, expected.file_len),
        ] {
            if got != want {
                return Err(bad(format!(
                    "header {field} is {got}, but {} images of {}x{}x{} with {} bytes of class \
                     names put it at {want}",
                    h.count, h.channels, h.height, h.width, h.names_len
                )));
            }
        }
        if file_len < h.file_len {
            return Err(bad(format!(
                "truncated: the file is {file_len} bytes, its header says {} ({} images of \
                 {}x{}x{} from byte {})",
                h.file_len, h.count, h.channels, h.height, h.width, h.pixels_offset
            )));
        }
        if file_len > h.file_len {
            return Err(bad(format!(
                "{} bytes follow the end of the pack (the file is {file_len} bytes, its header \
                 says {})",
                file_len - h.file_len,
                h.file_len
            )));
        }
        Ok(h)
    }
}

/// FNV-1a, 64-bit: simple, stable, and enough to catch corruption (not tampering).
#[derive(Clone, Copy)]
struct Fnv1a(u64);

impl Fnv1a {
    fn new() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }

    fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// The metadata checksum of a pack whose first `pixels_offset` bytes are `meta`.
fn meta_checksum(meta: &[u8], names_offset: usize) -> u64 {
    let mut h = Fnv1a::new();
    h.update(&meta[..META_CHECKSUM_AT]);
    h.update(&meta[names_offset..]);
    h.0
}

/// The class names section: for each class, its length as `u32` then its UTF-8 bytes.
fn encode_names(op: &'static str, classes: &[String]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for name in classes {
        if name.len() > MAX_CLASS_NAME {
            return Err(Error::arg(
                op,
                format!(
                    "class name of {} bytes exceeds {MAX_CLASS_NAME} ({}...)",
                    name.len(),
                    name.chars().take(32).collect::<String>()
                ),
            ));
        }
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
    }
    Ok(out)
}

/// Reads the names section back: exactly `num_classes` names, or none for an empty section.
fn decode_names(what: &str, bytes: &[u8], num_classes: u32) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let bad = |d: String| Error::format(what, format!("class names: {d}"));
        if rest.len() < 4 {
            return Err(bad(format!(
                "{} stray bytes after name {}",
                rest.len(),
                names.len()
            )));
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let Some(name) = rest.get(4..4 + len) else {
            return Err(bad(format!(
                "name {} claims {len} bytes, {} remain",
                names.len(),
                rest.len() - 4
            )));
        };
        let name = std::str::from_utf8(name)
            .map_err(|_| bad(format!("name {} is not UTF-8", names.len())))?;
        names.push(name.to_string());
        rest = &rest[4 + len..];
    }
    if !names.is_empty() && names.len() != num_classes as usize {
        return Err(Error::format(
            what,
            format!(
                "{} class names for {num_classes} classes in the header",
                names.len()
            ),
        ));
    }
    Ok(names)
}

/// Writes a pack image by image, so a source larger than memory can be packed.
///
/// The labels (small: 4 bytes an image) are given up front, the pixels then in order with
/// [`PackWriter::write_images`]. The file is written under a temporary name in the target's
/// folder and renamed over the target by [`PackWriter::finish`], so a pack that exists is
/// complete; a writer dropped before `finish` removes its temporary file.
pub struct PackWriter {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<BufWriter<File>>,
    header: PackHeader,
    /// The file's first `pixels_offset` bytes; the header part is rewritten by `finish`.
    meta: Vec<u8>,
    images_written: u64,
    pixels: Fnv1a,
}

impl PackWriter {
    /// Starts the pack at `path` for `labels.len()` images of `channels x height x width`;
    /// the last `test_count` are the test split. `classes` is empty or holds `num_classes`
    /// names.
    pub fn create(
        path: impl AsRef<Path>,
        [channels, height, width]: [usize; 3],
        num_classes: usize,
        classes: &[String],
        labels: &[u32],
        test_count: usize,
    ) -> Result<PackWriter> {
        const OP: &str = "PackWriter::create";
        let path = path.as_ref().to_path_buf();
        let to_u32 = |v: usize, what: &str| {
            u32::try_from(v)
                .map_err(|_| Error::arg(OP, format!("{what} {v} does not fit the format (u32)")))
        };
        let shape = [
            to_u32(channels, "channels")?,
            to_u32(height, "height")?,
            to_u32(width, "width")?,
        ];
        if shape.contains(&0) {
            return Err(Error::arg(
                OP,
                format!("image dimensions must be positive, got {channels}x{height}x{width}"),
            ));
        }
        let classes_u32 = to_u32(num_classes, "number of classes")?;
        if !classes.is_empty() && classes.len() != num_classes {
            return Err(Error::arg(
                OP,
                format!("{} class names for {num_classes} classes", classes.len()),
            ));
        }
        if let Some((i, l)) = labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l as usize >= num_classes)
        {
            return Err(Error::arg(
                OP,
                format!("label {l} of image {i} is out of range for {num_classes} classes"),
            ));
        }
        if test_count > labels.len() {
            return Err(Error::arg(
                OP,
                format!(
                    "test split of {test_count} images exceeds the {} images",
                    labels.len()
                ),
            ));
        }
        let names = encode_names(OP, classes)?;
        let header = PackHeader::layout(
            labels.len() as u64,
            test_count as u64,
            shape,
            classes_u32,
            names.len() as u64,
        )
        .ok_or_else(|| {
            Error::arg(
                OP,
                format!(
                    "{} images of {channels}x{height}x{width} overflow the format's sizes",
                    labels.len()
                ),
            )
        })?;
        let mut meta = vec![0u8; header.pixels_offset as usize];
        let names_at = header.names_offset as usize;
        meta[names_at..names_at + names.len()].copy_from_slice(&names);
        let labels_at = header.labels_offset as usize;
        for (slot, l) in meta[labels_at..].chunks_exact_mut(4).zip(labels) {
            slot.copy_from_slice(&l.to_le_bytes());
        }
        let name = path
            .file_name()
            .ok_or_else(|| Error::arg(OP, format!("'{}' is not a file path", path.display())))?;
        let tmp = path.with_file_name(crate::fsutil::temp_name_of(&name.to_string_lossy()));
        let file = File::create(&tmp).map_err(|e| Error::io(&path, e))?;
        let mut file = BufWriter::with_capacity(1 << 20, file);
        // The header is written again with its checksums by `finish`.
        file.write_all(&meta).map_err(|e| Error::io(&path, e))?;
        Ok(PackWriter {
            path,
            tmp,
            file: Some(file),
            header,
            meta,
            images_written: 0,
            pixels: Fnv1a::new(),
        })
    }

    /// The header the pack will have (checksums are filled in by [`PackWriter::finish`]).
    pub fn header(&self) -> &PackHeader {
        &self.header
    }

    /// Appends whole images (`pixels.len()` a multiple of `C*H*W`), in data set order.
    pub fn write_images(&mut self, pixels: &[u8]) -> Result<()> {
        let per = self.header.image_len();
        let n = pixels.len() as u64 / per;
        if !(pixels.len() as u64).is_multiple_of(per) || self.images_written + n > self.header.count
        {
            return Err(Error::arg(
                "PackWriter::write_images",
                format!(
                    "{} bytes are not whole {}x{}x{} images within the {} announced ({} \
                     written)",
                    pixels.len(),
                    self.header.channels,
                    self.header.height,
                    self.header.width,
                    self.header.count,
                    self.images_written
                ),
            ));
        }
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| Error::arg("PackWriter::write_images", "the writer failed earlier"))?;
        if let Err(e) = file.write_all(pixels) {
            self.file = None;
            return Err(Error::io(&self.path, e));
        }
        self.pixels.update(pixels);
        self.images_written += n;
        Ok(())
    }

    /// Writes the checksums, flushes the file to disk and renames it over the target.
    pub fn finish(mut self) -> Result<PackHeader> {
        if self.images_written != self.header.count {
            return Err(Error::arg(
                "PackWriter::finish",
                format!(
                    "{} of the {} announced images were written",
                    self.images_written, self.header.count
                ),
            ));
        }
        self.header.pixels_checksum = self.pixels.0;
        self.meta[..HEADER_LEN].copy_from_slice(&self.header.to_bytes());
        self.header.meta_checksum = meta_checksum(&self.meta, self.header.names_offset as usize);
        let bytes = self.header.to_bytes();
        let file = self
            .file
            .take()
            .ok_or_else(|| Error::arg("PackWriter::finish", "the writer failed earlier"))?;
        let write = move || -> std::io::Result<()> {
            let mut f = file.into_inner().map_err(|e| e.into_error())?;
            f.seek(SeekFrom::Start(0))?;
            f.write_all(&bytes)?;
            f.sync_all()
        };
        write().map_err(|e| Error::io(&self.path, e))?;
        std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::io(&self.path, e))?;
        Ok(self.header.clone())
    }
}

impl Drop for PackWriter {
    fn drop(&mut self) {
        // After a successful rename the temporary name no longer exists.
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// Writes `train` then `test` as one pack (both in memory already: CIFAR, IDX, the embedded
/// digits). `classes` is empty or names every class.
pub fn write_pack(
    path: impl AsRef<Path>,
    train: &Dataset,
    test: &Dataset,
    classes: &[String],
) -> Result<PackHeader> {
    if train.image_shape() != test.image_shape() {
        return Err(Error::arg(
            "write_pack",
            format!(
                "train images are {:?}, test images {:?}",
                train.image_shape(),
                test.image_shape()
            ),
        ));
    }
    let labels: Vec<u32> = train
        .labels()
        .iter()
        .chain(test.labels())
        .copied()
        .collect();
    let mut w = PackWriter::create(
        path,
        train.image_shape(),
        train.num_classes().max(test.num_classes()),
        classes,
        &labels,
        test.len(),
    )?;
    // In slices of whole images, so no second copy of the pixels is made.
    let chunk = train.image_len() * 4096;
    for d in [train, test] {
        for part in d.images().chunks(chunk) {
            w.write_images(part)?;
        }
    }
    w.finish()
}

/// Whether `path` is a file that starts with [`PACK_MAGIC`] (a folder is not).
pub fn is_pack(path: &Path) -> Result<bool> {
    if path.is_dir() {
        return Ok(false);
    }
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut head = [0u8; 8];
    let mut got = 0;
    while got < head.len() {
        match f.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(path, e)),
        }
    }
    Ok(got == head.len() && head == PACK_MAGIC)
}

/// An opened, checked pack: the header, names and labels in memory, the pixels mapped.
#[derive(Clone)]
pub struct PackedData {
    path: PathBuf,
    header: PackHeader,
    classes: Vec<String>,
    labels: Vec<u32>,
    map: Arc<memmap2::Mmap>,
}

impl std::fmt::Debug for PackedData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedData")
            .field("path", &self.path)
            .field("header", &self.header)
            .field("classes", &self.classes.len())
            .finish_non_exhaustive()
    }
}

impl PackedData {
    /// Maps the pack at `path` and checks it (see the module docs); a malformed file gives
    /// [`Error::Format`] naming it and what is wrong.
    pub fn open(path: impl AsRef<Path>) -> Result<PackedData> {
        let path = path.as_ref();
        let what = path.display().to_string();
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if file_len < HEADER_LEN as u64 {
            return Err(Error::format(
                what,
                format!("truncated: {file_len} bytes, a pack header alone is {HEADER_LEN}"),
            ));
        }
        // SAFETY: the mapping is read-only and private to this process's view of the file.
        // Mapping a file is undefined behaviour only if the file is changed while mapped; packs
        // are written once under a temporary name and renamed into place, so the only way
        // to change one under a running reader is to overwrite it in place by hand, which
        // docs/data-format.md warns against. Every size read from the file is checked against
        // the mapping's length before it is used.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let header = PackHeader::parse(&what, &map, map.len() as u64)?;
        let pixels_at = header.pixels_offset as usize;
        let names_at = header.names_offset as usize;
        let meta = &map[..pixels_at];
        let sum = meta_checksum(meta, names_at);
        if sum != header.meta_checksum {
            return Err(Error::format(
                what,
                format!(
                    "header/names/labels checksum mismatch (stored {:#018x}, computed \
                     {sum:#018x}): the file is corrupt",
                    header.meta_checksum
                ),
            ));
        }
        let classes = decode_names(
            &what,
            &map[names_at..names_at + header.names_len as usize],
            header.num_classes,
        )?;
        let labels_at = header.labels_offset as usize;
        let labels: Vec<u32> = map[labels_at..labels_at + 4 * header.count as usize]
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if let Some((i, l)) = labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l >= header.num_classes)
        {
            return Err(Error::format(
                what,
                format!(
                    "label {l} of image {i} is out of range for {} classes",
                    header.num_classes
                ),
            ));
        }
        Ok(PackedData {
            path: path.to_path_buf(),
            header,
            classes,
            labels,
            map: Arc::new(map),
        })
    }

    /// The file this pack was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The checked header.
    pub fn header(&self) -> &PackHeader {
        &self.header
    }

    /// Class names indexed by label; empty when the source had none.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the pack holds no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Every image, train and test, as a data set whose pixels stay mapped.
    pub fn dataset(&self) -> Result<Dataset> {
        let h = &self.header;
        let what = self.path.display().to_string();
        let dims = [h.channels, h.height, h.width].map(|v| v as usize);
        checked_product([self.labels.len(), dims[0], dims[1], dims[2]])
            .ok_or_else(|| Error::format(what.clone(), "pixel section too large to index"))?;
        Dataset::mapped(
            &what,
            self.map.clone(),
            h.pixels_offset as usize,
            self.labels.clone(),
            h.num_classes as usize,
            dims[0],
            dims[1],
            dims[2],
        )
    }

    /// `(train, test)`: the test split is the last `test_count` images, the training set
    /// everything before. Both stay mapped.
    pub fn split(&self) -> Result<(Dataset, Dataset)> {
        let all = self.dataset()?;
        let n_train = self.len() - self.header.test_count as usize;
        Ok((all.slice(0..n_train)?, all.slice(n_train..self.len())?))
    }

    /// Reads every pixel and checks the pixel checksum (one pass over the file).
    pub fn verify_pixels(&self) -> Result<()> {
        let mut h = Fnv1a::new();
        h.update(&self.map[self.header.pixels_offset as usize..]);
        if h.0 != self.header.pixels_checksum {
            return Err(Error::format(
                self.path.display().to_string(),
                format!(
                    "pixel checksum mismatch (stored {:#018x}, computed {:#018x}): the pixel \
                     bytes are corrupt",
                    self.header.pixels_checksum, h.0
                ),
            ));
        }
        Ok(())
    }
}
