//! Image data sets: the embedded MNIST digits, IDX and CIFAR-10 files, folders of PNG/JPEG
//! images, memory-mapped packs ([`packed`], `.tfpack`), and a seeded, resumable batch
//! [`Loader`].
//!
//! Everything here works on plain bytes: a [`Dataset`] is `N*C*H*W` pixels (`u8`, row-major,
//! channel-major within each image) plus one label per image. The pixels are held in memory or
//! mapped from a pack file; every reader of a data set sees the same bytes either way.
//! Conversion to floats happens per batch ([`loader::to_signed_unit`],
//! [`loader::dequantize`]).
//!
//! Every reader validates what it is given: malformed input gives
//! [`Error::Format`] naming the file (or the in-memory name the caller
//! chose) and what is wrong, never a panic, and sizes read from a header are checked against
//! the bytes actually present before anything is allocated from them.

pub mod cifar;
pub mod folder;
pub mod idx;
pub mod loader;
pub mod mnist;
pub mod packed;

pub use cifar::{load_cifar_dir, load_cifar_file, parse_cifar_batch, CifarSplit};
pub use folder::{decode_image, list_image_folder, load_image_folder, FolderListing, ImageFolder};
pub use idx::{load_idx_pair, parse_idx_images, parse_idx_labels, IdxImages};
pub use loader::{Batch, Loader, LoaderConfig, LoaderState, Prefetcher};
pub use mnist::{embedded_mnist, embedded_mnist_split};
pub use packed::{is_pack, PackHeader, PackWriter, PackedData};

use std::ops::Deref;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::tensor::layout::checked_product;

/// Where the pixels of a [`Dataset`] live: in memory, or in a memory-mapped pack file (then
/// resident only as far as the operating system's page cache keeps them).
#[derive(Clone)]
pub(crate) enum Pixels {
    /// Owned bytes.
    Owned(Vec<u8>),
    /// `len` bytes of a mapped file from byte `start`; cloning shares the mapping.
    Mapped {
        map: Arc<memmap2::Mmap>,
        start: usize,
        len: usize,
    },
}

impl Pixels {
    /// The bytes as an owned vector (copied out of a mapping), leaving `self` empty.
    fn take_vec(&mut self) -> Vec<u8> {
        match std::mem::replace(self, Pixels::Owned(Vec::new())) {
            Pixels::Owned(v) => v,
            mapped => mapped.to_vec(),
        }
    }
}

impl Deref for Pixels {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Pixels::Owned(v) => v,
            // The range is checked against the mapping when the data set is built; an empty
            // slice here would fail `Dataset::validate` rather than panic.
            Pixels::Mapped { map, start, len } => map
                .get(*start..start.saturating_add(*len))
                .unwrap_or_default(),
        }
    }
}

impl PartialEq for Pixels {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Pixels {}

impl std::fmt::Debug for Pixels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pixels::Owned(v) => v.fmt(f),
            Pixels::Mapped { start, len, .. } => {
                write!(f, "Mapped {{ start: {start}, len: {len} }}")
            }
        }
    }
}

/// Images and labels held in memory.
///
/// Invariants, checked by [`Dataset::new`] and kept by every method (the fields are private,
/// read them through the accessors): `images().len() == len() * channels * height * width`,
/// every label is below `num_classes`, and the image dimensions are positive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dataset {
    /// `N*C*H*W` pixels: image `i` is `images[i*C*H*W .. (i+1)*C*H*W]`, channel planes one after
    /// the other, each plane row-major.
    pub(crate) images: Pixels,
    /// One label per image, each in `0..num_classes`.
    pub(crate) labels: Vec<u32>,
    /// Number of classes the labels range over (at least 1 when there are images).
    pub(crate) num_classes: usize,
    /// Channels per image, e.g. 1 for grayscale, 3 for RGB.
    pub(crate) channels: usize,
    /// Image height in pixels.
    pub(crate) height: usize,
    /// Image width in pixels.
    pub(crate) width: usize,
}

impl Dataset {
    /// Builds a data set and checks its invariants; `what` names the source in errors.
    pub fn new(
        what: &str,
        images: Vec<u8>,
        labels: Vec<u32>,
        num_classes: usize,
        channels: usize,
        height: usize,
        width: usize,
    ) -> Result<Self> {
        let pixels = Pixels::Owned(images);
        Self::checked(what, pixels, labels, num_classes, [channels, height, width])
    }

    /// A data set of `pixels` (owned or mapped) after [`Dataset::validate`].
    fn checked(
        what: &str,
        images: Pixels,
        labels: Vec<u32>,
        num_classes: usize,
        [channels, height, width]: [usize; 3],
    ) -> Result<Self> {
        let d = Dataset {
            images,
            labels,
            num_classes,
            channels,
            height,
            width,
        };
        d.validate(what)?;
        Ok(d)
    }

    /// A data set whose pixels are `map[start..]`, `labels.len()` images of
    /// `channels x height x width`; checked like [`Dataset::new`], and the range against the
    /// mapping.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn mapped(
        what: &str,
        map: Arc<memmap2::Mmap>,
        start: usize,
        labels: Vec<u32>,
        num_classes: usize,
        channels: usize,
        height: usize,
        width: usize,
    ) -> Result<Self> {
        let len = checked_product([labels.len(), channels, height, width])
            .filter(|&len| start.checked_add(len).is_some_and(|end| end <= map.len()))
            .ok_or_else(|| {
                Error::format(
                    what,
                    format!(
                        "{} images of {channels}x{height}x{width} from byte {start} do not fit \
                         in {} mapped bytes",
                        labels.len(),
                        map.len()
                    ),
                )
            })?;
        let pixels = Pixels::Mapped { map, start, len };
        Self::checked(what, pixels, labels, num_classes, [channels, height, width])
    }

    /// Whether the pixels are mapped from a file rather than held in memory.
    pub fn is_mapped(&self) -> bool {
        matches!(self.images, Pixels::Mapped { .. })
    }

    /// Images `range` as a data set. A mapped data set shares its mapping (nothing is copied);
    /// an in-memory one copies the range.
    pub fn slice(&self, range: std::ops::Range<usize>) -> Result<Dataset> {
        if range.start > range.end || range.end > self.len() {
            return Err(Error::index(
                "Dataset::slice",
                format!(
                    "range {}..{} out of bounds for {} images",
                    range.start,
                    range.end,
                    self.len()
                ),
            ));
        }
        let per = self.image_len();
        let bytes = range.start * per..range.end * per;
        let images = match &self.images {
            Pixels::Owned(v) => Pixels::Owned(v[bytes].to_vec()),
            Pixels::Mapped { map, start, .. } => Pixels::Mapped {
                map: map.clone(),
                start: start + bytes.start,
                len: bytes.len(),
            },
        };
        Ok(Dataset {
            images,
            labels: self.labels[range].to_vec(),
            num_classes: self.num_classes,
            channels: self.channels,
            height: self.height,
            width: self.width,
        })
    }

    /// Every pixel, `N*C*H*W` bytes: image `i` is `images()[i*C*H*W .. (i+1)*C*H*W]`, channel
    /// planes one after the other, each plane row-major.
    pub fn images(&self) -> &[u8] {
        &self.images
    }

    /// One label per image, each in `0..num_classes()`.
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// Number of classes the labels range over.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// Channels per image, e.g. 1 for grayscale, 3 for RGB.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Image height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Image width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// The pixels and the labels, giving up the data set (mapped pixels are copied out).
    pub fn into_parts(mut self) -> (Vec<u8>, Vec<u32>) {
        (self.images.take_vec(), self.labels)
    }

    /// Checks the invariants listed on the type; `what` names the source in errors.
    pub(crate) fn validate(&self, what: &str) -> Result<()> {
        if self.channels == 0 || self.height == 0 || self.width == 0 {
            return Err(Error::format(
                what,
                format!(
                    "image dimensions must be positive, got {}x{}x{} (CxHxW)",
                    self.channels, self.height, self.width
                ),
            ));
        }
        let Some(per) = checked_product([self.channels, self.height, self.width]) else {
            return Err(Error::format(
                what,
                format!(
                    "images of {}x{}x{} (CxHxW) are too large to index",
                    self.channels, self.height, self.width
                ),
            ));
        };
        let expected = self.labels.len().checked_mul(per);
        if expected != Some(self.images.len()) {
            return Err(Error::format(
                what,
                format!(
                    "{} pixel bytes for {} labels of {}x{}x{} images (expected {} bytes)",
                    self.images.len(),
                    self.labels.len(),
                    self.channels,
                    self.height,
                    self.width,
                    expected.map_or_else(|| "more than usize::MAX".into(), |e| e.to_string())
                ),
            ));
        }
        if let Some((i, &l)) = self
            .labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l as usize >= self.num_classes)
        {
            return Err(Error::format(
                what,
                format!(
                    "label {l} of image {i} is out of range for {} classes",
                    self.num_classes
                ),
            ));
        }
        Ok(())
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the data set holds no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Bytes per image, `C*H*W`.
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// `[C, H, W]` of every image.
    pub fn image_shape(&self) -> [usize; 3] {
        [self.channels, self.height, self.width]
    }

    /// Pixels of image `i`.
    ///
    /// # Panics
    /// When `i >= self.len()`, like slice indexing; [`Dataset::get`] is the checked form.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.images[i * n..(i + 1) * n]
    }

    /// Pixels of image `i`, or `None` when out of range.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        if i < self.len() {
            Some(self.image(i))
        } else {
            None
        }
    }

    /// A new data set holding the images at `indices`, in that order (repeats allowed).
    pub fn subset(&self, indices: &[usize]) -> Result<Dataset> {
        let n = self.image_len();
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.len()) {
            return Err(Error::index(
                "Dataset::subset",
                format!("index {bad} out of range for {} images", self.len()),
            ));
        }
        let mut images = Vec::with_capacity(indices.len() * n);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            images.extend_from_slice(self.image(i));
            labels.push(self.labels[i]);
        }
        Ok(Dataset {
            images: Pixels::Owned(images),
            labels,
            num_classes: self.num_classes,
            channels: self.channels,
            height: self.height,
            width: self.width,
        })
    }

    /// Number of images of each class, indexed by label.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes];
        for &l in &self.labels {
            // Below num_classes by construction.
            if let Some(c) = counts.get_mut(l as usize) {
                *c += 1;
            }
        }
        counts
    }

    /// Appends `other`, which must have the same image shape and number of classes (mapped
    /// pixels are copied into memory first).
    pub fn extend(&mut self, other: &Dataset) -> Result<()> {
        if other.image_shape() != self.image_shape() || other.num_classes != self.num_classes {
            return Err(Error::arg(
                "Dataset::extend",
                format!(
                    "cannot append {:?} images of {} classes to {:?} images of {} classes",
                    other.image_shape(),
                    other.num_classes,
                    self.image_shape(),
                    self.num_classes
                ),
            ));
        }
        let mut images = self.images.take_vec();
        images.extend_from_slice(&other.images);
        self.images = Pixels::Owned(images);
        self.labels.extend_from_slice(&other.labels);
        Ok(())
    }
}

/// Reads a whole file, turning an I/O failure into [`Error::Io`] naming the path.
pub(crate) fn read_file(path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}
