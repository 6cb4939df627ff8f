//! Tensors: a GPU buffer plus a strided view of it.
//!
//! Views are cheap: `reshape` of a contiguous tensor, `transpose`, `permute`, `narrow`,
//! `unsqueeze`, `squeeze` and `broadcast_to` only change shape, strides and offset and share
//! the buffer. Elementwise kernels, `gather` and the copy kernel read any strided view
//! directly; kernels that need rows in memory order (reductions, softmax, layer norm, ...)
//! call [`Tensor::contiguous`], which copies only when the view is not already contiguous.
//! `matmul` reads a transposed view without copying it.

use std::sync::Arc;

use crate::autodiff::{Node, TensorId};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::shape::{contiguous_strides, normalize_axis, numel};

/// Element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit float: activations, weights, gradients.
    F32,
    /// 32-bit unsigned integer: indices, comparison results (0 or 1), class labels.
    U32,
    /// 16-bit float (IEEE binary16), contiguous only: the operands of mixed-precision
    /// products ([`Tensor::to_half`]), read only by `matmul`, `linear` and attention. Needs
    /// the adapter's `SHADER_F16`.
    F16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F16 => 2,
            DType::F32 | DType::U32 => 4,
        }
    }
}

/// A pooled GPU buffer; dropping the last tensor that views it returns it to the pool.
pub(crate) struct Storage {
    buffer: Option<wgpu::Buffer>,
    class: u64,
    pub(crate) device: Device,
}

impl Storage {
    pub(crate) fn buffer(&self) -> &wgpu::Buffer {
        self.buffer.as_ref().expect("buffer is present until drop")
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        if let Some(buffer) = self.buffer.take() {
            self.device.release(buffer, self.class);
        }
    }
}

/// An n-dimensional array of `f32` or `u32` on a [`Device`]. Cloning is cheap (the buffer is
/// shared); views share the buffer as well. Element offsets and strides count elements.
#[derive(Clone)]
pub struct Tensor {
    pub(crate) storage: Arc<Storage>,
    shape: Vec<usize>,
    strides: Vec<usize>,
    offset: usize,
    dtype: DType,
    /// Identity for gradient lookup (see [`crate::autodiff`]).
    pub(crate) id: TensorId,
    /// Gradients flow to or through this tensor.
    pub(crate) requires_grad: bool,
    /// The op that produced it, when recorded.
    pub(crate) node: Option<Arc<Node>>,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let grad = if self.requires_grad {
            ", requires grad"
        } else {
            ""
        };
        write!(f, "Tensor({:?}, {:?}{grad})", self.dtype, self.shape)
    }
}

impl Tensor {
    /// A new contiguous tensor with uninitialised contents; kernels fill it.
    pub(crate) fn empty(
        device: &Device,
        op: &'static str,
        shape: &[usize],
        dtype: DType,
    ) -> Result<Tensor> {
        // Whole 32-bit words, as a storage binding's size must be.
        let bytes = (numel(shape) * dtype.size()).next_multiple_of(4) as u64;
        let (buffer, class) = device.alloc(op, shape, bytes)?;
        Ok(Tensor {
            storage: Arc::new(Storage {
                buffer: Some(buffer),
                class,
                device: device.clone(),
            }),
            shape: shape.to_vec(),
            strides: contiguous_strides(shape),
            offset: 0,
            dtype,
            id: TensorId::fresh(),
            requires_grad: false,
            node: None,
        })
    }

    fn from_bytes(device: &Device, bytes: &[u8], shape: &[usize], dtype: DType) -> Result<Tensor> {
        let t = Tensor::empty(device, "from_slice", shape, dtype)?;
        if !bytes.is_empty() {
            device.upload(t.buffer(), 0, bytes);
        }
        Ok(t)
    }

    /// Copy host floats to a new tensor of `shape`.
    ///
    /// # Errors
    /// [`Error::Shape`] when `data.len()` is not the product of `shape`; [`Error::TooLarge`].
    pub fn from_slice(device: &Device, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        check_len("from_slice", data.len(), shape)?;
        Tensor::from_bytes(device, bytemuck::cast_slice(data), shape, DType::F32)
    }

    /// Copy host integers (indices, labels) to a new `U32` tensor of `shape`.
    ///
    /// # Errors
    /// As [`Tensor::from_slice`].
    pub fn from_slice_u32(device: &Device, data: &[u32], shape: &[usize]) -> Result<Tensor> {
        check_len("from_slice_u32", data.len(), shape)?;
        Tensor::from_bytes(device, bytemuck::cast_slice(data), shape, DType::U32)
    }

    /// Overwrite this tensor's elements with host floats, in place: the buffer and the id
    /// stay, so whatever holds this tensor (an optimizer, a clone in another module) sees
    /// the new values, as PyTorch's `load_state_dict` copies into existing parameters. The
    /// write lands after everything recorded so far.
    ///
    /// # Errors
    /// [`Error::Shape`] when `data.len()` is not the element count or the tensor is not
    /// contiguous; [`Error::DType`] for a `U32` tensor.
    pub fn copy_from_slice(&self, data: &[f32]) -> Result<()> {
        self.expect_dtype("copy_from_slice", DType::F32)?;
        check_len("copy_from_slice", data.len(), &self.shape)?;
        if !self.is_contiguous() {
            return Err(Error::shape(
                "copy_from_slice",
                format!("needs a contiguous tensor, got strides {:?}", self.strides),
            ));
        }
        if !data.is_empty() {
            let offset = self.offset as u64 * 4;
            self.device()
                .upload(self.buffer(), offset, bytemuck::cast_slice(data));
        }
        Ok(())
    }

    /// The device the tensor lives on.
    pub fn device(&self) -> &Device {
        &self.storage.device
    }

    /// Sizes of the axes.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Element strides of the axes (0 on broadcast axes).
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }

    /// Element offset of the first element in the buffer.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Number of axes.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Size of one axis; negative axes count from the end.
    ///
    /// # Errors
    /// [`Error::Axis`] when the axis is out of range.
    pub fn dim(&self, axis: isize) -> Result<usize> {
        Ok(self.shape[normalize_axis("dim", axis, &self.shape)?])
    }

    /// True when the elements lie in row-major order from `offset` with no gaps.
    pub fn is_contiguous(&self) -> bool {
        self.shape
            .iter()
            .zip(&self.strides)
            .zip(contiguous_strides(&self.shape))
            .all(|((&n, &s), c)| n == 1 || s == c)
    }

    pub(crate) fn buffer(&self) -> &wgpu::Buffer {
        self.storage.buffer()
    }

    /// A view of the same buffer with another layout, outside the graph (public view ops
    /// record their own gradient rule). Callers guarantee it stays in bounds.
    pub(crate) fn view(&self, shape: Vec<usize>, strides: Vec<usize>, offset: usize) -> Tensor {
        Tensor {
            storage: self.storage.clone(),
            shape,
            strides,
            offset,
            dtype: self.dtype,
            id: TensorId::fresh(),
            requires_grad: false,
            node: None,
        }
    }

    /// The identity under which [`crate::Gradients`] stores this tensor's gradient.
    pub fn id(&self) -> TensorId {
        self.id
    }

    pub(crate) fn expect_dtype(&self, op: &'static str, dtype: DType) -> Result<()> {
        if self.dtype != dtype {
            return Err(Error::DType {
                op,
                expected: dtype,
                got: self.dtype,
                shape: self.shape.clone(),
            });
        }
        Ok(())
    }

    pub(crate) fn expect_same_device(&self, op: &'static str, other: &Tensor) -> Result<()> {
        if !self.device().same(other.device()) {
            return Err(Error::shape(op, "operands live on different devices"));
        }
        Ok(())
    }

    fn read_words(&self) -> Result<Vec<u8>> {
        let t = self.contiguous()?;
        t.device()
            .read(t.buffer(), t.offset as u64 * 4, t.numel() as u64 * 4)
    }

    /// Copy the elements back to the host in row-major order. A synchronisation point:
    /// everything recorded so far is submitted and waited for.
    ///
    /// # Errors
    /// [`Error::DType`] for a `U32` tensor; [`Error::Index`] when a kernel recorded since the
    /// last read-back met an out-of-range index; [`Error::Device`] on device loss.
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        if self.dtype == DType::F16 {
            return self.to_single()?.to_vec();
        }
        self.expect_dtype("to_vec", DType::F32)?;
        Ok(bytemuck::pod_collect_to_vec(&self.read_words()?))
    }

    /// Like [`Tensor::to_vec`], for `U32` tensors.
    ///
    /// # Errors
    /// As [`Tensor::to_vec`], with the dtypes swapped.
    pub fn to_vec_u32(&self) -> Result<Vec<u32>> {
        self.expect_dtype("to_vec_u32", DType::U32)?;
        Ok(bytemuck::pod_collect_to_vec(&self.read_words()?))
    }

    /// The single value of a one-element tensor.
    ///
    /// # Errors
    /// [`Error::Shape`] when the tensor has more than one element; as [`Tensor::to_vec`].
    pub fn item(&self) -> Result<f32> {
        if self.numel() != 1 {
            return Err(Error::shape(
                "item",
                format!("needs exactly one element, got shape {:?}", self.shape),
            ));
        }
        Ok(self.to_vec()?[0])
    }
}

fn check_len(op: &'static str, len: usize, shape: &[usize]) -> Result<()> {
    if len != numel(shape) {
        return Err(Error::shape(
            op,
            format!("{len} values cannot fill shape {shape:?}"),
        ));
    }
    Ok(())
}
