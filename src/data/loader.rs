//! Seeded, resumable mini-batches over a [`Dataset`], and a background [`Prefetcher`].
//!
//! All randomness of an epoch (its shuffle and the horizontal-flip decision for every
//! position) is drawn from the loader's [`Rng`] when the epoch starts. The saved
//! [`LoaderState`] therefore only needs the generator state at the start of the current epoch
//! and the position within it: restoring replays the same draws and continues with exactly
//! the batches an uninterrupted run would have produced.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};

use super::Dataset;
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::tensor::Element;

/// How a [`Loader`] forms batches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderConfig {
    /// Images per batch (the last batch of an epoch may be smaller unless `drop_last`).
    pub batch_size: usize,
    /// Reshuffle the order at the start of every epoch.
    pub shuffle: bool,
    /// Skip the incomplete batch at the end of an epoch, so every batch has `batch_size`
    /// images.
    pub drop_last: bool,
    /// Mirror each image left-right with probability 1/2 (augmentation).
    pub hflip: bool,
    /// Seed of the loader's generator.
    pub seed: u64,
}

impl LoaderConfig {
    /// Shuffled, drop-last batches without augmentation: the usual training setting.
    pub fn train(batch_size: usize, seed: u64) -> Self {
        LoaderConfig {
            batch_size,
            shuffle: true,
            drop_last: true,
            hflip: false,
            seed,
        }
    }

    /// Batches in data set order, the last one possibly smaller: the evaluation setting.
    pub fn eval(batch_size: usize) -> Self {
        LoaderConfig {
            batch_size,
            shuffle: false,
            drop_last: false,
            hflip: false,
            seed: 0,
        }
    }
}

/// Where a [`Loader`] stands; saved in checkpoints and given to [`Loader::from_state`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderState {
    /// The loader's configuration, restored with it.
    pub config: LoaderConfig,
    /// Size of the data set the state belongs to, checked on restore.
    pub dataset_len: usize,
    /// Epochs completed before the current one.
    pub epoch: u64,
    /// Images of the current epoch already handed out.
    pub index: usize,
    /// Generator state at the start of the current epoch, before its shuffle.
    pub epoch_rng: [u64; 4],
}

/// A batch of images in the data set's layout (`n x C x H x W` bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// `n*C*H*W` pixels, image after image, already mirrored where `flipped` says so.
    pub images: Vec<u8>,
    /// Label of each image.
    pub labels: Vec<u32>,
    /// Position of each image in the data set.
    pub indices: Vec<usize>,
    /// Whether each image was mirrored.
    pub flipped: Vec<bool>,
    /// Number of images: the configured batch size, or fewer for the last batch of an epoch
    /// without `drop_last`.
    pub n: usize,
    /// Channels per image, as in the data set.
    pub channels: usize,
    /// Image height in pixels, as in the data set.
    pub height: usize,
    /// Image width in pixels, as in the data set.
    pub width: usize,
    /// Epoch the batch belongs to (0-based).
    pub epoch: u64,
}

impl Batch {
    /// `[n, C, H, W]`.
    pub fn shape(&self) -> [usize; 4] {
        [self.n, self.channels, self.height, self.width]
    }

    /// Pixels mapped to `[-1, 1]`; see [`to_signed_unit`].
    pub fn to_f32(&self) -> Vec<f32> {
        to_signed_unit(&self.images)
    }

    /// Pixels with uniform dequantisation noise; see [`dequantize`].
    pub fn dequantized(&self, rng: &mut Rng) -> Vec<f32> {
        dequantize::<f32>(&self.images, rng)
    }
}

/// Maps bytes to `[-1, 1]`: `x = 2 p / 255 - 1` (0 -> -1, 255 -> 1).
/// [`crate::imageio::f32_to_u8_images`] inverts it exactly.
pub fn to_signed_unit(pixels: &[u8]) -> Vec<f32> {
    pixels
        .iter()
        .map(|&p| (2.0 * f64::from(p) / 255.0 - 1.0) as f32)
        .collect()
}

/// Uniform dequantisation: `x = (p + u) / 256 * 2 - 1` with `u ~ U[0, 1)` drawn from `rng`,
/// one draw per pixel in order. Each byte value `p` fills the interval
/// `[p/128 - 1, (p+1)/128 - 1)`, so a density on `x` gives a discrete likelihood for `p`.
/// In any element type; the `f32` values are the `f64` ones rounded once.
pub fn dequantize<E: Element>(pixels: &[u8], rng: &mut Rng) -> Vec<E> {
    pixels
        .iter()
        .map(|&p| E::from_f64((f64::from(p) + rng.uniform()) / 128.0 - 1.0))
        .collect()
}

/// Mirrors one `C x H x W` image left-right in place.
fn hflip_in_place(img: &mut [u8], width: usize) {
    for row in img.chunks_exact_mut(width) {
        row.reverse();
    }
}

/// Produces batches from a data set, epoch after epoch, forever.
#[derive(Clone, Debug)]
pub struct Loader {
    dataset: Arc<Dataset>,
    config: LoaderConfig,
    epoch: u64,
    index: usize,
    epoch_rng: [u64; 4],
    /// This epoch's visiting order and flip decisions, derived from `epoch_rng`.
    order: Vec<usize>,
    flips: Vec<bool>,
    /// Generator state after this epoch's draws: the next epoch's `epoch_rng`.
    next_rng: [u64; 4],
}

impl Loader {
    /// A loader at the start of epoch 0.
    pub fn new(dataset: Arc<Dataset>, config: LoaderConfig) -> Result<Self> {
        let rng = Rng::new(config.seed).state();
        Self::build(dataset, config, 0, 0, rng)
    }

    /// A loader continuing exactly where the one that produced `state` stood.
    ///
    /// Fails when `state` was saved for a data set of another size or an index past the end.
    pub fn from_state(dataset: Arc<Dataset>, state: &LoaderState) -> Result<Self> {
        if state.dataset_len != dataset.len() {
            return Err(Error::Config(format!(
                "loader state was saved for a data set of {} images, this one has {}",
                state.dataset_len,
                dataset.len()
            )));
        }
        if state.index > dataset.len() {
            return Err(Error::Config(format!(
                "loader state index {} is past the end of a data set of {} images",
                state.index,
                dataset.len()
            )));
        }
        Self::build(
            dataset,
            state.config.clone(),
            state.epoch,
            state.index,
            state.epoch_rng,
        )
    }

    fn build(
        dataset: Arc<Dataset>,
        config: LoaderConfig,
        epoch: u64,
        index: usize,
        epoch_rng: [u64; 4],
    ) -> Result<Self> {
        // The fields are public, so a hand-built data set may break the invariants that batch
        // assembly relies on; checking here keeps `next_batch` infallible.
        dataset.validate("loader data set")?;
        if dataset.is_empty() {
            return Err(Error::Config("the loader's data set is empty".into()));
        }
        if config.batch_size == 0 {
            return Err(Error::Config("batch_size must be positive".into()));
        }
        if config.drop_last && config.batch_size > dataset.len() {
            return Err(Error::Config(format!(
                "batch_size {} with drop_last exceeds the data set's {} images: no batch \
                 would ever be produced",
                config.batch_size,
                dataset.len()
            )));
        }
        let mut loader = Loader {
            dataset,
            config,
            epoch,
            index,
            epoch_rng,
            order: Vec::new(),
            flips: Vec::new(),
            next_rng: epoch_rng,
        };
        loader.draw_epoch();
        Ok(loader)
    }

    /// Draws the current epoch's order and flips from `epoch_rng`.
    fn draw_epoch(&mut self) {
        let n = self.dataset.len();
        let mut rng = Rng::from_state(self.epoch_rng);
        self.order = (0..n).collect();
        if self.config.shuffle {
            rng.shuffle(&mut self.order);
        }
        self.flips = if self.config.hflip {
            let mut flips = Vec::with_capacity(n);
            let mut bits = 0u64;
            for i in 0..n {
                if i % 64 == 0 {
                    bits = rng.next_u64();
                }
                flips.push((bits >> (i % 64)) & 1 == 1);
            }
            flips
        } else {
            vec![false; n]
        };
        self.next_rng = rng.state();
    }

    /// The state to save; [`Loader::from_state`] resumes from it exactly.
    pub fn state(&self) -> LoaderState {
        LoaderState {
            config: self.config.clone(),
            dataset_len: self.dataset.len(),
            epoch: self.epoch,
            index: self.index,
            epoch_rng: self.epoch_rng,
        }
    }

    /// How this loader forms batches.
    pub fn config(&self) -> &LoaderConfig {
        &self.config
    }

    /// The data set the batches are drawn from.
    pub fn dataset(&self) -> &Arc<Dataset> {
        &self.dataset
    }

    /// Epochs completed so far. The count moves when the first batch of the next epoch is
    /// drawn, so right after an epoch's last batch it still shows the epoch as running.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Number of batches in one epoch.
    pub fn batches_per_epoch(&self) -> usize {
        let (n, b) = (self.dataset.len(), self.config.batch_size);
        if self.config.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// The next batch, starting a new epoch when the current one is used up.
    pub fn next_batch(&mut self) -> Batch {
        let n = self.dataset.len();
        let bs = self.config.batch_size;
        loop {
            let remaining = n - self.index.min(n);
            if remaining == 0 || (self.config.drop_last && remaining < bs) {
                self.epoch += 1;
                self.index = 0;
                self.epoch_rng = self.next_rng;
                self.draw_epoch();
                continue;
            }
            let take = bs.min(remaining);
            let span = self.index..self.index + take;
            self.index += take;
            return self.assemble(&self.order[span.clone()], &self.flips[span]);
        }
    }

    fn assemble(&self, indices: &[usize], flips: &[bool]) -> Batch {
        let d = &*self.dataset;
        let per = d.image_len();
        let mut images = Vec::with_capacity(indices.len() * per);
        for (&i, &f) in indices.iter().zip(flips) {
            let start = images.len();
            images.extend_from_slice(d.image(i));
            if f {
                hflip_in_place(&mut images[start..], d.width);
            }
        }
        Batch {
            images,
            labels: indices.iter().map(|&i| d.labels[i]).collect(),
            indices: indices.to_vec(),
            flipped: flips.to_vec(),
            n: indices.len(),
            channels: d.channels,
            height: d.height,
            width: d.width,
            epoch: self.epoch,
        }
    }
}

impl Iterator for Loader {
    type Item = Batch;

    /// Never `None`: the loader runs epoch after epoch.
    fn next(&mut self) -> Option<Batch> {
        Some(self.next_batch())
    }
}

/// Largest number of batches a [`Prefetcher`] keeps ready.
pub const MAX_PREFETCH_DEPTH: usize = 1024;

/// Runs a [`Loader`] on a background thread, keeping up to `depth` batches ready while the
/// caller computes on the current one; [`Prefetcher::with_stage`] also runs a preparation
/// step of each batch there (the trainer's noise draws), handing over its results `T`.
///
/// It yields exactly the batches the loader would yield synchronously, and
/// [`Prefetcher::state`] is the loader state right after the last batch handed to the caller,
/// so checkpoints taken while prefetching resume correctly (batches prepared ahead but not
/// taken are simply prepared again).
pub struct Prefetcher<T = Batch> {
    rx: Option<Receiver<(T, LoaderState)>>,
    worker: Option<JoinHandle<()>>,
    state: LoaderState,
}

impl Prefetcher<Batch> {
    /// Moves `loader` to a worker thread; `depth` batches are prepared ahead, clamped to
    /// `1..=`[`MAX_PREFETCH_DEPTH`] (the queue is allocated up front).
    pub fn new(loader: Loader, depth: usize) -> Self {
        Self::with_stage(loader, depth, |b| b)
    }

    /// The next batch, waiting for the worker if it is not ready yet.
    pub fn next_batch(&mut self) -> Result<Batch> {
        self.next_item()
    }
}

impl<T: Send + 'static> Prefetcher<T> {
    /// Like [`Prefetcher::new`], with `stage` applied to each batch, in order, on the worker
    /// thread.
    pub fn with_stage(
        mut loader: Loader,
        depth: usize,
        mut stage: impl FnMut(Batch) -> T + Send + 'static,
    ) -> Self {
        let state = loader.state();
        let (tx, rx) = sync_channel(depth.clamp(1, MAX_PREFETCH_DEPTH));
        let worker = std::thread::Builder::new()
            .name("tarflow-prefetch".into())
            .spawn(move || loop {
                let batch = loader.next_batch();
                let after = loader.state();
                // The receiver is gone: the prefetcher was dropped.
                if tx.send((stage(batch), after)).is_err() {
                    break;
                }
            });
        match worker {
            Ok(handle) => Prefetcher {
                rx: Some(rx),
                worker: Some(handle),
                state,
            },
            // No thread could be started: report it on the first call instead of panicking.
            Err(_) => Prefetcher {
                rx: None,
                worker: None,
                state,
            },
        }
    }

    /// The next prepared batch, waiting for the worker if it is not ready yet.
    pub fn next_item(&mut self) -> Result<T> {
        let rx = self
            .rx
            .as_ref()
            .ok_or_else(|| Error::Config("prefetch thread could not be started".into()))?;
        let (item, state) = rx
            .recv()
            .map_err(|_| Error::Config("prefetch thread stopped unexpectedly".into()))?;
        self.state = state;
        Ok(item)
    }
}

impl<T> Prefetcher<T> {
    /// Loader state right after the last batch returned by [`Prefetcher::next_batch`] or
    /// [`Prefetcher::next_item`].
    pub fn state(&self) -> LoaderState {
        self.state.clone()
    }
}

impl<T> Drop for Prefetcher<T> {
    fn drop(&mut self) {
        // Dropping the receiver makes the worker's pending send fail, so it exits.
        self.rx.take();
        if let Some(h) = self.worker.take() {
            let _ = h.join();
        }
    }
}
