//! Files read with a bound and written whole or not at all.
//!
//! Every file a program reads comes from outside and may be anything: a FIFO that never
//! ends, a device, a file far larger than its kind can be. [`read_bounded`] reads only
//! regular files, and only up to a size the caller states. [`write_atomically`] writes a
//! temporary file unique to this process beside the target, flushes it to the disk,
//! renames it over the target and flushes the directory, so that after a crash or a power
//! cut the target holds either its old bytes or its new ones.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Bytes a JSON file (a config, a preprocessor config, a trainer state, a manifest) may
/// have: far more than any real one.
pub const JSON_LIMIT: u64 = 16 << 20;

/// The bytes of the regular file at `path`, refused when it has more than `limit`.
///
/// # Errors
/// The I/O error, or [`std::io::ErrorKind::InvalidData`] naming what is wrong: not a
/// regular file, or larger than `limit`.
pub fn read_bounded(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    let (file, len) = open_regular(path)?;
    if len > limit {
        return Err(too_large(len, limit));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(too_large(bytes.len() as u64, limit));
    }
    Ok(bytes)
}

/// The regular file at `path`, open for reading, and its length.
///
/// # Errors
/// The I/O error, or [`std::io::ErrorKind::InvalidData`] for what is not a regular file
/// (a directory, a device, a FIFO, which is refused before it is opened: opening a FIFO
/// waits for a writer, forever).
pub fn open_regular(path: &Path) -> std::io::Result<(std::fs::File, u64)> {
    if !std::fs::metadata(path)?.is_file() {
        return Err(invalid("not a regular file".into()));
    }
    let file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    match meta.is_file() {
        true => Ok((file, meta.len())),
        false => Err(invalid("not a regular file".into())),
    }
}

/// [`read_bounded`] as UTF-8 text.
///
/// # Errors
/// As [`read_bounded`], and [`std::io::ErrorKind::InvalidData`] for text that is not UTF-8.
pub fn read_text_bounded(path: &Path, limit: u64) -> std::io::Result<String> {
    String::from_utf8(read_bounded(path, limit)?).map_err(|_| invalid("not UTF-8 text".into()))
}

fn invalid(why: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why)
}

fn too_large(bytes: u64, limit: u64) -> std::io::Error {
    invalid(format!(
        "{bytes} bytes, more than the {limit} such a file may have"
    ))
}

/// A name beside `path` for a temporary copy of it, unique to this process:
/// `.NAME.tmp-PID-N`. A leftover of a killed process never has the name a later one
/// writes.
pub fn temporary_name(path: &Path) -> PathBuf {
    unique_name(path, "tmp")
}

/// A hidden name beside `path` of the `kind` given, unique to this process:
/// `.NAME.KIND-PID-N` (an older copy moved aside while a new one replaces it: `old`).
pub fn unique_name(path: &Path, kind: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let n = COUNT.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.{kind}-{}-{n}", std::process::id()))
}

/// Write `bytes` to `path` whole or not at all: into a [`temporary_name`], flushed to the
/// disk, renamed over `path`, and the directory flushed.
///
/// # Errors
/// The I/O error; `path` then holds what it held before.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = temporary_name(path);
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_dir(path.parent().unwrap_or(Path::new(".")))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Flush a directory's entries (names created, renamed or removed in it) to the disk.
///
/// # Errors
/// The I/O error.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("nn-files-tests-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    #[test]
    fn reads_are_bounded_and_of_regular_files_only() {
        let path = tmp("ten");
        std::fs::write(&path, [7u8; 10]).unwrap();
        assert_eq!(read_bounded(&path, 10).unwrap(), [7u8; 10]);
        let e = read_bounded(&path, 9).unwrap_err();
        assert_eq!(
            e.to_string(),
            "10 bytes, more than the 9 such a file may have"
        );
        let e = read_bounded(Path::new("/dev/zero"), 1 << 20).unwrap_err();
        assert_eq!(e.to_string(), "not a regular file");
        let e = read_bounded(path.parent().unwrap(), 1 << 20).unwrap_err();
        assert_eq!(e.to_string(), "not a regular file");
        let fifo = tmp("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            let e = read_bounded(&fifo, 1 << 20).unwrap_err();
            assert_eq!(e.to_string(), "not a regular file");
        }
    }

    #[test]
    fn atomic_writes_replace_whole_files_and_leave_no_temporary() {
        let path = tmp("atomic.json");
        write_atomically(&path, b"old").unwrap();
        write_atomically(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("atomic.json.tmp"))
            .collect();
        assert!(leftovers.is_empty());
        assert_ne!(temporary_name(&path), temporary_name(&path));
    }
}
