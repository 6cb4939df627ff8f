//! Activation checkpointing: an MAE step with every block recomputed in backward gives the
//! plain step's loss and gradients, drop-path masks included, for less memory.

use engine::{Device, Gradients};
use mae::{MaeConfig, MaskedAutoencoder};
use nn::{named_parameters, Ctx, Init};

/// One training step's loss, every parameter's gradient by name, and the pool's peak bytes
/// over the step.
fn step(model: &MaskedAutoencoder, checkpoint: bool) -> (f32, Vec<(String, Vec<f32>)>, u64) {
    let device = model.cls_token.device();
    let imgs = engine::Tensor::randn(device, &[8, 1, 28, 28], 11).unwrap();
    device.synchronize().unwrap();
    device.reset_peak();
    let ctx = &mut Ctx::train(5).checkpointing(checkpoint);
    let out = model.forward_seeded(&imgs, 0.75, 3, ctx).unwrap();
    let mut grads = Gradients::default();
    let one = engine::Tensor::full(device, &[], 1.0).unwrap();
    out.loss.backward_into(&one, &mut grads).unwrap();
    device.synchronize().unwrap();
    let peak = device.pool_stats().peak_bytes;
    let by_name = named_parameters(model)
        .into_iter()
        .map(|(name, t)| (name, grads.expect(&t).unwrap().to_vec().unwrap()))
        .collect();
    (out.loss.item().unwrap(), by_name, peak)
}

#[test]
fn checkpointed_blocks_give_the_same_gradients_for_less_memory() {
    let device = Device::new().unwrap();
    let config = MaeConfig {
        depth: 4,
        ..MaeConfig::mae_tiny_28_patch4()
    };
    let mut model = MaskedAutoencoder::new(config, &mut Init::new(&device, 0)).unwrap();
    // Drop path draws masks: the recomputation must draw the same ones.
    for (i, block) in model.blocks.iter_mut().enumerate() {
        block.drop_path = 0.1 * (i + 1) as f32;
    }
    let (loss, plain, plain_peak) = step(&model, false);
    let (loss_ckpt, ckpt, ckpt_peak) = step(&model, true);
    assert_eq!(loss, loss_ckpt);
    let mut worst = 0.0f64;
    for ((name, a), (_, b)) in plain.iter().zip(&ckpt) {
        let diff: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
        let norm: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum();
        let rel = (diff / norm.max(1e-30)).sqrt();
        assert!(rel <= 1e-6, "{name}: relative difference {rel:e}");
        worst = worst.max(rel);
    }
    eprintln!(
        "worst relative gradient difference {worst:e}; peak {plain_peak} bytes plain, \
         {ckpt_peak} checkpointed"
    );
    assert!(
        (ckpt_peak as f64) < 0.8 * plain_peak as f64,
        "peak {ckpt_peak} checkpointed against {plain_peak} plain"
    );
}
