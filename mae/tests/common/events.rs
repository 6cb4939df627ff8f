//! A reader of TensorBoard event files for the tests: every record's two masked CRC-32Cs
//! checked, the `Event` protocol buffers decoded. Written apart from the writer in
//! `src/tensorboard.rs`, so that a mistake shared by both cannot hide.

use std::path::Path;

/// TensorFlow's masked CRC-32C.
fn masked_crc(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
        .rotate_right(15)
        .wrapping_add(0xa282_ead8)
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

/// The events of every TensorBoard file in `dir` as TensorBoard shows them: files in the
/// order they were started, and a `session_log` START at step `s` dropping what earlier
/// files logged at steps from `s` on (its `_Purge`: events with a smaller step are kept).
pub fn as_tensorboard_shows(dir: &Path) -> Vec<Event> {
    let mut files: Vec<Vec<Event>> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("tfevents"))
        .map(|p| read_events(&p).unwrap())
        .collect();
    files.sort_by(|a, b| a[0].wall_time.total_cmp(&b[0].wall_time));
    let mut shown: Vec<Event> = Vec::new();
    for event in files.into_iter().flatten() {
        if event.session_log == Some(1) {
            shown.retain(|e| e.step < event.step);
        } else if !event.scalars.is_empty() || !event.images.is_empty() {
            shown.push(event);
        }
    }
    shown
}

/// The `(step, value)` of every scalar `tag` of `events`.
pub fn scalars(events: &[Event], tag: &str) -> Vec<(u64, f32)> {
    events
        .iter()
        .flat_map(|e| {
            e.scalars
                .iter()
                .filter(|s| s.0 == tag)
                .map(|s| (e.step, s.1))
        })
        .collect()
}
