//! Activation checkpointing: an op whose forward runs a function without recording a graph,
//! keeping only its inputs, and whose backward runs the function again with recording on
//! and backpropagates through that fresh graph.
//!
//! What it trades: the function's intermediate tensors (for a Transformer layer, the
//! normalised inputs, the attention's operands, the MLP's hidden layer) are alive only while
//! its backward runs instead of from the forward to the backward, for one more forward of
//! the function. The kernels are deterministic, so the recomputed forward has the bits of
//! the first one and the gradients are those of the plain graph (two contributions meeting
//! at a tensor are summed in either order with the same result; see the tests).

use std::sync::Arc;

use crate::backend::{current_matmul_precision, matmul_precision};
use crate::error::Result;
use crate::tensor::{Element, Tensor};

use super::{is_grad_enabled, run_backward, NO_GRAD_DEPTH};

/// Switches recording back on for this thread until dropped (whatever `no_grad` guards
/// are open), then restores their depth: the backward sweep runs closures with recording
/// off, and a checkpoint's closure needs to record the graph it recomputes.
struct EnableGradGuard {
    depth: usize,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl EnableGradGuard {
    fn new() -> Self {
        EnableGradGuard {
            depth: NO_GRAD_DEPTH.with(|d| d.replace(0)),
            _not_send: std::marker::PhantomData,
        }
    }
}

impl Drop for EnableGradGuard {
    fn drop(&mut self) {
        NO_GRAD_DEPTH.with(|d| d.set(self.depth));
    }
}

/// What a checkpointed function computes from its inputs (in the order given to
/// [`checkpoint`]).
pub type CheckpointFn<E> = dyn Fn(&[Tensor<E>]) -> Result<Tensor<E>> + Send + Sync;

/// `f(inputs)`, keeping for the backward only `inputs` (their storage, shared with the
/// caller's tensors) instead of every intermediate tensor `f` makes: the forward runs `f`
/// with recording off, and the backward runs it again with recording on and at the matrix
/// precision of the forward, then backpropagates the output's gradient through the new
/// graph.
///
/// `params` lists every tensor `f` reads that is not among `inputs` and may want a gradient
/// (the weights it captured): their gradients leave through this op like the inputs', so
/// `backward` accumulates them into their `grad` slots and [`grad`](super::grad) leaves
/// the slots alone, as for any op. A tensor wanting a gradient that `f` captures but
/// `params` does not list gets none.
///
/// With recording off (under `no_grad`, or when nothing wants a gradient) this is `f`
/// itself. `f` must be deterministic for the gradients to be those of the plain graph;
/// the crate's kernels are. Errors are `f`'s, in the forward and in the backward.
pub fn checkpoint<E: Element>(
    name: &'static str,
    inputs: &[&Tensor<E>],
    params: &[&Tensor<E>],
    f: Arc<CheckpointFn<E>>,
) -> Result<Tensor<E>> {
    let want = |t: &&Tensor<E>| t.requires_grad();
    if !is_grad_enabled() || !(inputs.iter().any(want) || params.iter().any(want)) {
        return f(&inputs.iter().map(|t| (*t).clone()).collect::<Vec<_>>());
    }
    let saved: Vec<Tensor<E>> = inputs.iter().map(|t| t.detach()).collect();
    let out = {
        let _g = super::no_grad();
        f(&saved)?
    };
    let want_in: Vec<bool> = inputs.iter().map(want).collect();
    let param_ids: Vec<Option<usize>> = params
        .iter()
        .map(|p| p.requires_grad().then(|| p.id()))
        .collect();
    let precision = current_matmul_precision();
    let mut all: Vec<&Tensor<E>> = inputs.to_vec();
    all.extend_from_slice(params);
    Ok(out.record(name, &all, move |g| {
        // The recomputation and its sweep at the forward's precision, so that the
        // recomputed forward has the first one's bits.
        let _p = matmul_precision(precision);
        let xs: Vec<Tensor<E>> = saved
            .iter()
            .zip(&want_in)
            .map(|(t, &w)| if w { t.requires_grad_() } else { t.clone() })
            .collect();
        let out = {
            let _on = EnableGradGuard::new();
            f(&xs)?
        };
        let mut targets: Vec<usize> = xs
            .iter()
            .zip(&want_in)
            .filter(|(_, &w)| w)
            .map(|(t, _)| t.id())
            .collect();
        targets.extend(param_ids.iter().flatten());
        let mut found = if out.requires_grad() {
            run_backward(&out, g, Some(&targets))?
        } else {
            Default::default()
        };
        let mut grads: Vec<Option<Tensor<E>>> = xs
            .iter()
            .zip(&want_in)
            .map(|(t, &w)| if w { found.remove(&t.id()) } else { None })
            .collect();
        grads.extend(
            param_ids
                .iter()
                .map(|id| id.and_then(|id| found.remove(&id))),
        );
        Ok(grads)
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::gradcheck::{check_gradients, GradCheck};
    use crate::rng::Rng;

    /// `tanh(x * w) * x + w`, with `w` `[n]` broadcast over the rows of `x` `[m, n]`.
    fn body(x: &Tensor<f64>, w: &Tensor<f64>) -> Result<Tensor<f64>> {
        x.mul(w)?.tanh()?.mul(x)?.add(w)
    }

    fn checkpointed(x: &Tensor<f64>, w: &Tensor<f64>) -> Result<Tensor<f64>> {
        let wc = w.clone();
        checkpoint("test", &[x], &[w], Arc::new(move |xs| body(&xs[0], &wc)))
    }

    fn leaves(seed: u64) -> (Tensor<f64>, Tensor<f64>) {
        let mut rng = Rng::new(seed);
        (
            Tensor::randn(&[3, 4], 0.0, 1.0, &mut rng).requires_grad_(),
            Tensor::randn(&[4], 0.0, 1.0, &mut rng).requires_grad_(),
        )
    }

    #[test]
    fn gradients_match_finite_differences_in_f64() {
        let (x, w) = leaves(1);
        let report = check_gradients(
            |t| checkpointed(&t[0], &t[1]),
            &[x.detach(), w.detach()],
            GradCheck::default(),
        )
        .unwrap();
        assert_eq!(report.checked, 16);
    }

    #[test]
    fn same_bits_as_the_plain_graph_and_slots_filled_as_usual() {
        let run = |ck: bool| {
            let (x, w) = leaves(2);
            let y = if ck {
                checkpointed(&x, &w)
            } else {
                body(&x, &w)
            }
            .unwrap();
            let out = y.to_vec();
            y.sum_all().unwrap().backward().unwrap();
            (out, x.grad().unwrap().to_vec(), w.grad().unwrap().to_vec())
        };
        let (plain, ck) = (run(false), run(true));
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&plain.0), bits(&ck.0));
        assert_eq!(bits(&plain.1), bits(&ck.1));
        assert_eq!(bits(&plain.2), bits(&ck.2));
    }

    #[test]
    fn grad_leaves_parameter_slots_alone() {
        let (x, w) = leaves(3);
        let y = checkpointed(&x, &w).unwrap().sum_all().unwrap();
        let g = super::super::grad(&y, &[&x]).unwrap();
        assert!(w.grad().is_none() && x.grad().is_none());
        let (x2, w2) = leaves(3);
        body(&x2, &w2)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert_eq!(g[0].to_vec(), x2.grad().unwrap().to_vec());
    }

    #[test]
    fn only_parameters_or_only_inputs_wanting_gradients() {
        // The input is data (no gradient): the node exists for the parameter alone.
        let (x, w) = leaves(4);
        let x = x.detach();
        let y = checkpointed(&x, &w).unwrap();
        assert!(!y.is_leaf());
        y.sum_all().unwrap().backward().unwrap();
        assert!(w.grad().is_some() && x.grad().is_none());
        // A frozen parameter: only the input gets one.
        let (x, w) = leaves(4);
        let w = w.detach();
        checkpointed(&x, &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(x.grad().is_some() && w.grad().is_none());
    }

    #[test]
    fn without_recording_it_is_the_function_itself() {
        let (x, w) = leaves(5);
        let y = crate::autograd::with_no_grad(|| checkpointed(&x, &w)).unwrap();
        assert!(y.is_leaf() && !y.requires_grad());
        let (x, w) = (x.detach(), w.detach());
        assert!(checkpointed(&x, &w).unwrap().is_leaf());
    }

    #[test]
    fn an_error_of_the_recomputation_reaches_backward() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let (x, _) = leaves(6);
        let y = checkpoint(
            "fails second time",
            &[&x],
            &[],
            Arc::new(move |xs| {
                if c.fetch_add(1, Ordering::SeqCst) == 0 {
                    xs[0].tanh()
                } else {
                    xs[0].reshape(&[5])
                }
            }),
        )
        .unwrap();
        let e = y.sum_all().unwrap().backward().unwrap_err().to_string();
        assert!(e.contains("reshape"), "{e}");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // Recording is back to normal after the failed sweep.
        assert!(crate::autograd::is_grad_enabled());
    }
}
