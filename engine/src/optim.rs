//! Optimizers with their update math in fused WGSL kernels (`shaders/optim.wgsl`), one
//! dispatch per parameter tensor, following `torch.optim` to the letter; the loss scaler's
//! unscaling and finite check and global-norm gradient clipping, folded into one factor the
//! updates read on the device ([`GradientFactor`]); and MAE's learning-rate schedule.
//!
//! Parameters are updated in place: every clone of a parameter tensor sees the new values
//! and its id (the key of its gradient) stays the same. Call `step` after `backward`, since
//! a graph recorded before the step reads the parameters' buffers.

use std::collections::HashMap;

use crate::autodiff::{no_grad, Gradients, TensorId};
use crate::error::{Error, Result};
use crate::kernels::{ADAMW_K, PARTIAL_SUMS_K, SGD_K, STEP_FACTOR_K};
use crate::ops::elementwise_grid;
use crate::params::{GradientParams, OptimParams};
use crate::tensor::{DType, Tensor};

/// Parameters that share a learning rate and weight decay (MAE exempts biases and 1-D
/// parameters from decay by putting them in a group with `weight_decay = 0`).
#[derive(Clone, Debug)]
pub struct ParamGroup {
    /// The parameter tensors: `F32`, contiguous, requiring grad.
    pub params: Vec<Tensor>,
    /// Learning rate; schedules set it before each step.
    pub lr: f32,
    /// Decoupled (AdamW) or L2 (SGD) weight decay.
    pub weight_decay: f32,
    /// What a schedule multiplies its learning rate by for this group: the reference's
    /// `lr_scale` (layer-wise decay in fine-tuning); 1 by default.
    pub lr_scale: f64,
}

impl ParamGroup {
    /// A group of `params` with learning rate `lr` and weight decay `weight_decay`.
    pub fn new(params: Vec<Tensor>, lr: f32, weight_decay: f32) -> ParamGroup {
        ParamGroup {
            params,
            lr,
            weight_decay,
            lr_scale: 1.0,
        }
    }

    /// This group with a schedule's learning rate scaled by `lr_scale`.
    pub fn with_lr_scale(self, lr_scale: f64) -> ParamGroup {
        ParamGroup { lr_scale, ..self }
    }
}

fn check_groups(op: &'static str, groups: &[ParamGroup]) -> Result<()> {
    for (g, group) in groups.iter().enumerate() {
        for (i, p) in group.params.iter().enumerate() {
            p.expect_dtype(op, DType::F32)?;
            if !p.is_contiguous() || !p.is_tracked() {
                return Err(Error::shape(
                    op,
                    format!("parameter {i} of group {g} (shape {:?}) must be contiguous and require grad", p.shape()),
                ));
            }
        }
    }
    Ok(())
}

/// Optimizer state as named host tensors, for checkpoints: `step` and, per parameter
/// (`"{group}.{index}.{name}"`), its moment buffers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OptimizerState {
    /// Steps taken.
    pub step: u64,
    /// `(name, shape, values)` of every state buffer.
    pub tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
}

/// Shared bookkeeping of the optimizers: per-parameter state buffers, and the factor a step
/// without a [`GradientFactor`] multiplies its gradients by (1).
#[derive(Default)]
struct Slots {
    buffers: HashMap<TensorId, Vec<Tensor>>,
    unit: Option<Tensor>,
}

impl Slots {
    /// `given`'s result buffer, or a buffer holding factor 1.
    fn factor(&mut self, given: Option<&GradientFactor>, device: &crate::Device) -> Result<Tensor> {
        if let Some(f) = given {
            return Ok(f.result.clone());
        }
        if let Some(unit) = &self.unit {
            return Ok(unit.clone());
        }
        let unit = Tensor::from_slice(device, &[1.0, 0.0, 0.0, 0.0], &[4])?;
        self.unit = Some(unit.clone());
        Ok(unit)
    }

    fn get(&mut self, p: &Tensor, count: usize) -> Result<&Vec<Tensor>> {
        match self.buffers.entry(p.id()) {
            std::collections::hash_map::Entry::Occupied(e) => Ok(e.into_mut()),
            std::collections::hash_map::Entry::Vacant(e) => {
                let zeros = (0..count)
                    .map(|_| Tensor::zeros(p.device(), p.shape()))
                    .collect::<Result<Vec<_>>>()?;
                Ok(e.insert(zeros))
            }
        }
    }

    fn export(&self, groups: &[ParamGroup], names: &[&str], step: u64) -> Result<OptimizerState> {
        let mut state = OptimizerState {
            step,
            tensors: Vec::new(),
        };
        for (g, group) in groups.iter().enumerate() {
            for (i, p) in group.params.iter().enumerate() {
                if let Some(bufs) = self.buffers.get(&p.id()) {
                    for (name, b) in names.iter().zip(bufs) {
                        state.tensors.push((
                            format!("{g}.{i}.{name}"),
                            b.shape().to_vec(),
                            b.to_vec()?,
                        ));
                    }
                }
            }
        }
        Ok(state)
    }

    fn import(
        &mut self,
        groups: &[ParamGroup],
        names: &[&str],
        state: &OptimizerState,
    ) -> Result<()> {
        let by_name: HashMap<&str, (&Vec<usize>, &Vec<f32>)> = state
            .tensors
            .iter()
            .map(|(n, s, v)| (n.as_str(), (s, v)))
            .collect();
        let mut buffers = HashMap::new();
        let mut problems = Vec::new();
        let mut used = 0;
        for (g, group) in groups.iter().enumerate() {
            for (i, p) in group.params.iter().enumerate() {
                let mut bufs = Vec::new();
                for name in names {
                    let key = format!("{g}.{i}.{name}");
                    match by_name.get(key.as_str()) {
                        Some((shape, _)) if shape.as_slice() != p.shape() => problems.push(
                            format!("{key}: shape {shape:?}, parameter has {:?}", p.shape()),
                        ),
                        Some((_, values)) if !values.iter().all(|v| v.is_finite()) => {
                            problems.push(format!("{key}: values that are not finite"))
                        }
                        // A second moment is a mean of squares.
                        Some((_, values))
                            if name.ends_with("_sq") && values.iter().any(|v| *v < 0.0) =>
                        {
                            problems.push(format!("{key}: negative values"))
                        }
                        Some((shape, values)) => {
                            bufs.push(Tensor::from_slice(p.device(), values, shape)?);
                            used += 1;
                        }
                        None => {}
                    }
                }
                // Every step updates every parameter, so after one step each has its state.
                if bufs.len() == names.len() {
                    buffers.insert(p.id(), bufs);
                } else if !bufs.is_empty() || state.step > 0 {
                    problems.push(format!(
                        "{g}.{i}: {} of its {} state tensors after {} steps",
                        bufs.len(),
                        names.len(),
                        state.step
                    ));
                }
            }
        }
        if used != state.tensors.len() {
            problems.insert(
                0,
                format!(
                    "{} state tensors match no parameter",
                    state.tensors.len() - used
                ),
            );
        }
        if !problems.is_empty() {
            let more = match problems.len() {
                n if n > 3 => format!("; and {} more", n - 3),
                _ => String::new(),
            };
            problems.truncate(3);
            return Err(Error::shape("load_state", problems.join("; ") + &more));
        }
        self.buffers = buffers;
        Ok(())
    }
}

/// AdamW with PyTorch's semantics: decoupled weight decay, bias-corrected moments.
pub struct AdamW {
    /// Parameter groups, with their learning rates (set them per iteration for a schedule).
    pub groups: Vec<ParamGroup>,
    /// `(beta1, beta2)`; MAE pretraining uses `(0.9, 0.95)`.
    pub betas: (f32, f32),
    /// Added to the denominator.
    pub eps: f32,
    step: u64,
    slots: Slots,
}

impl AdamW {
    /// An optimizer over `groups`.
    ///
    /// # Errors
    /// [`Error::Shape`] for a parameter that is not contiguous or does not require grad;
    /// [`Error::DType`] for a `U32` one.
    pub fn new(groups: Vec<ParamGroup>, betas: (f32, f32), eps: f32) -> Result<AdamW> {
        check_groups("AdamW", &groups)?;
        Ok(AdamW {
            groups,
            betas,
            eps,
            step: 0,
            slots: Slots::default(),
        })
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Update every parameter with its gradient in `grads`. Records one fused dispatch per
    /// parameter; nothing is read back.
    ///
    /// # Errors
    /// [`Error::Shape`] when a gradient's shape differs from its parameter's;
    /// [`Error::Autodiff`] when a parameter has no gradient in `grads` (unlike PyTorch,
    /// which skips it: here it means the optimizer holds a tensor the model no longer
    /// uses). Nothing is updated on an error.
    pub fn step(&mut self, grads: &Gradients) -> Result<()> {
        self.step_with(grads, None)
    }

    /// [`AdamW::step`] with every gradient multiplied by `factor` (unscaled, clipped) as the
    /// update reads it.
    ///
    /// # Errors
    /// As [`AdamW::step`].
    pub fn step_with(&mut self, grads: &Gradients, factor: Option<&GradientFactor>) -> Result<()> {
        let gradients = gradients_for("AdamW", &self.groups, grads)?;
        let scaled = factor.is_some() as u32;
        self.step += 1;
        let t = self.step as i32;
        let (b1, b2) = self.betas;
        let bc1 = 1.0 - (b1 as f64).powi(t);
        let bc2 = 1.0 - (b2 as f64).powi(t);
        no_grad(|| {
            for (group, gs) in self.groups.iter().zip(&gradients) {
                for (p, g) in group.params.iter().zip(gs) {
                    let factor = self.slots.factor(factor, p.device())?;
                    let state = self.slots.get(p, 2)?;
                    let params = OptimParams {
                        numel: p.numel() as u32,
                        param_offset: p.offset() as u32,
                        grad_offset: g.offset() as u32,
                        lr: group.lr,
                        weight_decay: group.weight_decay,
                        beta1: b1,
                        beta2: b2,
                        eps: self.eps,
                        step_size: (group.lr as f64 / bc1) as f32,
                        bc2_sqrt: bc2.sqrt() as f32,
                        ..Default::default()
                    };
                    p.device().dispatch(
                        &ADAMW_K,
                        &[scaled],
                        &params,
                        &[
                            p.buffer(),
                            g.buffer(),
                            factor.buffer(),
                            state[0].buffer(),
                            state[1].buffer(),
                        ],
                        elementwise_grid(p.numel()),
                    );
                }
            }
            Ok(())
        })
    }

    /// The step count and moments, for a checkpoint.
    ///
    /// # Errors
    /// [`Error::Device`] when reading back fails.
    pub fn state(&self) -> Result<OptimizerState> {
        self.slots
            .export(&self.groups, &["exp_avg", "exp_avg_sq"], self.step)
    }

    /// Restore a state saved by [`AdamW::state`] for the same parameter layout.
    ///
    /// # Errors
    /// [`Error::Shape`] listing every state tensor that is missing, mis-shaped or unused.
    pub fn load_state(&mut self, state: &OptimizerState) -> Result<()> {
        self.slots
            .import(&self.groups, &["exp_avg", "exp_avg_sq"], state)?;
        self.step = state.step;
        Ok(())
    }
}

/// SGD with momentum, dampening, Nesterov and L2 weight decay, as `torch.optim.SGD`.
pub struct Sgd {
    /// Parameter groups.
    pub groups: Vec<ParamGroup>,
    /// Momentum factor (0 for plain SGD).
    pub momentum: f32,
    /// Dampening of the momentum's new term.
    pub dampening: f32,
    /// Nesterov momentum.
    pub nesterov: bool,
    step: u64,
    slots: Slots,
}

impl Sgd {
    /// An optimizer over `groups`.
    ///
    /// # Errors
    /// As [`AdamW::new`].
    pub fn new(
        groups: Vec<ParamGroup>,
        momentum: f32,
        dampening: f32,
        nesterov: bool,
    ) -> Result<Sgd> {
        check_groups("SGD", &groups)?;
        Ok(Sgd {
            groups,
            momentum,
            dampening,
            nesterov,
            step: 0,
            slots: Slots::default(),
        })
    }

    /// Update every parameter with its gradient in `grads`.
    ///
    /// # Errors
    /// As [`AdamW::step`].
    pub fn step(&mut self, grads: &Gradients) -> Result<()> {
        self.step_with(grads, None)
    }

    /// [`Sgd::step`] with every gradient multiplied by `factor`.
    ///
    /// # Errors
    /// As [`AdamW::step`].
    pub fn step_with(&mut self, grads: &Gradients, factor: Option<&GradientFactor>) -> Result<()> {
        let gradients = gradients_for("SGD", &self.groups, grads)?;
        let scaled = factor.is_some() as u32;
        no_grad(|| {
            for (group, gs) in self.groups.iter().zip(&gradients) {
                for (p, g) in group.params.iter().zip(gs) {
                    let factor = self.slots.factor(factor, p.device())?;
                    let first = !self.slots.buffers.contains_key(&p.id());
                    let buf = &self.slots.get(p, 1)?[0];
                    let params = OptimParams {
                        numel: p.numel() as u32,
                        param_offset: p.offset() as u32,
                        grad_offset: g.offset() as u32,
                        first: first as u32,
                        lr: group.lr,
                        weight_decay: group.weight_decay,
                        momentum: self.momentum,
                        dampening: self.dampening,
                        nesterov: self.nesterov as u32,
                        ..Default::default()
                    };
                    p.device().dispatch(
                        &SGD_K,
                        &[scaled],
                        &params,
                        &[p.buffer(), g.buffer(), factor.buffer(), buf.buffer()],
                        elementwise_grid(p.numel()),
                    );
                }
            }
            Ok(())
        })?;
        self.step += 1;
        Ok(())
    }

    /// The step count and momentum buffers, for a checkpoint.
    ///
    /// # Errors
    /// As [`AdamW::state`].
    pub fn state(&self) -> Result<OptimizerState> {
        self.slots
            .export(&self.groups, &["momentum_buffer"], self.step)
    }

    /// Restore a state saved by [`Sgd::state`].
    ///
    /// # Errors
    /// As [`AdamW::load_state`].
    pub fn load_state(&mut self, state: &OptimizerState) -> Result<()> {
        self.slots
            .import(&self.groups, &["momentum_buffer"], state)?;
        self.step = state.step;
        Ok(())
    }
}

/// The gradient of every parameter of `groups`, checked before any update so that a step
/// is all or nothing.
///
/// Unlike PyTorch, which skips a parameter without a gradient, a missing one is an error:
/// every training loop here differentiates a loss through every parameter it optimizes, so
/// a parameter with no gradient is one the model no longer uses, typically a tensor that
/// was replaced after the optimizer was built, and skipping it would train nothing without
/// a word.
fn gradients_for(
    op: &'static str,
    groups: &[ParamGroup],
    grads: &Gradients,
) -> Result<Vec<Vec<Tensor>>> {
    let mut missing = Vec::new();
    let mut total = 0;
    let mut out = Vec::new();
    for (gi, group) in groups.iter().enumerate() {
        let mut gs = Vec::new();
        for (i, p) in group.params.iter().enumerate() {
            total += 1;
            let Some(g) = grads.get(p) else {
                missing.push(format!("group {gi} parameter {i} {:?}", p.shape()));
                continue;
            };
            if g.shape() != p.shape() {
                return Err(Error::shape(
                    op,
                    format!(
                        "gradient of shape {:?} for a parameter of shape {:?}",
                        g.shape(),
                        p.shape()
                    ),
                ));
            }
            gs.push(g.contiguous()?);
        }
        out.push(gs);
    }
    if !missing.is_empty() {
        return Err(Error::Autodiff(format!(
            "{op}: {} of its {total} parameters got no gradient this step ({}{}): a parameter replaced after the optimizer was built is no longer the tensor it updates",
            missing.len(),
            missing[..missing.len().min(3)].join(", "),
            if missing.len() > 3 { ", ..." } else { "" }
        )));
    }
    Ok(out)
}

/// Workgroups a gradient of `numel` elements is summed by: one per 1024 elements, at most
/// 256, so a large one is read by many workgroups and the slots stay few.
fn sum_workgroups(numel: usize) -> usize {
    numel.div_ceil(1024).clamp(1, 256)
}

/// What an optimizer step multiplies every gradient by: the inverse loss scale times
/// `torch.nn.utils.clip_grad_norm_`'s coefficient, with the gradients' global norm and a
/// finite check (`shaders/gradients.wgsl`).
///
/// It costs one dispatch per gradient and one more, and stays on the device: the update
/// kernels ([`AdamW::step_with`], [`Sgd::step_with`]) read it there, so unscaling and
/// clipping add no pass over the gradients of their own, and the gradients are not changed.
pub struct GradientFactor {
    /// The factor, the norm, the sum of magnitudes, a spare; then the partial sums.
    result: Tensor,
}

impl GradientFactor {
    /// The factor for the gradients in `grads` of every parameter of `groups`: each is
    /// multiplied by `unscale` (the inverse loss scale, a power of two, so exactly), and then,
    /// with `max_norm`, by `min(max_norm / (norm + 1e-6), 1)`, where `norm` is the global L2
    /// norm of the unscaled gradients, as `torch.nn.utils.clip_grad_norm_`.
    ///
    /// # Errors
    /// [`Error::Shape`] for a non-positive or non-finite `max_norm` or `unscale`; as
    /// [`AdamW::step`] for a missing or mis-shaped gradient.
    pub fn new(
        groups: &[ParamGroup],
        grads: &Gradients,
        unscale: f32,
        max_norm: Option<f32>,
    ) -> Result<GradientFactor> {
        let positive = |v: f32| v.is_finite() && v > 0.0;
        if !positive(unscale) || !max_norm.is_none_or(positive) {
            return Err(Error::shape(
                "GradientFactor",
                format!("unscale ({unscale}) and max_norm ({max_norm:?}) must be positive"),
            ));
        }
        let gradients: Vec<Tensor> = gradients_for("GradientFactor", groups, grads)?
            .into_iter()
            .flatten()
            .collect();
        let Some(device) = gradients.first().map(|g| g.device().clone()) else {
            return Err(Error::Autodiff("GradientFactor: no gradients".into()));
        };
        let slots: usize = gradients.iter().map(|g| sum_workgroups(g.numel())).sum();
        let result = Tensor::empty(&device, "GradientFactor", &[4 + 2 * slots], DType::F32)?;
        let mut params = GradientParams {
            unscale,
            max_norm: max_norm.unwrap_or(0.0),
            ..Default::default()
        };
        for g in &gradients {
            let groups = sum_workgroups(g.numel());
            params.numel = g.numel() as u32;
            params.grad_offset = g.offset() as u32;
            device.dispatch(
                &PARTIAL_SUMS_K,
                &[],
                &params,
                &[result.buffer(), g.buffer()],
                [groups as u32, 1, 1],
            );
            params.slot += groups as u32;
        }
        params.numel = slots as u32;
        device.dispatch(&STEP_FACTOR_K, &[], &params, &[result.buffer()], [1, 1, 1]);
        Ok(GradientFactor { result })
    }

    /// Whether every unscaled gradient is finite (one read-back): the sum of all magnitudes
    /// is finite exactly when every element is, short of 3e38 in all.
    ///
    /// # Errors
    /// [`Error::Device`] when reading back fails.
    pub fn all_finite(&self) -> Result<bool> {
        Ok(self.result.narrow(0, 2, 1)?.item()?.is_finite())
    }

    /// The global L2 norm of the unscaled gradients, before clipping, as a rank-0 tensor.
    ///
    /// # Errors
    /// Engine failures only.
    pub fn norm(&self) -> Result<Tensor> {
        self.result.narrow(0, 1, 1)?.reshape(&[])
    }

    /// The factor itself, as a rank-0 tensor.
    ///
    /// # Errors
    /// Engine failures only.
    pub fn factor(&self) -> Result<Tensor> {
        self.result.narrow(0, 0, 1)?.reshape(&[])
    }
}

/// MAE's learning rate at a fractional epoch: linear warmup from 0 over `warmup_epochs`,
/// then a half-cycle cosine from `base_lr` down to `min_lr` at `epochs`. Evaluated per
/// iteration with `epoch = epoch_index + step_in_epoch / steps_per_epoch`, as the
/// reference's `adjust_learning_rate`.
pub fn warmup_cosine_lr(
    epoch: f64,
    base_lr: f64,
    min_lr: f64,
    warmup_epochs: f64,
    epochs: f64,
) -> f64 {
    if epoch < warmup_epochs {
        base_lr * epoch / warmup_epochs
    } else {
        let progress = (epoch - warmup_epochs) / (epochs - warmup_epochs);
        min_lr + (base_lr - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}
