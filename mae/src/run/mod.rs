//! What every command that trains shares, as the reference's `util/misc.py` and
//! `engine_*.py`: the options of an invocation ([`Invocation`]), the settings of a run
//! ([`Given`]: the recipe with the options given, or a checkpoint's saved settings),
//! checkpoint directories written whole or not at all, `trainer_state.json`, the log
//! ([`Log`]: `metrics.jsonl` and TensorBoard), progress, the per-kernel profile, and the
//! training loop ([`Trainer`]).

pub mod dry_run;
mod log;
mod scaler;
mod train;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use engine::{AdamW, Device, DeviceOptions, OptimizerState};
use nn::{named_parameters, read_safetensors, save_host_safetensors, CheckpointError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use log::Log;
pub use scaler::{LossScaler, Precision};
pub use train::{Learner, Position, Schedule, Step, Trainer};

use crate::dist::Dist;
use crate::Error;

/// A training command's options: the run's settings, and how this invocation runs.
#[derive(Clone, Debug, clap::Args)]
pub struct Args<S: clap::Args> {
    /// The run's settings.
    #[command(flatten)]
    pub settings: S,
    /// Continue a run from a checkpoint directory (or the newest checkpoint in an output
    /// directory). The run's saved settings are used; only --epochs may extend it.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Where and how this invocation runs.
    #[command(flatten)]
    pub run: Invocation,
    /// Activation checkpointing: each transformer block keeps only its input and recomputes
    /// the rest in backward. Less memory for a second forward of every block; the same
    /// gradients, so a run may turn it on or off when it resumes.
    #[arg(long)]
    pub checkpoint_activations: bool,
    /// Measure one training step of this model, batch and options on random images, print
    /// its memory beside the adapter's, and exit (2 when it does not fit). No images are
    /// read (fine-tuning reads the data's class count) and nothing is written.
    #[arg(long)]
    pub dry_run: bool,
}

impl<S: clap::Args> Args<S> {
    /// How this invocation runs, the training commands' own options included.
    pub fn invocation(&self) -> Invocation {
        Invocation {
            checkpoint_activations: self.checkpoint_activations,
            ..self.run.clone()
        }
    }
}

/// Options of one invocation that do not change the run itself.
#[derive(Clone, Debug, clap::Args)]
pub struct Invocation {
    /// Output directory: checkpoints, metrics.jsonl, TensorBoard events, pictures
    /// [default: out/COMMAND].
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Threads that decode and augment images.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Activation checkpointing when training (`Args::checkpoint_activations`).
    #[arg(skip)]
    pub checkpoint_activations: bool,
    /// Show progress bars (when stderr is a terminal).
    #[arg(skip = std::io::IsTerminal::is_terminal(&std::io::stderr()))]
    pub progress: bool,
}

impl Invocation {
    /// `--output`, or `out/<command>`.
    pub fn output(&self, command: &str) -> PathBuf {
        self.output
            .clone()
            .unwrap_or_else(|| Path::new("out").join(command))
    }
}

/// The options given on a command line (not left to their defaults), by argument id, which
/// is the settings field's name.
#[derive(Clone, Debug, Default)]
pub struct Given(BTreeSet<String>);

impl Given {
    /// The options of a subcommand's `matches` that the command line gave.
    pub fn of(matches: &clap::ArgMatches) -> Given {
        Given(
            matches
                .ids()
                .filter(|id| matches.value_source(id.as_str()) == Some(ValueSource::CommandLine))
                .map(|id| id.to_string())
                .collect(),
        )
    }

    /// The settings of a run from the command line's `parsed` settings: with `resume`, the
    /// checkpoint's saved settings, so that it is the same run (only `--epochs` may extend
    /// it; rank 0 names other options given in a warning, and says where the run
    /// resumes); else the `recipe` for the model `parsed` names, with each option the
    /// command line gave taken from `parsed`, and `ranks` the processes of `dist`.
    ///
    /// # Errors
    /// An unreadable checkpoint, or the recipe's error.
    pub fn settle<S: Serialize + DeserializeOwned + Clone>(
        &self,
        parsed: &S,
        resume: Option<&Path>,
        recipe: impl FnOnce(&S) -> Result<S, Error>,
        dist: &Dist,
    ) -> Result<(S, Option<Resumed<S>>), Error> {
        let Some(path) = resume else {
            let mut settings = fields(&self.merge(parsed, recipe(parsed)?, |_| true));
            settings.insert("ranks".into(), dist.size().into());
            let settings = serde_json::from_value(Value::Object(settings));
            return Ok((settings.expect("a training command's settings"), None));
        };
        let resumed = Resumed::<S>::read(path)?;
        let (dir, state) = (&resumed.dir, &resumed.state);
        if dist.is_main() {
            let at = format!("epoch {}, step {}", state.epoch, state.step);
            eprintln!("resuming {} at {at}", dir.display());
        }
        let settings = self.resume(parsed, state.settings.clone(), dist.is_main());
        Ok((settings, Some(resumed)))
    }

    fn resume<S: Serialize + DeserializeOwned>(&self, parsed: &S, saved: S, warn: bool) -> S {
        let ignored: Vec<String> = fields(&saved)
            .keys()
            .filter(|k| self.0.contains(*k) && *k != "epochs")
            .map(|k| format!("--{}", k.replace('_', "-")))
            .collect();
        if warn && !ignored.is_empty() {
            eprintln!(
                "warning: --resume continues the run with its saved settings; ignoring {}",
                ignored.join(", ")
            );
        }
        self.merge(parsed, saved, |k| k == "epochs")
    }

    fn merge<S: Serialize + DeserializeOwned>(
        &self,
        parsed: &S,
        base: S,
        allowed: impl Fn(&str) -> bool,
    ) -> S {
        let mut merged = fields(&base);
        for (k, v) in fields(parsed) {
            if self.0.contains(&k) && allowed(&k) && merged.contains_key(&k) {
                merged.insert(k, v);
            }
        }
        serde_json::from_value(Value::Object(merged)).expect("a settings type's own fields")
    }
}

fn fields<S: Serialize>(settings: &S) -> serde_json::Map<String, Value> {
    match serde_json::to_value(settings) {
        Ok(Value::Object(map)) => map,
        _ => unreachable!("settings are a struct of plain values"),
    }
}

/// A settings type's defaults: its command-line defaults, as an empty command line gives.
pub fn defaults<S: clap::Args + clap::FromArgMatches>() -> S {
    let command = S::augment_args(clap::Command::new("defaults"));
    S::from_arg_matches(&command.get_matches_from(["defaults"])).expect("defaults for every field")
}

/// This process's device: the GPU of its local rank when several share a machine.
///
/// # Errors
/// [`Error::Engine`] when there is no adapter.
pub fn device(dist: &Dist) -> Result<Device, Error> {
    let device = Device::with_options(DeviceOptions {
        adapter_index: Some(dist.local_rank()),
        ..Default::default()
    })?;
    if let Some(line) = dist.describe(&device.info().name) {
        crate::dist::say(&line);
    }
    profiling(&device);
    Ok(device)
}

/// Where a run stands, as each checkpoint's `trainer_state.json` records it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainerState<S> {
    /// Epochs completed.
    pub epoch: usize,
    /// Iterations completed.
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
}

/// A checkpoint to continue from: its directory and state.
pub struct Resumed<S> {
    /// The checkpoint directory.
    pub dir: PathBuf,
    /// Its `trainer_state.json`.
    pub state: TrainerState<S>,
}

impl<S: DeserializeOwned> Resumed<S> {
    /// The checkpoint at `path`, or the newest one in it.
    ///
    /// # Errors
    /// One line when there is none or its `trainer_state.json` is unreadable.
    pub fn read(path: &Path) -> Result<Resumed<S>, Error> {
        let dir = checkpoint_dir(path)?;
        let path = dir.join("trainer_state.json");
        let text = std::fs::read_to_string(&path).map_err(Error::io(&path))?;
        let state = serde_json::from_str(&text)
            .map_err(|e| CheckpointError::Config(path.clone(), e.to_string()))?;
        Ok(Resumed { dir, state })
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

/// Write `value` as pretty JSON to `path`.
///
/// # Errors
/// [`Error::Io`] naming the file.
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<(), Error> {
    let text = serde_json::to_string_pretty(value).expect("plain values");
    std::fs::write(path, text + "\n").map_err(Error::io(path))
}

/// `path` itself when it is a checkpoint, else its newest `checkpoint-N` (a directory with
/// `trainer_state.json`).
///
/// # Errors
/// [`Error::Setup`] when there is no checkpoint there.
pub fn checkpoint_dir(path: &Path) -> Result<PathBuf, Error> {
    if path.join("trainer_state.json").is_file() {
        return Ok(path.to_path_buf());
    }
    let newest = std::fs::read_dir(path)
        .map_err(|e| Error::Setup(format!("--resume {}: {e}", path.display())))?
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
        Error::Setup(format!(
            "--resume {}: no checkpoint there (a checkpoint-N directory with trainer_state.json)",
            path.display()
        ))
    })
}

/// A digest of every parameter's bytes, to check that the processes of a run hold the
/// same weights.
///
/// # Errors
/// Engine failures.
pub fn weights_digest(model: &dyn nn::Module) -> Result<String, Error> {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for (_, t) in named_parameters(model) {
        for v in t.to_vec()? {
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
/// `fill`'s error, or an I/O failure; an existing `output/name` is then intact.
pub fn write_dir_atomically(
    output: &Path,
    name: &str,
    fill: impl FnOnce(&Path) -> Result<(), Error>,
) -> Result<PathBuf, Error> {
    let dir = output.join(name);
    let tmp = output.join(format!(".{name}.tmp"));
    let io = Error::io(&tmp);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(Error::io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(Error::io(&tmp))?;
    fill(&tmp)?;
    let swap = || -> std::io::Result<()> {
        if dir.exists() {
            let old = output.join(format!(".{name}.old"));
            std::fs::rename(&dir, &old)?;
            std::fs::rename(&tmp, &dir)?;
            std::fs::remove_dir_all(&old)
        } else {
            std::fs::rename(&tmp, &dir)
        }
    };
    swap().map_err(io)?;
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

/// Turn on per-kernel timing when `ENGINE_PROFILE` is set (and not 0).
pub fn profiling(device: &Device) {
    let on = std::env::var_os("ENGINE_PROFILE").is_some_and(|v| v != "0");
    device.set_profiling(on);
}

/// Per-kernel times of the run, slowest first, when `ENGINE_PROFILE` turned them on.
pub fn print_profile(device: &Device) {
    let clock = match device.profile_clock() {
        None => return,
        Some(engine::Clock::GpuTimestamps) => "GPU timestamps",
        Some(_) => "wall time, each dispatch submitted alone",
    };
    device.synchronize().ok();
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
