//! Fused kernels over the last axis, one workgroup per row: softmax, layer norm,
//! cross-entropy with logits, argsort.

use super::grid;
use crate::error::{Error, Result};
use crate::kernels::{ARGSORT_K, CROSS_ENTROPY_K, LAYER_NORM_K, SOFTMAX_K};
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
        let (rows, cols) = self.rows_cols("softmax")?;
        let x = self.contiguous()?;
        let out = Tensor::empty(x.device(), "softmax", x.shape(), DType::F32)?;
        let p = RowParams {
            rows: rows as u32,
            cols: cols as u32,
            x_offset: x.offset() as u32,
            ..Default::default()
        };
        x.device().dispatch(
            &SOFTMAX_K,
            &[x.device().row_workgroup()],
            &p,
            &[out.buffer(), x.buffer()],
            grid(x.device(), rows),
        );
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
            &LAYER_NORM_K,
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
            &CROSS_ENTROPY_K,
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
        let (rows, cols) = self.rows_cols("argsort")?;
        let x = self.contiguous()?;
        let out = Tensor::empty(x.device(), "argsort", x.shape(), DType::U32)?;
        let p = RowParams {
            rows: rows as u32,
            cols: cols as u32,
            x_offset: x.offset() as u32,
            ..Default::default()
        };
        x.device().dispatch(
            &ARGSORT_K,
            &[descending as u32],
            &p,
            &[out.buffer(), x.buffer()],
            grid(x.device(), rows),
        );
        Ok(out)
    }
}
