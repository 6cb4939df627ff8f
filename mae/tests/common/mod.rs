//! Helpers shared by the `mae` integration tests.
#![allow(dead_code)] // each test crate uses its own subset

pub mod events;
pub mod step;
pub mod tiff;

use std::path::PathBuf;
use std::process::{Command, Output};

/// A fresh, empty directory `name` for the test suite `suite`, unique to this process.
pub fn tmp(suite: &str, name: &str) -> PathBuf {
    let dir = std::env::temp_dir()
        .join(format!("mae-{suite}-tests-{}", std::process::id()))
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Run the `mae` program with `args`.
pub fn mae(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mae"))
        .args(args)
        .output()
        .unwrap()
}

/// The arguments `command --model M --data D --output O`, then `extra`.
pub fn run_args(
    command: &str,
    model: &std::path::Path,
    data: &std::path::Path,
    output: &std::path::Path,
    extra: &[&str],
) -> Vec<String> {
    let paths = [("--model", model), ("--data", data), ("--output", output)];
    let mut args = vec![command.to_string()];
    for (flag, path) in paths {
        args.extend([flag.to_string(), path.to_str().unwrap().to_string()]);
    }
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

/// Run the `mae` program with `args`.
pub fn mae_with(args: &[String]) -> Output {
    mae(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// A run's stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A 28x28 patch-7 config small enough to train in seconds (`depth` encoder blocks of
/// width 32), written as `dir/config.json`.
pub fn tiny_config(dir: &std::path::Path, depth: usize) -> (mae::MaeConfig, PathBuf) {
    let config = mae::MaeConfig {
        dim: 32,
        depth,
        heads: 2,
        decoder_dim: 16,
        decoder_depth: 1,
        decoder_heads: 2,
        ..mae::MaeConfig::mae_tiny_28_patch7()
    };
    let path = dir.join("config.json");
    std::fs::write(
        &path,
        serde_json::to_string(&mae::hf::config_to_json(&config)).unwrap(),
    )
    .unwrap();
    (config, path)
}

/// The run failed with exit code 2 and one line, `error: ...` containing `needle` (the
/// software renderer's XDG notice, and `--resume`'s line and ignored-options warning aside).
pub fn assert_one_line_error(o: &Output, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| !l.contains("XDG_RUNTIME_DIR") && !l.starts_with("warning: --resume"))
        .filter(|l| !l.starts_with("resuming "))
        .collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains(needle),
        "{err}"
    );
}

/// Resume `command` (`pretrain` or `finetune`) from `checkpoint` into `output` with a
/// learning rate of 1e30 written into its saved settings (and `epochs`, when given): the
/// run must stop with exit code 3 and a last line naming `checkpoint`, left as it was.
pub fn assert_resume_diverges(
    command: &str,
    checkpoint: &std::path::Path,
    output: &std::path::Path,
    epochs: Option<u64>,
) {
    assert_resume_diverges_with(command, checkpoint, output, epochs, mae);
}

/// [`assert_resume_diverges`] with the run started by `launch` (with `mpirun`, say).
pub fn assert_resume_diverges_with(
    command: &str,
    checkpoint: &std::path::Path,
    output: &std::path::Path,
    epochs: Option<u64>,
    launch: impl Fn(&[&str]) -> Output,
) {
    let state_path = checkpoint.join("trainer_state.json");
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_path).unwrap()).unwrap();
    state["settings"]["blr"] = 1e30.into();
    if let Some(epochs) = epochs {
        state["settings"]["epochs"] = epochs.into();
    }
    std::fs::write(&state_path, state.to_string()).unwrap();
    mae::run::seal(checkpoint).unwrap();
    let weights = checkpoint.join("model.safetensors");
    let before = std::fs::read(&weights).unwrap();
    let o = launch(&[
        command,
        "--resume",
        checkpoint.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(3), "{err}");
    // The last line of ours (mpirun may add its own report after it).
    let last = err
        .lines()
        .rfind(|l| l.starts_with("error: "))
        .unwrap_or_default();
    assert!(
        last.starts_with("error: the loss is")
            && last.contains("training stopped")
            && last.contains(&format!(
                "The last good checkpoint is {}",
                checkpoint.display()
            )),
        "{err}"
    );
    assert_eq!(
        err.matches("error: the loss is").count(),
        1,
        "one line: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(std::fs::read(&weights).unwrap(), before);
}

/// Fashion-MNIST-like IDX files with 40 training and 8 test images of simple shapes, and a
/// 28x28 config small enough to train in seconds.
pub fn shapes_and_tiny_config(dir: &std::path::Path) -> (PathBuf, PathBuf) {
    let data = shapes(dir, 40);
    let (_, config_path) = tiny_config(dir, 1);
    (data, config_path)
}

/// Fashion-MNIST-like IDX files in `dir/data`: `train` training and 8 test images of
/// simple shapes.
pub fn shapes(dir: &std::path::Path, train: u32) -> PathBuf {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    for (name, n) in [("train", train), ("t10k", 8)] {
        let mut bytes = vec![0, 0, 8, 3];
        for d in [n, 28, 28] {
            bytes.extend(d.to_be_bytes());
        }
        for i in 0..n {
            for y in 0..28u32 {
                for x in 0..28u32 {
                    let r = 4 + i % 9;
                    let inside = x.abs_diff(14) < r && y.abs_diff(14) < r + i % 3;
                    bytes.push(if inside { 200 } else { 10 });
                }
            }
        }
        let mut f = std::fs::File::create(data.join(format!("{name}-images-idx3-ubyte"))).unwrap();
        std::io::Write::write_all(&mut f, &bytes).unwrap();
    }
    data
}

/// The lines of a run's `metrics.jsonl`, without the figures that depend on the clock.
pub fn metrics(out: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            for clock in ["img_per_s", "elapsed_s"] {
                v.as_object_mut().unwrap().remove(clock);
            }
            v
        })
        .collect()
}

/// Start the `mae` program with `args`, its output piped.
pub fn spawn_mae(args: &[String]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_mae"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Send `signal` (`TERM`, `KILL`, `USR1`...) to process `pid`.
pub fn signal(pid: u32, signal: &str) {
    let sent = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill -{signal} {pid}");
}

/// Wait until `ready` holds, failing the test after `seconds`.
pub fn wait_until(seconds: u64, what: &str, mut ready: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !ready() {
        assert!(
            start.elapsed().as_secs() < seconds,
            "no {what} within {seconds} s"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// The number of lines of `metrics.jsonl` in `out` (0 when there is none yet).
pub fn logged_lines(out: &std::path::Path) -> usize {
    std::fs::read_to_string(out.join("metrics.jsonl")).map_or(0, |t| t.lines().count())
}

/// Copy the files of directory `from` into `to`.
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        match entry.path().is_dir() {
            true => copy_dir(&entry.path(), &to.join(entry.file_name())),
            false => drop(std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap()),
        }
    }
}

/// Run `cmd` to the end, killing it (and failing the test) after `seconds`: a run that
/// hangs or allocates without end must not hang the suite.
pub fn output_within(cmd: &mut Command, seconds: u64) -> Output {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed().as_secs() > seconds {
            child.kill().unwrap();
            panic!("{cmd:?} ran for more than {seconds} s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}
