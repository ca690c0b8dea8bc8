//! Image data sets: the embedded MNIST digits, IDX and CIFAR-10 files, folders of PNG/JPEG
//! images, and a seeded, resumable batch [`Loader`].
//!
//! Everything here works on plain bytes: a [`Dataset`] is `N*C*H*W` pixels (`u8`, row-major,
//! channel-major within each image) plus one label per image. Conversion to floats happens per
//! batch ([`loader::to_signed_unit`], [`loader::dequantize`]).
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

pub use cifar::{load_cifar_dir, load_cifar_file, parse_cifar_batch, CifarSplit};
pub use folder::{decode_image, list_image_folder, load_image_folder, FolderListing, ImageFolder};
pub use idx::{load_idx_pair, parse_idx_images, parse_idx_labels, IdxImages};
pub use loader::{Batch, Loader, LoaderConfig, LoaderState, Prefetcher};
pub use mnist::{embedded_mnist, embedded_mnist_split};

use crate::error::{Error, Result};
use crate::tensor::layout::checked_product;

/// Images and labels held in memory.
///
/// Invariants, checked by [`Dataset::new`] and kept by every method (the fields are private,
/// read them through the accessors): `images().len() == len() * channels * height * width`,
/// every label is below `num_classes`, and the image dimensions are positive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dataset {
    /// `N*C*H*W` pixels: image `i` is `images[i*C*H*W .. (i+1)*C*H*W]`, channel planes one after
    /// the other, each plane row-major.
    pub(crate) images: Vec<u8>,
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

    /// The pixels and the labels, giving up the data set.
    pub fn into_parts(self) -> (Vec<u8>, Vec<u32>) {
        (self.images, self.labels)
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
            images,
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

    /// Appends `other`, which must have the same image shape and number of classes.
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
        self.images.extend_from_slice(&other.images);
        self.labels.extend_from_slice(&other.labels);
        Ok(())
    }
}

/// Reads a whole file, turning an I/O failure into [`Error::Io`] naming the path.
pub(crate) fn read_file(path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}
