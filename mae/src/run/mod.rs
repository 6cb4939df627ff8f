//! What every command that trains shares, as the reference's `util/misc.py` and
//! `engine_*.py`, one file each: the options of an invocation and the settings of a run
//! (`settings`: [`Invocation`], and [`Given`], the recipe with the options given or a
//! checkpoint's saved settings), the output directory a run owns (`output`), checkpoint
//! directories complete or not there (`checkpoint`), the log (`log`: `metrics.jsonl` and
//! TensorBoard), the loss scaler (`scaler`), stopping on a signal ([`stop`]), the watchdog
//! ([`watchdog`]), the dry run ([`dry_run`]) and the training loop (`train`). This file
//! keeps the little they all call: the device, the weights' digest, progress bars and the
//! per-kernel profile.

mod checkpoint;
pub mod dry_run;
mod log;
mod output;
mod scaler;
mod settings;
pub mod stop;
mod train;
pub mod watchdog;

use engine::{Device, DeviceOptions};
use nn::named_parameters;

pub use checkpoint::{newest, seal, sha256, verify, write_json, Resumed, TrainerState, MANIFEST};
pub use log::Log;
pub use output::{newest_in, Output};
pub use scaler::{LossScaler, Precision};
pub use settings::{defaults, finite, finite_f32, Args, Given, Invocation, Launch};
pub use train::{
    Batches, EpochEnd, Learner, Position, Schedule, Step, Summary, Trainer, TrainingData,
};

use crate::dist::Dist;
use crate::Error;

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
    let mut hash = engine::Fnv::new();
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
