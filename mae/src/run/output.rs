//! A run owns its output directory.
//!
//! `--resume DIR` continues in the directory that holds the checkpoint, unless `--output`
//! says otherwise. A new run refuses a directory that already holds a run, unless
//! `--overwrite` is given; so does a resumed run where the directory holds another run, or
//! checkpoints past the one it resumes from. Rank 0 holds an advisory lock on the
//! directory (`.lock`, holding its pid) for the run's whole life, so a second run on the
//! same directory is refused at start, naming the holder.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use super::checkpoint::{self, tidy};
use crate::dist::Dist;
use crate::Error;

/// The lock file in an output directory.
const LOCK: &str = ".lock";

/// A run's output directory, held for the run's life, and the checkpoint it resumes from.
pub struct Output {
    /// The directory.
    pub dir: PathBuf,
    /// The checkpoint the run continues from, when it resumes.
    pub resume: Option<PathBuf>,
    /// Whether the run continues a run of this same directory (its log goes on).
    pub continues: bool,
    // The advisory lock, held while this is alive (rank 0's alone).
    _lock: Option<File>,
}

/// What a run's output directory holds, by name: checkpoints and what the log, pictures and
/// results are written to.
fn is_run_file(name: &str) -> bool {
    name.starts_with("checkpoint-")
        || name.starts_with("events.out.tfevents.")
        || matches!(
            name,
            "metrics.jsonl"
                | "loss.png"
                | "reconstruction.png"
                | "result.json"
                | "head.safetensors"
        )
}

/// The names in `dir` that belong to a run, sorted.
fn run_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| is_run_file(n))
        .collect();
    names.sort();
    names
}

/// `path` when it is a checkpoint (it holds `trainer_state.json` or a manifest).
fn is_checkpoint(path: &Path) -> bool {
    path.join("trainer_state.json").is_file() || path.join(checkpoint::MANIFEST).is_file()
}

impl Output {
    /// Claim the output directory of `command` for a run: `output` when given, else the
    /// directory of the checkpoint `resume` names, else `out/<command>`. Rank 0 creates and
    /// locks it, checks that it may write there, and tidies what killed saves left; then
    /// every rank finds the checkpoint to resume from: `resume` itself when it is one, else
    /// the newest complete one in it (rank 0 names those it skips).
    ///
    /// # Errors
    /// [`Error::Setup`] with one line: the directory is in use by another run, holds a run
    /// (without `overwrite`), or has no complete checkpoint to resume; I/O failures.
    pub fn claim(
        command: &str,
        output: Option<&Path>,
        resume: Option<&Path>,
        overwrite: bool,
        dist: &Dist,
    ) -> Result<Output, Error> {
        if let Some(r) = resume.filter(|r| !r.is_dir()) {
            return Err(Error::Setup(format!(
                "--resume {}: no such directory (a run's output directory, or a checkpoint in it)",
                r.display()
            )));
        }
        // A checkpoint named alone (`checkpoint-3`) is in the current directory.
        let resume_dir = resume.map(|r| match is_checkpoint(r) {
            true => r
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf(),
            false => r.to_path_buf(),
        });
        let dir = match (output, &resume_dir) {
            (Some(o), _) => o.to_path_buf(),
            (None, Some(r)) => r.clone(),
            (None, None) => Path::new("out").join(command),
        };
        let continues = resume_dir.as_deref().is_some_and(|r| same_dir(r, &dir));
        let lock = match dist.is_main() {
            true => Some(lock(&dir)?),
            false => None,
        };
        if dist.is_main() {
            tidy(&dir)?;
        }
        dist.any(false); // the others look for checkpoints once rank 0 has tidied
        let resume = match (resume, resume_dir.as_deref()) {
            (Some(r), _) if is_checkpoint(r) => {
                let note = checkpoint::usable(r).map_err(|why| {
                    Error::Setup(format!("--resume {}: incomplete: {why}", r.display()))
                })?;
                say_on_main(dist, note);
                Some(r.to_path_buf())
            }
            (Some(_), Some(run)) => {
                let (newest, notes) = checkpoint::newest(run)?;
                say_on_main(dist, notes);
                Some(newest)
            }
            _ => None,
        };
        let out = Output {
            dir,
            resume,
            continues,
            _lock: lock,
        };
        if dist.is_main() {
            out.check_owned(overwrite)?;
        }
        dist.any(false); // nothing is read before rank 0 has cleared what --overwrite replaces
        Ok(out)
    }

    /// Refuse a directory that holds another run, or this run's checkpoints past the one it
    /// resumes from; with `overwrite`, remove them instead.
    fn check_owned(&self, overwrite: bool) -> Result<(), Error> {
        let theirs: Vec<String> = match (&self.resume, self.continues) {
            // This run's own directory: only checkpoints past the resumed step are in the
            // way (they are of a future the resumed run replaces).
            (Some(from), true) => {
                let at = checkpoint::step_of(from)
                    .map_err(|why| Error::Setup(format!("--resume {}: {why}", from.display())))?;
                run_files(&self.dir)
                    .into_iter()
                    .filter(|n| n.starts_with("checkpoint-"))
                    // Incomplete ones were named as skipped, and are replaced.
                    .filter(|n| checkpoint::usable(&self.dir.join(n)).is_ok())
                    .filter(|n| checkpoint::step_of(&self.dir.join(n)).map_or(true, |s| s > at))
                    .collect()
            }
            _ => run_files(&self.dir),
        };
        // What a run that failed before logging a line left (an empty log, a TensorBoard
        // file with its header) holds nothing: it is cleared as --overwrite would.
        let holds = theirs.iter().any(|n| {
            let path = self.dir.join(n);
            match n.as_str() {
                "metrics.jsonl" => path.metadata().is_ok_and(|m| m.len() > 0),
                n => n.starts_with("checkpoint-") || n == "result.json" || n == "head.safetensors",
            }
        });
        if holds && !overwrite {
            let what = match self.continues {
                true => format!(
                    "checkpoints after {} ({}); resuming from it replaces them",
                    self.resume.as_deref().unwrap_or(Path::new("")).display(),
                    theirs.join(", ")
                ),
                false => format!("a run ({})", theirs.join(", ")),
            };
            return Err(Error::Setup(format!(
                "{} holds {what}: pass --overwrite to replace it, --resume {} to continue it, \
                 or choose another --output",
                self.dir.display(),
                self.dir.display()
            )));
        }
        for name in theirs {
            let path = self.dir.join(&name);
            let removed = match path.is_dir() {
                true => std::fs::remove_dir_all(&path),
                false => std::fs::remove_file(&path),
            };
            removed.map_err(Error::io(&path))?;
        }
        Ok(())
    }
}

/// The checkpoint `path` names: itself when it is one, else the newest complete one in it.
///
/// # Errors
/// [`Error::Setup`] when there is none.
pub fn newest_in(path: &Path) -> Result<PathBuf, Error> {
    match is_checkpoint(path) {
        true => Ok(path.to_path_buf()),
        false => Ok(checkpoint::newest(path)?.0),
    }
}

fn say_on_main(dist: &Dist, lines: impl IntoIterator<Item = String>) {
    if dist.is_main() {
        lines.into_iter().for_each(|l| crate::dist::say(&l));
    }
}

/// Whether two paths name the same directory.
fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Create `dir` and take its lock, writing this process's pid into it.
///
/// # Errors
/// [`Error::Setup`] naming the holder's pid when another process holds it.
fn lock(dir: &Path) -> Result<File, Error> {
    std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    let path = dir.join(LOCK);
    let mut file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(Error::io(&path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(Error::Setup(format!(
                "{} is in use by another run (pid {}); wait for it to end, or choose another \
                 --output",
                dir.display(),
                holder.trim()
            )));
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&path)(e)),
    }
    let mut mark = || -> std::io::Result<()> {
        file.set_len(0)?;
        file.rewind()?;
        file.write_all(format!("{}\n", std::process::id()).as_bytes())?;
        file.sync_all()
    };
    mark().map_err(Error::io(&path))?;
    Ok(file)
}
