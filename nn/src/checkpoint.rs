//! Checkpoints in safetensors, the format of the PyTorch and Hugging Face world.
//!
//! Loading is strict: one error lists every missing, unexpected and mis-shaped tensor.
//! A file is read only as far as its header promises, and the file must hold exactly that;
//! it is then validated by the `safetensors` crate before any tensor is read (header
//! length, offsets, sizes), so a truncated, corrupt or hostile file gives an error, never a
//! panic or a huge allocation. `f16` and `bf16` tensors are converted to `f32`. Saving writes a
//! temporary file beside the target, syncs it and renames it over the target
//! ([`crate::files::write_atomically`]): a process killed mid-save leaves the previous
//! checkpoint intact.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use engine::Tensor;
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use crate::module::Module;

/// What can go wrong with a checkpoint file.
#[derive(Debug)]
pub enum CheckpointError {
    /// The file could not be read or written.
    Io(PathBuf, std::io::Error),
    /// The file is not valid safetensors, or holds a dtype we cannot convert.
    Format(PathBuf, String),
    /// A model's configuration file (`config.json`) is unreadable as one, or disagrees
    /// with its weights file.
    Config(PathBuf, String),
    /// Strict loading found tensors that do not match the model.
    Mismatch {
        /// The file.
        path: PathBuf,
        /// Parameters the file lacks.
        missing: Vec<String>,
        /// Tensors the model lacks.
        unexpected: Vec<String>,
        /// `name: file shape vs model shape`.
        mis_shaped: Vec<String>,
    },
    /// A device error while reading parameters back or creating tensors.
    Engine(engine::Error),
}

impl fmt::Display for CheckpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckpointError::Io(p, e) => write!(f, "{}: {e}", p.display()),
            CheckpointError::Format(p, e) => write!(
                f,
                "{}: not a valid safetensors checkpoint: {e}",
                p.display()
            ),
            CheckpointError::Config(p, e) => write!(f, "{}: {e}", p.display()),
            CheckpointError::Mismatch {
                path,
                missing,
                unexpected,
                mis_shaped,
            } => {
                write!(f, "{}: does not match the model:", path.display())?;
                if !missing.is_empty() {
                    write!(f, " missing [{}];", missing.join(", "))?;
                }
                if !unexpected.is_empty() {
                    write!(f, " unexpected [{}];", unexpected.join(", "))?;
                }
                if !mis_shaped.is_empty() {
                    write!(f, " mis-shaped [{}];", mis_shaped.join(", "))?;
                }
                Ok(())
            }
            CheckpointError::Engine(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for CheckpointError {}

impl From<engine::Error> for CheckpointError {
    fn from(e: engine::Error) -> Self {
        CheckpointError::Engine(e)
    }
}

/// Tensors of a file by name: shape and f32 values, row-major.
pub type TensorMap = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// One tensor as stored: f32 values, row-major.
struct HostTensor {
    shape: Vec<usize>,
    values: Vec<f32>,
}

impl safetensors::View for &HostTensor {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        self.values
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>()
            .into()
    }

    fn data_len(&self) -> usize {
        self.values.len() * 4
    }
}

/// Write named tensors to `path` as f32 safetensors, atomically (temporary file, sync,
/// rename). `metadata` goes into the header's `__metadata__`.
///
/// # Errors
/// [`CheckpointError::Io`] when writing fails (the previous file at `path` is untouched);
/// [`CheckpointError::Engine`] when reading a tensor back fails.
pub fn save_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<(), CheckpointError> {
    let mut host = Vec::new();
    for (name, t) in tensors {
        host.push((name.clone(), t.shape().to_vec(), t.to_vec()?));
    }
    save_host_safetensors(path, host, metadata)
}

/// [`save_safetensors`] for tensors already on the host, as `(name, shape, values)`.
///
/// # Errors
/// [`CheckpointError::Io`] when writing fails (the previous file at `path` is untouched).
pub fn save_host_safetensors(
    path: &Path,
    tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
    metadata: Option<HashMap<String, String>>,
) -> Result<(), CheckpointError> {
    let host: BTreeMap<String, HostTensor> = tensors
        .into_iter()
        .map(|(name, shape, values)| (name, HostTensor { shape, values }))
        .collect();
    let bytes = safetensors::serialize(host.iter().map(|(n, t)| (n.as_str(), t)), metadata)
        .map_err(|e| CheckpointError::Format(path.to_path_buf(), e.to_string()))?;
    crate::files::write_atomically(path, &bytes)
        .map_err(|e| CheckpointError::Io(path.to_path_buf(), e))
}

/// The largest header the `safetensors` crate reads.
const HEADER_LIMIT: u64 = 100_000_000;

/// The header of the safetensors file at `path`, read alone: its JSON, and the file's
/// length it promises (the header's length, the header, and as much data as its tensors'
/// offsets say), which the file must have.
fn read_header(path: &Path) -> Result<(serde_json::Value, u64), CheckpointError> {
    let io = |e| CheckpointError::Io(path.to_path_buf(), e);
    let format = |why: String| CheckpointError::Format(path.to_path_buf(), why);
    let (mut file, len) = crate::files::open_regular(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidData => format(e.to_string()),
        _ => io(e),
    })?;
    let mut head = [0u8; 8];
    file.read_exact(&mut head)
        .map_err(|_| format(format!("{len} bytes, too short for a header")))?;
    let n = u64::from_le_bytes(head);
    if n > HEADER_LIMIT || 8 + n > len {
        return Err(format(format!(
            "a header of {n} bytes in a file of {len} bytes"
        )));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header).map_err(io)?;
    let header: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| format(format!("the header is not JSON: {e}")))?;
    let data = header
        .as_object()
        .ok_or_else(|| format("the header is not a JSON object".into()))?
        .iter()
        .filter(|(name, _)| *name != "__metadata__")
        .filter_map(|(_, t)| t.get("data_offsets")?.get(1)?.as_u64())
        .max()
        .unwrap_or(0);
    let promised = 8 + n + data;
    if promised != len {
        return Err(format(format!(
            "the header describes {promised} bytes, the file has {len}{}",
            if promised > len { " (truncated)" } else { "" }
        )));
    }
    Ok((header, promised))
}

/// The `__metadata__` of a safetensors file, from its header alone (none: empty).
///
/// # Errors
/// As [`read_safetensors`], for the header.
pub fn read_safetensors_metadata(path: &Path) -> Result<HashMap<String, String>, CheckpointError> {
    let (header, _) = read_header(path)?;
    Ok(header["__metadata__"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect())
}

/// Read every tensor of a safetensors file as f32 (converting f16 and bf16), by name.
///
/// # Errors
/// [`CheckpointError::Io`]; [`CheckpointError::Format`] for an invalid file or an
/// unsupported dtype.
pub fn read_safetensors(path: &Path) -> Result<TensorMap, CheckpointError> {
    // Read only as far as the header promises, and the file must hold exactly that.
    let (_, promised) = read_header(path)?;
    let bytes = crate::files::read_bounded(path, promised)
        .map_err(|e| CheckpointError::Io(path.to_path_buf(), e))?;
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| CheckpointError::Format(path.to_path_buf(), e.to_string()))?;
    let mut out = BTreeMap::new();
    for (name, view) in file.tensors() {
        let values = to_f32(&view)
            .map_err(|e| CheckpointError::Format(path.to_path_buf(), format!("{name}: {e}")))?;
        out.insert(name, (view.shape().to_vec(), values));
    }
    Ok(out)
}

fn to_f32(view: &TensorView<'_>) -> Result<Vec<f32>, String> {
    let data = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => {
            return Err(format!(
                "dtype {other:?} is not supported (f32, f16 and bf16 are)"
            ))
        }
    })
}

/// Load every parameter of `module` from `path`, strictly: the file must hold exactly the
/// module's parameter names with the same shapes ([`load_tensors`]).
///
/// # Errors
/// [`CheckpointError::Mismatch`] listing every missing, unexpected and mis-shaped tensor;
/// the errors of [`read_safetensors`].
pub fn load_safetensors(path: &Path, module: &mut dyn Module) -> Result<(), CheckpointError> {
    load_tensors(module, read_safetensors(path)?, path)
}

/// Copy `tensors` (read from `path`, named in the error) into `module`'s parameters,
/// strictly and in place: every parameter name present with its shape and nothing left
/// over, else one error listing every missing, unexpected and mis-shaped tensor, and
/// nothing is changed. The parameter tensors stay the same (buffers and ids), so an
/// optimizer built before the load goes on updating them.
///
/// # Errors
/// [`CheckpointError::Mismatch`]; [`CheckpointError::Engine`] if a write fails.
pub fn load_tensors(
    module: &mut dyn Module,
    mut tensors: TensorMap,
    path: &Path,
) -> Result<(), CheckpointError> {
    let (mut missing, mut mis_shaped, mut known) = (Vec::new(), Vec::new(), HashSet::new());
    module.visit("", &mut |name, t| {
        known.insert(name.to_string());
        match tensors.get(name) {
            None => missing.push(name.to_string()),
            Some((s, _)) if s.as_slice() != t.shape() => {
                mis_shaped.push(format!("{name}: file {s:?} vs model {:?}", t.shape()))
            }
            Some(_) => {}
        }
    });
    let unexpected: Vec<String> = tensors
        .keys()
        .filter(|k| !known.contains(k.as_str()))
        .cloned()
        .collect();
    if !missing.is_empty() || !unexpected.is_empty() || !mis_shaped.is_empty() {
        return Err(CheckpointError::Mismatch {
            path: path.to_path_buf(),
            missing,
            unexpected,
            mis_shaped,
        });
    }
    let mut result = Ok(());
    module.visit("", &mut |name, t| {
        if result.is_ok() {
            let (_, values) = tensors.remove(name).expect("checked above");
            result = t.copy_from_slice(&values);
        }
    });
    Ok(result?)
}
