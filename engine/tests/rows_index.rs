//! Fused row kernels (softmax, layer norm, cross-entropy, argsort), indexing, layout ops
//! and creation ops against the CPU reference.

mod common;
use common::*;
use engine::{reference, AttentionKernel, DType, Tensor};

const ROWS: &[(usize, usize)] = &[(1, 1), (3, 7), (5, 33), (2, 197), (4, 1000)];

#[test]
fn softmax_rows_are_stable_and_exact() {
    for (i, &(r, c)) in ROWS.iter().enumerate() {
        let (x, hx) = rand_tensor(&[r, c], 300 + i as u64);
        // Large offsets must not overflow: softmax is shift-invariant.
        let shifted = x.add_scalar(1000.0).unwrap();
        let want = reference::softmax(&hx, c);
        assert_close(
            &x.softmax().unwrap().to_vec().unwrap(),
            &want,
            1e-6,
            1e-5,
            &format!("softmax {r}x{c}"),
        );
        assert_close(
            &shifted.softmax().unwrap().to_vec().unwrap(),
            &want,
            1e-6,
            1e-3,
            "shifted softmax",
        );
    }
    // Rank 3 and a transposed view.
    let (x, hx) = rand_tensor(&[2, 3, 5], 9);
    let got = x
        .transpose(1, 2)
        .unwrap()
        .softmax()
        .unwrap()
        .to_vec()
        .unwrap();
    let (xt, _) = reference::permute(&hx, &[2, 3, 5], &[0, 2, 1]);
    assert_close(
        &got,
        &reference::softmax(&xt, 3),
        1e-6,
        1e-5,
        "softmax of view",
    );
}

#[test]
fn layer_norm_matches_reference() {
    for (i, &(r, c)) in ROWS.iter().enumerate() {
        let (x, hx) = rand_tensor(&[r, c], 400 + i as u64);
        let (w, hw) = rand_tensor(&[c], 500 + i as u64);
        let (b, hb) = rand_tensor(&[c], 600 + i as u64);
        for eps in [1e-6f32, 1e-12] {
            let (got, stats) = x.layer_norm_with_stats(&w, &b, eps).unwrap();
            let want = reference::layer_norm(&hx, &hw, &hb, eps);
            // One column normalises to 0; tolerances cover rstd's f32 rounding.
            assert_close(
                &got.to_vec().unwrap(),
                &want,
                2e-5,
                2e-5,
                &format!("layer_norm {r}x{c} eps {eps}"),
            );
            let stats = stats.to_vec().unwrap();
            for row in 0..r {
                let mean = hx[row * c..][..c].iter().map(|&v| v as f64).sum::<f64>() / c as f64;
                assert!((stats[2 * row] as f64 - mean).abs() < 1e-5);
            }
        }
    }
    // An offset input (a narrowed view) is handled.
    let (x, hx) = rand_tensor(&[4, 9], 1);
    let (w, hw) = rand_tensor(&[9], 2);
    let (b, hb) = rand_tensor(&[9], 3);
    let got = x
        .narrow(0, 1, 2)
        .unwrap()
        .layer_norm(&w, &b, 1e-5)
        .unwrap()
        .to_vec()
        .unwrap();
    assert_close(
        &got,
        &reference::layer_norm(&hx[9..27], &hw, &hb, 1e-5),
        2e-5,
        2e-5,
        "narrowed layer_norm",
    );
}

#[test]
fn cross_entropy_with_and_without_smoothing() {
    for (i, &(r, c)) in ROWS.iter().enumerate() {
        let (x, hx) = rand_tensor(&[r, c], 700 + i as u64);
        let targets: Vec<u32> = (0..r as u32).map(|j| (j * 7 + 3) % c as u32).collect();
        let t = Tensor::from_slice_u32(&dev(), &targets, &[r]).unwrap();
        for eps in [0.0f32, 0.1] {
            let got = x.cross_entropy(&t, eps).unwrap().to_vec().unwrap();
            assert_close(
                &got,
                &reference::cross_entropy(&hx, &targets, c, eps),
                1e-5,
                1e-5,
                &format!("ce {r}x{c} eps {eps}"),
            );
        }
    }
}

#[test]
fn argsort_is_stable_on_awkward_lengths() {
    for (i, &(r, c)) in [(1, 1), (3, 7), (8, 49), (2, 196), (1, 1025)]
        .iter()
        .enumerate()
    {
        let (x, hx) = rand_tensor(&[r, c], 800 + i as u64);
        for descending in [false, true] {
            let got = x.argsort(descending).unwrap().to_vec_u32().unwrap();
            assert_eq!(
                got,
                reference::argsort(&hx, c, descending),
                "argsort {r}x{c} desc={descending}"
            );
        }
    }
    // Ties keep their order.
    let t = Tensor::from_slice(&dev(), &[1.0, 0.0, 1.0, 0.0, 1.0], &[5]).unwrap();
    assert_eq!(
        t.argsort(false).unwrap().to_vec_u32().unwrap(),
        [1, 3, 0, 2, 4]
    );
    assert_eq!(
        t.argsort(true).unwrap().to_vec_u32().unwrap(),
        [0, 2, 4, 1, 3]
    );
}

#[test]
fn gather_and_index_select() {
    let d = dev();
    let (x, hx) = rand_tensor(&[3, 7, 5], 900);
    // gather along 1 with a (3, 4, 5) index, repeats included.
    let idx: Vec<u32> = (0..60).map(|i| (i * 5 % 7) as u32).collect();
    let it = Tensor::from_slice_u32(&d, &idx, &[3, 4, 5]).unwrap();
    let got = x.gather(1, &it).unwrap();
    assert_eq!(got.shape(), &[3, 4, 5]);
    assert_eq!(
        got.to_vec().unwrap(),
        reference::gather(&hx, &[3, 7, 5], 1, &idx, &[3, 4, 5])
    );
    // MAE's pattern: ids (N, K) expanded to (N, K, D) without a copy.
    let ids: Vec<u32> = vec![6, 0, 3, 1, 1, 5];
    let ids_t = Tensor::from_slice_u32(&d, &ids, &[3, 2]).unwrap();
    let expanded = ids_t
        .unsqueeze(-1)
        .unwrap()
        .broadcast_to(&[3, 2, 5])
        .unwrap();
    let got = x.gather(1, &expanded).unwrap().to_vec().unwrap();
    let full: Vec<u32> = (0..30).map(|i| ids[i / 5]).collect();
    assert_eq!(
        got,
        reference::gather(&hx, &[3, 7, 5], 1, &full, &[3, 2, 5])
    );
    // gather along the last and the first axis.
    let idx0: Vec<u32> = vec![2, 0, 1, 2, 2];
    let i0 = Tensor::from_slice_u32(&d, &idx0, &[1, 1, 5]).unwrap();
    assert_eq!(
        x.gather(0, &i0).unwrap().to_vec().unwrap(),
        reference::gather(&hx, &[3, 7, 5], 0, &idx0, &[1, 1, 5])
    );
    // index_select with repeats on axis 2 and axis 0.
    let sel = Tensor::from_slice_u32(&d, &[4, 4, 0], &[3]).unwrap();
    let got = x.index_select(2, &sel).unwrap();
    assert_eq!(got.shape(), &[3, 7, 3]);
    let want: Vec<f32> = (0..21)
        .flat_map(|rc| [4, 4, 0].map(|c| hx[rc * 5 + c]))
        .collect();
    assert_eq!(got.to_vec().unwrap(), want);
    let rows = Tensor::from_slice_u32(&d, &[2, 2], &[2]).unwrap();
    assert_eq!(
        x.index_select(0, &rows).unwrap().to_vec().unwrap(),
        [&hx[70..105], &hx[70..105]].concat()
    );
    // gather also moves U32 data (ids_restore-style unshuffles).
    let u = Tensor::from_slice_u32(&d, &[10, 11, 12], &[3]).unwrap();
    let order = Tensor::from_slice_u32(&d, &[2, 0, 1], &[3]).unwrap();
    assert_eq!(
        u.gather(0, &order).unwrap().to_vec_u32().unwrap(),
        [12, 10, 11]
    );
}

#[test]
fn views_and_copies() {
    let (x, hx) = rand_tensor(&[2, 3, 4], 1000);
    let p = x.permute(&[2, 0, 1]).unwrap();
    assert_eq!(p.shape(), &[4, 2, 3]);
    assert!(!p.is_contiguous());
    let (want, _) = reference::permute(&hx, &[2, 3, 4], &[2, 0, 1]);
    assert_eq!(p.to_vec().unwrap(), want);
    assert_eq!(p.contiguous().unwrap().to_vec().unwrap(), want);
    // reshape of a non-contiguous view copies, of a contiguous one shares the buffer.
    assert_eq!(p.reshape(&[8, 3]).unwrap().to_vec().unwrap(), want);
    assert_eq!(x.reshape(&[6, usize::MAX]).unwrap().shape(), &[6, 4]);
    let u = x.unsqueeze(1).unwrap();
    assert_eq!(u.shape(), &[2, 1, 3, 4]);
    assert_eq!(u.squeeze(1).unwrap().to_vec().unwrap(), hx);
    let n = x.narrow(2, 1, 2).unwrap();
    let want: Vec<f32> = (0..6)
        .flat_map(|rc| hx[rc * 4 + 1..rc * 4 + 3].to_vec())
        .collect();
    assert_eq!(n.to_vec().unwrap(), want);
    let b = Tensor::from_slice(&dev(), &[1.0, 2.0], &[2, 1])
        .unwrap()
        .broadcast_to(&[3, 2, 4])
        .unwrap();
    assert_eq!(b.to_vec().unwrap(), [[1.0; 4], [2.0; 4]].concat().repeat(3));
}

#[test]
fn concat_along_any_axis() {
    let (a, ha) = rand_tensor(&[2, 3], 1);
    let (b, hb) = rand_tensor(&[2, 5], 2);
    let (c, hc) = rand_tensor(&[4, 3], 3);
    let ab = Tensor::concat(&[&a, &b], 1).unwrap();
    assert_eq!(ab.shape(), &[2, 8]);
    let want: Vec<f32> = (0..2)
        .flat_map(|r| [&ha[r * 3..r * 3 + 3], &hb[r * 5..r * 5 + 5]].concat())
        .collect();
    assert_eq!(ab.to_vec().unwrap(), want);
    let ac = Tensor::concat(&[&a, &c, &a.t().unwrap().t().unwrap()], 0).unwrap();
    assert_eq!(ac.to_vec().unwrap(), [ha.clone(), hc, ha].concat());
    let u = Tensor::from_slice_u32(&dev(), &[1, 2], &[2]).unwrap();
    assert_eq!(
        Tensor::concat(&[&u, &u], 0).unwrap().to_vec_u32().unwrap(),
        [1, 2, 1, 2]
    );
}

#[test]
fn creation_ops() {
    let d = dev();
    assert_eq!(Tensor::zeros(&d, &[3]).unwrap().to_vec().unwrap(), [0.0; 3]);
    assert_eq!(
        Tensor::ones(&d, &[2, 2]).unwrap().to_vec().unwrap(),
        [1.0; 4]
    );
    assert_eq!(
        Tensor::full(&d, &[197], -2.5).unwrap().to_vec().unwrap(),
        vec![-2.5; 197]
    );
    assert_eq!(
        Tensor::arange(&d, 0.0, 5.0, 1.0).unwrap().to_vec().unwrap(),
        [0.0, 1.0, 2.0, 3.0, 4.0]
    );
    assert_eq!(
        Tensor::arange(&d, 1.0, 0.0, -0.25)
            .unwrap()
            .to_vec()
            .unwrap(),
        [1.0, 0.75, 0.5, 0.25]
    );
    assert_eq!(
        Tensor::arange_u32(&d, 70).unwrap().to_vec_u32().unwrap(),
        (0..70).collect::<Vec<u32>>()
    );
    assert_eq!(
        Tensor::zeros(&d, &[0]).unwrap().to_vec().unwrap(),
        Vec::<f32>::new()
    );
}

#[test]
fn seeded_random_numbers() {
    let d = dev();
    let n = 4099;
    let a = Tensor::rand(&d, &[n], 42).unwrap().to_vec().unwrap();
    let b = Tensor::rand(&d, &[n], 42).unwrap().to_vec().unwrap();
    let c = Tensor::rand(&d, &[n], 43).unwrap().to_vec().unwrap();
    assert_eq!(a, b, "same seed, same numbers");
    assert_ne!(a, c);
    let want: Vec<f32> = (0..n as u32)
        .map(|i| reference::uniform(42, i, 0.0, 1.0))
        .collect();
    assert_eq!(a, want, "matches the CPU mirror bit for bit");
    assert!(a.iter().all(|&v| (0.0..1.0).contains(&v)));
    let mean = a.iter().sum::<f32>() / n as f32;
    assert!((mean - 0.5).abs() < 0.02, "uniform mean {mean}");
    let g = Tensor::rand_normal(&d, &[n], 1.0, 2.0, 7)
        .unwrap()
        .to_vec()
        .unwrap();
    let want: Vec<f32> = (0..n as u32)
        .map(|i| reference::normal(7, i, 1.0, 2.0))
        .collect();
    assert_close(&g, &want, 1e-4, 1e-4, "normal");
    let mean = g.iter().sum::<f32>() / n as f32;
    let var = g.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / n as f32;
    assert!(
        (mean - 1.0).abs() < 0.1 && (var.sqrt() - 2.0).abs() < 0.1,
        "normal mean {mean} std {}",
        var.sqrt()
    );
    let high_seed = Tensor::rand(&d, &[8], 1 << 40).unwrap().to_vec().unwrap();
    assert_ne!(
        high_seed,
        Tensor::rand(&d, &[8], 0).unwrap().to_vec().unwrap(),
        "upper seed bits matter"
    );
}

#[test]
fn dropout_is_seeded_and_scaled() {
    let d = dev();
    let n = 10_000;
    let x = Tensor::ones(&d, &[100, 100]).unwrap();
    let y = x.dropout(0.25, 9).unwrap().to_vec().unwrap();
    for (i, &v) in y.iter().enumerate() {
        let want = if reference::dropout_keeps(9, i as u32, 0.25) {
            1.0 / 0.75
        } else {
            0.0
        };
        assert_eq!(v, want);
    }
    let kept = y.iter().filter(|&&v| v != 0.0).count() as f32 / n as f32;
    assert!((kept - 0.75).abs() < 0.02, "kept fraction {kept}");
    assert_eq!(x.dropout(0.0, 1).unwrap().to_vec().unwrap(), vec![1.0; n]);
    assert_eq!(x.dtype(), DType::F32);
}

#[test]
fn qkv_attention_matches_reference_and_unfused_ops() {
    for kernel in [AttentionKernel::Rows, AttentionKernel::Tiled] {
        // (B, N, D, heads): one token, odd token counts, one head, a 64-wide head, heads of
        // 128 and of 5, and 197 tokens (several tiles of rows and of keys, the last partial).
        for (i, &(b, n, d, h)) in [
            (1, 1, 4, 1),
            (2, 7, 12, 3),
            (3, 13, 16, 1),
            (1, 33, 128, 2),
            (1, 70, 256, 2),
            (2, 20, 10, 2),
            (1, 197, 64, 2),
        ]
        .iter()
        .enumerate()
        {
            let (qkv, host) = rand_tensor(&[b, n, 3 * d], 400 + i as u64);
            let got = qkv.qkv_attention_with(h, kernel).unwrap();
            assert_eq!(got.shape(), [b, n, d]);
            let want = reference::qkv_attention(&host, b, n, d, h);
            assert_close(
                &got.to_vec().unwrap(),
                &want,
                1e-5,
                1e-4,
                &format!("{kernel:?} attention {b}x{n}x{d}/{h}"),
            );
        }
        // A view with an offset: the second half of a larger buffer.
        let (big, host) = rand_tensor(&[2, 5, 18], 410);
        let view = big.narrow(0, 1, 1).unwrap();
        let want = reference::qkv_attention(&host[90..], 1, 5, 6, 2);
        assert_close(
            &view
                .qkv_attention_with(2, kernel)
                .unwrap()
                .to_vec()
                .unwrap(),
            &want,
            1e-5,
            1e-4,
            &format!("{kernel:?} offset view"),
        );
    }
    // Bad shapes are errors, not wrong answers.
    for (shape, heads) in [
        (&[2, 3, 12][..], 5),
        (&[6, 12][..], 2),
        (&[1, 2, 3 * 129][..], 1),
    ] {
        let x = Tensor::zeros(&dev(), shape).unwrap();
        assert!(
            matches!(x.qkv_attention(heads), Err(engine::Error::Shape { .. })),
            "{shape:?}/{heads}"
        );
    }
}
