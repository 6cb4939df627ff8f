//! Seeded parameter initialisation as the MAE reference does it: xavier-uniform for linear
//! layers (and the patch embedding viewed as 2-D), zero biases, LayerNorm at 1 and 0,
//! normal(0.02) for the cls and mask tokens, truncated normal for classifier heads. On one
//! device the same seed gives the same weights bit for bit: every tensor draws from the engine's
//! counter-based generator with its own seed, derived from the initialiser's seed and a
//! running count.

use engine::{Device, Result, Tensor};

/// Hands out initial parameter tensors on one device, each with its own seed.
pub struct Init {
    device: Device,
    seed: u64,
    count: u64,
}

impl Init {
    /// An initialiser on `device` seeded with `seed`.
    pub fn new(device: &Device, seed: u64) -> Init {
        Init {
            device: device.clone(),
            seed,
            count: 0,
        }
    }

    /// The device parameters are created on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    fn next_seed(&mut self) -> u64 {
        self.count += 1;
        engine::reference::random_word(self.seed, self.count as u32, 0) as u64
            | (engine::reference::random_word(self.seed, self.count as u32, 1) as u64) << 32
    }

    fn param(t: Tensor) -> Result<Tensor> {
        t.requires_grad(true)
    }

    /// Xavier (Glorot) uniform for a weight `[fan_out, fan_in]`:
    /// `U(-a, a)` with `a = sqrt(6 / (fan_in + fan_out))`.
    ///
    /// # Errors
    /// Engine errors only.
    pub fn xavier_uniform(&mut self, fan_out: usize, fan_in: usize) -> Result<Tensor> {
        let a = (6.0 / (fan_in + fan_out) as f64).sqrt() as f32;
        let seed = self.next_seed();
        Init::param(Tensor::rand_uniform(
            &self.device,
            &[fan_out, fan_in],
            -a,
            a,
            seed,
        )?)
    }

    /// Normal with mean 0 and standard deviation `std`.
    ///
    /// # Errors
    /// Engine errors only.
    pub fn normal(&mut self, shape: &[usize], std: f32) -> Result<Tensor> {
        let seed = self.next_seed();
        Init::param(Tensor::rand_normal(&self.device, shape, 0.0, std, seed)?)
    }

    /// Normal with standard deviation `std`, redrawn outside `±2 std` (timm's
    /// `trunc_normal_`, as used for classifier heads).
    ///
    /// # Errors
    /// Engine errors only.
    pub fn trunc_normal(&mut self, shape: &[usize], std: f32) -> Result<Tensor> {
        let seed = self.next_seed();
        let n: usize = shape.iter().product();
        // Rejection sampling on the host mirror of the device generator: element i takes
        // the first draw inside the bounds from its own sequence of counters.
        let values: Vec<f32> = (0..n as u32)
            .map(|i| {
                (0u32..)
                    .map(|k| {
                        engine::reference::normal(
                            seed.wrapping_add(k as u64 * 0x1_0000_0001),
                            i,
                            0.0,
                            1.0,
                        )
                    })
                    .find(|v| v.abs() <= 2.0)
                    .expect("a standard normal falls within 2 sigma in a few draws")
                    * std
            })
            .collect();
        Init::param(Tensor::from_slice(&self.device, &values, shape)?)
    }

    /// A constant (LayerNorm weight 1, biases 0).
    ///
    /// # Errors
    /// Engine errors only.
    pub fn constant(&mut self, shape: &[usize], value: f32) -> Result<Tensor> {
        Init::param(Tensor::full(&self.device, shape, value)?)
    }
}
