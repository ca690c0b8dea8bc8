//! The record an op attaches to its output when gradients are needed: the op's name, its
//! inputs and the closure that maps the output's gradient to theirs. It lives with the tensor
//! (which owns it) so that the tensor module does not depend on the autograd sweep; the
//! sweep and `record` are in [`crate::autograd`].

use crate::error::Result;
use crate::tensor::{Element, Tensor};

/// Maps the output gradient to one optional gradient per input (None = no contribution).
pub type BackwardFn<E> =
    Box<dyn Fn(&Tensor<E>) -> Result<Vec<Option<Tensor<E>>>> + Send + Sync + 'static>;

/// How an output was made, kept only when gradients are needed.
pub struct Node<E: Element> {
    /// Name of the op that produced the output (shown as `grad_fn` and in backward errors).
    pub name: &'static str,
    pub(crate) inputs: Vec<Tensor<E>>,
    pub(crate) backward: BackwardFn<E>,
}

impl<E: Element> Drop for Node<E> {
    /// Frees the graph behind this node iteratively. The default recursive drop would use one
    /// stack frame chain per node and overflow on long graphs (a 100k-step chain, an unrolled
    /// sampling loop); here each input whose last handle we hold has its own inputs moved onto
    /// a heap stack before it is dropped, so every drop below this one is shallow.
    fn drop(&mut self) {
        let mut stack = std::mem::take(&mut self.inputs);
        while let Some(t) = stack.pop() {
            if let Ok(mut inner) = std::sync::Arc::try_unwrap(t.0) {
                if let Some(node) = inner.node.as_mut() {
                    stack.append(&mut node.inputs);
                }
            }
        }
    }
}
