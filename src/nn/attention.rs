//! Causal multi-head self-attention: a fused qkv projection, the fused attention op, and an
//! output projection, with a KV-cached single-step path for sampling.

use crate::autograd::no_grad;
use crate::error::{Error, Result};
use crate::ops::attention::{
    attention_decode, attention_qkv, attention_qkv_keeping_bf16, qkv_views, AttentionOptions,
    KvCache,
};
use crate::rng::Rng;
use crate::tensor::{Element, Tensor};

/// Causal multi-head self-attention over `[B, N, C]` with `C = heads * head_dim`.
///
/// Weights use the `[out, in]` layout of [`Tensor::linear`]; `qkv_weight` stacks the query,
/// key and value projections (rows `0..C`, `C..2C`, `2C..3C`), and within each the heads
/// (rows `h * head_dim..(h + 1) * head_dim`).
#[derive(Clone)]
pub struct CausalSelfAttention<E: Element = f32> {
    /// `[3C, C]`.
    pub qkv_weight: Tensor<E>,
    /// `[3C]`.
    pub qkv_bias: Tensor<E>,
    /// `[C, C]`.
    pub out_weight: Tensor<E>,
    /// `[C]`.
    pub out_bias: Tensor<E>,
    /// Number of heads `H`.
    pub heads: usize,
    /// Width of each head `Dh`; `C = H * Dh`.
    pub head_dim: usize,
}

impl<E: Element> CausalSelfAttention<E> {
    /// A copy of this module with its parameters on `device`.
    pub fn to_device(&self, device: crate::tensor::Device) -> Result<Self> {
        let on = |t: &Tensor<E>| super::leaf_on(t, device);
        Ok(CausalSelfAttention {
            qkv_weight: on(&self.qkv_weight)?,
            qkv_bias: on(&self.qkv_bias)?,
            out_weight: on(&self.out_weight)?,
            out_bias: on(&self.out_bias)?,
            heads: self.heads,
            head_dim: self.head_dim,
        })
    }

    /// A layer of width `dim` split into heads of `head_dim` (which must divide `dim`).
    /// Weights and biases are uniform in `(-1/sqrt(dim), 1/sqrt(dim))`, the usual default for
    /// linear layers, and are gradient-tracking leaves.
    pub fn new(dim: usize, head_dim: usize, rng: &mut Rng) -> Result<Self> {
        if dim == 0 || head_dim == 0 || !dim.is_multiple_of(head_dim) {
            return Err(Error::Config(format!(
                "attention width {dim} is not a positive multiple of head_dim {head_dim}"
            )));
        }
        let bound = 1.0 / (dim as f64).sqrt();
        let mut init = |shape: &[usize]| Tensor::rand(shape, -bound, bound, rng).requires_grad_();
        Ok(CausalSelfAttention {
            qkv_weight: init(&[3 * dim, dim]),
            qkv_bias: init(&[3 * dim]),
            out_weight: init(&[dim, dim]),
            out_bias: init(&[dim]),
            heads: dim / head_dim,
            head_dim,
        })
    }

    /// Model width `C`.
    pub fn dim(&self) -> usize {
        self.heads * self.head_dim
    }

    fn options(&self, temperature: f64) -> AttentionOptions {
        AttentionOptions {
            causal: true,
            scale: 1.0 / (self.head_dim as f64).sqrt(),
            temperature,
        }
    }

    /// Projects `x` `[B, N, C]` to q, k, v, each a `[B, H, N, Dh]` view of one buffer.
    fn qkv(&self, op: &'static str, x: &Tensor<E>) -> Result<[Tensor<E>; 3]> {
        self.check_input(op, x)?;
        let qkv = x.linear(&self.qkv_weight, Some(&self.qkv_bias))?;
        qkv_views(&qkv, self.heads)
    }

    fn check_input(&self, op: &'static str, x: &Tensor<E>) -> Result<()> {
        let c = self.dim();
        if x.rank() != 3 || x.shape()[2] != c {
            return Err(Error::shape(
                op,
                &[x.shape()],
                E::DTYPE.name(),
                format!("input must be [batch, positions, {c}]"),
            ));
        }
        Ok(())
    }

    /// `[B, H, N, Dh]` back to `[B, N, C]`, then the output projection.
    fn project_out(&self, o: &Tensor<E>) -> Result<Tensor<E>> {
        let (b, n) = (o.shape()[0], o.shape()[2]);
        o.permute(&[0, 2, 1, 3])?
            .reshape(&[b, n, self.dim()])?
            .linear(&self.out_weight, Some(&self.out_bias))
    }

    /// Causal self-attention over `x` `[B, N, C]`; logits are divided by `temperature`.
    pub fn forward(&self, x: &Tensor<E>, temperature: f64) -> Result<Tensor<E>> {
        self.check_input("CausalSelfAttention::forward", x)?;
        let qkv = x.linear(&self.qkv_weight, Some(&self.qkv_bias))?;
        let o = attention_qkv(&qkv, self.heads, None, self.options(temperature))?;
        o.linear(&self.out_weight, Some(&self.out_bias))
    }

    /// `r + self.forward(x, temperature)` for a residual `r` of the output's shape, with the
    /// residual added in the output projection's epilogue (one GEMM on a device instead of a
    /// GEMM and an add); the same bits as the composed form.
    pub fn forward_residual(
        &self,
        x: &Tensor<E>,
        r: &Tensor<E>,
        temperature: f64,
    ) -> Result<Tensor<E>> {
        self.check_input("CausalSelfAttention::forward_residual", x)?;
        let qkv = x.linear(&self.qkv_weight, Some(&self.qkv_bias))?;
        // On a GPU under bf16 the attention's bf16 copy of its output is also the output
        // projection's bf16 input: one copy kept for both backward passes, none converted.
        let (o, o16) =
            attention_qkv_keeping_bf16(&qkv, self.heads, None, self.options(temperature))?;
        o.linear_residual_from(&self.out_weight, Some(&self.out_bias), r, o16)
    }

    /// The next position(s) of an autoregressive pass: `x` is `[B, T, C]` (usually `T == 1`),
    /// its keys and values are appended to `cache`, and its queries attend to everything
    /// cached so far, causally. Over all positions this equals [`Self::forward`]. Records no
    /// graph.
    pub fn forward_step(
        &self,
        x: &Tensor<E>,
        cache: &mut KvCache<E>,
        temperature: f64,
    ) -> Result<Tensor<E>> {
        let _g = no_grad();
        let [q, k, v] = self.qkv("CausalSelfAttention::forward_step", x)?;
        cache.append(&k, &v)?;
        let o = attention_decode(&q, cache, self.options(temperature))?;
        self.project_out(&o)
    }

    /// An empty cache sized for this layer; fails when it would not fit in memory.
    pub fn new_cache(&self, batch: usize, max_len: usize) -> Result<KvCache<E>> {
        KvCache::new(batch, self.heads, max_len, self.head_dim)
    }

    /// `qkv.weight`, `qkv.bias`, `out.weight`, `out.bias`.
    pub fn parameters(&self) -> Vec<(String, Tensor<E>)> {
        vec![
            ("qkv.weight".to_string(), self.qkv_weight.clone()),
            ("qkv.bias".to_string(), self.qkv_bias.clone()),
            ("out.weight".to_string(), self.out_weight.clone()),
            ("out.bias".to_string(), self.out_bias.clone()),
        ]
    }
}
