//! The one error type of the engine. Every message names the op and the shapes involved,
//! so a user mistake reads as one clear line.

/// Result alias used by every fallible engine call.
pub type Result<T> = std::result::Result<T, Error>;

/// What can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No adapter at all: the message says what to install.
    #[error("no GPU adapter found ({0}). On Linux without a GPU install Mesa's software Vulkan driver: `apt-get install mesa-vulkan-drivers`")]
    NoAdapter(String),
    /// The device could not be created or was lost, or wgpu reported an error outside the
    /// calls that capture their own (an invalid command, a failed mapping).
    #[error("GPU device error: {0}")]
    Device(String),
    /// A setting of the engine (an `ENGINE_*` environment variable or a
    /// [`crate::DeviceOptions`] field) that cannot be used.
    #[error("{name}={value:?}: {expected}")]
    Setting {
        /// The variable or option.
        name: &'static str,
        /// The value given.
        value: String,
        /// What it must be.
        expected: String,
    },
    /// A kernel the adapter's shader compiler or pipeline creation refused. Found when the
    /// kernel is first dispatched and reported at the next synchronisation or read-back.
    #[error("kernel {kernel} could not be built on this adapter: {message}")]
    Kernel {
        /// `file::entry` and its override values.
        kernel: String,
        /// What wgpu said.
        message: String,
    },
    /// Operand shapes that do not fit the op.
    #[error("{op}: {msg}")]
    Shape {
        /// The op that refused its operands.
        op: &'static str,
        /// What was wrong, with the shapes.
        msg: String,
    },
    /// An axis outside `0..rank`.
    #[error("{op}: axis {axis} is out of range for a tensor of shape {shape:?}")]
    Axis {
        /// The op.
        op: &'static str,
        /// The axis asked for.
        axis: isize,
        /// The operand's shape.
        shape: Vec<usize>,
    },
    /// An operand of the wrong element type.
    #[error("{op}: expected {expected:?} tensor, got {got:?} (shape {shape:?})")]
    DType {
        /// The op.
        op: &'static str,
        /// The element type the op needs.
        expected: crate::DType,
        /// The element type it got.
        got: crate::DType,
        /// The operand's shape.
        shape: Vec<usize>,
    },
    /// An index read by a kernel was outside its axis. Found on the device and reported at
    /// the next read-back, since checking on the host would need a sync per op.
    #[error("{op}: index {index} is out of range for an axis of size {size}")]
    Index {
        /// The op whose kernel saw the index.
        op: &'static str,
        /// The offending index.
        index: u32,
        /// The size of the axis it indexes.
        size: u32,
    },
    /// Misuse of automatic differentiation: backward of a tensor that needs no gradient, a
    /// graph already consumed, a gradient asked of a tensor that has none.
    #[error("{0}")]
    Autodiff(String),
    /// An op needs an optional adapter feature the device does not have.
    #[error("{op}: needs the adapter feature {feature}, which this adapter does not offer")]
    Unsupported {
        /// The op.
        op: &'static str,
        /// The feature, as wgpu names it.
        feature: &'static str,
    },
    /// An adapter whose limits are below what the engine's kernels need.
    #[error("{adapter}: {limit} is {has}, and the engine's kernels need {needs}")]
    AdapterLimit {
        /// The adapter.
        adapter: String,
        /// The limit, as WebGPU names it.
        limit: &'static str,
        /// What the adapter has.
        has: u64,
        /// What the kernels need.
        needs: u64,
    },
    /// A tensor larger than one buffer of this adapter may be.
    #[error("{op}: a tensor of shape {shape:?} needs {bytes} bytes, more than this adapter allows in one buffer ({limit} bytes)")]
    TooLarge {
        /// The op that would have allocated it.
        op: &'static str,
        /// The shape asked for.
        shape: Vec<usize>,
        /// Bytes it needs.
        bytes: u64,
        /// The adapter's limit.
        limit: u64,
    },
    /// The device could not create a buffer: its memory is full (or the driver refused).
    #[error("{op}: could not allocate {bytes} bytes for a tensor of shape {shape:?} with {live_bytes} bytes already held by tensors: {message}")]
    OutOfMemory {
        /// The op that would have allocated it.
        op: &'static str,
        /// The shape asked for.
        shape: Vec<usize>,
        /// Bytes it needs.
        bytes: u64,
        /// Bytes held by live tensors at the time.
        live_bytes: u64,
        /// The driver's reason.
        message: String,
    },
}

impl Error {
    pub(crate) fn setting(
        name: &'static str,
        value: impl Into<String>,
        expected: impl Into<String>,
    ) -> Self {
        Error::Setting {
            name,
            value: value.into(),
            expected: expected.into(),
        }
    }

    pub(crate) fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Shape {
            op,
            msg: msg.into(),
        }
    }
}

/// A wgpu error's report (a heading, then indented causes on their own lines) as one line.
pub(crate) fn one_line(report: &str) -> String {
    let parts: Vec<&str> = report
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != "Caused by:")
        .collect();
    parts.join(": ")
}
