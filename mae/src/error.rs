//! How a `mae` command fails: one line for the user, and an exit code that depends only on
//! the kind of failure, the same for every command.

use std::path::Path;

/// A failed command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad options, data, model or configuration, or files that cannot be read or written.
    #[error("{0}")]
    Setup(String),
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

    /// The process exit code: 2 for bad input or setup, 3 for a diverged run.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Setup(_) => 2,
            Error::NonFinite { .. } => 3,
        }
    }
}

impl From<String> for Error {
    fn from(message: String) -> Error {
        Error::Setup(message)
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Error {
        Error::Setup(message.to_string())
    }
}
