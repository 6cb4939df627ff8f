//! What linear probing and fine-tuning share: the encoder they start from (pretrained, or
//! randomly initialised for the baseline), labelled data with a held-out split, top-1
//! evaluation and the result line.
//!
//! Both start the same way, so that the gain of pretraining is measured with everything
//! else equal: an MAE (loaded from a checkpoint, or new from a config) whose encoder becomes
//! a [`VisionTransformer`] classifier.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use engine::{no_grad, DType, Device, Tensor};
use nn::{Ctx, Init, LayerNorm, VisionTransformer, VitConfig};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::config_from;
use crate::data::{
    streams, Augment, DataError, Dataset, Loader, Normalize, Plan, Rng, Skipped, Split,
};
use crate::dist::Dist;
use crate::hf::{load_pretrained, read_preprocessor};
use crate::{Error, MaskedAutoencoder};

/// Where the encoder's weights come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Start {
    /// The pretrained MAE encoder of `--model`.
    Mae,
    /// A fresh initialisation of the same architecture: the from-scratch baseline.
    Random,
}

impl Start {
    /// `"mae"` or `"random"`, as in the result line.
    pub fn name(self) -> &'static str {
        match self {
            Start::Mae => "mae",
            Start::Random => "random",
        }
    }
}

/// Which token summarises an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Pool {
    /// The cls token after the encoder's final norm (the reference's linear probe).
    Cls,
    /// The mean of the patch tokens through a LayerNorm (`fc_norm`, the global pool).
    Avg,
}

/// A labelled dataset with its held-out split.
pub struct Labelled {
    /// Training images, each with a label.
    pub train: Arc<Dataset>,
    /// Held-out images, each with a label.
    pub test: Arc<Dataset>,
    /// Number of classes (the larger of the splits' class lists).
    pub classes: usize,
}

/// Open `path`'s train and held-out splits, both labelled.
///
/// # Errors
/// [`Error::Data`] when either split is missing or unlabelled, or when they are the same
/// images.
pub fn open_labelled(path: &Path) -> Result<Labelled, Error> {
    let unsuitable = |why: String| Error::Data(DataError::Empty(why));
    let train = Dataset::open(path, Split::Train)?;
    let test = Dataset::open(path, Split::Test)?;
    if train.description == test.description {
        return Err(unsuitable(format!(
            "{}: no held-out split (t10k-* IDX files, or val/ or test/ next to train/)",
            path.display()
        )));
    }
    for d in [&train, &test] {
        if d.labels.is_none() {
            return Err(unsuitable(format!(
                "{}: no labels (an IDX labels file next to the images, or one sub-folder per class)",
                d.description
            )));
        }
    }
    // Class i must name the same class in both splits: one list must begin the other.
    let n = train.classes.len().min(test.classes.len());
    if train.classes[..n] != test.classes[..n] {
        return Err(unsuitable(format!(
            "{}: the held-out classes {:?} do not match the training classes {:?}",
            path.display(),
            test.classes,
            train.classes
        )));
    }
    let classes = train.classes.len().max(test.classes.len());
    if classes < 2 {
        return Err(unsuitable(format!(
            "{}: one class only; classification needs at least two",
            train.description
        )));
    }
    Ok(Labelled {
        train: Arc::new(train),
        test: Arc::new(test),
        classes,
    })
}

/// The MAE whose encoder is evaluated, and the normalisation it was pretrained with.
pub struct Encoder {
    /// The model (its decoder is unused).
    pub mae: MaskedAutoencoder,
    /// `preprocessor_config.json`'s mean and std for a pretrained model that has one; none
    /// for a random one (the dataset's own are used, ImageNet's for RGB).
    pub normalize: Option<Normalize>,
    /// What identifies the weights: the weights file, or the config and seed.
    pub identity: String,
}

/// The encoder of `model`: with [`Start::Mae`] a checkpoint directory (ours or a Hugging Face
/// ViTMAE one); with [`Start::Random`] a preset, a config, or a directory whose config is
/// taken and whose weights are ignored, initialised from `seed`.
///
/// # Errors
/// One line for a missing or unreadable model.
pub fn encoder(model: &str, start: Start, seed: u64, device: &Device) -> Result<Encoder, Error> {
    let dir = Path::new(model);
    match start {
        Start::Mae => {
            let weights = dir.join("model.safetensors");
            if !weights.is_file() {
                return Err(Error::Setup(format!(
                    "--model {model}: no model.safetensors there; --init mae needs a pretrained \
                     checkpoint (e.g. out/pretrain/checkpoint-1), --init random takes a preset"
                )));
            }
            let mae = load_pretrained(dir, device)?;
            let normalize = read_preprocessor(dir, mae.config.channels)?;
            let identity = format!("weights {} {:?}", file_digest(&weights)?, mae.config);
            Ok(Encoder {
                mae,
                normalize,
                identity,
            })
        }
        Start::Random => {
            let config = config_from(model)?;
            let mut init = Init::new(device, Rng::new(&[seed, streams::INIT]).next_u64());
            let identity = format!("random {config:?} seed {seed}");
            let mae = MaskedAutoencoder::new(config, &mut init)?;
            Ok(Encoder {
                mae,
                normalize: None,
                identity,
            })
        }
    }
}

/// A digest of a file's bytes (its SHA-256 and length), read as a stream: it keys caches.
fn file_digest(path: &Path) -> Result<String, Error> {
    let (bytes, sha256) = crate::run::sha256(path).map_err(Error::io(path))?;
    Ok(format!("{sha256}-{bytes}"))
}

/// What a classifier puts on an MAE's encoder.
#[derive(Clone, Copy, Debug)]
pub struct Head {
    /// Output classes.
    pub classes: usize,
    /// The cls token (the MAE's `norm`) or the mean of the patch tokens (a new `fc_norm`).
    pub pool: Pool,
    /// Drop path of the last block, rising linearly from 0 at the first.
    pub drop_path: f32,
    /// The input side, when not the MAE's.
    pub image_size: Option<usize>,
}

/// The classifier built from an MAE's encoder: patch embedding, cls token and blocks are
/// the MAE's; the final norm is the MAE's `norm` for cls pooling and a new `fc_norm` for
/// the global pool (as the reference, which drops `norm` then); the head is new (trunc
/// normal, std 2e-5). At an image size other than the MAE's, the position table is the
/// MAE's interpolated to the new grid, as the reference's `interpolate_pos_embed`.
///
/// # Errors
/// [`Error::Setup`] for an image size that is not a positive multiple of the patch size;
/// engine errors.
pub fn classifier(
    mae: MaskedAutoencoder,
    head: Head,
    init: &mut Init,
) -> Result<VisionTransformer, Error> {
    let Head {
        classes,
        pool,
        drop_path,
        image_size,
    } = head;
    let c = &mae.config;
    if let Some(size) = image_size.filter(|s| *s == 0 || !s.is_multiple_of(c.patch_size)) {
        return Err(Error::Setup(format!(
            "--image-size {size}: not a multiple of the model's patch size {}",
            c.patch_size
        )));
    }
    let config = VitConfig {
        image_size: image_size.unwrap_or(c.image_size),
        pos_grid: c.image_size / c.patch_size,
        patch_size: c.patch_size,
        channels: c.channels,
        dim: c.dim,
        depth: c.depth,
        heads: c.heads,
        mlp_ratio: c.mlp_ratio,
        qkv_bias: c.qkv_bias,
        eps: c.eps,
        classes,
        global_pool: pool == Pool::Avg,
        drop_path,
    };
    let mut vit = VisionTransformer::new(config, init)?;
    let rates: Vec<f32> = vit.blocks.iter().map(|b| b.drop_path).collect();
    vit.patch_embed = mae.patch_embed;
    vit.cls_token = mae.cls_token;
    vit.blocks = mae.blocks;
    for (block, rate) in vit.blocks.iter_mut().zip(rates) {
        block.drop_path = rate;
    }
    if pool == Pool::Cls {
        vit.norm = mae.norm;
    }
    Ok(vit)
}

/// Both pooled features `(cls, avg)`, each `(B, D)`, of tokens `(B, 1 + L, D)` from
/// [`VisionTransformer::forward_tokens`] of a cls-pooled classifier: the cls token through
/// the encoder's norm, and the mean of the patch tokens through a fresh (identity-affine)
/// LayerNorm, which is what a frozen global-pool model computes.
///
/// # Errors
/// Engine errors only.
pub fn both_features(vit: &VisionTransformer, tokens: &Tensor) -> engine::Result<(Tensor, Tensor)> {
    let cls = vit.pool(tokens)?;
    let l = tokens.shape()[1] - 1;
    let fc_norm = LayerNorm {
        weight: Tensor::ones(tokens.device(), &[vit.config.dim])?,
        bias: Tensor::zeros(tokens.device(), &[vit.config.dim])?,
        eps: vit.config.eps,
    };
    let avg = fc_norm.forward(&tokens.narrow(1, 1, l)?.mean(1, false)?)?;
    Ok((cls, avg))
}

/// Correct predictions among `logits (B, classes)` for `labels`, on the device.
///
/// # Errors
/// Engine errors only.
pub fn correct(logits: &Tensor, labels: &[u32]) -> engine::Result<Tensor> {
    let y: Vec<f32> = labels.iter().map(|&l| l as f32).collect();
    let y = Tensor::from_slice(logits.device(), &y, &[labels.len()])?;
    logits
        .argmax(1, false)?
        .to_dtype(DType::F32)?
        .eq(&y)?
        .to_dtype(DType::F32)?
        .sum_all()
}

/// How a model sees images in evaluation: each whole, resized to its input, normalised,
/// in batches of 256 decoded by `workers` threads.
pub struct EvalView<'a> {
    /// The model's device.
    pub device: &'a Device,
    /// The model's input side and channels.
    pub shape: (usize, usize),
    /// The model's normalisation.
    pub normalize: &'a Normalize,
    /// Decoding threads.
    pub workers: usize,
}

impl EvalView<'_> {
    /// Call `f` with every batch of `images` (indices) of `data` (the last may be
    /// shorter), uploaded as `(B, C, H, W)`, and their labels, with no graph recorded.
    ///
    /// # Errors
    /// Unreadable or unlabelled data, or `f`'s error.
    pub fn for_each_batch(
        &self,
        data: &Arc<Dataset>,
        images: Vec<usize>,
        mut f: impl FnMut(&Tensor, Vec<u32>) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let (size, channels) = self.shape;
        let augment = Arc::new(Augment::pretrain(size, self.normalize.clone()));
        let skipped = Arc::new(Skipped::default());
        let loader = Loader::new(Plan {
            data: data.clone(),
            augment,
            random: false,
            channels,
            order: images,
            batch: 256,
            workers: self.workers,
            seed: 0,
            epoch: 0,
            skipped,
        });
        no_grad(|| {
            for batch in loader {
                let batch = batch?;
                let shape = [batch.len, channels, size, size];
                let imgs = Tensor::from_slice(self.device, &batch.pixels, &shape)?;
                let labels = batch.labels.ok_or_else(|| {
                    Error::Data(DataError::Empty(format!("{}: no labels", data.description)))
                })?;
                f(&imgs, labels)?;
                crate::run::watchdog::beat();
            }
            Ok(())
        })
    }
}

/// Top-1 accuracy in percent of `vit` on every image of `data`, in eval mode on the
/// evaluation view; the processes of a data-parallel run each take every `size`-th image
/// and add up their counts.
///
/// # Errors
/// Unreadable data or engine failures.
pub fn evaluate(
    vit: &VisionTransformer,
    data: &Arc<Dataset>,
    normalize: &Normalize,
    workers: usize,
    dist: &Dist,
) -> Result<f64, Error> {
    let (device, c) = (vit.cls_token.device(), &vit.config);
    let mut total = Tensor::zeros(device, &[])?;
    let view = EvalView {
        device,
        shape: (c.image_size, c.channels),
        normalize,
        workers,
    };
    let mine = (dist.rank()..data.len()).step_by(dist.size()).collect();
    view.for_each_batch(data, mine, |imgs, labels| {
        let logits = vit.forward(imgs, &mut Ctx::eval())?;
        total = total.add(&correct(&logits, &labels)?)?;
        Ok(())
    })?;
    let mut correct = [total.item()? as f64];
    dist.sum(&mut correct);
    Ok(100.0 * correct[0] / data.len() as f64)
}

/// What an evaluation run ends with.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Top-1 accuracy on the held-out split, in percent.
    pub top1: f64,
    /// Epochs trained.
    pub epochs: usize,
    /// The result line, also in `result.json`.
    pub line: String,
}

/// The result line `{"task","init","top1","epochs"}`, written to `output/result.json`.
///
/// # Errors
/// [`Error::Io`] when the file cannot be written.
pub fn report(
    output: &Path,
    task: &str,
    start: Start,
    top1: f64,
    epochs: usize,
) -> Result<Outcome, Error> {
    let line = json!({
        "task": task,
        "init": start.name(),
        "top1": (top1 * 100.0).round() / 100.0,
        "epochs": epochs,
    })
    .to_string();
    let path: PathBuf = output.join("result.json");
    nn::files::write_atomically(&path, format!("{line}\n").as_bytes()).map_err(Error::io(&path))?;
    Ok(Outcome { top1, epochs, line })
}
