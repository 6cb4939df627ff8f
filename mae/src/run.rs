//! What every training command shares, as the reference's `util/misc.py`: its options
//! ([`Invocation`]), checkpoint directories written whole or not at all, the log
//! (`metrics.jsonl` and TensorBoard events, written together by [`Log`]), the progress bar,
//! the per-kernel profile, and the weights digest the processes of a run compare.

use std::io::Write;
use std::path::{Path, PathBuf};

use engine::Device;
use nn::named_parameters;
use serde_json::Value;

use crate::tensorboard::EventWriter;
use crate::Error;

/// Options of one training invocation (`pretrain` or `finetune`) that do not change the
/// run itself.
pub struct Invocation {
    /// Output directory.
    pub output: PathBuf,
    /// Continue from this checkpoint (or the newest one in this output directory).
    pub resume: Option<PathBuf>,
    /// Extend a resumed run to this many epochs.
    pub epochs: Option<usize>,
    /// Decoding threads.
    pub workers: usize,
    /// Show a progress bar (when stderr is a terminal).
    pub progress: bool,
}

/// A run's log in its output directory: `metrics.jsonl` (one JSON object a line, what
/// `loss.png` is drawn from) and a TensorBoard event file (`tensorboard --logdir out/`),
/// written together. Only rank 0 of a data-parallel run keeps one.
pub struct Log {
    jsonl: std::fs::File,
    path: PathBuf,
    events: EventWriter,
}

impl Log {
    /// Open the log of a run that starts at `start` of `key` (`step` or `epoch`): lines of
    /// an earlier run at or after it are dropped, and TensorBoard is told to drop its
    /// events after it too; 0 starts afresh.
    ///
    /// # Errors
    /// One line naming the file that cannot be written.
    pub fn open(output: &Path, key: &str, start: u64) -> Result<Log, String> {
        let path = output.join("metrics.jsonl");
        let io = |e: std::io::Error| format!("{}: {e}", path.display());
        let kept: String = match std::fs::read_to_string(&path) {
            Ok(text) if start > 0 => text
                .lines()
                .filter(|l| {
                    serde_json::from_str::<Value>(l)
                        .ok()
                        .and_then(|v| v.get(key)?.as_u64())
                        .is_some_and(|s| s < start)
                })
                .map(|l| format!("{l}\n"))
                .collect(),
            _ => String::new(),
        };
        std::fs::write(&path, kept).map_err(io)?;
        let jsonl = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io)?;
        let events =
            EventWriter::create(output, start).map_err(|e| format!("{}: {e}", output.display()))?;
        Ok(Log {
            jsonl,
            path,
            events,
        })
    }

    /// `metrics.jsonl`'s path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One line of `index` (its first entry is the TensorBoard step) and `values`, the
    /// values also as TensorBoard scalars named `{group}/{name}`.
    ///
    /// # Errors
    /// One line naming the file that cannot be written.
    pub fn line(
        &mut self,
        group: &str,
        index: &[(&str, u64)],
        values: &[(&str, f64)],
    ) -> Result<(), String> {
        let mut line = serde_json::Map::new();
        for (k, v) in index {
            line.insert(k.to_string(), (*v).into());
        }
        for (k, v) in values {
            line.insert(k.to_string(), (*v).into());
        }
        let io = |e: std::io::Error| format!("{}: {e}", self.path.display());
        writeln!(self.jsonl, "{}", Value::Object(line)).map_err(io)?;
        let step = index.first().map_or(0, |(_, s)| *s);
        for (k, v) in values {
            self.events
                .scalar(&format!("{group}/{k}"), step, *v)
                .map_err(io)?;
        }
        Ok(())
    }

    /// A picture at `step` in TensorBoard.
    ///
    /// # Errors
    /// One line when it cannot be encoded or written.
    pub fn image(&mut self, tag: &str, step: u64, picture: &image::RgbImage) -> Result<(), String> {
        let mut png = Vec::new();
        picture
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .map_err(|e| e.to_string())?;
        let shape = (picture.height(), picture.width(), 3);
        self.events
            .image(tag, step, &png, shape)
            .map_err(|e| format!("{}: {e}", self.events.path().display()))
    }

    /// Write what is buffered, so readers see it.
    ///
    /// # Errors
    /// One line naming the file that cannot be written.
    pub fn flush(&mut self) -> Result<(), String> {
        let io = |e: std::io::Error| format!("{}: {e}", self.path.display());
        self.jsonl.flush().map_err(io)?;
        self.events.flush().map_err(io)
    }
}

/// `path` itself when it is a checkpoint, else its newest `checkpoint-N` (a directory with
/// `trainer_state.json`).
pub fn checkpoint_dir(path: &Path) -> Result<PathBuf, String> {
    if path.join("trainer_state.json").is_file() {
        return Ok(path.to_path_buf());
    }
    let newest = std::fs::read_dir(path)
        .map_err(|e| format!("--resume {}: {e}", path.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n: usize = name.strip_prefix("checkpoint-")?.parse().ok()?;
            e.path()
                .join("trainer_state.json")
                .is_file()
                .then_some((n, e.path()))
        })
        .max_by_key(|(n, _)| *n);
    newest.map(|(_, p)| p).ok_or_else(|| {
        format!(
            "--resume {}: no checkpoint there (a checkpoint-N directory with trainer_state.json)",
            path.display()
        )
    })
}

/// A digest of every parameter's bytes, to check that the processes of a run hold the
/// same weights.
pub fn weights_digest(model: &dyn nn::Module) -> Result<String, Error> {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for (_, t) in named_parameters(model) {
        for v in t.to_vec().map_err(|e| Error::Setup(e.to_string()))? {
            for b in v.to_le_bytes() {
                hash = (hash ^ b as u64).wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    Ok(format!("{hash:016x}"))
}

/// Write the directory `output/name` whole or not at all: `fill` writes into a hidden
/// temporary directory, which is renamed into place once complete (replacing an older one).
///
/// # Errors
/// `fill`'s error, or one line for an I/O failure; an existing `output/name` is then intact.
pub fn write_dir_atomically(
    output: &Path,
    name: &str,
    fill: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<PathBuf, String> {
    let dir = output.join(name);
    let tmp = output.join(format!(".{name}.tmp"));
    let io = |e: std::io::Error| format!("{}: {e}", tmp.display());
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io)?;
    }
    std::fs::create_dir_all(&tmp).map_err(io)?;
    fill(&tmp)?;
    if dir.exists() {
        let old = output.join(format!(".{name}.old"));
        std::fs::rename(&dir, &old).map_err(io)?;
        std::fs::rename(&tmp, &dir).map_err(io)?;
        std::fs::remove_dir_all(&old).map_err(io)?;
    } else {
        std::fs::rename(&tmp, &dir).map_err(io)?;
    }
    Ok(dir)
}

/// A progress bar of `len` steps named `prefix` (hidden unless `show`).
pub fn progress_bar(show: bool, len: usize, prefix: String) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} {elapsed_precise}<{eta_precise}  {msg}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(prefix);
    bar
}

/// Turn on per-kernel timing when `ENGINE_PROFILE` is set (and not 0); returns whether on.
pub fn profiling(device: &Device) -> bool {
    let on = std::env::var_os("ENGINE_PROFILE").is_some_and(|v| v != "0");
    device.set_profiling(on);
    on
}

/// Per-kernel times of the run, slowest first (`ENGINE_PROFILE=1`).
pub fn print_profile(device: &Device) {
    device.synchronize().ok();
    let clock = match device.profile_clock() {
        Some(engine::Clock::GpuTimestamps) => "GPU timestamps",
        _ => "wall time, each dispatch submitted alone",
    };
    let times = device.profile();
    let total: f64 = times.iter().map(|t| t.seconds).sum();
    eprintln!("kernel time (ENGINE_PROFILE, {clock}), slowest first:");
    for t in times.iter().take(15) {
        eprintln!(
            "{:>5.1}%  {:>8.3} s  {:>7} dispatches  {}",
            100.0 * t.seconds / total,
            t.seconds,
            t.dispatches,
            t.kernel
        );
    }
}
