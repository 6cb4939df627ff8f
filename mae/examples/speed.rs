//! The method's speed claim: one pretraining step (forward, backward, AdamW) of the 32x32x3
//! preset at batch 64 with mask ratio 0.75 and 0.0, in images per second. Encoding only
//! the visible patches is what makes MAE cheap. (At ratio 0.0 no patch is removed, so the
//! loss is 0/0; the step's cost is what is measured.)
//!
//! `cargo run --release -p mae --example speed`

use std::time::Instant;

use engine::{Device, Tensor};
use mae::{MaeConfig, MaskedAutoencoder};
use nn::{Ctx, Init};

fn step_images_per_s(dev: &Device, mask_ratio: f64, batch: usize) -> f64 {
    let config = MaeConfig {
        mask_ratio,
        ..MaeConfig::mae_tiny_32_patch4()
    };
    let model = MaskedAutoencoder::new(config, &mut Init::new(dev, 0)).unwrap();
    let mut opt = mae::pretrain::adamw(&model, 1.5e-4, 0.05).unwrap();
    let imgs = Tensor::randn(dev, &[batch, 3, 32, 32], 1).unwrap();
    let mut step = |seed| {
        let out = model
            .forward_seeded(&imgs, seed, &mut Ctx::train(seed))
            .unwrap();
        let grads = out.loss.backward().unwrap();
        opt.step(&grads).unwrap();
        dev.synchronize().unwrap();
    };
    step(0); // warm-up: pipelines compiled, buffers pooled
    let start = Instant::now();
    let steps = 2;
    for s in 1..=steps {
        step(s);
    }
    (batch * steps as usize) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let dev = Device::new().expect("a wgpu adapter");
    println!(
        r#"{{"adapter":{:?},"backend":{:?}}}"#,
        dev.info().name,
        dev.info().backend
    );
    let masked = step_images_per_s(&dev, 0.75, 64);
    let full = step_images_per_s(&dev, 0.0, 64);
    println!(
        r#"{{"op":"pretrain_step","preset":"mae_tiny_32_patch4","batch":64,"img_per_s_mask_0.75":{masked:.2},"img_per_s_mask_0.0":{full:.2},"speedup":{:.2}}}"#,
        masked / full
    );
}
