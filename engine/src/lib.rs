//! # engine
//!
//! A from-scratch tensor library in which every numeric op is a WGSL compute shader
//! dispatched through `wgpu`: the same code runs on Vulkan, Metal, DX12 and GL GPUs, and on
//! Mesa's software Vulkan driver (lavapipe) where a machine has no GPU.
//!
//! ```no_run
//! use engine::{Device, Tensor};
//! # fn main() -> engine::Result<()> {
//! let dev = Device::new()?;
//! let a = Tensor::from_slice(&dev, &[1.0, 2.0, 3.0, 4.0], &[2, 2])?;
//! let b = a.matmul(&a.t()?)?.softmax()?; // recorded, not yet run
//! println!("{:?}", b.to_vec()?);        // submitted and read back here
//! # Ok(()) }
//! ```
//!
//! How an op travels from the Rust call to the GPU is described in `docs/ARCHITECTURE.md`:
//! ops record dispatches into one open compute pass, with parameters in a shared uniform
//! arena and outputs from a size-class buffer pool, and the batch is submitted only at a
//! read-back, an upload, or every [`DISPATCHES_PER_BATCH`] dispatches.
#![warn(missing_docs)]

mod adapter;
pub mod autodiff;
mod device;
mod error;
mod fnv;
pub mod gradcheck;
mod info;
#[doc(hidden)]
pub mod kernels;
mod memory;
mod ops;
pub mod optim;
mod options;
#[doc(hidden)]
pub mod params;
mod pool;
mod profile;
mod recorder;
pub mod reference;
pub mod shape;
mod tensor;
pub mod tune;

pub use autodiff::{enable_grad, is_grad_enabled, no_grad, Gradients, TensorId};
pub use device::{Device, DISPATCHES_PER_BATCH};
pub use error::{Error, Result};
pub use fnv::Fnv;
pub use gradcheck::{gradcheck, GradMismatch, GradcheckOptions, GradcheckReport};
pub use info::DeviceInfo;
pub use memory::human_bytes;
pub use ops::{
    autocast_f16, is_autocast_f16, AttentionKernel, BinaryOp, CompareOp, UnaryOp,
    MAX_ATTENTION_HEAD_DIM,
};
pub use optim::{warmup_cosine_lr, AdamW, GradientFactor, OptimizerState, ParamGroup, Sgd};
pub use options::{env_switch, DeviceOptions, Features};
pub use pool::PoolStats;
pub use profile::{Clock, KernelTime};
pub use tensor::{DType, Tensor};
