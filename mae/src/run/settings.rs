//! A training command's options and a run's settings: what the command line gave, what the
//! recipe fills in, and what a resumed run keeps from its checkpoint.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::{newest_in, Output, Resumed};
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

    /// The run's settings (`given`'s, else the `recipe`'s, else a checkpoint's:
    /// [`Given::settle`]) and how it starts: a dry run, or a run in the output directory it
    /// claims ([`Output::claim`]) for `command`.
    ///
    /// # Errors
    /// As [`Output::claim`] and [`Given::settle`].
    pub fn start(
        &self,
        command: &str,
        given: &Given,
        recipe: impl FnOnce(&S) -> Result<S, Error>,
        dist: &Dist,
    ) -> Result<Launch<S>, Error>
    where
        S: Serialize + DeserializeOwned + Clone,
    {
        let (output, resume) = match self.dry_run {
            true => {
                let checkpoint = self.resume.as_deref().map(newest_in).transpose()?;
                (None, checkpoint)
            }
            false => {
                let (dir, resume) = (self.run.output.as_deref(), self.resume.as_deref());
                let output = Output::claim(command, dir, resume, self.run.overwrite, dist)?;
                let checkpoint = output.resume.clone();
                (Some(output), checkpoint)
            }
        };
        let (settings, resumed) = given.settle(&self.settings, resume.as_deref(), recipe, dist)?;
        Ok(Launch {
            settings,
            resumed,
            output,
        })
    }
}

/// How a training command starts ([`Args::start`]).
pub struct Launch<S> {
    /// The run's settings.
    pub settings: S,
    /// The checkpoint it continues.
    pub resumed: Option<Resumed<S>>,
    /// The output directory it owns; `None` for a dry run, which writes nothing.
    pub output: Option<Output>,
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
