//! Linear probing, as the reference's `main_linprobe.py`: the encoder is frozen, and only a
//! linear head on its features is trained, behind a BatchNorm without affine parameters
//! (`head = [BatchNorm1d(D, affine=False), Linear(D, classes)]`, the head's weight trunc
//! normal with std 0.01), with SGD and momentum 0.9 standing in for LARS, no weight decay,
//! `lr = blr * batch / 256`, warmup then cosine.
//!
//! Since the encoder is frozen its features are computed once, on the evaluation view of
//! each image, and cached: both the cls and the average-pooled features in one pass, so a
//! probe of the other pool reuses them. (The reference instead recomputes them every epoch
//! on random crops and flips; with a cache, augmentation would need the encoder again.)

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use engine::{no_grad, warmup_cosine_lr, Device, ParamGroup, Sgd, Tensor};
use nn::{read_safetensors, save_host_safetensors, save_safetensors, BatchNorm, Ctx, Init, Linear};

use crate::classify::{
    both_features, classifier, correct, encoder, open_labelled, report, EvalView, Head, Outcome,
    Pool, Start,
};
use crate::data::{streams, Dataset, Normalize, Rng, FASHION_MNIST};
use crate::dist::Dist;
use crate::run::{self, print_profile, progress_bar, Invocation, Log, Output, Position};
use crate::Error;

/// `mae linprobe`'s options.
#[derive(Clone, Debug, clap::Args)]
pub struct Args {
    /// The probe's settings.
    #[command(flatten)]
    pub settings: Settings,
    /// Feature cache, shared by runs (keyed by weights, data and normalisation).
    #[arg(long, default_value = "out/features")]
    pub cache: PathBuf,
    /// Where and how this invocation runs.
    #[command(flatten)]
    pub run: Invocation,
}

/// Everything that defines a linear probe: the command-line options, whose defaults are
/// the reference recipe at a small batch (90 epochs, 10 of warmup, blr 0.1, batch 256).
#[derive(Clone, Debug, PartialEq, clap::Args)]
pub struct Settings {
    /// With --init mae: a pretrained checkpoint directory (ours, or a Hugging Face ViTMAE
    /// one). With --init random: a preset, config.json or checkpoint whose config is used.
    #[arg(long)]
    pub model: String,
    /// Encoder weights: pretrained, or a random initialisation (the baseline).
    #[arg(long, value_enum, default_value_t = Start::Mae)]
    pub init: Start,
    /// Feature: the cls token after the encoder's norm (the reference), or the mean of the
    /// patch tokens through a LayerNorm.
    #[arg(long, value_enum, default_value_t = Pool::Cls)]
    pub pool: Pool,
    /// Labelled data with a held-out split: IDX images and labels (train-*, t10k-*), or an
    /// image folder with train/ and val/ (or test/), one sub-folder per class.
    #[arg(long, default_value = FASHION_MNIST)]
    pub data: PathBuf,
    /// Image side, a multiple of the patch size [default: the pretraining's]; at another
    /// side the position table is the pretraining's, interpolated bicubically to the new
    /// patch grid as the reference's interpolate_pos_embed (448 from 224, say).
    #[arg(long)]
    pub image_size: Option<usize>,
    /// Use only the first N training images [default: all].
    #[arg(long)]
    pub limit: Option<usize>,
    /// Passes over the training features.
    #[arg(long, default_value_t = 90)]
    pub epochs: usize,
    /// Features per iteration.
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Base learning rate; lr = blr * batch_size / 256.
    #[arg(long, value_parser = run::finite, default_value_t = 0.1)]
    pub blr: f64,
    /// Linear warmup in epochs.
    #[arg(long, value_parser = run::finite, default_value_t = 10.0)]
    pub warmup_epochs: f64,
    /// Learning rate at the end of the cosine.
    #[arg(long, value_parser = run::finite, default_value_t = 0.0)]
    pub min_lr: f64,
    /// Seed of a random encoder, the head and the order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Features of one split: `(n, D)` row-major, for both pools, and the labels.
struct Features {
    cls: Vec<f32>,
    avg: Vec<f32>,
    labels: Vec<u32>,
    dim: usize,
}

impl Features {
    fn rows(&self, pool: Pool) -> &[f32] {
        match pool {
            Pool::Cls => &self.cls,
            Pool::Avg => &self.avg,
        }
    }

    fn len(&self) -> usize {
        self.labels.len()
    }
}

/// `mae linprobe`: train a linear probe and print the result line.
///
/// # Errors
/// See [`linprobe`].
pub fn command(args: &Args) -> Result<(), Error> {
    println!("{}", linprobe(args)?.line);
    Ok(())
}

/// Train a linear probe and report its top-1 on the held-out split.
///
/// # Errors
/// Bad settings, missing or unlabelled data, an unreadable model, I/O or engine failures.
pub fn linprobe(args: &Args) -> Result<Outcome, Error> {
    let (s, run) = (&args.settings, &args.run);
    if s.epochs == 0
        || s.batch_size < 2
        || !(s.blr > 0.0 && s.blr.is_finite())
        || s.warmup_epochs.is_nan()
        || s.warmup_epochs < 0.0
    {
        return Err(Error::Setup(
            "--epochs must be at least 1, --batch-size at least 2, --blr positive and \
             --warmup-epochs not negative"
                .into(),
        ));
    }
    let output = Output::claim(
        "linprobe",
        run.output.as_deref(),
        None,
        run.overwrite,
        &Dist::single(),
    )?;
    let device = Device::new()?;
    let data = open_labelled(&s.data)?;
    let enc = encoder(&s.model, s.init, s.seed, &device)?;
    let channels = enc.mae.config.channels;
    data.train.check_channels(channels)?;
    let normalize = enc
        .normalize
        .clone()
        .unwrap_or_else(|| data.train.normalize(channels, Default::default(), s.seed));
    let identity = enc.identity.clone();
    let mut init = Init::new(&device, Rng::new(&[s.seed, streams::HEAD]).next_u64());
    let vit = classifier(
        enc.mae,
        Head {
            classes: data.classes,
            pool: Pool::Cls,
            drop_path: 0.0,
            image_size: s.image_size,
        },
        &mut init,
    )?;
    eprintln!(
        "linear probe of a {} encoder ({}) on {}, {} features, {} classes, on {}",
        s.init.name(),
        s.model,
        data.train.description,
        match s.pool {
            Pool::Cls => "cls",
            Pool::Avg => "avg",
        },
        data.classes,
        device.info().name
    );

    let n = s
        .limit
        .map_or(data.train.len(), |l| l.min(data.train.len()));
    if n < s.batch_size {
        return Err(Error::Setup(format!(
            "{}: {n} training images, fewer than one batch of {}",
            data.train.description, s.batch_size
        )));
    }
    let extract = |split: &str, d: &Arc<Dataset>, n: usize| {
        let key = format!(
            "{identity}|{}|{split}|{n}|{:?}|{:?}|{}",
            s.data.display(),
            normalize.mean,
            normalize.std,
            vit.config.image_size
        );
        cached_features(&key, &args.cache, (vit.config.dim, data.classes), || {
            features(&vit, d, n, &normalize, run, split)
        })
    };
    let train = extract("train", &data.train, n)?;
    let test = extract("test", &data.test, data.test.len())?;
    let mut probe = Probe::new(&mut init, train.dim, data.classes)?;
    let lr = s.blr * s.batch_size as f64 / 256.0;
    let group = ParamGroup::new(probe.parameters(), lr as f32, 0.0);
    let mut sgd = Sgd::new(vec![group], 0.9, 0.0, false)?;
    let test_x = Tensor::from_slice(&device, test.rows(s.pool), &[test.len(), test.dim])?;

    let mut metrics = Log::open(&output.dir, Position::default(), None)?;
    let started = Instant::now();
    let bar = progress_bar(run.progress, s.epochs, "probe epochs".into());
    let mut top1 = 0.0;
    for epoch in 0..s.epochs {
        let loss = probe.train_one_epoch(&mut sgd, s, &train, epoch)?;
        if !loss.is_finite() {
            return Err(Error::non_finite(
                loss as f32,
                format!("in epoch {}", epoch + 1),
                None,
            ));
        }
        top1 = probe.top1(&test_x, &test.labels)?;
        let elapsed = started.elapsed().as_secs_f64();
        let lr = sgd.groups[0].lr as f64;
        metrics.line(
            "epoch",
            &[("epoch", epoch as u64)],
            &[
                ("loss", loss),
                ("top1", top1),
                ("lr", lr),
                ("elapsed_s", elapsed),
            ],
        )?;
        bar.set_message(format!("loss {loss:.4}  top-1 {top1:.2}%"));
        bar.inc(1);
        if !run.progress && ((epoch + 1) % 10 == 0 || epoch + 1 == s.epochs) {
            eprintln!(
                "epoch {}/{}  loss {loss:.4}  test top-1 {top1:.2}%",
                epoch + 1,
                s.epochs
            );
        }
    }
    bar.finish_and_clear();
    print_profile(&device);
    probe.save(&output.dir.join("head.safetensors"))?;
    report(&output.dir, "linprobe", s.init, top1, s.epochs)
}

/// The reference's probe head: `[BatchNorm1d(D, affine=False), Linear(D, classes)]`.
struct Probe {
    bn: BatchNorm,
    head: Linear,
}

impl Probe {
    /// Running statistics 0 and 1, the linear weight trunc normal (std 0.01), bias 0.
    fn new(init: &mut Init, dim: usize, classes: usize) -> engine::Result<Probe> {
        Ok(Probe {
            bn: BatchNorm::new(init.device(), dim)?,
            head: Linear {
                weight: init.trunc_normal(&[classes, dim], 0.01)?,
                bias: Some(init.constant(&[classes], 0.0)?),
            },
        })
    }

    fn parameters(&self) -> Vec<Tensor> {
        let bias = self.head.bias.clone().expect("a bias");
        vec![self.head.weight.clone(), bias]
    }

    /// One shuffled pass over the training features: lr per iteration, SGD steps. Returns
    /// the mean loss (read back once, at the end).
    fn train_one_epoch(
        &mut self,
        sgd: &mut Sgd,
        s: &Settings,
        train: &Features,
        epoch: usize,
    ) -> engine::Result<f64> {
        let device = self.head.weight.device().clone();
        let iters = train.len() / s.batch_size;
        let lr = s.blr * s.batch_size as f64 / 256.0;
        let mut order: Vec<usize> = (0..train.len()).collect();
        Rng::new(&[s.seed, streams::ORDER, epoch as u64]).shuffle(&mut order);
        let mut total = Tensor::zeros(&device, &[])?;
        for (it, rows) in order.chunks_exact(s.batch_size).enumerate() {
            let (x, y) = gather(train, s.pool, rows);
            let x = Tensor::from_slice(&device, &x, &[rows.len(), train.dim])?;
            let y = Tensor::from_slice_u32(&device, &y, &[rows.len()])?;
            let progress = epoch as f64 + it as f64 / iters as f64;
            let lr_now = warmup_cosine_lr(progress, lr, s.min_lr, s.warmup_epochs, s.epochs as f64);
            sgd.groups[0].lr = lr_now as f32;
            let logits = self.head.forward(&self.bn.forward(&x, &Ctx::train(0))?)?;
            let loss = logits.cross_entropy(&y, 0.0)?.mean_all()?;
            sgd.step(&loss.backward()?)?;
            total = no_grad(|| total.add(&loss.detach()))?;
        }
        Ok(total.item()? as f64 / iters as f64)
    }

    /// Top-1 in percent on features `x (N, D)` with `labels`, BatchNorm in eval mode.
    fn top1(&mut self, x: &Tensor, labels: &[u32]) -> engine::Result<f64> {
        let right = no_grad(|| {
            let logits = self.head.forward(&self.bn.forward(x, &Ctx::eval())?)?;
            correct(&logits, labels)?.item()
        })?;
        Ok(100.0 * right as f64 / labels.len() as f64)
    }

    /// `head.0.running_mean`, `head.0.running_var`, `head.1.weight`, `head.1.bias`.
    fn save(&self, path: &Path) -> Result<(), Error> {
        let tensors = [
            ("head.0.running_mean", &self.bn.running_mean),
            ("head.0.running_var", &self.bn.running_var),
            ("head.1.weight", &self.head.weight),
            ("head.1.bias", self.head.bias.as_ref().expect("a bias")),
        ];
        let named: Vec<(String, Tensor)> = tensors
            .iter()
            .map(|(n, t)| (n.to_string(), (*t).clone()))
            .collect();
        Ok(save_safetensors(path, &named, None)?)
    }
}

/// The feature rows and labels of `rows`.
fn gather(f: &Features, pool: Pool, rows: &[usize]) -> (Vec<f32>, Vec<u32>) {
    let all = f.rows(pool);
    let x = rows
        .iter()
        .flat_map(|&r| &all[r * f.dim..(r + 1) * f.dim])
        .copied()
        .collect();
    (x, rows.iter().map(|&r| f.labels[r]).collect())
}

/// The features cached under `key` in `cache`, or computed by `compute` and cached. A
/// cache file that cannot be used (unreadable, or not features of `dim` values and
/// `classes` classes) is named in a warning and computed again.
fn cached_features(
    key: &str,
    cache: &Path,
    (dim, classes): (usize, usize),
    compute: impl FnOnce() -> Result<Features, Error>,
) -> Result<Features, Error> {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    key.hash(&mut h);
    let path = cache.join(format!("{:016x}.safetensors", h.finish()));
    match read_features(&path, key, (dim, classes)) {
        Ok(Some(f)) => {
            eprintln!("features from {}", path.display());
            return Ok(f);
        }
        Ok(None) => {}
        Err(why) => eprintln!(
            "warning: {}: {why}; computing the features again",
            path.display()
        ),
    }
    let f = compute()?;
    std::fs::create_dir_all(cache).map_err(Error::io(cache))?;
    let n = f.len();
    let labels = f.labels.iter().map(|&l| l as f32).collect();
    let tensors = vec![
        ("cls".to_string(), vec![n, f.dim], f.cls.clone()),
        ("avg".to_string(), vec![n, f.dim], f.avg.clone()),
        ("labels".to_string(), vec![n], labels),
    ];
    let meta = HashMap::from([("key".to_string(), key.to_string())]);
    save_host_safetensors(&path, tensors, Some(meta))?;
    Ok(f)
}

/// Cached features when `path` holds them for exactly `key`; `None` when it holds none
/// (no file, or another key's).
///
/// # Errors
/// Why a file for `key` cannot be used: unreadable, or not `(n, dim)` features of both
/// pools with `n` labels below `classes`.
fn read_features(
    path: &Path,
    key: &str,
    (dim, classes): (usize, usize),
) -> Result<Option<Features>, String> {
    if !path.exists() {
        return Ok(None);
    }
    let meta = nn::read_safetensors_metadata(path).map_err(|e| e.to_string())?;
    if meta.get("key").map(String::as_str) != Some(key) {
        return Ok(None);
    }
    let mut t = read_safetensors(path).map_err(|e| e.to_string())?;
    let mut take = |name: &str| t.remove(name).ok_or(format!("no {name} tensor"));
    let ((cls_shape, cls), (avg_shape, avg), (labels_shape, labels)) =
        (take("cls")?, take("avg")?, take("labels")?);
    let n = labels.len();
    let want = vec![n, dim];
    if cls_shape != want || avg_shape != want || labels_shape != [n] {
        return Err(format!(
            "shapes {cls_shape:?}, {avg_shape:?} and {labels_shape:?}, not {want:?} twice and [{n}]"
        ));
    }
    if let Some(l) = labels
        .iter()
        .find(|&&l| !(l >= 0.0 && l < classes as f32 && l.fract() == 0.0))
    {
        return Err(format!("a label {l} that is not a class of 0..{classes}"));
    }
    Ok(Some(Features {
        cls,
        avg,
        labels: labels.iter().map(|&l| l as u32).collect(),
        dim,
    }))
}

/// Both pools' features of the first `n` images of `data`, on their evaluation view, with
/// the encoder frozen (no graph is recorded).
fn features(
    vit: &nn::VisionTransformer,
    data: &Arc<Dataset>,
    n: usize,
    normalize: &Normalize,
    run: &Invocation,
    split: &str,
) -> Result<Features, Error> {
    let bar = progress_bar(run.progress, n.div_ceil(256), format!("{split} features"));
    let started = Instant::now();
    let dim = vit.config.dim;
    let mut f = Features {
        cls: Vec::with_capacity(n * dim),
        avg: Vec::with_capacity(n * dim),
        labels: Vec::with_capacity(n),
        dim,
    };
    let c = &vit.config;
    let view = EvalView {
        device: vit.cls_token.device(),
        shape: (c.image_size, c.channels),
        normalize,
        workers: run.workers,
    };
    view.for_each_batch(data, (0..n).collect(), |imgs, labels| {
        let tokens = vit.forward_tokens(imgs, &mut Ctx::eval())?;
        let (cls, avg) = both_features(vit, &tokens)?;
        f.cls.extend(cls.to_vec()?);
        f.avg.extend(avg.to_vec()?);
        f.labels.extend(labels);
        bar.inc(1);
        Ok(())
    })?;
    bar.finish_and_clear();
    eprintln!(
        "{split} features of {n} images in {:.1} s ({:.0} img/s)",
        started.elapsed().as_secs_f64(),
        n as f64 / started.elapsed().as_secs_f64()
    );
    Ok(f)
}
