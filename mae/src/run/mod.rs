//! What every command that trains shares, as the reference's `util/misc.py` and
//! `engine_*.py`: the options of an invocation ([`Invocation`]), the settings of a run
//! ([`Given`]: the recipe with the options given, or a checkpoint's saved settings), the
//! output directory a run owns ([`Output`]), checkpoint directories complete or not there
//! (`checkpoint`), the log ([`Log`]: `metrics.jsonl` and TensorBoard), stopping on a
//! signal ([`stop`]), the watchdog ([`watchdog`]), progress, the per-kernel profile, and
//! the training loop ([`Trainer`]).

mod checkpoint;
pub mod dry_run;
mod log;
mod output;
mod scaler;
pub mod stop;
mod train;
pub mod watchdog;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use engine::{Device, DeviceOptions};
use nn::named_parameters;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

pub use checkpoint::{newest, seal, sha256, verify, write_json, Resumed, TrainerState, MANIFEST};
pub use log::Log;
pub use output::{newest_in, Output};
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
    /// End the run (every process of it) when no training or evaluation step has finished
    /// for this many seconds: a stalled run stops wasting the machines. 0 turns it off.
    #[arg(long, default_value_t = 1800, value_name = "SECONDS")]
    pub stall_timeout: u64,
}

impl<S: clap::Args> Args<S> {
    /// How this invocation runs, the training commands' own options included.
    pub fn invocation(&self) -> Invocation {
        Invocation {
            checkpoint_activations: self.checkpoint_activations,
            stall_timeout: std::time::Duration::from_secs(self.stall_timeout),
            ..self.run.clone()
        }
    }

    /// Claim the run's output directory, and find the checkpoint it resumes from
    /// ([`Output::claim`]).
    ///
    /// # Errors
    /// As [`Output::claim`].
    pub fn claim(&self, command: &str, dist: &Dist) -> Result<Output, Error> {
        let (output, resume) = (self.run.output.as_deref(), self.resume.as_deref());
        Output::claim(command, output, resume, self.run.overwrite, dist)
    }
}

/// Options of one invocation that do not change the run itself.
#[derive(Clone, Debug, clap::Args)]
pub struct Invocation {
    /// Output directory: checkpoints, metrics.jsonl, TensorBoard events, pictures
    /// [default: out/COMMAND].
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Replace what the output directory holds of an earlier run (checkpoints, log,
    /// pictures, results) instead of refusing it.
    #[arg(long)]
    pub overwrite: bool,
    /// Threads that decode and augment images.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Activation checkpointing when training (`Args::checkpoint_activations`).
    #[arg(skip)]
    pub checkpoint_activations: bool,
    /// The watchdog's timeout when training (`Args::stall_timeout`); zero turns it off.
    #[arg(skip)]
    pub stall_timeout: std::time::Duration,
    /// Show progress bars (when stderr is a terminal).
    #[arg(skip = std::io::IsTerminal::is_terminal(&std::io::stderr()))]
    pub progress: bool,
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
            let mut settings = fields(&self.merge(parsed, recipe(parsed)?, |_| true)?);
            settings.insert("ranks".into(), dist.size().into());
            let settings = serde_json::from_value(Value::Object(settings))
                .map_err(|e| Error::Setup(format!("the run's settings: {e}")))?;
            return Ok((settings, None));
        };
        let resumed = Resumed::<S>::read(path)?;
        let (dir, state) = (&resumed.dir, &resumed.state);
        if dist.is_main() {
            let at = format!("epoch {}, step {}", state.epoch, state.step);
            eprintln!("resuming {} at {at}", dir.display());
        }
        let settings = self.resume(parsed, state.settings.clone(), dist.is_main())?;
        Ok((settings, Some(resumed)))
    }

    fn resume<S: Serialize + DeserializeOwned>(
        &self,
        parsed: &S,
        saved: S,
        warn: bool,
    ) -> Result<S, Error> {
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
    ) -> Result<S, Error> {
        let mut merged = fields(&base);
        for (k, v) in fields(parsed) {
            if self.0.contains(&k) && allowed(&k) && merged.contains_key(&k) {
                merged.insert(k, v);
            }
        }
        serde_json::from_value(Value::Object(merged))
            .map_err(|e| Error::Setup(format!("the run's settings: {e}")))
    }
}

fn fields<S: Serialize>(settings: &S) -> serde_json::Map<String, Value> {
    match serde_json::to_value(settings) {
        Ok(Value::Object(map)) => map,
        _ => unreachable!("settings are a struct of plain values"),
    }
}

/// A command-line number that must be finite (`--blr nan` is refused as it is parsed).
///
/// # Errors
/// A message for clap.
pub fn finite(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(_) => Err("must be a finite number".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// [`finite`] in single precision.
///
/// # Errors
/// A message for clap.
pub fn finite_f32(text: &str) -> Result<f32, String> {
    match text.parse::<f32>() {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(_) => Err("must be a finite number".into()),
        Err(e) => Err(e.to_string()),
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
    Ok(device)
}

/// A digest of every parameter's bytes, to check that the processes of a run hold the
/// same weights.
///
/// # Errors
/// Engine failures.
pub fn weights_digest(model: &dyn nn::Module) -> Result<String, Error> {
    let mut hash = crate::dist::Fnv::new();
    for (_, t) in named_parameters(model) {
        for v in t.to_vec()? {
            hash.add(&v.to_le_bytes());
        }
    }
    Ok(format!("{:016x}", hash.finish()))
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
    let dispatches: u64 = times.iter().map(|t| t.dispatches).sum();
    eprintln!("kernel time (ENGINE_PROFILE, {clock}; {dispatches} dispatches), slowest first:");
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
