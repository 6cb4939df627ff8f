//! Stopping is saving: SIGINT, SIGTERM and SIGUSR1 (which cluster schedulers send before
//! they preempt a job) ask a training run to stop. The run stops at its next optimizer
//! step, writes a checkpoint of that exact step and exits with [`STOPPED`]; the processes
//! of a data-parallel run agree on the step. A second signal ends the process at once with
//! `128 + signal`, the code a shell gives a process a signal ended; the checkpoints written
//! before are intact.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::Error;

/// The exit code of a run stopped by a signal after writing its checkpoint.
pub const STOPPED: u8 = 4;

/// The signals that ask a run to stop.
pub const SIGNALS: [i32; 3] = [
    signal_hook::consts::SIGINT,
    signal_hook::consts::SIGTERM,
    signal_hook::consts::SIGUSR1,
];

/// Set by the first signal; a second one then exits.
static REQUESTED: AtomicBool = AtomicBool::new(false);
/// The signal that asked.
static SIGNAL: AtomicUsize = AtomicUsize::new(0);

/// Handle [`SIGNALS`] from now on: the first sets the request, a second exits at once.
/// Installed once per process, however often it is called.
///
/// # Errors
/// [`Error::Setup`] when the handlers cannot be installed.
pub fn install() -> Result<(), Error> {
    static INSTALLED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let installed = INSTALLED.get_or_init(|| {
        for signal in SIGNALS {
            // In this order: the exit is armed by an earlier signal's flag, not its own.
            signal_hook::flag::register_conditional_shutdown(signal, 128 + signal, &REQUESTED)
                .and_then(|_| signal_hook::flag::register_usize(signal, &SIGNAL, signal as usize))
                .and_then(|_| signal_hook::flag::register(signal, &REQUESTED))
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    });
    installed
        .clone()
        .map_err(|e| Error::Setup(format!("signal handlers: {e}")))
}

/// Whether a signal asked this process to stop.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// The name of the signal that asked, for messages (`SIGTERM`).
pub fn signal_name() -> &'static str {
    match SIGNAL.load(Ordering::SeqCst) as i32 {
        signal_hook::consts::SIGINT => "SIGINT",
        signal_hook::consts::SIGTERM => "SIGTERM",
        signal_hook::consts::SIGUSR1 => "SIGUSR1",
        _ => "a signal",
    }
}
