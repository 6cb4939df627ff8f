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
    /// Open the log of a run that starts `at` a position. A run that continues its own
    /// directory passes the length `metrics.jsonl` had when its checkpoint was written
    /// (`continued`): the lines logged after it, by a run that did not reach its next
    /// checkpoint, are dropped, and TensorBoard is told to drop that run's events from the
    /// resumed step on. Otherwise the log starts afresh.
    ///
    /// # Errors
    /// [`Error::Io`] naming the file that cannot be written.
    pub fn open(output: &Path, at: Position, continued: Option<u64>) -> Result<Log, Error> {
        let path = output.join("metrics.jsonl");
        let jsonl = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(Error::io(&path))?;
        let len = jsonl.metadata().map_err(Error::io(&path))?.len();
        let keep = match continued {
            Some(bytes) if bytes > len => {
                crate::dist::say(&format!(
                    "warning: {} has {len} bytes, fewer than the {bytes} it had at the \
                     checkpoint; the log goes on after what is there",
                    path.display()
                ));
                len
            }
            Some(bytes) => bytes,
            None => 0,
        };
        jsonl.set_len(keep).map_err(Error::io(&path))?;
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
        // One write: a process killed mid-line leaves a line whole or not at all.
        let line = format!("{}\n", Value::Object(line));
        self.jsonl
            .write_all(line.as_bytes())
            .map_err(Error::io(&self.path))?;
        let step = index.first().map_or(0, |(_, s)| *s);
        for (k, v) in values {
            self.events
                .scalar(&format!("{group}/{k}"), step, *v)
                .map_err(Error::io(self.events.path()))?;
        }
        // Readers (and a crash) see every event logged.
        self.events.flush().map_err(Error::io(self.events.path()))
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

    /// Flush both files to the disk, before a checkpoint records the log's length;
    /// returns the length of `metrics.jsonl`.
    ///
    /// # Errors
    /// [`Error::Io`] naming the file that cannot be written.
    pub fn sync(&mut self) -> Result<u64, Error> {
        self.flush()?;
        self.events.sync().map_err(Error::io(self.events.path()))?;
        self.jsonl.sync_all().map_err(Error::io(&self.path))?;
        let meta = self.jsonl.metadata().map_err(Error::io(&self.path))?;
        Ok(meta.len())
    }
}
