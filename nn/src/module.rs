//! Named parameters and the forward context.

use engine::Tensor;

/// A layer or model whose parameters have hierarchical names.
pub trait Module {
    /// Call `f` with the full name (`prefix` + local name) of every parameter, in a fixed
    /// order.
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor));

    /// Like [`Module::visit`] with mutable access, to replace parameters (loading a
    /// checkpoint).
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor));
}

/// A tensor is the leaf of the naming tree: it is the parameter named `prefix`.
impl Module for Tensor {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        f(prefix, self);
    }

    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor)) {
        f(prefix, self);
    }
}

/// An optional part (a bias) has parameters only when present.
impl<M: Module> Module for Option<M> {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        if let Some(m) = self {
            m.visit(prefix, f);
        }
    }

    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor)) {
        if let Some(m) = self {
            m.visit_mut(prefix, f);
        }
    }
}

/// A list of parts (`blocks`) names them by index: `blocks.0`, `blocks.1`, ...
impl<M: Module> Module for Vec<M> {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        for (i, m) in self.iter().enumerate() {
            m.visit(&join(prefix, &i.to_string()), f);
        }
    }

    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor)) {
        for (i, m) in self.iter_mut().enumerate() {
            m.visit_mut(&join(prefix, &i.to_string()), f);
        }
    }
}

/// Implement [`Module`] for a struct by naming its parameter fields in order:
/// `module_fields!(Mlp { fc1: "fc1", fc2: "fc2" })`. Fields may be tensors, modules,
/// `Option`s and `Vec`s of them.
#[macro_export]
macro_rules! module_fields {
    ($ty:ty { $($field:ident: $name:literal),+ $(,)? }) => {
        impl $crate::Module for $ty {
            fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &$crate::engine::Tensor)) {
                $($crate::Module::visit(&self.$field, &$crate::join(prefix, $name), f);)+
            }

            fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut $crate::engine::Tensor)) {
                $($crate::Module::visit_mut(&mut self.$field, &$crate::join(prefix, $name), f);)+
            }
        }
    };
}

/// Join a prefix and a local name with a dot (`""` + `"fc1"` is `"fc1"`).
pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Every parameter of `m` with its full name, in visiting order.
pub fn named_parameters(m: &dyn Module) -> Vec<(String, Tensor)> {
    let mut out = Vec::new();
    m.visit("", &mut |name, t| out.push((name.to_string(), t.clone())));
    out
}

/// What a forward pass needs besides its input: train or eval mode (dropout and drop path
/// are identities in eval), the seeds of the random masks drawn in train mode, and which
/// rows of a larger batch the input is (data parallelism).
#[derive(Clone, Debug)]
pub struct Ctx {
    /// Train mode: dropout and drop path active.
    pub train: bool,
    /// Activation checkpointing: blocks keep only their input and recompute the rest in
    /// backward, trading a second forward of each block for its activations' memory.
    pub checkpoint: bool,
    seed: u64,
    /// `(first, total)`: the input is rows `first..` of a global batch of `total` rows.
    rows: Option<(usize, usize)>,
}

impl Ctx {
    /// Train mode, random masks drawn from `seed` onwards.
    pub fn train(seed: u64) -> Ctx {
        Ctx {
            train: true,
            checkpoint: false,
            seed,
            rows: None,
        }
    }

    /// Eval mode.
    pub fn eval() -> Ctx {
        Ctx {
            train: false,
            checkpoint: false,
            seed: 0,
            rows: None,
        }
    }

    /// The input is rows `first..` of a global batch of `total` rows split across
    /// processes: masks are drawn for the whole global batch and cut to these rows, so
    /// every process draws what one process with the whole batch would.
    pub fn rows_of(self, first: usize, total: usize) -> Ctx {
        Ctx {
            rows: Some((first, total)),
            ..self
        }
    }

    /// With activation checkpointing on or off (see [`Ctx::checkpoint`]).
    pub fn checkpointing(self, on: bool) -> Ctx {
        Ctx {
            checkpoint: on,
            ..self
        }
    }

    /// `(first, total)` rows of the global batch for an input of `rows` rows.
    pub fn global_rows(&self, rows: usize) -> (usize, usize) {
        self.rows.unwrap_or((0, rows))
    }

    /// A fresh seed for the next random mask (each call gives another).
    pub fn next_seed(&mut self) -> u64 {
        self.seed = self.seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        self.seed
    }
}
