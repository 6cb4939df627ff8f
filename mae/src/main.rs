//! The `mae` command-line program.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use std::io::IsTerminal;

use clap::{Parser, Subcommand};
use engine::{Device, Tensor};
use mae::classify::{Pool, Start};
use mae::data::{Dataset, Split};
use mae::dist::Dist;
use mae::hf::{load_pretrained, to_published};
use mae::pretrain::Settings;
use mae::run::Invocation;
use mae::{finetune, linprobe};
use mae::{Error, MaeConfig};
use nn::{read_safetensors, Ctx};
use safetensors::tensor::{Dtype, TensorView};

#[derive(Parser)]
#[command(
    name = "mae",
    version,
    about = "Masked Autoencoder pretraining of Vision Transformers on any GPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Pretrain an MAE on unlabelled images (the main job). With no options: the small
    /// 28x28 patch-7 preset on 19,200 Fashion-MNIST images, about 5 minutes without a GPU.
    /// Options left out follow the reference recipe scaled to the model; see each option.
    #[command(args_override_self = true)]
    Pretrain(Box<PretrainArgs>),
    /// Draw reconstructions: per image a row of original | masked | reconstruction |
    /// reconstruction with the visible patches pasted back. For norm_pix_loss models each
    /// predicted patch is de-normalised with the mean and variance of the true patch.
    Visualize {
        /// Model directory: one of our checkpoints or a Hugging Face ViTMAE directory.
        #[arg(long)]
        model: PathBuf,
        /// Image files (PNG, JPEG), resized to the model's input.
        #[arg(long, num_args = 1..)]
        image: Vec<PathBuf>,
        /// Or take images from a dataset (its test split when it has one).
        #[arg(long, conflicts_with = "image")]
        data: Option<PathBuf>,
        /// How many images to take from --data.
        #[arg(long, default_value_t = 8)]
        count: usize,
        /// PNG to write.
        #[arg(long)]
        out: PathBuf,
        /// Fraction of patches masked (default: the model's).
        #[arg(long)]
        mask_ratio: Option<f64>,
        /// Seed of the mask.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Linear probe: freeze an encoder, train a linear head (BatchNorm without affine, then
    /// Linear) on its cached features with SGD, and report top-1 on the held-out split.
    /// Prints and writes (result.json) `{"task","init","top1","epochs"}`.
    Linprobe(Box<LinprobeArgs>),
    /// Fine-tune a ViT classifier initialised from an encoder (global pool with fc_norm, new
    /// head; AdamW with layer-wise lr decay, drop path, label smoothing, warmup + cosine),
    /// reporting top-1 on the held-out split after every epoch. Prints and writes
    /// (result.json) `{"task","init","top1","epochs"}`. Options left out follow the recipe
    /// scaled to the model.
    Finetune(Box<FinetuneArgs>),
    /// Run a model on given pixels (and noise) and write loss, logits, mask, ids_restore and
    /// optionally every parameter gradient: the parity check against transformers.
    Forward {
        /// Model directory as transformers' save_pretrained writes it (config.json,
        /// model.safetensors).
        #[arg(long)]
        model: PathBuf,
        /// safetensors file with `pixel_values` f32 (B, C, H, W) and optionally `noise` f32
        /// (B, L).
        #[arg(long)]
        input: PathBuf,
        /// safetensors file to write: `loss` [1], `logits` (B, L, p*p*C), `mask` (B, L),
        /// `ids_restore` (B, L) as i64, and with --grads `grad.<published name>`.
        #[arg(long)]
        output: PathBuf,
        /// Also write the gradient of the loss for every trainable parameter.
        #[arg(long)]
        grads: bool,
        /// Seed of the masking noise when the input has no `noise`.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

#[derive(clap::Args)]
struct PretrainArgs {
    /// A preset (mae_tiny_28_patch7, mae_tiny_28_patch4, mae_tiny_32_patch4,
    /// mae_vit_base_patch16, ...), or a
    /// Hugging Face model directory or config.json to start from.
    #[arg(long, default_value = "mae_tiny_28_patch7")]
    model: String,
    /// An image folder (PNG/JPEG, recursive), an IDX image file, or a directory of IDX
    /// files such as Fashion-MNIST's.
    #[arg(long, default_value = mae::data::FASHION_MNIST)]
    data: PathBuf,
    /// Output directory: checkpoints, metrics.jsonl, loss.png, reconstruction.png.
    #[arg(long, default_value = "out/pretrain")]
    output: PathBuf,
    /// Passes over the data [small presets: 1; ViT-B/L/H: 800].
    #[arg(long)]
    epochs: Option<usize>,
    /// Use only the first N training images [small presets: 19200; others: all].
    #[arg(long)]
    limit: Option<usize>,
    /// Images per iteration [64].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Iterations per optimizer step; effective batch = batch_size * accum_iter [small: 1;
    /// ViT-B/L/H: 64, for 4096].
    #[arg(long)]
    accum_iter: Option<usize>,
    /// Base learning rate; lr = blr * effective batch / 256 [small: 8e-3; ViT-B/L/H: 1.5e-4].
    #[arg(long)]
    blr: Option<f64>,
    /// Linear warmup in epochs (fractions allowed) [small: 0.05; ViT-B/L/H: 40].
    #[arg(long)]
    warmup_epochs: Option<f64>,
    /// Learning rate at the end of the cosine [0].
    #[arg(long)]
    min_lr: Option<f64>,
    /// AdamW weight decay on weight matrices [0.05].
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Fraction of patches masked [0.75].
    #[arg(long)]
    mask_ratio: Option<f64>,
    /// Predict per-patch normalised pixels [on for ViT-B/L/H as in the paper, off for the
    /// small presets]; `--norm-pix-loss false` turns it off.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    norm_pix_loss: Option<bool>,
    /// Seed of initialisation, data order, augmentation and masks [0].
    #[arg(long)]
    seed: Option<u64>,
    /// Checkpoint every N epochs, and after the last [small: 1; ViT-B/L/H: 20].
    #[arg(long)]
    save_every: Option<usize>,
    /// Weighted k-NN top-1 of the encoder on held-out images every N epochs (and before
    /// the first), when the data has labels and a held-out split; 0 turns it off [small: 1;
    /// ViT-B/L/H: 0].
    #[arg(long)]
    knn_every: Option<usize>,
    /// Continue a run from a checkpoint directory (or the newest checkpoint in an output
    /// directory). The run's saved settings are used; only --epochs may extend it.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Threads that decode and augment images.
    #[arg(long, default_value_t = 2)]
    workers: usize,
}

#[derive(clap::Args)]
struct LinprobeArgs {
    /// With --init mae: a pretrained checkpoint directory (ours, or a Hugging Face ViTMAE
    /// one). With --init random: a preset, config.json or checkpoint whose config is used.
    #[arg(long)]
    model: String,
    /// Encoder weights: pretrained, or a random initialisation (the baseline).
    #[arg(long, value_enum, default_value_t = Start::Mae)]
    init: Start,
    /// Feature: the cls token after the encoder's norm (the reference), or the mean of the
    /// patch tokens through a LayerNorm.
    #[arg(long, value_enum, default_value_t = Pool::Cls)]
    pool: Pool,
    /// Labelled data with a held-out split: IDX images and labels (train-*, t10k-*), or an
    /// image folder with train/ and val/ (or test/), one sub-folder per class.
    #[arg(long, default_value = mae::data::FASHION_MNIST)]
    data: PathBuf,
    /// Output directory: metrics.jsonl, head.safetensors, result.json.
    #[arg(long, default_value = "out/linprobe")]
    output: PathBuf,
    /// Feature cache, shared by runs (keyed by weights, data and normalisation).
    #[arg(long, default_value = "out/features")]
    cache: PathBuf,
    /// Passes over the training features.
    #[arg(long, default_value_t = 90)]
    epochs: usize,
    /// Use only the first N training images [all].
    #[arg(long)]
    limit: Option<usize>,
    /// Features per iteration.
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// Base learning rate; lr = blr * batch_size / 256.
    #[arg(long, default_value_t = 0.1)]
    blr: f64,
    /// Linear warmup in epochs.
    #[arg(long, default_value_t = 10.0)]
    warmup_epochs: f64,
    /// Seed of a random encoder, the head and the order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Threads that decode images.
    #[arg(long, default_value_t = 2)]
    workers: usize,
}

#[derive(clap::Args)]
struct FinetuneArgs {
    /// With --init mae: a pretrained checkpoint directory (ours, or a Hugging Face ViTMAE
    /// one). With --init random: a preset, config.json or checkpoint whose config is used.
    #[arg(long, required_unless_present = "resume")]
    model: Option<String>,
    /// Encoder weights: pretrained, or a random initialisation (the baseline).
    #[arg(long, value_enum, default_value_t = Start::Mae)]
    init: Start,
    /// Labelled data with a held-out split (as for linprobe).
    #[arg(long, default_value = mae::data::FASHION_MNIST)]
    data: PathBuf,
    /// Output directory: checkpoint-N/, metrics.jsonl, result.json.
    #[arg(long, default_value = "out/finetune")]
    output: PathBuf,
    /// Passes over the data [small presets: 2; ViT-B/L/H: 100].
    #[arg(long)]
    epochs: Option<usize>,
    /// Use only the first N training images [all].
    #[arg(long)]
    limit: Option<usize>,
    /// Images per iteration [64].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Iterations per optimizer step [small: 1; ViT-B/L/H: 16, for 1024].
    #[arg(long)]
    accum_iter: Option<usize>,
    /// Base learning rate; lr = blr * effective batch / 256 [small: 4e-3; ViT-B: 5e-4;
    /// ViT-L/H: 1e-3].
    #[arg(long)]
    blr: Option<f64>,
    /// Layer-wise lr decay [small and ViT-L/H: 0.75; ViT-B: 0.65].
    #[arg(long)]
    layer_decay: Option<f64>,
    /// AdamW weight decay on weight matrices [0.05].
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Drop-path rate of the last block [small and ViT-B: 0.1; L: 0.2; H: 0.3].
    #[arg(long)]
    drop_path: Option<f32>,
    /// Label smoothing [0.1].
    #[arg(long)]
    smoothing: Option<f32>,
    /// Linear warmup in epochs (fractions allowed) [small: 0.2; ViT-B/L/H: 5].
    #[arg(long)]
    warmup_epochs: Option<f64>,
    /// Learning rate at the end of the cosine [1e-6].
    #[arg(long)]
    min_lr: Option<f64>,
    /// Seed of a random encoder, the head, order, augmentation and drop path [0].
    #[arg(long)]
    seed: Option<u64>,
    /// Checkpoint every N epochs, and after the last [small: 1; ViT-B/L/H: 10].
    #[arg(long)]
    save_every: Option<usize>,
    /// Continue a fine-tune from a checkpoint directory (or the newest checkpoint in an
    /// output directory). The run's saved settings are used; only --epochs may extend it.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Threads that decode and augment images.
    #[arg(long, default_value_t = 2)]
    workers: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let dist = match Dist::init() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    let result = match cli.command {
        Command::Pretrain(args) => pretrain(*args, &dist),
        Command::Visualize {
            model,
            image,
            data,
            count,
            out,
            mask_ratio,
            seed,
        } => visualize(
            &model,
            &image,
            data.as_deref(),
            count,
            &out,
            mask_ratio,
            seed,
        )
        .map_err(Error::from),
        Command::Linprobe(a) => linprobe(*a),
        Command::Finetune(a) => finetune(*a, &dist),
        Command::Forward {
            model,
            input,
            output,
            grads,
            seed,
        } => forward(&model, &input, &output, grads, seed).map_err(Error::from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // Every process sees a diverging loss (it is reduced across them): one line.
        Err(e @ Error::NonFinite { .. }) => {
            if dist.is_main() {
                eprintln!("error: {e}");
            }
            ExitCode::from(e.exit_code())
        }
        // A failure of one process: stop them all rather than leave them waiting.
        Err(e) if dist.size() > 1 => dist.abort(&e),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn pretrain(a: PretrainArgs, dist: &Dist) -> Result<(), Error> {
    let config = match mae::pretrain::config_from(&a.model) {
        Ok(c) => c,
        Err(e) if a.resume.is_none() => return Err(e.into()),
        Err(_) => MaeConfig::mae_tiny_28_patch4(), // the checkpoint's settings are used
    };
    if a.resume.is_some() {
        let given = [
            ("--limit", a.limit.is_some()),
            ("--batch-size", a.batch_size.is_some()),
            ("--accum-iter", a.accum_iter.is_some()),
            ("--blr", a.blr.is_some()),
            ("--warmup-epochs", a.warmup_epochs.is_some()),
            ("--min-lr", a.min_lr.is_some()),
            ("--weight-decay", a.weight_decay.is_some()),
            ("--mask-ratio", a.mask_ratio.is_some()),
            ("--norm-pix-loss", a.norm_pix_loss.is_some()),
            ("--seed", a.seed.is_some()),
            ("--save-every", a.save_every.is_some()),
            ("--knn-every", a.knn_every.is_some()),
        ];
        let ignored: Vec<&str> = given.iter().filter(|g| g.1).map(|g| g.0).collect();
        if !ignored.is_empty() && dist.is_main() {
            eprintln!(
                "warning: --resume continues the run with its saved settings; ignoring {}",
                ignored.join(", ")
            );
        }
    }
    let mut s = Settings::recipe(&a.model, &config, a.data);
    s.ranks = dist.size();
    s.epochs = a.epochs.unwrap_or(s.epochs);
    s.limit = a.limit.or(s.limit);
    s.batch_size = a.batch_size.unwrap_or(s.batch_size);
    s.accum_iter = a.accum_iter.unwrap_or(s.accum_iter);
    s.blr = a.blr.unwrap_or(s.blr);
    s.warmup_epochs = a.warmup_epochs.unwrap_or(s.warmup_epochs);
    s.min_lr = a.min_lr.unwrap_or(s.min_lr);
    s.weight_decay = a.weight_decay.unwrap_or(s.weight_decay);
    s.mask_ratio = a.mask_ratio.unwrap_or(s.mask_ratio);
    s.norm_pix_loss = a.norm_pix_loss.unwrap_or(s.norm_pix_loss);
    s.seed = a.seed.unwrap_or(s.seed);
    s.save_every = a.save_every.unwrap_or(s.save_every);
    s.knn_every = a.knn_every.unwrap_or(s.knn_every);
    let run = Invocation {
        output: a.output.clone(),
        resume: a.resume,
        epochs: a.epochs,
        workers: a.workers,
        progress: std::io::stderr().is_terminal(),
    };
    let summary = mae::pretrain::pretrain(s, &run, dist)?;
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
        summary.epochs,
        summary.steps,
        summary.last_epoch_loss,
        summary.img_per_s,
        summary.checkpoint.display(),
        a.output.display()
    );
    Ok(())
}

fn linprobe(a: LinprobeArgs) -> Result<(), Error> {
    let mut s = linprobe::Settings::recipe(a.model, a.init, a.pool, a.data);
    s.epochs = a.epochs;
    s.limit = a.limit;
    s.batch_size = a.batch_size;
    s.blr = a.blr;
    s.warmup_epochs = a.warmup_epochs;
    s.seed = a.seed;
    let run = linprobe::Invocation {
        output: a.output,
        cache: a.cache,
        workers: a.workers,
        progress: std::io::stderr().is_terminal(),
    };
    let outcome = linprobe::linprobe(&s, &run)?;
    println!("{}", outcome.line);
    Ok(())
}

fn finetune(a: FinetuneArgs, dist: &Dist) -> Result<(), Error> {
    let run = Invocation {
        output: a.output.clone(),
        resume: a.resume.clone(),
        epochs: a.epochs,
        workers: a.workers,
        progress: std::io::stderr().is_terminal(),
    };
    let s = match (&a.model, &a.resume) {
        (Some(model), None) => Some(finetune::Settings {
            ranks: dist.size(),
            ..finetune_settings(model, &a)?
        }),
        _ => None, // resuming: the checkpoint's settings
    };
    if a.resume.is_some() && a.model.is_some() && dist.is_main() {
        eprintln!("warning: --resume continues the run with its saved settings; ignoring all but --epochs");
    }
    let outcome = finetune::finetune(s.as_ref(), &run, dist)?;
    if dist.is_main() {
        println!("{}", outcome.line);
    }
    Ok(())
}

/// The recipe for `model`, with the options given.
fn finetune_settings(model: &str, a: &FinetuneArgs) -> Result<finetune::Settings, String> {
    let config = mae::pretrain::config_from(model)?;
    let mut s = finetune::Settings::recipe(model.to_string(), a.init, &config, a.data.clone());
    s.epochs = a.epochs.unwrap_or(s.epochs);
    s.limit = a.limit.or(s.limit);
    s.batch_size = a.batch_size.unwrap_or(s.batch_size);
    s.accum_iter = a.accum_iter.unwrap_or(s.accum_iter);
    s.blr = a.blr.unwrap_or(s.blr);
    s.layer_decay = a.layer_decay.unwrap_or(s.layer_decay);
    s.weight_decay = a.weight_decay.unwrap_or(s.weight_decay);
    s.drop_path = a.drop_path.unwrap_or(s.drop_path);
    s.smoothing = a.smoothing.unwrap_or(s.smoothing);
    s.warmup_epochs = a.warmup_epochs.unwrap_or(s.warmup_epochs);
    s.min_lr = a.min_lr.unwrap_or(s.min_lr);
    s.seed = a.seed.unwrap_or(s.seed);
    s.save_every = a.save_every.unwrap_or(s.save_every);
    Ok(s)
}

fn visualize(
    model_dir: &Path,
    files: &[PathBuf],
    data: Option<&Path>,
    count: usize,
    out: &Path,
    mask_ratio: Option<f64>,
    seed: u64,
) -> Result<(), String> {
    let device = Device::new().map_err(|e| e.to_string())?;
    let model = load_pretrained(model_dir, &device).map_err(|e| e.to_string())?;
    let normalize = mae::hf::read_preprocessor(model_dir)?;
    let ch = model.config.channels;
    let images = match data {
        Some(path) => {
            let d = Dataset::open(path, Split::Test).map_err(|e| e.to_string())?;
            (0..d.len())
                .filter_map(|i| d.get(i, ch).ok())
                .take(count)
                .collect()
        }
        None if files.is_empty() => return Err("give --image FILE... or --data PATH".into()),
        None => files
            .iter()
            .map(|f| mae::data::decode(f, ch).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?,
    };
    let ratio = mask_ratio.unwrap_or(model.config.mask_ratio);
    let picture = mae::visualize::reconstruction_grid(&model, &images, &normalize, ratio, seed)?;
    picture
        .save(out)
        .map_err(|e| format!("{}: {e}", out.display()))?;
    eprintln!("wrote {} ({} images)", out.display(), images.len());
    Ok(())
}

fn forward(
    model_dir: &Path,
    input: &Path,
    output: &Path,
    grads: bool,
    seed: u64,
) -> Result<(), String> {
    let device = Device::new().map_err(|e| e.to_string())?;
    let model = load_pretrained(model_dir, &device).map_err(|e| e.to_string())?;
    let inputs = read_safetensors(input).map_err(|e| e.to_string())?;
    let c = &model.config;
    let (shape, pixels) = inputs
        .get("pixel_values")
        .ok_or_else(|| format!("{}: no tensor named pixel_values", input.display()))?;
    if shape.len() != 4 || shape[1..] != [c.channels, c.image_size, c.image_size] {
        return Err(format!(
            "{}: pixel_values has shape {shape:?}, the model needs (B, {}, {}, {})",
            input.display(),
            c.channels,
            c.image_size,
            c.image_size
        ));
    }
    let e = |e: engine::Error| e.to_string();
    let imgs = Tensor::from_slice(&device, pixels, shape).map_err(e)?;
    let out = match inputs.get("noise") {
        Some((nshape, noise)) => {
            if nshape.as_slice() != [shape[0], c.num_patches()] {
                return Err(format!(
                    "{}: noise has shape {nshape:?}, needs ({}, {})",
                    input.display(),
                    shape[0],
                    c.num_patches()
                ));
            }
            let noise = Tensor::from_slice(&device, noise, nshape).map_err(e)?;
            model
                .forward(&imgs, c.mask_ratio, &noise, &mut Ctx::eval())
                .map_err(e)?
        }
        None => model
            .forward_seeded(&imgs, c.mask_ratio, seed, &mut Ctx::eval())
            .map_err(e)?,
    };
    let mut f32s: Vec<(String, Vec<usize>, Vec<f32>)> = vec![
        ("loss".into(), vec![1], vec![out.loss.item().map_err(e)?]),
        (
            "logits".into(),
            out.pred.shape().to_vec(),
            out.pred.to_vec().map_err(e)?,
        ),
        (
            "mask".into(),
            out.mask.shape().to_vec(),
            out.mask.to_vec().map_err(e)?,
        ),
    ];
    let ids: Vec<u8> = out
        .ids_restore
        .to_vec_u32()
        .map_err(e)?
        .iter()
        .flat_map(|&v| (v as i64).to_le_bytes())
        .collect();
    if grads {
        let g = out.loss.backward().map_err(e)?;
        let mut ours = Vec::new();
        for (name, t) in nn::named_parameters(&model) {
            ours.push((
                name,
                t.shape().to_vec(),
                g.expect(&t).map_err(e)?.to_vec().map_err(e)?,
            ));
        }
        f32s.extend(
            to_published(ours)
                .into_iter()
                .map(|(n, s, v)| (format!("grad.{n}"), s, v)),
        );
    }
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = f32s
        .into_iter()
        .map(|(n, s, v)| (n, s, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let mut views: Vec<(String, TensorView<'_>)> = Vec::new();
    for (n, s, b) in &bytes {
        views.push((
            n.clone(),
            TensorView::new(Dtype::F32, s.clone(), b).map_err(|e| e.to_string())?,
        ));
    }
    views.push((
        "ids_restore".into(),
        TensorView::new(Dtype::I64, out.ids_restore.shape().to_vec(), &ids)
            .map_err(|e| e.to_string())?,
    ));
    let data = safetensors::serialize(views, Some(HashMap::new())).map_err(|e| e.to_string())?;
    std::fs::write(output, data).map_err(|e| format!("{}: {e}", output.display()))
}
