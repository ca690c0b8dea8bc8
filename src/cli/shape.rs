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

/// Overrides of a preset's model shape.
#[derive(Args)]
pub struct ShapeArgs {
    /// Image height and width.
    #[arg(long)]
    image_size: Option<usize>,
    #[arg(long)]
    channels: Option<usize>,
    #[arg(long)]
    patch_size: Option<usize>,
    /// Model width C.
    #[arg(long)]
    width: Option<usize>,
    /// Flow blocks T.
    #[arg(long)]
    blocks: Option<usize>,
    /// Layers per block K.
    #[arg(long)]
    layers: Option<usize>,
    /// Number of classes (0 = unconditional).
    #[arg(long)]
    classes: Option<usize>,
    /// Soft clip of the log-scales, a*tanh(alpha/a).
    #[arg(long)]
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
