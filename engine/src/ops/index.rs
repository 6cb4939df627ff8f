//! Indexing by a `U32` index tensor: `gather` and `index_select`.
//!
//! Indices live on the device, so they are checked by the kernel: an out-of-range index
//! writes 0 and is reported as [`crate::Error::Index`] by the next read-back.

use super::{elementwise_grid, strided_params};
use crate::error::{Error, Result};
use crate::kernels::{GATHER_K, SCATTER_K};
use crate::params::{dims, ScatterParams};
use crate::shape::normalize_axis;
use crate::tensor::{DType, Tensor};

impl Tensor {
    /// `torch.gather`: `out[i][j][k] = self[i][index[i][j][k]][k]` for `axis = 1`. The result
    /// has the index's shape; on the other axes the index may be no larger than `self`.
    /// Broadcast (expanded) index views are read in place.
    ///
    /// # Errors
    /// [`Error::DType`] unless `index` is `U32`; [`Error::Shape`] for mismatched ranks or
    /// sizes; [`Error::Axis`]; [`Error::Index`] at the next read-back for an index outside
    /// the axis.
    pub fn gather(&self, axis: isize, index: &Tensor) -> Result<Tensor> {
        let op = "gather";
        let ax = self.index_axis(op, axis, index)?;
        let fits = index.rank() == self.rank()
            && (0..self.rank()).all(|d| d == ax || index.shape()[d] <= self.shape()[d]);
        if !fits {
            return Err(Error::shape(
                op,
                format!(
                    "index of shape {:?} does not fit input of shape {:?} along axis {axis}",
                    index.shape(),
                    self.shape()
                ),
            ));
        }
        self.gather_kernel(op, index.shape(), ax, index, index.strides())
    }

    /// `torch.index_select`: the slices of `axis` listed by the 1-D `index`, in its order
    /// (repeats allowed).
    ///
    /// # Errors
    /// As [`Tensor::gather`].
    pub fn index_select(&self, axis: isize, index: &Tensor) -> Result<Tensor> {
        let op = "index_select";
        let ax = self.index_axis(op, axis, index)?;
        if index.rank() != 1 {
            return Err(Error::shape(
                op,
                format!("index must be 1-D, got shape {:?}", index.shape()),
            ));
        }
        let mut shape = self.shape().to_vec();
        shape[ax] = index.shape()[0];
        // The index read as a broadcast view over the output: it varies along `axis` only.
        let mut idx_strides = vec![0; shape.len()];
        idx_strides[ax] = index.strides()[0];
        self.gather_kernel(op, &shape, ax, index, &idx_strides)
    }

    /// Checks shared by the indexing ops: a `U32` index on the same device, a valid axis.
    fn index_axis(&self, op: &'static str, axis: isize, index: &Tensor) -> Result<usize> {
        index.expect_dtype(op, DType::U32)?;
        self.expect_same_device(op, index)?;
        normalize_axis(op, axis, self.shape())
    }

    /// Gather over iteration `shape` with the index read through `idx_strides`; records the
    /// scatter-add gradient.
    fn gather_kernel(
        &self,
        op: &'static str,
        shape: &[usize],
        ax: usize,
        index: &Tensor,
        idx_strides: &[usize],
    ) -> Result<Tensor> {
        // x is addressed with the gathered axis' stride zeroed; the kernel adds idx * stride.
        let mut x_strides = self.strides().to_vec();
        x_strides[ax] = 0;
        let out = Tensor::empty(self.device(), op, shape, self.dtype())?;
        let mut p = strided_params(
            op,
            shape,
            (0, out.strides()),
            &[(self.offset(), &x_strides), (index.offset(), idx_strides)],
        )?;
        p.axis_stride = self.strides()[ax] as u32;
        p.axis_size = self.shape()[ax] as u32;
        let dev = self.device();
        dev.dispatch(
            &GATHER_K,
            &[],
            &p,
            &[
                out.buffer(),
                self.buffer(),
                index.buffer(),
                dev.status_buffer(),
            ],
            elementwise_grid(out.numel()),
        );
        let (from, idx, idx_strides) =
            (self.shape().to_vec(), index.detach(), idx_strides.to_vec());
        Ok(out.record(op, &[self], move |g| {
            Ok(vec![Some(scatter_add(g, &from, ax, &idx, &idx_strides)?)])
        }))
    }
}

/// The gradient of a gather along `ax` from an input of shape `shape`: `g` has the shape of
/// the index view (`idx` read through `idx_strides`), and every element of the result sums
/// the entries of `g` whose index picked it, in a fixed order.
fn scatter_add(
    g: &Tensor,
    shape: &[usize],
    ax: usize,
    idx: &Tensor,
    idx_strides: &[usize],
) -> Result<Tensor> {
    let out = Tensor::empty(g.device(), "gather_backward", shape, DType::F32)?;
    let p = ScatterParams {
        numel: out.numel() as u32,
        rank: shape.len() as u32,
        axis: ax as u32,
        k: g.shape()[ax] as u32,
        g_offset: g.offset() as u32,
        idx_offset: idx.offset() as u32,
        shape: dims(shape),
        idx_shape: dims(g.shape()),
        g_strides: dims(g.strides()),
        idx_strides: dims(idx_strides),
        ..Default::default()
    };
    g.device().dispatch(
        &SCATTER_K,
        &[],
        &p,
        &[out.buffer(), g.buffer(), idx.buffer()],
        elementwise_grid(out.numel()),
    );
    Ok(out)
}
