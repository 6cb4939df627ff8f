//! The training loop of `pretrain` and `finetune`, written once for any [`Learner`]: the
//! reference's `train_one_epoch` (`engine_pretrain.py`, `engine_finetune.py`) and the epoch
//! loop of its `main_pretrain.py` / `main_finetune.py`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use engine::{warmup_cosine_lr, AdamW, Device, Gradients, Tensor};
use nn::{Ctx, Module};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::checkpoint::{save_optimizer, write_checkpoint, write_json};
use super::watchdog::{self, Watchdog};
use super::{progress_bar, stop, weights_digest};
use super::{Invocation, Log, LossScaler, Output, Precision, Resumed, TrainerState};
use crate::data::{streams, Augment, Dataset, Loader, Plan, Rng, Skipped};
use crate::dist::Dist;
use crate::{plot, Error};

/// The largest effective batch a schedule may have.
const MAX_BATCH: usize = 1 << 31;

/// Where a run stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Position {
    /// Epochs completed.
    pub epoch: usize,
    /// Iterations completed.
    pub step: u64,
}

/// What the loop takes from a training command's settings, read by field name: the
/// settings of `pretrain` and `finetune` both have these fields, meaning the same.
#[derive(Clone, Debug, Deserialize)]
pub struct Schedule {
    /// Passes over the data.
    pub epochs: usize,
    /// Use only the first this many training images.
    pub limit: Option<usize>,
    /// Images per iteration and process.
    pub batch_size: usize,
    /// Processes the run started with.
    pub ranks: usize,
    /// Iterations per optimizer step.
    pub accum_iter: usize,
    /// Base learning rate.
    pub blr: f64,
    /// Where the cosine ends.
    pub min_lr: f64,
    /// Linear warmup, in (fractional) epochs.
    pub warmup_epochs: f64,
    /// Seed of every random stream.
    pub seed: u64,
    /// Checkpoint every this many epochs (and after the last).
    pub save_every: usize,
    /// The products' arithmetic (fp32 in runs saved before the option).
    #[serde(default)]
    pub precision: Precision,
}

impl Schedule {
    /// The schedule of a training command's settings.
    pub fn of(settings: &impl Serialize) -> Schedule {
        let json = serde_json::to_value(settings).expect("plain values");
        serde_json::from_value(json).expect("a training command's settings")
    }

    /// Images per iteration over all processes.
    pub fn global_batch(&self) -> usize {
        self.batch_size * self.ranks
    }

    /// The peak learning rate (of the last layers, when groups are scaled): `blr *
    /// effective batch / 256`, the effective batch counting every process and accumulated
    /// iteration.
    pub fn lr(&self) -> f64 {
        self.blr * (self.global_batch() * self.accum_iter) as f64 / 256.0
    }

    /// Refuse a schedule no run can follow, naming the option.
    ///
    /// # Errors
    /// [`Error::Setup`] with one line.
    pub fn check(&self) -> Result<(), Error> {
        let effective = self
            .batch_size
            .checked_mul(self.ranks)
            .and_then(|b| b.checked_mul(self.accum_iter));
        let problems = [
            (self.epochs == 0, "--epochs must be at least 1"),
            (self.batch_size == 0, "--batch-size must be at least 1"),
            (self.accum_iter == 0, "--accum-iter must be at least 1"),
            (
                self.ranks == 0,
                "the run's process count must be at least 1",
            ),
            (
                effective.is_none_or(|b| b > MAX_BATCH),
                "--batch-size x processes x --accum-iter must be at most 2^31",
            ),
            (self.save_every == 0, "--save-every must be at least 1"),
            (
                !(self.blr > 0.0 && self.blr.is_finite()),
                "--blr must be positive",
            ),
            (
                !(self.min_lr >= 0.0 && self.min_lr.is_finite()),
                "--min-lr must be a number, not negative",
            ),
            (
                !(self.warmup_epochs >= 0.0 && self.warmup_epochs.is_finite()),
                "--warmup-epochs must be a number, not negative",
            ),
        ];
        match problems.iter().find(|(bad, _)| *bad) {
            Some((_, why)) => Err(Error::Setup(why.to_string())),
            None => Ok(()),
        }
    }
}

/// One iteration's input to a [`Learner`].
pub struct Step {
    /// This process's images, `(B, C, H, W)`.
    pub imgs: Tensor,
    /// Their labels, when the data has them.
    pub labels: Option<Vec<u32>>,
    /// The iteration's seed (masks, drop path), the same on every process.
    pub seed: u64,
    /// `(first, global)`: the images are rows `first..` of a global batch of `global`.
    pub rows: (usize, usize),
    /// Activation checkpointing.
    pub checkpoint: bool,
}

impl Step {
    /// Train mode with this iteration's seed, rows and checkpointing.
    pub fn ctx(&self) -> Ctx {
        let ctx = Ctx::train(self.seed).rows_of(self.rows.0, self.rows.1);
        ctx.checkpointing(self.checkpoint)
    }
}

/// A model the loop trains: pretraining's MAE, fine-tuning's classifier.
pub trait Learner {
    /// The loss of this process's rows of an iteration's batch.
    ///
    /// # Errors
    /// Engine failures, or data the learner cannot use.
    fn loss(&mut self, step: &Step) -> Result<Tensor, Error>;

    /// The module the optimizer trains, the processes compare and checkpoints hold.
    fn module(&self) -> &dyn Module;

    /// Write the model's files of a checkpoint into `dir`.
    ///
    /// # Errors
    /// I/O or engine failures.
    fn save(&self, dir: &Path) -> Result<(), Error>;

    /// After each epoch, on every process: evaluate where training stands (and log it).
    /// Returns the held-out top-1 when the learner measures one.
    ///
    /// # Errors
    /// I/O, data or engine failures.
    fn evaluate(&mut self, end: EpochEnd) -> Result<Option<f64>, Error>;
}

/// What a learner's evaluation gets at the end of an epoch.
pub struct EpochEnd<'e> {
    /// Where the run stands.
    pub at: Position,
    /// The processes of the run.
    pub dist: &'e Dist,
    /// Decoding threads.
    pub workers: usize,
    /// The log: rank 0's alone.
    pub log: Option<&'e mut Log>,
}

/// The training split as a run reads it.
pub struct TrainingData {
    /// The images.
    pub data: Arc<Dataset>,
    /// Their crop, flip and normalisation.
    pub augment: Augment,
    /// The channels the model takes.
    pub channels: usize,
}

/// How the training data is cut into a run's iterations.
#[derive(Clone, Debug)]
pub struct Batches {
    /// Training images used.
    pub images: usize,
    /// This process's images per iteration.
    pub per_rank: usize,
    /// Iterations per epoch.
    pub iters: usize,
}

/// What a finished run reports.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Where the run ends.
    pub at: Position,
    /// Mean loss of the last epoch.
    pub last_epoch_loss: f64,
    /// Images per second over this invocation's training, data pipeline included.
    pub img_per_s: f64,
    /// Undecodable files skipped.
    pub skipped: usize,
    /// The last checkpoint written.
    pub checkpoint: PathBuf,
}

/// What the iterations of a run share: device, processes, data, log, clock and position.
pub struct Trainer<'a> {
    /// This process's device.
    pub device: Device,
    /// Where the run stands.
    pub at: Position,
    /// How the data is cut into iterations.
    pub batches: Batches,
    dist: &'a Dist,
    output: PathBuf,
    /// The run's settings, as its checkpoints save them, and the schedule read from them.
    settings: Value,
    schedule: Schedule,
    /// What every epoch's loader reads: the epoch's order and number are filled in.
    feed: Plan,
    progress: bool,
    checkpoint_activations: bool,
    /// The sum of the losses of this epoch's iterations so far.
    epoch_loss_sum: f64,
    /// The log: rank 0's alone.
    log: Option<Log>,
    /// When this invocation started.
    started: Instant,
    /// Images trained on by this invocation, over all processes.
    images_seen: usize,
    /// The last checkpoint written or resumed from: the one a diverging run names.
    checkpoint: Option<PathBuf>,
    /// The loss scaler, in an f16-mixed run.
    scaler: Option<LossScaler>,
    /// A process of the run was asked to stop, and every process knows.
    stopping: bool,
    _watchdog: Option<Watchdog>,
}

impl<'a> Trainer<'a> {
    /// A run with `settings` over `train` in `output`, continuing `resumed` when given. The processes must agree on the settings
    /// and see the same data. Rank 0 opens the log (continuing it when the run resumes in
    /// its own directory). From here on SIGINT, SIGTERM and SIGUSR1 stop the run at a step
    /// boundary with a checkpoint, and the watchdog ends a run that stalls.
    ///
    /// # Errors
    /// [`Error::Setup`] when the processes disagree, the global batch does not split over
    /// them, the data holds less than one batch or cannot give `channels`, the checkpoint's
    /// position is not one of this run's step boundaries, or f16-mixed precision meets an
    /// adapter without `SHADER_F16`; I/O failures.
    pub fn new<S: Serialize + std::fmt::Debug>(
        device: Device,
        dist: &'a Dist,
        run: &Invocation,
        output: &Output,
        settings: &S,
        train: TrainingData,
        resumed: Option<Resumed<S>>,
    ) -> Result<Trainer<'a>, Error> {
        let TrainingData {
            data,
            augment,
            channels,
        } = train;
        dist.check_same("settings or model", || format!("{settings:?}"))?;
        data.check_channels(channels)?;
        dist.check_same("data", || data.digest())?;
        if dist.is_main() {
            data.warnings.iter().for_each(|w| eprintln!("{w}"));
        }
        let schedule = Schedule::of(settings);
        let global = schedule.global_batch();
        if !global.is_multiple_of(dist.size()) {
            return Err(Error::Setup(format!(
                "the run's global batch of {global} images does not split over {} processes",
                dist.size()
            )));
        }
        let images = schedule.limit.map_or(data.len(), |l| l.min(data.len()));
        if images < global {
            return Err(Error::Setup(format!(
                "{}: {images} images, fewer than one batch of {global}",
                data.description
            )));
        }
        let iters = images / global;
        schedule.precision.check(device.info())?;
        let scaler = match schedule.precision {
            Precision::Fp32 => None,
            Precision::F16Mixed => Some(
                resumed
                    .as_ref()
                    .and_then(|r| r.state.loss_scaler)
                    .unwrap_or_default(),
            ),
        };
        let at = resumed
            .as_ref()
            .map_or(Position::default(), Resumed::position);
        if let Some(r) = &resumed {
            check_position(r, iters, schedule.accum_iter)?;
        }
        let log = match dist.is_main() {
            true => {
                let log_bytes = resumed.as_ref().and_then(|r| r.state.log_bytes);
                let continued = log_bytes.filter(|_| output.continues);
                Some(Log::open(&output.dir, at, continued)?)
            }
            false => None,
        };
        stop::install()?;
        let watchdog = (!run.stall_timeout.is_zero()).then(|| {
            Watchdog::start(run.stall_timeout, dist.rank(), |line| {
                crate::dist::abort_job(&format!("error: {line}"), 1)
            })
        });
        let per_rank = global / dist.size();
        Ok(Trainer {
            device,
            at,
            batches: Batches {
                images,
                per_rank,
                iters,
            },
            dist,
            output: output.dir.clone(),
            settings: serde_json::to_value(settings).expect("plain values"),
            feed: Plan {
                data,
                augment: Arc::new(augment),
                random: true,
                channels,
                order: vec![],
                batch: per_rank,
                workers: run.workers,
                seed: schedule.seed,
                epoch: 0,
                skipped: Arc::new(Skipped::default()),
            },
            schedule,
            progress: run.progress && dist.is_main(),
            checkpoint_activations: run.checkpoint_activations,
            epoch_loss_sum: resumed.as_ref().map_or(0.0, |r| r.state.epoch_loss_sum),
            log,
            started: Instant::now(),
            images_seen: 0,
            checkpoint: resumed.map(|r| r.dir),
            scaler,
            stopping: false,
            _watchdog: watchdog,
        })
    }

    /// Train `learner` with `opt` to the last epoch: each epoch a shuffled pass, an
    /// evaluation, a line, and a checkpoint when due. The processes first check that they
    /// hold the same weights. Prints the per-kernel profile when `ENGINE_PROFILE` asked for
    /// one, and returns what the run did.
    ///
    /// # Errors
    /// [`Error::Stopped`] when a signal stopped the run (after its checkpoint is written);
    /// [`Error::NonFinite`] when the loss diverges (the checkpoints written are intact);
    /// processes that disagree; data, I/O or engine failures.
    pub fn fit(&mut self, learner: &mut dyn Learner, opt: &mut AdamW) -> Result<Summary, Error> {
        self.check_same_weights(learner)?;
        let mut loss = f64::NAN;
        while self.at.epoch < self.schedule.epochs {
            let Some(epoch_loss) = self.train_one_epoch(learner, opt)? else {
                let name = format!("checkpoint-step-{}", self.at.step);
                return Err(self.stop(learner, opt, &name, BTreeMap::new()));
            };
            loss = epoch_loss;
            self.at.epoch += 1;
            self.epoch_loss_sum = 0.0;
            let top1 = learner.evaluate(self.epoch_end())?;
            let s = &self.schedule;
            let last = self.at.epoch == s.epochs;
            let due = self.at.epoch.is_multiple_of(s.save_every) || last;
            let mut metrics = BTreeMap::from([("loss".to_string(), loss)]);
            metrics.extend(top1.map(|t| ("top1".to_string(), t)));
            if self.dist.is_main() {
                self.end_epoch(loss, top1)?;
            }
            let name = format!("checkpoint-{}", self.at.epoch);
            if self.stopping && !last {
                return Err(self.stop(learner, opt, &name, metrics));
            }
            if due {
                self.checkpoint = Some(self.save(learner, opt, &name, metrics)?);
            }
        }
        super::print_profile(&self.device);
        Ok(Summary {
            at: self.at,
            last_epoch_loss: loss,
            img_per_s: self.images_per_second(),
            skipped: self.feed.skipped.count(),
            checkpoint: self.checkpoint.clone().unwrap_or_default(),
        })
    }

    /// What a learner's evaluation gets where the run stands.
    pub fn epoch_end(&mut self) -> EpochEnd<'_> {
        EpochEnd {
            at: self.at,
            dist: self.dist,
            workers: self.feed.workers,
            log: self.log.as_mut(),
        }
    }

    /// Write checkpoint `name` where the run stands (rank 0 writes, after every process
    /// checked that they hold the same weights, and the others wait for it); a checkpoint
    /// of a signal's stop within an epoch is removed once a later epoch's is written.
    fn save(
        &mut self,
        learner: &dyn Learner,
        opt: &AdamW,
        name: &str,
        metrics: BTreeMap<String, f64>,
    ) -> Result<PathBuf, Error> {
        self.check_same_weights(learner)?;
        let dir = self.output.join(name);
        if self.dist.is_main() {
            self.save_checkpoint(learner, opt, name, metrics)?;
            if !name.starts_with("checkpoint-step-") {
                super::checkpoint::remove_before(&self.output, "checkpoint-step-", self.at.step)?;
            }
        }
        self.dist.any(false); // every process waits for the checkpoint
        watchdog::beat();
        Ok(dir)
    }

    /// Stop at a signal's request: the checkpoint `name` of where the run stands, and the
    /// error that says so.
    fn stop(
        &mut self,
        learner: &dyn Learner,
        opt: &AdamW,
        name: &str,
        metrics: BTreeMap<String, f64>,
    ) -> Error {
        match self.save(learner, opt, name, metrics) {
            Ok(dir) => Error::Stopped {
                signal: stop::signal_name(),
                at: match self.at.step == (self.at.epoch * self.batches.iters) as u64 {
                    true => format!("step {}, the end of epoch {}", self.at.step, self.at.epoch),
                    false => format!("step {} (epoch {})", self.at.step, self.at.epoch + 1),
                },
                checkpoint: dir,
                output: self.output.clone(),
            },
            Err(e) => e,
        }
    }

    /// With several processes: check that they hold the same weights.
    fn check_same_weights(&self, learner: &dyn Learner) -> Result<(), Error> {
        if self.dist.size() == 1 {
            return Ok(());
        }
        let digest = weights_digest(learner.module())?;
        self.dist.check_same("weights", || digest)
    }

    /// One pass over the epoch's batches, as the reference's `train_one_epoch`: the
    /// learning rate per iteration, forward, the loss checked, backward into the
    /// accumulated gradients, and an AdamW step every `accum_iter` iterations. A run
    /// resumed within the epoch starts at the iteration it stopped at. Returns the epoch's
    /// mean loss, or `None` when a signal stopped the run at an optimizer step before the
    /// epoch's end.
    fn train_one_epoch(
        &mut self,
        learner: &mut dyn Learner,
        opt: &mut AdamW,
    ) -> Result<Option<f64>, Error> {
        let (epoch, accum) = (self.at.epoch, self.schedule.accum_iter);
        let Batches {
            images,
            per_rank,
            iters,
            ..
        } = self.batches;
        let first = (self.at.step - (epoch * iters) as u64) as usize;
        let s = &self.schedule;
        let mut rng = Rng::new(&[s.seed, streams::ORDER, epoch as u64]);
        let order = self
            .feed
            .data
            .epoch_order(images, &mut rng, s.ranks, s.batch_size);
        let mine = self.dist.shard(&order, per_rank);
        let loader = Loader::new(Plan {
            order: mine[first * per_rank..].to_vec(),
            epoch: epoch as u64,
            ..self.feed.clone()
        });
        let prefix = format!("epoch {}/{}", epoch + 1, self.schedule.epochs);
        let bar = progress_bar(self.progress, iters, prefix);
        bar.set_position(first as u64);
        let mut grads = Gradients::default();
        for (it, batch) in (first..).zip(loader) {
            let batch = batch?;
            if it % accum == 0 {
                let s = &self.schedule;
                let progress = epoch as f64 + it as f64 / iters as f64;
                let lr =
                    warmup_cosine_lr(progress, s.lr(), s.min_lr, s.warmup_epochs, s.epochs as f64);
                for g in &mut opt.groups {
                    g.lr = (lr * g.lr_scale) as f32;
                }
            }
            let size = self.feed.augment.size;
            let shape = [batch.len, self.feed.channels, size, size];
            let step = Step {
                imgs: Tensor::from_slice(&self.device, &batch.pixels, &shape)?,
                labels: batch.labels,
                seed: Rng::new(&[self.schedule.seed, streams::STEP, self.at.step]).next_u64(),
                rows: (self.dist.rank() * per_rank, self.schedule.global_batch()),
                checkpoint: self.checkpoint_activations,
            };
            let loss = match self.scaler {
                Some(_) => engine::autocast_f16(|| learner.loss(&step)),
                None => learner.loss(&step),
            }?;
            // Backward is recorded before the loss is read, so the GPU runs the forward
            // while the CPU records the backward; a NaN still stops the run before AdamW.
            let loss_scale = self.scaler.map_or(1.0, |s| s.scale);
            let seed = Tensor::full(&self.device, &[], (loss_scale / accum as f64) as f32)?;
            loss.backward_into(&seed, &mut grads)?;
            // The global batch's mean loss: the mean of the processes' equal batches, so
            // every process sees a NaN or infinity; and whether any process was asked to
            // stop, so that all stop at the same step.
            let mut sum = [loss.item()? as f64, stop::requested() as u8 as f64];
            self.dist.sum(&mut sum);
            self.stopping |= sum[1] > 0.0;
            let value = (sum[0] / self.dist.size() as f64) as f32;
            if !value.is_finite() {
                bar.abandon();
                return Err(Error::non_finite(
                    value,
                    format!("at step {} (epoch {})", self.at.step, epoch + 1),
                    self.checkpoint.as_deref(),
                ));
            }
            let mut skipped = false;
            let optimizer_step = (it + 1) % accum == 0;
            if optimizer_step {
                let params: Vec<Tensor> =
                    opt.groups.iter().flat_map(|g| g.params.clone()).collect();
                self.dist.average_gradients(&mut grads, &params)?;
                let mut finite = true;
                let factor = match &mut self.scaler {
                    Some(scaler) => {
                        let factor = scaler.unscale(&opt.groups, &grads)?;
                        finite = factor.all_finite()?;
                        scaler.update(finite);
                        Some(factor)
                    }
                    None => None,
                };
                if finite {
                    opt.step_with(&grads, factor.as_ref())?;
                }
                skipped = !finite;
                grads.clear();
            }
            self.images_seen += batch.len * self.dist.size();
            self.epoch_loss_sum += value as f64;
            let lr = opt.groups.last().map_or(0.0, |g| g.lr);
            self.log_step(it, value, lr, loss_scale, skipped, &bar)?;
            self.at.step += 1;
            watchdog::step_done(self.at.step);
            // A stop within the epoch, at an optimizer step; one that comes after the
            // epoch's last optimizer step waits for the epoch's end.
            if self.stopping && optimizer_step && it + 1 + accum <= iters {
                bar.abandon();
                return Ok(None);
            }
        }
        // Iterations left over when an epoch is not a multiple of accum_iter are dropped, as
        // in the reference (its next epoch starts with zeroed gradients).
        bar.finish_and_clear();
        Ok(Some(self.epoch_loss_sum / iters as f64))
    }

    /// Images per second over this invocation's training, data pipeline included.
    fn images_per_second(&self) -> f64 {
        self.images_seen as f64 / self.started.elapsed().as_secs_f64()
    }

    /// A metrics line, skipped-file warnings, and the progress bar (or, without a terminal,
    /// a line every tenth of an epoch).
    /// With f16-mixed precision, the loss scale of the step and whether it was skipped
    /// for an overflow, in the log and (when skipped) on stderr.
    fn log_step(
        &mut self,
        it: usize,
        loss: f32,
        lr: f32,
        loss_scale: f64,
        overflow: bool,
        bar: &indicatif::ProgressBar,
    ) -> Result<(), Error> {
        let elapsed = self.started.elapsed().as_secs_f64();
        let img_per_s = self.images_per_second();
        let at = self.at;
        let mixed = self.scaler.is_some();
        let Some(log) = &mut self.log else {
            return Ok(()); // only rank 0 reports
        };
        let mut figures = vec![
            ("loss", loss as f64),
            ("lr", lr as f64),
            ("img_per_s", img_per_s),
            ("elapsed_s", elapsed),
        ];
        if mixed {
            figures.extend([
                ("loss_scale", loss_scale),
                ("skipped", overflow as u8 as f64),
            ]);
        }
        log.line(
            "train",
            &[("step", at.step), ("epoch", at.epoch as u64)],
            &figures,
        )?;
        if overflow {
            let line = format!(
                "step {}: the gradients overflowed f16 at loss scale {loss_scale}; step skipped, \
                 scale lowered to {}",
                at.step,
                loss_scale * super::scaler::BACKOFF
            );
            bar.suspend(|| eprintln!("{line}"));
        }
        for warning in self.feed.skipped.take_new() {
            bar.suspend(|| eprintln!("{warning}"));
        }
        let status = format!("loss {loss:.4}  lr {lr:.2e}  {img_per_s:.1} img/s");
        let iters = self.batches.iters;
        if !self.progress && (it + 1).is_multiple_of((iters / 10).max(1)) {
            eprintln!(
                "epoch {}/{} step {}/{}  {status}",
                at.epoch + 1,
                self.schedule.epochs,
                it + 1,
                iters
            );
        }
        bar.set_message(status);
        bar.inc(1);
        Ok(())
    }

    /// The epoch's line on stderr, and with a top-1 in the log too.
    fn end_epoch(&mut self, loss: f64, top1: Option<f64>) -> Result<(), Error> {
        let at = self.at;
        let elapsed = self.started.elapsed().as_secs_f64();
        let img_per_s = self.images_per_second();
        let log = self.log.as_mut().expect("rank 0");
        let mut figures = String::new();
        if let Some(top1) = top1 {
            figures = format!("  test top-1 {top1:.2}%");
            log.line(
                "epoch",
                &[("step", at.step - 1), ("epoch", at.epoch as u64 - 1)],
                &[("train_loss", loss), ("top1", top1), ("elapsed_s", elapsed)],
            )?;
        }
        log.flush()?;
        eprintln!(
            "epoch {}/{}  loss {loss:.4}{figures}  {img_per_s:.1} img/s  {elapsed:.0} s",
            at.epoch, self.schedule.epochs,
        );
        Ok(())
    }

    /// `output/name/`: the learner's files, `optimizer.safetensors` and
    /// `trainer_state.json`, the log flushed to the disk first; and the loss curve,
    /// `loss.png`.
    fn save_checkpoint(
        &mut self,
        learner: &dyn Learner,
        opt: &AdamW,
        name: &str,
        metrics: BTreeMap<String, f64>,
    ) -> Result<(), Error> {
        let at = self.at;
        let log = self.log.as_mut().expect("rank 0");
        let log_bytes = log.sync()?;
        write_checkpoint(&self.output, name, |dir| {
            learner.save(dir)?;
            let state = TrainerState {
                epoch: at.epoch,
                step: at.step,
                optimizer_step: save_optimizer(opt, dir)?,
                settings: &self.settings,
                metrics,
                loss_scaler: self.scaler,
                epoch_loss_sum: self.epoch_loss_sum,
                log_bytes: Some(log_bytes),
            };
            write_json(&dir.join("trainer_state.json"), &state)
        })?;
        plot::loss_curve_png(log.path(), &self.output.join("loss.png"))
    }
}

/// Refuse a checkpoint whose position is not a step boundary of this run: at an epoch's
/// start, or within one after an optimizer step that is not its last.
fn check_position<S>(r: &Resumed<S>, iters: usize, accum: usize) -> Result<(), Error> {
    let (epoch, step) = (r.state.epoch as u64, r.state.step);
    let within = step.checked_sub(epoch * iters as u64);
    let boundary = within.is_some_and(|i| {
        let i = i as usize;
        i == 0 || (i.is_multiple_of(accum) && i + accum <= iters)
    });
    if boundary {
        return Ok(());
    }
    Err(Error::Setup(format!(
        "{}: step {step} is not a step boundary of epoch {} of this run ({iters} iterations of \
         {accum} per optimizer step); was the data or batch changed?",
        r.dir.join("trainer_state.json").display(),
        epoch + 1
    )))
}
