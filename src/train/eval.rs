//! Bits/dim of a model on a data set, with a confidence interval over dequantisation noise.

use serde::{Deserialize, Serialize};

use crate::autograd::no_grad;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::TarFlow;
use crate::rng::Rng;
use crate::tensor::{Element, Tensor};

/// Result of [`evaluate_bpd`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalResult {
    /// Mean bits/dim over images and dequantisation draws.
    pub bpd: f64,
    /// Half-width of a 95% confidence interval over the dequantisation draws (None with a
    /// single draw).
    pub ci95: Option<f64>,
    /// Mean bits/dim of each draw.
    pub per_draw: Vec<f64>,
    /// Number of images scored: the first `limit` of the data set, or all of them.
    pub images: usize,
}

pub use crate::data::loader::dequantize;

/// Pixels to [-1, 1] plus Gaussian noise: `x = 2p/255 - 1 + sigma * eps`.
pub fn with_gaussian_noise<E: Element>(pixels: &[u8], sigma: f64, rng: &mut Rng) -> Vec<E> {
    let mut eps = vec![0.0; pixels.len()];
    if sigma > 0.0 {
        rng.fill_normal(&mut eps);
    }
    pixels
        .iter()
        .zip(eps)
        .map(|(&p, e)| E::from_f64(2.0 * p as f64 / 255.0 - 1.0 + sigma * e))
        .collect()
}

/// Bits/dim of `model` on the first `limit` images of `data` (all when 0), averaged over
/// `draws` independent dequantisations. Conditional models are scored with the true labels.
pub fn evaluate_bpd<E: Element>(
    model: &TarFlow<E>,
    data: &Dataset,
    limit: usize,
    batch: usize,
    draws: usize,
    seed: u64,
) -> Result<EvalResult> {
    let cfg = &model.config;
    // The fields are public: the pixels must be there before images are sliced out of them.
    data.validate("evaluate")?;
    if data.channels != cfg.channels
        || data.height != cfg.image_size
        || data.width != cfg.image_size
    {
        return Err(Error::Config(format!(
            "data set images are {}x{}x{}, the model expects {}x{}x{}",
            data.channels, data.height, data.width, cfg.channels, cfg.image_size, cfg.image_size
        )));
    }
    let n = if limit == 0 {
        data.len()
    } else {
        limit.min(data.len())
    };
    if n == 0 || batch == 0 || draws == 0 {
        return Err(Error::arg(
            "evaluate",
            "need at least one image, a positive batch size and one draw",
        ));
    }
    let _g = no_grad();
    let mut rng = Rng::new(seed);
    let per = cfg.image_dim();
    let mut per_draw = Vec::new();
    if per_draw.try_reserve_exact(draws).is_err() {
        return Err(Error::arg(
            "evaluate",
            format!(
                "draws {draws}: their results alone would take {} bytes of memory, more than \
                 can be allocated",
                (draws as u128) * std::mem::size_of::<f64>() as u128
            ),
        ));
    }
    for _ in 0..draws {
        let mut total = 0.0;
        let mut start = 0;
        while start < n {
            let b = batch.min(n - start);
            let mut px = Vec::with_capacity(b * per);
            let mut labels = Vec::with_capacity(b);
            for i in start..start + b {
                px.extend_from_slice(data.image(i));
                labels.push((cfg.num_classes > 0).then(|| data.labels[i] as usize));
            }
            let x = Tensor::from_vec(
                dequantize::<E>(&px, &mut rng),
                &[b, cfg.channels, cfg.image_size, cfg.image_size],
            )?
            .to_device(model.device())?;
            let lab = (cfg.num_classes > 0).then_some(labels.as_slice());
            let out = model.forward(&x, lab)?;
            total += model.bits_per_dim(&out)?.iter().sum::<f64>();
            start += b;
        }
        per_draw.push(total / n as f64);
    }
    let mean = per_draw.iter().sum::<f64>() / draws as f64;
    let ci95 = (draws > 1).then(|| {
        let var = per_draw
            .iter()
            .map(|v| (v - mean) * (v - mean))
            .sum::<f64>()
            / (draws - 1) as f64;
        1.96 * (var / draws as f64).sqrt()
    });
    if !mean.is_finite() {
        return Err(Error::NonFinite {
            what: "evaluated bits/dim".into(),
        });
    }
    Ok(EvalResult {
        bpd: mean,
        ci95,
        per_draw,
        images: n,
    })
}
