//! Data parallelism over MPI (`--features distributed`): `mpirun -np 2` at batch B against
//! one process at batch 2B, step by step and in the final weights; resuming a 2-rank run
//! with 2 ranks (the same bytes) and with 1; and faults that must stop every rank: a
//! diverging loss, ranks started with different settings, a killed rank.
#![cfg(feature = "distributed")]

mod common;
use common::{output_within, shapes_and_tiny_config, stderr};

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn tmp(name: &str) -> PathBuf {
    common::tmp("distributed", name)
}

/// `mpirun -np {ranks}` of `program args` (run as root where CI runs as root), or the
/// program alone for one rank; killed and failed after two minutes.
fn launch(ranks: usize, program: &[&str], args: &[String]) -> Output {
    let mut cmd = if ranks == 1 {
        let mut c = Command::new(program[0]);
        c.args(&program[1..]);
        c
    } else {
        let mut c = Command::new("mpirun");
        c.args(["--oversubscribe", "-np", &ranks.to_string()])
            .args(program)
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
        c
    };
    output_within(cmd.args(args), 120)
}

/// A shell script for each rank of `mpirun`: `rank1` first on rank 1, `others` on the
/// others, then `mae args`.
fn rank_script(rank1: &str, others: &str, args: &[String]) -> String {
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    format!(
        "if [ \"$OMPI_COMM_WORLD_RANK\" = 1 ]; then {rank1}; else {others}; fi; exec {} {}",
        mae_bin(),
        quoted.join(" ")
    )
}

/// Two ranks pretraining the tiny `config` on the same relative `--data data`, which rank
/// 0 finds linked to `data[0]` and rank 1 to `data[1]` (`None`: no data there).
fn launch_with_data(dir: &Path, config: &Path, data: [Option<&Path>; 2]) -> Output {
    let cwd = |rank: usize| {
        let cwd = dir.join(format!("rank{rank}"));
        std::fs::create_dir_all(&cwd).unwrap();
        if let Some(d) = data[rank] {
            std::os::unix::fs::symlink(d, cwd.join("data")).unwrap();
        }
        format!("cd {}", cwd.display())
    };
    let args = pretrain_args(config, Path::new("data"), &dir.join("run"), 8, 1);
    let (rank0, rank1) = (cwd(0), cwd(1));
    launch(2, &["sh", "-c", &rank_script(&rank1, &rank0, &args)], &[])
}

fn mae_bin() -> &'static str {
    env!("CARGO_BIN_EXE_mae")
}

/// `mae pretrain` of the tiny config for `epochs` at per-rank batch `batch`.
fn pretrain_args(
    config: &Path,
    data: &Path,
    out: &Path,
    batch: usize,
    epochs: usize,
) -> Vec<String> {
    let (epochs, batch) = (epochs.to_string(), batch.to_string());
    let settings = ["--epochs", &epochs, "--batch-size", &batch, "--limit", "32"];
    let mut args = common::run_args("pretrain", config, data, out, &settings);
    args.extend(["--blr", "1e-2", "--seed", "3"].map(String::from));
    args
}

fn losses(out: &Path) -> Vec<f64> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect()
}

/// `‖a - b‖ / ‖a‖` over every tensor of two checkpoints' weights.
fn weights_distance(a: &Path, b: &Path) -> f64 {
    let (a, b) = (
        nn::read_safetensors(&a.join("model.safetensors")).unwrap(),
        nn::read_safetensors(&b.join("model.safetensors")).unwrap(),
    );
    let (mut diff, mut norm) = (0.0, 0.0);
    for (name, (_, va)) in &a {
        for (x, y) in va.iter().zip(&b[name].1) {
            diff += ((x - y) as f64).powi(2);
            norm += (*x as f64).powi(2);
        }
    }
    (diff / norm).sqrt()
}

#[track_caller]
fn assert_close_runs(want: &Path, got: &Path, what: &str) {
    let (a, b) = (losses(want), losses(got));
    assert_eq!(a.len(), b.len(), "{what}: steps");
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(
            ((x - y) / x).abs() <= 1e-5,
            "{what}: step {i}: loss {y} vs {x}"
        );
    }
    let d = weights_distance(&want.join("checkpoint-2"), &got.join("checkpoint-2"));
    assert!(d <= 1e-5, "{what}: final weights differ by {d:e} in norm");
}

#[test]
fn two_ranks_train_as_one_process_with_twice_the_batch() {
    let dir = tmp("equivalence");
    let (data, config) = shapes_and_tiny_config(&dir);
    let (one, two) = (dir.join("one"), dir.join("two"));
    let o = launch(1, &[mae_bin()], &pretrain_args(&config, &data, &one, 16, 2));
    assert!(o.status.success(), "{}", stderr(&o));
    let o = launch(2, &[mae_bin()], &pretrain_args(&config, &data, &two, 8, 2));
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("rank 0 of 2") && err.contains("rank 1 of 2"),
        "{err}"
    );
    assert_eq!(
        err.matches("done:").count(),
        1,
        "rank 0 alone reports: {err}"
    );
    assert!(err.contains("batch 8 x 2 processes"), "{err}");
    assert_close_runs(&one, &two, "2 ranks at 8 against 1 at 16");

    // Resumed from the 2-rank run's first checkpoint: with 2 ranks, the same bytes; with 1,
    // the same run (its batch is the saved global batch, 16).
    let resume = |ranks: usize, ckpt: &Path| {
        let args = [
            "pretrain",
            "--resume",
            ckpt.to_str().unwrap(),
            "--overwrite",
        ];
        launch(ranks, &[mae_bin()], &args.map(String::from))
    };
    for (ranks, name) in [(2, "resumed-2"), (1, "resumed-1")] {
        // A copy of the 2-rank run, resumed in its own directory: its log goes on from
        // the checkpoint, and its later checkpoint is replaced.
        let out = dir.join(name);
        common::copy_dir(&two, &out);
        let o = resume(ranks, &out.join("checkpoint-1"));
        assert!(o.status.success(), "{}", stderr(&o));
        if ranks == 2 {
            let bytes = |d: &Path| std::fs::read(d.join("checkpoint-2/model.safetensors")).unwrap();
            assert!(
                bytes(&out) == bytes(&two),
                "a 2-rank resume gives the same weights"
            );
        }
        assert_close_runs(&two, &out, name);
    }
}

/// With f16-mixed precision too: the loss scaler sees the gradients summed over the ranks,
/// so every rank skips or takes the same steps.
#[test]
fn two_ranks_train_f16_mixed_as_one_process_with_twice_the_batch() {
    let dir = tmp("equivalence-f16");
    let (data, config) = shapes_and_tiny_config(&dir);
    let (one, two) = (dir.join("one"), dir.join("two"));
    let f16 = |mut args: Vec<String>| {
        args.extend(["--precision", "f16-mixed"].map(String::from));
        args
    };
    let o = launch(
        1,
        &[mae_bin()],
        &f16(pretrain_args(&config, &data, &one, 16, 2)),
    );
    if !engine::Device::new().unwrap().info().features.shader_f16 {
        // As on GL: refused in one line.
        common::assert_one_line_error(&o, "--precision f16-mixed needs an adapter with SHADER_F16");
        return;
    }
    assert!(o.status.success(), "{}", stderr(&o));
    let o = launch(
        2,
        &[mae_bin()],
        &f16(pretrain_args(&config, &data, &two, 8, 2)),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_close_runs(&one, &two, "f16-mixed, 2 ranks at 8 against 1 at 16");
}

#[test]
fn a_diverging_loss_stops_every_rank_before_the_update() {
    let dir = tmp("nan");
    let (data, config) = shapes_and_tiny_config(&dir);
    let out = dir.join("run");
    let o = launch(2, &[mae_bin()], &pretrain_args(&config, &data, &out, 8, 1));
    assert!(o.status.success(), "{}", stderr(&o));
    common::assert_resume_diverges_with(
        "pretrain",
        &out.join("checkpoint-1"),
        &out,
        Some(3),
        |args| {
            launch(
                2,
                &[mae_bin()],
                &args.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            )
        },
    );
}

#[test]
fn ranks_with_different_settings_are_refused_at_start() {
    let dir = tmp("mismatch");
    let (data, config) = shapes_and_tiny_config(&dir);
    let mut args = pretrain_args(&config, &data, &dir.join("run"), 8, 1);
    // Rank 1 alone gets another learning rate.
    let blr = args.iter().position(|a| a == "--blr").unwrap() + 1;
    args[blr] = "${BLR}".into();
    let script = format!(
        "if [ \"$OMPI_COMM_WORLD_RANK\" = 1 ]; then BLR=2e-2; else BLR=1e-2; fi; exec {} {}",
        mae_bin(),
        args.join(" ")
    );
    let o = launch(2, &["sh", "-c", &script], &[]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("ranks 1 have other settings or model than rank 0"),
        "{err}"
    );
    assert!(!dir.join("run/checkpoint-1").exists());
}

#[test]
fn a_killed_rank_stops_the_others() {
    let dir = tmp("killed");
    let (data, config) = shapes_and_tiny_config(&dir);
    let args = pretrain_args(&config, &data, &dir.join("run"), 8, 50);
    // Rank 1 is killed two seconds in, mid-training.
    let script = format!(
        "if [ \"$OMPI_COMM_WORLD_RANK\" = 1 ]; then (sleep 2; kill -9 $$) & fi; exec {} {}",
        mae_bin(),
        args.join(" ")
    );
    let o = launch(2, &["sh", "-c", &script], &[]);
    assert!(!o.status.success(), "{}", stderr(&o));
    assert!(!dir.join("run/checkpoint-50").exists());
}

#[test]
fn bad_data_on_one_rank_stops_them_all() {
    let dir = tmp("bad-data");
    let (data, config) = shapes_and_tiny_config(&dir);
    // The same relative `--data data` on both ranks, which rank 1 runs from a directory
    // without it: one rank's failure, invisible to the settings check.
    let o = launch_with_data(&dir, &config, [Some(&data), None]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("error: rank 1: data not found"), "{err}");
    assert!(!dir.join("run/checkpoint-1").exists());
}

/// `mpirun -np 2` of `mae args`, rank 1 writing its pid to `pid_file` first; not waited on.
fn spawn_two_ranks(args: &[String], pid_file: &Path) -> std::process::Child {
    let script = rank_script(&format!("echo $$ > '{}'", pid_file.display()), ":", args);
    Command::new("mpirun")
        .args(["--oversubscribe", "-np", "2", "sh", "-c", &script])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// The pid rank 1 wrote.
fn pid_of_rank_1(pid_file: &Path) -> u32 {
    common::wait_until(60, "rank 1's pid", || {
        std::fs::read_to_string(pid_file).is_ok_and(|t| t.trim().parse::<u32>().is_ok())
    });
    std::fs::read_to_string(pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn a_signal_to_one_rank_stops_every_rank_at_the_same_step() {
    let dir = tmp("signal");
    let data = common::shapes(&dir, 200);
    let (_, config) = common::tiny_config(&dir, 1);
    let settings = ["--epochs", "1", "--batch-size", "2", "--limit", "200"];
    let (full, cut) = (dir.join("full"), dir.join("cut"));
    let args = |out: &Path| common::run_args("pretrain", &config, &data, out, &settings);
    let o = launch(2, &[mae_bin()], &args(&full));
    assert!(o.status.success(), "{}", stderr(&o));

    let pid_file = dir.join("rank1.pid");
    let run = spawn_two_ranks(&args(&cut), &pid_file);
    let rank1 = pid_of_rank_1(&pid_file);
    common::wait_until(120, "5 logged steps", || common::logged_lines(&cut) >= 5);
    common::signal(rank1, "USR1");
    let o = run.wait_with_output().unwrap();
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert_eq!(
        err.matches("error: stopped by").count(),
        1,
        "rank 0 alone says it: {err}"
    );
    assert!(!err.contains("MPI_ABORT"), "a stop is not an abort: {err}");
    let stopped: Vec<String> = std::fs::read_dir(&cut)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("checkpoint-step-"))
        .collect();
    assert_eq!(stopped.len(), 1, "{stopped:?}");
    // The ranks agreed: the checkpoint is of one step of both, and resuming with two ranks
    // gives the uninterrupted run's weights.
    let resume = ["pretrain", "--resume", cut.to_str().unwrap()].map(String::from);
    let o = launch(2, &[mae_bin()], &resume);
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = |d: &Path| std::fs::read(d.join("checkpoint-1/model.safetensors")).unwrap();
    assert!(
        bytes(&cut) == bytes(&full),
        "the resumed run is the uninterrupted one"
    );
}

#[test]
fn a_stalled_rank_ends_the_job() {
    let dir = tmp("stall");
    let data = common::shapes(&dir, 200);
    let (_, config) = common::tiny_config(&dir, 1);
    let settings = [
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--limit",
        "200",
        "--stall-timeout",
        "2",
    ];
    let out = dir.join("run");
    let pid_file = dir.join("rank1.pid");
    let mut run = spawn_two_ranks(
        &common::run_args("pretrain", &config, &data, &out, &settings),
        &pid_file,
    );
    let rank1 = pid_of_rank_1(&pid_file);
    common::wait_until(120, "3 logged steps", || common::logged_lines(&out) >= 3);
    common::signal(rank1, "STOP");
    let started = std::time::Instant::now();
    let ended = loop {
        if let Some(status) = run.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed().as_secs() > 60 {
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let _ = Command::new("kill")
        .args(["-9", &rank1.to_string()])
        .status();
    if ended.is_none() {
        let _ = run.kill();
    }
    let o = run.wait_with_output().unwrap();
    let err = stderr(&o);
    assert!(
        ended.is_some(),
        "the job still ran a minute after rank 1 stopped: {err}"
    );
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("error: rank 0 waited") && err.contains("another one stalled"),
        "{err}"
    );
}

#[test]
fn ranks_that_see_other_data_at_the_same_path_are_refused() {
    let dir = tmp("other-data");
    let (data, config) = shapes_and_tiny_config(&dir);
    // The same relative `--data data` and image count on both ranks, rank 1's with one
    // pixel changed.
    let other = dir.join("other");
    common::copy_dir(&data, &other);
    let file = other.join("train-images-idx3-ubyte");
    let mut bytes = std::fs::read(&file).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    std::fs::write(&file, bytes).unwrap();
    let o = launch_with_data(&dir, &config, [Some(&data), Some(&other)]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("ranks 1 have other data than rank 0"), "{err}");
    assert!(!dir.join("run/checkpoint-1").exists());
}
