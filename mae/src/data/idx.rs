//! IDX files, as MNIST and Fashion-MNIST ship them (optionally gzipped): a magic number
//! `0, 0, type, ndims`, the sizes as big-endian u32, then the data. Only unsigned bytes
//! (type 0x08), the type of every image and label file of those datasets, are read.
//!
//! The file is read as a stream, decompressed as it is read, and only as far as the sizes
//! in its header promise: a gzip bomb ends where its header's promise does.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use super::DataError;

/// The most data an IDX file may hold: 4 GiB, 80 times Fashion-MNIST's training images.
pub const IDX_LIMIT: u64 = 4 << 30;

/// The sizes and bytes of one IDX file.
///
/// # Errors
/// [`DataError::Io`] when it cannot be read, [`DataError::Corrupt`] naming what is wrong
/// with it: its magic number, type, header, sizes, compression or length.
pub fn read_idx(path: &Path) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let name = path.display().to_string();
    let io = |e: std::io::Error| DataError::Io(name.clone(), e);
    let bad = |why: String| DataError::Corrupt(name.clone(), why);
    let (file, _) = nn::files::open_regular(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidData => bad(e.to_string()),
        _ => io(e),
    })?;
    let mut file = BufReader::new(file);
    let gzip = file.fill_buf().map_err(io)?.starts_with(&[0x1f, 0x8b]);
    let mut stream: Box<dyn Read> = if gzip {
        Box::new(flate2::bufread::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let what = if gzip { "gzip: " } else { "" };
    let mut read = |buf: &mut [u8], part: &str| {
        stream.read_exact(buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => bad(format!("truncated {part}")),
            _ => bad(format!("{what}{e}")),
        })
    };
    let mut magic = [0u8; 4];
    read(&mut magic, "magic number").map_err(|_| bad("not an IDX file (too short)".into()))?;
    if magic[0] != 0 || magic[1] != 0 {
        return Err(bad("not an IDX file (bad magic number)".into()));
    }
    if magic[2] != 0x08 {
        return Err(bad(format!(
            "element type 0x{:02x}; only unsigned bytes (0x08) are supported",
            magic[2]
        )));
    }
    let ndims = magic[3] as usize;
    if ndims == 0 {
        return Err(bad("truncated header (no sizes)".into()));
    }
    let mut sizes = vec![0u8; 4 * ndims];
    read(&mut sizes, "header")?;
    let dims: Vec<usize> = sizes
        .chunks(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let count = dims
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
        .filter(|&c| c <= IDX_LIMIT)
        .ok_or_else(|| {
            bad(format!(
                "sizes {dims:?} describe more than {IDX_LIMIT} bytes"
            ))
        })?;
    let mut data = vec![0u8; count as usize];
    read(
        &mut data,
        &format!("data: sizes {dims:?} need {count} bytes"),
    )?;
    let mut more = [0u8; 1];
    match stream.read(&mut more) {
        Ok(0) => Ok((dims, data)),
        Ok(_) => Err(bad(format!(
            "sizes {dims:?} need {count} bytes of data, the file has more"
        ))),
        Err(e) => Err(bad(format!("{what}{e}"))),
    }
}
