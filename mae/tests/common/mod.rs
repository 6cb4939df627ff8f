//! Helpers shared by the `mae` integration tests.
#![allow(dead_code)] // each test crate uses its own subset

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
/// software renderer's XDG notice and `--resume`'s ignored-options warning aside).
pub fn assert_one_line_error(o: &Output, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| !l.contains("XDG_RUNTIME_DIR") && !l.starts_with("warning: --resume"))
        .collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains(needle),
        "{err}"
    );
}
