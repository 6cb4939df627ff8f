//! The training loop of `pretrain` and `finetune`, written once for any [`Learner`]: the
//! reference's `train_one_epoch` (`engine_pretrain.py`, `engine_finetune.py`) and the epoch
//! loop of its `main_pretrain.py` / `main_finetune.py`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use engine::{warmup_cosine_lr, AdamW, Device, Gradients, Tensor};
use nn::{Ctx, Module};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{progress_bar, save_optimizer, weights_digest, write_dir_atomically, write_json};
use super::{Invocation, Log, LossScaler, Precision, Resumed, TrainerState};
use crate::data::{Augment, Dataset, Loader, Rng, Skipped};
use crate::dist::Dist;
use crate::{plot, Error};

/// Random streams of the loop (see [`crate::data::Rng`]): each epoch's data order, and
/// each iteration's seed of masks and drop path.
const ORDER_STREAM: u64 = 1;
const STEP_STREAM: u64 = 2;

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
        let problems = [
            (self.epochs == 0, "--epochs must be at least 1"),
            (self.batch_size == 0, "--batch-size must be at least 1"),
            (self.accum_iter == 0, "--accum-iter must be at least 1"),
            (self.save_every == 0, "--save-every must be at least 1"),
            (
                !(self.blr > 0.0 && self.blr.is_finite()),
                "--blr must be positive",
            ),
            (
                self.warmup_epochs.is_nan() || self.warmup_epochs < 0.0,
                "--warmup-epochs must not be negative",
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
    fn evaluate(&mut self, trainer: &mut Trainer, at: Position) -> Result<Option<f64>, Error>;
}

/// What the iterations of a run share: device, processes, data, log, clock and position.
pub struct Trainer<'a> {
    /// This process's device.
    pub device: Device,
    /// The processes of the run.
    pub dist: &'a Dist,
    /// Output directory.
    pub output: PathBuf,
    /// Decoding threads.
    pub workers: usize,
    progress: bool,
    checkpoint_activations: bool,
    /// The run's settings, as its checkpoints save them.
    settings: Value,
    /// The schedule of the run.
    pub schedule: Schedule,
    /// Where the run stands.
    pub at: Position,
    /// The log: rank 0's alone.
    pub log: Option<Log>,
    /// The training split.
    pub data: Arc<Dataset>,
    augment: Arc<Augment>,
    channels: usize,
    /// Training images used.
    pub images: usize,
    /// This process's images per iteration.
    pub per_rank: usize,
    /// Iterations per epoch.
    pub iters: usize,
    started: Instant,
    /// Images trained on by this invocation, over all processes.
    images_seen: usize,
    /// Undecodable files skipped.
    pub skipped: Arc<Skipped>,
    /// The last checkpoint written or resumed from: the one a diverging run names.
    pub checkpoint: Option<PathBuf>,
    /// The loss scaler, in an f16-mixed run.
    scaler: Option<LossScaler>,
}

impl<'a> Trainer<'a> {
    /// A run with `settings` over `data` (seen through `augment` with `channels`) for
    /// `command` (the default output directory's name), continuing `resumed` when given.
    /// The processes must agree on the settings. Rank 0 creates the output directory and
    /// opens the log.
    ///
    /// # Errors
    /// [`Error::Setup`] when the processes disagree, the global batch does not split over
    /// them, the data holds less than one batch, or f16-mixed precision meets an adapter
    /// without `SHADER_F16`; I/O failures.
    pub fn new<S: Serialize + std::fmt::Debug>(
        device: Device,
        dist: &'a Dist,
        (run, command): (&Invocation, &str),
        settings: &S,
        (data, augment, channels): (Arc<Dataset>, Augment, usize),
        resumed: Option<Resumed<S>>,
    ) -> Result<Trainer<'a>, Error> {
        dist.check_same("settings or model", &format!("{settings:?}"))?;
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
        let scaler = match schedule.precision {
            Precision::Fp32 => None,
            Precision::F16Mixed if !device.info().features.shader_f16 => {
                return Err(Error::Setup(format!(
                    "--precision f16-mixed needs an adapter with SHADER_F16, and {} does not \
                     offer it; use --precision fp32",
                    device.info().name
                )))
            }
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
        let output = run.output(command);
        let log = if dist.is_main() {
            std::fs::create_dir_all(&output).map_err(Error::io(&output))?;
            Some(Log::open(&output, at)?)
        } else {
            None
        };
        Ok(Trainer {
            device,
            dist,
            output,
            workers: run.workers,
            progress: run.progress && dist.is_main(),
            checkpoint_activations: run.checkpoint_activations,
            settings: serde_json::to_value(settings).expect("plain values"),
            at,
            log,
            data,
            augment: Arc::new(augment),
            channels,
            images,
            per_rank: global / dist.size(),
            iters: images / global,
            schedule,
            started: Instant::now(),
            images_seen: 0,
            skipped: Arc::new(Skipped::default()),
            checkpoint: resumed.map(|r| r.dir),
            scaler,
        })
    }

    /// Train `learner` with `opt` (its groups' learning rates scaled by `scales`) to the
    /// last epoch: each epoch a shuffled pass, an evaluation, a line, and a checkpoint when
    /// due. The processes first check that they hold the same weights. Returns the last
    /// epoch's mean loss.
    ///
    /// # Errors
    /// [`Error::NonFinite`] when the loss diverges (the checkpoints written are intact);
    /// processes that disagree; data, I/O or engine failures.
    pub fn fit(
        &mut self,
        learner: &mut dyn Learner,
        (opt, scales): (&mut AdamW, &[f64]),
    ) -> Result<f64, Error> {
        self.check_same_weights(learner)?;
        let mut loss = f64::NAN;
        while self.at.epoch < self.schedule.epochs {
            loss = self.train_one_epoch(learner, (opt, scales))?;
            self.at.epoch += 1;
            let top1 = learner.evaluate(self, self.at)?;
            let s = &self.schedule;
            let due = self.at.epoch.is_multiple_of(s.save_every) || self.at.epoch == s.epochs;
            if due {
                self.check_same_weights(learner)?;
            }
            if self.log.is_some() {
                self.end_epoch(loss, top1)?;
                if due {
                    self.save_checkpoint(&*learner, opt, (loss, top1))?;
                }
            }
            if due {
                let name = format!("checkpoint-{}", self.at.epoch);
                self.checkpoint = Some(self.output.join(name));
            }
        }
        Ok(loss)
    }

    /// With several processes: check that they hold the same weights.
    fn check_same_weights(&self, learner: &dyn Learner) -> Result<(), Error> {
        if self.dist.size() == 1 {
            return Ok(());
        }
        self.dist
            .check_same("weights", &weights_digest(learner.module())?)
    }

    /// One pass over the epoch's batches, as the reference's `train_one_epoch`: the
    /// learning rate per iteration, forward, the loss checked, backward into the
    /// accumulated gradients, and an AdamW step every `accum_iter` iterations. Returns the
    /// epoch's mean loss.
    fn train_one_epoch(
        &mut self,
        learner: &mut dyn Learner,
        (opt, scales): (&mut AdamW, &[f64]),
    ) -> Result<f64, Error> {
        let (epoch, accum) = (self.at.epoch, self.schedule.accum_iter);
        let mut order: Vec<usize> = (0..self.images).collect();
        Rng::new(&[self.schedule.seed, ORDER_STREAM, epoch as u64]).shuffle(&mut order);
        let loader = Loader::new(
            self.data.clone(),
            (self.augment.clone(), true),
            self.channels,
            self.dist.shard(&order, self.per_rank),
            self.per_rank,
            self.workers,
            (self.schedule.seed, epoch as u64),
            self.skipped.clone(),
        );
        let prefix = format!("epoch {}/{}", epoch + 1, self.schedule.epochs);
        let bar = progress_bar(self.progress, self.iters, prefix);
        let mut grads = Gradients::default();
        let mut total = 0.0;
        for (it, batch) in loader.enumerate() {
            let batch = batch?;
            if it % accum == 0 {
                let s = &self.schedule;
                let progress = epoch as f64 + it as f64 / self.iters as f64;
                let lr =
                    warmup_cosine_lr(progress, s.lr(), s.min_lr, s.warmup_epochs, s.epochs as f64);
                for (g, k) in opt.groups.iter_mut().zip(scales) {
                    g.lr = (lr * k) as f32;
                }
            }
            let shape = [
                batch.len,
                self.channels,
                self.augment.size,
                self.augment.size,
            ];
            let step = Step {
                imgs: Tensor::from_slice(&self.device, &batch.pixels, &shape)?,
                labels: batch.labels,
                seed: Rng::new(&[self.schedule.seed, STEP_STREAM, self.at.step]).next_u64(),
                rows: (
                    self.dist.rank() * self.per_rank,
                    self.schedule.global_batch(),
                ),
                checkpoint: self.checkpoint_activations,
            };
            let loss = match self.scaler {
                Some(_) => engine::autocast_f16(|| learner.loss(&step)),
                None => learner.loss(&step),
            }?;
            // The global batch's mean loss: the mean of the processes' equal batches, so
            // every process sees a NaN or infinity.
            let mut sum = [loss.item()? as f64];
            self.dist.sum(&mut sum);
            let value = (sum[0] / self.dist.size() as f64) as f32;
            if !value.is_finite() {
                bar.abandon();
                return Err(Error::non_finite(
                    value,
                    format!("at step {} (epoch {})", self.at.step, epoch + 1),
                    self.checkpoint.as_deref(),
                ));
            }
            let loss_scale = self.scaler.map_or(1.0, |s| s.scale);
            let seed = Tensor::full(&self.device, &[], (loss_scale / accum as f64) as f32)?;
            loss.backward_into(&seed, &mut grads)?;
            let mut skipped = false;
            if (it + 1) % accum == 0 {
                let params: Vec<Tensor> =
                    opt.groups.iter().flat_map(|g| g.params.clone()).collect();
                self.dist.average_gradients(&mut grads, &params)?;
                let finite = match &mut self.scaler {
                    Some(scaler) => {
                        let finite = scaler.unscale(&mut grads)?;
                        scaler.update(finite);
                        finite
                    }
                    None => true,
                };
                if finite {
                    opt.step(&grads)?;
                }
                skipped = !finite;
                grads.clear();
            }
            self.images_seen += batch.len * self.dist.size();
            total += value as f64;
            self.log_step(it, value, (opt, loss_scale, skipped), &bar)?;
            self.at.step += 1;
        }
        // Iterations left over when an epoch is not a multiple of accum_iter are dropped, as
        // in the reference (its next epoch starts with zeroed gradients).
        bar.finish_and_clear();
        Ok(total / self.iters as f64)
    }

    /// Images per second over this invocation's training, data pipeline included.
    pub fn images_per_second(&self) -> f64 {
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
        (opt, loss_scale, overflow): (&AdamW, f64, bool),
        bar: &indicatif::ProgressBar,
    ) -> Result<(), Error> {
        let elapsed = self.started.elapsed().as_secs_f64();
        let img_per_s = self.images_per_second();
        let lr = opt.groups.last().map_or(0.0, |g| g.lr);
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
        for warning in self.skipped.take_new() {
            bar.suspend(|| eprintln!("{warning}"));
        }
        let status = format!("loss {loss:.4}  lr {lr:.2e}  {img_per_s:.1} img/s");
        if !self.progress && (it + 1).is_multiple_of((self.iters / 10).max(1)) {
            eprintln!(
                "epoch {}/{} step {}/{}  {status}",
                at.epoch + 1,
                self.schedule.epochs,
                it + 1,
                self.iters
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

    /// `output/checkpoint-{epoch}/`: the learner's files, `optimizer.safetensors` and
    /// `trainer_state.json`; and the loss curve, `loss.png`.
    fn save_checkpoint(
        &mut self,
        learner: &dyn Learner,
        opt: &AdamW,
        (loss, top1): (f64, Option<f64>),
    ) -> Result<(), Error> {
        let at = self.at;
        write_dir_atomically(&self.output, &format!("checkpoint-{}", at.epoch), |dir| {
            learner.save(dir)?;
            let mut metrics = std::collections::BTreeMap::from([("loss".to_string(), loss)]);
            if let Some(top1) = top1 {
                metrics.insert("top1".into(), top1);
            }
            let state = TrainerState {
                epoch: at.epoch,
                step: at.step,
                optimizer_step: save_optimizer(opt, dir)?,
                settings: &self.settings,
                metrics,
                loss_scaler: self.scaler,
            };
            write_json(&dir.join("trainer_state.json"), &state)
        })?;
        let log = self.log.as_ref().expect("rank 0");
        plot::loss_curve_png(log.path(), &self.output.join("loss.png"))
    }
}
