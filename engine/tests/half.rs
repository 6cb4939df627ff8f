//! Mixed precision: the f32 <-> f16 casts against the `half` crate's IEEE rounding, and the
//! products under `autocast_f16` (linear, matmul, attention) against the same products in
//! f32 on operands rounded to f16, forward and backward.

mod common;
use common::*;
use engine::{autocast_f16, reference, Device, DeviceOptions, Error, Features, Tensor};
use half::f16;

fn round(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| f16::from_f32(x).to_f32()).collect()
}

/// `None` (and a line on stderr) where the adapter has no SHADER_F16.
fn f16_dev() -> Option<Device> {
    let d = dev();
    if d.info().features.shader_f16 {
        Some(d)
    } else {
        eprintln!("skipped: the adapter has no SHADER_F16");
        None
    }
}

#[test]
fn casts_round_to_nearest_even_and_overflow_to_infinity() {
    let Some(dev) = f16_dev() else { return };
    let mut x: Vec<f32> = data(3001, 7).iter().map(|v| v * 3.0).collect();
    // Ties between two f16 values (1 + 2^-11 lies between 1 and 1 + 2^-10), subnormals,
    // the largest finite value, values that round past it, and non-finite ones.
    x.extend([
        1.0 + 2f32.powi(-11),
        1.0 + 3.0 * 2f32.powi(-11),
        -(1.0 + 2f32.powi(-11)),
        3e-6,
        -6e-8,
        1e-9,
        65504.0,
        65519.0,
        65520.0,
        -7e4,
        1e6,
        f32::INFINITY,
        f32::NEG_INFINITY,
    ]);
    let t = Tensor::from_slice(&dev, &x, &[x.len()]).unwrap();
    let got = t.to_half().unwrap().to_vec().unwrap();
    for (i, (g, v)) in got.iter().zip(&x).enumerate() {
        let want = f16::from_f32(*v).to_f32();
        assert!(
            g.to_bits() == want.to_bits(),
            "element {i}: {v:e} became {g:e}, IEEE gives {want:e}"
        );
    }
    let nan = Tensor::from_slice(&dev, &[f32::NAN], &[1]).unwrap();
    assert!(nan.to_half().unwrap().to_vec().unwrap()[0].is_nan());
    // An odd count at an odd offset: neighbouring halves share a 32-bit word.
    let view = t.narrow(0, 3, 1001).unwrap();
    let got = view.to_half().unwrap().to_vec().unwrap();
    assert_eq!(got, round(&x[3..1004]));
}

#[test]
fn an_adapter_without_shader_f16_is_refused_in_one_line() {
    let dev = Device::with_options(DeviceOptions {
        without: Features {
            shader_f16: true,
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap();
    let t = Tensor::from_slice(&dev, &[1.0, 2.0], &[2]).unwrap();
    let err = t.to_half().unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "to_half: needs the adapter feature SHADER_F16, which this adapter does not offer"
    );
    let w = Tensor::from_slice(&dev, &[1.0; 4], &[2, 2]).unwrap();
    let x = Tensor::from_slice(&dev, &[1.0; 4], &[2, 2]).unwrap();
    assert!(autocast_f16(|| x.linear(&w, None)).is_err());
}

/// `linear` under autocast: the forward is the f32 product of the rounded operands, and the
/// gradients are products of the rounded upstream gradient with the rounded operands
/// (bias: the plain sum of the gradient), each accumulated in f32.
#[test]
fn autocast_linear_reads_f16_operands_and_accumulates_in_f32() {
    let Some(dev) = f16_dev() else { return };
    let (rows, din, dout) = (37, 24, 20);
    let hx = data(rows * din, 1);
    let hw = data(dout * din, 2);
    let hb = data(dout, 3);
    let hg: Vec<f32> = data(rows * dout, 4).iter().map(|v| v * 1e-3).collect();
    let leaf = |h: &[f32], s: &[usize]| {
        Tensor::from_slice(&dev, h, s)
            .unwrap()
            .requires_grad(true)
            .unwrap()
    };
    let (x, w, b) = (
        leaf(&hx, &[rows, din]),
        leaf(&hw, &[dout, din]),
        leaf(&hb, &[dout]),
    );
    let y = autocast_f16(|| x.linear(&w, Some(&b))).unwrap();
    let g = Tensor::from_slice(&dev, &hg, &[rows, dout]).unwrap();
    let grads = y.backward_with(&g).unwrap();

    let (rx, rw, rg) = (round(&hx), round(&hw), round(&hg));
    let mut want = reference::matmul(&rx, &reference::transpose(&rw, dout, din), rows, din, dout);
    for (i, v) in want.iter_mut().enumerate() {
        *v += hb[i % dout];
    }
    assert_close(&y.to_vec().unwrap(), &want, 1e-5, 1e-5, "forward");
    let dx = reference::matmul(&rg, &rw, rows, dout, din);
    let dw = reference::matmul(&reference::transpose(&rg, rows, dout), &rx, dout, rows, din);
    let db: Vec<f32> = (0..dout)
        .map(|j| (0..rows).map(|r| hg[r * dout + j]).sum())
        .collect();
    let got = |t: &Tensor| grads.get(t).unwrap().to_vec().unwrap();
    assert_close(&got(&x), &dx, 1e-7, 1e-5, "dx");
    assert_close(&got(&w), &dw, 1e-7, 1e-5, "dw");
    assert_close(&got(&b), &db, 1e-7, 1e-5, "db");

    // And against the plain f32 layer: f16's 11 significant bits.
    let y32 = x.linear(&w, Some(&b)).unwrap().to_vec().unwrap();
    let want32 = {
        let mut p = reference::matmul(&hx, &reference::transpose(&hw, dout, din), rows, din, dout);
        p.iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v += hb[i % dout]);
        p
    };
    assert_close(&y32, &want32, 1e-5, 1e-5, "f32 forward");
    assert_close(&y.to_vec().unwrap(), &want32, 2e-2, 2e-3, "f16 vs f32");
}

/// `matmul` and `qkv_attention` under autocast equal the f32 ops on rounded operands.
#[test]
fn autocast_matmul_and_attention_equal_f32_on_rounded_operands() {
    let Some(dev) = f16_dev() else { return };
    let (b, n, d, heads) = (2, 9, 16, 2);
    let hq = data(b * n * 3 * d, 5);
    let hg = data(b * n * d, 6);
    let run = |qkv: &[f32], half: bool| {
        let t = Tensor::from_slice(&dev, qkv, &[b, n, 3 * d])
            .unwrap()
            .requires_grad(true)
            .unwrap();
        let y = if half {
            autocast_f16(|| t.qkv_attention(heads))
        } else {
            t.qkv_attention(heads)
        }
        .unwrap();
        let g = Tensor::from_slice(&dev, &hg, &[b, n, d]).unwrap();
        let grads = y.backward_with(&g).unwrap();
        (
            y.to_vec().unwrap(),
            grads.get(&t).unwrap().to_vec().unwrap(),
        )
    };
    let (y16, g16) = run(&hq, true);
    let (y32, g32) = run(&round(&hq), false);
    assert_close(&y16, &y32, 1e-6, 1e-6, "attention forward");
    assert_close(&g16, &g32, 1e-6, 1e-6, "attention backward");
    let want = reference::qkv_attention(&round(&hq), b, n, d, heads);
    assert_close(&y16, &want, 1e-5, 1e-5, "attention vs reference");

    let (ha, hb) = (data(3 * 5 * 7, 8), data(7 * 6, 9));
    let a = Tensor::from_slice(&dev, &ha, &[3, 5, 7])
        .unwrap()
        .requires_grad(true)
        .unwrap();
    let bt = Tensor::from_slice(&dev, &hb, &[7, 6])
        .unwrap()
        .requires_grad(true)
        .unwrap();
    let y = autocast_f16(|| a.matmul(&bt)).unwrap();
    let want = reference::matmul(&round(&ha), &round(&hb), 15, 7, 6);
    assert_close(&y.to_vec().unwrap(), &want, 1e-5, 1e-5, "matmul forward");
    let grads = y.sum_all().unwrap().backward().unwrap();
    // d(sum)/dB = A^T 1: column sums of the rounded A over all 15 rows.
    let db: Vec<f32> = (0..7)
        .flat_map(|kk| {
            let col: f32 = (0..15).map(|r| round(&ha)[r * 7 + kk]).sum();
            std::iter::repeat_n(col, 6)
        })
        .collect();
    assert_close(
        &grads.get(&bt).unwrap().to_vec().unwrap(),
        &db,
        1e-5,
        1e-5,
        "matmul dB",
    );
}
