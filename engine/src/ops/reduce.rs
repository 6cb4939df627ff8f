//! Reductions over one axis or over all elements: sum, mean, max, min, variance, argmax,
//! argmin. The input is viewed as `(outer, n, inner)` around the reduced axis.

use super::grid;
use crate::autodiff::no_grad;
use crate::error::{Error, Result};
use crate::kernels::{REDUCE_COLUMNS_K, REDUCE_K};
use crate::params::ReduceParams;
use crate::shape::{broadcast_shape, normalize_axis, numel};
use crate::tensor::{DType, Tensor};

/// Reductions with at most this many outputs over an axis of at least `SPLIT_MIN_AXIS`
/// values run in two stages, over chunks of `SPLIT_MIN_CHUNK` values or more (at most
/// `SPLIT_MAX_CHUNKS` of them).
const SPLIT_MAX_OUTPUTS: usize = 64;
const SPLIT_MIN_AXIS: usize = 8192;
const SPLIT_MIN_CHUNK: usize = 2048;
const SPLIT_MAX_CHUNKS: usize = 4096;

/// Sums, maxima and minima over an axis with at least this many elements after it run on
/// the column kernel (a workgroup of neighbouring columns, each invocation walking one).
const COLUMN_MIN_INNER: usize = 8;
/// The column kernel cuts the axis into chunks of at least `COLUMN_MIN_CHUNK` values until
/// there are about `COLUMN_TARGET_GROUPS` workgroups, enough to fill a GPU.
const COLUMN_TARGET_GROUPS: usize = 256;
const COLUMN_MIN_CHUNK: usize = 64;

/// How a reduction's workgroups cover its outputs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Groups {
    /// One workgroup per output element, its invocations splitting the reduced axis.
    PerOutput,
    /// One per `WG` neighbouring columns, each invocation walking the reduced axis of one
    /// column: for an axis that is not the last, whose values are `inner` apart.
    PerColumns,
}

/// Record one reduction of the contiguous `x`, viewed as `(outer, n, inner)`, over chunks of
/// `chunk` values of the middle axis into `out` (`(outer, chunks, inner)` elements).
fn reduce_kernel(
    x: &Tensor,
    out: &Tensor,
    kind: Reduction,
    groups: Groups,
    [outer, n, inner]: [usize; 3],
    chunk: usize,
    scale: f32,
) {
    let p = ReduceParams {
        outer: outer as u32,
        n: n as u32,
        inner: inner as u32,
        offset: x.offset() as u32,
        scale,
        chunk: chunk as u32,
        ..Default::default()
    };
    let dev = x.device();
    let wg = dev.row_workgroup();
    let (kernel, count) = match groups {
        Groups::PerColumns => (&REDUCE_COLUMNS_K, inner.div_ceil(wg as usize)),
        Groups::PerOutput => (&REDUCE_K, inner),
    };
    let count = outer * n.div_ceil(chunk).max(1) * count;
    dev.dispatch(
        kernel,
        &[kind as u32, wg],
        &p,
        &[out.buffer(), x.buffer()],
        grid(dev, count),
    );
}

#[derive(Clone, Copy)]
enum Reduction {
    Sum = 0,
    Max = 1,
    Min = 2,
    Var = 3,
    Argmax = 4,
    Argmin = 5,
}

impl Tensor {
    fn reduce(
        &self,
        op: &'static str,
        kind: Reduction,
        axis: isize,
        keepdim: bool,
        scale: impl Fn(usize) -> f32,
    ) -> Result<Tensor> {
        self.expect_dtype(op, DType::F32)?;
        let ax = normalize_axis(op, axis, self.shape())?;
        let n = self.shape()[ax];
        if n == 0 && !matches!(kind, Reduction::Sum) {
            return Err(Error::shape(
                op,
                format!(
                    "cannot reduce the empty axis {axis} of shape {:?}",
                    self.shape()
                ),
            ));
        }
        // The callers record the reduction's own rule, not the copy's.
        let x = no_grad(|| self.contiguous())?;
        let outer = numel(&x.shape()[..ax]);
        let inner = numel(&x.shape()[ax + 1..]);
        let mut shape = x.shape().to_vec();
        if keepdim {
            shape[ax] = 1;
        } else {
            shape.remove(ax);
        }
        let dtype = match kind {
            Reduction::Argmax | Reduction::Argmin => DType::U32,
            _ => DType::F32,
        };
        let splits = matches!(kind, Reduction::Sum | Reduction::Max | Reduction::Min);
        if splits && inner >= COLUMN_MIN_INNER {
            let tiles = outer * inner.div_ceil(x.device().row_workgroup() as usize);
            let chunks =
                (COLUMN_TARGET_GROUPS / tiles).clamp(1, n.div_ceil(COLUMN_MIN_CHUNK).max(1));
            let chunk = n.div_ceil(chunks).max(1);
            let chunks = n.div_ceil(chunk).max(1);
            let out = Tensor::empty(x.device(), op, &shape, dtype)?;
            if chunks == 1 {
                reduce_kernel(
                    &x,
                    &out,
                    kind,
                    Groups::PerColumns,
                    [outer, n, inner],
                    chunk,
                    scale(n),
                );
            } else {
                let partial = Tensor::empty(x.device(), op, &[outer, chunks, inner], DType::F32)?;
                reduce_kernel(
                    &x,
                    &partial,
                    kind,
                    Groups::PerColumns,
                    [outer, n, inner],
                    chunk,
                    1.0,
                );
                let dims = [outer, chunks, inner];
                reduce_kernel(
                    &partial,
                    &out,
                    kind,
                    Groups::PerColumns,
                    dims,
                    chunks,
                    scale(n),
                );
            }
            return Ok(out);
        }
        if splits && outer * inner <= SPLIT_MAX_OUTPUTS && n >= SPLIT_MIN_AXIS {
            // Few outputs over a long axis: one workgroup per output would leave the device
            // idle, so reduce chunks in parallel first, then the partial results.
            let chunk = SPLIT_MIN_CHUNK.max(n.div_ceil(SPLIT_MAX_CHUNKS));
            let chunks = n.div_ceil(chunk);
            let partial = Tensor::empty(x.device(), op, &[outer, chunks, inner], DType::F32)?;
            reduce_kernel(
                &x,
                &partial,
                kind,
                Groups::PerOutput,
                [outer, n, inner],
                chunk,
                1.0,
            );
            let out = Tensor::empty(x.device(), op, &shape, dtype)?;
            reduce_kernel(
                &partial,
                &out,
                kind,
                Groups::PerOutput,
                [outer, chunks, inner],
                chunks,
                scale(n),
            );
            return Ok(out);
        }
        let out = Tensor::empty(x.device(), op, &shape, dtype)?;
        reduce_kernel(
            &x,
            &out,
            kind,
            Groups::PerOutput,
            [outer, n, inner],
            n.max(1),
            scale(n),
        );
        Ok(out)
    }

    /// Sum over one axis (negative counts from the end), keeping it as size 1 or dropping it.
    ///
    /// # Errors
    /// [`Error::Axis`]; [`Error::DType`] for `U32`.
    pub fn sum(&self, axis: isize, keepdim: bool) -> Result<Tensor> {
        let y = self.reduce("sum", Reduction::Sum, axis, keepdim, |_| 1.0)?;
        let (shape, ax) = (
            self.shape().to_vec(),
            normalize_axis("sum", axis, self.shape())?,
        );
        Ok(y.record("sum", &[self], move |g| {
            Ok(vec![Some(spread(g, &shape, ax, keepdim)?)])
        }))
    }

    /// Mean over one axis.
    ///
    /// # Errors
    /// As [`Tensor::sum`].
    pub fn mean(&self, axis: isize, keepdim: bool) -> Result<Tensor> {
        let y = self.reduce("mean", Reduction::Sum, axis, keepdim, |n| 1.0 / n as f32)?;
        let (shape, ax) = (
            self.shape().to_vec(),
            normalize_axis("mean", axis, self.shape())?,
        );
        Ok(y.record("mean", &[self], move |g| {
            Ok(vec![Some(
                spread(g, &shape, ax, keepdim)?.div_scalar(shape[ax] as f32)?,
            )])
        }))
    }

    /// Maximum over one axis.
    ///
    /// # Errors
    /// As [`Tensor::sum`], and [`Error::Shape`] for an empty axis.
    pub fn max(&self, axis: isize, keepdim: bool) -> Result<Tensor> {
        self.extreme("max", Reduction::Max, Tensor::argmax, axis, keepdim)
    }

    /// Minimum over one axis.
    ///
    /// # Errors
    /// As [`Tensor::max`].
    pub fn min(&self, axis: isize, keepdim: bool) -> Result<Tensor> {
        self.extreme("min", Reduction::Min, Tensor::argmin, axis, keepdim)
    }

    /// Max or min over an axis; the gradient goes to the first extreme element, found with
    /// `arg` (argmax or argmin).
    fn extreme(
        &self,
        op: &'static str,
        kind: Reduction,
        arg: fn(&Tensor, isize, bool) -> Result<Tensor>,
        axis: isize,
        keepdim: bool,
    ) -> Result<Tensor> {
        let y = self.reduce(op, kind, axis, keepdim, |_| 1.0)?;
        let x = self.detach();
        Ok(y.record(op, &[self], move |g| {
            Ok(vec![Some(extreme_backward(&x, axis, keepdim, g, arg)?)])
        }))
    }

    /// Variance over one axis: unbiased (divide by n - 1, as `torch.var`'s default and MAE's
    /// `norm_pix_loss`) or biased (divide by n).
    ///
    /// # Errors
    /// As [`Tensor::max`].
    pub fn var(&self, axis: isize, keepdim: bool, unbiased: bool) -> Result<Tensor> {
        let correction = if unbiased { 1.0 } else { 0.0 };
        let y = self.reduce("var", Reduction::Var, axis, keepdim, |n| {
            1.0 / (n as f32 - correction)
        })?;
        let x = self.detach();
        let ax = normalize_axis("var", axis, self.shape())?;
        Ok(y.record("var", &[self], move |g| {
            // d var / dx = 2 (x - mean) / (n - correction)
            let n = x.shape()[ax] as f32;
            let centred = x.sub(&x.mean(ax as isize, true)?)?;
            let g = spread(g, x.shape(), ax, keepdim)?;
            Ok(vec![Some(
                g.mul(&centred)?.mul_scalar(2.0 / (n - correction))?,
            )])
        }))
    }

    /// Index of the largest element along an axis (the first on ties), as `U32`.
    ///
    /// # Errors
    /// As [`Tensor::max`].
    pub fn argmax(&self, axis: isize, keepdim: bool) -> Result<Tensor> {
        self.reduce("argmax", Reduction::Argmax, axis, keepdim, |_| 1.0)
    }

    /// Index of the smallest element along an axis (the first on ties), as `U32`.
    ///
    /// # Errors
    /// As [`Tensor::max`].
    pub fn argmin(&self, axis: isize, keepdim: bool) -> Result<Tensor> {
        self.reduce("argmin", Reduction::Argmin, axis, keepdim, |_| 1.0)
    }

    /// Sum over the axes that were broadcast to turn `shape` into this tensor's shape: the
    /// gradient of a broadcast. `shape` must broadcast to `self.shape()`.
    ///
    /// # Errors
    /// [`Error::Shape`] when it does not.
    pub fn sum_to(&self, shape: &[usize]) -> Result<Tensor> {
        if self.shape() == shape {
            return Ok(self.clone());
        }
        if broadcast_shape("sum_to", shape, self.shape())? != self.shape() {
            return Err(Error::shape(
                "sum_to",
                format!("shape {shape:?} does not broadcast to {:?}", self.shape()),
            ));
        }
        let mut t = self.clone();
        while t.rank() > shape.len() {
            t = t.sum(0, false)?;
        }
        for (i, &d) in shape.iter().enumerate() {
            if d == 1 && t.shape()[i] != 1 {
                t = t.sum(i as isize, true)?;
            }
        }
        Ok(t)
    }

    fn flat(&self) -> Result<Tensor> {
        self.reshape(&[self.numel()])
    }

    /// Sum of all elements, as a rank-0 tensor.
    ///
    /// # Errors
    /// [`Error::DType`] for `U32`.
    pub fn sum_all(&self) -> Result<Tensor> {
        self.flat()?.sum(0, false)
    }

    /// Mean of all elements, as a rank-0 tensor.
    ///
    /// # Errors
    /// As [`Tensor::sum_all`].
    pub fn mean_all(&self) -> Result<Tensor> {
        self.flat()?.mean(0, false)
    }

    /// Largest element, as a rank-0 tensor.
    ///
    /// # Errors
    /// As [`Tensor::sum_all`]; [`Error::Shape`] for an empty tensor.
    pub fn max_all(&self) -> Result<Tensor> {
        self.flat()?.max(0, false)
    }

    /// Smallest element, as a rank-0 tensor.
    ///
    /// # Errors
    /// As [`Tensor::max_all`].
    pub fn min_all(&self) -> Result<Tensor> {
        self.flat()?.min(0, false)
    }

    /// Variance of all elements, as a rank-0 tensor.
    ///
    /// # Errors
    /// As [`Tensor::max_all`].
    pub fn var_all(&self, unbiased: bool) -> Result<Tensor> {
        self.flat()?.var(0, false, unbiased)
    }
}

/// The gradient of a reduction over `ax` spread back over the input's `shape`.
fn spread(g: &Tensor, shape: &[usize], ax: usize, keepdim: bool) -> Result<Tensor> {
    let g = if keepdim {
        g.clone()
    } else {
        g.unsqueeze(ax as isize)?
    };
    g.broadcast_to(shape)
}

/// Gradient of max/min over an axis: all of it to the first extreme element, as PyTorch's
/// `max(dim)` does through its indices.
fn extreme_backward(
    x: &Tensor,
    axis: isize,
    keepdim: bool,
    g: &Tensor,
    arg: fn(&Tensor, isize, bool) -> Result<Tensor>,
) -> Result<Tensor> {
    let ax = normalize_axis("max", axis, x.shape())?;
    let n = x.shape()[ax];
    let mut pos_shape = vec![1; x.rank()];
    pos_shape[ax] = n;
    let pos = Tensor::arange(x.device(), 0.0, n as f32, 1.0)?.reshape(&pos_shape)?;
    let winner = arg(x, axis, true)?.to_dtype(DType::F32)?;
    let mask = pos.eq(&winner)?.to_dtype(DType::F32)?;
    mask.mul(&spread(g, x.shape(), ax, keepdim)?)
}
