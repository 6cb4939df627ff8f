//! The method's speed claim: one pretraining step (forward, backward, AdamW) of a preset at
//! batch 64 with mask ratio 0.75 and 0.0, in images per second. Encoding only the visible
//! patches is what makes MAE cheap. (At ratio 0.0 no patch is removed, so the loss is 0/0;
//! the step's cost is what is measured.) Then the same step at ratio 0.75 in f16-mixed
//! precision and with activation checkpointing, each with the pool's peak over the step.
//!
//! `cargo run --release -p mae --example speed [-- PRESET [BATCH]]`, by default
//! `mae_tiny_32_patch4` at batch 64; tools/gpu-check runs `mae_vit_base_patch16 64`.

use std::time::Instant;

use engine::{Device, Tensor};
use mae::{MaeConfig, MaskedAutoencoder};
use nn::{Ctx, Init};

/// Images per second of a step and the pool's peak over the measured steps.
fn step_images_per_s(
    dev: &Device,
    config: &MaeConfig,
    mask_ratio: f64,
    batch: usize,
    (half, checkpoint): (bool, bool),
) -> (f64, u64) {
    let model = MaskedAutoencoder::new(config.clone(), &mut Init::new(dev, 0)).unwrap();
    let mut opt = mae::pretrain::adamw(&model, 1.5e-4, 0.05).unwrap();
    let side = config.image_size;
    let imgs = Tensor::randn(dev, &[batch, config.channels, side, side], 1).unwrap();
    let mut step = |seed| {
        let ctx = &mut Ctx::train(seed).checkpointing(checkpoint);
        let mut forward = || model.forward_seeded(&imgs, mask_ratio, seed, ctx);
        let out = if half {
            engine::autocast_f16(forward)
        } else {
            forward()
        }
        .unwrap();
        let grads = out.loss.backward().unwrap();
        opt.step(&grads).unwrap();
        dev.synchronize().unwrap();
    };
    step(0); // warm-up: pipelines compiled, buffers pooled, kernels tuned
    dev.reset_peak();
    let start = Instant::now();
    let steps = 2;
    for s in 1..=steps {
        step(s);
    }
    let speed = (batch * steps as usize) as f64 / start.elapsed().as_secs_f64();
    (speed, dev.pool_stats().peak_bytes)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let preset = args.first().map_or("mae_tiny_32_patch4", String::as_str);
    let config = MaeConfig::by_name(preset).unwrap_or_else(|| {
        eprintln!(
            "error: no preset {preset} ({})",
            MaeConfig::PRESETS.join(", ")
        );
        std::process::exit(2)
    });
    let batch = args.get(1).and_then(|b| b.parse().ok()).unwrap_or(64);
    let dev = Device::new().expect("a wgpu adapter");
    println!(
        r#"{{"adapter":{:?},"backend":{:?}}}"#,
        dev.info().name,
        dev.info().backend
    );
    // One step's dispatches, and with ENGINE_PROFILE=1 its kernels' times.
    let before = dev.dispatch_count();
    step_images_per_s(&dev, &config, 0.75, batch, (false, false));
    let dispatches = (dev.dispatch_count() - before) / 3;
    println!(
        r#"{{"op":"dispatches","preset":"{preset}","batch":{batch},"per_step":{dispatches}}}"#
    );
    dev.synchronize().unwrap();
    let clock = format!("{:?}", dev.profile_clock());
    // Three steps were profiled (a warm-up and two): per step, a third.
    for t in dev.profile() {
        println!(
            r#"{{"op":"kernel_time","clock":{clock:?},"kernel":{:?},"dispatches_per_step":{},"seconds_per_step":{:.6}}}"#,
            t.kernel,
            t.dispatches / 3,
            t.seconds / 3.0
        );
    }
    dev.set_profiling(false);
    let (masked, peak) = step_images_per_s(&dev, &config, 0.75, batch, (false, false));
    let (full, _) = step_images_per_s(&dev, &config, 0.0, batch, (false, false));
    println!(
        r#"{{"op":"pretrain_step","preset":"{preset}","batch":{batch},"img_per_s_mask_0.75":{masked:.2},"img_per_s_mask_0.0":{full:.2},"speedup":{:.2},"peak_bytes":{peak}}}"#,
        masked / full,
    );
    for (precision, half, checkpoint) in [
        ("fp32", false, true),
        ("f16-mixed", true, false),
        ("f16-mixed", true, true),
    ] {
        if half && !dev.info().features.shader_f16 {
            continue;
        }
        let (speed, peak) = step_images_per_s(&dev, &config, 0.75, batch, (half, checkpoint));
        println!(
            r#"{{"op":"pretrain_step","preset":"{preset}","batch":{batch},"precision":"{precision}","checkpoint_activations":{checkpoint},"img_per_s":{speed:.2},"peak_bytes":{peak}}}"#
        );
    }
}
