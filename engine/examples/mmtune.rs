use engine::{Device, Tensor};
use std::time::Instant;
fn main() {
    let dev = Device::new().unwrap();
    for &(bt, m, k, n, tb) in &[
        (96usize, 197usize, 64usize, 197usize, true),
        (96, 197, 197, 64, false),
        (1, 1023, 1023, 1023, false),
    ] {
        let a = Tensor::rand(&dev, &[bt, m, k], 1).unwrap();
        let b = if tb {
            Tensor::rand(&dev, &[bt, n, k], 2).unwrap().t().unwrap()
        } else {
            Tensor::rand(&dev, &[bt, k, n], 2).unwrap()
        };
        a.matmul(&b).unwrap();
        dev.synchronize().unwrap();
        let mut best = f64::MAX;
        for _ in 0..4 {
            let t = Instant::now();
            a.matmul(&b).unwrap();
            dev.synchronize().unwrap();
            best = best.min(t.elapsed().as_secs_f64());
        }
        print!(
            "{bt}x{m}x{k}x{n}: {:.2}  ",
            2.0 * (bt * m * n * k) as f64 / best / 1e9
        );
    }
    println!();
}
