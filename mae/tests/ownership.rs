//! A run owns its output directory: a resumed run continues where its checkpoint is, a new
//! run refuses another run's directory unless told to replace it, two runs never share a
//! directory, and what a killed save leaves neither blocks a later save nor hides a
//! checkpoint; resume takes the newest complete checkpoint and names those it skips.

mod common;
use common::{assert_one_line_error, logged_lines, spawn_mae, stderr, wait_until};

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tmp(name: &str) -> PathBuf {
    common::tmp("ownership", name)
}

/// `mae pretrain` of the tiny config in `cwd` (where the default `out/pretrain` is), with
/// `extra` options.
fn pretrain_in(cwd: &Path, extra: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mae"));
    cmd.current_dir(cwd).args(["pretrain"]);
    if !extra.contains(&"--resume") {
        cmd.args(["--model", "config.json", "--data", "data"]);
        cmd.args(["--limit", "16", "--batch-size", "4", "--knn-every", "0"]);
    }
    cmd.args(extra).output().unwrap()
}

fn bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// A directory with the tiny config and data, and run A in `out/pretrain` (2 epochs).
fn setup(name: &str) -> PathBuf {
    let dir = tmp(name);
    common::shapes(&dir, 16);
    common::tiny_config(&dir, 1);
    let o = pretrain_in(&dir, &["--epochs", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    dir
}

#[test]
fn a_resumed_run_continues_in_the_directory_of_its_checkpoint() {
    let dir = setup("resume-in-place");
    let a = dir.join("out/pretrain");
    let (a_weights, a_log) = (
        bytes(&a.join("checkpoint-2/model.safetensors")),
        bytes(&a.join("metrics.jsonl")),
    );
    let o = pretrain_in(&dir, &["--seed", "9", "--output", "out/b"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = pretrain_in(&dir, &["--resume", "out/b", "--epochs", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        dir.join("out/b/checkpoint-2").is_dir(),
        "B's epoch 2 is B's"
    );
    assert!(
        bytes(&a.join("checkpoint-2/model.safetensors")) == a_weights,
        "A's checkpoint is A's"
    );
    assert_eq!(bytes(&a.join("metrics.jsonl")), a_log, "A's log is A's");
    assert_eq!(
        logged_lines(&dir.join("out/b")),
        8,
        "B's log has both epochs"
    );
}

#[test]
fn a_new_run_refuses_a_directory_that_holds_a_run_unless_told_to_replace_it() {
    let dir = setup("refuse");
    let a = dir.join("out/pretrain");
    let weights = bytes(&a.join("checkpoint-2/model.safetensors"));
    let o = pretrain_in(&dir, &["--seed", "9"]);
    assert_one_line_error(&o, "out/pretrain holds a run (checkpoint-1, checkpoint-2,");
    assert!(stderr(&o).contains("--overwrite"), "{}", stderr(&o));
    assert!(bytes(&a.join("checkpoint-2/model.safetensors")) == weights);

    // Resuming from an earlier checkpoint would replace the later ones: refused too.
    let o = pretrain_in(&dir, &["--resume", "out/pretrain/checkpoint-1"]);
    assert_one_line_error(&o, "holds checkpoints after");
    assert!(bytes(&a.join("checkpoint-2/model.safetensors")) == weights);

    // Told to, a new run replaces the old one: none of its checkpoints is left.
    let o = pretrain_in(&dir, &["--seed", "9", "--overwrite"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(a.join("checkpoint-1").is_dir() && !a.join("checkpoint-2").exists());
    assert_eq!(logged_lines(&a), 4);
}

#[test]
fn a_second_run_on_the_same_directory_is_refused_naming_the_first() {
    let dir = tmp("lock");
    let data = common::shapes(&dir, 200);
    let (_, config) = common::tiny_config(&dir, 1);
    let out = dir.join("run");
    let long = [
        "--epochs",
        "1",
        "--limit",
        "200",
        "--batch-size",
        "2",
        "--knn-every",
        "0",
    ];
    let mut first = spawn_mae(&common::run_args("pretrain", &config, &data, &out, &long));
    wait_until(120, "a logged step", || logged_lines(&out) >= 1);
    let second = common::mae_with(&common::run_args(
        "pretrain",
        &config,
        &data,
        &out,
        &["--overwrite", "--knn-every", "0"],
    ));
    let _ = first.kill();
    let _ = first.wait();
    assert_one_line_error(
        &second,
        &format!("is in use by another run (pid {})", first.id()),
    );
}

#[test]
fn leftovers_of_killed_saves_neither_block_a_save_nor_hide_a_checkpoint() {
    let dir = setup("leftovers");
    let a = dir.join("out/pretrain");
    // Killed while replacing checkpoint-2: the old copy moved aside, the new one unfinished.
    let aside = a.join(".checkpoint-2.old-99999-0");
    std::fs::rename(a.join("checkpoint-2"), &aside).unwrap();
    let unfinished = a.join(".checkpoint-3.tmp-99999-1");
    std::fs::create_dir(&unfinished).unwrap();
    std::fs::write(unfinished.join("config.json"), "{").unwrap();
    // Killed while writing a file.
    std::fs::write(a.join(".metrics.jsonl.tmp-99999-2"), "x").unwrap();

    let o = pretrain_in(&dir, &["--resume", "out/pretrain", "--epochs", "3"]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("resuming out/pretrain/checkpoint-2 at epoch 2, step 8"),
        "{err}"
    );
    let mut names: Vec<String> = std::fs::read_dir(&a)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("checkpoint") || n.contains(".tmp-"))
        .collect();
    names.sort();
    assert_eq!(names, ["checkpoint-1", "checkpoint-2", "checkpoint-3"]);
    for name in &names {
        mae::run::verify(&a.join(name)).unwrap();
    }
}

#[test]
fn resume_takes_the_newest_complete_checkpoint_and_names_those_it_skips() {
    let dir = setup("incomplete");
    let a = dir.join("out/pretrain");
    let weights = a.join("checkpoint-2/model.safetensors");
    let whole = bytes(&weights);
    std::fs::write(&weights, &whole[..whole.len() / 2]).unwrap();

    // Named explicitly, an incomplete checkpoint is refused.
    let o = pretrain_in(&dir, &["--resume", "out/pretrain/checkpoint-2"]);
    assert_one_line_error(
        &o,
        "out/pretrain/checkpoint-2: incomplete: model.safetensors has",
    );

    // In its run's directory, it is skipped and named, and the run goes on from the one
    // before, replacing it.
    let o = pretrain_in(&dir, &["--resume", "out/pretrain"]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("warning: skipping out/pretrain/checkpoint-2: model.safetensors has"),
        "{err}"
    );
    assert!(
        err.contains("resuming out/pretrain/checkpoint-1 at epoch 1"),
        "{err}"
    );
    mae::run::verify(&a.join("checkpoint-2")).unwrap();

    // A checkpoint of a version before manifests is taken, with a word that its files are
    // not checked.
    std::fs::remove_file(a.join("checkpoint-2").join(mae::run::MANIFEST)).unwrap();
    let o = pretrain_in(&dir, &["--resume", "out/pretrain", "--epochs", "3"]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(
            "warning: out/pretrain/checkpoint-2 has no manifest.json (written before manifests)"
        ),
        "{err}"
    );
    mae::run::verify(&a.join("checkpoint-3")).unwrap();
}
