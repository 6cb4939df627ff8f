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

/// Join a prefix and a local name with a dot.
pub(crate) fn join(prefix: &str, name: &str) -> String {
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
/// are identities in eval) and the seeds of the random masks drawn in train mode.
#[derive(Clone, Debug)]
pub struct Ctx {
    /// Train mode: dropout and drop path active.
    pub train: bool,
    seed: u64,
}

impl Ctx {
    /// Train mode, random masks drawn from `seed` onwards.
    pub fn train(seed: u64) -> Ctx {
        Ctx { train: true, seed }
    }

    /// Eval mode.
    pub fn eval() -> Ctx {
        Ctx {
            train: false,
            seed: 0,
        }
    }

    /// A fresh seed for the next random mask (each call gives another).
    pub fn next_seed(&mut self) -> u64 {
        self.seed = self.seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        self.seed
    }
}
