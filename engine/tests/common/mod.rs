//! Helpers shared by the engine's integration tests.
#![allow(dead_code)]

use engine::{Device, Tensor};

/// The process-wide device (lavapipe on machines without a GPU).
pub fn dev() -> Device {
    Device::shared().expect("a wgpu adapter (apt-get install mesa-vulkan-drivers)")
}

/// Deterministic host data in [-2, 2): a small LCG, so tests need no RNG crate.
pub fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// A tensor of `shape` filled with [`data`], and its host copy.
pub fn rand_tensor(shape: &[usize], seed: u64) -> (Tensor, Vec<f32>) {
    let host = data(numel(shape), seed);
    (Tensor::from_slice(&dev(), &host, shape).unwrap(), host)
}

/// Assert `|got - want| <= atol + rtol * |want|` elementwise, naming the worst element.
#[track_caller]
pub fn assert_close(got: &[f32], want: &[f32], atol: f32, rtol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst: Option<(usize, f32)> = None;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let same_nan = g.is_nan() && w.is_nan();
        let same_inf = g.is_infinite() && g == w;
        // NaN errors count as failures, hence `within` rather than `err > 0`.
        let err = (g - w).abs() - (atol + rtol * w.abs());
        let within = err <= 0.0;
        if !same_nan && !same_inf && !within && worst.is_none_or(|(_, e)| err.is_nan() || err > e) {
            worst = Some((i, err));
        }
    }
    if let Some((i, _)) = worst {
        panic!(
            "{what}: element {i}: got {}, want {} (atol {atol}, rtol {rtol})",
            got[i], want[i]
        );
    }
}
