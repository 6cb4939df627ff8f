//! The Masked Autoencoder. Empty until the mae issues land; the crate exists so the
//! workspace layout is final from the start.
pub use nn;
