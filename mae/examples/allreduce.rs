//! The cost of data parallelism per optimizer step: averaging the gradients of an MAE ViT-B
//! (its encoder's 85.6M parameters, or with `all` the decoder's too, 111.7M) across the
//! ranks, as pretraining does it (gathered on the device into buckets, read back, MPI
//! all-reduce, written back), and MPI's all-reduce of as many bytes alone, host to host.
//! One JSON line from rank 0.
//!
//! `mpirun -np 2 target/release/examples/allreduce [all]` after
//! `cargo build --release -p mae --features distributed --example allreduce`.

use std::time::Instant;

use engine::{Device, DeviceOptions, Gradients, Tensor};
use mae::dist::Dist;
use mae::{MaeConfig, MaskedAutoencoder};
use nn::{named_parameters, Init};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let dist = Dist::init().expect("MPI");
    let device = Device::with_options(DeviceOptions {
        adapter_index: Some(dist.local_rank()),
        ..Default::default()
    })
    .expect("a wgpu adapter");
    let all = std::env::args().any(|a| a == "all");
    let model = MaskedAutoencoder::new(
        MaeConfig::mae_vit_base_patch16(),
        &mut Init::new(&device, 0),
    )
    .unwrap();
    let params: Vec<Tensor> = named_parameters(&model)
        .into_iter()
        .filter(|(name, _)| all || !(name.starts_with("decoder") || name == "mask_token"))
        .map(|(_, t)| t)
        .collect();
    let floats: usize = params.iter().map(Tensor::numel).sum();
    let fresh = || {
        let mut grads = Gradients::default();
        for (i, p) in params.iter().enumerate() {
            grads
                .insert(
                    p,
                    Tensor::randn(&device, p.shape(), 1000 + i as u64).unwrap(),
                )
                .unwrap();
        }
        device.synchronize().unwrap();
        grads
    };
    let (mut averaged, mut host_only) = (Vec::new(), Vec::new());
    let mut values = vec![1.0f64; floats];
    for _ in 0..5 {
        let mut grads = fresh();
        let t = Instant::now();
        dist.average_gradients(&mut grads, &params).unwrap();
        device.synchronize().unwrap();
        averaged.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        dist.sum(&mut values[..floats / 2]); // as many bytes as 86M f32
        host_only.push(t.elapsed().as_secs_f64());
    }
    if dist.is_main() {
        let (avg, host) = (median(averaged), median(host_only));
        println!(
            r#"{{"op":"average_gradients","ranks":{},"floats":{floats},"adapter":{:?},"seconds":{avg:.3},"mpi_allreduce_seconds":{host:.3},"gb_per_s_mpi":{:.2}}}"#,
            dist.size(),
            device.info().name,
            floats as f64 * 4.0 / host / 1e9
        );
    }
}
