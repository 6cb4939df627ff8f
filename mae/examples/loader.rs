//! The data pipeline alone: decode, the reference's RandomResizedCrop (scale 0.2 to 1,
//! bicubic with antialiasing) and flip at 224 pixels, normalisation, into batches of 64 on
//! N worker threads, as `mae pretrain` feeds a step. Images per second over an epoch, after
//! a first epoch that warms the page cache; tools/loader-bench/torchvision_loader.py is the
//! same for torchvision.
//!
//! `cargo run --release -p mae --example loader -- DIR WORKERS`

use std::sync::Arc;
use std::time::Instant;

use mae::data::{Augment, Dataset, Loader, Normalize, Plan, Rng, Skipped, Split};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(dir), Some(workers)) = (args.first(), args.get(1).and_then(|w| w.parse().ok()))
    else {
        eprintln!("usage: loader DIR WORKERS");
        std::process::exit(2)
    };
    let data = Arc::new(
        Dataset::open(std::path::Path::new(dir), Split::Train).unwrap_or_else(|e| {
            eprintln!("error: {e}");
            std::process::exit(2)
        }),
    );
    let augment = Arc::new(Augment::pretrain(224, Normalize::imagenet()));
    let mut seconds = 0.0;
    let mut images = 0;
    for epoch in 0..2 {
        let mut order: Vec<usize> = (0..data.len()).collect();
        Rng::new(&[0, 1, epoch]).shuffle(&mut order);
        let start = Instant::now();
        let loader = Loader::new(Plan {
            data: data.clone(),
            augment: augment.clone(),
            random: true,
            channels: 3,
            order,
            batch: 64,
            workers,
            seed: 0,
            epoch,
            skipped: Arc::new(Skipped::default()),
        });
        images = loader.map(|b| b.expect("a batch").len).sum::<usize>();
        seconds = start.elapsed().as_secs_f64();
    }
    println!(
        r#"{{"loader":"mae","workers":{workers},"images":{images},"img_per_s":{:.1}}}"#,
        images as f64 / seconds
    );
}
