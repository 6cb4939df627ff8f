//! IDX files, as MNIST and Fashion-MNIST ship them (optionally gzipped): a magic number
//! `0, 0, type, ndims`, the sizes as big-endian u32, then the data. Only unsigned bytes
//! (type 0x08), the type of every image and label file of those datasets, are read.

use std::io::Read;
use std::path::Path;

use super::DataError;

/// The sizes and bytes of one IDX file.
pub fn read_idx(path: &Path) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let bad = |why: String| DataError::Corrupt(path.display().to_string(), why);
    let raw = std::fs::read(path).map_err(|e| DataError::Io(path.display().to_string(), e))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| bad(format!("gzip: {e}")))?;
        out
    } else {
        raw
    };
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad("not an IDX file (bad magic number)".into()));
    }
    if bytes[2] != 0x08 {
        return Err(bad(format!(
            "element type 0x{:02x}; only unsigned bytes (0x08) are supported",
            bytes[2]
        )));
    }
    let ndims = bytes[3] as usize;
    let header = 4 + 4 * ndims;
    if ndims == 0 || bytes.len() < header {
        return Err(bad("truncated header".into()));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let count = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(format!("sizes {dims:?} overflow")))?;
    if bytes.len() - header != count {
        return Err(bad(format!(
            "sizes {dims:?} need {count} bytes of data, the file has {}",
            bytes.len() - header
        )));
    }
    Ok((dims, bytes[header..].to_vec()))
}
