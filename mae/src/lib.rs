//! # mae
//!
//! The Masked Autoencoder of "Masked Autoencoders Are Scalable Vision Learners" (He et al.):
//! an asymmetric ViT encoder that sees only the visible patches and a light decoder that
//! reconstructs the masked ones. `model.rs` reads like the reference `models_mae.py`:
//! `patchify`, `random_masking`, `forward_encoder`, `forward_decoder`, `forward_loss`.
#![warn(missing_docs)]

pub mod classify;
pub mod config;
pub mod data;
pub mod dist;
pub mod error;
pub mod finetune;
pub mod forward;
pub mod hf;
pub mod knn;
pub mod linprobe;
pub mod model;
pub mod pack;
pub mod plot;
pub mod pretrain;
pub mod run;
pub mod tensorboard;
pub mod visualize;

pub use config::MaeConfig;
pub use error::Error;
pub use model::{patchify, unpatchify, MaeOutput, MaskedAutoencoder};
pub use nn;
