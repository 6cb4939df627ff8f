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

/// What one epoch's loader reads and makes.
#[derive(Clone)]
pub struct Plan {
    /// The images.
    pub data: Arc<Dataset>,
    /// Crop, flip and normalisation.
    pub augment: Arc<Augment>,
    /// Training: image `i` of epoch `epoch` gets `augment`'s random crop and flip from the
    /// stream `(seed, epoch, i)`, and a last partial batch is dropped, as the reference's
    /// `drop_last=True`. Evaluation (false): every image gets its evaluation view, and a
    /// last, shorter batch is kept.
    pub random: bool,
    /// Channels the images are read with.
    pub channels: usize,
    /// The images of the epoch, in order.
    pub order: Vec<usize>,
    /// Images per batch.
    pub batch: usize,
    /// Worker threads, each keeping up to two batches ready.
    pub workers: usize,
    /// The run's seed.
    pub seed: u64,
    /// The epoch.
    pub epoch: u64,
    /// Where undecodable files are reported.
    pub skipped: Arc<Skipped>,
}

/// What each worker needs to build batches: the plan, and the images of this epoch that
/// did not decode (each is tried once, then passed over).
#[derive(Clone)]
struct Job {
    bad: Arc<Mutex<HashSet<usize>>>,
    plan: Arc<Plan>,
}

impl Loader {
    /// The batches of `plan`, made on its worker threads.
    pub fn new(plan: Plan) -> Loader {
        let batch = plan.batch.max(1);
        let batches = if plan.random {
            plan.order.len() / batch
        } else {
            plan.order.len().div_ceil(batch)
        };
        let workers = plan.workers.clamp(1, batches.max(1));
        let job = Job {
            bad: Arc::default(),
            plan: Arc::new(Plan { batch, ..plan }),
        };
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
        let end = ((b + 1) * self.plan.batch).min(self.plan.order.len());
        let indices = &self.plan.order[b * self.plan.batch..end];
        let mut pixels = Vec::with_capacity(
            indices.len() * self.plan.channels * self.plan.augment.size * self.plan.augment.size,
        );
        let mut labels = Vec::new();
        for &i in indices {
            let (i, img) = self.readable(i)?;
            let mut rng = Rng::new(&[self.plan.seed, self.plan.epoch, i as u64]);
            pixels.extend(if self.plan.random {
                self.plan.augment.apply(&img, &mut rng)
            } else {
                self.plan.augment.center(&img)
            });
            if let Some(l) = &self.plan.data.labels {
                labels.push(l[i]);
            }
        }
        Ok(Batch {
            len: indices.len(),
            pixels,
            labels: self.plan.data.labels.as_ref().map(|_| labels),
        })
    }

    /// Image `i`, or the next one that decodes.
    fn readable(&self, i: usize) -> Result<(usize, super::Image), DataError> {
        let n = self.plan.data.len();
        let bad = |j| {
            self.bad
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&j)
        };
        for j in (0..n).map(|k| (i + k) % n).filter(|&j| !bad(j)) {
            match self.plan.data.get(j, self.plan.channels) {
                Ok(img) => return Ok((j, img)),
                // Not the file's fault: a setting no file of this data can meet.
                Err(e @ DataError::Channels(_)) => return Err(e),
                Err(e) => {
                    self.plan.skipped.add(self.plan.data.name(j), e.to_string());
                    self.bad.lock().unwrap_or_else(|e| e.into_inner()).insert(j);
                }
            }
        }
        Err(DataError::Empty(format!(
            "{}: no image could be decoded",
            self.plan.data.description
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
