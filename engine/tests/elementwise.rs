//! Elementwise ops against the CPU reference, on awkward sizes, broadcasts and views.

mod common;
use common::*;
use engine::{reference, BinaryOp, Tensor, UnaryOp};

const SHAPES: &[&[usize]] = &[&[1], &[7], &[33], &[197], &[3, 5, 7], &[2, 1, 65]];

fn unary_ref(op: UnaryOp, x: f32, s: f32) -> f32 {
    let xd = x as f64;
    let r = match op {
        UnaryOp::Neg => -xd,
        UnaryOp::Exp => xd.exp(),
        UnaryOp::Log => xd.ln(),
        UnaryOp::Sqrt => xd.sqrt(),
        UnaryOp::Rsqrt => 1.0 / xd.sqrt(),
        UnaryOp::Abs => xd.abs(),
        UnaryOp::Tanh => xd.tanh(),
        UnaryOp::Sigmoid => 1.0 / (1.0 + (-xd).exp()),
        UnaryOp::Relu => xd.max(0.0),
        UnaryOp::Gelu => return reference::gelu(x),
        UnaryOp::AddScalar => xd + s as f64,
        UnaryOp::MulScalar => xd * s as f64,
        UnaryOp::PowScalar => return reference::pow(x, s),
        UnaryOp::RsubScalar => s as f64 - xd,
        UnaryOp::RdivScalar => s as f64 / xd,
        UnaryOp::MaxScalar => xd.max(s as f64),
        UnaryOp::MinScalar => xd.min(s as f64),
        UnaryOp::Sign => xd.signum() * (xd != 0.0) as u8 as f64,
        UnaryOp::Step => (xd > 0.0) as u8 as f64,
        UnaryOp::GeluGrad => return reference::gelu_grad(x),
    };
    r as f32
}

const UNARY: &[UnaryOp] = &[
    UnaryOp::Neg,
    UnaryOp::Exp,
    UnaryOp::Log,
    UnaryOp::Sqrt,
    UnaryOp::Rsqrt,
    UnaryOp::Abs,
    UnaryOp::Tanh,
    UnaryOp::Sigmoid,
    UnaryOp::Relu,
    UnaryOp::Gelu,
    UnaryOp::AddScalar,
    UnaryOp::MulScalar,
    UnaryOp::PowScalar,
    UnaryOp::RsubScalar,
    UnaryOp::RdivScalar,
    UnaryOp::MaxScalar,
    UnaryOp::MinScalar,
    UnaryOp::Sign,
    UnaryOp::Step,
    UnaryOp::GeluGrad,
];

#[test]
fn unary_ops_match_reference() {
    for (si, shape) in SHAPES.iter().enumerate() {
        let (x, host) = rand_tensor(shape, si as u64);
        // log, sqrt, rsqrt need positive inputs; pow gets a fractional exponent on |x| and
        // an integer one on signed x.
        let (xp, host_p) = {
            let h: Vec<f32> = host.iter().map(|v| v.abs() + 0.1).collect();
            (engine::Tensor::from_slice(&dev(), &h, shape).unwrap(), h)
        };
        for &op in UNARY {
            let positive = matches!(op, UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Rsqrt);
            for s in [0.5f32, 3.0] {
                let (t, h) = if positive || (op == UnaryOp::PowScalar && s == 0.5) {
                    (&xp, &host_p)
                } else {
                    (&x, &host)
                };
                let got = t.unary(op, s).unwrap().to_vec().unwrap();
                let want: Vec<f32> = h.iter().map(|&v| unary_ref(op, v, s)).collect();
                assert_close(&got, &want, 1e-6, 2e-6, &format!("{op:?} s={s} {shape:?}"));
            }
        }
    }
}

#[test]
fn gelu_and_tanh_on_wide_range() {
    let host: Vec<f32> = (-600..=600)
        .map(|i| i as f32 * 0.02)
        .chain([-50.0, 50.0, 1e-5, -1e-5])
        .collect();
    let x = Tensor::from_slice(&dev(), &host, &[host.len()]).unwrap();
    let gelu = x.gelu().unwrap().to_vec().unwrap();
    let want: Vec<f32> = host.iter().map(|&v| reference::gelu(v)).collect();
    assert_close(&gelu, &want, 1e-6, 1e-6, "gelu");
    let tanh = x.tanh().unwrap().to_vec().unwrap();
    let want: Vec<f32> = host.iter().map(|&v| (v as f64).tanh() as f32).collect();
    assert_close(&tanh, &want, 1e-6, 1e-6, "tanh");
    let sig = x.sigmoid().unwrap().to_vec().unwrap();
    assert!(sig.iter().all(|v| v.is_finite()));
}

#[test]
fn pow_follows_torch_conventions() {
    let x = Tensor::from_slice(&dev(), &[-2.0, -2.0, 0.0, 0.0, 0.0, 4.0, -8.0], &[7]).unwrap();
    let y = Tensor::from_slice(&dev(), &[2.0, 3.0, 0.0, 2.0, -1.0, 0.5, 0.5], &[7]).unwrap();
    let got = x.pow(&y).unwrap().to_vec().unwrap();
    assert_eq!(&got[..6], &[4.0, -8.0, 1.0, 0.0, f32::INFINITY, 2.0]);
    assert!(got[6].is_nan());
}

fn binary_ref(op: BinaryOp, a: f32, b: f32) -> f32 {
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        BinaryOp::Pow => reference::pow(a, b),
        BinaryOp::Maximum => a.max(b),
        BinaryOp::Minimum => a.min(b),
    }
}

const BROADCASTS: &[(&[usize], &[usize])] = &[
    (&[7], &[7]),
    (&[197], &[1]),
    (&[3, 1], &[1, 4]),
    (&[2, 3, 33], &[33]),
    (&[197, 1], &[197, 33]),
    (&[], &[3, 5]),
    (&[5, 1, 7], &[1, 6, 1]),
];

#[test]
fn binary_ops_broadcast_like_numpy() {
    let ops = [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Pow,
        BinaryOp::Maximum,
        BinaryOp::Minimum,
    ];
    for (i, (sa, sb)) in BROADCASTS.iter().enumerate() {
        let (a, ha) = rand_tensor(sa, 10 + i as u64);
        let (b, hb) = rand_tensor(sb, 20 + i as u64);
        // pow on a positive base with any exponent
        let ha_pos: Vec<f32> = ha.iter().map(|v| v.abs() + 0.5).collect();
        let a_pos = Tensor::from_slice(&dev(), &ha_pos, sa).unwrap();
        for op in ops {
            let (x, hx) = if op == BinaryOp::Pow {
                (&a_pos, &ha_pos)
            } else {
                (&a, &ha)
            };
            let got = x.binary(op, &b).unwrap();
            let (want, shape) = reference::binary(hx, sa, &hb, sb, |p, q| binary_ref(op, p, q));
            assert_eq!(got.shape(), shape.as_slice());
            assert_close(
                &got.to_vec().unwrap(),
                &want,
                1e-6,
                2e-6,
                &format!("{op:?} {sa:?} {sb:?}"),
            );
        }
    }
}

#[test]
fn elementwise_reads_strided_views() {
    let (x, hx) = rand_tensor(&[5, 7], 3);
    let (y, hy) = rand_tensor(&[7, 5], 4);
    // x^T + y, both (7, 5); x^T is a view with strides (1, 7).
    let got = x.t().unwrap().add(&y).unwrap().to_vec().unwrap();
    let xt = reference::transpose(&hx, 5, 7);
    let want: Vec<f32> = xt.iter().zip(&hy).map(|(a, b)| a + b).collect();
    assert_close(&got, &want, 0.0, 0.0, "transposed add");
    // A narrowed view, then a unary op.
    let got = x.narrow(1, 2, 3).unwrap().exp().unwrap().to_vec().unwrap();
    let want: Vec<f32> = (0..5)
        .flat_map(|r| (2..5).map(move |c| (r, c)))
        .map(|(r, c)| hx[r * 7 + c].exp())
        .collect();
    assert_close(&got, &want, 1e-6, 1e-6, "narrowed exp");
}

#[test]
fn compare_and_where() {
    for (i, (sa, sb)) in BROADCASTS.iter().enumerate() {
        let (a, ha) = rand_tensor(sa, 30 + i as u64);
        let (b, hb) = rand_tensor(sb, 40 + i as u64);
        let mask = a.lt(&b).unwrap();
        let (want_mask, shape) = reference::binary(&ha, sa, &hb, sb, |p, q| (p < q) as u32 as f32);
        let got_mask = mask.to_vec_u32().unwrap();
        assert_eq!(
            got_mask,
            want_mask.iter().map(|&v| v as u32).collect::<Vec<_>>(),
            "lt {sa:?} {sb:?}"
        );
        let picked = Tensor::where_cond(&mask, &a, &b).unwrap();
        assert_eq!(picked.shape(), shape.as_slice());
        let (want, _) = reference::binary(&ha, sa, &hb, sb, |p, q| if p < q { p } else { q });
        assert_close(&picked.to_vec().unwrap(), &want, 0.0, 0.0, "where");
    }
    let x = Tensor::from_slice(&dev(), &[1.0, 2.0, 3.0], &[3]).unwrap();
    let checks: [(&str, Tensor, [u32; 3]); 6] = [
        ("eq", x.eq_scalar(2.0).unwrap(), [0, 1, 0]),
        ("ne", x.ne_scalar(2.0).unwrap(), [1, 0, 1]),
        ("lt", x.lt_scalar(2.0).unwrap(), [1, 0, 0]),
        ("le", x.le_scalar(2.0).unwrap(), [1, 1, 0]),
        ("gt", x.gt_scalar(2.0).unwrap(), [0, 0, 1]),
        ("ge", x.ge_scalar(2.0).unwrap(), [0, 1, 1]),
    ];
    for (name, t, want) in checks {
        assert_eq!(t.to_vec_u32().unwrap(), want, "{name}");
    }
    let y = Tensor::from_slice(&dev(), &[3.0, 2.0, 1.0], &[3]).unwrap();
    assert_eq!(x.eq(&y).unwrap().to_vec_u32().unwrap(), [0, 1, 0]);
    assert_eq!(x.ge(&y).unwrap().to_vec_u32().unwrap(), [0, 1, 1]);
}

#[test]
fn dtype_conversion() {
    let x = Tensor::from_slice(&dev(), &[0.0, 1.9, 7.0, -3.5, 196.0], &[5]).unwrap();
    let u = x.to_dtype(engine::DType::U32).unwrap();
    assert_eq!(u.to_vec_u32().unwrap(), [0, 1, 7, 0, 196]);
    let back = u.to_dtype(engine::DType::F32).unwrap();
    assert_eq!(back.to_vec().unwrap(), [0.0, 1.0, 7.0, 0.0, 196.0]);
}
