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
