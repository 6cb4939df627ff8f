//! Self-supervised pretraining, as the reference's `main_pretrain.py`: AdamW with betas
//! (0.9, 0.95), weight decay on matrices only, `lr = blr * effective_batch / 256`, a
//! per-iteration warmup and half-cycle cosine schedule, gradient accumulation, and
//! checkpoints from which a run resumes exactly. The loop itself is [`crate::run::Trainer`];
//! what is the MAE's is its [`Learner`], `Pretraining`.
//!
//! An output directory holds `metrics.jsonl` (one line per iteration), TensorBoard events,
//! `loss.png`, `reconstruction.png` and `checkpoint-{epoch}/` directories: the model in the
//! Hugging Face ViTMAE layout (`config.json`, `model.safetensors`,
//! `preprocessor_config.json`) plus `optimizer.safetensors` and `trainer_state.json`
//! (epoch, step and settings).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use engine::{AdamW, Device, ParamGroup, Tensor};
use nn::{named_parameters, Init, Module};
use serde::{Deserialize, Serialize};

use crate::config::config_from;
use crate::data::{
    streams, Augment, Dataset, Image, Normalize, NormalizeFrom, Rng, Split, FASHION_MNIST,
};
use crate::dist::Dist;
use crate::hf::{load_pretrained, read_preprocessor, save_preprocessor, save_pretrained};
use crate::knn::Monitor;
use crate::run::{
    self, EpochEnd, Given, Invocation, Launch, Learner, Output, Precision, Resumed, Schedule, Step,
    Summary, Trainer, TrainingData,
};
use crate::{visualize, Error, MaeConfig, MaskedAutoencoder};

/// `mae pretrain`'s options.
pub type Args = run::Args<Settings>;

/// Everything that defines a pretraining run, in one place: the command-line options (their
/// defaults are the small presets' recipe, and [`Settings::scaled`] scales the options left
/// out to a large model), and the `settings` of each checkpoint's `trainer_state.json`, which
/// `--resume` takes, so that a resumed run is the same run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct Settings {
    /// A preset (mae_tiny_28_patch7, mae_tiny_28_patch4, mae_tiny_32_patch4,
    /// mae_vit_base_patch16, ...), or a Hugging Face model directory or config.json to
    /// start from.
    #[arg(long, default_value = "mae_tiny_28_patch7")]
    pub model: String,
    /// An image folder (PNG, JPEG, TIFF; recursive), an IDX image file, or a directory of
    /// IDX files such as Fashion-MNIST's.
    #[arg(long, default_value = FASHION_MNIST)]
    pub data: PathBuf,
    /// Image channels (bands) of a new model, 1 to 64 [default: the model's].
    #[arg(long, default_value_t = 3, hide_default_value = true)]
    #[serde(default = "three")]
    pub channels: usize,
    /// Where the normalisation's per-channel mean and std come from: default (ImageNet's for
    /// RGB, as the reference; the data's own for other channel counts) or auto (the data's
    /// own: every IDX pixel, or a seeded sample of 512 images of a folder). Saved in
    /// preprocessor_config.json.
    #[arg(long, value_enum, default_value_t = NormalizeFrom::Default)]
    #[serde(default)]
    pub normalize: NormalizeFrom,
    /// Per-channel means to normalise with, comma-separated (with --std).
    #[arg(long, value_delimiter = ',', value_parser = run::finite_f32, requires = "std")]
    #[serde(default)]
    pub mean: Option<Vec<f32>>,
    /// Per-channel standard deviations to normalise with, comma-separated (with --mean).
    #[arg(long, value_delimiter = ',', value_parser = run::finite_f32, requires = "mean")]
    #[serde(default)]
    pub std: Option<Vec<f32>>,
    /// The bands the pictures draw, numbered from 1: three as red, green and blue
    /// (`--bands 4,3,2`), or one as gray [default: 1,2,3, or 1 for fewer than 3 channels].
    #[arg(long, value_delimiter = ',')]
    #[serde(default)]
    pub bands: Option<Vec<usize>>,
    /// Use only the first N training images [ViT-B/L/H: all].
    #[arg(long, default_value = "19200")]
    pub limit: Option<usize>,
    /// Passes over the data [ViT-B/L/H: 800].
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    /// Images per iteration and process [ViT-B/L/H: 64].
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Processes the run started with (`mpirun -np`): an iteration's global batch is
    /// `batch_size * ranks` images, whatever number of processes later resumes it.
    #[arg(skip = 1usize)]
    #[serde(default = "one")]
    pub ranks: usize,
    /// Iterations per optimizer step; effective batch = batch_size * processes *
    /// accum_iter [ViT-B/L/H: 64, for 4096].
    #[arg(long, default_value_t = 1)]
    pub accum_iter: usize,
    /// Base learning rate; lr = blr * effective batch / 256 [ViT-B/L/H: 1.5e-4].
    #[arg(long, value_parser = run::finite, default_value_t = 8e-3)]
    pub blr: f64,
    /// Linear warmup in epochs (fractions allowed) [ViT-B/L/H: 40].
    #[arg(long, value_parser = run::finite, default_value_t = 0.05)]
    pub warmup_epochs: f64,
    /// Learning rate at the end of the cosine.
    #[arg(long, value_parser = run::finite, default_value_t = 0.0)]
    pub min_lr: f64,
    /// AdamW weight decay on weight matrices (not on biases and norms).
    #[arg(long, value_parser = run::finite, default_value_t = 0.05)]
    pub weight_decay: f64,
    /// Fraction of patches masked [default: the model's].
    #[arg(long, value_parser = run::finite, default_value_t = 0.75, hide_default_value = true)]
    pub mask_ratio: f64,
    /// Predict per-patch normalised pixels; `--norm-pix-loss false` turns it off [default:
    /// the model's, off for the small presets; ViT-B/L/H: on, as in the paper].
    #[arg(long, num_args = 0..=1, default_value_t = false, default_missing_value = "true",
          action = clap::ArgAction::Set, hide_default_value = true)]
    pub norm_pix_loss: bool,
    /// Seed of initialisation, data order, augmentation and masks.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Checkpoint every N epochs, and after the last [ViT-B/L/H: 20].
    #[arg(long, default_value_t = 1)]
    pub save_every: usize,
    /// Weighted k-NN top-1 of the encoder on held-out images every N epochs (and before
    /// the first), when the data has labels and a held-out split; 0 turns it off
    /// [ViT-B/L/H: 0].
    #[arg(long, default_value_t = 1)]
    #[serde(default)]
    pub knn_every: usize,
    /// Arithmetic of the products: fp32, or f16-mixed (matmuls and attention read f16
    /// operands and accumulate in f32; weights, optimizer state, norms, softmax and the loss
    /// stay f32; dynamic loss scaling). f16-mixed needs an adapter with SHADER_F16.
    #[arg(long, value_enum, default_value_t = Precision::Fp32)]
    #[serde(default)]
    pub precision: Precision,
}

fn one() -> usize {
    1
}

fn three() -> usize {
    3
}

impl Settings {
    /// The recipe for `model` (whose config is `config`) on `data`: the defaults, scaled.
    pub fn recipe(model: &str, config: &MaeConfig, data: PathBuf) -> Settings {
        let defaults = run::defaults::<Settings>();
        Settings {
            model: model.to_string(),
            data,
            ..defaults
        }
        .scaled(config)
    }

    /// These settings scaled to a model: the mask ratio and target of its config, and for
    /// the ViT-B/L/H presets the paper's recipe (800 epochs, 40 of warmup, effective batch
    /// 4096 as 64 x 64 accumulation, blr 1.5e-4, normalised pixels). The small presets keep
    /// the defaults: a short recipe that shows learning within minutes on a CPU.
    pub fn scaled(self, config: &MaeConfig) -> Settings {
        let own = Settings {
            channels: config.channels,
            mask_ratio: config.mask_ratio,
            norm_pix_loss: config.norm_pix_loss,
            ..self
        };
        if config.image_size <= 64 {
            return own;
        }
        Settings {
            limit: None,
            epochs: 800,
            batch_size: 64,
            accum_iter: 64,
            blr: 1.5e-4,
            warmup_epochs: 40.0,
            norm_pix_loss: true,
            save_every: 20,
            knn_every: 0,
            ..own
        }
    }

    /// The absolute learning rate: `blr * effective batch / 256`.
    pub fn lr(&self) -> f64 {
        Schedule::of(self).lr()
    }

    /// Refuse settings no run can follow, naming the option.
    ///
    /// # Errors
    /// [`Error::Setup`] with one line.
    pub fn check(&self) -> Result<(), Error> {
        Schedule::of(self).check()?;
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Err(Error::Setup(
                "--weight-decay must be a number, not negative".into(),
            ));
        }
        if !(1..=64).contains(&self.channels) {
            return Err(Error::Setup(format!(
                "--channels {}: a model takes 1 to 64",
                self.channels
            )));
        }
        if let (Some(mean), Some(std)) = (&self.mean, &self.std) {
            if mean.len() != self.channels || std.len() != self.channels {
                return Err(Error::Setup(format!(
                    "--mean and --std need one value per channel ({}), got {} and {}",
                    self.channels,
                    mean.len(),
                    std.len()
                )));
            }
            if std.iter().any(|s| *s <= 0.0) {
                return Err(Error::Setup("--std values must be positive".into()));
            }
        }
        visualize::Bands::new(self.bands.as_deref(), self.channels).map(|_| ())
    }
}

/// The images the k-NN monitor encodes, half of them the memory bank and half queries, for
/// an epoch of `images`: an eighth of them, at least 200 and at most 2000, a few percent
/// of an epoch (measured in docs/training.md).
fn knn_images(images: usize) -> usize {
    (images / 8).clamp(200, 2000)
}

/// `mae pretrain`: run (or continue) pretraining and say what happened.
///
/// # Errors
/// See [`pretrain`].
pub fn command(args: &Args, given: &Given, dist: &Dist) -> Result<(), Error> {
    let recipe = |p: &Settings| Ok(p.clone().scaled(&config_from(&p.model)?));
    let Launch {
        settings,
        resumed,
        output,
    } = args.start("pretrain", given, recipe, dist)?;
    let Some(output) = output else {
        return dry_run(&settings, resumed, &args.invocation(), dist);
    };
    let summary = pretrain(settings, resumed, &args.invocation(), &output, dist)?;
    if !dist.is_main() {
        return Ok(());
    }
    let skipped = match summary.skipped {
        0 => String::new(),
        n => format!(", {n} unreadable files skipped"),
    };
    eprintln!(
        "done: {} epochs, {} steps, last epoch loss {:.4}, {:.1} img/s{skipped}; checkpoint {}; \
         metrics, loss.png and reconstruction.png in {}",
        summary.at.epoch,
        summary.at.step,
        summary.last_epoch_loss,
        summary.img_per_s,
        summary.checkpoint.display(),
        output.dir.display()
    );
    Ok(())
}

/// Run pretraining with `settings`, continuing from `resumed` when given. Prints one line
/// per epoch.
///
/// # Errors
/// [`Error::NonFinite`] when the loss diverges (earlier checkpoints are untouched); bad
/// settings, missing data, unreadable checkpoints, I/O and engine failures.
pub fn pretrain(
    settings: Settings,
    resumed: Option<Resumed<Settings>>,
    run: &Invocation,
    output: &Output,
    dist: &Dist,
) -> Result<Summary, Error> {
    settings.check()?;
    let device = run::device(dist)?;
    let train = Arc::new(Dataset::open(&settings.data, Split::Train)?);
    let (model, normalize) = match &resumed {
        Some(r) => {
            let model = load_pretrained(&r.dir, &device)?;
            let normalize =
                read_preprocessor(&r.dir, model.config.channels)?.unwrap_or_else(|| {
                    train.normalize(model.config.channels, settings.normalize, settings.seed)
                });
            (model, normalize)
        }
        None => {
            let model = new_model(&settings, &device)?;
            let normalize = match (&settings.mean, &settings.std) {
                (Some(mean), Some(std)) => Normalize {
                    mean: mean.clone(),
                    std: std.clone(),
                },
                _ => train.normalize(model.config.channels, settings.normalize, settings.seed),
            };
            (model, normalize)
        }
    };
    let mut opt = adamw(&model, settings.lr() as f32, settings.weight_decay as f32)?;
    if let Some(r) = &resumed {
        r.load_optimizer(&mut opt)?;
    }
    let c = model.config.clone();
    let augment = Augment::pretrain(c.image_size, normalize.clone());
    let training = TrainingData {
        data: train.clone(),
        augment,
        channels: c.channels,
    };
    let mut trainer = Trainer::new(device, dist, run, output, &settings, training, resumed)?;
    let mut learner = Pretraining {
        model,
        normalize,
        held_out: vec![],
        monitor: None,
        picture: None,
        settings: settings.clone(),
    };
    if dist.is_main() {
        eprintln!(
            "pretraining {} on {} ({}): {} images, batch {} x {} processes x {} accumulated, lr {:.3e}, {} epochs, {} iterations each",
            describe(&c),
            train.description,
            trainer.device.info().name,
            trainer.batches.images,
            trainer.batches.per_rank,
            dist.size(),
            settings.accum_iter,
            settings.lr(),
            settings.epochs,
            trainer.batches.iters
        );
        learner.held_out = held_out_images(&settings.data, c.channels)?;
        learner.monitor = learner.monitor(trainer.batches.images);
    }
    if trainer.at.step == 0 {
        learner.knn(trainer.epoch_end())?; // the random encoder's figure, the curve's start
    }
    let summary = trainer.fit(&mut learner, &mut opt)?;
    if dist.is_main() && !learner.held_out.is_empty() {
        let picture = match learner.picture.take() {
            Some(p) => p,
            None => learner.reconstructions()?,
        };
        let path = output.dir.join("reconstruction.png");
        picture.save(&path).map_err(Error::image(&path))?;
    }
    Ok(summary)
}

/// `--dry-run`: one step of the run's model at its batch, precision and checkpointing, on
/// random images, measured and printed (see [`run::dry_run`]).
fn dry_run(
    settings: &Settings,
    resumed: Option<Resumed<Settings>>,
    run: &Invocation,
    dist: &Dist,
) -> Result<(), Error> {
    let device = run::device(dist)?;
    let model = match &resumed {
        Some(r) => load_pretrained(&r.dir, &device)?,
        None => new_model(settings, &device)?,
    };
    let mut opt = adamw(&model, settings.lr() as f32, settings.weight_decay as f32)?;
    let c = &model.config;
    let shape = [settings.batch_size, c.channels, c.image_size, c.image_size];
    let what = format!(
        "{} at batch {}, {}",
        describe(c),
        settings.batch_size,
        run::dry_run::options(settings.precision, run.checkpoint_activations)
    );
    let measured = run::dry_run::measure(&device, &mut opt, settings.precision, || {
        let imgs = Tensor::randn(&device, &shape, settings.seed)?;
        let ctx = &mut nn::Ctx::train(settings.seed).checkpointing(run.checkpoint_activations);
        Ok(model
            .forward_seeded(&imgs, settings.mask_ratio, settings.seed, ctx)?
            .loss)
    });
    run::dry_run::report(&device, &what, measured)
}

/// The MAE as the training loop's [`Learner`]: its loss on masked images, and after each
/// epoch a reconstruction picture and the k-NN monitor (rank 0).
struct Pretraining {
    model: MaskedAutoencoder,
    normalize: Normalize,
    settings: Settings,
    /// The images every epoch's reconstruction picture shows.
    held_out: Vec<Image>,
    monitor: Option<Monitor>,
    /// The last reconstruction picture drawn.
    picture: Option<image::RgbImage>,
}

impl Learner for Pretraining {
    fn loss(&mut self, step: &Step) -> Result<Tensor, Error> {
        let c = &self.model.config;
        // This process's rows of the global batch's masking noise.
        let (first, global) = step.rows;
        let noise = Tensor::rand(step.imgs.device(), &[global, c.num_patches()], step.seed)?
            .narrow(0, first, step.imgs.shape()[0])?;
        let ratio = self.settings.mask_ratio;
        let out = self
            .model
            .forward(&step.imgs, ratio, &noise, &mut step.ctx())?;
        Ok(out.loss)
    }

    fn module(&self) -> &dyn Module {
        &self.model
    }

    fn save(&self, dir: &Path) -> Result<(), Error> {
        save_pretrained(&self.model, dir)?;
        Ok(save_preprocessor(
            dir,
            self.model.config.image_size,
            &self.normalize,
        )?)
    }

    fn evaluate(&mut self, mut end: EpochEnd) -> Result<Option<f64>, Error> {
        let at = end.at;
        if let (Some(log), false) = (&mut end.log, self.held_out.is_empty()) {
            let picture = self.reconstructions()?;
            // At the epoch's last step: a run resumed from this epoch's checkpoint tells
            // TensorBoard to drop what was logged from the next step on.
            log.image("reconstruction", at.step - 1, &picture)?;
            self.picture = Some(picture);
        }
        let every = self.settings.knn_every.max(1);
        if at.epoch.is_multiple_of(every) || at.epoch == self.settings.epochs {
            self.knn(end)?;
        }
        Ok(None)
    }
}

impl Pretraining {
    /// The k-NN monitor of a run over `images` training images, when it is on and the data
    /// has labels and a held-out split.
    fn monitor(&self, images: usize) -> Option<Monitor> {
        if self.settings.knn_every == 0 {
            return None;
        }
        let half = knn_images(images) / 2;
        Monitor::new(&self.settings.data, half, half)
            .inspect_err(|why| eprintln!("k-NN monitor off: {why}"))
            .ok()
    }

    /// The k-NN monitor's top-1 where training stands: a line on stderr, in the log and
    /// in TensorBoard (`knn/top1`).
    fn knn(&self, end: EpochEnd) -> Result<(), Error> {
        let Some(monitor) = &self.monitor else {
            return Ok(());
        };
        let started = Instant::now();
        let (at, workers) = (end.at, end.workers);
        let top1 = monitor.top1(&self.model, &self.normalize, workers)?;
        eprintln!(
            "k-NN top-1 {top1:.2}% after {} epochs ({} held-out and bank images, {:.1} s)",
            at.epoch,
            monitor.images(),
            started.elapsed().as_secs_f64()
        );
        if let Some(log) = end.log {
            let index = [
                ("step", at.step.saturating_sub(1)),
                ("epoch", at.epoch as u64),
            ];
            log.line("knn", &index, &[("top1", top1)])?;
        }
        Ok(())
    }

    /// The reconstruction picture of the held-out images where training stands.
    fn reconstructions(&self) -> Result<image::RgbImage, Error> {
        let (ratio, seed) = (self.settings.mask_ratio, self.settings.seed);
        let bands =
            visualize::Bands::new(self.settings.bands.as_deref(), self.model.config.channels)?;
        let (model, images, normalize) = (&self.model, &self.held_out, &self.normalize);
        visualize::reconstruction_grid(model, images, normalize, &bands, ratio, seed)
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

/// The model a new run starts from: `settings.model`'s weights when it is a directory with
/// them, else a new initialisation of its config; with the run's mask ratio and target.
fn new_model(settings: &Settings, device: &Device) -> Result<MaskedAutoencoder, Error> {
    let dir = Path::new(&settings.model);
    let mut model = if dir.join("model.safetensors").is_file() {
        let model = load_pretrained(dir, device)?;
        if model.config.channels != settings.channels {
            return Err(Error::Setup(format!(
                "--channels {}: the weights in {} take {}",
                settings.channels,
                dir.display(),
                model.config.channels
            )));
        }
        model
    } else {
        let mut config = config_from(&settings.model)?;
        config.channels = settings.channels;
        let mut init = Init::new(device, Rng::new(&[settings.seed, streams::INIT]).next_u64());
        MaskedAutoencoder::new(config, &mut init)?
    };
    model.config.mask_ratio = settings.mask_ratio;
    model.config.norm_pix_loss = settings.norm_pix_loss;
    model.config.validate().map_err(Error::Setup)?;
    Ok(model)
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

/// Eight held-out images (the test split when there is one) for the reconstruction
/// pictures.
fn held_out_images(data: &Path, channels: usize) -> Result<Vec<Image>, Error> {
    let data = Dataset::open(data, Split::Test).or_else(|_| Dataset::open(data, Split::Train))?;
    let images: Vec<Image> = (0..data.len().min(64))
        .filter_map(|i| data.get(i, channels).ok())
        .take(8)
        .collect();
    if images.is_empty() {
        eprintln!(
            "warning: none of the first 64 images of {} decodes: no reconstruction pictures",
            data.description
        );
    }
    Ok(images)
}
