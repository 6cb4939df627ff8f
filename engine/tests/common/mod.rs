//! Helpers shared by the engine's integration tests.
#![allow(dead_code)]

use engine::{Device, Tensor};

/// The process-wide device (lavapipe on machines without a GPU).
pub fn dev() -> Device {
    Device::shared().expect("a wgpu adapter (apt-get install mesa-vulkan-drivers)")
}

/// Deterministic host data in [-2, 2): a small LCG, so tests need no RNG crate.
pub fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// A tensor of `shape` filled with [`data`], and its host copy.
pub fn rand_tensor(shape: &[usize], seed: u64) -> (Tensor, Vec<f32>) {
    let host = data(numel(shape), seed);
    (Tensor::from_slice(&dev(), &host, shape).unwrap(), host)
}

/// Assert `|got - want| <= atol + rtol * |want|` elementwise, naming the worst element.
#[track_caller]
pub fn assert_close(got: &[f32], want: &[f32], atol: f32, rtol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst: Option<(usize, f32)> = None;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let same_nan = g.is_nan() && w.is_nan();
        let same_inf = g.is_infinite() && g == w;
        // NaN errors count as failures, hence `within` rather than `err > 0`.
        let err = (g - w).abs() - (atol + rtol * w.abs());
        let within = err <= 0.0;
        if !same_nan && !same_inf && !within && worst.is_none_or(|(_, e)| err.is_nan() || err > e) {
            worst = Some((i, err));
        }
    }
    if let Some((i, _)) = worst {
        panic!(
            "{what}: element {i}: got {}, want {} (atol {atol}, rtol {rtol})",
            got[i], want[i]
        );
    }
}

/// Softmax, layer norm (forward, and backward against the unfused ops), cross-entropy and
/// reductions on `d` against the CPU reference, over rows of 7, 40, 64, 197 and 1000.
pub fn check_row_kernels(d: &Device, what: &str) {
    use engine::reference::{self, Reduce};
    for (r, c) in [(3usize, 7usize), (2, 197), (1, 1000), (300, 40), (5, 64)] {
        let hx = data(r * c, (r * 31 + c) as u64);
        let x = Tensor::from_slice(d, &hx, &[r, c]).unwrap();
        let what = format!("{what}, {r}x{c}");
        assert_close(
            &x.softmax().unwrap().to_vec().unwrap(),
            &reference::softmax(&hx, c),
            1e-6,
            1e-5,
            &what,
        );
        let (hw, hb) = (data(c, 1), data(c, 2));
        let w = Tensor::from_slice(d, &hw, &[c]).unwrap();
        let b = Tensor::from_slice(d, &hb, &[c]).unwrap();
        let ln = x.layer_norm(&w, &b, 1e-5).unwrap().to_vec().unwrap();
        assert_close(
            &ln,
            &reference::layer_norm(&hx, &hw, &hb, 1e-5),
            2e-5,
            2e-5,
            &what,
        );
        let t: Vec<u32> = (0..r as u32).map(|i| (i * 5) % c as u32).collect();
        let tt = Tensor::from_slice_u32(d, &t, &[r]).unwrap();
        let ce = x.cross_entropy(&tt, 0.1).unwrap().to_vec().unwrap();
        assert_close(
            &ce,
            &reference::cross_entropy(&hx, &t, c, 0.1),
            1e-5,
            1e-5,
            &what,
        );
        for (how, axis, got) in [
            (Reduce::Sum, 1, x.sum(1, false).unwrap()),
            (Reduce::Var(true), 1, x.var(1, false, true).unwrap()),
            (Reduce::Max, 0, x.max(0, false).unwrap()),
            (Reduce::Sum, 0, x.sum(0, false).unwrap()),
        ] {
            let (want, _) = reference::reduce(&hx, &[r, c], axis, how);
            assert_close(&got.to_vec().unwrap(), &want, 2e-5, 2e-5, &what);
        }
        let (want, _) = reference::reduce(&hx, &[r, c], 1, Reduce::Argmax);
        let got = x.argmax(1, false).unwrap().to_vec_u32().unwrap();
        assert_eq!(
            got,
            want.iter().map(|&v| v as u32).collect::<Vec<_>>(),
            "{what}"
        );
        // The layer norm's backward reduces too: its gradient against the unfused ops'.
        let xg = x.requires_grad(true).unwrap();
        let fused = xg.layer_norm(&w, &b, 1e-5).unwrap();
        let mean = xg.mean(-1, true).unwrap();
        let var = xg.var(-1, true, false).unwrap();
        let unfused = xg
            .sub(&mean)
            .unwrap()
            .div(&var.add_scalar(1e-5).unwrap().sqrt().unwrap())
            .unwrap()
            .mul(&w)
            .unwrap()
            .add(&b)
            .unwrap();
        let g = Tensor::from_slice(d, &data(r * c, 9), &[r, c]).unwrap();
        let grad = |y: Tensor| {
            let grads = y.mul(&g).unwrap().sum_all().unwrap().backward().unwrap();
            grads.expect(&xg).unwrap().to_vec().unwrap()
        };
        assert_close(&grad(fused), &grad(unfused), 2e-4, 2e-4, &what);
    }
}
