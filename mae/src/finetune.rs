//! End-to-end fine-tuning, as the reference's `main_finetune.py`: a ViT classifier built
//! from the encoder (global average pool through `fc_norm`, a new head), AdamW with
//! layer-wise learning-rate decay, drop path, label smoothing, a per-iteration warmup and
//! cosine schedule, top-1 on the held-out split after every epoch, and checkpoints. The
//! loop is [`crate::run::Trainer`]'s; the classifier is its [`Learner`], [`FineTuning`].
//!
//! Augmentation is the pretraining crop and flip; the reference's RandAugment, random
//! erasing, mixup and cutmix are not implemented.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use engine::{AdamW, ParamGroup, Tensor};
use nn::{
    load_safetensors, named_parameters, save_safetensors, Init, Module, VisionTransformer,
    VitConfig,
};
use serde::{Deserialize, Serialize};

use crate::classify::{
    classifier, encoder, evaluate, open_labelled, report, Head, Outcome, Pool, Start,
};
use crate::config::config_from;
use crate::data::{streams, Augment, Dataset, Normalize, Rng, FASHION_MNIST};
use crate::dist::Dist;
use crate::hf::{read_preprocessor, save_preprocessor};
use crate::run::{
    self, EpochEnd, Given, Invocation, Launch, Learner, Output, Precision, Resumed, Schedule, Step,
    Trainer, TrainingData,
};
use crate::{Error, MaeConfig};

/// `mae finetune`'s options.
pub type Args = run::Args<Settings>;

/// Everything that defines a fine-tuning run, in one place: the command-line options (their
/// defaults are the small presets' recipe, scaled to larger models by
/// [`Settings::scaled`]), and the `settings` saved in each checkpoint, which `--resume`
/// takes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct Settings {
    /// With --init mae: a pretrained checkpoint directory (ours, or a Hugging Face ViTMAE
    /// one). With --init random: a preset, config.json or checkpoint whose config is used.
    #[arg(long, required_unless_present = "resume")]
    pub model: Option<String>,
    /// Encoder weights: pretrained, or a random initialisation (the baseline).
    #[arg(long, value_enum, default_value_t = Start::Mae)]
    pub init: Start,
    /// Labelled data with a held-out split (as for linprobe).
    #[arg(long, default_value = FASHION_MNIST)]
    pub data: PathBuf,
    /// Image side, a multiple of the patch size [default: the pretraining's]; at another
    /// side the position table is the pretraining's, interpolated bicubically to the new
    /// patch grid as the reference's interpolate_pos_embed (448 from 224, say).
    #[arg(long)]
    #[serde(default)]
    pub image_size: Option<usize>,
    /// Use only the first N training images [default: all].
    #[arg(long)]
    pub limit: Option<usize>,
    /// Passes over the data [ViT-B/L/H: 100].
    #[arg(long, default_value_t = 2)]
    pub epochs: usize,
    /// Images per iteration and process.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Processes the run started with: an iteration's global batch is `batch_size *
    /// ranks` images.
    #[arg(skip = 1usize)]
    #[serde(default = "one")]
    pub ranks: usize,
    /// Iterations per optimizer step [ViT-B/L/H: 16, for 1024].
    #[arg(long, default_value_t = 1)]
    pub accum_iter: usize,
    /// Base learning rate; lr = blr * effective batch / 256 [ViT-B: 5e-4; ViT-L/H: 1e-3].
    #[arg(long, value_parser = run::finite, default_value_t = 4e-3)]
    pub blr: f64,
    /// Layer-wise lr decay: layer `i` of `depth + 1` gets `lr * layer_decay^(depth + 1 -
    /// i)` [ViT-B: 0.65].
    #[arg(long, value_parser = run::finite, default_value_t = 0.75)]
    pub layer_decay: f64,
    /// AdamW weight decay on weight matrices.
    #[arg(long, value_parser = run::finite, default_value_t = 0.05)]
    pub weight_decay: f64,
    /// Drop-path rate of the last block [ViT-L: 0.2; ViT-H: 0.3].
    #[arg(long, value_parser = run::finite_f32, default_value_t = 0.1)]
    pub drop_path: f32,
    /// Label smoothing of the cross-entropy.
    #[arg(long, value_parser = run::finite_f32, default_value_t = 0.1)]
    pub smoothing: f32,
    /// Linear warmup in epochs (fractions allowed) [ViT-B/L/H: 5].
    #[arg(long, value_parser = run::finite, default_value_t = 0.2)]
    pub warmup_epochs: f64,
    /// Learning rate at the end of the cosine.
    #[arg(long, value_parser = run::finite, default_value_t = 1e-6)]
    pub min_lr: f64,
    /// Seed of a random encoder, the head, order, augmentation and drop path.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Checkpoint every N epochs, and after the last [ViT-B/L/H: 10].
    #[arg(long, default_value_t = 1)]
    pub save_every: usize,
    /// Arithmetic of the products: fp32, or f16-mixed (as `pretrain --precision`).
    #[arg(long, value_enum, default_value_t = Precision::Fp32)]
    #[serde(default)]
    pub precision: Precision,
}

fn one() -> usize {
    1
}

impl Settings {
    /// These settings scaled to a model: the small presets keep the defaults (2 epochs,
    /// batch 64, blr 4e-3, layer decay 0.75, drop path 0.1, warmup 0.2 epochs); larger
    /// models get the reference recipe (ViT-B: 100 epochs, 5 warmup, effective batch 1024,
    /// blr 5e-4, layer decay 0.65, drop path 0.1; ViT-L/H: layer decay 0.75, drop path
    /// 0.2/0.3, blr 1e-3).
    pub fn scaled(self, config: &MaeConfig) -> Settings {
        if config.image_size <= 64 {
            return self;
        }
        let (layer_decay, drop_path, blr) = match config.dim {
            d if d <= 768 => (0.65, 0.1, 5e-4),
            d if d <= 1024 => (0.75, 0.2, 1e-3),
            _ => (0.75, 0.3, 1e-3),
        };
        Settings {
            epochs: 100,
            accum_iter: 16,
            blr,
            layer_decay,
            drop_path,
            warmup_epochs: 5.0,
            save_every: 10,
            ..self
        }
    }

    fn check(&self) -> Result<(), Error> {
        Schedule::of(self).check()?;
        let problems = [
            (
                !(self.layer_decay > 0.0 && self.layer_decay <= 1.0),
                "--layer-decay must be in (0, 1]",
            ),
            (
                !(0.0..1.0).contains(&self.drop_path),
                "--drop-path must be in [0, 1)",
            ),
            (
                !(0.0..1.0).contains(&self.smoothing),
                "--smoothing must be in [0, 1)",
            ),
            (
                !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()),
                "--weight-decay must be a number, not negative",
            ),
        ];
        match problems.iter().find(|b| b.0) {
            Some((_, why)) => Err(Error::Setup(why.to_string())),
            None => Ok(()),
        }
    }
}

/// AdamW parameter groups with layer-wise lr decay, as the reference's `param_groups_lrd`:
/// the patch embedding and cls token are layer 0, block `i` is layer `i + 1`, the rest
/// (final norm, head) layer `depth + 1`; layer `l` gets the lr scale
/// `layer_decay^(depth + 1 - l)`. Matrices decay by `weight_decay`, vectors and the cls
/// token do not.
pub fn param_groups_lrd(
    vit: &VisionTransformer,
    weight_decay: f32,
    layer_decay: f64,
) -> Vec<ParamGroup> {
    let top = vit.config.depth + 1;
    let mut groups: Vec<(usize, bool, Vec<Tensor>)> = Vec::new();
    for (name, t) in named_parameters(vit) {
        let layer = if name.starts_with("patch_embed") || name == "cls_token" {
            0
        } else if let Some(rest) = name.strip_prefix("blocks.") {
            1 + rest
                .split('.')
                .next()
                .and_then(|i| i.parse::<usize>().ok())
                .expect("blocks.{i}.")
        } else {
            top
        };
        let decay = t.rank() > 1 && name != "cls_token";
        match groups.iter_mut().find(|g| g.0 == layer && g.1 == decay) {
            Some(g) => g.2.push(t),
            None => groups.push((layer, decay, vec![t])),
        }
    }
    groups
        .into_iter()
        .map(|(layer, decay, params)| {
            ParamGroup::new(params, 0.0, if decay { weight_decay } else { 0.0 })
                .with_lr_scale(layer_decay.powi((top - layer) as i32))
        })
        .collect()
}

/// `mae finetune`: fine-tune, report top-1 after every epoch, and print the result line.
///
/// # Errors
/// See [`finetune`].
pub fn command(args: &Args, given: &Given, dist: &Dist) -> Result<(), Error> {
    let recipe = |p: &Settings| {
        Ok(p.clone()
            .scaled(&config_from(p.model.as_deref().unwrap_or_default())?))
    };
    let Launch {
        settings,
        resumed,
        output,
    } = args.start("finetune", given, recipe, dist)?;
    let Some(output) = output else {
        return dry_run(&settings, resumed, &args.invocation(), dist);
    };
    let outcome = finetune(settings, resumed, &args.invocation(), &output, dist)?;
    if dist.is_main() {
        println!("{}", outcome.line);
    }
    Ok(())
}

/// Fine-tune with settings `s`, continuing from `resumed` when given, and report top-1 on
/// the held-out split after every epoch; returns the last. Every random stream is derived
/// from the seed, epoch, step and image index, so a resumed run continues exactly.
///
/// # Errors
/// [`Error::NonFinite`] when the loss diverges (the checkpoints written are kept); bad
/// settings, missing or unlabelled data, an unreadable model or checkpoint, I/O and engine
/// failures.
pub fn finetune(
    s: Settings,
    resumed: Option<Resumed<Settings>>,
    run: &Invocation,
    output: &Output,
    dist: &Dist,
) -> Result<Outcome, Error> {
    s.check()?;
    let model = s.model.as_deref().unwrap_or_default();
    let device = run::device(dist)?;
    let data = open_labelled(&s.data)?;
    let (vit, mut opt, normalize) = classifier_and_optimizer(&s, &resumed, data.classes, &device)?;
    let normalize = normalize.unwrap_or_else(|| {
        data.train
            .normalize(vit.config.channels, Default::default(), s.seed)
    });
    let c = vit.config.clone();
    let augment = Augment::pretrain(c.image_size, normalize.clone());
    let train = TrainingData {
        data: data.train.clone(),
        augment,
        channels: c.channels,
    };
    let mut trainer = Trainer::new(device, dist, run, output, &s, train, resumed)?;
    if dist.is_main() {
        eprintln!(
            "fine-tuning a {} encoder ({model}) on {} images of {}, {} classes, lr {:.2e}, layer decay {}, \
             {} epochs of {} iterations, batch {} x {} processes, on {}",
            s.init.name(),
            trainer.batches.images,
            data.train.description,
            data.classes,
            Schedule::of(&s).lr(),
            s.layer_decay,
            s.epochs,
            trainer.batches.iters,
            trainer.batches.per_rank,
            dist.size(),
            trainer.device.info().name
        );
    }
    let mut learner = FineTuning {
        vit,
        smoothing: s.smoothing,
        test: data.test,
        normalize,
        top1: 0.0,
    };
    trainer.fit(&mut learner, &mut opt)?;
    let top1 = learner.top1;
    if !dist.is_main() {
        return Ok(Outcome {
            top1,
            epochs: s.epochs,
            line: String::new(),
        });
    }
    report(&output.dir, "finetune", s.init, top1, s.epochs)
}

/// The classifier of settings `s` for `classes` classes, its AdamW with layer-wise lr
/// decay, the groups' lr scales, and the normalisation of its images when known: a new
/// head on the encoder `s.model` names, or, resuming, the checkpoint's own classifier,
/// normalisation and optimizer state (the pretrained directory is not needed then).
fn classifier_and_optimizer(
    s: &Settings,
    resumed: &Option<Resumed<Settings>>,
    classes: usize,
    device: &engine::Device,
) -> Result<(VisionTransformer, AdamW, Option<Normalize>), Error> {
    let (vit, normalize) = match resumed {
        Some(r) => resumed_classifier(&r.dir, classes, device)?,
        None => {
            let model = s.model.as_deref().unwrap_or_default();
            let enc = encoder(model, s.init, s.seed, device)?;
            let mut init = Init::new(device, Rng::new(&[s.seed, streams::HEAD]).next_u64());
            let vit = classifier(
                enc.mae,
                Head {
                    classes,
                    pool: Pool::Avg,
                    drop_path: s.drop_path,
                    image_size: s.image_size,
                },
                &mut init,
            )?;
            (vit, enc.normalize)
        }
    };
    let groups = param_groups_lrd(&vit, s.weight_decay as f32, s.layer_decay);
    let mut opt = AdamW::new(groups, (0.9, 0.999), 1e-8)?;
    if let Some(r) = resumed {
        r.load_optimizer(&mut opt)?;
    }
    Ok((vit, opt, normalize))
}

/// The classifier a fine-tuning checkpoint in `dir` holds (`config.json`,
/// `model.safetensors`, `preprocessor_config.json`), for data of `classes` classes.
fn resumed_classifier(
    dir: &Path,
    classes: usize,
    device: &engine::Device,
) -> Result<(VisionTransformer, Option<Normalize>), Error> {
    let path = dir.join("config.json");
    let config = read_classifier_config(&path)?;
    if config.classes != classes {
        return Err(Error::Setup(format!(
            "{}: a classifier of {} classes, and the data has {classes}",
            path.display(),
            config.classes
        )));
    }
    let channels = config.channels;
    let mut vit = VisionTransformer::new(config, &mut Init::new(device, 0))?;
    load_safetensors(&dir.join("model.safetensors"), &mut vit)?;
    Ok((vit, read_preprocessor(dir, channels)?))
}

/// The `config.json` [`FineTuning::save`] writes, checked as a model's config is.
fn read_classifier_config(path: &Path) -> Result<VitConfig, Error> {
    let bad = |why: String| Error::Checkpoint(nn::CheckpointError::Config(path.into(), why));
    let text =
        nn::files::read_text_bounded(path, nn::files::JSON_LIMIT).map_err(Error::io(path))?;
    let c: ClassifierConfig = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let vit = c.vit();
    // An MAE's bounds hold for its encoder (the decoder is a small preset's).
    let encoder = MaeConfig {
        image_size: vit.image_size,
        patch_size: vit.patch_size,
        channels: vit.channels,
        dim: vit.dim,
        depth: vit.depth,
        heads: vit.heads,
        mlp_ratio: vit.mlp_ratio,
        eps: vit.eps,
        qkv_bias: vit.qkv_bias,
        ..MaeConfig::mae_tiny_28_patch7()
    };
    encoder.validate().map_err(bad)?;
    if !(1..=1 << 20).contains(&vit.classes) || !(0.0..1.0).contains(&vit.drop_path) {
        return Err(bad(format!(
            "num_classes {} must be in 1..=2^20 and drop_path {} in [0, 1)",
            vit.classes, vit.drop_path
        )));
    }
    Ok(vit)
}

/// A fine-tuned classifier's `config.json`: the encoder's fields under transformers' names,
/// and the head's.
#[derive(Serialize, Deserialize)]
struct ClassifierConfig {
    image_size: usize,
    patch_size: usize,
    num_channels: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    mlp_ratio: f32,
    qkv_bias: bool,
    layer_norm_eps: f32,
    num_classes: usize,
    global_pool: bool,
    drop_path: f32,
    /// The pretraining's patch grid side, when the classifier's differs (its position
    /// table is that grid's, interpolated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pos_embed_grid: Option<usize>,
}

impl ClassifierConfig {
    fn vit(&self) -> VitConfig {
        VitConfig {
            image_size: self.image_size,
            patch_size: self.patch_size,
            channels: self.num_channels,
            dim: self.hidden_size,
            depth: self.num_hidden_layers,
            heads: self.num_attention_heads,
            mlp_ratio: self.mlp_ratio,
            qkv_bias: self.qkv_bias,
            eps: self.layer_norm_eps,
            classes: self.num_classes,
            global_pool: self.global_pool,
            drop_path: self.drop_path,
            pos_grid: self
                .pos_embed_grid
                .unwrap_or(self.image_size / self.patch_size.max(1)),
        }
    }

    fn of(c: &VitConfig) -> ClassifierConfig {
        ClassifierConfig {
            image_size: c.image_size,
            patch_size: c.patch_size,
            num_channels: c.channels,
            hidden_size: c.dim,
            num_hidden_layers: c.depth,
            num_attention_heads: c.heads,
            mlp_ratio: c.mlp_ratio,
            qkv_bias: c.qkv_bias,
            layer_norm_eps: c.eps,
            num_classes: c.classes,
            global_pool: c.global_pool,
            drop_path: c.drop_path,
            pos_embed_grid: (c.pos_grid != c.image_size / c.patch_size).then_some(c.pos_grid),
        }
    }
}

/// `--dry-run`: one step of the run's classifier at its batch, precision and checkpointing,
/// on random images and labels, measured and printed (see [`run::dry_run`]). Reads only
/// the data's class count.
fn dry_run(
    s: &Settings,
    resumed: Option<Resumed<Settings>>,
    run: &Invocation,
    dist: &Dist,
) -> Result<(), Error> {
    s.check()?;
    let device = run::device(dist)?;
    let classes = open_labelled(&s.data)?.classes;
    let (vit, mut opt, _) = classifier_and_optimizer(s, &resumed, classes, &device)?;
    let c = &vit.config;
    let shape = [s.batch_size, c.channels, c.image_size, c.image_size];
    let what = format!(
        "a {}x{} ViT ({} blocks of {}) classifying {classes} classes at batch {}, {}",
        c.image_size,
        c.image_size,
        c.depth,
        c.dim,
        s.batch_size,
        run::dry_run::options(s.precision, run.checkpoint_activations)
    );
    let measured = run::dry_run::measure(&device, &mut opt, s.precision, || {
        let imgs = Tensor::randn(&device, &shape, s.seed)?;
        let labels: Vec<u32> = (0..s.batch_size as u32)
            .map(|i| i % classes as u32)
            .collect();
        let y = Tensor::from_slice_u32(&device, &labels, &[labels.len()])?;
        let ctx = &mut nn::Ctx::train(s.seed).checkpointing(run.checkpoint_activations);
        Ok(vit
            .forward(&imgs, ctx)?
            .cross_entropy(&y, s.smoothing)?
            .mean_all()?)
    });
    run::dry_run::report(&device, &what, measured)
}

/// The classifier as the training loop's [`Learner`]: label-smoothed cross-entropy, and
/// top-1 on the held-out split after each epoch.
pub struct FineTuning {
    vit: VisionTransformer,
    smoothing: f32,
    test: Arc<Dataset>,
    normalize: Normalize,
    /// The last top-1 measured.
    top1: f64,
}

impl Learner for FineTuning {
    fn loss(&mut self, step: &Step) -> Result<Tensor, Error> {
        let labels = step
            .labels
            .as_deref()
            .ok_or_else(|| Error::Setup("training data without labels".into()))?;
        let y = Tensor::from_slice_u32(step.imgs.device(), labels, &[labels.len()])?;
        let logits = self.vit.forward(&step.imgs, &mut step.ctx())?;
        Ok(logits.cross_entropy(&y, self.smoothing)?.mean_all()?)
    }

    fn module(&self) -> &dyn Module {
        &self.vit
    }

    /// `model.safetensors` (timm's names), `config.json` (the classifier's shape) and
    /// `preprocessor_config.json` (its images' normalisation): all a resumed run needs.
    fn save(&self, dir: &Path) -> Result<(), Error> {
        save_safetensors(
            &dir.join("model.safetensors"),
            &named_parameters(&self.vit),
            None,
        )?;
        let c = &self.vit.config;
        save_preprocessor(dir, c.image_size, &self.normalize)?;
        run::write_json(&dir.join("config.json"), &ClassifierConfig::of(c))
    }

    fn evaluate(&mut self, end: EpochEnd) -> Result<Option<f64>, Error> {
        let (normalize, workers) = (&self.normalize, end.workers);
        self.top1 = evaluate(&self.vit, &self.test, normalize, workers, end.dist)?;
        Ok(Some(self.top1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nn::VitConfig;

    #[test]
    fn layer_wise_decay_follows_the_reference() {
        let device = engine::Device::new().unwrap();
        let config = VitConfig {
            image_size: 8,
            patch_size: 4,
            channels: 1,
            dim: 8,
            depth: 2,
            heads: 2,
            mlp_ratio: 2.0,
            qkv_bias: true,
            eps: 1e-6,
            classes: 3,
            global_pool: true,
            drop_path: 0.0,
            pos_grid: 2,
        };
        let vit = VisionTransformer::new(config, &mut Init::new(&device, 0)).unwrap();
        let groups = param_groups_lrd(&vit, 0.05, 0.5);
        // Layer of every parameter by id, from the groups.
        let mut seen = std::collections::HashMap::new();
        for g in &groups {
            for p in &g.params {
                seen.insert(p.id(), (g.lr_scale, g.weight_decay));
            }
        }
        let of = |name: &str| {
            let (_, t) = named_parameters(&vit)
                .into_iter()
                .find(|(n, _)| n == name)
                .unwrap();
            seen[&t.id()]
        };
        // depth + 1 = 3 layers above the embedding: scales 0.5^3, 0.5^2, 0.5, 1.
        assert_eq!(of("patch_embed.proj.weight"), (0.125, 0.05));
        assert_eq!(of("patch_embed.proj.bias"), (0.125, 0.0));
        assert_eq!(of("cls_token"), (0.125, 0.0));
        assert_eq!(of("blocks.0.attn.qkv.weight"), (0.25, 0.05));
        assert_eq!(of("blocks.1.norm1.weight"), (0.5, 0.0));
        assert_eq!(of("fc_norm.bias"), (1.0, 0.0));
        assert_eq!(of("head.weight"), (1.0, 0.05));
        assert_eq!(seen.len(), named_parameters(&vit).len());
    }
}
