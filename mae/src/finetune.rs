//! End-to-end fine-tuning, as the reference's `main_finetune.py`: a ViT classifier built
//! from the encoder (global average pool through `fc_norm`, a new head), AdamW with
//! layer-wise learning-rate decay, drop path, label smoothing, a per-iteration warmup and
//! cosine schedule, top-1 on the held-out split after every epoch, and checkpoints.
//!
//! Augmentation is the pretraining crop and flip; the reference's RandAugment, random
//! erasing, mixup and cutmix are not implemented.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use engine::{warmup_cosine_lr, AdamW, Device, DeviceOptions, OptimizerState, ParamGroup, Tensor};
use nn::{
    load_safetensors, named_parameters, read_safetensors, save_host_safetensors, save_safetensors,
    Ctx, Init, VisionTransformer,
};
use serde_json::json;

use crate::classify::{classifier, encoder, evaluate, open_labelled, report, Outcome, Pool, Start};
use crate::data::{Augment, Loader, Rng, Skipped};
use crate::dist::Dist;
use crate::run::{
    checkpoint_dir, print_profile, profiling, progress_bar, weights_digest, write_dir_atomically,
    Invocation, Log,
};
use crate::{Error, MaeConfig};

const ORDER_STREAM: u64 = 1;
const DROP_STREAM: u64 = 2;
const HEAD_STREAM: u64 = 4;

/// Everything that defines a fine-tuning run.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The pretrained checkpoint, or with [`Start::Random`] a preset or config.
    pub model: String,
    /// Pretrained or random encoder.
    pub start: Start,
    /// Labelled data with a held-out split.
    pub data: PathBuf,
    /// Use only the first this many training images.
    pub limit: Option<usize>,
    /// Passes over the data.
    pub epochs: usize,
    /// Images per iteration and process.
    pub batch_size: usize,
    /// Processes the run started with: an iteration's global batch is `batch_size *
    /// ranks` images.
    pub ranks: usize,
    /// Iterations per optimizer step.
    pub accum_iter: usize,
    /// Base learning rate: `lr = blr * batch_size * ranks * accum_iter / 256`.
    pub blr: f64,
    /// Layer `i` of `depth + 1` gets `lr * layer_decay^(depth + 1 - i)`.
    pub layer_decay: f64,
    /// AdamW weight decay, on matrices only.
    pub weight_decay: f64,
    /// Drop-path rate of the last block.
    pub drop_path: f32,
    /// Label smoothing of the cross-entropy.
    pub smoothing: f32,
    /// Linear warmup, in (fractional) epochs.
    pub warmup_epochs: f64,
    /// Where the cosine ends.
    pub min_lr: f64,
    /// Seed of a random encoder, the head, the order, augmentation and drop path.
    pub seed: u64,
    /// Checkpoint every this many epochs (and after the last).
    pub save_every: usize,
}

impl Settings {
    /// The reference recipe for a model (ViT-B: 100 epochs, 5 warmup, effective batch
    /// 1024, blr 5e-4, layer decay 0.65, drop path 0.1; ViT-L/H: layer decay 0.75, drop path
    /// 0.2/0.3, blr 1e-3), and a short one for the small presets (2 epochs, batch 64, blr
    /// 4e-3, layer decay 0.75, drop path 0.1, warmup 0.2 epochs).
    pub fn recipe(model: String, start: Start, config: &MaeConfig, data: PathBuf) -> Settings {
        let small = config.image_size <= 64;
        let (layer_decay, drop_path, blr) = match config.dim {
            _ if small => (0.75, 0.1, 4e-3),
            d if d <= 768 => (0.65, 0.1, 5e-4),
            d if d <= 1024 => (0.75, 0.2, 1e-3),
            _ => (0.75, 0.3, 1e-3),
        };
        Settings {
            model,
            start,
            data,
            limit: None,
            epochs: if small { 2 } else { 100 },
            batch_size: 64,
            ranks: 1,
            accum_iter: if small { 1 } else { 16 },
            blr,
            layer_decay,
            weight_decay: 0.05,
            drop_path,
            smoothing: 0.1,
            warmup_epochs: if small { 0.2 } else { 5.0 },
            min_lr: 1e-6,
            seed: 0,
            save_every: if small { 1 } else { 10 },
        }
    }

    /// Images per iteration over all processes.
    pub fn global_batch(&self) -> usize {
        self.batch_size * self.ranks
    }

    /// The absolute learning rate of the last layers.
    pub fn lr(&self) -> f64 {
        self.blr * (self.global_batch() * self.accum_iter) as f64 / 256.0
    }

    fn check(&self) -> Result<(), String> {
        let bad = [
            (self.epochs == 0, "--epochs must be at least 1"),
            (self.batch_size == 0, "--batch-size must be at least 1"),
            (self.accum_iter == 0, "--accum-iter must be at least 1"),
            (self.save_every == 0, "--save-every must be at least 1"),
            (
                !(self.blr > 0.0 && self.blr.is_finite()),
                "--blr must be positive",
            ),
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
                self.warmup_epochs.is_nan() || self.warmup_epochs < 0.0,
                "--warmup-epochs must not be negative",
            ),
        ];
        match bad.iter().find(|b| b.0) {
            Some((_, why)) => Err(why.to_string()),
            None => Ok(()),
        }
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "model": self.model, "init": self.start.name(), "data": self.data,
            "limit": self.limit, "epochs": self.epochs, "batch_size": self.batch_size,
            "ranks": self.ranks,
            "accum_iter": self.accum_iter, "blr": self.blr, "layer_decay": self.layer_decay,
            "weight_decay": self.weight_decay, "drop_path": self.drop_path,
            "smoothing": self.smoothing, "warmup_epochs": self.warmup_epochs,
            "min_lr": self.min_lr, "seed": self.seed, "save_every": self.save_every,
        })
    }
}

impl Settings {
    fn from_json(v: &serde_json::Value) -> Option<Settings> {
        let f = |k: &str| v.get(k)?.as_f64();
        let u = |k: &str| v.get(k)?.as_u64().map(|x| x as usize);
        Some(Settings {
            model: v.get("model")?.as_str()?.to_string(),
            start: match v.get("init")?.as_str()? {
                "mae" => Start::Mae,
                "random" => Start::Random,
                _ => return None,
            },
            data: PathBuf::from(v.get("data")?.as_str()?),
            limit: u("limit"),
            epochs: u("epochs")?,
            batch_size: u("batch_size")?,
            ranks: u("ranks").unwrap_or(1),
            accum_iter: u("accum_iter")?,
            blr: f("blr")?,
            layer_decay: f("layer_decay")?,
            weight_decay: f("weight_decay")?,
            drop_path: f("drop_path")? as f32,
            smoothing: f("smoothing")? as f32,
            warmup_epochs: f("warmup_epochs")?,
            min_lr: f("min_lr")?,
            seed: u("seed")? as u64,
            save_every: u("save_every")?,
        })
    }
}

/// Where a resumed run stands: read from a checkpoint's `trainer_state.json`.
struct Resumed {
    dir: PathBuf,
    epoch: usize,
    step: u64,
    optimizer_step: u64,
}

/// The settings and position saved in the checkpoint at `path` (or the newest one in it).
fn read_trainer_state(path: &Path) -> Result<(Settings, Resumed), String> {
    let dir = checkpoint_dir(path)?;
    let state_path = dir.join("trainer_state.json");
    let bad = |why: String| format!("{}: {why}", state_path.display());
    let text = std::fs::read_to_string(&state_path).map_err(|e| bad(e.to_string()))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let u = |k: &str| v.get(k).and_then(serde_json::Value::as_u64);
    let settings = v.get("settings").and_then(Settings::from_json);
    match (settings, u("epoch"), u("step"), u("optimizer_step")) {
        (Some(s), Some(epoch), Some(step), Some(optimizer_step)) => Ok((
            s,
            Resumed {
                dir,
                epoch: epoch as usize,
                step,
                optimizer_step,
            },
        )),
        _ => Err(bad("missing or malformed fields".into())),
    }
}

/// AdamW parameter groups with layer-wise lr decay, as the reference's `param_groups_lrd`:
/// the patch embedding and cls token are layer 0, block `i` is layer `i + 1`, the rest
/// (final norm, head) layer `depth + 1`; layer `l` gets the lr scale
/// `layer_decay^(depth + 1 - l)`. Matrices decay by `weight_decay`, vectors and the cls
/// token do not. Returns the groups and their lr scales.
pub fn param_groups_lrd(
    vit: &VisionTransformer,
    weight_decay: f32,
    layer_decay: f64,
) -> (Vec<ParamGroup>, Vec<f64>) {
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
    let scales = groups
        .iter()
        .map(|g| layer_decay.powi((top - g.0) as i32))
        .collect();
    let groups = groups
        .into_iter()
        .map(|(_, decay, params)| {
            ParamGroup::new(params, 0.0, if decay { weight_decay } else { 0.0 })
        })
        .collect();
    (groups, scales)
}

/// Fine-tune and report top-1 on the held-out split after every epoch; returns the last.
/// `settings` define a new run; with `run.resume` the checkpoint's are used instead (only
/// `run.epochs` may extend them). Every random stream is derived from the
/// seed, epoch, step and image index, so a resumed run continues exactly.
///
/// # Errors
/// One line for bad settings, missing or unlabelled data, an unreadable model or
/// checkpoint, I/O, or a loss that becomes NaN or infinite (the checkpoints written before
/// are kept).
pub fn finetune(
    settings: Option<&Settings>,
    run: &Invocation,
    dist: &Dist,
) -> Result<Outcome, Error> {
    let (mut s, resumed) = match (&run.resume, settings) {
        (Some(path), _) => {
            let (s, r) = read_trainer_state(path)?;
            (s, Some(r))
        }
        (None, Some(s)) => (s.clone(), None),
        (None, None) => return Err("give a model to fine-tune, or --resume".into()),
    };
    if let Some(epochs) = run.epochs {
        s.epochs = epochs;
    }
    let s = &s;
    s.check()?;
    let e = |e: engine::Error| e.to_string();
    let device = Device::with_options(DeviceOptions {
        adapter_index: Some(dist.local_rank()),
        ..Default::default()
    })
    .map_err(e)?;
    if let Some(line) = dist.describe(&device.info().name) {
        eprintln!("{line}");
    }
    let profiling = profiling(&device);
    let data = open_labelled(&s.data)?;
    let enc = encoder(&s.model, s.start, s.seed, &device)?;
    let channels = enc.mae.config.channels;
    let normalize = enc
        .normalize
        .clone()
        .unwrap_or_else(|| data.train.normalize(channels));
    let mut init = Init::new(&device, Rng::new(&[s.seed, HEAD_STREAM]).next_u64());
    let mut vit =
        classifier(enc.mae, data.classes, Pool::Avg, s.drop_path, &mut init).map_err(e)?;
    if let Some(r) = &resumed {
        load_safetensors(&r.dir.join("model.safetensors"), &mut vit).map_err(|e| e.to_string())?;
    }
    let (groups, scales) = param_groups_lrd(&vit, s.weight_decay as f32, s.layer_decay);
    let mut opt = AdamW::new(groups, (0.9, 0.999), 1e-8).map_err(e)?;
    if let Some(r) = &resumed {
        let path = r.dir.join("optimizer.safetensors");
        let tensors = read_safetensors(&path).map_err(|e| e.to_string())?;
        let state = OptimizerState {
            step: r.optimizer_step,
            tensors: tensors.into_iter().map(|(n, (s, v))| (n, s, v)).collect(),
        };
        opt.load_state(&state)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if dist.is_main() {
            eprintln!(
                "resuming {} at epoch {}, step {}",
                r.dir.display(),
                r.epoch,
                r.step
            );
        }
    }
    let (first_epoch, mut step) = resumed.as_ref().map_or((0, 0), |r| (r.epoch, r.step));
    let mut last_checkpoint = resumed.as_ref().map(|r| r.dir.clone());
    let c = vit.config.clone();
    dist.check_same("settings or model", &format!("{} {c:?}", s.to_json()))?;
    let global = s.global_batch();
    if !global.is_multiple_of(dist.size()) {
        return Err(format!(
            "the run's global batch of {global} images does not split over {} processes",
            dist.size()
        )
        .into());
    }
    let per_rank = global / dist.size();
    let n = s
        .limit
        .map_or(data.train.len(), |l| l.min(data.train.len()));
    let iters = n / global;
    if iters == 0 {
        return Err(format!(
            "{}: {n} images, fewer than one batch of {global}",
            data.train.description
        )
        .into());
    }
    let mut metrics = if dist.is_main() {
        std::fs::create_dir_all(&run.output)
            .map_err(|e| format!("{}: {e}", run.output.display()))?;
        eprintln!(
            "fine-tuning a {} encoder ({}) on {n} images of {}, {} classes, lr {:.2e}, layer decay {}, \
             {} epochs of {iters} iterations, batch {per_rank} x {} processes, on {}",
            s.start.name(),
            s.model,
            data.train.description,
            data.classes,
            s.lr(),
            s.layer_decay,
            s.epochs,
            dist.size(),
            device.info().name
        );
        Some(Log::open(&run.output, "epoch", first_epoch as u64)?)
    } else {
        None
    };

    let augment = Arc::new(Augment::pretrain(c.image_size, normalize.clone()));
    let scale = Tensor::full(&device, &[], 1.0 / s.accum_iter as f32).map_err(e)?;
    let started = Instant::now();
    let (mut seen, mut top1) = (0usize, 0.0);
    for epoch in first_epoch..s.epochs {
        let mut order: Vec<usize> = (0..n).collect();
        Rng::new(&[s.seed, ORDER_STREAM, epoch as u64]).shuffle(&mut order);
        let loader = Loader::new(
            data.train.clone(),
            (augment.clone(), true),
            c.channels,
            dist.shard(&order, per_rank),
            per_rank,
            run.workers,
            (s.seed, epoch as u64),
            Arc::new(Skipped::default()),
        );
        let prefix = format!("epoch {}/{}", epoch + 1, s.epochs);
        let bar = progress_bar(run.progress && dist.is_main(), iters, prefix);
        let mut grads = engine::Gradients::default();
        let mut total = 0.0;
        for (it, batch) in loader.enumerate() {
            let batch = batch.map_err(|e| e.to_string())?;
            if it % s.accum_iter == 0 {
                let progress = epoch as f64 + it as f64 / iters as f64;
                let lr =
                    warmup_cosine_lr(progress, s.lr(), s.min_lr, s.warmup_epochs, s.epochs as f64);
                for (g, k) in opt.groups.iter_mut().zip(&scales) {
                    g.lr = (lr * k) as f32;
                }
            }
            let shape = [batch.len, c.channels, c.image_size, c.image_size];
            let imgs = Tensor::from_slice(&device, &batch.pixels, &shape).map_err(e)?;
            let labels = batch
                .labels
                .as_deref()
                .ok_or("training data without labels")?;
            let y = Tensor::from_slice_u32(&device, labels, &[batch.len]).map_err(e)?;
            let drop_seed = Rng::new(&[s.seed, DROP_STREAM, step]).next_u64();
            let ctx = &mut Ctx::train(drop_seed).rows_of(dist.rank() * per_rank, global);
            let logits = vit.forward(&imgs, ctx).map_err(e)?;
            let loss = logits
                .cross_entropy(&y, s.smoothing)
                .map_err(e)?
                .mean_all()
                .map_err(e)?;
            // The global batch's mean loss: the mean of the processes' equal-sized batches.
            let mut sum = [loss.item().map_err(e)? as f64];
            dist.sum(&mut sum);
            let value = (sum[0] / dist.size() as f64) as f32;
            if !value.is_finite() {
                bar.abandon();
                return Err(Error::non_finite(
                    value,
                    format!("at step {step} (epoch {})", epoch + 1),
                    last_checkpoint.as_deref(),
                ));
            }
            loss.backward_into(&scale, &mut grads).map_err(e)?;
            if (it + 1) % s.accum_iter == 0 {
                let params: Vec<Tensor> =
                    opt.groups.iter().flat_map(|g| g.params.clone()).collect();
                dist.average_gradients(&mut grads, &params)?;
                opt.step(&grads).map_err(e)?;
                grads.clear();
            }
            total += value as f64;
            seen += batch.len * dist.size();
            step += 1;
            let Some(metrics) = &mut metrics else {
                continue; // only rank 0 reports
            };
            let img_per_s = seen as f64 / started.elapsed().as_secs_f64();
            let lr = opt.groups.last().map_or(0.0, |g| g.lr);
            metrics.line(
                "train",
                &[("step", step - 1), ("epoch", epoch as u64)],
                &[
                    ("loss", value as f64),
                    ("lr", lr as f64),
                    ("img_per_s", img_per_s),
                ],
            )?;
            bar.set_message(format!(
                "loss {value:.4}  lr {lr:.2e}  {img_per_s:.1} img/s"
            ));
            bar.inc(1);
            if !run.progress && (it + 1) % (iters / 5).max(1) == 0 {
                eprintln!(
                    "epoch {}/{} step {}/{iters}  loss {value:.4}  lr {lr:.2e}  {img_per_s:.1} img/s",
                    epoch + 1,
                    s.epochs,
                    it + 1
                );
            }
        }
        bar.finish_and_clear();
        top1 = evaluate(&vit, &data.test, &normalize, (256, run.workers), dist)?;
        let due = (epoch + 1) % s.save_every == 0 || epoch + 1 == s.epochs;
        if due && dist.size() > 1 {
            dist.check_same("weights", &weights_digest(&vit)?)?;
        }
        if let Some(metrics) = &mut metrics {
            let loss = total / iters as f64;
            let elapsed = started.elapsed().as_secs_f64();
            metrics.line(
                "epoch",
                &[("epoch", epoch as u64)],
                &[("train_loss", loss), ("top1", top1), ("elapsed_s", elapsed)],
            )?;
            metrics.flush()?;
            eprintln!(
                "epoch {}/{}  train loss {loss:.4}  test top-1 {top1:.2}%  {:.0} s",
                epoch + 1,
                s.epochs,
                started.elapsed().as_secs_f64()
            );
            if due {
                save_checkpoint(&run.output, &vit, &opt, s, (epoch + 1, step, top1))?;
            }
        }
        if due {
            last_checkpoint = Some(run.output.join(format!("checkpoint-{}", epoch + 1)));
        }
    }
    if profiling {
        print_profile(&device);
    }
    if !dist.is_main() {
        return Ok(Outcome {
            top1,
            epochs: s.epochs,
            line: String::new(),
        });
    }
    Ok(report(&run.output, "finetune", s.start, top1, s.epochs)?)
}

/// `output/checkpoint-{epoch}/`: `model.safetensors` (timm's names), `config.json` (the
/// classifier's shape), `optimizer.safetensors` and `trainer_state.json`.
fn save_checkpoint(
    output: &Path,
    vit: &VisionTransformer,
    opt: &AdamW,
    s: &Settings,
    (epoch, step, top1): (usize, u64, f64),
) -> Result<PathBuf, String> {
    write_dir_atomically(output, &format!("checkpoint-{epoch}"), |tmp| {
        let e = |e: nn::CheckpointError| e.to_string();
        save_safetensors(&tmp.join("model.safetensors"), &named_parameters(vit), None)
            .map_err(e)?;
        let state = opt.state().map_err(|e| e.to_string())?;
        save_host_safetensors(&tmp.join("optimizer.safetensors"), state.tensors, None)
            .map_err(e)?;
        let c = &vit.config;
        let config = json!({
            "image_size": c.image_size, "patch_size": c.patch_size, "num_channels": c.channels,
            "hidden_size": c.dim, "num_hidden_layers": c.depth, "num_attention_heads": c.heads,
            "mlp_ratio": c.mlp_ratio, "qkv_bias": c.qkv_bias, "layer_norm_eps": c.eps,
            "num_classes": c.classes, "global_pool": c.global_pool, "drop_path": c.drop_path,
        });
        let trainer = json!({"epoch": epoch, "step": step, "optimizer_step": state.step,
                             "top1": top1, "settings": s.to_json()});
        for (name, value) in [("config.json", config), ("trainer_state.json", trainer)] {
            let path = tmp.join(name);
            std::fs::write(&path, serde_json::to_string_pretty(&value).expect("JSON"))
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nn::VitConfig;

    #[test]
    fn layer_wise_decay_follows_the_reference() {
        let device = Device::new().unwrap();
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
        };
        let vit = VisionTransformer::new(config, &mut Init::new(&device, 0)).unwrap();
        let (groups, scales) = param_groups_lrd(&vit, 0.05, 0.5);
        // Layer of every parameter by id, from the groups.
        let mut seen = std::collections::HashMap::new();
        for (g, k) in groups.iter().zip(&scales) {
            for p in &g.params {
                seen.insert(p.id(), (*k, g.weight_decay));
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
