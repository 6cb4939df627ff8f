//! Transformer building blocks on top of [`engine`]. Empty until the nn issue lands;
//! the crate exists so the workspace layout is final from the start.
pub use engine;
