//! End-to-end pretraining throughput against the model alone: the data pipeline (IDX
//! decoding, RandomResizedCrop, flip, normalisation on worker threads) must cost the GPU
//! less than 10% of its step rate. Both runs start on a new device (pipelines built in the
//! first step, after a warm-up run has filled the driver's shader cache) and take the same
//! number of steps of the default preset.
//!
//! `cargo run --release -p mae --example pipeline [STEPS]` (Fashion-MNIST when installed,
//! else generated IDX files).

use std::path::PathBuf;
use std::time::Instant;

use engine::{Device, Tensor};
use mae::pretrain::{pretrain, Settings};
use mae::run::{Invocation, Output};
use mae::{MaeConfig, MaskedAutoencoder};
use nn::{Ctx, Init};

const PRESET: &str = "mae_tiny_28_patch7";
const BATCH: usize = 64;

/// Steps of the model alone on a fixed batch: forward, backward, AdamW, loss read back.
fn model_only(steps: usize) -> f64 {
    let dev = Device::new().expect("a wgpu adapter");
    let config = MaeConfig::by_name(PRESET).expect("a preset");
    let model = MaskedAutoencoder::new(config, &mut Init::new(&dev, 0)).unwrap();
    let mut opt = mae::pretrain::adamw(&model, 1e-3, 0.05).unwrap();
    let imgs = Tensor::randn(&dev, &[BATCH, 1, 28, 28], 1).unwrap();
    let start = Instant::now();
    for s in 0..steps as u64 {
        let out = model
            .forward_seeded(&imgs, 0.75, s, &mut Ctx::train(s))
            .unwrap();
        out.loss.item().unwrap();
        opt.step(&out.loss.backward().unwrap()).unwrap();
    }
    dev.synchronize().unwrap();
    (BATCH * steps) as f64 / start.elapsed().as_secs_f64()
}

/// Generated IDX files when Fashion-MNIST is not installed.
fn data_dir() -> PathBuf {
    let fashion = PathBuf::from(mae::data::FASHION_MNIST);
    if fashion.exists() {
        return fashion;
    }
    let dir = std::env::temp_dir().join("mae-pipeline-bench");
    std::fs::create_dir_all(&dir).unwrap();
    let n = 2048u32;
    let mut bytes = vec![0, 0, 8, 3];
    for d in [n, 28, 28] {
        bytes.extend(d.to_be_bytes());
    }
    bytes.extend((0..n * 28 * 28).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8));
    std::fs::write(dir.join("train-images-idx3-ubyte"), bytes).unwrap();
    dir
}

fn main() {
    let steps: usize = std::env::args()
        .nth(1)
        .map_or(24, |s| s.parse().expect("STEPS is a number"));
    let adapter = Device::new().expect("a wgpu adapter").info().name.clone();
    let data = data_dir();
    model_only(2); // fills the driver's shader cache, which both measured runs then share
    let model = model_only(steps);
    let config = MaeConfig::by_name(PRESET).unwrap();
    let settings = Settings {
        limit: Some(BATCH * steps),
        batch_size: BATCH,
        epochs: 1,
        ..Settings::recipe(PRESET, &config, data.clone())
    };
    let out = std::env::temp_dir().join("mae-pipeline-bench-out");
    let single = mae::dist::Dist::single();
    let output = Output::claim("pretrain", Some(&out), None, true, &single).expect("the output");
    let run = Invocation {
        output: Some(out),
        overwrite: true,
        workers: 2,
        checkpoint_activations: false,
        stall_timeout: std::time::Duration::ZERO,
        progress: false,
    };
    let summary = pretrain(settings, None, &run, &output, &single).expect("pretraining runs");
    println!(
        r#"{{"bench":"pretrain_pipeline","adapter":{adapter:?},"preset":"{PRESET}","batch":{BATCH},"steps":{steps},"data":{:?},"model_only_img_per_s":{model:.2},"end_to_end_img_per_s":{:.2},"ratio":{:.3}}}"#,
        data.display().to_string(),
        summary.img_per_s,
        summary.img_per_s / model
    );
}
