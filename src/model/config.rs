//! Model configuration, validation and presets.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Shape and hyper-parameters of a TarFlow model (notation P-C-T-K-sigma of the paper).
///
/// ```
/// use tarflow::model::TarFlowConfig;
/// let mut c = TarFlowConfig::preset("mnist")?; // p4 C128 T4 K4, 10 classes
/// assert_eq!((c.seq_len(), c.token_dim()), (49, 16));
/// c.patch_size = 5;
/// assert!(c.validate().is_err()); // 28 is not divisible by 5
/// # Ok::<(), tarflow::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TarFlowConfig {
    /// Image channels (1 for MNIST, 3 for RGB).
    pub channels: usize,
    /// Image height and width (square images).
    pub image_size: usize,
    /// Patch side `p`: tokens are non-overlapping `p x p` patches.
    pub patch_size: usize,
    /// Transformer width `C`.
    pub width: usize,
    /// Number of flow blocks `T`.
    pub blocks: usize,
    /// Transformer layers per block `K`.
    pub layers_per_block: usize,
    /// Attention head dimension (64 in TarFlow); heads = width / head_dim.
    pub head_dim: usize,
    /// MLP hidden size as a multiple of the width.
    pub mlp_ratio: usize,
    /// Number of classes; 0 = unconditional.
    pub num_classes: usize,
    /// Training noise standard deviation (Gaussian noise augmentation); 0 for none.
    pub noise_sigma: f64,
    /// Optional soft clip `a * tanh(alpha / a)` of the log-scales (STARFlow uses a = 4).
    pub alpha_clip: Option<f64>,
    /// The volume-preserving (additive) variant, `nvp=False` of the official code: every
    /// block only shifts, `z_i = x_i - mu_i(x_<i)`, its output projection gives `mu` alone
    /// (`C -> D`) and its log-determinant is 0. Absent from a config (and not written when
    /// false), so configs and checkpoints of the affine model read and write unchanged.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub additive: bool,
}

impl TarFlowConfig {
    /// The model's shape in the paper's notation, e.g. `3x64x64 p2 C768 T8 K8, 10 classes`
    /// (images, patch size, width, blocks, layers per block), for messages and tables.
    pub fn notation(&self) -> String {
        format!(
            "{}x{}x{} p{} C{} T{} K{}, {} classes",
            self.channels,
            self.image_size,
            self.image_size,
            self.patch_size,
            self.width,
            self.blocks,
            self.layers_per_block,
            self.num_classes
        )
    }

    /// Tokens per image, `N = (H/p)^2`.
    pub fn seq_len(&self) -> usize {
        let s = self.image_size / self.patch_size.max(1);
        s * s
    }

    /// Values per token, `D = C p^2`.
    pub fn token_dim(&self) -> usize {
        self.channels * self.patch_size * self.patch_size
    }

    /// Rows of each block's output projection: `2D` (`alpha` then `mu`), or `D` (`mu`) for
    /// the [`additive`](Self::additive) variant.
    pub fn proj_out_dim(&self) -> usize {
        if self.additive {
            self.token_dim()
        } else {
            2 * self.token_dim()
        }
    }

    /// Values per image.
    pub fn image_dim(&self) -> usize {
        self.channels * self.image_size * self.image_size
    }

    /// Attention heads per layer, `width / head_dim`.
    pub fn heads(&self) -> usize {
        self.width / self.head_dim.max(1)
    }

    /// Checks that the configuration describes a model that can be built on this machine:
    /// sizes that index, and weights that fit its memory (see [`memory`](super::memory)).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.channels == 0 || self.image_size == 0 || self.patch_size == 0 {
            return bad("channels, image_size and patch_size must be positive".into());
        }
        if self
            .channels
            .checked_mul(self.image_size)
            .and_then(|n| n.checked_mul(self.image_size))
            .is_none()
        {
            return bad(format!(
                "an image of {} x {} x {} values is too large to index",
                self.channels, self.image_size, self.image_size
            ));
        }
        if !self.image_size.is_multiple_of(self.patch_size) {
            return bad(format!(
                "image size {} is not divisible by the patch size {}",
                self.image_size, self.patch_size
            ));
        }
        if self.seq_len() < 2 {
            return bad(format!(
                "patch size {} leaves {} token(s); an autoregressive flow needs at least 2",
                self.patch_size,
                self.seq_len()
            ));
        }
        if self.width == 0 || self.head_dim == 0 || !self.width.is_multiple_of(self.head_dim) {
            return bad(format!(
                "width {} must be a positive multiple of the head dimension {}",
                self.width, self.head_dim
            ));
        }
        if self.blocks == 0 || self.layers_per_block == 0 || self.mlp_ratio == 0 {
            return bad("blocks, layers_per_block and mlp_ratio must be positive".into());
        }
        // Bounds every size derived below (tensor shapes, their element counts, the number
        // of tensors): a config read from a file must not make any of them overflow.
        if self.checked_num_parameters().is_none() {
            return bad(format!(
                "a model of width {}, {} blocks of {} layers, MLP ratio {}, {} classes and \
                 {} tokens of {} values has too many parameters to index",
                self.width,
                self.blocks,
                self.layers_per_block,
                self.mlp_ratio,
                self.num_classes,
                self.seq_len(),
                self.token_dim()
            ));
        }
        // A model past the machine's memory would abort in its first allocation.
        super::memory::check_fits(self.parameter_bytes(4), || {
            format!(
                "storing the {:.3e} f32 parameters of a model of width {}, {} blocks of {} \
                 layers and {} tokens of {} values",
                self.parameters_f64(),
                self.width,
                self.blocks,
                self.layers_per_block,
                self.seq_len(),
                self.token_dim()
            )
        })?;
        if !(self.noise_sigma.is_finite() && self.noise_sigma >= 0.0) {
            return bad(format!(
                "noise sigma must be finite and >= 0, got {}",
                self.noise_sigma
            ));
        }
        if let Some(a) = self.alpha_clip {
            if !(a.is_finite() && a > 0.0) {
                return bad(format!("alpha clip must be finite and > 0, got {a}"));
            }
        }
        Ok(())
    }

    /// Total parameter count (elements, not tensors), or `None` when it does not fit an
    /// `isize`; the channel, image-size and width checks of [`validate`](Self::validate) come
    /// first.
    fn checked_num_parameters(&self) -> Option<usize> {
        let (c, d, n, q) = (
            self.width,
            self.token_dim(),
            self.seq_len(),
            self.num_classes,
        );
        let m = self.mlp_ratio.checked_mul(c)?;
        let cc = c.checked_mul(c)?;
        // norm1 + norm2 (4C), qkv (3C^2 + 3C), out (C^2 + C), fc1 (MC + M), fc2 (CM + C).
        let layer = [
            c.checked_mul(9)?,
            cc.checked_mul(4)?,
            m.checked_mul(c)?.checked_mul(2)?,
            m,
        ]
        .into_iter()
        .try_fold(0usize, usize::checked_add)?;
        // proj_in (CD + C), pos_embed (NC), class_embed (QC), layers, proj_out (2DC + 2D, or
        // DC + D when additive).
        let out_rows = if self.additive { 1 } else { 2 };
        let block = [
            c.checked_mul(d)?.checked_mul(1 + out_rows)?,
            c,
            n.checked_mul(c)?,
            q.checked_mul(c)?,
            layer.checked_mul(self.layers_per_block)?,
            d.checked_mul(out_rows)?,
        ]
        .into_iter()
        .try_fold(0usize, usize::checked_add)?;
        block
            .checked_mul(self.blocks)
            .filter(|&total| total <= isize::MAX as usize)
    }

    /// Number of parameter tensors of a model with this (validated) config.
    pub fn num_tensors(&self) -> usize {
        let per_block = 5 + usize::from(self.num_classes > 0) + 12 * self.layers_per_block;
        self.blocks * per_block
    }

    /// Name and shape of every parameter of a model with this (validated) config, in the
    /// order of [`TarFlow::parameters`](super::TarFlow::parameters) (names and layouts in
    /// docs/checkpoint-format.md).
    ///
    /// The list is generated lazily: a config read from a file may describe a model far
    /// larger than the file, and a reader can stop at the first tensor the file lacks.
    pub fn parameter_shapes(&self) -> impl Iterator<Item = (String, Vec<usize>)> + '_ {
        let (c, d, n, q) = (
            self.width,
            self.token_dim(),
            self.seq_len(),
            self.num_classes,
        );
        let m = self.mlp_ratio * c;
        let out = self.proj_out_dim();
        (0..self.blocks).flat_map(move |t| {
            let head = [
                ("proj_in.weight".to_string(), vec![c, d]),
                ("proj_in.bias".to_string(), vec![c]),
                ("pos_embed".to_string(), vec![n, c]),
            ]
            .into_iter()
            .chain((q > 0).then(|| ("class_embed.weight".to_string(), vec![q, c])));
            let layers = (0..self.layers_per_block).flat_map(move |k| {
                [
                    ("norm1.weight", vec![c]),
                    ("norm1.bias", vec![c]),
                    ("attn.qkv.weight", vec![3 * c, c]),
                    ("attn.qkv.bias", vec![3 * c]),
                    ("attn.out.weight", vec![c, c]),
                    ("attn.out.bias", vec![c]),
                    ("norm2.weight", vec![c]),
                    ("norm2.bias", vec![c]),
                    ("mlp.fc1.weight", vec![m, c]),
                    ("mlp.fc1.bias", vec![m]),
                    ("mlp.fc2.weight", vec![c, m]),
                    ("mlp.fc2.bias", vec![c]),
                ]
                .into_iter()
                .map(move |(name, shape)| (format!("layers.{k}.{name}"), shape))
            });
            let tail = [
                ("proj_out.weight".to_string(), vec![out, c]),
                ("proj_out.bias".to_string(), vec![out]),
            ];
            head.chain(layers)
                .chain(tail)
                .map(move |(name, shape)| (format!("blocks.{t}.{name}"), shape))
        })
    }

    /// Named presets: `tiny`, `small` (config S), `mnist`, `cifar10`, `imagenet64`.
    ///
    /// `mnist` here is the official demo's p4 C128 T4 K4. The model that `tarflow train
    /// --preset mnist` trains, and that every `--preset mnist` of the command-line program
    /// builds, is config S (K = 2): `TrainConfig::preset("mnist")?.model`.
    pub fn preset(name: &str) -> Result<Self> {
        let base = TarFlowConfig {
            channels: 1,
            image_size: 28,
            patch_size: 4,
            width: 128,
            blocks: 4,
            layers_per_block: 2,
            head_dim: 64,
            mlp_ratio: 4,
            num_classes: 10,
            noise_sigma: 0.1,
            alpha_clip: None,
            additive: false,
        };
        let cfg = match name {
            // Seconds-scale model for tests and smoke runs.
            "tiny" => TarFlowConfig {
                width: 64,
                blocks: 2,
                layers_per_block: 1,
                ..base
            },
            // Config S of the benchmarks: 28x28x1, p4, C128, T4, K2.
            "small" => base,
            // The official MNIST demo: p4 C128 T4 K4, sigma 0.1, 10 classes.
            "mnist" => TarFlowConfig {
                layers_per_block: 4,
                ..base
            },
            "cifar10" => TarFlowConfig {
                channels: 3,
                image_size: 32,
                patch_size: 4,
                width: 384,
                blocks: 8,
                layers_per_block: 4,
                noise_sigma: 0.05,
                ..base
            },
            // ImageNet64 [2-768-8-8] of the paper, unconditional.
            "imagenet64" => TarFlowConfig {
                channels: 3,
                image_size: 64,
                patch_size: 2,
                width: 768,
                blocks: 8,
                layers_per_block: 8,
                num_classes: 0,
                noise_sigma: 0.05,
                ..base
            },
            other => {
                return Err(Error::Config(format!(
                    "unknown preset '{other}' (known: tiny, small, mnist, cifar10, imagenet64)"
                )))
            }
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The configuration as one line of JSON (the form [`from_json`](Self::from_json) reads).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("config serialises")
    }

    /// Parses a configuration from JSON and validates it; errors on malformed JSON or an
    /// invalid configuration.
    pub fn from_json(s: &str) -> Result<Self> {
        let c: TarFlowConfig = serde_json::from_str(s)
            .map_err(|e| Error::format("model config JSON", e.to_string()))?;
        c.validate()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_validate_and_shapes() {
        for p in ["tiny", "small", "mnist", "cifar10", "imagenet64"] {
            TarFlowConfig::preset(p).unwrap();
        }
        let c = TarFlowConfig::preset("mnist").unwrap();
        assert_eq!((c.seq_len(), c.token_dim(), c.heads()), (49, 16, 2));
        assert!(TarFlowConfig::preset("nope").is_err());
    }

    #[test]
    fn invalid_configs_are_named() {
        let mut c = TarFlowConfig::preset("mnist").unwrap();
        c.patch_size = 5;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("not divisible"), "{e}");
        c.patch_size = 28;
        assert!(c.validate().unwrap_err().to_string().contains("at least 2"));
        let mut c = TarFlowConfig::preset("mnist").unwrap();
        c.width = 100;
        assert!(c.validate().is_err());
        let j = TarFlowConfig::preset("tiny").unwrap().to_json();
        assert_eq!(
            TarFlowConfig::from_json(&j).unwrap(),
            TarFlowConfig::preset("tiny").unwrap()
        );
    }

    #[test]
    fn parameter_shapes_match_the_model() {
        let tiny = TarFlowConfig::preset("tiny").unwrap();
        let other = TarFlowConfig {
            num_classes: 0,
            blocks: 3,
            layers_per_block: 2,
            mlp_ratio: 2,
            alpha_clip: Some(4.0),
            ..tiny.clone()
        };
        let additive = TarFlowConfig {
            additive: true,
            ..other.clone()
        };
        for c in [tiny, other, additive] {
            let m = crate::model::TarFlow::<f32>::new(c.clone(), 0).unwrap();
            let want: Vec<(String, Vec<usize>)> = m
                .parameters()
                .into_iter()
                .map(|(n, t)| (n, t.shape().to_vec()))
                .collect();
            let got: Vec<(String, Vec<usize>)> = c.parameter_shapes().collect();
            assert_eq!(got, want);
            assert_eq!(c.num_tensors(), want.len());
            assert_eq!(c.checked_num_parameters(), Some(m.num_parameters()));
        }
    }

    /// The additive flag is left out of the JSON of an affine model, so its checkpoints keep
    /// their bytes, and a config without it reads as affine.
    #[test]
    fn additive_is_optional_in_json() {
        let tiny = TarFlowConfig::preset("tiny").unwrap();
        let j = tiny.to_json();
        assert!(!j.contains("additive"), "{j}");
        assert!(!TarFlowConfig::from_json(&j).unwrap().additive);
        let add = TarFlowConfig {
            additive: true,
            ..tiny
        };
        assert!(add.to_json().contains("\"additive\":true"));
        assert_eq!(TarFlowConfig::from_json(&add.to_json()).unwrap(), add);
        assert_eq!(add.proj_out_dim(), add.token_dim());
    }

    /// Sizes read from a file that overflow any derived count are errors, not panics.
    #[test]
    fn oversized_configs_are_errors() {
        let base = TarFlowConfig::preset("tiny").unwrap();
        let huge = [
            TarFlowConfig {
                image_size: 1 << 33,
                patch_size: 1,
                ..base.clone()
            },
            TarFlowConfig {
                channels: usize::MAX,
                ..base.clone()
            },
            TarFlowConfig {
                width: 1 << 32,
                head_dim: 1,
                ..base.clone()
            },
            TarFlowConfig {
                blocks: usize::MAX,
                ..base.clone()
            },
            TarFlowConfig {
                layers_per_block: usize::MAX / 2,
                ..base.clone()
            },
            TarFlowConfig {
                mlp_ratio: usize::MAX,
                ..base.clone()
            },
            TarFlowConfig {
                num_classes: usize::MAX,
                ..base.clone()
            },
        ];
        for c in huge {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("too large") || e.contains("too many"), "{e}");
        }
        // Sizes that index but cannot fit any machine are refused before allocation, with
        // the memory they would take (`train --width 64000000` aborted in its first alloc).
        let wide = TarFlowConfig {
            width: 64_000_000,
            ..base.clone()
        };
        let e = wide.validate().unwrap_err().to_string();
        assert!(
            e.contains("width 64000000") && e.contains("needs at least") && e.contains("PB"),
            "{e}"
        );
        let big_images = TarFlowConfig {
            image_size: 1_000_000,
            ..base.clone()
        };
        let e = big_images.validate().unwrap_err().to_string();
        assert!(e.contains("needs at least") && e.contains("TB"), "{e}");
        let j = base
            .to_json()
            .replace("\"image_size\":28", "\"image_size\":4294967296");
        let e = TarFlowConfig::from_json(&j).unwrap_err().to_string();
        assert!(e.contains("too large to index"), "{e}");
    }
}
