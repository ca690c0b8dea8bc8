//! Model-level subcommands: init, audit, encode, decode, sample.

use super::out::say;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};

use tarflow::audit::{audit as run_audit, AuditOptions};
use tarflow::imageio::{f32_to_u8_images, write_png_grid};
use tarflow::model::{load_checkpoint, save_checkpoint, Guidance, SampleOptions, Sampler, TarFlow};
use tarflow::tensorio::{read_tensors, write_tensors};
use tarflow::{DType, Element, Error, Result, Rng, Tensor};

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F64,
}

#[derive(Args)]
pub struct InitArgs {
    /// Preset, named as for `train`: tiny, small, mnist, mnist-likelihood,
    /// mnist-likelihood-long, cifar10, imagenet64.
    #[arg(long)]
    preset: String,
    /// Output checkpoint path (.safetensors).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Give the (normally zero) output projections random N(0, s^2) weights, so the flow is
    /// non-trivial without training (useful for audits and tests).
    #[arg(long)]
    randomize_output: Option<f64>,
}

pub fn init(a: InitArgs) -> Result<()> {
    let cfg = super::shape::preset_model(&a.preset)?;
    let m = TarFlow::<f32>::new(cfg, a.seed)?;
    if let Some(s) = a.randomize_output {
        m.randomize_output_projections(s, a.seed.wrapping_add(1))?;
    }
    save_checkpoint(&a.out, &m, &[])?;
    say!(
        "wrote {} ({} parameters, preset {})",
        a.out.display(),
        m.num_parameters(),
        a.preset
    );
    Ok(())
}

/// Where a model comes from: a checkpoint, or a preset at random initialisation.
#[derive(Args)]
pub struct ModelSource {
    /// Checkpoint (.safetensors) to load.
    #[arg(long, conflicts_with = "preset")]
    checkpoint: Option<PathBuf>,
    /// Preset at random initialisation (output projections randomised, see `init`), named
    /// as for `train`.
    #[arg(long)]
    preset: Option<String>,
    /// Seed of the random initialisation (with --preset).
    #[arg(long, default_value_t = 0)]
    init_seed: u64,
}

impl ModelSource {
    fn load<E: Element>(&self) -> Result<TarFlow<E>> {
        match (&self.checkpoint, &self.preset) {
            (Some(p), _) => load_checkpoint(p)?.model(),
            (None, Some(pr)) => {
                let m = TarFlow::<E>::new(super::shape::preset_model(pr)?, self.init_seed)?;
                m.randomize_output_projections(0.05, self.init_seed.wrapping_add(1))?;
                Ok(m)
            }
            (None, None) => Err(Error::Config(
                "give --checkpoint PATH or --preset NAME".into(),
            )),
        }
    }
}

#[derive(Args)]
pub struct AuditArgs {
    #[command(flatten)]
    model: ModelSource,
    /// Precision of the audit (f64 is the one with meaningful tolerances).
    #[arg(long, value_enum, default_value = "f64")]
    dtype: Dtype,
    /// Random inputs to check.
    #[arg(long, default_value_t = 2)]
    samples: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Tokens per block in the windowed Jacobian check.
    #[arg(long, default_value_t = 4)]
    window: usize,
    /// Build the whole-model Jacobian up to this many image dimensions.
    #[arg(long, default_value_t = 256)]
    full_jacobian_max_dim: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn audit(a: AuditArgs) -> Result<()> {
    let mut opts = AuditOptions {
        samples: a.samples,
        seed: a.seed,
        window: a.window,
        full_jacobian_max_dim: a.full_jacobian_max_dim,
        ..Default::default()
    };
    let report = match a.dtype {
        Dtype::F64 => run_audit(&a.model.load::<f64>()?, &opts)?,
        Dtype::F32 => {
            // f32 cannot meet f64 tolerances; scale them to its precision.
            opts.logdet_rtol = 1e-4;
            opts.roundtrip_atol = 1e-4;
            run_audit(&a.model.load::<f32>()?, &opts)?
        }
    };
    if a.json {
        say!(
            "{}",
            serde_json::to_string_pretty(&report)
                .map_err(|e| Error::format("audit report", e.to_string()))?
        );
    } else {
        say!("audit ({})\n{}", report.dtype, report.table());
    }
    if report.passed() {
        say!("all checks passed");
        Ok(())
    } else {
        Err(Error::Config("audit failed: see the table above".into()))
    }
}

#[derive(Args)]
pub struct EncodeArgs {
    #[arg(long)]
    checkpoint: PathBuf,
    /// safetensors file with tensor `x` [B,C,H,W] in [-1,1] (optional `labels` [B], -1 = none).
    #[arg(long)]
    input: PathBuf,
    /// Output safetensors: `z` [B,C,H,W], `logdet` [B], `logdet_blocks` [B,T], `bpd` [B].
    #[arg(long)]
    output: PathBuf,
    #[arg(long, value_enum, default_value = "f32")]
    dtype: Dtype,
}

fn labels_from(
    t: Option<&Tensor<f64>>,
    b: usize,
    classes: usize,
) -> Result<Option<Vec<Option<usize>>>> {
    let Some(t) = t else {
        return Ok((classes > 0).then(|| vec![None; b]));
    };
    let v = t.to_vec();
    if v.len() != b {
        return Err(Error::Config(format!(
            "`labels` has {} entries for {b} samples",
            v.len()
        )));
    }
    v.iter()
        .map(|&l| {
            if l < 0.0 {
                Ok(None)
            } else if l.fract() == 0.0 && (l as usize) < classes {
                Ok(Some(l as usize))
            } else {
                Err(Error::Config(format!(
                    "label {l} is not a class of this model (0..{classes}, or -1)"
                )))
            }
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

impl Dtype {
    fn storage(self) -> DType {
        match self {
            Dtype::F32 => DType::F32,
            Dtype::F64 => DType::F64,
        }
    }
}

/// A model, the tensor it works on, and optional labels.
type ModelInput<E> = (TarFlow<E>, Tensor<E>, Option<Tensor<E>>);

/// The model of `checkpoint`, the finite tensor `name` of `input`, and its optional
/// `labels` tensor (read at the same precision; labels are small integers).
fn load_input<E: Element>(checkpoint: &Path, input: &Path, name: &str) -> Result<ModelInput<E>> {
    let m: TarFlow<E> = load_checkpoint(checkpoint)?.model()?;
    let mut inputs = read_tensors::<E>(input)?;
    let t = inputs.remove(name).ok_or_else(|| {
        Error::format(
            input.display().to_string(),
            format!("no tensor named `{name}`"),
        )
    })?;
    if !t.all_finite() {
        return Err(Error::NonFinite {
            what: format!("`{name}` in {}", input.display()),
        });
    }
    Ok((m, t, inputs.remove("labels")))
}

fn encode_as<E: Element>(a: &EncodeArgs) -> Result<()> {
    let (m, x, labels_t) = load_input::<E>(&a.checkpoint, &a.input, "x")?;
    let b = x.shape().first().copied().unwrap_or(0);
    let labels = labels_from(
        labels_t.map(|t| t.cast::<f64>()).as_ref(),
        b,
        m.config.num_classes,
    )?;
    let out = tarflow::with_no_grad(|| m.forward(&x, labels.as_deref()))?;
    let z = m.to_images(&out.z)?;
    let bpd = m.bits_per_dim(&out)?;
    let bpd = Tensor::<E>::from_vec(bpd.into_iter().map(E::from_f64).collect(), &[b])?;
    let dtype = a.dtype.storage();
    write_tensors(
        &a.output,
        &[
            ("z", &z),
            ("logdet", &out.logdet),
            ("logdet_blocks", &out.logdet_blocks),
            ("bpd", &bpd),
        ],
        dtype,
    )?;
    say!("encoded {b} images -> {}", a.output.display());
    Ok(())
}

pub fn encode(a: EncodeArgs) -> Result<()> {
    match a.dtype {
        Dtype::F32 => encode_as::<f32>(&a),
        Dtype::F64 => encode_as::<f64>(&a),
    }
}

#[derive(Args)]
pub struct DecodeArgs {
    #[arg(long)]
    checkpoint: PathBuf,
    /// safetensors file with tensor `z` [B,C,H,W] (optional `labels` [B], -1 = none).
    #[arg(long)]
    input: PathBuf,
    /// Output safetensors with `x` [B,C,H,W].
    #[arg(long)]
    output: PathBuf,
    #[arg(long, value_enum, default_value = "f32")]
    dtype: Dtype,
}

fn decode_as<E: Element>(a: &DecodeArgs) -> Result<()> {
    let (m, z, labels_t) = load_input::<E>(&a.checkpoint, &a.input, "z")?;
    let tokens = if z.rank() == 4 { m.to_tokens(&z)? } else { z };
    let b = tokens.shape().first().copied().unwrap_or(0);
    let labels = labels_from(
        labels_t.map(|t| t.cast::<f64>()).as_ref(),
        b,
        m.config.num_classes,
    )?
    .unwrap_or_else(|| vec![None; b]);
    let x = Sampler::new(&m)?.reverse_tokens(&tokens, &labels, Guidance::None)?;
    let x = m.to_images(&x)?;
    write_tensors(&a.output, &[("x", &x)], a.dtype.storage())?;
    say!("decoded {b} latents -> {}", a.output.display());
    Ok(())
}

pub fn decode(a: DecodeArgs) -> Result<()> {
    match a.dtype {
        Dtype::F32 => decode_as::<f32>(&a),
        Dtype::F64 => decode_as::<f64>(&a),
    }
}

#[derive(Args)]
pub struct SampleArgs {
    #[arg(long)]
    checkpoint: PathBuf,
    /// Number of samples (per class when --class is not given and the model is conditional).
    #[arg(long, default_value_t = 10)]
    num: usize,
    /// Class to sample (conditional models); default: every class in turn.
    #[arg(long)]
    class: Option<usize>,
    /// Classifier-free guidance weight w (p = p_c + w (p_c - p_u)).
    #[arg(long)]
    cfg: Option<f64>,
    /// Anneal the guidance weight linearly over tokens, w_i = w (i+1)/(N-1).
    #[arg(long)]
    cfg_anneal: bool,
    /// Attention-temperature guidance: the second branch divides logits by this tau.
    #[arg(long)]
    attn_temp: Option<f64>,
    /// Weight of attention-temperature guidance.
    #[arg(long, default_value_t = 1.0)]
    attn_weight: f64,
    /// Denoise with the model's score (Tweedie) using this sigma (default: the config's).
    #[arg(long)]
    denoise: bool,
    #[arg(long)]
    sigma: Option<f64>,
    /// Prior standard deviation (temperature of z).
    #[arg(long, default_value_t = 1.0)]
    prior_std: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// PNG grid to write.
    #[arg(long, default_value = "samples.png")]
    out: PathBuf,
    /// Also write one PNG per sample into this directory.
    #[arg(long)]
    out_dir: Option<PathBuf>,
}

pub fn sample(a: SampleArgs) -> Result<()> {
    let ck = load_checkpoint(&a.checkpoint)?;
    let m: TarFlow<f32> = ck.model()?;
    let cfg = m.config.clone();
    let guidance = match (a.cfg, a.attn_temp) {
        (Some(_), Some(_)) => {
            return Err(Error::Config(
                "use either --cfg or --attn-temp, not both".into(),
            ))
        }
        (Some(w), None) => Guidance::ClassifierFree {
            weight: w,
            anneal: a.cfg_anneal,
        },
        (None, Some(tau)) => Guidance::Temperature {
            weight: a.attn_weight,
            tau,
            anneal: a.cfg_anneal,
        },
        (None, None) => Guidance::None,
    };
    let (labels, cols): (Vec<Option<usize>>, usize) = if cfg.num_classes == 0 {
        (Vec::new(), a.num.clamp(1, 16))
    } else if let Some(c) = a.class {
        if c >= cfg.num_classes {
            return Err(Error::Config(format!(
                "--class {c}: the model has {} classes",
                cfg.num_classes
            )));
        }
        (vec![Some(c); a.num], a.num.clamp(1, 16))
    } else {
        (
            (0..cfg.num_classes)
                .flat_map(|c| std::iter::repeat_n(Some(c), a.num))
                .collect(),
            a.num.max(1),
        )
    };
    let sampler = Sampler::new(&m)?;
    let opts = SampleOptions {
        guidance,
        prior_std: a.prior_std,
        ..Default::default()
    };
    let mut rng = Rng::new(a.seed);
    let t0 = std::time::Instant::now();
    let (mut x, report) = sampler.sample(a.num, &labels, &mut rng, &opts)?;
    if a.denoise {
        let sigma = a.sigma.unwrap_or(cfg.noise_sigma);
        let lab = (cfg.num_classes > 0).then_some(labels.as_slice());
        x = m.denoise(&x, lab, sigma)?;
    }
    let n = x.shape()[0];
    let pixels = f32_to_u8_images(&x.to_vec());
    let (c, s) = (cfg.channels, cfg.image_size);
    write_png_grid(&a.out, &pixels, n, c, s, s, cols, 2)?;
    if let Some(dir) = &a.out_dir {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let per = c * s * s;
        for i in 0..n {
            write_png_grid(
                dir.join(format!("sample_{i:04}.png")),
                &pixels[i * per..(i + 1) * per],
                1,
                c,
                s,
                s,
                1,
                0,
            )?;
        }
    }
    say!(
        "{n} samples in {:.2}s -> {} (redrawn {}, failed {})",
        t0.elapsed().as_secs_f64(),
        a.out.display(),
        report.redrawn,
        report.failed
    );
    Ok(())
}
