//! Mixed precision: f16 copies of f32 tensors, and the mode in which products read them.
//!
//! Inside [`autocast_f16`], `matmul`, `linear` and `qkv_attention` round their operands to
//! f16, read them with the half-operand builds of their kernels (`kernels::half_operands`)
//! and accumulate in f32, as `torch.autocast(dtype=torch.float16)` runs those ops in f16 on
//! tensor cores with f32 accumulation. They keep the f16 copies for backward, which is
//! where the memory goes, and round the incoming gradient to f16 there too, so a gradient
//! past f16's range becomes an infinity, the overflow a loss scaler looks for. GELU, which
//! follows a product in every MLP, keeps an f16 copy of its input for its gradient, as
//! PyTorch (whose product hands it f16) does. Everything else (layer norm, softmax inside
//! attention, the loss, reductions, the optimizer) computes and keeps f32, and parameters
//! stay f32: the f16 copy of a weight is made per use.

use std::cell::Cell;

use crate::error::{Error, Result};
use crate::kernels::{Kernel, TO_HALF_K, TO_SINGLE_K};
use crate::ops::elementwise_grid;
use crate::params::CastParams;
use crate::tensor::{DType, Tensor};

thread_local! {
    static AUTOCAST_F16: Cell<bool> = const { Cell::new(false) };
}

/// Whether products on this thread read f16 operands (inside [`autocast_f16`]).
pub fn is_autocast_f16() -> bool {
    AUTOCAST_F16.with(Cell::get)
}

/// Run `f` with f16-operand products (see the module docs), as `torch.autocast`; backward
/// follows the mode each op was recorded in, wherever it runs.
pub fn autocast_f16<T>(f: impl FnOnce() -> T) -> T {
    crate::autodiff::with_flag(&AUTOCAST_F16, true, f)
}

impl Tensor {
    /// This tensor rounded to f16 (to nearest even; past ±65504 an infinity), as a new
    /// contiguous `F16` tensor. Not recorded for autodiff: the mixed-precision ops round
    /// inside their own rules.
    ///
    /// # Errors
    /// [`Error::Unsupported`] without the adapter's `SHADER_F16`; [`Error::DType`] unless
    /// `F32`.
    pub fn to_half(&self) -> Result<Tensor> {
        self.expect_dtype("to_half", DType::F32)?;
        self.cast(&TO_HALF_K, DType::F16)
    }

    /// An `F16` tensor widened to `F32` (exactly).
    ///
    /// # Errors
    /// [`Error::DType`] unless `F16`.
    pub fn to_single(&self) -> Result<Tensor> {
        self.expect_dtype("to_single", DType::F16)?;
        self.cast(&TO_SINGLE_K, DType::F32)
    }

    fn cast(&self, kernel: &'static Kernel, dtype: DType) -> Result<Tensor> {
        let op = kernel.entry;
        if !self.device().info().features.shader_f16 {
            return Err(Error::Unsupported {
                op,
                feature: "SHADER_F16",
            });
        }
        let x = self.contiguous()?;
        let out = Tensor::empty(x.device(), op, x.shape(), dtype)?;
        let p = CastParams {
            numel: x.numel() as u32,
            in_offset: x.offset() as u32,
            out_offset: 0,
            _pad: 0,
        };
        x.device().dispatch(
            kernel,
            &[],
            &p,
            &[out.buffer(), x.buffer()],
            elementwise_grid(x.numel()),
        );
        Ok(out)
    }
}
