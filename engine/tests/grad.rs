//! Gradients: every differentiable op and a few composites pass gradcheck; gradcheck itself
//! fails on a wrong rule; autodiff misuse gives clear errors; the graph is freed.

mod common;
use common::*;
use engine::{gradcheck, no_grad, AttentionKernel, Error, GradcheckOptions, Result, Tensor};

/// Data in [-2, 2) pushed at least `gap` away from 0 (for kinks at 0).
fn away(shape: &[usize], seed: u64, gap: f32) -> Tensor {
    let h: Vec<f32> = data(numel(shape), seed)
        .iter()
        .map(|v| v + gap.copysign(*v))
        .collect();
    Tensor::from_slice(&dev(), &h, shape).unwrap()
}

/// Data on the grid `offset + 0.2 k`: two tensors with offsets 0 and 0.1 never come within
/// 0.1 of each other (no ties for maximum and minimum).
fn on_grid(shape: &[usize], seed: u64, offset: f32) -> Tensor {
    let h: Vec<f32> = data(numel(shape), seed)
        .iter()
        .map(|v| (v * 5.0).round() * 0.2 + offset)
        .collect();
    Tensor::from_slice(&dev(), &h, shape).unwrap()
}

fn positive(shape: &[usize], seed: u64) -> Tensor {
    let h: Vec<f32> = data(numel(shape), seed)
        .iter()
        .map(|v| v.abs() + 0.5)
        .collect();
    Tensor::from_slice(&dev(), &h, shape).unwrap()
}

#[track_caller]
fn check(what: &str, inputs: &[&Tensor], f: impl Fn(&[Tensor]) -> Result<Tensor>) {
    let inputs: Vec<Tensor> = inputs.iter().map(|t| (*t).clone()).collect();
    let report = gradcheck(f, &inputs, GradcheckOptions::default()).unwrap();
    assert!(report.passed, "{what}: {report}");
    assert!(report.checked > 0);
}

#[test]
fn unary_ops() {
    let x = away(&[3, 5], 1, 0.1);
    let p = positive(&[7], 2);
    check("neg", &[&x], |t| t[0].neg());
    check("exp", &[&x], |t| t[0].exp());
    check("log", &[&p], |t| t[0].log());
    check("sqrt", &[&p], |t| t[0].sqrt());
    check("rsqrt", &[&p], |t| t[0].rsqrt());
    check("abs", &[&x], |t| t[0].abs());
    check("tanh", &[&x], |t| t[0].tanh());
    check("sigmoid", &[&x], |t| t[0].sigmoid());
    check("relu", &[&x], |t| t[0].relu());
    check("gelu", &[&x], |t| t[0].gelu());
    check("add_scalar", &[&x], |t| t[0].add_scalar(3.0));
    check("mul_scalar", &[&x], |t| t[0].mul_scalar(-1.5));
    check("pow_scalar", &[&p], |t| t[0].pow_scalar(2.5));
    check("rsub_scalar", &[&x], |t| t[0].rsub_scalar(2.0));
    check("rdiv_scalar", &[&p], |t| t[0].rdiv_scalar(2.0));
    check("clamp_min", &[&x], |t| t[0].clamp_min(0.0));
    check("clamp_max", &[&x], |t| t[0].clamp_max(0.0));
    check("sub_scalar/div_scalar", &[&x], |t| {
        t[0].sub_scalar(1.0)?.div_scalar(4.0)
    });
}

#[test]
fn binary_ops_with_broadcasting() {
    for (sa, sb) in [
        (&[3usize, 4][..], &[4usize][..]),
        (&[2, 1, 3], &[4, 1]),
        (&[5], &[5]),
    ] {
        let a = away(sa, 3, 0.1);
        let b = away(sb, 4, 0.1);
        let pa = positive(sa, 5);
        let pb = positive(sb, 6);
        let w = format!("{sa:?} {sb:?}");
        check(&format!("add {w}"), &[&a, &b], |t| t[0].add(&t[1]));
        check(&format!("sub {w}"), &[&a, &b], |t| t[0].sub(&t[1]));
        check(&format!("mul {w}"), &[&a, &b], |t| t[0].mul(&t[1]));
        check(&format!("div {w}"), &[&a, &pb], |t| t[0].div(&t[1]));
        check(&format!("pow {w}"), &[&pa, &b], |t| t[0].pow(&t[1]));
        let (ga, gb) = (on_grid(sa, 3, 0.0), on_grid(sb, 4, 0.1));
        check(&format!("maximum {w}"), &[&ga, &gb], |t| {
            t[0].maximum(&t[1])
        });
        check(&format!("minimum {w}"), &[&ga, &gb], |t| {
            t[0].minimum(&t[1])
        });
    }
    let c = Tensor::from_slice_u32(&dev(), &[1, 0, 1, 1], &[4]).unwrap();
    check(
        "where",
        &[&away(&[3, 4], 7, 0.1), &away(&[4], 8, 0.1)],
        move |t| Tensor::where_cond(&c, &t[0], &t[1]),
    );
}

#[test]
fn reductions() {
    let x = away(&[3, 4, 5], 9, 0.0);
    for axis in [0isize, 1, -1] {
        for keepdim in [false, true] {
            check("sum", &[&x], |t| t[0].sum(axis, keepdim));
            check("mean", &[&x], |t| t[0].mean(axis, keepdim));
            check("max", &[&x], |t| t[0].max(axis, keepdim));
            check("min", &[&x], |t| t[0].min(axis, keepdim));
            check("var", &[&x], |t| t[0].var(axis, keepdim, true));
        }
    }
    check("sum_all", &[&x], |t| t[0].sum_all());
    check("mean_all", &[&x], |t| t[0].mean_all());
    check("var_all biased", &[&x], |t| t[0].var_all(false));
    check("sum_to", &[&x], |t| t[0].sum_to(&[4, 1]));
}

#[test]
fn matmul_and_transposed_operands() {
    let a = away(&[5, 3], 10, 0.0);
    let b = away(&[3, 4], 11, 0.0);
    check("matmul", &[&a, &b], |t| t[0].matmul(&t[1]));
    check("matmul a^T b^T", &[&a, &b], |t| {
        t[1].t()?.matmul(&t[0].t()?)
    });
    let x = away(&[2, 5, 3], 12, 0.0);
    check("batched, broadcast weight", &[&x, &b], |t| {
        t[0].matmul(&t[1])
    });
    let w = away(&[4, 3], 16, 0.0);
    check("batched, broadcast transposed weight", &[&x, &w], |t| {
        t[0].matmul(&t[1].t()?)
    });
    let k = away(&[2, 4, 3], 13, 0.0);
    check("q k^T", &[&x, &k], |t| t[0].matmul(&t[1].t()?));
    let aligned_a = away(&[4, 8], 14, 0.0);
    let aligned_b = away(&[8, 4], 15, 0.0);
    check("matmul vec4 path", &[&aligned_a, &aligned_b], |t| {
        t[0].matmul(&t[1])
    });
}

#[test]
fn views_and_copies() {
    let x = away(&[2, 3, 4], 16, 0.0);
    check("reshape", &[&x], |t| t[0].reshape(&[6, 4]));
    check("permute", &[&x], |t| t[0].permute(&[2, 0, 1])?.contiguous());
    check("transpose+reshape", &[&x], |t| {
        t[0].transpose(0, 2)?.reshape(&[24])
    });
    check("narrow", &[&x], |t| t[0].narrow(2, 1, 2));
    check("unsqueeze/squeeze", &[&x], |t| {
        t[0].unsqueeze(1)?.squeeze(1)?.unsqueeze(-1)
    });
    check("broadcast_to", &[&away(&[3, 1], 17, 0.0)], |t| {
        t[0].broadcast_to(&[2, 3, 4])
    });
    let y = away(&[2, 2, 4], 18, 0.0);
    check("concat", &[&x, &y], |t| {
        Tensor::concat(&[&t[0], &t[1], &t[0]], 1)
    });
}

#[test]
fn fused_row_ops() {
    let x = away(&[4, 7], 19, 0.0);
    check("softmax", &[&x], |t| t[0].softmax());
    let w = away(&[7], 20, 0.0);
    let b = away(&[7], 21, 0.0);
    check("layer_norm", &[&x, &w, &b], |t| {
        t[0].layer_norm(&t[1], &t[2], 1e-5)
    });
    let targets = Tensor::from_slice_u32(&dev(), &[3, 0, 6, 3], &[4]).unwrap();
    for eps in [0.0f32, 0.1] {
        let tg = targets.clone();
        check("cross_entropy", &[&x], move |t| {
            t[0].cross_entropy(&tg, eps)
        });
    }
    check("dropout", &[&x], |t| t[0].dropout(0.3, 5));
}

#[test]
fn indexing() {
    let x = away(&[3, 5, 2], 22, 0.0);
    // Repeated indices accumulate.
    let idx = Tensor::from_slice_u32(&dev(), &[4, 4, 0, 1, 1, 1, 2, 3, 0], &[3, 3, 1]).unwrap();
    let idx = idx.broadcast_to(&[3, 3, 2]).unwrap();
    check("gather (expanded index)", &[&x], move |t| {
        t[0].gather(1, &idx)
    });
    let sel = Tensor::from_slice_u32(&dev(), &[2, 0, 2], &[3]).unwrap();
    check("index_select", &[&x], move |t| t[0].index_select(0, &sel));
}

#[test]
fn composites() {
    let a = away(&[4, 6], 23, 0.0);
    let b = away(&[6, 5], 24, 0.0);
    check("softmax(matmul)", &[&a, &b], |t| {
        t[0].matmul(&t[1])?.softmax()
    });
    // One attention head with projections, residual and layer norm: (tokens 5, width 4).
    let x = away(&[5, 4], 25, 0.0);
    let wq = away(&[4, 4], 26, 0.0).mul_scalar(0.5).unwrap();
    let wk = away(&[4, 4], 27, 0.0).mul_scalar(0.5).unwrap();
    let wv = away(&[4, 4], 28, 0.0).mul_scalar(0.5).unwrap();
    let g = away(&[4], 29, 0.0);
    let bias = away(&[4], 30, 0.0);
    check("attention block", &[&x, &wq, &wk, &wv, &g, &bias], |t| {
        let h = t[0].layer_norm(&t[4], &t[5], 1e-6)?;
        let (q, k, v) = (h.matmul(&t[1])?, h.matmul(&t[2])?, h.matmul(&t[3])?);
        let attn = q.matmul(&k.t()?)?.mul_scalar(0.5)?.softmax()?;
        t[0].add(&attn.matmul(&v)?.gelu()?)
    });
}

#[test]
fn linear_with_and_without_bias() {
    let x = away(&[2, 3, 5], 34, 0.0);
    let w = away(&[4, 5], 35, 0.0);
    let b = away(&[4], 36, 0.0);
    check("linear", &[&x, &w, &b], |t| t[0].linear(&t[1], Some(&t[2])));
    check("linear without bias", &[&x, &w], |t| {
        t[0].linear(&t[1], None)
    });
}

#[test]
fn fused_attention() {
    // (B 2, N 5, heads 2 of 3): every element of q, k and v is perturbed.
    for kernel in [AttentionKernel::Rows, AttentionKernel::Tiled] {
        let qkv = away(&[2, 5, 18], 31, 0.0);
        check(&format!("{kernel:?} qkv_attention"), &[&qkv], |t| {
            t[0].qkv_attention_with(2, kernel)
        });
        // Larger than gradcheck affords, over several tiles of rows and keys.
        fused_attention_gradient_equals_unfused(kernel, (2, 13, 32, 4));
        fused_attention_gradient_equals_unfused(kernel, (1, 130, 64, 1));
    }
}

/// The gradient of the fused attention equals the unfused ops' (exactly in law).
fn fused_attention_gradient_equals_unfused(
    kernel: AttentionKernel,
    (b, n, d, h): (usize, usize, usize, usize),
) {
    let qkv = away(&[b, n, 3 * d], 32, 0.0).requires_grad(true).unwrap();
    let g = away(&[b, n, d], 33, 0.0);
    let unfused = |x: &Tensor| -> Result<Tensor> {
        let x = x.reshape(&[b, n, 3, h, d / h])?.permute(&[2, 0, 3, 1, 4])?;
        let part = |i| x.narrow(0, i, 1)?.squeeze(0);
        let (q, k, v) = (part(0)?, part(1)?, part(2)?);
        let attn = q
            .matmul(&k.t()?)?
            .mul_scalar((d as f32 / h as f32).powf(-0.5))?
            .softmax()?;
        attn.matmul(&v)?.permute(&[0, 2, 1, 3])?.reshape(&[b, n, d])
    };
    let grad_of = |y: Tensor| {
        y.mul(&g)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap()
            .expect(&qkv)
            .unwrap()
            .to_vec()
            .unwrap()
    };
    let fused = grad_of(qkv.qkv_attention_with(h, kernel).unwrap());
    let reference = grad_of(unfused(&qkv).unwrap());
    assert_close(
        &fused,
        &reference,
        1e-5,
        1e-4,
        &format!("{kernel:?} fused against unfused attention gradient, {b}x{n}x{d}/{h}"),
    );
}

/// `y = s * x * exp(x)`, whose gradient is `s * (1 + x) * exp(x)`, with a gradient rule
/// that may be wrong: `Honest`, `TenPercentOff` (1.1 times the truth) or `DropsTerm` (the
/// product rule without its `x * exp(x)` term).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Rule {
    Honest,
    TenPercentOff,
    DropsTerm,
}

fn scaled_x_exp_x(s: f32, rule: Rule) -> impl Fn(&[Tensor]) -> Result<Tensor> {
    move |t: &[Tensor]| {
        let x = t[0].clone();
        let y = no_grad(|| x.mul(&x.exp()?)?.mul_scalar(s))?;
        let saved = x.detach();
        Ok(y.with_backward("x_exp_x", &[&x], move |g| {
            let e = saved.exp()?;
            let dx = match rule {
                Rule::Honest => saved.add_scalar(1.0)?.mul(&e)?,
                Rule::TenPercentOff => saved.add_scalar(1.0)?.mul(&e)?.mul_scalar(1.1)?,
                Rule::DropsTerm => e,
            };
            Ok(vec![Some(g.mul(&dx)?.mul_scalar(s)?)])
        }))
    }
}

#[test]
fn gradcheck_catches_wrong_rules_at_every_gradient_scale() {
    let x = away(&[16], 31, 0.0);
    for s in [1.0f32, 1e-2, 1e-4] {
        let run = |rule| {
            gradcheck(
                scaled_x_exp_x(s, rule),
                std::slice::from_ref(&x),
                GradcheckOptions::default(),
            )
            .unwrap()
        };
        let honest = run(Rule::Honest);
        assert!(honest.passed, "scale {s}: honest rule: {honest}");
        for rule in [Rule::TenPercentOff, Rule::DropsTerm] {
            let report = run(rule);
            assert!(!report.passed, "scale {s}: {rule:?} passed: {report}");
            assert!(report.to_string().contains("FAILED"));
            let worst = report.worst.clone().unwrap();
            assert_eq!(worst.input, 0);
            if rule == Rule::TenPercentOff {
                assert!(
                    (worst.analytic / worst.numeric - 1.1).abs() < 0.01,
                    "scale {s}: {report}"
                );
            }
        }
    }
}

#[test]
fn gradcheck_sees_a_missing_gradient_but_not_rounding() {
    // A gradient the rule forgets, at the magnitude of real parameter gradients.
    let x = away(&[8], 37, 0.0);
    let forgotten = |t: &[Tensor]| -> Result<Tensor> {
        let y = no_grad(|| t[0].mul_scalar(1e-3))?;
        Ok(y.with_backward("forgotten", &[&t[0]], |_| Ok(vec![None])))
    };
    let report = gradcheck(
        forgotten,
        std::slice::from_ref(&x),
        GradcheckOptions::default(),
    )
    .unwrap();
    assert!(!report.passed, "{report}");
    // A gradient that is zero in exact arithmetic, where the numeric side sees only f32
    // rounding: softmax ignores a shift of the whole row (as attention ignores the key bias).
    let rows = away(&[4, 9], 38, 0.0);
    let shift = away(&[4, 1], 39, 0.0);
    let report = gradcheck(
        |t| t[0].add(&t[1])?.softmax(),
        &[rows, shift],
        GradcheckOptions::default(),
    )
    .unwrap();
    assert!(report.passed, "{report}");
}

#[test]
fn autodiff_misuse_is_a_clear_error() {
    let d = dev();
    let x = Tensor::ones(&d, &[3]).unwrap().requires_grad(true).unwrap();
    let y = x.mul_scalar(2.0).unwrap();
    let e = y.backward().unwrap_err();
    assert!(matches!(e, Error::Shape { op: "backward", .. }), "{e}");
    assert!(e.to_string().contains("needs a scalar"));
    let loss = y.sum_all().unwrap();
    let grads = loss.backward().unwrap();
    assert_eq!(grads.expect(&x).unwrap().to_vec().unwrap(), [2.0; 3]);
    let e = loss.backward().unwrap_err();
    assert!(
        e.to_string()
            .contains("already used by an earlier backward"),
        "{e}"
    );
    let c = Tensor::ones(&d, &[3]).unwrap();
    let e = grads.expect(&c).unwrap_err();
    assert!(e.to_string().contains("does not require grad"), "{e}");
    let e = c.sum_all().unwrap().backward().unwrap_err();
    assert!(e.to_string().contains("does not require grad"), "{e}");
    assert!(Tensor::arange_u32(&d, 3)
        .unwrap()
        .requires_grad(true)
        .is_err());
}

#[test]
fn no_grad_detach_and_accumulation() {
    let d = dev();
    let x = Tensor::from_slice(&d, &[1.0, 2.0], &[2])
        .unwrap()
        .requires_grad(true)
        .unwrap();
    assert!(!no_grad(|| x.mul(&x)).unwrap().is_tracked());
    assert!(!x.detach().mul(&x.detach()).unwrap().is_tracked());
    // d/dx sum(x * detach(x)) = detach(x)
    let grads = x
        .mul(&x.detach())
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert_eq!(grads.expect(&x).unwrap().to_vec().unwrap(), [1.0, 2.0]);
    // Two micro-batches accumulate: 2 * (2x).
    let mut grads = engine::Gradients::default();
    for _ in 0..2 {
        let loss = x.mul(&x).unwrap().sum_all().unwrap();
        let one = Tensor::ones(&d, &[]).unwrap();
        loss.backward_into(&one, &mut grads).unwrap();
    }
    assert_eq!(grads.expect(&x).unwrap().to_vec().unwrap(), [4.0, 8.0]);
    // Ties of maximum split the gradient, as in PyTorch.
    let y = Tensor::from_slice(&d, &[1.0, 0.0], &[2])
        .unwrap()
        .requires_grad(true)
        .unwrap();
    let grads = x
        .maximum(&y)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert_eq!(grads.expect(&x).unwrap().to_vec().unwrap(), [0.5, 1.0]);
    assert_eq!(grads.expect(&y).unwrap().to_vec().unwrap(), [0.5, 0.0]);
}

#[test]
fn graph_and_activations_are_freed() {
    // 1,000 training steps (forward, backward, AdamW) of a small MLP on a private device:
    // live pool bytes do not grow, so graphs and saved activations are freed.
    let d = engine::Device::new().unwrap();
    let w1 = Tensor::randn(&d, &[8, 16], 1)
        .unwrap()
        .mul_scalar(0.3)
        .unwrap()
        .requires_grad(true)
        .unwrap();
    let w2 = Tensor::randn(&d, &[16, 4], 2)
        .unwrap()
        .mul_scalar(0.3)
        .unwrap()
        .requires_grad(true)
        .unwrap();
    let x = Tensor::randn(&d, &[32, 8], 3).unwrap();
    let targets =
        Tensor::from_slice_u32(&d, &(0..32).map(|i| i % 4).collect::<Vec<_>>(), &[32]).unwrap();
    let mut opt = engine::AdamW::new(
        vec![engine::ParamGroup::new(
            vec![w1.clone(), w2.clone()],
            1e-2,
            0.05,
        )],
        (0.9, 0.95),
        1e-8,
    )
    .unwrap();
    let mut step = || {
        let h = x.matmul(&w1).unwrap().gelu().unwrap();
        let loss = h
            .matmul(&w2)
            .unwrap()
            .cross_entropy(&targets, 0.0)
            .unwrap()
            .mean_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        assert_eq!(grads.len(), 2);
        opt.step(&grads).unwrap();
    };
    for _ in 0..10 {
        step();
    }
    d.synchronize().unwrap();
    let live = d.pool_stats().live_bytes;
    for _ in 0..990 {
        step();
    }
    d.synchronize().unwrap();
    assert_eq!(
        d.pool_stats().live_bytes,
        live,
        "live bytes grew over 1,000 steps"
    );
}

#[test]
fn a_shared_weight_gets_one_gradient_product() {
    // 64 batches of (8, 96) rows against one (96, 64) weight: a per-batch stack of weight
    // gradients would be 64 x 96 x 64 floats (1.6 MB); the weight's own gradient is 24 KB.
    let x = Tensor::randn(&dev(), &[64, 8, 96], 1).unwrap();
    let w = Tensor::randn(&dev(), &[96, 64], 2)
        .unwrap()
        .requires_grad(true)
        .unwrap();
    let y = x.matmul(&w).unwrap();
    let backward = || y.sum_all().unwrap().backward().unwrap();
    let (grads, growth) = y.device().peak_growth(backward).unwrap();
    assert_eq!(grads.expect(&w).unwrap().shape(), [96, 64]);
    assert!(growth < 800_000, "backward took {growth} bytes more");
}
