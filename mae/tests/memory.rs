//! Memory you can predict: `pretrain --dry-run` measures one step and writes nothing; a run
//! past the adapter's memory (here `ENGINE_MEMORY_LIMIT`, as a smaller GPU) is refused in
//! one line with exit code 2, before a first checkpoint or after a resume, which keeps the
//! checkpoint it resumed from.

mod common;
use common::{assert_one_line_error, run_args, stderr};

use std::path::Path;
use std::process::{Command, Output};

fn mae_env(args: &[String], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mae"));
    cmd.args(args).envs(env.iter().copied());
    cmd.output().unwrap()
}

/// The bytes of the line starting with `label` in a dry run's report (`9.06 GB`, ...).
fn figure(report: &str, label: &str) -> f64 {
    let line = report
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no {label:?} in {report}"));
    let mut words = line[line.find(label).unwrap() + label.len()..].split_whitespace();
    let value: f64 = words.next().unwrap().parse().unwrap();
    let unit = match words.next().unwrap() {
        "B" => 1.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        other => panic!("unit {other}"),
    };
    value * unit
}

/// Exit code 2, and a last line `error: ...` containing `needle` (after the run's start).
fn assert_last_line_error(o: &Output, needle: &str) {
    assert_eq!(o.status.code(), Some(2), "{}", stderr(o));
    let err = stderr(o);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ") && last.contains(needle),
        "{err}"
    );
}

fn dry_run(config: &Path, out: &Path, extra: &[&str]) -> Output {
    let settings = ["--batch-size", "32", "--dry-run"];
    let mut args = run_args(
        "pretrain",
        config,
        Path::new("no-data-needed"),
        out,
        &settings,
    );
    args.extend(extra.iter().map(|a| a.to_string()));
    mae_env(&args, &[])
}

#[test]
fn a_dry_run_measures_one_step_and_writes_nothing() {
    let dir = common::tmp("memory", "dry");
    let (_, config) = common::tiny_config(&dir, 4);
    let out = dir.join("run");
    let plain = dry_run(&config, &out, &[]);
    assert!(plain.status.success(), "{}", stderr(&plain));
    let report = String::from_utf8_lossy(&plain.stdout).to_string();
    assert!(report.starts_with("dry run on "), "{report}");
    let (weights, state) = (
        figure(&report, "parameters"),
        figure(&report, "AdamW state"),
    );
    // Two moments per trained weight (the fixed position embeddings have none).
    assert!(state <= 2.0 * weights && state > 1.8 * weights, "{report}");
    let peak = figure(&report, "one step's peak");
    assert!(peak > weights + state, "{report}");
    assert!(!out.exists(), "a dry run writes nothing");

    let ckpt = dry_run(&config, &out, &["--checkpoint-activations"]);
    assert!(ckpt.status.success(), "{}", stderr(&ckpt));
    let ckpt_peak = figure(&String::from_utf8_lossy(&ckpt.stdout), "one step's peak");
    assert!(ckpt_peak < peak, "checkpointed {ckpt_peak} against {peak}");
}

#[test]
fn a_run_past_the_memory_is_refused_in_one_line() {
    let dir = common::tmp("memory", "refused");
    let (data, config) = common::shapes_and_tiny_config(&dir);
    let out = dir.join("run");
    let small = [("ENGINE_MEMORY_LIMIT", "400KB")];
    let settings = ["--batch-size", "8", "--limit", "32", "--epochs", "1"];

    // The dry run names the figures.
    let mut args = run_args("pretrain", &config, &data, &out, &settings);
    args.push("--dry-run".into());
    let o = mae_env(&args, &small);
    assert_one_line_error(&o, "does not fit");
    assert!(stderr(&o).contains("(400.0 KB)"), "{}", stderr(&o));

    // A run stops at its first step, before writing a checkpoint.
    let args = run_args("pretrain", &config, &data, &out, &settings);
    let o = mae_env(&args, &small);
    assert_last_line_error(&o, "past the memory budget of 400.0 KB");
    assert!(
        stderr(&o).contains("`--dry-run` measures one step"),
        "{}",
        stderr(&o)
    );
    assert!(!out.join("checkpoint-1").exists());

    // A resumed run keeps the checkpoint it started from.
    let o = mae_env(&args, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ckpt = out.join("checkpoint-1");
    let before = std::fs::read(ckpt.join("model.safetensors")).unwrap();
    let mut args = run_args(
        "pretrain",
        &config,
        &data,
        &out,
        &["--epochs", "2", "--resume"],
    );
    args.push(ckpt.display().to_string());
    let o = mae_env(&args, &small);
    assert_last_line_error(&o, "memory budget");
    assert_eq!(
        std::fs::read(ckpt.join("model.safetensors")).unwrap(),
        before
    );
    assert!(!out.join("checkpoint-2").exists());
}
