//! `--precision f16-mixed`: an MAE step agrees with fp32 (with and without activation
//! checkpointing) and keeps less, a short run's losses track fp32's, a resumed run continues
//! the loss scaler exactly, an overflowing step is skipped with the scale lowered, and an
//! adapter without SHADER_F16 is refused in one line.

mod common;
use common::{assert_one_line_error, mae_with, run_args, stderr};

use std::path::{Path, PathBuf};
use std::process::Output;

use common::step::{step, tiny_model, worst};
use engine::Device;

#[test]
fn an_f16_mixed_step_agrees_with_fp32_and_keeps_less() {
    let device = Device::new().unwrap();
    if !device.info().features.shader_f16 {
        eprintln!("skipped: the adapter has no SHADER_F16");
        return;
    }
    let model = tiny_model(&device);
    let (loss32, g32, peak32) = step(&model, 32, (false, false));
    let (loss16, g16, peak16) = step(&model, 32, (true, false));
    let (loss16c, g16c, _) = step(&model, 32, (true, true));
    let (rel, name) = worst(&g32, &g16);
    eprintln!(
        "loss {loss32} fp32, {loss16} f16-mixed; worst gradient difference {rel:e} ({name}); \
         peak {peak32} bytes fp32, {peak16} f16-mixed"
    );
    assert!(
        ((loss16 - loss32) / loss32).abs() < 1e-3,
        "{loss16} vs {loss32}"
    );
    assert!(rel < 5e-3, "{name}: relative difference {rel:e}");
    // Checkpointing recomputes in the forward's precision: the same gradients.
    assert_eq!(loss16c, loss16);
    let (rel, name) = worst(&g16, &g16c);
    assert!(
        rel <= 1e-6,
        "checkpointed {name}: relative difference {rel:e}"
    );
    assert!(
        (peak16 as f64) < 0.88 * peak32 as f64,
        "peak {peak16} f16-mixed against {peak32} fp32"
    );
}

fn tmp(name: &str) -> PathBuf {
    common::tmp("mixed_precision", name)
}

fn pretrain(config: &Path, data: &Path, out: &Path, extra: &[&str]) -> Output {
    let settings = ["--batch-size", "8", "--limit", "32", "--blr", "1e-2"];
    let mut args = run_args("pretrain", config, data, out, &settings);
    args.extend(["--seed", "3"].iter().chain(extra).map(|a| a.to_string()));
    mae_with(&args)
}

/// Every `train` line of a run's metrics.
fn train_lines(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("loss").is_some())
        .collect()
}

fn state(ckpt: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(ckpt.join("trainer_state.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn weights(ckpt: &Path) -> Vec<u8> {
    std::fs::read(ckpt.join("model.safetensors")).unwrap()
}

#[test]
fn f16_mixed_runs_track_fp32_resume_exactly_and_skip_overflows() {
    if !Device::new().unwrap().info().features.shader_f16 {
        eprintln!("skipped: the adapter has no SHADER_F16");
        return;
    }
    let dir = tmp("runs");
    let (data, config) = common::shapes_and_tiny_config(&dir);
    let run = |name: &str, extra: &[&str]| {
        let out = dir.join(name);
        let o = pretrain(&config, &data, &out, extra);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        out
    };
    let fp32 = run("fp32", &["--epochs", "2"]);
    let mixed = run("mixed", &["--epochs", "2", "--precision", "f16-mixed"]);

    // The losses track: every step within 0.1% of fp32's.
    let (l32, l16) = (train_lines(&fp32), train_lines(&mixed));
    assert_eq!(l32.len(), 8);
    for (a, b) in l32.iter().zip(&l16) {
        let (a, b) = (a["loss"].as_f64().unwrap(), b["loss"].as_f64().unwrap());
        assert!(
            (a - b).abs() <= 1e-3 * a,
            "loss {b} f16-mixed against {a} fp32"
        );
        assert!(b.is_finite());
    }
    for line in &l16 {
        assert_eq!(line["loss_scale"].as_f64(), Some(65536.0), "{line}");
        assert_eq!(line["skipped"].as_f64(), Some(0.0), "{line}");
    }
    let end = state(&mixed.join("checkpoint-2"));
    assert_eq!(end["settings"]["precision"], "f16-mixed");
    assert_eq!(end["loss_scaler"]["scale"], 65536.0);
    assert_eq!(end["loss_scaler"]["growth_tracker"], 8);
    assert!(state(&fp32.join("checkpoint-2"))
        .get("loss_scaler")
        .is_none());

    // Resumed from epoch 1, the run ends with the same weights and scaler.
    let resume_from = |name: &str, edit: &dyn Fn(&mut serde_json::Value)| {
        let out = dir.join(name);
        let ckpt = out.join("checkpoint-1");
        common::copy_dir(&mixed.join("checkpoint-1"), &ckpt);
        let mut s = state(&ckpt);
        edit(&mut s);
        let text = serde_json::to_string(&s).unwrap();
        std::fs::write(ckpt.join("trainer_state.json"), text).unwrap();
        mae::run::seal(&ckpt).unwrap();
        let mut args = run_args("pretrain", &config, &data, &out, &["--resume"]);
        args.push(ckpt.display().to_string());
        let o = mae_with(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        (out, s, o)
    };
    let (resumed, _, _) = resume_from("resumed", &|_| ());
    assert_eq!(
        weights(&resumed.join("checkpoint-2")),
        weights(&mixed.join("checkpoint-2"))
    );
    assert_eq!(
        state(&resumed.join("checkpoint-2"))["loss_scaler"],
        end["loss_scaler"]
    );

    // A scale of 2^60 overflows f16 in backward: every step of epoch 2 is skipped, the scale
    // halves each time, and the weights and optimizer stay as they were.
    let (over, s, o) = resume_from("overflow", &|s| {
        s["loss_scaler"]["scale"] = serde_json::json!(2f64.powi(60));
    });
    assert!(stderr(&o).contains("step skipped"), "{}", stderr(&o));
    let lines = train_lines(&over);
    assert_eq!(lines.len(), 4);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["skipped"].as_f64(), Some(1.0), "{line}");
        assert_eq!(line["loss_scale"].as_f64(), Some(2f64.powi(60 - i as i32)));
    }
    let after = state(&over.join("checkpoint-2"));
    assert_eq!(after["loss_scaler"]["scale"], 2f64.powi(56));
    assert_eq!(after["optimizer_step"], s["optimizer_step"]);
    assert_eq!(
        weights(&over.join("checkpoint-2")),
        weights(&over.join("checkpoint-1"))
    );
}

#[test]
fn an_adapter_without_shader_f16_is_refused_at_start() {
    let dir = tmp("refused");
    let (data, config) = common::shapes_and_tiny_config(&dir);
    let mut args = run_args("pretrain", &config, &data, &dir.join("run"), &[]);
    args.extend(["--precision", "f16-mixed"].map(String::from));
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_mae"))
        .args(&args)
        .env("ENGINE_WITHOUT", "shader-f16")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_one_line_error(&o, "--precision f16-mixed needs an adapter with SHADER_F16");
    assert!(!dir.join("run/checkpoint-1").exists());
}
