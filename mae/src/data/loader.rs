//! Batches decoded and augmented on CPU worker threads into a bounded queue, so the next
//! batches are ready while the GPU runs the current step.

use std::collections::{BTreeMap, HashSet};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::{Augment, DataError, Dataset, Rng};

/// Files that could not be decoded: each is reported once and replaced by the next
/// readable image, so a bad file never stops a run.
#[derive(Default)]
pub struct Skipped {
    // name -> (error, reported yet)
    files: Mutex<BTreeMap<String, (String, bool)>>,
    // decodes that failed, counting each file once an epoch
    failures: std::sync::atomic::AtomicUsize,
}

impl Skipped {
    fn add(&self, name: String, error: String) {
        self.failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        files.entry(name).or_insert((error, false));
    }

    /// How many decodes failed: each undecodable file once an epoch (a loader tries a file
    /// once, however often the images after it stand in for it).
    pub fn failures(&self) -> usize {
        self.failures.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Warnings not yet reported, one line each.
    pub fn take_new(&self) -> Vec<String> {
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        files
            .iter_mut()
            .filter(|(_, (_, reported))| !*reported)
            .map(|(_, (error, reported))| {
                *reported = true;
                format!("warning: skipping {error}")
            })
            .collect()
    }

    /// How many files were skipped.
    pub fn count(&self) -> usize {
        self.files.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// One batch: `(n, C, size, size)` normalised pixels and the images' labels (when known).
pub struct Batch {
    /// Images in the batch.
    pub len: usize,
    /// `len * C * size * size` values.
    pub pixels: Vec<f32>,
    /// Class per image, when the dataset has labels.
    pub labels: Option<Vec<u32>>,
}

/// An epoch's batches, in order, from worker threads.
pub struct Loader {
    queues: Vec<Receiver<Result<Batch, DataError>>>,
    workers: Vec<Option<JoinHandle<()>>>,
    next: usize,
    batches: usize,
}

/// What each worker needs to build batches.
#[derive(Clone)]
struct Job {
    /// Images of this epoch that did not decode: each is tried once, then passed over.
    bad: Arc<Mutex<HashSet<usize>>>,
    data: Arc<Dataset>,
    augment: Arc<Augment>,
    random: bool,
    channels: usize,
    order: Arc<Vec<usize>>,
    batch: usize,
    seed: u64,
    epoch: u64,
    skipped: Arc<Skipped>,
}

impl Loader {
    /// Batches of `batch` images of `data` in `order`, on `workers` threads, each keeping
    /// up to two batches ready. With `random` (training), image `i` of epoch `epoch` gets
    /// `augment`'s random crop and flip from the stream `(seed, epoch, i)` and the last
    /// partial batch is dropped, as the reference's `drop_last=True`; without (evaluation),
    /// every image gets its evaluation view and a last, shorter batch is kept.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        data: Arc<Dataset>,
        (augment, random): (Arc<Augment>, bool),
        channels: usize,
        order: Vec<usize>,
        batch: usize,
        workers: usize,
        (seed, epoch): (u64, u64),
        skipped: Arc<Skipped>,
    ) -> Loader {
        let batch = batch.max(1);
        let batches = if random {
            order.len() / batch
        } else {
            order.len().div_ceil(batch)
        };
        let job = Job {
            bad: Arc::default(),
            data,
            augment,
            random,
            channels,
            order: Arc::new(order),
            batch,
            seed,
            epoch,
            skipped,
        };
        let workers = workers.clamp(1, batches.max(1));
        let mut queues = Vec::new();
        let mut handles = Vec::new();
        for w in 0..workers {
            let (tx, rx) = sync_channel(2);
            let job = job.clone();
            queues.push(rx);
            handles.push(Some(std::thread::spawn(move || {
                for b in (w..batches).step_by(workers) {
                    if tx.send(job.batch(b)).is_err() {
                        return; // the loader was dropped
                    }
                }
            })));
        }
        Loader {
            queues,
            workers: handles,
            next: 0,
            batches,
        }
    }

    /// Batches in the epoch.
    pub fn len(&self) -> usize {
        self.batches
    }

    /// Whether the epoch has no batch.
    pub fn is_empty(&self) -> bool {
        self.batches == 0
    }
}

impl Job {
    fn batch(&self, b: usize) -> Result<Batch, DataError> {
        let end = ((b + 1) * self.batch).min(self.order.len());
        let indices = &self.order[b * self.batch..end];
        let mut pixels = Vec::with_capacity(
            indices.len() * self.channels * self.augment.size * self.augment.size,
        );
        let mut labels = Vec::new();
        for &i in indices {
            let (i, img) = self.readable(i)?;
            let mut rng = Rng::new(&[self.seed, self.epoch, i as u64]);
            pixels.extend(if self.random {
                self.augment.apply(&img, &mut rng)
            } else {
                self.augment.center(&img)
            });
            if let Some(l) = &self.data.labels {
                labels.push(l[i]);
            }
        }
        Ok(Batch {
            len: indices.len(),
            pixels,
            labels: self.data.labels.as_ref().map(|_| labels),
        })
    }

    /// Image `i`, or the next one that decodes.
    fn readable(&self, i: usize) -> Result<(usize, super::Image), DataError> {
        let n = self.data.len();
        let bad = |j| {
            self.bad
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&j)
        };
        for j in (0..n).map(|k| (i + k) % n).filter(|&j| !bad(j)) {
            match self.data.get(j, self.channels) {
                Ok(img) => return Ok((j, img)),
                // Not the file's fault: a setting no file of this data can meet.
                Err(e @ DataError::Channels(_)) => return Err(e),
                Err(e) => {
                    self.skipped.add(self.data.name(j), e.to_string());
                    self.bad.lock().unwrap_or_else(|e| e.into_inner()).insert(j);
                }
            }
        }
        Err(DataError::Empty(format!(
            "{}: no image could be decoded",
            self.data.description
        )))
    }
}

impl Iterator for Loader {
    type Item = Result<Batch, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.batches {
            return None;
        }
        let w = self.next % self.queues.len();
        self.next += 1;
        match self.queues[w].recv() {
            Ok(batch) => Some(batch),
            // The worker ended before its last batch: it panicked. The epoch is not cut
            // short without a word.
            Err(_) => {
                let why = match self.workers[w].take().map(JoinHandle::join) {
                    Some(Err(panic)) => crate::dist::panic_message(&*panic),
                    _ => "it ended before its last batch".into(),
                };
                self.batches = self.next; // no batch after an error
                Some(Err(DataError::Worker(why)))
            }
        }
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.queues.clear(); // unblocks workers waiting to send
        for w in self.workers.drain(..).flatten() {
            let _ = w.join();
        }
    }
}
