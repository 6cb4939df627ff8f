//! Tensors made on the device: constants, ranges, seeded random numbers, dropout.

use super::elementwise_grid;
use crate::autodiff::no_grad;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::kernels::{DROPOUT_K, FILL_K, RANDOM_K};
use crate::params::{FillParams, RandomParams};
use crate::tensor::{DType, Tensor};

impl Tensor {
    fn fill_kernel(
        device: &Device,
        op: &'static str,
        shape: &[usize],
        code: u32,
        dtype: DType,
        start: f32,
        step: f32,
    ) -> Result<Tensor> {
        let out = Tensor::empty(device, op, shape, dtype)?;
        let p = FillParams {
            numel: out.numel() as u32,
            _pad: 0,
            start,
            step,
        };
        device.dispatch(
            &FILL_K,
            &[code],
            &p,
            &[out.buffer()],
            elementwise_grid(out.numel()),
        );
        Ok(out)
    }

    /// A tensor of `shape` with every element `value`.
    ///
    /// # Errors
    /// [`Error::TooLarge`].
    pub fn full(device: &Device, shape: &[usize], value: f32) -> Result<Tensor> {
        Tensor::fill_kernel(device, "full", shape, 0, DType::F32, value, 0.0)
    }

    /// A tensor of zeros.
    ///
    /// # Errors
    /// [`Error::TooLarge`].
    pub fn zeros(device: &Device, shape: &[usize]) -> Result<Tensor> {
        Tensor::full(device, shape, 0.0)
    }

    /// A tensor of ones.
    ///
    /// # Errors
    /// [`Error::TooLarge`].
    pub fn ones(device: &Device, shape: &[usize]) -> Result<Tensor> {
        Tensor::full(device, shape, 1.0)
    }

    /// `start, start + step, ...` below `end` (above it for a negative step), as NumPy's
    /// `arange`: a 1-D `F32` tensor.
    ///
    /// # Errors
    /// [`Error::Shape`] for a zero or non-finite step.
    pub fn arange(device: &Device, start: f32, end: f32, step: f32) -> Result<Tensor> {
        if step == 0.0 || !step.is_finite() {
            return Err(Error::shape(
                "arange",
                format!("step must be finite and non-zero, got {step}"),
            ));
        }
        let n = ((end - start) / step).ceil().max(0.0) as usize;
        Tensor::fill_kernel(device, "arange", &[n], 1, DType::F32, start, step)
    }

    /// `0, 1, ..., n - 1` as a 1-D `U32` tensor (indices).
    ///
    /// # Errors
    /// [`Error::TooLarge`].
    pub fn arange_u32(device: &Device, n: usize) -> Result<Tensor> {
        Tensor::fill_kernel(device, "arange_u32", &[n], 2, DType::U32, 0.0, 0.0)
    }

    fn random(
        device: &Device,
        op: &'static str,
        shape: &[usize],
        code: u32,
        seed: u64,
        a: f32,
        b: f32,
    ) -> Result<Tensor> {
        let out = Tensor::empty(device, op, shape, DType::F32)?;
        let p = RandomParams {
            numel: out.numel() as u32,
            seed_lo: seed as u32,
            seed_hi: (seed >> 32) as u32,
            a,
            b,
            ..Default::default()
        };
        device.dispatch(
            &RANDOM_K,
            &[code],
            &p,
            &[out.buffer()],
            elementwise_grid(out.numel()),
        );
        Ok(out)
    }

    /// Uniform random numbers on `[low, high)`. Element `i` depends only on `(seed, i)`: the
    /// same seed gives the same numbers on every device (see [`crate::reference::uniform`]).
    ///
    /// # Errors
    /// [`Error::TooLarge`].
    pub fn rand_uniform(
        device: &Device,
        shape: &[usize],
        low: f32,
        high: f32,
        seed: u64,
    ) -> Result<Tensor> {
        Tensor::random(device, "rand_uniform", shape, 0, seed, low, high)
    }

    /// Uniform random numbers on `[0, 1)`, as `torch.rand`.
    ///
    /// # Errors
    /// [`Error::TooLarge`].
    pub fn rand(device: &Device, shape: &[usize], seed: u64) -> Result<Tensor> {
        Tensor::rand_uniform(device, shape, 0.0, 1.0, seed)
    }

    /// Normal random numbers with the given mean and standard deviation (Box-Muller on two
    /// counter-based uniforms per element).
    ///
    /// # Errors
    /// [`Error::TooLarge`].
    pub fn rand_normal(
        device: &Device,
        shape: &[usize],
        mean: f32,
        std: f32,
        seed: u64,
    ) -> Result<Tensor> {
        Tensor::random(device, "rand_normal", shape, 1, seed, mean, std)
    }

    /// Standard normal random numbers, as `torch.randn`.
    ///
    /// # Errors
    /// [`Error::TooLarge`].
    pub fn randn(device: &Device, shape: &[usize], seed: u64) -> Result<Tensor> {
        Tensor::rand_normal(device, shape, 0.0, 1.0, seed)
    }

    /// Inverted dropout: each element is zeroed with probability `p` and the rest are scaled
    /// by `1 / (1 - p)`. The kept set is a pure function of `(seed, element index)`.
    ///
    /// # Errors
    /// [`Error::Shape`] unless `0 <= p < 1`; [`Error::DType`] for a `U32` tensor.
    pub fn dropout(&self, p: f32, seed: u64) -> Result<Tensor> {
        let y = no_grad(|| self.dropout_untracked(p, seed))?;
        // The same seed drops the same elements of the gradient and scales the rest alike.
        Ok(y.record("dropout", &[self], move |g| {
            Ok(vec![Some(g.dropout(p, seed)?)])
        }))
    }

    fn dropout_untracked(&self, p: f32, seed: u64) -> Result<Tensor> {
        self.expect_dtype("dropout", DType::F32)?;
        if !(0.0..1.0).contains(&p) {
            return Err(Error::shape(
                "dropout",
                format!("probability must be in [0, 1), got {p}"),
            ));
        }
        let x = self.contiguous()?;
        let out = Tensor::empty(x.device(), "dropout", x.shape(), DType::F32)?;
        let params = RandomParams {
            numel: x.numel() as u32,
            seed_lo: seed as u32,
            seed_hi: (seed >> 32) as u32,
            offset: x.offset() as u32,
            a: p,
            b: 1.0 / (1.0 - p),
            ..Default::default()
        };
        x.device().dispatch(
            &DROPOUT_K,
            &[],
            &params,
            &[out.buffer(), x.buffer()],
            elementwise_grid(x.numel()),
        );
        Ok(out)
    }
}
