//! Optimizers against torch.optim trajectories (fixtures from tools/fixtures/gen_optim.py),
//! state save and load, the step factor (unscaling, clipping, the finite check), and the
//! learning-rate schedule.

mod common;
use common::*;
use engine::{
    warmup_cosine_lr, AdamW, Device, DeviceOptions, GradientFactor, Gradients, ParamGroup, Sgd,
    Tensor,
};
use serde_json::Value;

fn fixture() -> Value {
    let text = include_str!("fixtures/optim.json");
    serde_json::from_str(text).expect("valid fixture")
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// Parameters (3, 4) and (4,), and the gradients of one step as a `Gradients` container.
fn params(case: &Value) -> (Tensor, Tensor) {
    let d = dev();
    let w = Tensor::from_slice(&d, &floats(&case["init"][0]), &[3, 4])
        .unwrap()
        .requires_grad(true)
        .unwrap();
    let b = Tensor::from_slice(&d, &floats(&case["init"][1]), &[4])
        .unwrap()
        .requires_grad(true)
        .unwrap();
    (w, b)
}

fn grads_at(case: &Value, step: usize, w: &Tensor, b: &Tensor) -> Gradients {
    // The gradient of sum(w * gw) + sum(b * gb) is exactly (gw, gb).
    let d = dev();
    let gw = Tensor::from_slice(&d, &floats(&case["grads"][step][0]), &[3, 4]).unwrap();
    let gb = Tensor::from_slice(&d, &floats(&case["grads"][step][1]), &[4]).unwrap();
    let loss = w
        .mul(&gw)
        .unwrap()
        .sum_all()
        .unwrap()
        .add(&b.mul(&gb).unwrap().sum_all().unwrap())
        .unwrap();
    loss.backward().unwrap()
}

#[track_caller]
fn assert_rel(got: &[f32], want: &[f32], what: &str) {
    assert_close(got, want, 1e-6, 1e-5, what);
}

#[test]
fn adamw_matches_torch_for_20_steps_with_groups_and_decay() {
    let f = fixture();
    let case = &f["adamw"];
    let (w, b) = params(case);
    let mut opt = AdamW::new(
        vec![
            ParamGroup::new(vec![w.clone()], 1e-2, 0.05),
            ParamGroup::new(vec![b.clone()], 5e-3, 0.0),
        ],
        (0.9, 0.95),
        1e-8,
    )
    .unwrap();
    for step in 0..20 {
        let grads = grads_at(case, step, &w, &b);
        opt.step(&grads).unwrap();
        assert_rel(
            &w.to_vec().unwrap(),
            &floats(&case["after"][step][0]),
            &format!("adamw w step {step}"),
        );
        assert_rel(
            &b.to_vec().unwrap(),
            &floats(&case["after"][step][1]),
            &format!("adamw b step {step}"),
        );
    }
    assert_eq!(opt.steps(), 20);
}

#[test]
fn sgd_momentum_and_nesterov_match_torch() {
    let f = fixture();
    for (name, nesterov) in [("sgd_momentum", false), ("sgd_nesterov", true)] {
        let case = &f[name];
        let (w, b) = params(case);
        let mut opt = Sgd::new(
            vec![
                ParamGroup::new(vec![w.clone()], 1e-2, 1e-3),
                ParamGroup::new(vec![b.clone()], 2e-2, 0.0),
            ],
            0.9,
            0.0,
            nesterov,
        )
        .unwrap();
        for step in 0..20 {
            opt.step(&grads_at(case, step, &w, &b)).unwrap();
            assert_rel(
                &w.to_vec().unwrap(),
                &floats(&case["after"][step][0]),
                &format!("{name} w {step}"),
            );
            assert_rel(
                &b.to_vec().unwrap(),
                &floats(&case["after"][step][1]),
                &format!("{name} b {step}"),
            );
        }
    }
}

#[test]
fn saved_state_resumes_the_same_trajectory() {
    let f = fixture();
    let case = &f["adamw"];
    let groups = |w: &Tensor, b: &Tensor| {
        vec![
            ParamGroup::new(vec![w.clone()], 1e-2, 0.05),
            ParamGroup::new(vec![b.clone()], 5e-3, 0.0),
        ]
    };
    let (w, b) = params(case);
    let mut opt = AdamW::new(groups(&w, &b), (0.9, 0.95), 1e-8).unwrap();
    for step in 0..10 {
        opt.step(&grads_at(case, step, &w, &b)).unwrap();
    }
    let state = opt.state().unwrap();
    assert_eq!(state.step, 10);
    assert_eq!(state.tensors.len(), 4);
    // A fresh optimizer over copies of the parameters, loaded from the state.
    let w2 = Tensor::from_slice(&dev(), &w.to_vec().unwrap(), &[3, 4])
        .unwrap()
        .requires_grad(true)
        .unwrap();
    let b2 = Tensor::from_slice(&dev(), &b.to_vec().unwrap(), &[4])
        .unwrap()
        .requires_grad(true)
        .unwrap();
    let mut resumed = AdamW::new(groups(&w2, &b2), (0.9, 0.95), 1e-8).unwrap();
    resumed.load_state(&state).unwrap();
    for step in 10..20 {
        resumed.step(&grads_at(case, step, &w2, &b2)).unwrap();
    }
    assert_rel(
        &w2.to_vec().unwrap(),
        &floats(&case["after"][19][0]),
        "resumed w",
    );
    assert_rel(
        &b2.to_vec().unwrap(),
        &floats(&case["after"][19][1]),
        "resumed b",
    );
    // A state for another layout is refused with every problem named.
    let (x, _) = rand_tensor(&[5], 1);
    let mut other = AdamW::new(
        vec![ParamGroup::new(
            vec![x.requires_grad(true).unwrap()],
            1e-3,
            0.0,
        )],
        (0.9, 0.95),
        1e-8,
    )
    .unwrap();
    let e = other.load_state(&state).unwrap_err().to_string();
    assert!(
        e.contains("0.0.exp_avg: shape [3, 4]") && e.contains("match no parameter"),
        "{e}"
    );
    // Moments missing after steps, not finite, or a negative second moment are refused,
    // not replaced by fresh ones.
    let mut edit = |f: &dyn Fn(&mut engine::OptimizerState)| {
        let mut s = state.clone();
        f(&mut s);
        resumed.load_state(&s).unwrap_err().to_string()
    };
    let e = edit(&|s| s.tensors.retain(|(n, _, _)| !n.starts_with("1.0.")));
    assert!(
        e.contains("1.0: 0 of its 2 state tensors after 10 steps"),
        "{e}"
    );
    let e = edit(&|s| s.tensors[0].2[1] = f32::NAN);
    assert!(e.contains("0.0.exp_avg: values that are not finite"), "{e}");
    let e = edit(&|s| s.tensors[1].2[0] = -1.0);
    assert!(e.contains("0.0.exp_avg_sq: negative values"), "{e}");
}

/// Two parameters with gradients `g` (`[2]` and `[1]`), in one group.
fn two_with_gradients(d: &Device, g: [&[f32]; 2]) -> (Vec<ParamGroup>, Gradients) {
    let mut grads = Gradients::default();
    let mut params = Vec::new();
    for values in g {
        let p = Tensor::zeros(d, &[values.len()])
            .unwrap()
            .requires_grad(true)
            .unwrap();
        grads
            .insert(&p, Tensor::from_slice(d, values, &[values.len()]).unwrap())
            .unwrap();
        params.push(p);
    }
    (vec![ParamGroup::new(params, 0.1, 0.01)], grads)
}

#[test]
fn the_step_factor_unscales_and_clips_to_the_global_norm() {
    let d = dev();
    // Scaled by 4, the gradients (6, 0) and (8): norm 10 once unscaled.
    let (groups, grads) = two_with_gradients(&d, [&[24.0, 0.0], &[32.0]]);
    let f = GradientFactor::new(&groups, &grads, 0.25, Some(5.0)).unwrap();
    assert!((f.norm().unwrap().item().unwrap() - 10.0).abs() < 1e-5);
    let k = f.factor().unwrap().item().unwrap();
    assert!((k / (0.25 * 5.0 / 10.0) - 1.0).abs() < 1e-6, "{k}");
    assert!(f.all_finite().unwrap());
    // Under the limit only the scale comes out.
    let f = GradientFactor::new(&groups, &grads, 0.25, Some(100.0)).unwrap();
    assert_eq!(f.factor().unwrap().item().unwrap(), 0.25);
    let f = GradientFactor::new(&groups, &grads, 0.25, None).unwrap();
    assert_eq!(f.factor().unwrap().item().unwrap(), 0.25);
    for (unscale, max_norm) in [
        (0.0, None),
        (f32::NAN, None),
        (1.0, Some(0.0)),
        (1.0, Some(-1.0)),
    ] {
        let e = GradientFactor::new(&groups, &grads, unscale, max_norm)
            .err()
            .unwrap();
        assert!(e.to_string().contains("must be positive"), "{e}");
    }
}

/// An update through a factor is the update of gradients unscaled and clipped first, as
/// `GradScaler.unscale_` and `clip_grad_norm_` leave them for `torch.optim`: to the bit,
/// since the factor's scale is a power of two.
#[test]
fn an_update_through_the_factor_is_the_update_of_clipped_gradients() {
    let d = dev();
    // Scaled by 4, the gradients (2, -3) and (6): norm 7 once unscaled.
    let raw: [&[f32]; 2] = [&[8.0, -12.0], &[24.0]];
    let (groups, grads) = two_with_gradients(&d, raw);
    let factor = GradientFactor::new(&groups, &grads, 0.25, Some(5.0)).unwrap();
    let k = factor.factor().unwrap().item().unwrap();
    assert!((k / (0.25 * 5.0 / 7.0) - 1.0).abs() < 1e-6, "{k}");
    let clipped: Vec<Vec<f32>> = raw
        .iter()
        .map(|g| g.iter().map(|v| v * k).collect())
        .collect();
    let (plain_groups, plain_grads) = two_with_gradients(&d, [&clipped[0], &clipped[1]]);
    // An eps of the gradients' size: AdamW is otherwise blind to a factor on every gradient.
    let mut through = AdamW::new(groups.clone(), (0.9, 0.95), 1.0).unwrap();
    let mut plain = AdamW::new(plain_groups.clone(), (0.9, 0.95), 1.0).unwrap();
    let mut sgd_through = Sgd::new(groups.clone(), 0.9, 0.0, true).unwrap();
    let mut sgd_plain = Sgd::new(plain_groups.clone(), 0.9, 0.0, true).unwrap();
    for _ in 0..3 {
        through.step_with(&grads, Some(&factor)).unwrap();
        plain.step(&plain_grads).unwrap();
        sgd_through.step_with(&grads, Some(&factor)).unwrap();
        sgd_plain.step(&plain_grads).unwrap();
    }
    for (a, b) in groups[0].params.iter().zip(&plain_groups[0].params) {
        assert_eq!(a.to_vec().unwrap(), b.to_vec().unwrap());
        assert_ne!(
            a.to_vec().unwrap(),
            vec![0.0; a.numel()],
            "the step moved the parameters"
        );
    }
}

/// Gradients large enough for many workgroups each: the norm against a double-precision
/// sum, and one non-finite element anywhere is seen. Also on poisoned workgroup memory.
#[test]
fn the_factor_sees_every_element_of_every_gradient() {
    let plain = dev();
    let poisoned = Device::with_options(DeviceOptions {
        poison_workgroup_memory: true,
        ..Default::default()
    })
    .unwrap();
    for d in [&plain, &poisoned] {
        let sizes = [5000usize, 3, 300_000, 1024];
        let values: Vec<Vec<f32>> = sizes
            .iter()
            .enumerate()
            .map(|(t, &n)| {
                (0..n)
                    .map(|i| ((i * 7 + t * 13) % 23) as f32 / 23.0 - 0.4)
                    .collect()
            })
            .collect();
        let mut grads = Gradients::default();
        let mut params = Vec::new();
        for v in &values {
            let p = Tensor::zeros(d, &[v.len()])
                .unwrap()
                .requires_grad(true)
                .unwrap();
            grads
                .insert(&p, Tensor::from_slice(d, v, &[v.len()]).unwrap())
                .unwrap();
            params.push(p);
        }
        let groups = vec![ParamGroup::new(params.clone(), 0.1, 0.0)];
        let want = values
            .iter()
            .flatten()
            .map(|&v| (v as f64 / 2.0).powi(2))
            .sum::<f64>()
            .sqrt();
        let f = GradientFactor::new(&groups, &grads, 0.5, None).unwrap();
        let got = f.norm().unwrap().item().unwrap() as f64;
        assert!((got - want).abs() <= 1e-5 * want, "norm {got} vs {want}");
        assert!(f.all_finite().unwrap());
        for (t, at) in [(0, 4999), (2, 123_456), (2, 299_999), (3, 0)] {
            for bad in [f32::INFINITY, f32::NAN] {
                let mut v = values[t].clone();
                v[at] = bad;
                grads
                    .insert(&params[t], Tensor::from_slice(d, &v, &[v.len()]).unwrap())
                    .unwrap();
                let f = GradientFactor::new(&groups, &grads, 0.5, None).unwrap();
                assert!(!f.all_finite().unwrap(), "{bad} in gradient {t} at {at}");
                let good = &values[t];
                grads
                    .insert(
                        &params[t],
                        Tensor::from_slice(d, good, &[good.len()]).unwrap(),
                    )
                    .unwrap();
            }
        }
    }
}

#[test]
fn lr_schedule_matches_the_reference_formula() {
    let f = fixture();
    for pair in f["lr_schedule"].as_array().unwrap() {
        let (epoch, want) = (pair[0].as_f64().unwrap(), pair[1].as_f64().unwrap());
        let got = warmup_cosine_lr(epoch, 1.5e-4, 1e-6, 2.0, 10.0);
        assert!(
            (got - want).abs() <= 1e-12 + 1e-9 * want.abs(),
            "epoch {epoch}: {got} vs {want}"
        );
    }
}

#[test]
fn bad_parameters_are_refused() {
    let d = dev();
    let plain = Tensor::zeros(&d, &[3]).unwrap();
    let e = AdamW::new(
        vec![ParamGroup::new(vec![plain], 1e-3, 0.0)],
        (0.9, 0.999),
        1e-8,
    )
    .err()
    .unwrap();
    assert!(
        e.to_string()
            .contains("must be contiguous and require grad"),
        "{e}"
    );
    let view = Tensor::zeros(&d, &[3, 2])
        .unwrap()
        .requires_grad(true)
        .unwrap()
        .t()
        .unwrap();
    assert!(Sgd::new(
        vec![ParamGroup::new(vec![view], 1e-3, 0.0)],
        0.9,
        0.0,
        false
    )
    .is_err());
}

#[test]
fn a_parameter_without_a_gradient_stops_the_step_and_changes_nothing() {
    let d = dev();
    let w = Tensor::from_slice(&d, &[1.0, 2.0], &[2])
        .unwrap()
        .requires_grad(true)
        .unwrap();
    let b = Tensor::from_slice(&d, &[3.0], &[1])
        .unwrap()
        .requires_grad(true)
        .unwrap();
    // A loss that reaches w only, as after b was replaced by a new tensor.
    let grads = w.sum_all().unwrap().backward().unwrap();
    let groups = || vec![ParamGroup::new(vec![w.clone(), b.clone()], 0.1, 0.0)];
    let mut adamw = AdamW::new(groups(), (0.9, 0.999), 1e-8).unwrap();
    let e = adamw.step(&grads).unwrap_err().to_string();
    assert!(e.contains("1 of its 2 parameters got no gradient"), "{e}");
    assert!(e.contains("group 0 parameter 1 [1]"), "{e}");
    assert_eq!(adamw.steps(), 0);
    let mut sgd = Sgd::new(groups(), 0.9, 0.0, false).unwrap();
    assert!(sgd.step(&grads).is_err());
    assert_eq!(w.to_vec().unwrap(), [1.0, 2.0], "nothing updated");
    assert_eq!(b.to_vec().unwrap(), [3.0]);
}
