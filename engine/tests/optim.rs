//! Optimizers against torch.optim trajectories (fixtures from tools/fixtures/gen_optim.py),
//! state save and load, gradient clipping, and the learning-rate schedule.

mod common;
use common::*;
use engine::{warmup_cosine_lr, AdamW, Gradients, ParamGroup, Sgd, Tensor};
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

#[test]
fn clip_norm_scales_to_the_global_norm() {
    let d = dev();
    let x = Tensor::from_slice(&d, &[3.0, 0.0], &[2])
        .unwrap()
        .requires_grad(true)
        .unwrap();
    let y = Tensor::from_slice(&d, &[4.0], &[1])
        .unwrap()
        .requires_grad(true)
        .unwrap();
    // grads are (2x, 2y) = (6, 0), (8): norm 10.
    let loss = x
        .mul(&x)
        .unwrap()
        .sum_all()
        .unwrap()
        .add(&y.mul(&y).unwrap().sum_all().unwrap())
        .unwrap();
    let mut grads = loss.backward().unwrap();
    let norm = grads.clip_norm(5.0).unwrap();
    assert!((norm.item().unwrap() - 10.0).abs() < 1e-5);
    assert_close(
        &grads.expect(&x).unwrap().to_vec().unwrap(),
        &[3.0, 0.0],
        1e-5,
        1e-5,
        "clipped x",
    );
    assert_close(
        &grads.expect(&y).unwrap().to_vec().unwrap(),
        &[4.0],
        1e-5,
        1e-5,
        "clipped y",
    );
    // Under the limit nothing changes.
    grads.clip_norm(100.0).unwrap();
    assert_close(
        &grads.expect(&y).unwrap().to_vec().unwrap(),
        &[4.0],
        1e-5,
        1e-5,
        "unclipped y",
    );
    assert!(grads.clip_norm(0.0).is_err());
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

#[test]
fn gradients_scale_and_report_a_non_finite_element() {
    let dev = dev();
    let p = Tensor::from_slice(&dev, &[0.0; 3], &[3]).unwrap();
    let q = Tensor::from_slice(&dev, &[0.0; 2], &[2]).unwrap();
    let mut grads = Gradients::default();
    grads
        .insert(
            &p,
            Tensor::from_slice(&dev, &[2.0, -4.0, 8.0], &[3]).unwrap(),
        )
        .unwrap();
    grads
        .insert(&q, Tensor::from_slice(&dev, &[1e30, 6.0], &[2]).unwrap())
        .unwrap();
    grads.scale(0.5).unwrap();
    assert_eq!(grads.get(&p).unwrap().to_vec().unwrap(), [1.0, -2.0, 4.0]);
    assert!(grads.all_finite().unwrap());
    for bad in [f32::INFINITY, f32::NAN] {
        let g = Tensor::from_slice(&dev, &[1.0, bad], &[2]).unwrap();
        grads.insert(&q, g).unwrap();
        assert!(!grads.all_finite().unwrap(), "{bad}");
    }
}
