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
use nn::{read_safetensors, save_host_safetensors, BatchNorm, Ctx, Init, Linear};

use crate::classify::{
    both_features, classifier, correct, encoder, for_each_eval_batch, open_labelled, report,
    Outcome, Pool, Start,
};
use crate::data::{Dataset, Normalize, Rng};
use crate::run::{print_profile, profiling, progress_bar, Log};
use crate::Error;

const ORDER_STREAM: u64 = 1;
const HEAD_STREAM: u64 = 4;

/// Everything that defines a linear probe.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The pretrained checkpoint, or with [`Start::Random`] a preset or config.
    pub model: String,
    /// Pretrained or random encoder.
    pub start: Start,
    /// Cls token or mean of the patch tokens.
    pub pool: Pool,
    /// Labelled data with a held-out split.
    pub data: PathBuf,
    /// Use only the first this many training images.
    pub limit: Option<usize>,
    /// Passes over the training features.
    pub epochs: usize,
    /// Features per iteration.
    pub batch_size: usize,
    /// Base learning rate: `lr = blr * batch_size / 256`.
    pub blr: f64,
    /// Linear warmup, in (fractional) epochs.
    pub warmup_epochs: f64,
    /// Where the cosine ends.
    pub min_lr: f64,
    /// Seed of a random encoder, the head and the order.
    pub seed: u64,
}

impl Settings {
    /// The reference recipe at a small batch: 90 epochs, 10 of warmup, blr 0.1, batch 256.
    pub fn recipe(model: String, start: Start, pool: Pool, data: PathBuf) -> Settings {
        Settings {
            model,
            start,
            pool,
            data,
            limit: None,
            epochs: 90,
            batch_size: 256,
            blr: 0.1,
            warmup_epochs: 10.0,
            min_lr: 0.0,
            seed: 0,
        }
    }
}

/// Options of one invocation that do not change the result.
pub struct Invocation {
    /// Output directory: `metrics.jsonl`, `head.safetensors`, `result.json`.
    pub output: PathBuf,
    /// Feature cache directory.
    pub cache: PathBuf,
    /// Decoding threads.
    pub workers: usize,
    /// Show progress bars.
    pub progress: bool,
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

/// Train a linear probe and report its top-1 on the held-out split.
///
/// # Errors
/// One line for bad settings, missing or unlabelled data, an unreadable model, or I/O.
pub fn linprobe(s: &Settings, run: &Invocation) -> Result<Outcome, Error> {
    if s.epochs == 0
        || s.batch_size < 2
        || !(s.blr > 0.0 && s.blr.is_finite())
        || s.warmup_epochs.is_nan()
        || s.warmup_epochs < 0.0
    {
        return Err(
            "--epochs must be at least 1, --batch-size at least 2, --blr positive and \
             --warmup-epochs not negative"
                .into(),
        );
    }
    let e = |e: engine::Error| e.to_string();
    let device = Device::new().map_err(e)?;
    let profiling = profiling(&device);
    let data = open_labelled(&s.data)?;
    let enc = encoder(&s.model, s.start, s.seed, &device)?;
    let channels = enc.mae.config.channels;
    let normalize = enc
        .normalize
        .clone()
        .unwrap_or_else(|| data.train.normalize(channels));
    let identity = enc.identity.clone();
    let mut init = Init::new(&device, Rng::new(&[s.seed, HEAD_STREAM]).next_u64());
    let vit = classifier(enc.mae, data.classes, Pool::Cls, 0.0, &mut init).map_err(e)?;
    std::fs::create_dir_all(&run.output).map_err(|e| format!("{}: {e}", run.output.display()))?;
    eprintln!(
        "linear probe of a {} encoder ({}) on {}, {} features, {} classes, on {}",
        s.start.name(),
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
        return Err(format!(
            "{}: {n} training images, fewer than one batch of {}",
            data.train.description, s.batch_size
        )
        .into());
    }
    let extract = |split: &str, d: &Arc<Dataset>, n: usize| {
        let key = format!(
            "{identity}|{}|{split}|{n}|{:?}|{:?}",
            s.data.display(),
            normalize.mean,
            normalize.std
        );
        cached_features(&key, &run.cache, || {
            features(&vit, d, n, &normalize, run, split)
        })
    };
    let train = extract("train", &data.train, n)?;
    let test = extract("test", &data.test, data.test.len())?;
    let mut probe = Probe::new(&mut init, train.dim, data.classes).map_err(e)?;
    let lr = s.blr * s.batch_size as f64 / 256.0;
    let group = ParamGroup::new(probe.parameters(), lr as f32, 0.0);
    let mut sgd = Sgd::new(vec![group], 0.9, 0.0, false).map_err(e)?;
    let test_x =
        Tensor::from_slice(&device, test.rows(s.pool), &[test.len(), test.dim]).map_err(e)?;

    let mut metrics = Log::open(&run.output, "epoch", 0)?;
    let started = Instant::now();
    let bar = progress_bar(run.progress, s.epochs, "probe epochs".into());
    let mut top1 = 0.0;
    for epoch in 0..s.epochs {
        let loss = probe
            .train_one_epoch(&mut sgd, s, &train, epoch)
            .map_err(e)?;
        if !loss.is_finite() {
            return Err(Error::non_finite(
                loss as f32,
                format!("in epoch {}", epoch + 1),
                None,
            ));
        }
        top1 = probe.top1(&test_x, &test.labels).map_err(e)?;
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
    if profiling {
        print_profile(&device);
    }
    probe.save(&run.output.join("head.safetensors"))?;
    Ok(report(&run.output, "linprobe", s.start, top1, s.epochs)?)
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
        Rng::new(&[s.seed, ORDER_STREAM, epoch as u64]).shuffle(&mut order);
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
    fn save(&self, path: &Path) -> Result<(), String> {
        let mut tensors = Vec::new();
        for (name, t) in [
            ("head.0.running_mean", &self.bn.running_mean),
            ("head.0.running_var", &self.bn.running_var),
            ("head.1.weight", &self.head.weight),
            ("head.1.bias", self.head.bias.as_ref().expect("a bias")),
        ] {
            let values = t.to_vec().map_err(|e| e.to_string())?;
            tensors.push((name.to_string(), t.shape().to_vec(), values));
        }
        save_host_safetensors(path, tensors, None).map_err(|e| e.to_string())
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

/// The features cached under `key` in `cache`, or computed by `compute` and cached.
fn cached_features(
    key: &str,
    cache: &Path,
    compute: impl FnOnce() -> Result<Features, String>,
) -> Result<Features, String> {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    key.hash(&mut h);
    let path = cache.join(format!("{:016x}.safetensors", h.finish()));
    if let Some(f) = read_features(&path, key) {
        eprintln!("features from {}", path.display());
        return Ok(f);
    }
    let f = compute()?;
    std::fs::create_dir_all(cache).map_err(|e| format!("{}: {e}", cache.display()))?;
    let n = f.len();
    let labels = f.labels.iter().map(|&l| l as f32).collect();
    let tensors = vec![
        ("cls".to_string(), vec![n, f.dim], f.cls.clone()),
        ("avg".to_string(), vec![n, f.dim], f.avg.clone()),
        ("labels".to_string(), vec![n], labels),
    ];
    let meta = HashMap::from([("key".to_string(), key.to_string())]);
    save_host_safetensors(&path, tensors, Some(meta)).map_err(|e| e.to_string())?;
    Ok(f)
}

/// Cached features when `path` holds them for exactly `key`.
fn read_features(path: &Path, key: &str) -> Option<Features> {
    let bytes = std::fs::read(path).ok()?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).ok()?;
    if meta.metadata().as_ref()?.get("key")? != key {
        return None;
    }
    let mut t = read_safetensors(path).ok()?;
    let (shape, cls) = t.remove("cls")?;
    let (_, avg) = t.remove("avg")?;
    let (_, labels) = t.remove("labels")?;
    Some(Features {
        cls,
        avg,
        labels: labels.iter().map(|&l| l as u32).collect(),
        dim: *shape.get(1)?,
    })
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
) -> Result<Features, String> {
    let bar = progress_bar(run.progress, n.div_ceil(256), format!("{split} features"));
    let started = Instant::now();
    let e = |e: engine::Error| e.to_string();
    let dim = vit.config.dim;
    let mut f = Features {
        cls: Vec::with_capacity(n * dim),
        avg: Vec::with_capacity(n * dim),
        labels: Vec::with_capacity(n),
        dim,
    };
    for_each_eval_batch(
        vit,
        data,
        (0..n).collect(),
        (normalize, 256, run.workers),
        |imgs, labels| {
            let tokens = vit.forward_tokens(imgs, &mut Ctx::eval()).map_err(e)?;
            let (cls, avg) = both_features(vit, &tokens).map_err(e)?;
            f.cls.extend(cls.to_vec().map_err(e)?);
            f.avg.extend(avg.to_vec().map_err(e)?);
            f.labels.extend(labels);
            bar.inc(1);
            Ok(())
        },
    )?;
    bar.finish_and_clear();
    eprintln!(
        "{split} features of {n} images in {:.1} s ({:.0} img/s)",
        started.elapsed().as_secs_f64(),
        n as f64 / started.elapsed().as_secs_f64()
    );
    Ok(f)
}
