//! A run's log: `metrics.jsonl` and TensorBoard events, written together.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::Position;
use crate::tensorboard::EventWriter;
use crate::Error;

/// A run's log in its output directory: `metrics.jsonl` (one JSON object a line, what
/// `loss.png` is drawn from) and a TensorBoard event file (`tensorboard --logdir out/`),
/// written together. Only rank 0 of a data-parallel run keeps one.
pub struct Log {
    jsonl: std::fs::File,
    path: PathBuf,
    events: EventWriter,
}

impl Log {
    /// Open the log of a run that starts `at` a position: lines an earlier run logged from
    /// that epoch on are dropped, and TensorBoard is told to drop its events from that step
    /// on; the start of a run starts afresh.
    ///
    /// # Errors
    /// [`Error::Io`] naming the file that cannot be written.
    pub fn open(output: &Path, at: Position) -> Result<Log, Error> {
        let path = output.join("metrics.jsonl");
        let kept: String = match std::fs::read_to_string(&path) {
            Ok(text) if at.epoch > 0 => text
                .lines()
                .filter(|l| {
                    serde_json::from_str::<Value>(l)
                        .ok()
                        .and_then(|v| v.get("epoch")?.as_u64())
                        .is_some_and(|e| e < at.epoch as u64)
                })
                .map(|l| format!("{l}\n"))
                .collect(),
            _ => String::new(),
        };
        std::fs::write(&path, kept).map_err(Error::io(&path))?;
        let jsonl = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(Error::io(&path))?;
        let events = EventWriter::create(output, at.step).map_err(Error::io(output))?;
        Ok(Log {
            jsonl,
            path,
            events,
        })
    }

    /// `metrics.jsonl`'s path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One line of `index` (its first entry is the TensorBoard step) and `values`, the
    /// values also as TensorBoard scalars named `{group}/{name}`.
    ///
    /// # Errors
    /// [`Error::Io`] naming the file that cannot be written.
    pub fn line(
        &mut self,
        group: &str,
        index: &[(&str, u64)],
        values: &[(&str, f64)],
    ) -> Result<(), Error> {
        let mut line = serde_json::Map::new();
        for (k, v) in index {
            line.insert(k.to_string(), (*v).into());
        }
        for (k, v) in values {
            line.insert(k.to_string(), (*v).into());
        }
        writeln!(self.jsonl, "{}", Value::Object(line)).map_err(Error::io(&self.path))?;
        let step = index.first().map_or(0, |(_, s)| *s);
        for (k, v) in values {
            self.events
                .scalar(&format!("{group}/{k}"), step, *v)
                .map_err(Error::io(self.events.path()))?;
        }
        Ok(())
    }

    /// A picture at `step` in TensorBoard.
    ///
    /// # Errors
    /// One line when it cannot be encoded or written.
    pub fn image(&mut self, tag: &str, step: u64, picture: &image::RgbImage) -> Result<(), Error> {
        let mut png = Vec::new();
        let path = self.events.path().to_path_buf();
        picture
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .map_err(Error::image(&path))?;
        let shape = (picture.height(), picture.width(), 3);
        self.events
            .image(tag, step, &png, shape)
            .map_err(Error::io(&path))
    }

    /// Write what is buffered, so readers see it.
    ///
    /// # Errors
    /// [`Error::Io`] naming the file that cannot be written.
    pub fn flush(&mut self) -> Result<(), Error> {
        self.jsonl.flush().map_err(Error::io(&self.path))?;
        self.events.flush().map_err(Error::io(self.events.path()))
    }
}
