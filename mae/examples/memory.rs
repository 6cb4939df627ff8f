//! Peak GPU memory of one MAE pretraining step (forward, backward, AdamW) from the buffer
//! pool's own count, with and without activation checkpointing: parameters, gradients,
//! AdamW's two moments and the activations at their peak.
//!
//! `cargo run --release -p mae --example memory [PRESET] [BATCH]` (default
//! `mae_vit_base_patch16 64`). Prints one JSON line per setting.

use engine::{Device, Tensor};
use mae::{MaeConfig, MaskedAutoencoder};
use nn::{named_parameters, Ctx, Init};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let preset = args.get(1).map_or("mae_vit_base_patch16", String::as_str);
    let batch: usize = args
        .get(2)
        .map_or(64, |b| b.parse().expect("BATCH is a number"));
    let device = Device::new().expect("a wgpu adapter");
    let config = MaeConfig::by_name(preset).expect("a preset");
    let model = MaskedAutoencoder::new(config.clone(), &mut Init::new(&device, 0)).unwrap();
    let mut opt = mae::pretrain::adamw(&model, 1e-4, 0.05).unwrap();
    let params: usize = named_parameters(&model)
        .iter()
        .map(|(_, t)| t.numel())
        .sum();
    let (c, s) = (config.channels, config.image_size);
    let imgs = Tensor::randn(&device, &[batch, c, s, s], 1).unwrap();
    // The first step creates AdamW's moments; the measured steps start with them in place.
    for (round, checkpoint) in [(0, false), (1, false), (2, true)] {
        device.synchronize().unwrap();
        device.reset_peak();
        let resident = device.pool_stats().live_bytes;
        let started = std::time::Instant::now();
        let ctx = &mut Ctx::train(round).checkpointing(checkpoint);
        let out = model.forward_seeded(&imgs, 0.75, round, ctx).unwrap();
        let loss = out.loss.item().unwrap();
        let grads = out.loss.backward().unwrap();
        drop(out);
        opt.step(&grads).unwrap();
        drop(grads);
        device.synchronize().unwrap();
        if round == 0 {
            continue;
        }
        let peak = device.pool_stats().peak_bytes;
        println!(
            r#"{{"preset":"{preset}","batch":{batch},"checkpoint_activations":{checkpoint},"adapter":{:?},"parameters":{params},"resident_bytes":{resident},"peak_bytes":{peak},"step_s":{:.1},"loss":{loss:.4}}}"#,
            device.info().name,
            started.elapsed().as_secs_f64()
        );
    }
}
