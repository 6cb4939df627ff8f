//! Self-supervised pretraining, as the reference's `main_pretrain.py`: AdamW with betas
//! (0.9, 0.95), weight decay on matrices only, `lr = blr * effective_batch / 256`, a
//! per-iteration warmup and half-cycle cosine schedule, gradient accumulation, and
//! checkpoints from which a run resumes exactly.
//!
//! An output directory holds `metrics.jsonl` (one line per iteration), `loss.png`,
//! `reconstruction.png` and `checkpoint-{epoch}/` directories: the model in the Hugging
//! Face ViTMAE layout (`config.json`, `model.safetensors`, `preprocessor_config.json`)
//! plus `optimizer.safetensors` and `trainer_state.json` (epoch, step, seed and settings).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use engine::{
    warmup_cosine_lr, AdamW, Device, DeviceOptions, Gradients, OptimizerState, ParamGroup, Tensor,
};
use nn::{named_parameters, read_safetensors, save_host_safetensors, Ctx, Init};
use serde_json::{json, Value};

use crate::data::{Augment, Dataset, Loader, Normalize, Rng, Skipped, Split};
use crate::dist::Dist;
use crate::hf::{
    load_pretrained, read_config, read_preprocessor, save_preprocessor, save_pretrained,
};
use crate::knn::Monitor;
use crate::run::{
    checkpoint_dir, print_profile, profiling, progress_bar, weights_digest, write_dir_atomically,
    Invocation, Log,
};
use crate::{plot, visualize, Error, MaeConfig, MaskedAutoencoder};

/// Random streams of a run, by purpose (see [`crate::data::Rng`]).
const ORDER_STREAM: u64 = 1;
const MASK_STREAM: u64 = 2;
const INIT_STREAM: u64 = 3;

/// Everything that defines a pretraining run. Saved in each checkpoint; `--resume` takes it
/// from there, so a resumed run is the same run.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// A preset name, or a directory (or `config.json`) to start from.
    pub model: String,
    /// Image folder, IDX file or directory of IDX files.
    pub data: PathBuf,
    /// Use only the first this many training images.
    pub limit: Option<usize>,
    /// Passes over the data.
    pub epochs: usize,
    /// Images per iteration and process.
    pub batch_size: usize,
    /// Processes the run started with (`mpirun -np`): an iteration's global batch is
    /// `batch_size * ranks` images, whatever number of processes later resumes it.
    pub ranks: usize,
    /// Iterations per optimizer step.
    pub accum_iter: usize,
    /// Base learning rate: `lr = blr * batch_size * accum_iter / 256`.
    pub blr: f64,
    /// Linear warmup, in (fractional) epochs.
    pub warmup_epochs: f64,
    /// Where the cosine ends.
    pub min_lr: f64,
    /// AdamW's decoupled weight decay, on matrices only.
    pub weight_decay: f64,
    /// Fraction of patches masked.
    pub mask_ratio: f64,
    /// Per-patch normalised targets.
    pub norm_pix_loss: bool,
    /// Seed of every random stream: initialisation, data order, augmentation, masks.
    pub seed: u64,
    /// Checkpoint every this many epochs (and after the last).
    pub save_every: usize,
    /// Weighted k-NN top-1 on held-out images every this many epochs and before the
    /// first (0: never; only with labelled data that has a held-out split).
    pub knn_every: usize,
}

impl Settings {
    /// The reference recipe scaled to a preset: the ViT-B/L/H presets get the paper's
    /// (800 epochs, 40 warmup, effective batch 4096 as 64 x 64 accumulation, blr 1.5e-4);
    /// the small presets a short recipe that shows learning within minutes on a CPU.
    pub fn recipe(model: &str, config: &MaeConfig, data: PathBuf) -> Settings {
        let small = config.image_size <= 64;
        Settings {
            model: model.to_string(),
            data,
            limit: small.then_some(19_200),
            epochs: if small { 1 } else { 800 },
            batch_size: 64,
            ranks: 1,
            accum_iter: if small { 1 } else { 64 },
            blr: if small { 8e-3 } else { 1.5e-4 },
            warmup_epochs: if small { 0.05 } else { 40.0 },
            min_lr: 0.0,
            weight_decay: 0.05,
            mask_ratio: config.mask_ratio,
            norm_pix_loss: config.norm_pix_loss || !small,
            seed: 0,
            save_every: if small { 1 } else { 20 },
            knn_every: if small { 1 } else { 0 },
        }
    }

    /// Images per iteration over all processes.
    pub fn global_batch(&self) -> usize {
        self.batch_size * self.ranks
    }

    /// The absolute learning rate: `blr * effective batch / 256`, the effective batch
    /// counting every process and accumulated iteration.
    pub fn lr(&self) -> f64 {
        self.blr * (self.global_batch() * self.accum_iter) as f64 / 256.0
    }

    fn to_json(&self) -> Value {
        json!({
            "model": self.model,
            "data": self.data,
            "limit": self.limit,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "ranks": self.ranks,
            "accum_iter": self.accum_iter,
            "blr": self.blr,
            "warmup_epochs": self.warmup_epochs,
            "min_lr": self.min_lr,
            "weight_decay": self.weight_decay,
            "mask_ratio": self.mask_ratio,
            "norm_pix_loss": self.norm_pix_loss,
            "seed": self.seed,
            "save_every": self.save_every,
            "knn_every": self.knn_every,
        })
    }

    fn from_json(v: &Value) -> Option<Settings> {
        let f = |k: &str| v.get(k)?.as_f64();
        let u = |k: &str| v.get(k)?.as_u64();
        Some(Settings {
            model: v.get("model")?.as_str()?.to_string(),
            data: PathBuf::from(v.get("data")?.as_str()?),
            limit: u("limit").map(|l| l as usize),
            epochs: u("epochs")? as usize,
            batch_size: u("batch_size")? as usize,
            // Checkpoints from before data parallelism ran on one process.
            ranks: u("ranks").unwrap_or(1) as usize,
            accum_iter: u("accum_iter")? as usize,
            blr: f("blr")?,
            warmup_epochs: f("warmup_epochs")?,
            min_lr: f("min_lr")?,
            weight_decay: f("weight_decay")?,
            mask_ratio: f("mask_ratio")?,
            norm_pix_loss: v.get("norm_pix_loss")?.as_bool()?,
            seed: u("seed")?,
            save_every: u("save_every")? as usize,
            knn_every: u("knn_every").unwrap_or(0) as usize,
        })
    }
}

/// The images the k-NN monitor encodes, half of them the memory bank and half queries, for
/// an epoch of `images`: an eighth of them, at least 200 and at most 2000. Encoding an
/// image whole costs about 0.4 of a training step's image (measured on lavapipe with the
/// default preset: 2.8 against 6.9 ms), so an eighth costs about 5% of an epoch.
fn knn_images(images: usize) -> usize {
    (images / 8).clamp(200, 2000)
}

fn setup<E: std::fmt::Display>(e: E) -> Error {
    Error::Setup(e.to_string())
}

/// A model and optimizer where training stands.
struct State {
    model: MaskedAutoencoder,
    opt: AdamW,
    /// Epochs completed.
    epoch: usize,
    /// Iterations completed.
    step: u64,
    normalize: Normalize,
}

/// What a finished run reports.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Epochs completed in all.
    pub epochs: usize,
    /// Iterations completed in all.
    pub steps: u64,
    /// Mean loss of the last epoch.
    pub last_epoch_loss: f64,
    /// Images per second over this invocation's training, data pipeline included.
    pub img_per_s: f64,
    /// Undecodable files skipped.
    pub skipped: usize,
    /// The last checkpoint written.
    pub checkpoint: PathBuf,
}

/// Run (or continue) pretraining. Prints one line per epoch; returns what happened.
///
/// # Errors
/// [`Error::Setup`] for bad settings, missing data or I/O failures;
/// [`Error::NonFinite`] when the loss diverges (earlier checkpoints are untouched).
pub fn pretrain(settings: Settings, run: &Invocation, dist: &Dist) -> Result<Summary, Error> {
    let device = Device::with_options(DeviceOptions {
        adapter_index: Some(dist.local_rank()),
        ..Default::default()
    })
    .map_err(setup)?;
    if let Some(line) = dist.describe(&device.info().name) {
        eprintln!("{line}");
    }
    let profiling = profiling(&device);
    let (mut settings, mut state, checkpoint) = match &run.resume {
        Some(path) => {
            let (settings, state, dir) = resume(path, &device, dist)?;
            (settings, state, Some(dir))
        }
        None => {
            let state = fresh(&settings, &device)?;
            (settings, state, None)
        }
    };
    if let Some(epochs) = run.epochs {
        settings.epochs = epochs;
    }
    validate(&settings)?;
    let config = state.model.config.clone();
    dist.check_same(
        "settings or model",
        &format!("{} {config:?}", settings.to_json()),
    )?;
    let global = settings.global_batch();
    if !global.is_multiple_of(dist.size()) {
        return Err(setup(format!(
            "the run's global batch of {global} images does not split over {} processes",
            dist.size()
        )));
    }
    let per_rank = global / dist.size();
    let train = Arc::new(Dataset::open(&settings.data, Split::Train).map_err(setup)?);
    let n = settings.limit.map_or(train.len(), |l| l.min(train.len()));
    let iters = n / global;
    if iters == 0 {
        return Err(setup(format!(
            "{}: {n} images, fewer than one batch of {global}",
            train.description
        )));
    }
    if run.resume.is_none() {
        state.normalize = train.normalize(config.channels);
    }
    let metrics = if dist.is_main() {
        std::fs::create_dir_all(&run.output)
            .map_err(|e| setup(format!("{}: {e}", run.output.display())))?;
        eprintln!(
            "pretraining {} on {} ({}): {n} images, batch {per_rank} x {} processes x {} accumulated, lr {:.3e}, {} epochs, {} iterations each",
            describe(&config),
            train.description,
            device.info().name,
            dist.size(),
            settings.accum_iter,
            settings.lr(),
            settings.epochs,
            iters
        );
        Some(Log::open(&run.output, "step", state.step).map_err(setup)?)
    } else {
        None
    };
    // The images every epoch's reconstruction picture shows.
    let held_out = if dist.is_main() {
        held_out_images(&settings, &config)?
    } else {
        vec![]
    };
    let half = knn_images(n) / 2;
    let monitor = match Monitor::new(&settings.data, half, half) {
        Ok(m) if dist.is_main() && settings.knn_every > 0 => Some(m),
        Err(why) if dist.is_main() && settings.knn_every > 0 => {
            eprintln!("k-NN monitor off: {why}");
            None
        }
        _ => None,
    };

    let augment = Arc::new(Augment::pretrain(
        config.image_size,
        state.normalize.clone(),
    ));
    let mut trainer = Trainer {
        device,
        settings,
        run,
        dist,
        per_rank,
        config,
        iters,
        metrics,
        started: Instant::now(),
        images_seen: 0,
        skipped: Arc::new(Skipped::default()),
        checkpoint,
    };
    let mut last_epoch_loss = f64::NAN;
    let mut picture = None;
    if let (Some(m), 0) = (&monitor, state.epoch) {
        trainer.knn(m, &state)?; // the random encoder's figure, the curve's start
    }
    while state.epoch < trainer.settings.epochs {
        let (s, epoch) = (&trainer.settings, state.epoch);
        let mut order: Vec<usize> = (0..n).collect();
        Rng::new(&[s.seed, ORDER_STREAM, epoch as u64]).shuffle(&mut order);
        let loader = Loader::new(
            train.clone(),
            (augment.clone(), true),
            trainer.config.channels,
            dist.shard(&order, per_rank),
            per_rank,
            run.workers,
            (s.seed, epoch as u64),
            trainer.skipped.clone(),
        );
        last_epoch_loss = trainer.train_one_epoch(&mut state, loader)?;
        state.epoch += 1;
        let s = &trainer.settings;
        let due = state.epoch % s.save_every == 0 || state.epoch == s.epochs;
        if due && dist.size() > 1 {
            dist.check_same("weights", &weights_digest(&state.model)?)?;
        }
        if let Some(metrics) = &mut trainer.metrics {
            let elapsed = trainer.started.elapsed().as_secs_f64();
            eprintln!(
                "epoch {}/{}  loss {last_epoch_loss:.4}  {:.1} img/s  {elapsed:.0} s",
                state.epoch,
                s.epochs,
                trainer.images_seen as f64 / elapsed,
            );
            let drawn = reconstructions(&held_out, s, &state)?;
            metrics
                .image("reconstruction", state.step, &drawn)
                .map_err(setup)?;
            picture = Some(drawn);
            metrics.flush().map_err(setup)?;
            if due {
                save_checkpoint(&run.output, s, &state)?;
                plot::loss_curve_png(metrics.path(), &run.output.join("loss.png"))
                    .map_err(setup)?;
            }
        }
        if due {
            trainer.checkpoint = Some(run.output.join(format!("checkpoint-{}", state.epoch)));
        }
        let knn_due = state.epoch % s.knn_every.max(1) == 0 || state.epoch == s.epochs;
        if let (Some(m), true) = (&monitor, knn_due) {
            trainer.knn(m, &state)?;
        }
    }
    let img_per_s = trainer.images_seen as f64 / trainer.started.elapsed().as_secs_f64();
    if profiling {
        print_profile(&trainer.device);
    }
    if dist.is_main() {
        let picture = match picture {
            Some(p) => p,
            None => reconstructions(&held_out, &trainer.settings, &state)?,
        };
        let path = run.output.join("reconstruction.png");
        picture
            .save(&path)
            .map_err(|e| setup(format!("{}: {e}", path.display())))?;
    }
    Ok(Summary {
        epochs: state.epoch,
        steps: state.step,
        last_epoch_loss,
        img_per_s,
        skipped: trainer.skipped.count(),
        checkpoint: trainer.checkpoint.unwrap_or_default(),
    })
}

/// What the iterations of a run share.
struct Trainer<'a> {
    device: Device,
    settings: Settings,
    run: &'a Invocation,
    dist: &'a Dist,
    /// This process's images per iteration.
    per_rank: usize,
    config: MaeConfig,
    /// Iterations per epoch.
    iters: usize,
    /// The log: rank 0's alone.
    metrics: Option<Log>,
    started: Instant,
    /// Images trained on by this invocation, over all processes.
    images_seen: usize,
    skipped: Arc<Skipped>,
    /// The last checkpoint written or resumed from: the one a diverging run names.
    checkpoint: Option<PathBuf>,
}

impl Trainer<'_> {
    /// One pass over the epoch's batches, as the reference's `train_one_epoch`: lr per
    /// iteration, forward, loss check, backward into the accumulated gradients, an AdamW
    /// step every `accum_iter` iterations. Returns the epoch's mean loss.
    fn train_one_epoch(&mut self, state: &mut State, loader: Loader) -> Result<f64, Error> {
        let (epoch, accum) = (state.epoch, self.settings.accum_iter);
        let prefix = format!("epoch {}/{}", epoch + 1, self.settings.epochs);
        let bar = progress_bar(self.run.progress && self.dist.is_main(), self.iters, prefix);
        let mut grads = Gradients::default();
        let scale = Tensor::full(&self.device, &[], 1.0 / accum as f32).map_err(setup)?;
        let mut total = 0.0;
        for (it, batch) in loader.enumerate() {
            let batch = batch.map_err(setup)?;
            if it % accum == 0 {
                self.adjust_learning_rate(
                    &mut state.opt,
                    epoch as f64 + it as f64 / self.iters as f64,
                );
            }
            let c = &self.config;
            let shape = [batch.len, c.channels, c.image_size, c.image_size];
            let imgs = Tensor::from_slice(&self.device, &batch.pixels, &shape).map_err(setup)?;
            // This process's rows of the global batch's masking noise.
            let mask_seed = Rng::new(&[self.settings.seed, MASK_STREAM, state.step]).next_u64();
            let (first, global) = (
                self.dist.rank() * self.per_rank,
                self.settings.global_batch(),
            );
            let noise = Tensor::rand(&self.device, &[global, c.num_patches()], mask_seed)
                .and_then(|t| t.narrow(0, first, batch.len))
                .map_err(setup)?;
            let ctx = &mut Ctx::train(mask_seed).rows_of(first, global);
            let ratio = self.settings.mask_ratio;
            let out = state
                .model
                .forward(&imgs, ratio, &noise, ctx)
                .map_err(setup)?;
            // The global batch's loss: every image has as many masked patches, so it is the
            // mean of the processes' losses, and every process sees a NaN or infinity.
            let mut sum = [out.loss.item().map_err(setup)? as f64];
            self.dist.sum(&mut sum);
            let loss = (sum[0] / self.dist.size() as f64) as f32;
            if !loss.is_finite() {
                bar.abandon();
                return Err(Error::non_finite(
                    loss,
                    format!("at step {} (epoch {})", state.step, epoch + 1),
                    self.checkpoint.as_deref(),
                ));
            }
            out.loss.backward_into(&scale, &mut grads).map_err(setup)?;
            if (it + 1) % accum == 0 {
                let params: Vec<Tensor> = state
                    .opt
                    .groups
                    .iter()
                    .flat_map(|g| g.params.clone())
                    .collect();
                self.dist.average_gradients(&mut grads, &params)?;
                state.opt.step(&grads).map_err(setup)?;
                grads.clear();
            }
            self.images_seen += batch.len * self.dist.size();
            total += loss as f64;
            self.log(state, it, loss, &bar)?;
            state.step += 1;
        }
        // Iterations left over when an epoch is not a multiple of accum_iter are dropped, as
        // in the reference (its next epoch starts with zeroed gradients).
        bar.finish_and_clear();
        Ok(total / self.iters as f64)
    }

    /// The k-NN monitor's top-1 where training stands: a line on stderr, in the log and
    /// in TensorBoard (`knn/top1`).
    fn knn(&mut self, monitor: &Monitor, state: &State) -> Result<(), Error> {
        let started = Instant::now();
        let top1 = monitor
            .top1(&state.model, &state.normalize, self.run.workers)
            .map_err(setup)?;
        eprintln!(
            "k-NN top-1 {top1:.2}% after {} epochs ({} held-out and bank images, {:.1} s)",
            state.epoch,
            monitor.images(),
            started.elapsed().as_secs_f64()
        );
        if let Some(metrics) = &mut self.metrics {
            let index = [("step", state.step), ("epoch", state.epoch as u64)];
            metrics
                .line("knn", &index, &[("top1", top1)])
                .map_err(setup)?;
        }
        Ok(())
    }

    /// The lr of every group at a fractional epoch: warmup, then half-cycle cosine.
    fn adjust_learning_rate(&self, opt: &mut AdamW, epoch: f64) {
        let s = &self.settings;
        let lr = warmup_cosine_lr(epoch, s.lr(), s.min_lr, s.warmup_epochs, s.epochs as f64);
        for g in &mut opt.groups {
            g.lr = lr as f32;
        }
    }

    /// A metrics line, skipped-file warnings, and the progress bar (or, without a terminal,
    /// a line every tenth of an epoch).
    fn log(
        &mut self,
        state: &State,
        it: usize,
        loss: f32,
        bar: &indicatif::ProgressBar,
    ) -> Result<(), Error> {
        let elapsed = self.started.elapsed().as_secs_f64();
        let img_per_s = self.images_seen as f64 / elapsed;
        let lr = state.opt.groups[0].lr;
        let Some(metrics) = &mut self.metrics else {
            return Ok(()); // only rank 0 reports
        };
        metrics
            .line(
                "train",
                &[("step", state.step), ("epoch", state.epoch as u64)],
                &[
                    ("loss", loss as f64),
                    ("lr", lr as f64),
                    ("img_per_s", img_per_s),
                    ("elapsed_s", elapsed),
                ],
            )
            .map_err(setup)?;
        for warning in self.skipped.take_new() {
            bar.suspend(|| eprintln!("{warning}"));
        }
        let status = format!("loss {loss:.4}  lr {lr:.2e}  {img_per_s:.1} img/s");
        if !self.run.progress && (it + 1).is_multiple_of((self.iters / 10).max(1)) {
            eprintln!(
                "epoch {}/{} step {}/{}  {status}",
                state.epoch + 1,
                self.settings.epochs,
                it + 1,
                self.iters
            );
        }
        bar.set_message(status);
        bar.inc(1);
        Ok(())
    }
}

fn describe(c: &MaeConfig) -> String {
    format!(
        "a {}x{}x{} MAE (patch {}, encoder {}/{}, decoder {}/{}, mask {})",
        c.image_size,
        c.image_size,
        c.channels,
        c.patch_size,
        c.dim,
        c.depth,
        c.decoder_dim,
        c.decoder_depth,
        c.mask_ratio
    )
}

fn validate(s: &Settings) -> Result<(), Error> {
    let problems = [
        (s.epochs == 0, "--epochs must be at least 1"),
        (s.batch_size == 0, "--batch-size must be at least 1"),
        (s.accum_iter == 0, "--accum-iter must be at least 1"),
        (s.save_every == 0, "--save-every must be at least 1"),
        (
            !(s.blr > 0.0 && s.blr.is_finite()),
            "--blr must be positive",
        ),
        (
            s.warmup_epochs.is_nan() || s.warmup_epochs < 0.0,
            "--warmup-epochs must not be negative",
        ),
        (
            !(0.0..1.0).contains(&s.mask_ratio),
            "--mask-ratio must be in [0, 1)",
        ),
    ];
    match problems.iter().find(|(bad, _)| *bad) {
        Some((_, why)) => Err(setup(why)),
        None => Ok(()),
    }
}

/// The model named by `settings.model` (a preset, or a directory or config.json, with its
/// weights when the directory has them) and a new optimizer.
fn fresh(settings: &Settings, device: &Device) -> Result<State, Error> {
    let mut model = model_from(&settings.model, settings.seed, device)?;
    model.config.mask_ratio = settings.mask_ratio;
    model.config.norm_pix_loss = settings.norm_pix_loss;
    model.config.validate().map_err(setup)?;
    let opt = optimizer(&model, settings)?;
    Ok(State {
        model,
        opt,
        epoch: 0,
        step: 0,
        normalize: Normalize::imagenet(),
    })
}

/// The config a `--model` value names, before any weights are made.
///
/// # Errors
/// One line when the value is neither a preset nor a readable config.
pub fn config_from(model: &str) -> Result<MaeConfig, String> {
    if let Some(c) = MaeConfig::by_name(model) {
        return Ok(c);
    }
    let path = Path::new(model);
    let config_path = if path.is_dir() {
        path.join("config.json")
    } else {
        path.to_path_buf()
    };
    if !config_path.is_file() {
        return Err(format!(
            "--model {model}: not a preset ({}) and no {}",
            MaeConfig::PRESETS.join(", "),
            config_path.display()
        ));
    }
    read_config(&config_path).map_err(|e| e.to_string())
}

fn model_from(model: &str, seed: u64, device: &Device) -> Result<MaskedAutoencoder, Error> {
    let dir = Path::new(model);
    if dir.join("model.safetensors").is_file() {
        return load_pretrained(dir, device).map_err(setup);
    }
    let config = config_from(model).map_err(setup)?;
    let mut init = Init::new(device, Rng::new(&[seed, INIT_STREAM]).next_u64());
    MaskedAutoencoder::new(config, &mut init).map_err(setup)
}

/// MAE's AdamW: betas (0.9, 0.95) and two groups, weight decay on matrices (and tokens)
/// and none on biases and norms, as timm's `param_groups_weight_decay`.
///
/// # Errors
/// Engine errors only.
pub fn adamw(model: &MaskedAutoencoder, lr: f32, weight_decay: f32) -> engine::Result<AdamW> {
    let (decay, no_decay): (Vec<Tensor>, Vec<Tensor>) = named_parameters(model)
        .into_iter()
        .map(|(_, t)| t)
        .partition(|t| t.rank() > 1);
    AdamW::new(
        vec![
            ParamGroup::new(decay, lr, weight_decay),
            ParamGroup::new(no_decay, lr, 0.0),
        ],
        (0.9, 0.95),
        1e-8,
    )
}

fn optimizer(model: &MaskedAutoencoder, s: &Settings) -> Result<AdamW, Error> {
    adamw(model, s.lr() as f32, s.weight_decay as f32).map_err(setup)
}

fn resume(path: &Path, device: &Device, dist: &Dist) -> Result<(Settings, State, PathBuf), Error> {
    let dir = checkpoint_dir(path).map_err(setup)?;
    let state_path = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&state_path)
        .map_err(|e| setup(format!("{}: {e}", state_path.display())))?;
    let json: Value =
        serde_json::from_str(&text).map_err(|e| setup(format!("{}: {e}", state_path.display())))?;
    let bad = || {
        setup(format!(
            "{}: missing or malformed fields",
            state_path.display()
        ))
    };
    let settings = json
        .get("settings")
        .and_then(Settings::from_json)
        .ok_or_else(bad)?;
    let epoch = json.get("epoch").and_then(Value::as_u64).ok_or_else(bad)? as usize;
    let step = json.get("step").and_then(Value::as_u64).ok_or_else(bad)?;
    let normalize = read_preprocessor(&dir).map_err(setup)?;
    let model = load_pretrained(&dir, device).map_err(setup)?;
    let mut opt = optimizer(&model, &settings)?;
    let opt_path = dir.join("optimizer.safetensors");
    let tensors = read_safetensors(&opt_path).map_err(setup)?;
    let opt_step = json
        .get("optimizer_step")
        .and_then(Value::as_u64)
        .ok_or_else(bad)?;
    let state = OptimizerState {
        step: opt_step,
        tensors: tensors.into_iter().map(|(n, (s, v))| (n, s, v)).collect(),
    };
    opt.load_state(&state)
        .map_err(|e| setup(format!("{}: {e}", opt_path.display())))?;
    if dist.is_main() {
        eprintln!("resuming {} at epoch {epoch}, step {step}", dir.display());
    }
    Ok((
        settings,
        State {
            model,
            opt,
            epoch,
            step,
            normalize,
        },
        dir,
    ))
}

/// Write `output/checkpoint-{epoch}` (model, preprocessor, optimizer, trainer state).
fn save_checkpoint(output: &Path, settings: &Settings, state: &State) -> Result<PathBuf, Error> {
    let name = format!("checkpoint-{}", state.epoch);
    write_dir_atomically(output, &name, |tmp| {
        let e = |e: nn::CheckpointError| e.to_string();
        save_pretrained(&state.model, tmp).map_err(e)?;
        save_preprocessor(tmp, &state.model.config, &state.normalize)
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        let opt = state.opt.state().map_err(|e| e.to_string())?;
        save_host_safetensors(&tmp.join("optimizer.safetensors"), opt.tensors, None).map_err(e)?;
        let trainer = json!({
            "epoch": state.epoch,
            "step": state.step,
            "optimizer_step": opt.step,
            "rng": {"seed": settings.seed, "note": "every random stream is derived from (seed, epoch, step, image index)"},
            "settings": settings.to_json(),
        });
        let path = tmp.join("trainer_state.json");
        std::fs::write(&path, serde_json::to_string_pretty(&trainer).expect("JSON"))
            .map_err(|e| format!("{}: {e}", path.display()))
    })
    .map_err(Error::Setup)
}

/// Eight held-out images (the test split when there is one) for the reconstruction
/// pictures.
fn held_out_images(settings: &Settings, c: &MaeConfig) -> Result<Vec<crate::data::Image>, Error> {
    let data = Dataset::open(&settings.data, Split::Test)
        .or_else(|_| Dataset::open(&settings.data, Split::Train))
        .map_err(setup)?;
    Ok((0..data.len())
        .filter_map(|i| data.get(i, c.channels).ok())
        .take(8)
        .collect())
}

/// The reconstruction picture of `images` with the model where training stands.
fn reconstructions(
    images: &[crate::data::Image],
    settings: &Settings,
    state: &State,
) -> Result<image::RgbImage, Error> {
    let c = &state.model.config;
    visualize::reconstruction_grid(
        &state.model,
        images,
        &state.normalize,
        c.mask_ratio,
        settings.seed,
    )
    .map_err(setup)
}
