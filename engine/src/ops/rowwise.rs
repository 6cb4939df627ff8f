//! Fused kernels over the last axis, one workgroup per row: softmax, layer norm,
//! cross-entropy with logits, argsort.

use super::grid;
use crate::autodiff::no_grad;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::kernels::{
    Kernel, ARGSORT_K, CROSS_ENTROPY_K, CROSS_ENTROPY_SG_K, LAYER_NORM_BACKWARD_K,
    LAYER_NORM_BACKWARD_SG_K, LAYER_NORM_K, LAYER_NORM_SG_K, SOFTMAX_K, SOFTMAX_SG_K,
};

/// A row kernel in the build that reduces with subgroup operations where the device uses
/// them ([`Device::subgroup_reductions`]), else with trees in workgroup memory.
fn rows_kernel(dev: &Device, tree: &'static Kernel, subgroup: &'static Kernel) -> &'static Kernel {
    if dev.subgroup_reductions() {
        subgroup
    } else {
        tree
    }
}
use crate::params::RowParams;
use crate::tensor::{DType, Tensor};

impl Tensor {
    /// `(rows, cols)` of the last axis, after checking dtype and rank.
    fn rows_cols(&self, op: &'static str) -> Result<(usize, usize)> {
        self.expect_dtype(op, DType::F32)?;
        let cols = *self
            .shape()
            .last()
            .ok_or_else(|| Error::shape(op, "needs at least one axis, got a scalar"))?;
        Ok((self.numel() / cols.max(1), cols))
    }

    /// Softmax over the last axis, numerically stable (the row maximum is subtracted), in
    /// one fused kernel.
    ///
    /// # Errors
    /// [`Error::DType`] for `U32`; [`Error::Shape`] for a scalar.
    pub fn softmax(&self) -> Result<Tensor> {
        let y = no_grad(|| self.softmax_untracked())?;
        let out = y.detach();
        Ok(y.record("softmax", &[self], move |g| {
            // dx = y * (g - sum(g * y))
            let dot = g.mul(&out)?.sum(-1, true)?;
            Ok(vec![Some(out.mul(&g.sub(&dot)?)?)])
        }))
    }

    fn softmax_untracked(&self) -> Result<Tensor> {
        let dev = self.device();
        let kernel = rows_kernel(dev, &SOFTMAX_K, &SOFTMAX_SG_K);
        self.map_rows("softmax", kernel, &[dev.row_workgroup()], DType::F32)
    }

    /// One dispatch of a row kernel that maps each row of `self` to a row of a new tensor
    /// of `dtype`, one workgroup per row: softmax, argsort.
    fn map_rows(
        &self,
        op: &'static str,
        kernel: &'static Kernel,
        overrides: &[u32],
        dtype: DType,
    ) -> Result<Tensor> {
        let (rows, cols) = self.rows_cols(op)?;
        let x = self.contiguous()?;
        let out = Tensor::empty(x.device(), op, x.shape(), dtype)?;
        let p = RowParams {
            rows: rows as u32,
            cols: cols as u32,
            x_offset: x.offset() as u32,
            ..Default::default()
        };
        let groups = grid(x.device(), rows);
        x.device()
            .dispatch(kernel, overrides, &p, &[out.buffer(), x.buffer()], groups);
        Ok(out)
    }

    /// Layer normalisation over the last axis: `(x - mean) / sqrt(var + eps) * weight + bias`
    /// with the biased variance, as `torch.nn.functional.layer_norm`. `weight` and `bias`
    /// have shape `(cols,)`.
    ///
    /// # Errors
    /// [`Error::Shape`] when weight or bias do not match the last axis; [`Error::DType`].
    pub fn layer_norm(&self, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
        Ok(self.layer_norm_with_stats(weight, bias, eps)?.0)
    }

    /// [`Tensor::layer_norm`] that also returns the per-row `(mean, rstd)` as a `(rows, 2)`
    /// tensor, which the backward pass reuses.
    ///
    /// # Errors
    /// As [`Tensor::layer_norm`].
    pub fn layer_norm_with_stats(
        &self,
        weight: &Tensor,
        bias: &Tensor,
        eps: f32,
    ) -> Result<(Tensor, Tensor)> {
        let (y, stats) = no_grad(|| self.layer_norm_untracked(weight, bias, eps))?;
        let (x, w, saved) = (self.detach(), weight.detach(), stats.clone());
        let need = [self.requires_grad, weight.requires_grad, bias.requires_grad];
        let y = y.record("layer_norm", &[self, weight, bias], move |g| {
            layer_norm_backward(&x, &w, &saved, g, need)
        });
        Ok((y, stats))
    }

    fn layer_norm_untracked(
        &self,
        weight: &Tensor,
        bias: &Tensor,
        eps: f32,
    ) -> Result<(Tensor, Tensor)> {
        let op = "layer_norm";
        let (rows, cols) = self.rows_cols(op)?;
        for (name, t) in [("weight", weight), ("bias", bias)] {
            t.expect_dtype(op, DType::F32)?;
            self.expect_same_device(op, t)?;
            if t.shape() != [cols] {
                return Err(Error::shape(
                    op,
                    format!(
                        "{name} of shape {:?} does not match the last axis of input {:?}",
                        t.shape(),
                        self.shape()
                    ),
                ));
            }
        }
        let (x, w, b) = (self.contiguous()?, weight.contiguous()?, bias.contiguous()?);
        let out = Tensor::empty(x.device(), op, x.shape(), DType::F32)?;
        let stats = Tensor::empty(x.device(), op, &[rows, 2], DType::F32)?;
        let p = RowParams {
            rows: rows as u32,
            cols: cols as u32,
            x_offset: x.offset() as u32,
            w_offset: w.offset() as u32,
            b_offset: b.offset() as u32,
            eps,
            ..Default::default()
        };
        x.device().dispatch(
            rows_kernel(x.device(), &LAYER_NORM_K, &LAYER_NORM_SG_K),
            &[x.device().row_workgroup()],
            &p,
            &[
                out.buffer(),
                stats.buffer(),
                x.buffer(),
                w.buffer(),
                b.buffer(),
            ],
            grid(x.device(), rows),
        );
        Ok((out, stats))
    }

    /// Cross-entropy of logits `(N, C)` against `U32` class targets `(N,)`, per row, with the
    /// log-softmax fused in: `logsumexp(x) - x[target]`. With `label_smoothing` eps the
    /// target distribution is `(1 - eps) * onehot + eps / C`, as in PyTorch. Take
    /// [`Tensor::mean_all`] of the result for the usual mean loss.
    ///
    /// # Errors
    /// [`Error::Shape`] for shapes other than `(N, C)` and `(N,)`; [`Error::DType`];
    /// [`Error::Index`] at the next read-back for a target outside `0..C`.
    pub fn cross_entropy(&self, targets: &Tensor, label_smoothing: f32) -> Result<Tensor> {
        let y = no_grad(|| self.cross_entropy_untracked(targets, label_smoothing))?;
        let (x, t) = (self.detach(), targets.detach());
        Ok(y.record("cross_entropy", &[self], move |g| {
            // dx = (softmax(x) - target distribution) * g per row, the target distribution
            // being (1 - eps) * onehot + eps / C.
            let classes = x.shape()[1];
            let class_ids = Tensor::arange(x.device(), 0.0, classes as f32, 1.0)?;
            let onehot = class_ids
                .eq(&t.to_dtype(DType::F32)?.unsqueeze(1)?)?
                .to_dtype(DType::F32)?;
            let target = onehot
                .mul_scalar(1.0 - label_smoothing)?
                .add_scalar(label_smoothing / classes as f32)?;
            Ok(vec![Some(
                x.softmax()?.sub(&target)?.mul(&g.unsqueeze(1)?)?,
            )])
        }))
    }

    fn cross_entropy_untracked(&self, targets: &Tensor, label_smoothing: f32) -> Result<Tensor> {
        let op = "cross_entropy";
        self.expect_dtype(op, DType::F32)?;
        targets.expect_dtype(op, DType::U32)?;
        self.expect_same_device(op, targets)?;
        if self.rank() != 2 || targets.shape() != [self.shape()[0]] {
            return Err(Error::shape(
                op,
                format!(
                    "needs logits (N, C) and targets (N,), got {:?} and {:?}",
                    self.shape(),
                    targets.shape()
                ),
            ));
        }
        if !(0.0..=1.0).contains(&label_smoothing) {
            return Err(Error::shape(
                op,
                format!("label smoothing must be in [0, 1], got {label_smoothing}"),
            ));
        }
        let (x, t) = (self.contiguous()?, targets.contiguous()?);
        let rows = x.shape()[0];
        let out = Tensor::empty(x.device(), op, &[rows], DType::F32)?;
        let p = RowParams {
            rows: rows as u32,
            cols: x.shape()[1] as u32,
            x_offset: x.offset() as u32,
            w_offset: t.offset() as u32,
            eps: label_smoothing,
            ..Default::default()
        };
        let dev = x.device();
        dev.dispatch(
            rows_kernel(dev, &CROSS_ENTROPY_K, &CROSS_ENTROPY_SG_K),
            &[dev.row_workgroup()],
            &p,
            &[out.buffer(), x.buffer(), t.buffer(), dev.status_buffer()],
            grid(dev, rows),
        );
        Ok(out)
    }

    /// Per-row argsort over the last axis: the `U32` indices that sort each row, stable
    /// (equal keys keep their order). MAE's random masking sorts noise with it on the device.
    ///
    /// # Errors
    /// [`Error::DType`] for `U32`; [`Error::Shape`] for a scalar.
    pub fn argsort(&self, descending: bool) -> Result<Tensor> {
        self.map_rows("argsort", &ARGSORT_K, &[descending as u32], DType::U32)
    }
}

/// Gradients of layer norm from the saved per-row `(mean, rstd)`:
/// with `xhat = (x - mean) * rstd` and `gh = g * weight`,
/// `dx = rstd * (gh - mean(gh) - xhat * mean(gh * xhat))` with `gh = g * weight`,
/// `dweight = sum_rows(g * xhat)`, `dbias = sum_rows(g)`: one fused row kernel writes `dx`
/// and `g * xhat`, then two column sums.
fn layer_norm_backward(
    x: &Tensor,
    w: &Tensor,
    stats: &Tensor,
    g: &Tensor,
    [need_x, need_w, need_b]: [bool; 3],
) -> Result<Vec<Option<Tensor>>> {
    let op = "layer_norm backward";
    let (rows, cols) = x.rows_cols(op)?;
    let (x, w, g) = (x.contiguous()?, w.contiguous()?, g.contiguous()?);
    let dev = x.device();
    let dx = Tensor::empty(dev, op, x.shape(), DType::F32)?;
    let g_xhat = Tensor::empty(dev, op, &[rows, cols], DType::F32)?;
    let p = RowParams {
        rows: rows as u32,
        cols: cols as u32,
        x_offset: x.offset() as u32,
        w_offset: w.offset() as u32,
        b_offset: g.offset() as u32,
        ..Default::default()
    };
    dev.dispatch(
        rows_kernel(dev, &LAYER_NORM_BACKWARD_K, &LAYER_NORM_BACKWARD_SG_K),
        &[dev.row_workgroup()],
        &p,
        &[
            dx.buffer(),
            g_xhat.buffer(),
            x.buffer(),
            w.buffer(),
            g.buffer(),
            stats.buffer(),
        ],
        grid(dev, rows),
    );
    let dw = need_w.then(|| g_xhat.sum(0, false)).transpose()?;
    let db = need_b
        .then(|| g.reshape(&[rows, cols])?.sum(0, false))
        .transpose()?;
    Ok(vec![need_x.then_some(dx), dw, db])
}
