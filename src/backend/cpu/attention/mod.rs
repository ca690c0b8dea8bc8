//! The CPU kernels of attention: per (batch, head), scores and probabilities in scratch, the
//! causal rule applied in blocks, products on the crate's GEMM (`f32`) or matrixmultiply
//! (`f64`). The op, its shape checks and its autograd rule live in `crate::ops::attention`.

use std::sync::RwLockReadGuard;

use rayon::prelude::*;

use crate::backend::cpu::softmax::{dot, exp_in_place};
use crate::ops::attention::AttentionOptions;
use crate::ops::gemm::serial_scope;
use crate::ops::simd;
use crate::tensor::{DType, Element, Layout, Tensor};

mod backward;
mod decode;
mod forward;
mod tiles;

pub(crate) use backward::*;
pub(crate) use decode::*;
pub(crate) use forward::*;
pub(crate) use tiles::*;

/// Sizes of one attention call: q `[b, h, nq, dh]`, k `[b, h, nk, dh]`, v `[b, h, nk, dv]`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dims {
    pub(crate) b: usize,
    pub(crate) h: usize,
    pub(crate) nq: usize,
    pub(crate) nk: usize,
    pub(crate) dh: usize,
    pub(crate) dv: usize,
}

impl Dims {
    /// Whether the output and every gradient are empty or all zeros whatever the operands
    /// hold (no pair, no query, no key, or no width at all), so no kernel needs to run.
    pub(crate) fn trivial(&self) -> bool {
        self.b == 0 || self.h == 0 || self.nq == 0 || self.nk == 0 || (self.dh == 0 && self.dv == 0)
    }
}
