//! # nn
//!
//! Vision Transformer building blocks on top of [`engine`]: modules with hierarchical
//! parameter names (`blocks.3.attn.qkv.weight`), the layers a ViT is made of, seeded
//! initialisation, the MAE sin-cos position embedding and safetensors checkpoints.
//!
//! Modules follow candle's shape: a struct per layer, built with `new(dims, &mut Init)` and
//! run with `forward(&x, &mut Ctx)`; [`Module::visit`] walks the named parameters, which
//! is what optimizers, parameter groups and checkpoints use.
#![warn(missing_docs)]

pub mod checkpoint;
pub mod files;
pub mod init;
pub mod layers;
mod module;
pub mod pos_embed;
pub mod vit;

pub use checkpoint::{
    load_safetensors, load_tensors, read_safetensors, read_safetensors_metadata,
    save_host_safetensors, save_safetensors, CheckpointError, TensorMap,
};
pub use engine;
pub use init::Init;
pub use layers::{Attention, BatchNorm, Block, LayerNorm, Linear, Mlp, PatchEmbed};
pub use module::{join, named_parameters, Ctx, Module};
pub use vit::{VisionTransformer, VitConfig};
