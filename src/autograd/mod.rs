//! Reverse-mode automatic differentiation.
//!
//! An op that has at least one input requiring a gradient (and runs while gradients are
//! enabled) attaches a [`Node`] to its output: the inputs, and a closure mapping the output's
//! gradient to one gradient per input. `backward()` sorts the graph topologically from the
//! root and runs the closures in reverse order, summing gradients that meet at a tensor, and
//! accumulates into the `grad` slot of each leaf that requires one. Closures run with
//! recording switched off, so computing gradients builds no new graph. Dropping the last
//! handle to an output frees its node, its saved tensors and the graph behind it.

use std::cell::Cell;
use std::collections::HashMap;

use crate::error::{Error, Result};
use std::sync::Arc;

use crate::tensor::{Element, Input, Tensor};

mod checkpoint;

pub use crate::tensor::node::{BackwardFn, Node};
pub use checkpoint::{checkpoint, CheckpointFn};

thread_local! {
    static NO_GRAD_DEPTH: Cell<usize> = const { Cell::new(0) };
}

/// Whether ops record a graph on this thread right now.
pub fn is_grad_enabled() -> bool {
    NO_GRAD_DEPTH.with(|d| d.get() == 0)
}

/// While alive, no op on this thread records a graph. Nests.
///
/// Neither `Send` nor `Sync`: the guard switches recording off for the thread that made it,
/// and dropping it on another thread would switch that thread's recording back on (or
/// underflow its count) while leaving this one off for good.
pub struct NoGradGuard {
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        NO_GRAD_DEPTH.with(|d| d.set(d.get() - 1));
    }
}

/// Switches gradient recording off until the guard drops.
pub fn no_grad() -> NoGradGuard {
    NO_GRAD_DEPTH.with(|d| d.set(d.get() + 1));
    NoGradGuard {
        _not_send: std::marker::PhantomData,
    }
}

/// Runs `f` with gradient recording off.
pub fn with_no_grad<R>(f: impl FnOnce() -> R) -> R {
    let _g = no_grad();
    f()
}

impl<E: Element> Tensor<E> {
    /// Attaches a backward node when recording is on and some input requires a gradient;
    /// otherwise returns `self` unchanged and drops the closure (and what it captured).
    /// This is the one place that consults `no_grad`.
    pub(crate) fn record<F>(self, name: &'static str, inputs: &[&Tensor<E>], backward: F) -> Self
    where
        F: Fn(&Tensor<E>) -> Result<Vec<Option<Tensor<E>>>> + Send + Sync + 'static,
    {
        if !is_grad_enabled() || !inputs.iter().any(|t| t.requires_grad()) {
            return self;
        }
        let node = Node {
            name,
            inputs: inputs.iter().map(|t| Input::of(t)).collect(),
            backward: Box::new(backward),
        };
        Tensor::from_parts(
            self.storage().clone(),
            self.layout().clone(),
            true,
            Some(node),
        )
    }

    /// Backpropagates from this scalar (a one-element tensor), accumulating into the `grad`
    /// of every leaf that requires a gradient. The seed gradient is made on this tensor's
    /// device.
    pub fn backward(&self) -> Result<()> {
        if self.numel() != 1 {
            return Err(Error::Autograd(format!(
                "backward() needs a one-element tensor, got shape {:?}; call sum() or mean() first",
                self.shape()
            )));
        }
        self.backward_with(&Tensor::ones(self.shape()).to_device(self.device())?)
    }

    /// Backpropagates with an explicit output gradient of the same shape.
    pub fn backward_with(&self, grad: &Tensor<E>) -> Result<()> {
        run_backward(self, grad, None).map(|_| ())
    }
}

/// The reverse sweep shared by [`Tensor::backward_with`] and [`grad`].
///
/// With `targets == None`, leaf gradients are accumulated into their `grad` slots. With
/// `Some(ids)`, no slot is touched; the gradient reaching each listed tensor (leaf or not) is
/// returned instead. Topological order guarantees every contribution to a tensor has been
/// summed before the tensor is visited, so the value read there is complete.
fn run_backward<E: Element>(
    root: &Tensor<E>,
    grad: &Tensor<E>,
    targets: Option<&[usize]>,
) -> Result<HashMap<usize, Tensor<E>>> {
    if !root.requires_grad() {
        return Err(Error::Autograd(
            "backward() on a tensor that does not require a gradient (no input was marked \
             with requires_grad_(), or it was computed under no_grad)"
                .into(),
        ));
    }
    if grad.shape() != root.shape() {
        return Err(Error::shape(
            "backward",
            &[root.shape(), grad.shape()],
            E::DTYPE.name(),
            "output gradient must match the output shape",
        ));
    }
    let _guard = no_grad();
    let order = topo_order(root);
    let mut grads: HashMap<usize, Tensor<E>> = HashMap::new();
    let mut found: HashMap<usize, Tensor<E>> = HashMap::new();
    grads.insert(root.id(), grad.clone());
    for v in order.iter().rev() {
        let Some(g) = grads.remove(&v.id) else {
            continue;
        };
        if let Some(ids) = targets {
            if ids.contains(&v.id) {
                found.insert(v.id, g.clone());
            }
        }
        match &v.kind {
            Vertex::Leaf(t) => {
                if targets.is_none() {
                    t.accumulate_grad(&g)?;
                }
            }
            Vertex::Op(node) => {
                let input_grads = (node.backward)(&g)?;
                debug_assert_eq!(input_grads.len(), node.inputs.len(), "{}", node.name);
                for (inp, ig) in node.inputs.iter().zip(input_grads) {
                    let Some(ig) = ig else { continue };
                    let (id, shape) = match inp {
                        Input::Constant => continue,
                        Input::Leaf(t) => (t.id(), t.shape()),
                        Input::Op { id, shape, .. } => (*id, shape.as_slice()),
                    };
                    if ig.shape() != shape {
                        return Err(Error::Autograd(format!(
                            "{}: backward produced gradient of shape {:?} for input of shape {:?}",
                            node.name,
                            ig.shape(),
                            shape
                        )));
                    }
                    let acc = match grads.remove(&id) {
                        None => ig,
                        Some(prev) => prev.add(&ig)?,
                    };
                    grads.insert(id, acc);
                }
            }
        }
    }
    Ok(found)
}

/// A tensor of the graph as the sweep visits it: a leaf that wants a gradient, or an op's
/// output by its node.
enum Vertex<E: Element> {
    Leaf(Tensor<E>),
    Op(Arc<Node<E>>),
}

struct Visit<E: Element> {
    id: usize,
    kind: Vertex<E>,
}

impl<E: Element> Visit<E> {
    fn of_input(input: &Input<E>) -> Option<Visit<E>> {
        match input {
            Input::Constant => None,
            Input::Leaf(t) => Some(Visit {
                id: t.id(),
                kind: Vertex::Leaf(t.clone()),
            }),
            Input::Op { id, node, .. } => Some(Visit {
                id: *id,
                kind: Vertex::Op(node.clone()),
            }),
        }
    }
}

/// The graph's tensors reachable from `root` (which requires a gradient), inputs before
/// outputs.
fn topo_order<E: Element>(root: &Tensor<E>) -> Vec<Visit<E>> {
    let root = match &root.0.node {
        Some(node) => Visit {
            id: root.id(),
            kind: Vertex::Op(node.clone()),
        },
        None => Visit {
            id: root.id(),
            kind: Vertex::Leaf(root.clone()),
        },
    };
    let mut order = Vec::new();
    let mut visited = std::collections::HashSet::new();
    // Iterative DFS (deep graphs would overflow the stack with recursion).
    let mut stack: Vec<(Visit<E>, bool)> = vec![(root, false)];
    while let Some((v, expanded)) = stack.pop() {
        if expanded {
            order.push(v);
            continue;
        }
        if !visited.insert(v.id) {
            continue;
        }
        let inputs: Vec<Visit<E>> = match &v.kind {
            Vertex::Op(node) => node
                .inputs
                .iter()
                .filter_map(Visit::of_input)
                .filter(|i| !visited.contains(&i.id))
                .collect(),
            Vertex::Leaf(_) => Vec::new(),
        };
        stack.push((v, true));
        for i in inputs {
            stack.push((i, false));
        }
    }
    order
}

/// Gradients of a scalar `output` with respect to `inputs` (leaves or intermediate tensors),
/// without touching any leaf's accumulated `grad`: neither the inputs' nor those of other
/// parameters in the graph (useful for input gradients such as the denoising score while
/// parameter gradients are being accumulated). An input the output does not depend on gets
/// zeros.
pub fn grad<E: Element>(output: &Tensor<E>, inputs: &[&Tensor<E>]) -> Result<Vec<Tensor<E>>> {
    if output.numel() != 1 {
        return Err(Error::Autograd(format!(
            "grad() needs a one-element output, got shape {:?}; call sum() or mean() first",
            output.shape()
        )));
    }
    let ids: Vec<usize> = inputs.iter().map(|t| t.id()).collect();
    let seed = Tensor::ones(output.shape()).to_device(output.device())?;
    let mut found = run_backward(output, &seed, Some(&ids))?;
    Ok(inputs
        .iter()
        .map(|t| {
            found
                .remove(&t.id())
                .map(|g| g.detach())
                .unwrap_or_else(|| Tensor::zeros(t.shape()))
        })
        .collect())
}
