//! Checkpoint directories, complete or not there.
//!
//! A checkpoint is written into a temporary directory unique to the process
//! (`.checkpoint-N.tmp-PID-K`), every file flushed to the disk, then `manifest.json` last:
//! the size and SHA-256 of every other file. The directory is flushed and renamed into
//! place. Replacing an older checkpoint of the same name first renames the older one to
//! `.checkpoint-N.old-PID-K`, a name resume also looks under, so there is no moment when
//! neither is found. A checkpoint is complete when its manifest matches its files; resume
//! takes the newest complete one and names those it skipped.
//!
//! What a killed save leaves (temporaries, an old copy beside its replacement) is tidied by
//! the next run that takes the directory ([`tidy`]), and never has a name a later save
//! writes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use engine::{AdamW, OptimizerState};
use nn::files::{
    read_text_bounded, sync_dir, temporary_name, unique_name, write_atomically, JSON_LIMIT,
};
use nn::{read_safetensors, save_host_safetensors, CheckpointError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{LossScaler, Position};
use crate::Error;

/// The file written last into a checkpoint: what the others hold.
pub const MANIFEST: &str = "manifest.json";

/// Where a run stands, as each checkpoint's `trainer_state.json` records it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainerState<S> {
    /// Epochs completed.
    pub epoch: usize,
    /// Iterations completed: past `epoch` whole epochs when the run was stopped within one.
    pub step: u64,
    /// Optimizer steps taken (fewer than iterations with gradient accumulation).
    pub optimizer_step: u64,
    /// The run's settings: a resumed run takes them.
    pub settings: S,
    /// The epoch's figures (mean loss, top-1), for whoever reads the checkpoint.
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    /// The loss scaler of an f16-mixed run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scaler: Option<LossScaler>,
    /// The sum of the losses of the epoch's iterations done, when the run was stopped
    /// within an epoch: its mean loss then counts them.
    #[serde(default)]
    pub epoch_loss_sum: f64,
    /// The length of `metrics.jsonl` when the checkpoint was written: a run resumed in
    /// the same directory continues the log from there, so that no line is lost or
    /// repeated.
    #[serde(default)]
    pub log_bytes: Option<u64>,
}

/// A checkpoint to continue from: its directory and state.
pub struct Resumed<S> {
    /// The checkpoint directory.
    pub dir: PathBuf,
    /// Its `trainer_state.json`.
    pub state: TrainerState<S>,
}

impl<S: DeserializeOwned> Resumed<S> {
    /// The checkpoint in `dir`.
    ///
    /// # Errors
    /// One line naming `trainer_state.json` when it is unreadable or holds a position or
    /// loss scale no run reaches.
    pub fn read(dir: &Path) -> Result<Resumed<S>, Error> {
        let path = dir.join("trainer_state.json");
        let bad = |why: String| Error::Checkpoint(CheckpointError::Config(path.clone(), why));
        let text = read_text_bounded(&path, JSON_LIMIT).map_err(Error::io(&path))?;
        let state: TrainerState<S> = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if state.optimizer_step > state.step {
            return Err(bad(format!(
                "{} optimizer steps in {} iterations",
                state.optimizer_step, state.step
            )));
        }
        if !state.epoch_loss_sum.is_finite() {
            return Err(bad("epoch_loss_sum is not a finite number".into()));
        }
        if let Some(s) = state.loss_scaler {
            if !(s.scale.is_finite() && s.scale > 0.0) {
                return Err(bad(format!(
                    "the loss scale {} is not a positive number",
                    s.scale
                )));
            }
        }
        Ok(Resumed {
            dir: dir.to_path_buf(),
            state,
        })
    }
}

impl<S> Resumed<S> {
    /// Where training stands.
    pub fn position(&self) -> Position {
        Position {
            epoch: self.state.epoch,
            step: self.state.step,
        }
    }

    /// Load the optimizer's state from the checkpoint into `opt`.
    ///
    /// # Errors
    /// One line naming `optimizer.safetensors` when it does not match `opt`.
    pub fn load_optimizer(&self, opt: &mut AdamW) -> Result<(), Error> {
        let path = self.dir.join("optimizer.safetensors");
        let state = OptimizerState {
            step: self.state.optimizer_step,
            tensors: read_safetensors(&path)?
                .into_iter()
                .map(|(n, (s, v))| (n, s, v))
                .collect(),
        };
        opt.load_state(&state)
            .map_err(|e| CheckpointError::Config(path, e.to_string()).into())
    }
}

/// Save `opt`'s state as `dir/optimizer.safetensors`; returns its step count.
///
/// # Errors
/// Engine or I/O failures.
pub fn save_optimizer(opt: &AdamW, dir: &Path) -> Result<u64, Error> {
    let state = opt.state()?;
    save_host_safetensors(&dir.join("optimizer.safetensors"), state.tensors, None)?;
    Ok(state.step)
}

/// Write `value` as pretty JSON to `path`, whole or not at all.
///
/// # Errors
/// [`Error::Io`] naming the file.
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<(), Error> {
    let text = serde_json::to_string_pretty(value).expect("plain values");
    write_atomically(path, (text + "\n").as_bytes()).map_err(Error::io(path))
}

/// One file of a manifest.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Entry {
    bytes: u64,
    sha256: String,
}

/// The size and SHA-256 (in hex) of a file, read as a stream.
///
/// # Errors
/// The I/O error.
pub fn sha256(path: &Path) -> std::io::Result<(u64, String)> {
    let Entry { bytes, sha256 } = entry(path)?;
    Ok((bytes, sha256))
}

/// The size and SHA-256 of a file.
fn entry(path: &Path) -> std::io::Result<Entry> {
    let mut file = std::fs::File::open(path)?;
    let mut hash = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut bytes = 0;
    loop {
        match std::io::Read::read(&mut file, &mut buffer)? {
            0 => break,
            n => {
                hash.update(&buffer[..n]);
                bytes += n as u64;
            }
        }
    }
    let sha256 = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(Entry { bytes, sha256 })
}

/// Write the manifest of the checkpoint in `dir`: the size and SHA-256 of every other file
/// in it; then flush the directory.
///
/// # Errors
/// I/O failures.
pub fn seal(dir: &Path) -> Result<(), Error> {
    let mut files = BTreeMap::new();
    for e in std::fs::read_dir(dir).map_err(Error::io(dir))? {
        let path = e.map_err(Error::io(dir))?.path();
        let file = path
            .file_name()
            .expect("a file")
            .to_string_lossy()
            .into_owned();
        if file != MANIFEST {
            files.insert(file, entry(&path).map_err(Error::io(&path))?);
        }
    }
    write_json(&dir.join(MANIFEST), &serde_json::json!({ "files": files }))?;
    sync_dir(dir).map_err(Error::io(dir))
}

/// Write the checkpoint `output/name` whole or not at all: `fill` writes its files into a
/// temporary directory, the manifest is written last, and the directory is renamed into
/// place (an older `output/name` first moved aside, then removed).
///
/// # Errors
/// `fill`'s error, or an I/O failure; an existing `output/name` is then intact.
pub fn write_checkpoint(
    output: &Path,
    name: &str,
    fill: impl FnOnce(&Path) -> Result<(), Error>,
) -> Result<PathBuf, Error> {
    let dir = output.join(name);
    let tmp = temporary_name(&dir);
    std::fs::create_dir(&tmp).map_err(Error::io(&tmp))?;
    let written = fill(&tmp).and_then(|()| seal(&tmp));
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let old = dir.exists().then(|| unique_name(&dir, "old"));
    let swap = || -> std::io::Result<()> {
        if let Some(old) = &old {
            std::fs::rename(&dir, old)?;
        }
        std::fs::rename(&tmp, &dir)?;
        sync_dir(output)?;
        if let Some(old) = &old {
            std::fs::remove_dir_all(old)?;
        }
        Ok(())
    };
    swap().map_err(Error::io(&dir))?;
    Ok(dir)
}

/// Why the checkpoint in `dir` is not complete, or `Ok` when its manifest matches every
/// file it lists.
///
/// # Errors
/// One line: a missing or unreadable manifest, or the first file that does not match.
pub fn verify(dir: &Path) -> Result<(), String> {
    #[derive(Deserialize)]
    struct Manifest {
        files: BTreeMap<String, Entry>,
    }
    let path = dir.join(MANIFEST);
    let text = read_text_bounded(&path, JSON_LIMIT).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!(
            "no {MANIFEST} (a save that did not finish, or a checkpoint of a version before \
             manifests)"
        ),
        _ => format!("{MANIFEST}: {e}"),
    })?;
    let manifest: Manifest = serde_json::from_str(&text).map_err(|e| format!("{MANIFEST}: {e}"))?;
    for (file, want) in &manifest.files {
        let safe = !file.contains(['/', '\\']) && file != "..";
        let got = match safe {
            true => entry(&dir.join(file)).map_err(|e| format!("{file}: {e}"))?,
            false => return Err(format!("{MANIFEST} names {file:?}")),
        };
        if got.bytes != want.bytes {
            return Err(format!(
                "{file} has {} bytes, the manifest says {}",
                got.bytes, want.bytes
            ));
        }
        if got != *want {
            return Err(format!("{file} does not match its SHA-256 in the manifest"));
        }
    }
    Ok(())
}

/// Whether the checkpoint in `dir` can be resumed: complete by its manifest ([`verify`]),
/// or written before manifests (no manifest, a `trainer_state.json`: a save of this
/// version never leaves a checkpoint's name without a manifest), with a line saying its
/// files are not checked.
///
/// # Errors
/// [`verify`]'s line.
pub fn usable(dir: &Path) -> Result<Option<String>, String> {
    let legacy = !dir.join(MANIFEST).exists() && dir.join("trainer_state.json").is_file();
    match legacy {
        true => Ok(Some(format!(
            "warning: {} has no {MANIFEST} (written before manifests): its files are not checked",
            dir.display()
        ))),
        false => verify(dir).map(|()| None),
    }
}

/// Whether `name` is a checkpoint's name, or the name of an older copy moved aside while
/// it was replaced (`.checkpoint-N.old-PID-K`); for the latter, the name it had.
fn checkpoint_name(name: &str) -> Option<(&str, bool)> {
    if name.starts_with("checkpoint-") {
        return Some((name, false));
    }
    let (name, _) = name.strip_prefix('.')?.split_once(".old-")?;
    name.starts_with("checkpoint-").then_some((name, true))
}

/// The step a checkpoint's `trainer_state.json` records.
pub(super) fn step_of(dir: &Path) -> Result<u64, String> {
    let path = dir.join("trainer_state.json");
    let text =
        read_text_bounded(&path, JSON_LIMIT).map_err(|e| format!("trainer_state.json: {e}"))?;
    let state: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("trainer_state.json: {e}"))?;
    state["step"]
        .as_u64()
        .ok_or_else(|| "trainer_state.json has no step".into())
}

/// The newest usable checkpoint in the run directory `output` (by the step it records),
/// and a line for each newer one skipped as incomplete (and one for a checkpoint of a
/// version before manifests).
///
/// # Errors
/// [`Error::Setup`] when there is none.
pub fn newest(output: &Path) -> Result<(PathBuf, Vec<String>), Error> {
    let entries = std::fs::read_dir(output)
        .map_err(|e| Error::Setup(format!("--resume {}: {e}", output.display())))?;
    let mut candidates: Vec<(u64, bool, PathBuf)> = Vec::new();
    let mut skipped = Vec::new();
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some((_, moved)) = checkpoint_name(&name) else {
            continue;
        };
        if !e.path().is_dir() {
            continue;
        }
        match step_of(&e.path()) {
            Ok(step) => candidates.push((step, !moved, e.path())),
            Err(why) => skipped.push(format!("{}: {why}", e.path().display())),
        }
    }
    // Newest first; of two with the same step, the one under its own name.
    candidates.sort_by_key(|c| std::cmp::Reverse((c.0, c.1)));
    let mut notes: Vec<String> = skipped
        .iter()
        .map(|s| format!("warning: skipping {s}"))
        .collect();
    for (_, _, dir) in candidates {
        match usable(&dir) {
            Ok(note) => {
                notes.extend(note);
                return Ok((dir, notes));
            }
            Err(why) => {
                notes.push(format!("warning: skipping {}: {why}", dir.display()));
                skipped.push(format!("{}: {why}", dir.display()));
            }
        }
    }
    let why = match skipped.is_empty() {
        true => "no checkpoint there (a checkpoint-N directory)".to_string(),
        false => format!("no complete checkpoint there ({})", skipped.join("; ")),
    };
    Err(Error::Setup(format!(
        "--resume {}: {why}",
        output.display()
    )))
}

/// Tidy what killed saves left in the run directory `output`, which this process holds:
/// temporaries are removed; an older copy moved aside is put back when its replacement is
/// missing, and removed otherwise.
///
/// # Errors
/// I/O failures.
pub fn tidy(output: &Path) -> Result<(), Error> {
    let Ok(entries) = std::fs::read_dir(output) else {
        return Ok(());
    };
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        let leftover = name.starts_with('.') && name.contains(".tmp-");
        let remove = |p: &Path| match p.is_dir() {
            true => std::fs::remove_dir_all(p),
            false => std::fs::remove_file(p),
        };
        if leftover {
            remove(&path).map_err(Error::io(&path))?;
        } else if let Some((original, true)) = checkpoint_name(&name) {
            let original = output.join(original);
            if original.exists() || verify(&path).is_err() {
                remove(&path).map_err(Error::io(&path))?;
            } else {
                std::fs::rename(&path, &original).map_err(Error::io(&path))?;
            }
        }
    }
    sync_dir(output).map_err(Error::io(output))
}

/// Remove the checkpoints named `prefix{step}` in `output` of steps before `step`: they
/// are superseded. Each is first renamed to a temporary name, which a later run tidies
/// if this one is killed while it is removed.
///
/// # Errors
/// I/O failures.
pub fn remove_before(output: &Path, prefix: &str, step: u64) -> Result<(), Error> {
    let entries = std::fs::read_dir(output).map_err(Error::io(output))?;
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        let older = name
            .strip_prefix(prefix)
            .and_then(|s| s.parse::<u64>().ok())
            .is_some_and(|s| s < step);
        if older {
            let doomed = temporary_name(&e.path());
            std::fs::rename(e.path(), &doomed).map_err(Error::io(&e.path()))?;
            std::fs::remove_dir_all(&doomed).map_err(Error::io(&doomed))?;
        }
    }
    Ok(())
}
