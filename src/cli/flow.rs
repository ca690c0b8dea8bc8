//! Model-level subcommands: init, audit, encode, decode, sample.

use super::out::say;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};

use tarflow::audit::{audit as run_audit, AuditOptions};
use tarflow::data::{decode_image, load_image_folder};
use tarflow::imageio::{
    f32_to_u8_images, make_grid, upscale, write_grid, write_png, GridStyle, ImageKind,
    MAX_GRID_SCALE,
};
use tarflow::model::{load_checkpoint, save_checkpoint, Guidance, SampleOptions, Sampler, TarFlow};
use tarflow::tensorio::{read_tensors, tensors_to_bytes, write_tensors};
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
    /// Seed of the initialisation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Give the (normally zero) output projections random N(0, s^2) weights, so the flow is
    /// non-trivial without training (useful for audits and tests); s finite and >= 0.
    #[arg(long)]
    randomize_output: Option<f64>,
}

impl InitArgs {
    /// Pre-flight checks that read no file.
    pub fn check(&self) -> Result<()> {
        super::shape::preset_model(&self.preset)?;
        if let Some(s) = self.randomize_output {
            if !(s.is_finite() && s >= 0.0) {
                return Err(bad_option(
                    "init",
                    "--randomize-output",
                    s,
                    "a finite s >= 0",
                ));
            }
        }
        Ok(())
    }
}

/// An error naming a command's option, the value given and what it had to be.
fn bad_option(cmd: &'static str, opt: &str, value: impl std::fmt::Display, want: &str) -> Error {
    Error::arg(cmd, format!("{opt} {value}: expected {want}"))
}

/// `e` (from checking `opt value`) with the option and value in front: the library names
/// the quantity, the user knows the option.
fn for_option(cmd: &'static str, opt: &str, value: impl std::fmt::Display, e: Error) -> Error {
    let m = match e {
        Error::Config(m) => m,
        other => other.to_string(),
    };
    Error::arg(cmd, format!("{opt} {value}: {m}"))
}

pub fn init(a: InitArgs) -> Result<()> {
    let cfg = super::shape::preset_model(&a.preset)?;
    let m = TarFlow::<f32>::new(cfg, a.seed)?;
    if let Some(s) = a.randomize_output {
        m.randomize_output_projections(s, a.seed.wrapping_add(1))
            .map_err(|e| for_option("init", "--randomize-output", s, e))?;
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
    /// Pre-flight checks that read no file: one source, a known preset.
    fn check(&self) -> Result<()> {
        match (&self.checkpoint, &self.preset) {
            (None, None) => Err(Error::Config(
                "give --checkpoint PATH or --preset NAME".into(),
            )),
            (_, Some(p)) => super::shape::preset_model(p).map(|_| ()),
            _ => Ok(()),
        }
    }

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
    /// Random inputs to check (at least 1).
    #[arg(long, default_value_t = 2)]
    samples: usize,
    /// Seed of the random inputs.
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

impl AuditArgs {
    /// Pre-flight checks that read no file.
    pub fn check(&self) -> Result<()> {
        self.model.check()?;
        if self.samples == 0 {
            // No input checks nothing, which must not read as "all checks passed".
            return Err(bad_option("audit", "--samples", 0, "at least 1"));
        }
        Ok(())
    }
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
    /// Checkpoint (.safetensors) of the model.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Images: a .png/.jpg/.jpeg file, a folder of them (every image below it, sorted by
    /// name, scaled and centre-cropped to the model's size), a `.tfpack` written by `tarflow
    /// pack` (images of the model's size; its labels are used by a class-conditional model),
    /// or a safetensors file with `x` [B,C,H,W], B >= 1, in [-1,1] (up to 1 beyond for
    /// noise-augmented inputs) and optional `labels` [B] (-1 = none).
    #[arg(long)]
    input: PathBuf,
    /// With a `.tfpack` input: encode only its images START..END (pack order: the training
    /// images, then the test split) [default: every image].
    #[arg(long, value_name = "START..END")]
    range: Option<String>,
    /// Images per forward pass: a larger input is encoded in chunks of this many, so the
    /// computation's memory stays bounded (the results do not depend on it).
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Class of every image of a PNG/JPEG input (class-conditional models) [default: none]
    #[arg(long)]
    class: Option<usize>,
    /// Output safetensors: `z` [B,C,H,W], `logdet` [B], `logdet_blocks` [B,T], `bpd` [B],
    /// and the input's `labels` [B] (so that `decode` uses them). Not written when any of
    /// them is NaN or infinite (an error says which image).
    #[arg(long)]
    output: PathBuf,
    /// Precision of the computation and of the output file.
    #[arg(long, value_enum, default_value = "f32")]
    dtype: Dtype,
    /// Where to compute: cpu, cuda[:N] (a build with the `cuda` feature and an NVIDIA GPU),
    /// or ptx-sim (the PTX interpreter: the GPU kernels on the CPU, slow; for checking)
    #[arg(long, default_value = "cpu")]
    device: String,
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
        .enumerate()
        .map(|(i, &l)| {
            // Only -1 means "no label": any other negative is a mistake, not a request.
            if l == -1.0 {
                Ok(None)
            } else if l >= 0.0 && l.fract() == 0.0 && l < classes as f64 {
                Ok(Some(l as usize))
            } else if classes == 0 {
                Err(Error::Config(format!(
                    "`labels`[{i}] is {l}: the model is unconditional, so every label must be \
                     -1 (or leave `labels` out)"
                )))
            } else {
                Err(Error::Config(format!(
                    "`labels`[{i}] is {l}: not a class of this model (an integer in \
                     0..={}, or -1 for none)",
                    classes - 1
                )))
            }
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

impl Dtype {
    fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F64 => "f64",
        }
    }

    fn storage(self) -> DType {
        match self {
            Dtype::F32 => DType::F32,
            Dtype::F64 => DType::F64,
        }
    }
}

/// A model, the tensor it works on, and optional labels.
type ModelInput<E> = (TarFlow<E>, Tensor<E>, Option<Tensor<E>>);

/// Whether `path` names a PNG or JPEG file by its extension.
fn is_image_file(path: &Path) -> bool {
    ImageKind::from_path(path).is_ok()
}

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

/// The images of a PNG/JPEG file or a folder of them, as the model's `x` [B,C,H,W] in
/// [-1, 1], and the file of each image.
fn read_image_input<E: Element>(m: &TarFlow<E>, input: &Path) -> Result<(Tensor<E>, Vec<PathBuf>)> {
    let (c, s) = (m.config.channels, m.config.image_size);
    let (pixels, files) = if input.is_dir() {
        let folder = load_image_folder(input, c, s, s)?;
        (folder.dataset.into_parts().0, folder.files)
    } else {
        let bytes = tarflow::fsutil::read_file(input)?;
        let name = input.display().to_string();
        (
            decode_image(&bytes, &name, c, s, s)?,
            vec![input.to_path_buf()],
        )
    };
    let b = files.len();
    Ok((to_model_input(&pixels, [b, c, s, s])?, files))
}

/// How far outside [-1, 1] an input to `encode` may go: noise augmentation (sigma <= 0.1 in
/// every preset) strays a little past the pixel range, while pixels stored as 0..255 or
/// 0..1-scaled-wrong data go far past it and make the flow overflow.
const ENCODE_MARGIN: f64 = 1.0;

/// The batch size of `t` (tensor `name` of `input`), which must hold at least one item.
fn batch_of<E: Element>(t: &Tensor<E>, name: &str, input: &Path) -> Result<usize> {
    match t.shape().first() {
        Some(&b) if b > 0 && t.rank() > 1 => Ok(b),
        _ => Err(Error::format(
            input.display().to_string(),
            format!(
                "`{name}` has shape {:?}: expected a batch of at least one image, [B, ...] with \
                 B >= 1",
                t.shape()
            ),
        )),
    }
}

/// Refuses images outside what the model was trained on (see [`ENCODE_MARGIN`]).
fn check_image_range<E: Element>(x: &Tensor<E>, input: &Path) -> Result<()> {
    let v = x.to_f64_vec();
    let (lo, hi) = v
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        });
    if lo < -1.0 - ENCODE_MARGIN || hi > 1.0 + ENCODE_MARGIN {
        return Err(Error::format(
            input.display().to_string(),
            format!(
                "`x` holds values in [{}, {}]; encode expects images in [-1, 1] (up to \
                 {ENCODE_MARGIN} beyond for noise-augmented inputs): scale 8-bit pixels with \
                 x/127.5 - 1",
                short(lo),
                short(hi)
            ),
        ));
    }
    Ok(())
}

/// `v` for a message: as read (files hold f32 more often than not), in exponent form when
/// large or small.
fn short(v: f64) -> String {
    let f = v as f32;
    if f != 0.0 && !(1e-4..1e6).contains(&f.abs()) {
        format!("{f:e}")
    } else {
        format!("{f}")
    }
}

/// The first of `b` items (rows of `t`) that holds a NaN or infinity.
fn first_nonfinite<E: Element>(t: &Tensor<E>, b: usize) -> Option<usize> {
    let v = t.to_f64_vec();
    let per = v.len() / b.max(1);
    (0..b).find(|&i| v[i * per..(i + 1) * per].iter().any(|x| !x.is_finite()))
}

/// `START..END` of `--range`, within `len` images and not empty.
fn parse_range(text: &str, len: usize) -> Result<std::ops::Range<usize>> {
    let bad = |why: String| bad_option("encode", "--range", text, &why);
    let (lo, hi) = text
        .split_once("..")
        .ok_or_else(|| bad("START..END, e.g. 0..100".to_string()))?;
    let (lo, hi) = match (lo.trim().parse::<usize>(), hi.trim().parse::<usize>()) {
        (Ok(lo), Ok(hi)) => (lo, hi),
        _ => return Err(bad("START..END with whole numbers, e.g. 0..100".to_string())),
    };
    if lo >= hi {
        return Err(bad("a non-empty range, START < END".to_string()));
    }
    if hi > len {
        return Err(bad(format!(
            "a range within the pack's {len} images (0..{len})"
        )));
    }
    Ok(lo..hi)
}

/// Images of a pack as the model's input, their labels, and which images they are.
type PackInput<E> = (Tensor<E>, Option<Tensor<E>>, std::ops::Range<usize>);

/// The images `range` of the pack `input` as the model's `x` [B,C,H,W] in [-1, 1] (as
/// [`read_image_input`] makes them), and their labels when the model is class-conditional.
fn read_pack_input<E: Element>(
    m: &TarFlow<E>,
    input: &Path,
    range: Option<&str>,
) -> Result<PackInput<E>> {
    let data = tarflow::data::PackedData::open(input)?.dataset()?;
    let (c, s) = (m.config.channels, m.config.image_size);
    if data.image_shape() != [c, s, s] {
        return Err(Error::Config(format!(
            "{} holds {:?} images (channels, height, width); the model takes [{c}, {s}, {s}]",
            input.display(),
            data.image_shape()
        )));
    }
    let range = match range {
        Some(r) => parse_range(r, data.len())?,
        None => 0..data.len(),
    };
    let data = data.slice(range.clone())?;
    let b = data.len();
    if b == 0 {
        return Err(Error::format(
            input.display().to_string(),
            "the pack holds no images",
        ));
    }
    let x = to_model_input::<E>(data.images(), [b, c, s, s])?;
    let labels = (m.config.num_classes > 0)
        .then(|| {
            let v = data
                .labels()
                .iter()
                .map(|&l| E::from_f64(l as f64))
                .collect();
            Tensor::<E>::from_vec(v, &[b])
        })
        .transpose()?;
    Ok((x, labels, range))
}

/// 8-bit pixels as the model's input `x = 2p/255 - 1`, the f64 value rounded once to E, as
/// the training inputs are.
fn to_model_input<E: Element>(pixels: &[u8], shape: [usize; 4]) -> Result<Tensor<E>> {
    let x = pixels
        .iter()
        .map(|&p| E::from_f64(2.0 * f64::from(p) / 255.0 - 1.0))
        .collect();
    Tensor::from_vec(x, &shape)
}

/// The flow's forward of `x` on `device` without gradients, `batch` images at a time, the
/// outputs on the host.
fn encode_in_chunks<E: Element>(
    m: &TarFlow<E>,
    x: &Tensor<E>,
    labels: Option<&[Option<usize>]>,
    batch: usize,
    device: tarflow::Device,
) -> Result<tarflow::model::FlowOutput<E>> {
    let b = x.shape()[0];
    let mut parts = Vec::new();
    for lo in (0..b).step_by(batch.max(1)) {
        let n = batch.min(b - lo);
        let xs = x.narrow(0, lo, n)?.to_device(device)?;
        let ls = labels.map(|l| &l[lo..lo + n]);
        let out = tarflow::with_no_grad(|| m.forward(&xs, ls))?;
        parts.push(tarflow::model::FlowOutput {
            z: out.z.to_host()?,
            logdet: out.logdet.to_host()?,
            logdet_blocks: out.logdet_blocks.to_host()?,
        });
    }
    if parts.len() == 1 {
        return Ok(parts.pop().expect("one part"));
    }
    let cat = |f: fn(&tarflow::model::FlowOutput<E>) -> &Tensor<E>| {
        Tensor::concat(&parts.iter().map(f).collect::<Vec<_>>(), 0)
    };
    Ok(tarflow::model::FlowOutput {
        z: cat(|p| &p.z)?,
        logdet: cat(|p| &p.logdet)?,
        logdet_blocks: cat(|p| &p.logdet_blocks)?,
    })
}

impl EncodeArgs {
    /// Pre-flight checks that read no file.
    pub fn check(&self) -> Result<()> {
        if self.batch == 0 {
            return Err(bad_option("encode", "--batch", 0, "at least 1"));
        }
        if let Some(r) = &self.range {
            // The bound is checked against the pack once it is read.
            parse_range(r, usize::MAX)?;
        }
        Ok(())
    }
}

fn encode_as<E: Element>(a: &EncodeArgs) -> Result<()> {
    let from_pack = tarflow::data::is_pack(&a.input).unwrap_or(false);
    if a.range.is_some() && !from_pack {
        return Err(bad_option(
            "encode",
            "--range",
            a.range.as_deref().unwrap_or_default(),
            "a .tfpack input (written by `tarflow pack`)",
        ));
    }
    let from_images = a.input.is_dir() || is_image_file(&a.input);
    let mut pack_range = None;
    let (m, x, labels_t, files) = if from_pack {
        if let Some(c) = a.class {
            return Err(bad_option(
                "encode",
                "--class",
                c,
                "a PNG/JPEG input (a pack carries its own labels)",
            ));
        }
        let m: TarFlow<E> = load_checkpoint(&a.checkpoint)?.model()?;
        let (x, labels, range) = read_pack_input(&m, &a.input, a.range.as_deref())?;
        pack_range = Some(range);
        (m, x, labels, None)
    } else if from_images {
        let m: TarFlow<E> = load_checkpoint(&a.checkpoint)?.model()?;
        let (x, files) = read_image_input(&m, &a.input)?;
        let b = files.len();
        let labels = a
            .class
            .map(|c| Tensor::<E>::from_vec(vec![E::from_f64(c as f64); b], &[b]));
        (m, x, labels.transpose()?, Some(files))
    } else {
        if let Some(c) = a.class {
            return Err(bad_option(
                "encode",
                "--class",
                c,
                "a PNG/JPEG input (a safetensors input carries its own `labels`)",
            ));
        }
        let (m, x, labels) = load_input::<E>(&a.checkpoint, &a.input, "x")?;
        (m, x, labels, None)
    };
    let b = batch_of(&x, "x", &a.input)?;
    check_image_range(&x, &a.input)?;
    let labels = labels_from(
        labels_t.map(|t| t.cast::<f64>()).as_ref(),
        b,
        m.config.num_classes,
    )
    .map_err(|e| match (&a.class, e) {
        (Some(c), Error::Config(m)) => for_option("encode", "--class", c, Error::Config(m)),
        (_, e) => e,
    })?;
    let device = super::train::open_device(&a.device)?;
    let m = m.to_device(device)?;
    let out = encode_in_chunks(&m, &x, labels.as_deref(), a.batch, device)?;
    let z = m.to_images(&out.z)?;
    let bpd = m.bits_per_dim(&out)?;
    let bpd = Tensor::<E>::from_vec(bpd.into_iter().map(E::from_f64).collect(), &[b])?;
    for (name, t) in [
        ("z", &z),
        ("logdet", &out.logdet),
        ("logdet_blocks", &out.logdet_blocks),
        ("bpd", &bpd),
    ] {
        if let Some(i) = first_nonfinite(t, b) {
            return Err(Error::NonFinite {
                what: format!(
                    "`{name}` of image {i} of {} (the flow overflows at {}); {} was not written",
                    a.input.display(),
                    a.dtype.name(),
                    a.output.display()
                ),
            });
        }
    }
    // The labels go with the latents, so that `decode` inverts with the same condition.
    let labels_out = labels
        .map(|l| {
            let v = l
                .iter()
                .map(|c| E::from_f64(c.map_or(-1.0, |c| c as f64)))
                .collect();
            Tensor::<E>::from_vec(v, &[b])
        })
        .transpose()?;
    let mut tensors = vec![
        ("z", &z),
        ("logdet", &out.logdet),
        ("logdet_blocks", &out.logdet_blocks),
        ("bpd", &bpd),
    ];
    if let Some(l) = &labels_out {
        tensors.push(("labels", l));
    }
    // Which file each latent came from, for an image input; which images, for a pack.
    let metadata = match (&files, &pack_range) {
        (Some(f), _) => {
            let names: Vec<String> = f.iter().map(|p| p.display().to_string()).collect();
            let json = serde_json::to_string(&names)
                .map_err(|e| Error::format("encode file list", e.to_string()))?;
            Some(std::collections::HashMap::from([(
                "files".to_string(),
                json,
            )]))
        }
        (None, Some(r)) => Some(std::collections::HashMap::from([
            ("pack".to_string(), a.input.display().to_string()),
            ("range".to_string(), format!("{}..{}", r.start, r.end)),
        ])),
        (None, None) => None,
    };
    let bytes = tensors_to_bytes(&tensors, a.dtype.storage(), metadata)?;
    tarflow::fsutil::atomic_write(&a.output, &bytes)?;
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
    /// Checkpoint (.safetensors) of the model.
    #[arg(long)]
    checkpoint: PathBuf,
    /// safetensors file with tensor `z` [B,C,H,W] (or [B,N,D]), B >= 1, finite, and optional
    /// `labels` [B] (-1 = none; `encode` writes them).
    #[arg(long)]
    input: PathBuf,
    /// Output: a .png/.jpg/.jpeg grid of the images, or (any other name) safetensors with `x`
    /// [B,C,H,W]. Not written when any value of x is NaN or infinite (z far outside the
    /// prior N(0, 1) can overflow the inverse flow).
    #[arg(long)]
    output: PathBuf,
    /// Also write one PNG per image into this folder (created when missing).
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Upscale factor of the written images (nearest neighbour), 1..=16.
    #[arg(long, default_value_t = 1)]
    scale: usize,
    /// Precision of the computation and of a safetensors output.
    #[arg(long, value_enum, default_value = "f32")]
    dtype: Dtype,
    /// Where to compute: cpu, cuda[:N] (a build with the `cuda` feature and an NVIDIA GPU),
    /// or ptx-sim (the PTX interpreter: the GPU kernels on the CPU, slow; for checking)
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// Image formats the readers know but the writers do not produce: an output named so is
/// refused rather than written as something else.
const UNWRITTEN_IMAGE_EXTENSIONS: [&str; 7] = ["gif", "bmp", "webp", "tif", "tiff", "ppm", "pgm"];

impl DecodeArgs {
    /// Pre-flight checks that read no file.
    pub fn check(&self) -> Result<()> {
        check_scale("decode", self.scale)?;
        let ext = self
            .output
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        if ext.is_some_and(|e| UNWRITTEN_IMAGE_EXTENSIONS.contains(&e.as_str())) {
            return Err(bad_option(
                "decode",
                "--output",
                self.output.display(),
                "a .png, .jpg or .jpeg image, or a safetensors file",
            ));
        }
        Ok(())
    }
}

/// `--scale` within what the grid writer takes.
fn check_scale(cmd: &'static str, scale: usize) -> Result<()> {
    if !(1..=MAX_GRID_SCALE).contains(&scale) {
        return Err(bad_option(
            cmd,
            "--scale",
            scale,
            &format!("an upscale factor in 1..={MAX_GRID_SCALE}"),
        ));
    }
    Ok(())
}

fn decode_as<E: Element>(a: &DecodeArgs) -> Result<()> {
    let (m, z, labels_t) = load_input::<E>(&a.checkpoint, &a.input, "z")?;
    let b = batch_of(&z, "z", &a.input)?;
    // z is finite (load_input), so the largest magnitude is well defined.
    let zmax = z
        .to_f64_vec()
        .iter()
        .fold(0.0f64, |acc, v| acc.max(v.abs()));
    let tokens = if z.rank() == 4 { m.to_tokens(&z)? } else { z };
    let labels = labels_from(
        labels_t.map(|t| t.cast::<f64>()).as_ref(),
        b,
        m.config.num_classes,
    )?
    .unwrap_or_else(|| vec![None; b]);
    let m = m.to_device(super::train::open_device(&a.device)?)?;
    let x = Sampler::new(&m)?.reverse_tokens(&tokens, &labels, Guidance::None)?;
    let x = m.to_images(&x)?;
    if let Some(i) = first_nonfinite(&x, b) {
        return Err(Error::NonFinite {
            what: format!(
                "`x` of latent {i} of {} (z reaches |z| = {}, the prior is N(0, 1); the \
                 inverse flow overflows at {}); {} was not written",
                a.input.display(),
                short(zmax),
                a.dtype.name(),
                a.output.display()
            ),
        });
    }
    let images = is_image_file(&a.output) || a.out_dir.is_some();
    let pixels = images.then(|| f32_to_u8_images(&x.cast::<f32>().to_vec()));
    let (c, s) = (m.config.channels, m.config.image_size);
    match &pixels {
        Some(p) if is_image_file(&a.output) => {
            let style = GridStyle {
                scale: a.scale,
                ..GridStyle::new(b.clamp(1, 16), 2)
            };
            write_grid(&a.output, p, b, c, s, s, &style)?
        }
        _ => write_tensors(&a.output, &[("x", &x)], a.dtype.storage())?,
    }
    if let (Some(dir), Some(p)) = (&a.out_dir, &pixels) {
        write_each(dir, p, b, c, s, a.scale, "image")?;
    }
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
    /// Checkpoint (.safetensors) to sample from.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Number of samples, at least 1 (per class when --class is not given and the model is
    /// conditional).
    #[arg(long, default_value_t = 10)]
    num: usize,
    /// Class to sample (conditional models only) [default: every class, one per row]
    #[arg(long)]
    class: Option<usize>,
    /// Classifier-free guidance weight w, finite (p = p_c + w (p_c - p_u)) [default: none]
    #[arg(long)]
    cfg: Option<f64>,
    /// Anneal the guidance weight linearly over tokens, w_i = w (i+1)/(N-1) (with --cfg or
    /// --attn-temp).
    #[arg(long)]
    cfg_anneal: bool,
    /// Attention-temperature guidance: the second branch divides logits by this tau (> 0);
    /// with --cfg, the null-class branch does, as the official sampler [default: none]
    #[arg(long)]
    attn_temp: Option<f64>,
    /// Weight of attention-temperature guidance, finite (with --attn-temp) [default: 1]
    #[arg(long)]
    attn_weight: Option<f64>,
    /// Denoise with the model's score (Tweedie) using the config's sigma, or --sigma.
    #[arg(long)]
    denoise: bool,
    /// Sigma of --denoise, finite and >= 0 [default: the model's training noise]
    #[arg(long)]
    sigma: Option<f64>,
    /// Prior standard deviation (temperature of z), finite and >= 0.
    #[arg(long, default_value_t = 1.0)]
    prior_std: f64,
    /// Seed of the prior draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to compute: cpu, cuda[:N] (a build with the `cuda` feature and an NVIDIA GPU),
    /// or ptx-sim (the PTX interpreter: the GPU kernels on the CPU, slow; for checking)
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Grid image to write, PNG or JPEG by its extension (.png, .jpg, .jpeg). Nothing is
    /// written when a sample stays NaN or infinite.
    #[arg(long, default_value = "samples.png")]
    out: PathBuf,
    /// Also write one PNG per sample into this directory.
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Upscale factor of the written images (nearest neighbour), 1..=16.
    #[arg(long, default_value_t = 1)]
    scale: usize,
    /// Leave out the class number written left of each row of a grid of every class.
    #[arg(long)]
    no_row_labels: bool,
}

impl SampleArgs {
    /// Pre-flight checks that read no file: every option in its range, no option that
    /// would be silently ignored.
    pub fn check(&self) -> Result<()> {
        let bad = |opt: &str, v: &dyn std::fmt::Display, want: &str| {
            Err(bad_option("sample", opt, v, want))
        };
        if self.num == 0 {
            return bad("--num", &0, "at least 1 sample");
        }
        if let Some(w) = self.cfg.filter(|w| !w.is_finite()) {
            return bad("--cfg", &w, "a finite guidance weight");
        }
        if let Some(t) = self.attn_temp.filter(|t| !(t.is_finite() && *t > 0.0)) {
            return bad("--attn-temp", &t, "a finite temperature > 0");
        }
        if let Some(w) = self.attn_weight {
            if self.attn_temp.is_none() {
                return bad(
                    "--attn-weight",
                    &w,
                    "--attn-temp as well (it weights that guidance)",
                );
            }
            if !w.is_finite() {
                return bad("--attn-weight", &w, "a finite guidance weight");
            }
        }
        if self.cfg.is_some() && self.attn_weight.is_some() {
            return Err(Error::arg(
                "sample",
                "--attn-weight weights attention-temperature guidance alone; with --cfg the \
                 weight is --cfg's (the null-class branch then runs at --attn-temp)",
            ));
        }
        if self.cfg_anneal && self.cfg.is_none() && self.attn_temp.is_none() {
            return bad(
                "--cfg-anneal",
                &"",
                "--cfg or --attn-temp (it anneals their weight)",
            );
        }
        if let Some(s) = self.sigma {
            if !self.denoise {
                return bad(
                    "--sigma",
                    &s,
                    "--denoise as well (it is the sigma of denoising)",
                );
            }
            if !(s.is_finite() && s >= 0.0) {
                return bad("--sigma", &s, "a finite sigma >= 0");
            }
        }
        check_scale("sample", self.scale)?;
        if ImageKind::from_path(&self.out).is_err() {
            return bad(
                "--out",
                &self.out.display(),
                "a .png, .jpg or .jpeg file name (the grid's format)",
            );
        }
        if !(self.prior_std.is_finite() && self.prior_std >= 0.0) {
            return bad(
                "--prior-std",
                &self.prior_std,
                "a finite standard deviation >= 0",
            );
        }
        Ok(())
    }

    fn guidance(&self) -> Guidance {
        match (self.cfg, self.attn_temp) {
            (Some(w), None) => Guidance::ClassifierFree {
                weight: w,
                anneal: self.cfg_anneal,
            },
            // Both: the null-class branch at temperature tau, as the official sampler does.
            (Some(w), Some(tau)) => Guidance::ClassifierFreeTemperature {
                weight: w,
                tau,
                anneal: self.cfg_anneal,
            },
            (None, Some(tau)) => Guidance::Temperature {
                weight: self.attn_weight.unwrap_or(1.0),
                tau,
                anneal: self.cfg_anneal,
            },
            (None, None) => Guidance::None,
        }
    }
}

pub fn sample(a: SampleArgs) -> Result<()> {
    let ck = load_checkpoint(&a.checkpoint)?;
    let m: TarFlow<f32> = ck.model()?;
    let cfg = m.config.clone();
    let guidance = a.guidance();
    if cfg.num_classes == 0 {
        if let Some(c) = a.class {
            return Err(bad_option(
                "sample",
                "--class",
                c,
                "a class-conditional model (this one is unconditional)",
            ));
        }
    }
    let m = m.to_device(super::train::open_device(&a.device)?)?;
    let sampler = Sampler::new(&m)?;
    // The number of images, and whether they fit, before any per-image buffer (the label
    // list included) exists.
    let per_class = if cfg.num_classes > 0 && a.class.is_none() {
        cfg.num_classes
    } else {
        1
    };
    let total = a.num.checked_mul(per_class).ok_or_else(|| {
        Error::arg(
            "sample",
            format!(
                "--num {} x {per_class} classes is more images than can be counted",
                a.num
            ),
        )
    })?;
    sampler.check_memory(total, guidance).map_err(|e| {
        let each = if per_class > 1 {
            format!(" ({per_class} classes x {} images)", a.num)
        } else {
            String::new()
        };
        for_option("sample", "--num", format!("{}{each}", a.num), e)
    })?;
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
    let opts = SampleOptions {
        guidance,
        prior_std: a.prior_std,
        ..Default::default()
    };
    let mut rng = Rng::new(a.seed);
    let t0 = std::time::Instant::now();
    let (mut x, report) = sampler.sample(total, &labels, &mut rng, &opts)?;
    if report.failed > 0 {
        return Err(Error::NonFinite {
            what: format!(
                "{} of {total} samples, still after {} redraws each (the model or the \
                 guidance overflows); {} was not written",
                report.failed,
                opts.max_redraws,
                a.out.display()
            ),
        });
    }
    if a.denoise {
        let sigma = a.sigma.unwrap_or(cfg.noise_sigma);
        let lab = (cfg.num_classes > 0).then_some(labels.as_slice());
        x = m
            .denoise(&x.to_device(m.device())?, lab, sigma)?
            .to_host()?;
        if !x.all_finite() {
            return Err(Error::NonFinite {
                what: format!(
                    "the denoised samples (sigma {sigma}); {} was not written",
                    a.out.display()
                ),
            });
        }
    }
    let n = x.shape()[0];
    let pixels = f32_to_u8_images(&x.to_vec());
    let (c, s) = (cfg.channels, cfg.image_size);
    // A grid of every class has one class per row: write it beside the row.
    let row_labels = if cfg.num_classes > 0 && a.class.is_none() && !a.no_row_labels {
        (0..cfg.num_classes).map(|k| k.to_string()).collect()
    } else {
        Vec::new()
    };
    let style = GridStyle {
        scale: a.scale,
        row_labels,
        ..GridStyle::new(cols, 2)
    };
    write_grid(&a.out, &pixels, n, c, s, s, &style)?;
    if let Some(dir) = &a.out_dir {
        write_each(dir, &pixels, n, c, s, a.scale, "sample")?;
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

/// Writes each of `n` channel-major `c x s x s` images as `dir/PREFIX_NNNN.png`, upscaled by
/// `scale`; `dir` is created when missing.
fn write_each(
    dir: &Path,
    pixels: &[u8],
    n: usize,
    c: usize,
    s: usize,
    scale: usize,
    prefix: &str,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let big = upscale(pixels, n, c, s, s, scale)?;
    let side = s * scale;
    let per = c * side * side;
    for i in 0..n {
        let one = make_grid(&big[i * per..(i + 1) * per], 1, c, side, side, 1, 0)?.0;
        write_png(
            dir.join(format!("{prefix}_{i:04}.png")),
            &one,
            side as u32,
            side as u32,
            c,
        )?;
    }
    Ok(())
}
