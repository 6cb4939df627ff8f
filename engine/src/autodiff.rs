//! Reverse-mode automatic differentiation.
//!
//! A tensor marked with [`Tensor::requires_grad`] is a leaf. Every op whose inputs include a
//! tensor that requires grad records a node on its output: the inputs and a closure,
//! written beside the op's forward, that turns the output's gradient into the inputs'.
//! [`Tensor::backward`] walks the recorded graph from a scalar in reverse topological order
//! and returns a [`Gradients`] container keyed by tensor id, as burn does.
//!
//! The graph lives as long as the tensors that reference it: saved activations are captured
//! by the closures and freed when the closures run (backward consumes them) or when the
//! output is dropped. A second backward through a consumed graph is an error.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Identity of a tensor for gradient lookup: views and op results get fresh ids, clones
/// share theirs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(u64);

impl TensorId {
    pub(crate) fn fresh() -> TensorId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        TensorId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// The gradient rule of one recorded op: output gradient in, one optional gradient per
/// input out (`None` where the input needs none).
pub(crate) type BackwardFn = Box<dyn FnOnce(&Tensor) -> Result<Vec<Option<Tensor>>> + Send>;

/// One recorded op: its inputs and its gradient rule (taken when backward runs it).
pub(crate) struct Node {
    pub(crate) op: &'static str,
    pub(crate) inputs: Vec<Edge>,
    backward: Mutex<Option<BackwardFn>>,
}

/// What the graph keeps of a tensor: enough to walk it and check gradients, and not its
/// buffer. An activation lives as long as a gradient rule saved it, not as long as the
/// graph: the f32 input of an f16 product, say, is freed once its f16 copy is made.
#[derive(Clone)]
pub(crate) struct Edge {
    id: TensorId,
    requires_grad: bool,
    shape: Vec<usize>,
    node: Option<Arc<Node>>,
}

impl Edge {
    fn of(t: &Tensor) -> Edge {
        Edge {
            id: t.id,
            requires_grad: t.requires_grad,
            shape: t.shape().to_vec(),
            node: t.node.clone(),
        }
    }
}

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// Whether ops on this thread record the graph (false inside [`no_grad`]).
pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(Cell::get)
}

/// Run `f` without recording the graph: evaluation, optimizer updates, metrics.
pub fn no_grad<T>(f: impl FnOnce() -> T) -> T {
    with_grad_mode(false, f)
}

/// Run `f` recording the graph, even inside [`no_grad`] or a backward pass, as
/// `torch.enable_grad`: activation checkpointing recomputes a forward this way.
pub fn enable_grad<T>(f: impl FnOnce() -> T) -> T {
    with_grad_mode(true, f)
}

fn with_grad_mode<T>(on: bool, f: impl FnOnce() -> T) -> T {
    with_flag(&GRAD_ENABLED, on, f)
}

/// Run `f` with the thread's mode `flag` set to `on`, restored afterwards even if `f`
/// panics, so a caught panic does not leave a mode behind.
pub(crate) fn with_flag<T>(
    flag: &'static std::thread::LocalKey<Cell<bool>>,
    on: bool,
    f: impl FnOnce() -> T,
) -> T {
    struct Restore(&'static std::thread::LocalKey<Cell<bool>>, bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            self.0.with(|c| c.set(self.1));
        }
    }
    let _restore = Restore(flag, flag.with(|c| c.replace(on)));
    f()
}

impl Tensor {
    /// Attach the gradient rule of op `op` to its freshly computed output `self`, if
    /// recording is on and any input requires grad. The forward must have run inside
    /// [`no_grad`] (see [`Tensor::tracked`]) so that its internal ops are not recorded.
    pub(crate) fn record(
        mut self,
        op: &'static str,
        inputs: &[&Tensor],
        backward: impl FnOnce(&Tensor) -> Result<Vec<Option<Tensor>>> + Send + 'static,
    ) -> Tensor {
        if is_grad_enabled() && inputs.iter().any(|t| t.requires_grad) {
            self.requires_grad = true;
            self.node = Some(Arc::new(Node {
                op,
                inputs: inputs.iter().map(|t| Edge::of(t)).collect(),
                backward: Mutex::new(Some(Box::new(backward))),
            }));
        }
        self
    }

    /// Attach a hand-written gradient rule, as `torch.autograd.Function` does: `self` was
    /// computed from `inputs` (under [`no_grad`] or by any means), and `backward` maps the
    /// gradient of `self` to one optional gradient per input, of the input's shape.
    /// Recorded only when recording is on and an input requires grad.
    pub fn with_backward(
        self,
        op: &'static str,
        inputs: &[&Tensor],
        backward: impl FnOnce(&Tensor) -> Result<Vec<Option<Tensor>>> + Send + 'static,
    ) -> Tensor {
        self.record(op, inputs, backward)
    }

    /// Mark this tensor as a leaf whose gradient [`Tensor::backward`] computes (or unmark it).
    /// Returns a handle with a fresh id; only `F32` tensors can require grad.
    ///
    /// # Errors
    /// [`Error::DType`] for a `U32` tensor.
    pub fn requires_grad(&self, on: bool) -> Result<Tensor> {
        self.expect_dtype("requires_grad", crate::DType::F32)?;
        let mut t = self.detach();
        t.requires_grad = on;
        Ok(t)
    }

    /// True when gradients flow to or through this tensor.
    pub fn is_tracked(&self) -> bool {
        self.requires_grad
    }

    /// The same data, cut from the graph: a leaf that does not require grad.
    pub fn detach(&self) -> Tensor {
        let mut t = self.view(
            self.shape().to_vec(),
            self.strides().to_vec(),
            self.offset(),
        );
        t.requires_grad = false;
        t.node = None;
        t
    }

    /// Gradients of this scalar with respect to every tensor that requires grad and
    /// contributed to it.
    ///
    /// # Errors
    /// [`Error::Shape`] when `self` has more than one element (use
    /// [`Tensor::backward_with`]); [`Error::Autodiff`] when `self` does not require grad or
    /// its graph was already consumed by an earlier backward.
    pub fn backward(&self) -> Result<Gradients> {
        if self.numel() != 1 {
            return Err(Error::shape(
                "backward",
                format!(
                    "needs a scalar (one element) or an explicit upstream gradient, got shape {:?}",
                    self.shape()
                ),
            ));
        }
        let seed = Tensor::ones(self.device(), self.shape())?;
        self.backward_with(&seed)
    }

    /// Backward from `self` with upstream gradient `grad` (same shape as `self`).
    ///
    /// # Errors
    /// As [`Tensor::backward`], and [`Error::Shape`] when `grad`'s shape differs.
    pub fn backward_with(&self, grad: &Tensor) -> Result<Gradients> {
        let mut grads = Gradients::default();
        self.backward_into(grad, &mut grads)?;
        Ok(grads)
    }

    /// Backward from `self`, adding into `grads`: several calls accumulate gradients over
    /// micro-batches.
    ///
    /// # Errors
    /// As [`Tensor::backward_with`].
    pub fn backward_into(&self, grad: &Tensor, grads: &mut Gradients) -> Result<()> {
        if grad.shape() != self.shape() {
            return Err(Error::shape(
                "backward",
                format!(
                    "upstream gradient of shape {:?} for a tensor of shape {:?}",
                    grad.shape(),
                    self.shape()
                ),
            ));
        }
        if !self.requires_grad {
            return Err(Error::Autodiff(
                "backward: the tensor does not require grad (no input was marked with requires_grad, or it was computed under no_grad)".into(),
            ));
        }
        no_grad(|| self.run_backward(grad, grads))
    }

    fn run_backward(&self, grad: &Tensor, grads: &mut Gradients) -> Result<()> {
        // Reverse topological order of the nodes reachable from self (iterative DFS).
        let mut order: Vec<Edge> = Vec::new();
        let mut seen: HashSet<TensorId> = HashSet::new();
        let mut stack: Vec<(Edge, bool)> = vec![(Edge::of(self), false)];
        while let Some((t, expanded)) = stack.pop() {
            if expanded {
                order.push(t);
                continue;
            }
            if !seen.insert(t.id) {
                continue;
            }
            let node = t.node.clone();
            stack.push((t, true));
            if let Some(node) = node {
                for input in &node.inputs {
                    if input.requires_grad && !seen.contains(&input.id) {
                        stack.push((input.clone(), false));
                    }
                }
            }
        }
        // Gradients of intermediate tensors, keyed by id, until their node has run.
        let mut pending: HashMap<TensorId, Tensor> = HashMap::new();
        pending.insert(self.id, grad.clone());
        for t in order.iter().rev() {
            let Some(g) = pending.remove(&t.id) else {
                continue;
            };
            let Some(node) = &t.node else {
                grads.accumulate(t.id, g)?;
                continue;
            };
            let rule = node
                .backward
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .ok_or_else(|| {
                    Error::Autodiff(format!(
                        "backward: the graph through `{}` was already used by an earlier backward and freed; recompute the forward",
                        node.op
                    ))
                })?;
            let input_grads = rule(&g)?;
            for (input, ig) in node.inputs.iter().zip(input_grads) {
                let Some(ig) = ig else { continue };
                if !input.requires_grad {
                    continue;
                }
                let ig = if ig.shape() == input.shape {
                    ig
                } else {
                    return Err(Error::Autodiff(format!(
                        "backward of `{}` produced a gradient of shape {:?} for an input of shape {:?}",
                        node.op,
                        ig.shape(),
                        input.shape
                    )));
                };
                match pending.remove(&input.id) {
                    Some(acc) => pending.insert(input.id, acc.add(&ig)?),
                    None => pending.insert(input.id, ig),
                };
            }
        }
        Ok(())
    }
}

/// Gradients of leaves, keyed by tensor id.
#[derive(Default, Debug)]
pub struct Gradients {
    map: HashMap<TensorId, Tensor>,
}

impl Gradients {
    /// The gradient of `t`, if it required grad and contributed to the result.
    pub fn get(&self, t: &Tensor) -> Option<&Tensor> {
        self.map.get(&t.id)
    }

    /// Take the gradient of `t` out of the container.
    pub fn remove(&mut self, t: &Tensor) -> Option<Tensor> {
        self.map.remove(&t.id)
    }

    /// The gradient of `t`, or an error naming why there is none.
    ///
    /// # Errors
    /// [`Error::Autodiff`] when `t` does not require grad or did not contribute.
    pub fn expect(&self, t: &Tensor) -> Result<&Tensor> {
        self.get(t).ok_or_else(|| {
            Error::Autodiff(if t.requires_grad {
                format!(
                    "no gradient for tensor of shape {:?}: it did not contribute to the result",
                    t.shape()
                )
            } else {
                format!(
                    "no gradient for tensor of shape {:?}: it does not require grad",
                    t.shape()
                )
            })
        })
    }

    /// Set the gradient of `t` by hand (for tests, benchmarks, or gradients computed
    /// elsewhere).
    ///
    /// # Errors
    /// [`Error::Shape`] when the shapes differ.
    pub fn insert(&mut self, t: &Tensor, grad: Tensor) -> Result<()> {
        if grad.shape() != t.shape() {
            return Err(Error::shape(
                "Gradients::insert",
                format!(
                    "gradient of shape {:?} for a tensor of shape {:?}",
                    grad.shape(),
                    t.shape()
                ),
            ));
        }
        self.map.insert(t.id, grad);
        Ok(())
    }

    /// Drop every gradient (PyTorch's `zero_grad(set_to_none=True)`).
    pub fn clear(&mut self) {
        self.map.clear();
    }

    /// Number of tensors with a gradient.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when no gradient is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn accumulate(&mut self, id: TensorId, g: Tensor) -> Result<()> {
        let g = match self.map.remove(&id) {
            Some(acc) => acc.add(&g)?,
            None => g.contiguous()?,
        };
        self.map.insert(id, g);
        Ok(())
    }
}
