//! Facade over the three crates of the stack: [`engine`] (GPU tensors and ops),
//! [`nn`] (layers) and [`mae`] (the Masked Autoencoder).
pub use engine;
pub use mae;
pub use nn;
