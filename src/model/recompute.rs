//! Which parts of each Transformer layer a training step recomputes in its backward instead
//! of keeping their activations from the forward (see [`crate::autograd::checkpoint`]).

use std::cell::Cell;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What each Transformer layer keeps for the backward of a training step.
///
/// The gradients are the same bits whatever the choice (the kernels are deterministic);
/// what changes is the memory the step holds between its forward and its backward, against
/// one more forward of the recomputed part. Per token of a layer of width `C` under bf16
/// products, the plain layer keeps about `38 C` bytes, `Mlp` about `20 C` (the MLP half
/// keeps only its `4 C`-byte input) and `Layer` `4 C` (its input).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Recompute {
    /// Keep every activation the backward reads (the fastest step).
    #[default]
    None,
    /// Recompute each layer's second half, `h + mlp(norm2(h))`, keeping only `h`: the
    /// norm's output, the MLP's input copy and its `[tokens, 4C]` pre-activation are not
    /// kept. Costs one more forward of the MLP (about a fifth more of the layer's
    /// arithmetic).
    Mlp,
    /// Recompute each whole layer from its input, keeping only that. Costs one more
    /// forward of every layer (about a third more arithmetic).
    Layer,
}

impl Recompute {
    /// Whether this is the default, recomputing nothing.
    pub fn is_none(&self) -> bool {
        *self == Recompute::None
    }

    /// `none`, `mlp` or `layer`, as the command line spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Recompute::None => "none",
            Recompute::Mlp => "mlp",
            Recompute::Layer => "layer",
        }
    }
}

impl std::fmt::Display for Recompute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Recompute {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(Recompute::None),
            "mlp" => Ok(Recompute::Mlp),
            "layer" => Ok(Recompute::Layer),
            other => Err(Error::arg(
                "recompute",
                format!("{other:?}: expected none, mlp or layer"),
            )),
        }
    }
}

thread_local! {
    static RECOMPUTE: Cell<Recompute> = const { Cell::new(Recompute::None) };
}

/// What the Transformer layers run on this thread recompute now.
pub fn current_recompute() -> Recompute {
    RECOMPUTE.with(|r| r.get())
}

/// Sets what this thread's Transformer layers recompute until the guard drops (the previous
/// setting comes back then, so guards nest). It matters only while a graph is recorded.
pub fn recompute(r: Recompute) -> RecomputeGuard {
    RecomputeGuard {
        previous: RECOMPUTE.with(|c| c.replace(r)),
    }
}

/// Restores the previous recompute setting when dropped.
#[must_use = "the setting reverts when the guard drops"]
pub struct RecomputeGuard {
    previous: Recompute,
}

impl Drop for RecomputeGuard {
    fn drop(&mut self) {
        RECOMPUTE.with(|c| c.set(self.previous));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_guards_nest() {
        for r in [Recompute::None, Recompute::Mlp, Recompute::Layer] {
            assert_eq!(r.name().parse::<Recompute>().unwrap(), r);
        }
        let e = "all".parse::<Recompute>().unwrap_err().to_string();
        assert!(
            e.contains("\"all\"") && e.contains("none, mlp or layer"),
            "{e}"
        );
        assert_eq!(current_recompute(), Recompute::None);
        {
            let _a = recompute(Recompute::Layer);
            {
                let _b = recompute(Recompute::Mlp);
                assert_eq!(current_recompute(), Recompute::Mlp);
            }
            assert_eq!(current_recompute(), Recompute::Layer);
        }
        assert_eq!(current_recompute(), Recompute::None);
    }

    /// The loss and every parameter's gradient of one training forward and backward of a
    /// tiny model (two layers per block, classes) with `r` set, as bits.
    fn step_bits(r: Recompute) -> Vec<Vec<u32>> {
        use crate::model::{TarFlow, TarFlowConfig};
        use crate::{Rng, Tensor};
        let mut cfg = TarFlowConfig::preset("tiny").unwrap();
        cfg.layers_per_block = 2;
        let model = TarFlow::<f32>::new(cfg.clone(), 3).unwrap();
        model.randomize_output_projections(0.05, 4).unwrap();
        let n = cfg.image_size;
        let x = Tensor::<f32>::rand(&[2, cfg.channels, n, n], -1.0, 1.0, &mut Rng::new(5));
        let _r = recompute(r);
        let loss = model
            .loss(&model.forward(&x, Some(&[Some(1), None])).unwrap())
            .unwrap();
        loss.backward().unwrap();
        let mut out = vec![loss.to_vec().iter().map(|v| v.to_bits()).collect()];
        for (name, p) in model.parameters() {
            let g = p.grad().unwrap_or_else(|| panic!("{name} got no gradient"));
            out.push(g.to_vec().iter().map(|v| v.to_bits()).collect());
        }
        out
    }

    #[test]
    fn recomputing_changes_no_bit_of_the_loss_or_the_gradients() {
        let plain = step_bits(Recompute::None);
        assert_eq!(step_bits(Recompute::Mlp), plain);
        assert_eq!(step_bits(Recompute::Layer), plain);
    }
}
