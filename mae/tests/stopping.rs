//! Stopping is saving, and nothing is lost: a signal stops a run at a step boundary with a
//! checkpoint of that step, from which the run goes on as if it had never stopped; a second
//! signal stops it at once; and a run killed (SIGKILL) at any moment, a save included,
//! resumes to the weights, log and TensorBoard curves of an uninterrupted run.

mod common;
use common::events::{as_tensorboard_shows, scalars};
use common::{logged_lines, metrics, signal, spawn_mae, stderr, wait_until};

use std::path::{Path, PathBuf};

fn tmp(name: &str) -> PathBuf {
    common::tmp("stopping", name)
}

/// `mae pretrain` of the tiny config on `data` into `out`, with `settings`.
fn args(config: &Path, data: &Path, out: &Path, settings: &[&str]) -> Vec<String> {
    let mut args = common::run_args("pretrain", config, data, out, settings);
    args.extend(["--seed", "5", "--knn-every", "0"].map(String::from));
    args
}

fn weights(checkpoint: &Path) -> Vec<u8> {
    std::fs::read(checkpoint.join("model.safetensors")).unwrap()
}

fn state(checkpoint: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(checkpoint.join("trainer_state.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn checkpoints(out: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("checkpoint-"))
        .collect();
    names.sort();
    names
}

/// The run's curves as TensorBoard shows them: every step's loss once, and the pictures'
/// steps.
fn tensorboard(out: &Path) -> (Vec<(u64, f32)>, Vec<u64>) {
    let shown = as_tensorboard_shows(out);
    let pictures = shown
        .iter()
        .filter(|e| !e.images.is_empty())
        .map(|e| e.step)
        .collect();
    (scalars(&shown, "train/loss"), pictures)
}

#[test]
fn a_signal_stops_at_a_step_and_the_resumed_run_is_the_uninterrupted_one() {
    let dir = tmp("sigterm");
    let data = common::shapes(&dir, 200);
    let (_, config) = common::tiny_config(&dir, 1);
    // Two epochs of 100 iterations, an optimizer step every 2.
    let settings = [
        "--epochs",
        "2",
        "--limit",
        "200",
        "--batch-size",
        "2",
        "--accum-iter",
        "2",
    ];
    let (full, cut) = (dir.join("full"), dir.join("cut"));
    let o = common::mae_with(&args(&config, &data, &full, &settings));
    assert!(o.status.success(), "{}", stderr(&o));

    let run = spawn_mae(&args(&config, &data, &cut, &settings));
    wait_until(120, "10 logged steps", || logged_lines(&cut) >= 10);
    signal(run.id(), "TERM");
    let o = run.wait_with_output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(4), "{err}");
    let last = err.lines().last().unwrap();
    assert!(
        last.starts_with("error: stopped by SIGTERM at step ") && last.contains("--resume"),
        "{err}"
    );
    // The checkpoint of the step it stopped at: within the first epoch, after an
    // optimizer step.
    let names = checkpoints(&cut);
    assert_eq!(names.len(), 1, "{names:?}");
    let step: u64 = names[0]
        .strip_prefix("checkpoint-step-")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (10..100).contains(&step) && step.is_multiple_of(2),
        "step {step}"
    );
    assert!(
        last.contains(&format!("checkpoint-step-{step} written")),
        "{last}"
    );
    let stopped = state(&cut.join(&names[0]));
    assert_eq!(
        (stopped["epoch"].as_u64(), stopped["step"].as_u64()),
        (Some(0), Some(step))
    );
    assert_eq!(stopped["optimizer_step"].as_u64(), Some(step / 2));
    assert_eq!(
        logged_lines(&cut),
        step as usize,
        "every step it took is logged"
    );

    // Resumed (in its own directory, from the newest checkpoint there), the run is the
    // uninterrupted one: the same weights, log and curves, bit for bit.
    let o = common::mae(&["pretrain", "--resume", cut.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    for epoch in ["checkpoint-1", "checkpoint-2"] {
        assert!(
            weights(&cut.join(epoch)) == weights(&full.join(epoch)),
            "{epoch}"
        );
        // The epoch's mean loss counts the iterations before the stop.
        let (a, b) = (state(&cut.join(epoch)), state(&full.join(epoch)));
        for key in ["epoch", "step", "optimizer_step", "metrics"] {
            assert_eq!(a[key], b[key], "{epoch}: {key}");
        }
    }
    assert_eq!(metrics(&cut), metrics(&full));
    assert_eq!(tensorboard(&cut), tensorboard(&full));
    assert_eq!(
        tensorboard(&full).1,
        [99, 199],
        "a picture at each epoch's last step"
    );
    assert_eq!(
        checkpoints(&cut),
        ["checkpoint-1", "checkpoint-2"],
        "the stop's checkpoint is removed once an epoch's is written"
    );
}

#[test]
fn a_second_signal_stops_at_once() {
    let dir = tmp("twice");
    let data = common::shapes(&dir, 200);
    let (_, config) = common::tiny_config(&dir, 1);
    // One optimizer step per epoch: the first signal waits for the epoch's end.
    let settings = [
        "--epochs",
        "1",
        "--limit",
        "200",
        "--batch-size",
        "2",
        "--accum-iter",
        "100",
    ];
    let out = dir.join("run");
    let run = spawn_mae(&args(&config, &data, &out, &settings));
    wait_until(120, "3 logged steps", || logged_lines(&out) >= 3);
    signal(run.id(), "INT");
    std::thread::sleep(std::time::Duration::from_millis(50));
    signal(run.id(), "INT");
    let o = run.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(128 + 2), "{}", stderr(&o));
    assert!(
        logged_lines(&out) < 100,
        "it did not wait for the epoch's end"
    );
    assert!(checkpoints(&out).is_empty(), "{:?}", checkpoints(&out));
}

/// A small deterministic generator of the kill moments.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// Whether a save of `out` is under way: its temporary directory exists.
fn saving(out: &Path) -> bool {
    std::fs::read_dir(out).is_ok_and(|entries| {
        entries
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().starts_with(".checkpoint-"))
    })
}

/// Run the pretraining of `args` in `out` to its end, killing it (SIGKILL) again and
/// again at moments `rng` picks (every other one within a save) and resuming it; after
/// each kill every checkpoint there must be complete. Returns the kills and how many fell
/// within a save.
fn run_through_kills(out: &Path, args: &[String], run_ms: u64, rng: &mut Lcg) -> (usize, usize) {
    // A new run while nothing complete is there, else resume the newest checkpoint.
    let next = || match mae::run::newest(out) {
        Ok(_) => vec![
            "pretrain".to_string(),
            "--resume".into(),
            out.display().to_string(),
        ],
        Err(_) => [args, &["--overwrite".to_string()]].concat(),
    };
    let (mut kills, mut in_saves) = (0, 0);
    for round in 0.. {
        let mut run = spawn_mae(&next());
        let start = std::time::Instant::now();
        let within_save = round % 2 == 1;
        if within_save {
            // At the moment a save's temporary directory appears, or a little later,
            // while its files are written.
            let deadline = start + std::time::Duration::from_millis(2 * run_ms);
            while !saving(out) && std::time::Instant::now() < deadline {
                if run.try_wait().unwrap().is_some() {
                    break;
                }
            }
            std::thread::sleep(std::time::Duration::from_micros(rng.below(3000)));
        } else {
            std::thread::sleep(std::time::Duration::from_millis(rng.below(run_ms)));
        }
        let in_save = saving(out);
        let _ = run.kill();
        let o = run.wait_with_output().unwrap();
        use std::os::unix::process::ExitStatusExt;
        match o.status.signal() {
            Some(9) => {
                kills += 1;
                in_saves += in_save as usize;
            }
            _ => assert!(o.status.success(), "round {round}: {}", stderr(&o)),
        }
        // A checkpoint is complete, or it is not there.
        for name in checkpoints(out) {
            if let Err(why) = mae::run::verify(&out.join(&name)) {
                panic!("round {round}: {name} is incomplete: {why}");
            }
        }
        if o.status.success() {
            return (kills, in_saves);
        }
    }
    unreachable!()
}

#[test]
fn a_run_killed_at_any_moment_resumes_to_the_uninterrupted_run() {
    let dir = tmp("chaos");
    let data = common::shapes(&dir, 64);
    let (_, config) = common::tiny_config(&dir, 1);
    let settings = ["--epochs", "3", "--limit", "64", "--batch-size", "4"];
    let full = dir.join("full");
    let started = std::time::Instant::now();
    let o = common::mae_with(&args(&config, &data, &full, &settings));
    assert!(o.status.success(), "{}", stderr(&o));
    let run_ms = started.elapsed().as_millis() as u64;

    // Runs killed over and over until 10 kills or more, each ending as the uninterrupted
    // run does.
    let mut rng = Lcg(20261206);
    let (mut kills, mut in_saves) = (0, 0);
    for attempt in 0.. {
        let out = dir.join(format!("killed-{attempt}"));
        let (k, s) = run_through_kills(
            &out,
            &args(&config, &data, &out, &settings),
            run_ms,
            &mut rng,
        );
        (kills, in_saves) = (kills + k, in_saves + s);
        let end = out.join("checkpoint-3");
        assert!(
            weights(&end) == weights(&full.join("checkpoint-3")),
            "{attempt}"
        );
        assert_eq!(metrics(&out), metrics(&full), "no line lost, none repeated");
        assert_eq!(tensorboard(&out), tensorboard(&full));
        if kills >= 10 {
            break;
        }
    }
    eprintln!("{kills} kills, {in_saves} within a save");
    assert!(
        in_saves >= 2,
        "{in_saves} of {kills} kills fell within a save"
    );
}
