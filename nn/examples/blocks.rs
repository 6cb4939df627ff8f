//! nn benchmark: forward + backward of one transformer block at batch 8 x 197 tokens, for
//! ViT-B/16 (width 768, 12 heads) and ViT-Ti (width 192, 3 heads), with the buffer pool's
//! peak bytes. One JSON object per line.
//!
//! `cargo run --release -p nn --example blocks`

use std::time::Instant;

use engine::{Device, Tensor};
use nn::{Block, Ctx, Init, Module};

fn block_line(dev: &Device, name: &str, dim: usize, heads: usize) {
    let block = Block::new(dim, heads, 4.0, true, 1e-6, &mut Init::new(dev, 0)).unwrap();
    let x = Tensor::randn(dev, &[8, 197, dim], 1).unwrap();
    let run = || {
        let y = block.forward(&x, &mut Ctx::train(0)).unwrap();
        let grads = y.mean_all().unwrap().backward().unwrap();
        let mut n = 0;
        block.visit("", &mut |_, p| n += grads.get(p).is_some() as usize);
        assert_eq!(n, 12);
        dev.synchronize().unwrap();
    };
    run(); // warm-up: pipelines compiled, buffers pooled
    dev.reset_peak();
    let start = Instant::now();
    run();
    let ms = start.elapsed().as_secs_f64() * 1e3;
    let tokens = 8.0 * 197.0;
    // Forward 2·tokens·12·D² plus attention 4·8·197²·D; backward twice the forward.
    let flop =
        3.0 * (2.0 * tokens * 12.0 * (dim * dim) as f64 + 4.0 * 8.0 * 197.0 * 197.0 * dim as f64);
    println!(
        r#"{{"op":"block_fwd_bwd","model":"{name}","shape":[8,197,{dim}],"heads":{heads},"ms":{ms:.0},"gflops":{:.2},"peak_bytes":{}}}"#,
        flop / (ms * 1e-3) / 1e9,
        dev.pool_stats().peak_bytes
    );
}

fn main() {
    let dev = Device::new().expect("a wgpu adapter");
    println!(
        r#"{{"adapter":{:?},"backend":{:?}}}"#,
        dev.info().name,
        dev.info().backend
    );
    block_line(&dev, "vit_tiny", 192, 3);
    block_line(&dev, "vit_base", 768, 12);
}
