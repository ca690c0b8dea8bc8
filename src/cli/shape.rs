//! Model-shape flags shared by `train` and `bench`, and the preset names every command takes.

use clap::Args;

use tarflow::model::TarFlowConfig;
use tarflow::train::TrainConfig;
use tarflow::Result;

/// The model a `--preset NAME` trains: every command resolves preset names as `train` does,
/// so `init --preset mnist` builds the model that `train --preset mnist` trains (config S;
/// the library's `TarFlowConfig::preset("mnist")` is the official demo's deeper K = 4).
pub fn preset_model(name: &str) -> Result<TarFlowConfig> {
    Ok(TrainConfig::preset(name)?.model)
}

/// `what` with the default the preset decides, shown for mnist (= small's model).
fn preset_help(what: &str, value: impl Fn(&TarFlowConfig) -> String) -> String {
    static MNIST: std::sync::OnceLock<Option<TarFlowConfig>> = std::sync::OnceLock::new();
    match MNIST.get_or_init(|| preset_model("mnist").ok()) {
        Some(c) => format!("{what} [default: the preset's; mnist: {}]", value(c)),
        None => what.to_string(),
    }
}

/// Overrides of a preset's model shape.
#[derive(Args)]
pub struct ShapeArgs {
    #[arg(long, help = preset_help("Image height and width", |c| c.image_size.to_string()))]
    image_size: Option<usize>,
    #[arg(long, help = preset_help("Image channels (1 gray, 3 RGB)", |c| c.channels.to_string()))]
    channels: Option<usize>,
    #[arg(long, help = preset_help("Patch side p (tokens are p x p patches)",
        |c| c.patch_size.to_string()))]
    patch_size: Option<usize>,
    #[arg(long, help = preset_help("Model width C", |c| c.width.to_string()))]
    width: Option<usize>,
    #[arg(long, help = preset_help("Flow blocks T", |c| c.blocks.to_string()))]
    blocks: Option<usize>,
    #[arg(long, help = preset_help("Transformer layers per block K",
        |c| c.layers_per_block.to_string()))]
    layers: Option<usize>,
    #[arg(long, help = preset_help("Number of classes (0 = unconditional)",
        |c| c.num_classes.to_string()))]
    classes: Option<usize>,
    #[arg(long, help = preset_help("Soft clip a of the log-scales, a*tanh(alpha/a)",
        |c| c.alpha_clip.map_or_else(|| "none".into(), |a| a.to_string())))]
    alpha_clip: Option<f64>,
}

impl ShapeArgs {
    /// The flags given, as `--name`.
    pub fn given(&self) -> Vec<&'static str> {
        let flags = [
            ("--image-size", self.image_size.is_some()),
            ("--channels", self.channels.is_some()),
            ("--patch-size", self.patch_size.is_some()),
            ("--width", self.width.is_some()),
            ("--blocks", self.blocks.is_some()),
            ("--layers", self.layers.is_some()),
            ("--classes", self.classes.is_some()),
            ("--alpha-clip", self.alpha_clip.is_some()),
        ];
        flags.iter().filter(|f| f.1).map(|f| f.0).collect()
    }

    pub fn apply(&self, c: &mut TarFlowConfig) {
        let set = |dst: &mut usize, v: Option<usize>| {
            if let Some(v) = v {
                *dst = v;
            }
        };
        set(&mut c.image_size, self.image_size);
        set(&mut c.channels, self.channels);
        set(&mut c.patch_size, self.patch_size);
        set(&mut c.width, self.width);
        set(&mut c.blocks, self.blocks);
        set(&mut c.layers_per_block, self.layers);
        set(&mut c.num_classes, self.classes);
        if let Some(a) = self.alpha_clip {
            c.alpha_clip = Some(a);
        }
    }
}
