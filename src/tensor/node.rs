//! The record an op attaches to its output when gradients are needed: the op's name, its
//! inputs and the closure that maps the output's gradient to theirs. It lives with the tensor
//! (which owns it) so that the tensor module does not depend on the autograd sweep; the
//! sweep and `record` are in [`crate::autograd`].

use std::sync::Arc;

use crate::error::Result;
use crate::tensor::{Element, Tensor};

/// Maps the output gradient to one optional gradient per input (None = no contribution).
pub type BackwardFn<E> =
    Box<dyn Fn(&Tensor<E>) -> Result<Vec<Option<Tensor<E>>>> + Send + Sync + 'static>;

/// One input of a recorded op, as much of it as the backward sweep needs. An op's output is
/// held by its identity, shape and node, not by its storage, so the graph keeps alive only
/// what the backward closures captured: an activation no closure needs (the input of an add,
/// the f32 operands an op saved in bf16) is freed as soon as the caller drops it.
pub(crate) enum Input<E: Element> {
    /// An input that wants no gradient: nothing of it is needed.
    Constant,
    /// A leaf that wants a gradient: the tensor, whose `grad` slot receives it.
    Leaf(Tensor<E>),
    /// The output of another recorded op.
    Op {
        id: usize,
        shape: Vec<usize>,
        node: Arc<Node<E>>,
    },
}

impl<E: Element> Input<E> {
    /// What `t`, an input of an op being recorded, leaves in the graph.
    pub(crate) fn of(t: &Tensor<E>) -> Input<E> {
        match (t.requires_grad(), &t.0.node) {
            (false, _) => Input::Constant,
            (true, None) => Input::Leaf(t.clone()),
            (true, Some(node)) => Input::Op {
                id: t.id(),
                shape: t.shape().to_vec(),
                node: node.clone(),
            },
        }
    }
}

/// How an output was made, kept only when gradients are needed.
pub struct Node<E: Element> {
    /// Name of the op that produced the output (shown as `grad_fn` and in backward errors).
    pub name: &'static str,
    pub(crate) inputs: Vec<Input<E>>,
    pub(crate) backward: BackwardFn<E>,
}

impl<E: Element> Drop for Node<E> {
    /// Frees the graph behind this node iteratively. The default recursive drop would use one
    /// stack frame chain per node and overflow on long graphs (a 100k-step chain, an unrolled
    /// sampling loop); here each node whose last handle we hold has its inputs moved onto a
    /// heap stack before it is dropped, so every drop below this one is shallow.
    fn drop(&mut self) {
        let mut stack = std::mem::take(&mut self.inputs);
        while let Some(input) = stack.pop() {
            let node = match input {
                Input::Op { node, .. } => Some(node),
                Input::Leaf(t) => Arc::try_unwrap(t.0).ok().and_then(|mut i| i.node.take()),
                Input::Constant => None,
            };
            if let Some(mut n) = node.and_then(|n| Arc::try_unwrap(n).ok()) {
                stack.append(&mut n.inputs);
            }
        }
    }
}
