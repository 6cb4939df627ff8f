//! Gradient checking, in the spirit of `torch.autograd.gradcheck`: compare the analytic
//! gradient from [`Tensor::backward`] with central differences of the function.
//!
//! The function's output is projected to a scalar with fixed random weights
//! `L = sum(r * f(x))`, so every output element takes part. The numeric side perturbs one
//! input element at a time by `±eps`, runs the function on the device and sums `r * f`
//! on the host in `f64`.
//!
//! The arithmetic on the device is `f32`. A central difference has a truncation error of
//! about `eps² f'''/6` and a rounding error of about `u |f| / eps` with `u ≈ 1e-7` per op
//! (more after long sums): `eps = 1e-2` balances the two for inputs and outputs of order 1,
//! leaving errors near `1e-4`, so the defaults accept `|analytic - numeric| <= 1e-2 +
//! 1e-2 |numeric|`. A wrong rule (a missing term, a wrong sign or factor, a transposed
//! operand) is off by far more than that; a test shows that a rule off by 10% fails.
//! Keep inputs away from kinks (`relu`, `abs`, `max` ties) by more than `eps`.

use crate::autodiff::no_grad;
use crate::error::Result;
use crate::tensor::{DType, Tensor};

/// Settings of [`gradcheck`].
#[derive(Clone, Copy, Debug)]
pub struct GradcheckOptions {
    /// Perturbation of each input element.
    pub eps: f32,
    /// Absolute tolerance.
    pub atol: f64,
    /// Relative tolerance (of the numeric gradient's magnitude).
    pub rtol: f64,
    /// Elements checked per input at most (spread evenly over it); analytic gradients are
    /// always complete, this only bounds the number of forward evaluations.
    pub max_elements: usize,
}

impl Default for GradcheckOptions {
    fn default() -> Self {
        GradcheckOptions {
            eps: 1e-2,
            atol: 1e-2,
            rtol: 1e-2,
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
    /// `abs_err / |numeric|`.
    pub rel_err: f64,
}

/// Outcome of [`gradcheck`].
#[derive(Clone, Debug)]
pub struct GradcheckReport {
    /// True when every checked element is within tolerance.
    pub passed: bool,
    /// Elements compared.
    pub checked: usize,
    /// The worst element (the first failing one's worst, when it failed).
    pub worst: Option<GradMismatch>,
}

impl std::fmt::Display for GradcheckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verdict = if self.passed { "passed" } else { "FAILED" };
        write!(f, "gradcheck {verdict} on {} elements", self.checked)?;
        if let Some(w) = &self.worst {
            write!(
                f,
                "; worst: input {} element {}: analytic {:.6e}, numeric {:.6e}, abs err {:.3e}, rel err {:.3e}",
                w.input, w.index, w.analytic, w.numeric, w.abs_err, w.rel_err
            )?;
        }
        Ok(())
    }
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
            DType::U32 => Ok(t.clone()),
        })
        .collect::<Result<_>>()?;
    let y = f(&leaves)?;
    let weights: Vec<f32> = (0..y.numel())
        .map(|i| crate::reference::uniform(0x5eed, i as u32, -1.0, 1.0))
        .collect();
    let r = Tensor::from_slice(y.device(), &weights, y.shape())?;
    let grads = y.mul(&r)?.sum_all()?.backward()?;

    let project = |xs: &[Tensor]| -> Result<f64> {
        let y = no_grad(|| f(xs))?.to_vec()?;
        Ok(y.iter()
            .zip(&weights)
            .map(|(&a, &b)| a as f64 * b as f64)
            .sum())
    };
    let mut report = GradcheckReport {
        passed: true,
        checked: 0,
        worst: None,
    };
    let mut worst_excess = f64::NEG_INFINITY;
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
        for j in (0..n).step_by(step) {
            let value = |delta: f32| -> Result<f64> {
                let mut h = host.clone();
                h[j] += delta;
                let mut xs = leaves.clone();
                xs[i] = Tensor::from_slice(leaf.device(), &h, leaf.shape())?;
                project(&xs)
            };
            let numeric = (value(opts.eps)? - value(-opts.eps)?) / (2.0 * opts.eps as f64);
            let a = analytic[j] as f64;
            let abs_err = (a - numeric).abs();
            let excess = abs_err - (opts.atol + opts.rtol * numeric.abs());
            report.checked += 1;
            if excess > 0.0 || excess.is_nan() {
                report.passed = false;
            }
            if excess > worst_excess || excess.is_nan() {
                worst_excess = if excess.is_nan() {
                    f64::INFINITY
                } else {
                    excess
                };
                report.worst = Some(GradMismatch {
                    input: i,
                    index: j,
                    analytic: a,
                    numeric,
                    abs_err,
                    rel_err: abs_err / numeric.abs().max(f64::MIN_POSITIVE),
                });
            }
        }
    }
    Ok(report)
}
