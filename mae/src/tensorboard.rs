//! TensorBoard event files (`events.out.tfevents.*`), so that `tensorboard --logdir out/`
//! shows a run's curves and pictures live, as the reference's `--log_dir` does.
//!
//! The format is TensorFlow's record file: each record is its length (u64, little endian),
//! the masked CRC-32C of those 8 bytes, the data, and the masked CRC-32C of the data. The data
//! is a protocol-buffer `Event`, written by hand here (no maintained Rust crate writes these
//! files): `wall_time` (1, double), `step` (2, int64), `file_version` (3, string), `summary`
//! (5, a `Summary` of `Value`s: `tag` (1), `simple_value` (2, float) or `image` (4: height,
//! width, colorspace, PNG bytes)) and `session_log` (6, `status` START = 1), which makes
//! TensorBoard drop what an earlier, interrupted run logged after the step a resumed run
//! starts from. The tests read such files back with a reader of their own, checking every
//! CRC (`tests/common/events.rs`).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// An open event file.
pub struct EventWriter {
    file: BufWriter<File>,
    path: PathBuf,
}

/// TensorFlow's CRC mask, so that a CRC of data that holds CRCs stays well distributed.
fn masked_crc(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// Protocol-buffer field writers.
fn key(out: &mut Vec<u8>, field: u32, wire: u32) {
    varint(out, ((field << 3) | wire) as u64);
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    key(out, field, 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// An `Event` with `wall_time` and `step`, then `rest` (its other fields, encoded).
fn event(step: u64, rest: &[u8]) -> Vec<u8> {
    let mut e = Vec::new();
    key(&mut e, 1, 1);
    e.extend_from_slice(&now().to_le_bytes());
    key(&mut e, 2, 0);
    varint(&mut e, step);
    e.extend_from_slice(rest);
    e
}

/// The `summary` field of an event holding one `Value` (`tag`, then its encoded `value`).
fn summary(tag: &str, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    bytes_field(&mut v, 1, tag.as_bytes());
    v.extend_from_slice(value);
    let mut s = Vec::new();
    bytes_field(&mut s, 1, &v);
    let mut field = Vec::new();
    bytes_field(&mut field, 5, &s);
    field
}

impl EventWriter {
    /// A new event file in `dir` (created if need be), named as TensorFlow names them,
    /// starting at `step`: a resumed run passes the step it resumes from, and TensorBoard
    /// then forgets what an earlier run logged after it.
    ///
    /// # Errors
    /// The I/O error of creating or writing the file.
    pub fn create(dir: &Path, step: u64) -> std::io::Result<EventWriter> {
        std::fs::create_dir_all(dir)?;
        let secs = now() as u64;
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
        let path = dir.join(format!(
            "events.out.tfevents.{secs}.{host}.{}",
            std::process::id()
        ));
        let mut w = EventWriter {
            file: BufWriter::new(File::create(&path)?),
            path,
        };
        let mut version = Vec::new();
        bytes_field(&mut version, 3, b"brain.Event:2");
        w.record(&event(0, &version))?;
        // session_log { status: START }: TensorBoard purges later steps of earlier runs.
        let mut log = Vec::new();
        key(&mut log, 1, 0);
        varint(&mut log, 1);
        let mut field = Vec::new();
        bytes_field(&mut field, 6, &log);
        w.record(&event(step, &field))?;
        w.file.flush()?;
        Ok(w)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn record(&mut self, data: &[u8]) -> std::io::Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        self.file.write_all(&len)?;
        self.file.write_all(&masked_crc(&len).to_le_bytes())?;
        self.file.write_all(data)?;
        self.file.write_all(&masked_crc(data).to_le_bytes())
    }

    /// A scalar `tag` at `step`.
    ///
    /// # Errors
    /// The I/O error of writing.
    pub fn scalar(&mut self, tag: &str, step: u64, value: f64) -> std::io::Result<()> {
        let mut v = Vec::new();
        key(&mut v, 2, 5);
        v.extend_from_slice(&(value as f32).to_le_bytes());
        self.record(&event(step, &summary(tag, &v)))
    }

    /// A PNG picture `tag` at `step` (`height` x `width`, `channels` 1, 3 or 4).
    ///
    /// # Errors
    /// The I/O error of writing.
    pub fn image(
        &mut self,
        tag: &str,
        step: u64,
        png: &[u8],
        (height, width, channels): (u32, u32, u32),
    ) -> std::io::Result<()> {
        let mut img = Vec::new();
        for (field, v) in [(1, height), (2, width), (3, channels)] {
            key(&mut img, field, 0);
            varint(&mut img, v as u64);
        }
        bytes_field(&mut img, 4, png);
        let mut v = Vec::new();
        bytes_field(&mut v, 4, &img);
        self.record(&event(step, &summary(tag, &v)))
    }

    /// Flush the file to the disk.
    ///
    /// # Errors
    /// The I/O error of writing.
    pub fn sync(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        self.file.get_ref().sync_all()
    }

    /// Write what is buffered, so TensorBoard sees it.
    ///
    /// # Errors
    /// The I/O error of writing.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}
