//! Reductions and matrix products against the CPU reference.

mod common;
use common::*;
use engine::reference::{self, Reduce};
use engine::Tensor;

#[test]
fn reductions_over_each_axis() {
    // Axes with columns after them take the column kernel; long ones in chunks.
    for (si, shape) in [
        &[1usize][..],
        &[7],
        &[197],
        &[3, 5, 7],
        &[2, 33, 3],
        &[65, 2],
        &[197, 16],
        &[700, 9],
    ]
    .iter()
    .enumerate()
    {
        let (x, hx) = rand_tensor(shape, 100 + si as u64);
        for axis in 0..shape.len() {
            for keepdim in [false, true] {
                let cases: [(&str, Reduce, Tensor); 7] = [
                    ("sum", Reduce::Sum, x.sum(axis as isize, keepdim).unwrap()),
                    (
                        "mean",
                        Reduce::Mean,
                        x.mean(axis as isize, keepdim).unwrap(),
                    ),
                    ("max", Reduce::Max, x.max(axis as isize, keepdim).unwrap()),
                    ("min", Reduce::Min, x.min(axis as isize, keepdim).unwrap()),
                    (
                        "var",
                        Reduce::Var(true),
                        x.var(axis as isize, keepdim, true).unwrap(),
                    ),
                    (
                        "var biased",
                        Reduce::Var(false),
                        x.var(axis as isize, keepdim, false).unwrap(),
                    ),
                    (
                        "argmax",
                        Reduce::Argmax,
                        x.argmax(axis as isize, keepdim)
                            .unwrap()
                            .to_dtype(engine::DType::F32)
                            .unwrap(),
                    ),
                ];
                for (name, how, got) in cases {
                    let (want, mut want_shape) = reference::reduce(&hx, shape, axis, how);
                    if keepdim {
                        want_shape.insert(axis, 1);
                    }
                    assert_eq!(
                        got.shape(),
                        want_shape.as_slice(),
                        "{name} {shape:?} axis {axis}"
                    );
                    let got = got.to_vec().unwrap();
                    if shape[axis] == 1 && matches!(how, Reduce::Var(true)) {
                        assert!(
                            got.iter().all(|v| v.is_nan()),
                            "unbiased var of one value is NaN"
                        );
                        continue;
                    }
                    assert_close(
                        &got,
                        &want,
                        2e-6,
                        2e-6,
                        &format!("{name} {shape:?} axis {axis}"),
                    );
                }
            }
        }
        let argmin = x.argmin(-1, false).unwrap().to_vec_u32().unwrap();
        let (want, _) = reference::reduce(&hx, shape, shape.len() - 1, Reduce::Argmin);
        assert_eq!(argmin, want.iter().map(|&v| v as u32).collect::<Vec<_>>());
    }
}

#[test]
fn whole_tensor_reductions_and_ties() {
    let (x, hx) = rand_tensor(&[33, 65], 7);
    let total: f64 = hx.iter().map(|&v| v as f64).sum();
    assert!((x.sum_all().unwrap().item().unwrap() as f64 - total).abs() < 1e-3);
    assert!((x.mean_all().unwrap().item().unwrap() as f64 - total / hx.len() as f64).abs() < 1e-6);
    let max = hx.iter().cloned().fold(f32::MIN, f32::max);
    assert_eq!(x.max_all().unwrap().item().unwrap(), max);
    assert_eq!(x.sum_all().unwrap().shape(), &[] as &[usize]);
    let (var, _) = reference::reduce(&hx, &[hx.len()], 0, Reduce::Var(true));
    assert_close(
        &[x.var_all(true).unwrap().item().unwrap()],
        &var,
        1e-6,
        1e-5,
        "var_all",
    );
    // Ties: the first index wins, even across workgroup lanes.
    let mut tie = vec![0.0f32; 300];
    tie[70] = 5.0;
    tie[3] = 5.0;
    tie[250] = 5.0;
    let t = Tensor::from_slice(&dev(), &tie, &[300]).unwrap();
    assert_eq!(t.argmax(0, false).unwrap().to_vec_u32().unwrap(), [3]);
    // A strided (transposed) input is made contiguous first.
    let (y, hy) = rand_tensor(&[5, 7], 8);
    let got = y.t().unwrap().sum(1, false).unwrap().to_vec().unwrap();
    let (want, _) = reference::reduce(&hy, &[5, 7], 0, Reduce::Sum);
    assert_close(&got, &want, 1e-6, 1e-6, "sum of transposed view");
}

#[test]
fn long_axes_reduce_in_two_stages() {
    // Few outputs over long axes take the chunked path; odd lengths leave a partial chunk.
    for (shape, axis) in [
        (&[100_003usize][..], 0usize),
        (&[3, 20_001], 1),
        (&[20_001, 2], 0),
    ] {
        let (x, hx) = rand_tensor(shape, 77);
        for (name, how, got) in [
            ("sum", Reduce::Sum, x.sum(axis as isize, false).unwrap()),
            ("mean", Reduce::Mean, x.mean(axis as isize, false).unwrap()),
            ("max", Reduce::Max, x.max(axis as isize, false).unwrap()),
            ("min", Reduce::Min, x.min(axis as isize, false).unwrap()),
            (
                "var",
                Reduce::Var(true),
                x.var(axis as isize, false, true).unwrap(),
            ),
        ] {
            let (want, _) = reference::reduce(&hx, shape, axis, how);
            // f32 sums of 1e5 values in [-2, 2): absolute error of a few 1e-3 at most.
            assert_close(
                &got.to_vec().unwrap(),
                &want,
                5e-3,
                1e-5,
                &format!("{name} {shape:?}"),
            );
        }
    }
}

fn check_matmul(m: usize, k: usize, n: usize, ta: bool, tb: bool, seed: u64) {
    let ha = data(m * k, seed);
    let hb = data(k * n, seed + 1);
    let d = dev();
    // Store the operand transposed and pass its .t() view when asked to.
    let a = if ta {
        Tensor::from_slice(&d, &reference::transpose(&ha, m, k), &[k, m])
            .unwrap()
            .t()
            .unwrap()
    } else {
        Tensor::from_slice(&d, &ha, &[m, k]).unwrap()
    };
    let b = if tb {
        Tensor::from_slice(&d, &reference::transpose(&hb, k, n), &[n, k])
            .unwrap()
            .t()
            .unwrap()
    } else {
        Tensor::from_slice(&d, &hb, &[k, n]).unwrap()
    };
    let got = a.matmul(&b).unwrap();
    assert_eq!(got.shape(), &[m, n]);
    let want = reference::matmul(&ha, &hb, m, k, n);
    assert_close(
        &got.to_vec().unwrap(),
        &want,
        1e-5,
        1e-5,
        &format!("matmul {m}x{k}x{n} ta={ta} tb={tb}"),
    );
}

#[test]
fn matmul_2d_all_transpose_combinations() {
    // Unaligned shapes take the scalar kernel, multiples of 4 the vec4 kernel.
    let shapes = [
        (1, 1, 1),
        (7, 33, 5),
        (33, 7, 65),
        (197, 64, 33),
        (4, 197, 32),
        (65, 1, 9),
        (4, 4, 4),
        (8, 12, 64),
        (36, 20, 68),
        (196, 64, 132),
        (12, 8, 200),
    ];
    for (i, &(m, k, n)) in shapes.iter().enumerate() {
        for ta in [false, true] {
            for tb in [false, true] {
                check_matmul(m, k, n, ta, tb, 200 + i as u64);
            }
        }
    }
}

#[test]
fn matmul_batched_and_broadcast() {
    let d = dev();
    // (3, 7, 5) x (3, 5, 9)
    let (a, ha) = rand_tensor(&[3, 7, 5], 1);
    let (b, hb) = rand_tensor(&[3, 5, 9], 2);
    let got = a.matmul(&b).unwrap().to_vec().unwrap();
    let want: Vec<f32> = (0..3)
        .flat_map(|i| reference::matmul(&ha[i * 35..][..35], &hb[i * 45..][..45], 7, 5, 9))
        .collect();
    assert_close(&got, &want, 1e-5, 1e-5, "batched");
    // (2, 3, 4, 5) x (5, 6): the weight broadcast over both batch axes.
    let (x, hx) = rand_tensor(&[2, 3, 4, 5], 3);
    let (w, hw) = rand_tensor(&[5, 6], 4);
    let got = x.matmul(&w).unwrap();
    assert_eq!(got.shape(), &[2, 3, 4, 6]);
    assert_close(
        &got.to_vec().unwrap(),
        &reference::matmul(&hx, &hw, 24, 5, 6),
        1e-5,
        1e-5,
        "broadcast weight",
    );
    // Attention-style q k^T with k^T a transposed view: (2, 7, 4) x (2, 4, 7).
    let (q, hq) = rand_tensor(&[2, 7, 4], 5);
    let (k, hk) = rand_tensor(&[2, 7, 4], 6);
    let got = q.matmul(&k.t().unwrap()).unwrap().to_vec().unwrap();
    let want: Vec<f32> = (0..2)
        .flat_map(|i| {
            reference::matmul(
                &hq[i * 28..][..28],
                &reference::transpose(&hk[i * 28..][..28], 7, 4),
                7,
                4,
                7,
            )
        })
        .collect();
    assert_close(&got, &want, 1e-5, 1e-5, "q k^T");
    // The same with aligned sizes (the vec4 kernel) and a batch-broadcast weight.
    let (q, hq) = rand_tensor(&[3, 8, 12], 11);
    let (k, hk) = rand_tensor(&[3, 16, 12], 12);
    let got = q.matmul(&k.t().unwrap()).unwrap().to_vec().unwrap();
    let want: Vec<f32> = (0..3)
        .flat_map(|i| {
            reference::matmul(
                &hq[i * 96..][..96],
                &reference::transpose(&hk[i * 192..][..192], 16, 12),
                8,
                12,
                16,
            )
        })
        .collect();
    assert_close(&got, &want, 1e-5, 1e-5, "aligned q k^T");
    let (w, hw) = rand_tensor(&[12, 4], 13);
    let got = q.matmul(&w).unwrap().to_vec().unwrap();
    assert_close(
        &got,
        &reference::matmul(&hq, &hw, 24, 12, 4),
        1e-5,
        1e-5,
        "aligned broadcast weight",
    );
    // Batch axes that need broadcasting on both sides: (2, 1, 3, 4) x (1, 5, 4, 2).
    let (p, hp) = rand_tensor(&[2, 1, 3, 4], 7);
    let (r, hr) = rand_tensor(&[1, 5, 4, 2], 8);
    let got = p.matmul(&r).unwrap();
    assert_eq!(got.shape(), &[2, 5, 3, 2]);
    let got = got.to_vec().unwrap();
    for i in 0..2 {
        for j in 0..5 {
            let want = reference::matmul(&hp[i * 12..][..12], &hr[j * 8..][..8], 3, 4, 2);
            assert_close(
                &got[(i * 5 + j) * 6..][..6],
                &want,
                1e-5,
                1e-5,
                "double broadcast",
            );
        }
    }
    // A narrowed operand (non-zero offset, row stride larger than its width).
    let (big, hbig) = rand_tensor(&[6, 10], 9);
    let sub = big.narrow(1, 3, 4).unwrap(); // (6, 4)
    let (v, hv) = rand_tensor(&[4, 3], 10);
    let hsub: Vec<f32> = (0..6)
        .flat_map(|r| hbig[r * 10 + 3..r * 10 + 7].to_vec())
        .collect();
    assert_close(
        &sub.matmul(&v).unwrap().to_vec().unwrap(),
        &reference::matmul(&hsub, &hv, 6, 4, 3),
        1e-5,
        1e-5,
        "narrowed",
    );
    // K = 0 gives zeros.
    let z = Tensor::zeros(&d, &[3, 0])
        .unwrap()
        .matmul(&Tensor::zeros(&d, &[0, 2]).unwrap())
        .unwrap();
    assert_eq!(z.to_vec().unwrap(), vec![0.0; 6]);
}

#[test]
fn linear_adds_the_bias_in_the_product() {
    // (rows, in, out): aligned (vec4 kernel), ragged (scalar kernel), and in = 0.
    for (i, &(lead, k, n)) in [(&[2, 6][..], 8, 12), (&[3, 5][..], 7, 9), (&[4][..], 0, 3)]
        .iter()
        .enumerate()
    {
        let rows: usize = lead.iter().product();
        let mut xs = lead.to_vec();
        xs.push(k);
        let (x, hx) = rand_tensor(&xs, 500 + i as u64);
        let (w, hw) = rand_tensor(&[n, k], 510 + i as u64);
        let (b, hb) = rand_tensor(&[n], 520 + i as u64);
        let mut want = reference::matmul(&hx, &reference::transpose(&hw, n, k), rows, k, n);
        for (j, v) in want.iter_mut().enumerate() {
            *v += hb[j % n];
        }
        let y = x.linear(&w, Some(&b)).unwrap();
        let mut ys = lead.to_vec();
        ys.push(n);
        assert_eq!(y.shape(), &ys[..]);
        assert_close(
            &y.to_vec().unwrap(),
            &want,
            1e-5,
            1e-5,
            &format!("linear {lead:?}x{k}->{n}"),
        );
        // The bias read through a view with an offset, and no bias at all.
        let (big, hbig) = rand_tensor(&[n + 4], 530 + i as u64);
        let view = big.narrow(0, 4, n).unwrap();
        let no_bias = x.linear(&w, None).unwrap().to_vec().unwrap();
        let with_view = x.linear(&w, Some(&view)).unwrap().to_vec().unwrap();
        for (j, (a, c)) in no_bias.iter().zip(&with_view).enumerate() {
            assert!((a + hbig[4 + j % n] - c).abs() < 1e-5, "bias view at {j}");
        }
    }
    let x = Tensor::zeros(&dev(), &[2, 3]).unwrap();
    let w = Tensor::zeros(&dev(), &[4, 3]).unwrap();
    for (w, b) in [
        (&w, Some(Tensor::zeros(&dev(), &[3]).unwrap())),
        (&w.t().unwrap(), None),
    ] {
        assert!(matches!(
            x.linear(w, b.as_ref()),
            Err(engine::Error::Shape { .. })
        ));
    }
}
