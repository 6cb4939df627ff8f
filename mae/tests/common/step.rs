//! One MAE training step measured in-process: how the checkpointing and mixed-precision
//! tests compare a variant of the step with the plain one.

use engine::{Device, Gradients, Tensor};
use mae::{MaeConfig, MaskedAutoencoder};
use nn::{named_parameters, Ctx, Init};

/// `mae_tiny_28_patch4` with 4 blocks and drop path 0.1 to 0.4: drop path draws masks, so a
/// recomputed or differently computed step must draw the same ones.
pub fn tiny_model(device: &Device) -> MaskedAutoencoder {
    let config = MaeConfig {
        depth: 4,
        ..MaeConfig::mae_tiny_28_patch4()
    };
    let mut model = MaskedAutoencoder::new(config, &mut Init::new(device, 0)).unwrap();
    for (i, block) in model.blocks.iter_mut().enumerate() {
        block.drop_path = 0.1 * (i + 1) as f32;
    }
    model
}

/// Every parameter's gradient, by name.
pub type Grads = Vec<(String, Vec<f32>)>;

/// One step on `batch` seeded random images (masks and drop path from fixed seeds): the
/// loss, every parameter's gradient and the pool's peak over the step; in f16-mixed
/// precision with `half`, with activation checkpointing with `checkpoint`.
pub fn step(
    model: &MaskedAutoencoder,
    batch: usize,
    (half, checkpoint): (bool, bool),
) -> (f32, Grads, u64) {
    let device = model.cls_token.device();
    let imgs = Tensor::randn(device, &[batch, 1, 28, 28], 11).unwrap();
    device.synchronize().unwrap();
    device.reset_peak();
    let ctx = &mut Ctx::train(5).checkpointing(checkpoint);
    let mut forward = || model.forward_seeded(&imgs, 0.75, 3, ctx);
    let out = if half {
        engine::autocast_f16(forward)
    } else {
        forward()
    }
    .unwrap();
    let mut grads = Gradients::default();
    let one = Tensor::full(device, &[], 1.0).unwrap();
    out.loss.backward_into(&one, &mut grads).unwrap();
    device.synchronize().unwrap();
    let peak = device.pool_stats().peak_bytes;
    let by_name = named_parameters(model)
        .into_iter()
        .map(|(name, t)| (name, grads.expect(&t).unwrap().to_vec().unwrap()))
        .collect();
    (out.loss.item().unwrap(), by_name, peak)
}

/// The largest relative (L2) difference between two sets of gradients, and its name.
pub fn worst(a: &Grads, b: &Grads) -> (f64, String) {
    let mut worst = (0.0, String::new());
    for ((name, x), (_, y)) in a.iter().zip(b) {
        let diff: f64 = x.iter().zip(y).map(|(p, q)| ((p - q) as f64).powi(2)).sum();
        let norm: f64 = x.iter().map(|p| (*p as f64).powi(2)).sum();
        let rel = (diff / norm.max(1e-30)).sqrt();
        if rel > worst.0 {
            worst = (rel, name.clone());
        }
    }
    worst
}
