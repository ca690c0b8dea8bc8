//! The named parameter store: the single list of trainable tensors that optimisers, gradient
//! clipping, EMA and checkpoints share.

use std::collections::HashMap;

use super::with_prefix;
use crate::backend::cpu::optim::sum_squares;
use crate::error::{Error, Result};
use crate::tensor::{Element, Tensor};

/// One exported parameter: name, shape, row-major values.
pub type NamedArray<E> = (String, Vec<usize>, Vec<E>);

/// An insertion-ordered map from dotted names to parameter tensors.
///
/// Every entry is a contiguous leaf that requires a gradient, so optimisers can update it in
/// place and autograd accumulates into it. The store holds handles, not copies: the module
/// that registered a tensor sees every update made through the store.
pub struct ParamStore<E: Element = f32> {
    entries: Vec<(String, Tensor<E>)>,
    index: HashMap<String, usize>,
}

impl<E: Element> Default for ParamStore<E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E: Element> Clone for ParamStore<E> {
    /// Clones the handles (the clone shares every tensor with `self`).
    fn clone(&self) -> Self {
        ParamStore {
            entries: self.entries.clone(),
            index: self.index.clone(),
        }
    }
}

impl<E: Element> ParamStore<E> {
    /// An empty store.
    pub fn new() -> Self {
        ParamStore {
            entries: Vec::new(),
            index: HashMap::new(),
        }
    }

    /// Adds `params` under `prefix` (names joined with '.'; an empty prefix adds them as they
    /// are). Nothing is added when any entry is rejected: an empty or duplicate name, or a
    /// tensor that is not a contiguous leaf requiring a gradient.
    pub fn insert(&mut self, prefix: &str, params: Vec<(String, Tensor<E>)>) -> Result<()> {
        let params = with_prefix(prefix, params);
        let mut fresh = std::collections::HashSet::new();
        for (name, t) in &params {
            if name.is_empty() {
                return Err(Error::arg("ParamStore::insert", "empty parameter name"));
            }
            if self.index.contains_key(name) || !fresh.insert(name.as_str()) {
                return Err(Error::arg(
                    "ParamStore::insert",
                    format!("parameter `{name}` is already registered"),
                ));
            }
            if !t.requires_grad() || !t.is_leaf() {
                return Err(Error::arg(
                    "ParamStore::insert",
                    format!("parameter `{name}` must be a leaf that requires a gradient"),
                ));
            }
            if !t.is_contiguous() {
                return Err(Error::shape(
                    "ParamStore::insert",
                    &[t.shape()],
                    E::DTYPE.name(),
                    format!("parameter `{name}` must be contiguous to be updated in place"),
                ));
            }
        }
        for (name, t) in params {
            self.index.insert(name.clone(), self.entries.len());
            self.entries.push((name, t));
        }
        Ok(())
    }

    /// The parameter called `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor<E>> {
        self.index.get(name).map(|&i| &self.entries[i].1)
    }

    /// The parameter called `name`, or an error naming it.
    pub fn require(&self, name: &str) -> Result<&Tensor<E>> {
        self.get(name)
            .ok_or_else(|| missing("ParamStore::require", name))
    }

    /// Whether a parameter called `name` is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// `(name, tensor)` in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor<E>)> {
        self.entries.iter().map(|(n, t)| (n.as_str(), t))
    }

    /// Names in insertion order.
    pub fn names(&self) -> Vec<String> {
        self.entries.iter().map(|(n, _)| n.clone()).collect()
    }

    /// Handles to the tensors in insertion order.
    pub fn tensors(&self) -> Vec<Tensor<E>> {
        self.entries.iter().map(|(_, t)| t.clone()).collect()
    }

    /// Number of parameter tensors.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the store holds no parameters.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Total number of scalar parameters.
    pub fn num_elements(&self) -> usize {
        self.entries.iter().map(|(_, t)| t.numel()).sum()
    }

    /// Clears every accumulated gradient.
    pub fn zero_grad(&self) {
        for (_, t) in &self.entries {
            t.zero_grad();
        }
    }

    /// L2 norm of all accumulated gradients taken together, in `f64`; parameters without a
    /// gradient count as zero. NaN or infinity when some gradient is not finite. Each
    /// gradient's sum of squares is taken on its device (in f64) and the sums are added on
    /// the host in parameter order.
    pub fn global_grad_norm(&self) -> Result<f64> {
        let mut total = 0.0f64;
        for g in self.entries.iter().filter_map(|(_, t)| t.grad()) {
            total += if crate::backend::on_gpu("global_grad_norm", &[&g])? {
                crate::backend::gpu::sum_squares(&g)?
            } else {
                g.with_contiguous(sum_squares)
            };
        }
        Ok(total.sqrt())
    }

    /// Every parameter as `(name, shape, values)`, in insertion order.
    pub fn state_dict(&self) -> Vec<NamedArray<E>> {
        self.entries
            .iter()
            .map(|(n, t)| (n.clone(), t.shape().to_vec(), t.to_vec()))
            .collect()
    }

    /// Overwrites the parameter `name` in place with `data` of shape `shape`. Fails, naming
    /// the parameter, when there is no such parameter, the shape differs from the
    /// parameter's, or `data` does not have `shape`'s number of elements.
    pub fn load(&self, name: &str, shape: &[usize], data: &[E]) -> Result<()> {
        let t = self.check_entry(name, shape, data.len())?;
        t.update_data(|d| d.copy_from_slice(data))
    }

    /// Loads a whole [`ParamStore::state_dict`]. Every parameter of the store must appear
    /// exactly once and nothing else may; all entries are checked before any is written, so
    /// a failed load leaves the parameters untouched.
    pub fn load_state_dict(&self, entries: &[NamedArray<E>]) -> Result<()> {
        let mut seen = std::collections::HashSet::new();
        for (name, shape, data) in entries {
            self.check_entry(name, shape, data.len())?;
            if !seen.insert(name.as_str()) {
                return Err(Error::arg(
                    "ParamStore::load_state_dict",
                    format!("parameter `{name}` appears more than once"),
                ));
            }
        }
        if let Some((name, _)) = self
            .entries
            .iter()
            .find(|(n, _)| !seen.contains(n.as_str()))
        {
            return Err(Error::arg(
                "ParamStore::load_state_dict",
                format!("parameter `{name}` is missing from the state being loaded"),
            ));
        }
        for (name, shape, data) in entries {
            self.load(name, shape, data)?;
        }
        Ok(())
    }

    fn check_entry(&self, name: &str, shape: &[usize], len: usize) -> Result<&Tensor<E>> {
        let t = self
            .get(name)
            .ok_or_else(|| missing("ParamStore::load", name))?;
        if t.shape() != shape {
            return Err(Error::shape(
                "ParamStore::load",
                &[t.shape(), shape],
                E::DTYPE.name(),
                format!("parameter `{name}`: stored shape differs from the shape being loaded"),
            ));
        }
        if len != t.numel() {
            return Err(Error::shape(
                "ParamStore::load",
                &[shape],
                E::DTYPE.name(),
                format!("parameter `{name}`: {len} values given for its shape"),
            ));
        }
        Ok(t)
    }
}

fn missing(op: &'static str, name: &str) -> Error {
    Error::arg(op, format!("no parameter named `{name}`"))
}
