//! Bits/dim of a model on a data set, with its standard errors: over the images scored (how
//! far another sample of as many images could move the mean) and over the dequantisation
//! draws (how much of the mean is noise of the draws).

use serde::{Deserialize, Serialize};

use crate::autograd::no_grad;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::TarFlow;
use crate::rng::Rng;
use crate::tensor::{Element, Tensor};

/// Result of [`evaluate_bpd`].
///
/// The two standard errors cover different things and are not to be added up: `se_images`
/// is the uncertainty of the figure as an estimate for images like these (it shrinks with
/// more images), `se_draws` the part of it that the random dequantisation contributes (it
/// shrinks with more draws). No normal quantile is applied: with 2-4 draws a "95 %" interval
/// from one would be far too narrow.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalResult {
    /// Mean bits/dim over images and dequantisation draws.
    pub bpd: f64,
    /// Standard error of `bpd` over the images: the sample standard deviation of each
    /// image's bits/dim (averaged over the draws) divided by `sqrt(images)`. None with one
    /// image.
    pub se_images: Option<f64>,
    /// Standard error of `bpd` over the draws: the sample standard deviation of the per-draw
    /// means divided by `sqrt(draws)`. None with a single draw.
    pub se_draws: Option<f64>,
    /// Mean bits/dim of each draw.
    pub per_draw: Vec<f64>,
    /// Number of images scored: the first `limit` of the data set, or all of them.
    pub images: usize,
}

/// `sd(values) / sqrt(len)` with the sample (n - 1) standard deviation; None for fewer than
/// two values.
pub fn standard_error(values: &[f64]) -> Option<f64> {
    let n = values.len();
    if n < 2 {
        return None;
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1) as f64;
    Some((var / n as f64).sqrt())
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
    // Each image's bits/dim summed over the draws.
    let mut per_image = vec![0.0; n];
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
            let bpd = model.bits_per_dim(&out)?;
            total += bpd.iter().sum::<f64>();
            for (acc, v) in per_image[start..start + b].iter_mut().zip(&bpd) {
                *acc += v;
            }
            start += b;
        }
        per_draw.push(total / n as f64);
    }
    let mean = per_draw.iter().sum::<f64>() / draws as f64;
    for v in &mut per_image {
        *v /= draws as f64;
    }
    if !mean.is_finite() {
        return Err(Error::NonFinite {
            what: "evaluated bits/dim".into(),
        });
    }
    Ok(EvalResult {
        bpd: mean,
        se_images: standard_error(&per_image),
        se_draws: standard_error(&per_draw),
        per_draw,
        images: n,
    })
}

#[cfg(test)]
mod tests {
    use super::standard_error;

    #[test]
    fn standard_error_is_the_sample_sd_over_the_root_of_the_count() {
        // mean 5, squared deviations 9 + 1 + 1 + 9 = 20, sample variance 20/3.
        let se = standard_error(&[2.0, 4.0, 6.0, 8.0]).unwrap();
        assert_eq!(se, (20.0f64 / 3.0 / 4.0).sqrt());
        assert_eq!(standard_error(&[3.0, 3.0]), Some(0.0));
        assert_eq!(standard_error(&[3.0]), None);
        assert_eq!(standard_error(&[]), None);
        assert!(standard_error(&[1.0, f64::NAN]).unwrap().is_nan());
    }
}
