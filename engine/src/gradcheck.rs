//! Gradient checking, in the spirit of `torch.autograd.gradcheck`: compare the analytic
//! gradient from [`Tensor::backward`] with central differences of the function.
//!
//! The function's output is projected to a scalar with fixed random weights
//! `L = sum(r * f(x))`, so every output element takes part. The numeric side perturbs one
//! input element at a time by `±eps`, runs the function on the device and sums `r * f`
//! on the host in `f64`.
//!
//! # Tolerance
//!
//! The device computes in `f32`, so the numeric side is never exact, and the tolerance must
//! follow the size of the gradients rather than be a fixed number: a fixed absolute
//! tolerance of `1e-2` would pass a rule that is 10% off, or a gradient that is missing
//! altogether, whenever the true gradients are about `1e-2` or smaller, which real
//! parameter gradients often are. For each checked element `j` of input `i`:
//!
//! `|analytic - numeric| <= atol + rtol * max_i + rounding * (noise_j + u * max_all)`
//!
//! - `max_i` is the largest numeric gradient of input `i` (over the checked elements): the
//!   check is relative to the input's own scale, so multiplying the function by `1e-4`
//!   leaves the verdict unchanged. `rtol = 1e-2` lets through truncation (`eps² f'''/6`,
//!   about `1e-4` of the gradient for inputs of order 1 and `eps = 1e-2`) and catches any
//!   error above 1% of the input's largest gradient: a wrong factor, sign or transposition,
//!   or a missing term of that size (tests at scales 1, `1e-2` and `1e-4`).
//! - `noise_j` bounds the `f32` rounding of this one central difference: each output that
//!   the perturbation changes carries a rounding error of about `u = f32::EPSILON` of its
//!   magnitude in each of the two runs, so `noise_j = 2u sum_k |r_k| max(|y+_k|, |y-_k|) /
//!   step` over the changed outputs (those it does not reach are the same bits and cancel
//!   exactly). The projected difference is summed in `f64` and divided by the step actually
//!   taken, since `x + eps` rounds in `f32`.
//! - `u * max_all`, with `max_all` the largest numeric gradient of any input, is the
//!   analytic side's rounding: a gradient that is zero in exact arithmetic (a shift that a
//!   softmax ignores, attention's key bias) comes out as a few units of rounding of the
//!   gradients summed into it.
//! - `rounding = 32` allows for rounding that grows over a few dozen operations. Across the
//!   whole gradcheck suite the largest honest error was about 12 of these units where
//!   rounding dominates, and 7e-4 of `max_i` where truncation does: every honest check
//!   uses under a tenth of its tolerance.
//!
//! Keep inputs away from kinks (`relu`, `abs`, `max` ties) by more than `eps`.

use crate::autodiff::no_grad;
use crate::error::Result;
use crate::tensor::{DType, Tensor};

/// Settings of [`gradcheck`]; see the module documentation for why the defaults are safe.
#[derive(Clone, Copy, Debug)]
pub struct GradcheckOptions {
    /// Perturbation of each input element.
    pub eps: f32,
    /// Tolerance relative to the largest numeric gradient of the same input.
    pub rtol: f64,
    /// The rounding allowance, in units of `f32` rounding of the outputs a perturbation
    /// changes and of the largest gradient (the module documentation gives the formula).
    pub rounding: f64,
    /// An extra absolute tolerance, 0 by default.
    pub atol: f64,
    /// Elements checked per input at most (spread evenly over it); analytic gradients are
    /// always complete, this only bounds the number of forward evaluations.
    pub max_elements: usize,
}

impl Default for GradcheckOptions {
    fn default() -> Self {
        GradcheckOptions {
            eps: 1e-2,
            rtol: 1e-2,
            rounding: 32.0,
            atol: 0.0,
            max_elements: 64,
        }
    }
}

/// The element where analytic and numeric gradients differ most (relative to tolerance).
#[derive(Clone, Debug, PartialEq)]
pub struct GradMismatch {
    /// Which input.
    pub input: usize,
    /// Flat (row-major) element index in that input.
    pub index: usize,
    /// Gradient from backward.
    pub analytic: f64,
    /// Central-difference estimate.
    pub numeric: f64,
    /// `|analytic - numeric|`.
    pub abs_err: f64,
    /// `abs_err` over the input's largest numeric gradient.
    pub rel_err: f64,
    /// The input's tolerance on `abs_err`.
    pub tolerance: f64,
}

/// Outcome of [`gradcheck`].
#[derive(Clone, Debug)]
pub struct GradcheckReport {
    /// True when every checked element is within tolerance.
    pub passed: bool,
    /// Elements compared.
    pub checked: usize,
    /// The element with the largest `abs_err / tolerance`.
    pub worst: Option<GradMismatch>,
}

impl std::fmt::Display for GradcheckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verdict = if self.passed { "passed" } else { "FAILED" };
        write!(f, "gradcheck {verdict} on {} elements", self.checked)?;
        if let Some(w) = &self.worst {
            write!(
                f,
                "; worst: input {} element {}: analytic {:.6e}, numeric {:.6e}, abs err {:.3e} (tolerance {:.3e}, {:.3e} of the largest gradient)",
                w.input, w.index, w.analytic, w.numeric, w.abs_err, w.tolerance, w.rel_err
            )?;
        }
        Ok(())
    }
}

/// One compared element: the analytic gradient, its central difference and that
/// difference's rounding bound.
struct Check {
    index: usize,
    analytic: f64,
    numeric: f64,
    noise: f64,
}

/// Check the gradients of `f` at `inputs` with respect to every `F32` input (`U32` inputs,
/// such as indices, are passed through unchanged).
///
/// # Errors
/// Whatever `f` or backward return; a failed check is not an error but a report with
/// `passed == false`.
pub fn gradcheck(
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
    inputs: &[Tensor],
    opts: GradcheckOptions,
) -> Result<GradcheckReport> {
    let leaves: Vec<Tensor> = inputs
        .iter()
        .map(|t| match t.dtype() {
            DType::F32 => t.contiguous().and_then(|c| c.requires_grad(true)),
            DType::U32 | DType::F16 => Ok(t.clone()),
        })
        .collect::<Result<_>>()?;
    let y = f(&leaves)?;
    let weights: Vec<f32> = (0..y.numel())
        .map(|i| crate::reference::uniform(0x5eed, i as u32, -1.0, 1.0))
        .collect();
    let r = Tensor::from_slice(y.device(), &weights, y.shape())?;
    let grads = y.mul(&r)?.sum_all()?.backward()?;

    let mut inputs_checked = Vec::new();
    for (i, leaf) in leaves.iter().enumerate() {
        if leaf.dtype() != DType::F32 {
            continue;
        }
        let analytic = match grads.get(leaf) {
            Some(g) => g.to_vec()?,
            None => vec![0.0; leaf.numel()],
        };
        let host = leaf.to_vec()?;
        let n = host.len();
        let step = n.div_ceil(opts.max_elements.max(1)).max(1);
        let mut checks = Vec::new();
        for j in (0..n).step_by(step) {
            let value = |delta: f32| -> Result<(Vec<f32>, f32)> {
                let mut h = host.clone();
                h[j] += delta;
                let mut xs = leaves.clone();
                xs[i] = Tensor::from_slice(leaf.device(), &h, leaf.shape())?;
                Ok((no_grad(|| f(&xs))?.to_vec()?, h[j]))
            };
            let ((up, x_up), (down, x_down)) = (value(opts.eps)?, value(-opts.eps)?);
            // The step actually taken (x + eps rounds in f32), and the projected difference
            // summed in f64 term by term. Outputs that x_j does not reach are the same bits
            // in both runs and cancel exactly; those it changes carry f32 rounding of their
            // magnitude, which bounds the noise of this one estimate.
            let taken = x_up as f64 - x_down as f64;
            let (mut difference, mut changed) = (0.0f64, 0.0f64);
            for ((&u, &d), &w) in up.iter().zip(&down).zip(&weights) {
                if u.to_bits() != d.to_bits() {
                    difference += w as f64 * (u as f64 - d as f64);
                    changed += (w as f64).abs() * (u.abs().max(d.abs()) as f64);
                }
            }
            checks.push(Check {
                index: j,
                analytic: analytic[j] as f64,
                numeric: difference / taken,
                noise: 2.0 * f32::EPSILON as f64 * changed / taken,
            });
        }
        inputs_checked.push((i, checks));
    }

    let largest = |checks: &[Check]| checks.iter().fold(0.0f64, |m, c| m.max(c.numeric.abs()));
    let overall = inputs_checked
        .iter()
        .fold(0.0f64, |m, (_, c)| m.max(largest(c)));
    // The analytic side rounds too: a gradient that is zero in exact arithmetic comes out
    // as a few f32 units of the gradients summed into it.
    let analytic_rounding = opts.rounding * f32::EPSILON as f64 * overall;
    let mut report = GradcheckReport {
        passed: true,
        checked: 0,
        worst: None,
    };
    let mut worst_ratio = f64::NEG_INFINITY;
    for (i, checks) in inputs_checked {
        let scale = largest(&checks);
        for c in checks {
            let tolerance =
                opts.atol + opts.rtol * scale + opts.rounding * c.noise + analytic_rounding;
            let abs_err = (c.analytic - c.numeric).abs();
            let ratio = match abs_err {
                e if e.is_nan() => f64::INFINITY,
                0.0 => 0.0,
                e => e / tolerance,
            };
            report.checked += 1;
            if ratio > 1.0 {
                report.passed = false;
            }
            if ratio > worst_ratio {
                worst_ratio = ratio;
                report.worst = Some(GradMismatch {
                    input: i,
                    index: c.index,
                    analytic: c.analytic,
                    numeric: c.numeric,
                    abs_err,
                    rel_err: abs_err / scale.max(f64::MIN_POSITIVE),
                    tolerance,
                });
            }
        }
    }
    Ok(report)
}
