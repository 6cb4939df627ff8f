//! Views (no copy) and the copies that change layout: `contiguous` and `concat`.

use crate::autodiff::no_grad;
use crate::error::{Error, Result};
use crate::shape::{contiguous_strides, normalize_axis, numel};
use crate::tensor::Tensor;

impl Tensor {
    /// The same elements with another shape. A view when the tensor is contiguous; otherwise
    /// the elements are first copied into row-major order. One axis may be `-1` in spirit:
    /// pass its size as `usize::MAX` to infer it.
    ///
    /// # Errors
    /// [`Error::Shape`] when the element counts differ.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        let y = no_grad(|| self.reshape_untracked(shape))?;
        let from = self.shape().to_vec();
        Ok(y.record("reshape", &[self], move |g| {
            Ok(vec![Some(g.reshape(&from)?)])
        }))
    }

    fn reshape_untracked(&self, shape: &[usize]) -> Result<Tensor> {
        let mut shape = shape.to_vec();
        if let Some(pos) = shape.iter().position(|&d| d == usize::MAX) {
            let known: usize = shape.iter().filter(|&&d| d != usize::MAX).product();
            if known == 0 || !self.numel().is_multiple_of(known) {
                return Err(Error::shape(
                    "reshape",
                    format!(
                        "cannot infer an axis of {shape:?} from shape {:?}",
                        self.shape()
                    ),
                ));
            }
            shape[pos] = self.numel() / known;
        }
        if numel(&shape) != self.numel() {
            return Err(Error::shape(
                "reshape",
                format!("cannot view shape {:?} as {shape:?}", self.shape()),
            ));
        }
        let t = self.contiguous()?;
        let strides = contiguous_strides(&shape);
        Ok(t.view(shape, strides, t.offset()))
    }

    /// Swap two axes (a view).
    ///
    /// # Errors
    /// [`Error::Axis`] for an axis out of range.
    pub fn transpose(&self, a: isize, b: isize) -> Result<Tensor> {
        let a = normalize_axis("transpose", a, self.shape())?;
        let b = normalize_axis("transpose", b, self.shape())?;
        let mut perm: Vec<usize> = (0..self.rank()).collect();
        perm.swap(a, b);
        self.permute(&perm)
    }

    /// Swap the last two axes (a view), as `.mT` in PyTorch.
    ///
    /// # Errors
    /// [`Error::Shape`] for a tensor of rank below 2.
    pub fn t(&self) -> Result<Tensor> {
        if self.rank() < 2 {
            return Err(Error::shape(
                "t",
                format!("needs at least two axes, got shape {:?}", self.shape()),
            ));
        }
        self.transpose(-2, -1)
    }

    /// Reorder the axes (a view): axis `i` of the result is axis `perm[i]` of `self`.
    ///
    /// # Errors
    /// [`Error::Shape`] when `perm` is not a permutation of `0..rank`.
    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        let y = self.permute_untracked(perm)?;
        let mut inverse = vec![0; perm.len()];
        for (i, &p) in perm.iter().enumerate() {
            inverse[p] = i;
        }
        Ok(y.record("permute", &[self], move |g| {
            Ok(vec![Some(g.permute(&inverse)?)])
        }))
    }

    fn permute_untracked(&self, perm: &[usize]) -> Result<Tensor> {
        let mut seen = vec![false; self.rank()];
        if perm.len() != self.rank()
            || perm
                .iter()
                .any(|&p| p >= self.rank() || std::mem::replace(&mut seen[p], true))
        {
            return Err(Error::shape(
                "permute",
                format!(
                    "{perm:?} is not a permutation of the axes of shape {:?}",
                    self.shape()
                ),
            ));
        }
        let shape = perm.iter().map(|&p| self.shape()[p]).collect();
        let strides = perm.iter().map(|&p| self.strides()[p]).collect();
        Ok(self.view(shape, strides, self.offset()))
    }

    /// Elements `start .. start + len` of one axis (a view).
    ///
    /// # Errors
    /// [`Error::Axis`]; [`Error::Shape`] when the range leaves the axis.
    pub fn narrow(&self, axis: isize, start: usize, len: usize) -> Result<Tensor> {
        let y = self.narrow_untracked(axis, start, len)?;
        let from = self.shape().to_vec();
        Ok(y.record("narrow", &[self], move |g| {
            // The gradient is zero outside the narrowed range.
            let full = Tensor::zeros(g.device(), &from)?;
            g.copy_to("narrow", 0, &full.narrow_untracked(axis, start, len)?)?;
            Ok(vec![Some(full)])
        }))
    }

    fn narrow_untracked(&self, axis: isize, start: usize, len: usize) -> Result<Tensor> {
        let ax = normalize_axis("narrow", axis, self.shape())?;
        if start + len > self.shape()[ax] {
            return Err(Error::shape(
                "narrow",
                format!(
                    "range {start}..{} leaves axis {axis} of shape {:?}",
                    start + len,
                    self.shape()
                ),
            ));
        }
        let mut shape = self.shape().to_vec();
        shape[ax] = len;
        let offset = self.offset() + start * self.strides()[ax];
        Ok(self.view(shape, self.strides().to_vec(), offset))
    }

    /// Insert an axis of size 1 at `axis` (`0..=rank`, negative counts from the end).
    ///
    /// # Errors
    /// [`Error::Axis`].
    pub fn unsqueeze(&self, axis: isize) -> Result<Tensor> {
        let y = self.unsqueeze_untracked(axis)?;
        let from = self.shape().to_vec();
        Ok(y.record("unsqueeze", &[self], move |g| {
            Ok(vec![Some(g.reshape(&from)?)])
        }))
    }

    fn unsqueeze_untracked(&self, axis: isize) -> Result<Tensor> {
        let rank = self.rank() as isize + 1;
        let ax = if axis < 0 { axis + rank } else { axis };
        if ax < 0 || ax >= rank {
            return Err(Error::Axis {
                op: "unsqueeze",
                axis,
                shape: self.shape().to_vec(),
            });
        }
        let ax = ax as usize;
        let mut shape = self.shape().to_vec();
        let mut strides = self.strides().to_vec();
        let stride = strides.get(ax).map_or(1, |&s| s * shape[ax]);
        shape.insert(ax, 1);
        strides.insert(ax, stride);
        Ok(self.view(shape, strides, self.offset()))
    }

    /// Remove an axis of size 1.
    ///
    /// # Errors
    /// [`Error::Axis`]; [`Error::Shape`] when the axis is not of size 1.
    pub fn squeeze(&self, axis: isize) -> Result<Tensor> {
        let y = self.squeeze_untracked(axis)?;
        let from = self.shape().to_vec();
        Ok(y.record("squeeze", &[self], move |g| {
            Ok(vec![Some(g.reshape(&from)?)])
        }))
    }

    fn squeeze_untracked(&self, axis: isize) -> Result<Tensor> {
        let ax = normalize_axis("squeeze", axis, self.shape())?;
        if self.shape()[ax] != 1 {
            return Err(Error::shape(
                "squeeze",
                format!("axis {axis} of shape {:?} is not of size 1", self.shape()),
            ));
        }
        let mut shape = self.shape().to_vec();
        let mut strides = self.strides().to_vec();
        shape.remove(ax);
        strides.remove(ax);
        Ok(self.view(shape, strides, self.offset()))
    }

    /// View as `shape` by NumPy broadcasting (stride 0 on repeated axes); no copy.
    ///
    /// # Errors
    /// [`Error::Shape`] when the shape does not broadcast to `shape`.
    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Tensor> {
        let y = self.broadcast_to_untracked(shape)?;
        let from = self.shape().to_vec();
        Ok(y.record("broadcast_to", &[self], move |g| {
            Ok(vec![Some(g.sum_to(&from)?)])
        }))
    }

    fn broadcast_to_untracked(&self, shape: &[usize]) -> Result<Tensor> {
        let ok = shape.len() >= self.rank()
            && self
                .shape()
                .iter()
                .zip(&shape[shape.len() - self.rank()..])
                .all(|(&a, &b)| a == b || a == 1);
        if !ok {
            return Err(Error::shape(
                "broadcast_to",
                format!("shape {:?} does not broadcast to {shape:?}", self.shape()),
            ));
        }
        let strides = super::broadcast_strides(self, shape);
        Ok(self.view(shape.to_vec(), strides, self.offset()))
    }

    /// This tensor in row-major order: itself when already contiguous, else a copy.
    ///
    /// # Errors
    /// [`Error::TooLarge`] only.
    pub fn contiguous(&self) -> Result<Tensor> {
        if self.is_contiguous() {
            return Ok(self.clone());
        }
        let y = self.copy_into_new("contiguous", 0, self.dtype())?;
        Ok(y.record("contiguous", &[self], |g| Ok(vec![Some(g.clone())])))
    }

    /// Join tensors along an axis; all other axes must agree, and so must the dtypes.
    ///
    /// # Errors
    /// [`Error::Shape`] for an empty list or mismatched shapes; [`Error::DType`];
    /// [`Error::Axis`].
    pub fn concat(tensors: &[&Tensor], axis: isize) -> Result<Tensor> {
        let first = tensors
            .first()
            .ok_or_else(|| Error::shape("concat", "needs at least one tensor"))?;
        let ax = normalize_axis("concat", axis, first.shape())?;
        let mut shape = first.shape().to_vec();
        shape[ax] = 0;
        for t in tensors {
            t.expect_dtype("concat", first.dtype())?;
            first.expect_same_device("concat", t)?;
            let fits = t.rank() == first.rank()
                && (0..t.rank()).all(|i| i == ax || t.shape()[i] == first.shape()[i]);
            if !fits {
                let shapes: Vec<&[usize]> = tensors.iter().map(|t| t.shape()).collect();
                return Err(Error::shape(
                    "concat",
                    format!("shapes {shapes:?} differ outside axis {axis}"),
                ));
            }
            shape[ax] += t.shape()[ax];
        }
        let out = Tensor::empty(first.device(), "concat", &shape, first.dtype())?;
        let mut start = 0;
        for t in tensors {
            let len = t.shape()[ax];
            if len > 0 {
                t.copy_to("concat", 0, &out.narrow(ax as isize, start, len)?)?;
            }
            start += len;
        }
        let lens: Vec<usize> = tensors.iter().map(|t| t.shape()[ax]).collect();
        Ok(out.record("concat", tensors, move |g| {
            let mut start = 0;
            let mut grads = Vec::with_capacity(lens.len());
            for &len in &lens {
                grads.push(Some(g.narrow(ax as isize, start, len)?));
                start += len;
            }
            Ok(grads)
        }))
    }
}
