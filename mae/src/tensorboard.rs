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
//! starts from. [`read_events`] reads such a file back, checking every CRC.

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

    /// Write what is buffered, so TensorBoard sees it.
    ///
    /// # Errors
    /// The I/O error of writing.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// One event of a file, as [`read_events`] decodes it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Event {
    /// Seconds since the epoch.
    pub wall_time: f64,
    /// The step.
    pub step: u64,
    /// `brain.Event:2` for the first event of a file.
    pub file_version: Option<String>,
    /// A `session_log` status (1 = START).
    pub session_log: Option<u64>,
    /// Scalar values: tag and value.
    pub scalars: Vec<(String, f32)>,
    /// Images: tag, height, width, channels and the PNG's length.
    pub images: Vec<(String, u32, u32, u32, usize)>,
}

/// A protocol-buffer message as `(field, value)`: varints and fixed-width values as `u64`,
/// length-delimited fields as bytes.
enum Field<'a> {
    Int(u64),
    Bytes(&'a [u8]),
}

fn fields(mut b: &[u8]) -> Result<Vec<(u32, Field<'_>)>, String> {
    let bad = || "truncated protocol buffer".to_string();
    let read_varint = |b: &mut &[u8]| -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = b.split_first().ok_or_else(bad)?;
            *b = rest;
            v |= ((byte & 0x7f) as u64) << shift;
            if byte < 0x80 {
                return Ok(v);
            }
        }
        Err("varint too long".into())
    };
    let mut out = Vec::new();
    while !b.is_empty() {
        let k = read_varint(&mut b)?;
        let (field, wire) = ((k >> 3) as u32, k & 7);
        let value = match wire {
            0 => Field::Int(read_varint(&mut b)?),
            1 | 5 => {
                let n = if wire == 1 { 8 } else { 4 };
                let (v, rest) = (b.get(..n).ok_or_else(bad)?, &b[n..]);
                b = rest;
                let mut w = [0u8; 8];
                w[..n].copy_from_slice(v);
                Field::Int(u64::from_le_bytes(w))
            }
            2 => {
                let n = read_varint(&mut b)? as usize;
                let (v, rest) = (b.get(..n).ok_or_else(bad)?, &b[n..]);
                b = rest;
                Field::Bytes(v)
            }
            w => return Err(format!("wire type {w} is not used in event files")),
        };
        out.push((field, value));
    }
    Ok(out)
}

/// Every event of an event file, checking each record's two CRCs.
///
/// # Errors
/// One line naming the file and the first bad record.
pub fn read_events(path: &Path) -> Result<Vec<Event>, String> {
    let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let bad = |what: &str, at: usize| format!("{}: {what} at byte {at}", path.display());
    let mut events = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let header = data
            .get(at..at + 12)
            .ok_or_else(|| bad("truncated record", at))?;
        if masked_crc(&header[..8]).to_le_bytes() != header[8..12] {
            return Err(bad("bad length CRC", at));
        }
        let len = u64::from_le_bytes(header[..8].try_into().expect("8 bytes")) as usize;
        let body = data
            .get(at + 12..at + 12 + len + 4)
            .ok_or_else(|| bad("truncated record", at))?;
        let (record, crc) = body.split_at(len);
        if masked_crc(record).to_le_bytes() != crc {
            return Err(bad("bad data CRC", at));
        }
        events.push(decode_event(record).map_err(|e| bad(&e, at))?);
        at += 12 + len + 4;
    }
    Ok(events)
}

fn decode_event(record: &[u8]) -> Result<Event, String> {
    let mut e = Event::default();
    for (field, value) in fields(record)? {
        match (field, value) {
            (1, Field::Int(bits)) => e.wall_time = f64::from_bits(bits),
            (2, Field::Int(step)) => e.step = step,
            (3, Field::Bytes(b)) => e.file_version = Some(String::from_utf8_lossy(b).into()),
            (5, Field::Bytes(summary)) => decode_summary(summary, &mut e)?,
            (6, Field::Bytes(log)) => {
                for (f, v) in fields(log)? {
                    if let (1, Field::Int(status)) = (f, v) {
                        e.session_log = Some(status);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(e)
}

fn decode_summary(summary: &[u8], e: &mut Event) -> Result<(), String> {
    for (_, value) in fields(summary)? {
        let Field::Bytes(value) = value else { continue };
        let mut tag = String::new();
        for (f, v) in fields(value)? {
            match (f, v) {
                (1, Field::Bytes(t)) => tag = String::from_utf8_lossy(t).into(),
                (2, Field::Int(bits)) => e.scalars.push((tag.clone(), f32::from_bits(bits as u32))),
                (4, Field::Bytes(img)) => {
                    let (mut h, mut w, mut c, mut png) = (0, 0, 0, 0);
                    for (f, v) in fields(img)? {
                        match (f, v) {
                            (1, Field::Int(x)) => h = x as u32,
                            (2, Field::Int(x)) => w = x as u32,
                            (3, Field::Int(x)) => c = x as u32,
                            (4, Field::Bytes(b)) => png = b.len(),
                            _ => {}
                        }
                    }
                    e.images.push((tag.clone(), h, w, c, png));
                }
                _ => {}
            }
        }
    }
    Ok(())
}
