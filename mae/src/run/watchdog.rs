//! A watchdog: when no training or evaluation step has finished for a long time, the run
//! has stalled (a hung driver, a file system that does not answer, a process of the job
//! that stopped), and waiting longer only wastes the machines. The watchdog then names the
//! stall and ends the job: under `mpirun` every process, not only this one.
//!
//! A process that waits in a collective operation for the others gives them
//! [`WAITING_GRACE`] more, so that a process stalled by itself is the one whose watchdog
//! fires first and names itself.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How much longer than the timeout a process waiting for the others waits, as a fraction
/// of the timeout.
pub const WAITING_GRACE: f64 = 0.5;

/// Milliseconds from the process's first beat to its last.
static LAST_BEAT: AtomicU64 = AtomicU64::new(0);
/// The iteration the last training step finished.
static LAST_STEP: AtomicU64 = AtomicU64::new(0);
/// Whether this process waits for the others in a collective operation.
static WAITING: AtomicBool = AtomicBool::new(false);

fn clock() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// A step of work finished (a training iteration, an evaluation batch, a save).
pub fn beat() {
    LAST_BEAT.store(clock(), Ordering::SeqCst);
}

/// Training iteration `step` finished.
pub fn step_done(step: u64) {
    LAST_STEP.store(step, Ordering::SeqCst);
    beat();
}

/// Run `f`, a collective operation, marked as waiting for the other processes.
pub fn waiting<T>(f: impl FnOnce() -> T) -> T {
    WAITING.store(true, Ordering::SeqCst);
    let out = f();
    WAITING.store(false, Ordering::SeqCst);
    out
}

/// A thread that calls `stall` with a line of explanation when no beat came for `timeout`
/// (or `timeout` and the grace, while waiting for the other processes). Stops when
/// dropped.
pub struct Watchdog {
    done: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Watch this process (`rank`) from now on.
    pub fn start(
        timeout: Duration,
        rank: usize,
        stall: impl Fn(String) + Send + 'static,
    ) -> Watchdog {
        beat();
        let done = Arc::new(AtomicBool::new(false));
        let stop = done.clone();
        let tick = (timeout / 20).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let thread = std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(tick);
                let waiting = WAITING.load(Ordering::SeqCst);
                let limit = match waiting {
                    true => timeout.mul_f64(1.0 + WAITING_GRACE),
                    false => timeout,
                };
                let quiet =
                    Duration::from_millis(clock().saturating_sub(LAST_BEAT.load(Ordering::SeqCst)));
                if quiet < limit || stop.load(Ordering::SeqCst) {
                    continue;
                }
                let step = LAST_STEP.load(Ordering::SeqCst);
                let secs = quiet.as_secs_f64().round();
                stall(match waiting {
                    true => format!(
                        "rank {rank} waited {secs} s for the other processes after step {step}: \
                         another one stalled; stopping the job (--stall-timeout)"
                    ),
                    false => format!(
                        "rank {rank} stalled: no step finished for {secs} s after step {step}; \
                         stopping the job (--stall-timeout)"
                    ),
                });
                return;
            }
        });
        Watchdog {
            done,
            thread: Some(thread),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    // One test: the beats are the process's.
    #[test]
    fn a_stall_is_named_and_beats_keep_it_away() {
        let (tx, rx) = channel();
        let tx = std::sync::Mutex::new(tx);
        let timeout = Duration::from_millis(300);
        let dog = Watchdog::start(timeout, 3, move |line| {
            tx.lock().unwrap().send(line).unwrap()
        });
        for step in 1..=6 {
            std::thread::sleep(Duration::from_millis(100));
            step_done(step);
        }
        assert!(
            rx.try_recv().is_err(),
            "beating every 100 ms is not a stall"
        );
        let line = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(
            line.starts_with("rank 3 stalled: no step finished for"),
            "{line}"
        );
        assert!(line.contains("after step 6"), "{line}");
        drop(dog);

        // Waiting for the others, the process gives them the grace first.
        let (tx, rx) = channel();
        let tx = std::sync::Mutex::new(tx);
        let started = Instant::now();
        let dog = Watchdog::start(timeout, 0, move |line| {
            tx.lock().unwrap().send(line).unwrap()
        });
        let line = waiting(|| rx.recv_timeout(Duration::from_secs(5)).unwrap());
        assert!(started.elapsed() >= timeout.mul_f64(1.0 + WAITING_GRACE));
        assert!(line.starts_with("rank 0 waited"), "{line}");
        drop(dog);
    }
}
