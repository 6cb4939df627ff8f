//! How a `mae` command fails: one line for the user, and an exit code that depends only on
//! the kind of failure, the same for every command: 2 for bad input or setup, 3 for a
//! diverged run, 4 for a run a signal stopped after its checkpoint, 1 otherwise (a failure
//! of the program or the machine).

use std::path::{Path, PathBuf};

use nn::CheckpointError;

use crate::data::DataError;

/// A failed command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Options, settings or a launch that cannot make a run.
    #[error("{0}")]
    Setup(String),
    /// Data missing, unreadable or unsuitable.
    #[error(transparent)]
    Data(#[from] DataError),
    /// A model, checkpoint or configuration file missing, unreadable or inconsistent.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A file or directory that cannot be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// A picture that cannot be decoded, encoded or written.
    #[error("{}: {source}", path.display())]
    Image {
        /// The picture's file.
        path: PathBuf,
        /// What the codec said.
        source: image::ImageError,
    },
    /// What the engine reports: no adapter, a lost device, memory, a failed kernel.
    #[error("{0}{hint}", hint = memory_hint(.0))]
    Engine(#[from] engine::Error),
    /// A signal asked the run to stop, and it did, at a step boundary, after writing the
    /// checkpoint of that step.
    #[error("stopped by {signal} at {at}; checkpoint {} written; continue with --resume {}", checkpoint.display(), output.display())]
    Stopped {
        /// The signal's name.
        signal: &'static str,
        /// Where in the run: `step 12 (epoch 1)`.
        at: String,
        /// The checkpoint written.
        checkpoint: PathBuf,
        /// The run's directory.
        output: PathBuf,
    },
    /// The loss became NaN or infinite. The run stopped before the update; the checkpoints
    /// written before are intact.
    #[error("the loss is {loss} {at}; training stopped. {checkpoint}")]
    NonFinite {
        /// The loss read back.
        loss: f32,
        /// Where in the run: `at step 12 (epoch 1)`.
        at: String,
        /// Which checkpoint is the last good one.
        checkpoint: String,
    },
}

/// What to try when the adapter's memory is what failed.
fn memory_hint(e: &engine::Error) -> &'static str {
    match e {
        engine::Error::OutOfMemory { .. } | engine::Error::TooLarge { .. } => {
            ". `--dry-run` measures one step; --checkpoint-activations, --precision f16-mixed \
             or a smaller --batch-size need less"
        }
        _ => "",
    }
}

impl Error {
    /// The divergence of a run `at` a point (`at step 12 (epoch 1)`), whose newest
    /// checkpoint, if any, is `last_checkpoint`.
    pub fn non_finite(loss: f32, at: String, last_checkpoint: Option<&Path>) -> Error {
        Error::NonFinite {
            loss,
            at,
            checkpoint: match last_checkpoint {
                Some(dir) => format!("The last good checkpoint is {}.", dir.display()),
                None => "No checkpoint had been written.".into(),
            },
        }
    }

    /// For `map_err`: an I/O failure on `path`.
    pub fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// For `map_err`: a picture that cannot be written to `path`.
    pub fn image(path: &Path) -> impl FnOnce(image::ImageError) -> Error + '_ {
        move |source| Error::Image {
            path: path.to_path_buf(),
            source,
        }
    }

    /// The process exit code: 2 for bad input or setup (a machine without an adapter and
    /// a bad `ENGINE_*` variable included), 3 for a diverged run, 4 for a run a signal
    /// stopped (its checkpoint written), 1 for anything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Engine(e) | Error::Checkpoint(CheckpointError::Engine(e)) => match e {
                // The adapter cannot hold or run what was asked: a setup the user changes.
                engine::Error::NoAdapter(_)
                | engine::Error::AdapterLimit { .. }
                | engine::Error::Setting { .. }
                | engine::Error::OutOfMemory { .. }
                | engine::Error::TooLarge { .. }
                | engine::Error::Unsupported { .. } => 2,
                _ => 1,
            },
            Error::Stopped { .. } => crate::run::stop::STOPPED,
            Error::Setup(_)
            | Error::Data(_)
            | Error::Checkpoint(_)
            | Error::Io { .. }
            | Error::Image { .. } => 2,
            Error::NonFinite { .. } => 3,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exit_code_follows_the_kind_of_failure() {
        let io = || std::io::Error::other("disk full");
        let shape = || engine::Error::Shape {
            op: "matmul",
            msg: "(2, 3) @ (4, 5)".into(),
        };
        let cases = [
            (Error::Setup("--epochs must be at least 1".into()), 2),
            (Error::Data(DataError::Empty("no images".into())), 2),
            (Error::Checkpoint(CheckpointError::Io("m".into(), io())), 2),
            (Error::io(Path::new("out"))(io()), 2),
            (Error::Engine(engine::Error::NoAdapter("none".into())), 2),
            (Error::Engine(shape()), 1),
            (Error::Checkpoint(CheckpointError::Engine(shape())), 1),
            (Error::non_finite(f32::NAN, "at step 3".into(), None), 3),
            (
                Error::Engine(engine::Error::Setting {
                    name: "ENGINE_ATTENTION",
                    value: "fast".into(),
                    expected: "rows or tiled".into(),
                }),
                2,
            ),
            (
                Error::Engine(engine::Error::Kernel {
                    kernel: "k.wgsl::main".into(),
                    message: "no".into(),
                }),
                1,
            ),
            (
                Error::Stopped {
                    signal: "SIGTERM",
                    at: "step 3 (epoch 1)".into(),
                    checkpoint: "out/checkpoint-step-3".into(),
                    output: "out".into(),
                },
                4,
            ),
        ];
        for (e, code) in cases {
            assert_eq!(e.exit_code(), code, "{e}");
        }
    }
}
