//! `mae linprobe` and `mae finetune` end to end on tiny labelled data: the result line and
//! files, the feature cache, labels from class folders, and clear errors for bad labels.

mod common;
use common::{assert_one_line_error, assert_resume_diverges, mae, mae_with, run_args, stderr};

use std::path::{Path, PathBuf};
use std::process::Output;

use engine::Device;
use mae::MaskedAutoencoder;
use nn::Init;
use serde_json::Value;

fn tmp(name: &str) -> PathBuf {
    common::tmp("downstream", name)
}

/// The last stdout line, parsed.
fn result_line(o: &Output) -> Value {
    let out = String::from_utf8_lossy(&o.stdout);
    serde_json::from_str(out.lines().last().expect("a result line")).unwrap()
}

fn write_idx(path: &Path, dims: &[u32], data: &[u8]) {
    let mut bytes = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        bytes.extend(d.to_be_bytes());
    }
    bytes.extend(data);
    std::fs::write(path, bytes).unwrap();
}

/// Two classes told apart by size: class 0 a small bright square, class 1 a large one.
fn square(class: u8, i: u32) -> Vec<u8> {
    let r = if class == 0 { 3 + i % 3 } else { 9 + i % 3 };
    (0..28u32 * 28)
        .map(|p| {
            let (x, y) = (p % 28, p / 28);
            if x.abs_diff(14) < r && y.abs_diff(13 + i % 3) < r {
                220
            } else {
                15
            }
        })
        .collect()
}

/// IDX Fashion-MNIST-like data (48 train, 16 test images, alternating classes), a tiny
/// config and a checkpoint of it (random weights stand in for pretrained ones).
fn setup(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    for (name, n) in [("train", 48u32), ("t10k", 16)] {
        let labels: Vec<u8> = (0..n).map(|i| (i % 2) as u8).collect();
        let pixels: Vec<u8> = (0..n)
            .flat_map(|i| square(labels[i as usize], i / 2))
            .collect();
        write_idx(
            &data.join(format!("{name}-images-idx3-ubyte")),
            &[n, 28, 28],
            &pixels,
        );
        write_idx(
            &data.join(format!("{name}-labels-idx1-ubyte")),
            &[n],
            &labels,
        );
    }
    let (config, config_path) = common::tiny_config(dir, 2);
    let checkpoint = dir.join("checkpoint");
    let device = Device::new().unwrap();
    let model = MaskedAutoencoder::new(config, &mut Init::new(&device, 1)).unwrap();
    mae::hf::save_pretrained(&model, &checkpoint).unwrap();
    (data, config_path, checkpoint)
}

/// `mae linprobe` on `data` at batch 16, its outputs under `out`, for 20 epochs with 2 of
/// warmup.
fn linprobe(model: &Path, init: &str, pool: &str, data: &Path, out: &Path) -> Output {
    linprobe_with(
        model,
        init,
        pool,
        data,
        out,
        &["--epochs", "20", "--warmup-epochs", "2"],
    )
}

/// [`linprobe`] with other schedule options.
fn linprobe_with(
    model: &Path,
    init: &str,
    pool: &str,
    data: &Path,
    out: &Path,
    schedule: &[&str],
) -> Output {
    let (probe, cache) = (out.join("probe"), out.join("cache"));
    let mut args = vec![
        "linprobe",
        "--model",
        model.to_str().unwrap(),
        "--init",
        init,
        "--pool",
        pool,
        "--data",
        data.to_str().unwrap(),
        "--output",
        probe.to_str().unwrap(),
        "--cache",
        cache.to_str().unwrap(),
        "--batch-size",
        "16",
        "--overwrite",
    ];
    args.extend(schedule);
    mae(&args)
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn linprobe_end_to_end_with_a_shared_feature_cache() {
    let dir = tmp("linprobe");
    let (data, config, checkpoint) = setup(&dir);
    let o = linprobe(&checkpoint, "mae", "cls", &data, &dir);
    assert!(o.status.success(), "{}", stderr(&o));
    let line = result_line(&o);
    assert_eq!(line["task"], "linprobe");
    assert_eq!(line["init"], "mae");
    assert_eq!(line["epochs"], 20);
    let top1 = line["top1"].as_f64().unwrap();
    // The two sizes are easy to tell apart even from random features.
    assert!(top1 >= 75.0, "top-1 {top1}");
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("probe/result.json")).unwrap())
            .unwrap();
    assert_eq!(written, line);
    let metrics = std::fs::read_to_string(dir.join("probe/metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 20);
    let head = nn::read_safetensors(&dir.join("probe/head.safetensors")).unwrap();
    assert_eq!(head["head.1.weight"].0, [2, 32]);
    assert_eq!(head["head.0.running_var"].0, [32]);
    let cached = files(&dir.join("cache"));
    assert_eq!(cached.len(), 2, "train and test features: {cached:?}");

    // A cache file for this key that does not hold such features (here one row short) is
    // named and computed again.
    for file in files(&dir.join("cache")) {
        let path = dir.join("cache").join(file);
        let bytes = std::fs::read(&path).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let meta = meta.metadata().clone();
        let mut t = nn::read_safetensors(&path).unwrap();
        let (shape, values) = t.get_mut("cls").unwrap();
        shape[0] -= 1;
        values.truncate(shape[0] * shape[1]);
        let tensors = t.into_iter().map(|(n, (s, v))| (n, s, v)).collect();
        nn::save_host_safetensors(&path, tensors, meta).unwrap();
    }
    let o = linprobe(&checkpoint, "mae", "cls", &data, &dir);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert_eq!(
        err.matches("computing the features again").count(),
        2,
        "{err}"
    );
    assert_eq!(result_line(&o), line);

    // The other pool reads the same cached features.
    let o = linprobe(&checkpoint, "mae", "avg", &data, &dir);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stderr(&o).matches("features from").count(),
        2,
        "{}",
        stderr(&o)
    );
    assert_eq!(files(&dir.join("cache")), cached);
    assert_eq!(result_line(&o)["init"], "mae");

    // The random baseline from a config: its own features.
    let o = linprobe(&config, "random", "cls", &data, &dir);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(result_line(&o)["init"], "random");
    assert_eq!(files(&dir.join("cache")).len(), 4);
}

#[test]
fn finetune_end_to_end() {
    let dir = tmp("finetune");
    let (data, _, checkpoint) = setup(&dir);
    let out = dir.join("ft");
    let extra = ["--epochs", "2", "--batch-size", "16"];
    let o = mae_with(&run_args("finetune", &checkpoint, &data, &out, &extra));
    assert!(o.status.success(), "{}", stderr(&o));
    let line = result_line(&o);
    assert_eq!(
        (&line["task"], &line["init"], &line["epochs"]),
        (&"finetune".into(), &"mae".into(), &2.into())
    );
    let err = stderr(&o);
    assert_eq!(err.matches("test top-1").count(), 2, "{err}");
    for epoch in ["checkpoint-1", "checkpoint-2"] {
        let names = files(&out.join(epoch));
        assert_eq!(
            names,
            [
                "config.json",
                "manifest.json",
                "model.safetensors",
                "optimizer.safetensors",
                "preprocessor_config.json",
                "trainer_state.json"
            ]
        );
    }
    let weights = nn::read_safetensors(&out.join("checkpoint-2/model.safetensors")).unwrap();
    assert_eq!(weights["head.weight"].0, [2, 32]);
    assert!(weights.contains_key("fc_norm.weight") && !weights.contains_key("norm.weight"));
    assert!(weights.contains_key("blocks.1.attn.qkv.weight"));
    // The fine-tuned encoder moved away from the pretrained one.
    let start = nn::read_safetensors(&checkpoint.join("model.safetensors")).unwrap();
    assert_ne!(
        weights["patch_embed.proj.weight"].1,
        start["vit.embeddings.patch_embeddings.projection.weight"].1
    );
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let epochs: Vec<Value> = metrics
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v.get("top1").is_some())
        .collect();
    assert_eq!(epochs.len(), 2);
    assert_eq!(epochs[1]["top1"], line["top1"]);

    // A dry run measures one step of the same classifier (f16-mixed here) and writes
    // nothing.
    let dry = dir.join("dry");
    let flags = [
        "--batch-size",
        "16",
        "--precision",
        "f16-mixed",
        "--dry-run",
    ];
    let o = mae_with(&run_args("finetune", &checkpoint, &data, &dry, &flags));
    if Device::new().unwrap().info().features.shader_f16 {
        assert!(o.status.success(), "{}", stderr(&o));
        let report = String::from_utf8_lossy(&o.stdout);
        assert!(
            report.starts_with("dry run on ")
                && report.contains(": a 28x28 ViT (2 blocks of 32) classifying 2 classes")
                && report.contains("f16-mixed")
                && report.contains("one step's peak"),
            "{report}"
        );
    } else {
        // As on GL: refused in one line, as a run would be.
        assert_one_line_error(&o, "--precision f16-mixed needs an adapter with SHADER_F16");
    }
    assert!(!dry.exists());

    // Resuming from the first epoch's checkpoint gives the same second epoch, to the byte,
    // without the pretrained directory it started from: the checkpoint holds all it needs.
    std::fs::rename(&checkpoint, dir.join("moved")).unwrap();
    let resumed = dir.join("resumed");
    let o = mae(&[
        "finetune",
        "--resume",
        out.join("checkpoint-1").to_str().unwrap(),
        "--output",
        resumed.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(result_line(&o), line);
    let bytes = |d: &Path| std::fs::read(d.join("checkpoint-2/model.safetensors")).unwrap();
    assert!(bytes(&resumed) == bytes(&out), "resumed weights differ");
    assert!(!resumed.join("checkpoint-1").exists());

    // A diverging run exits as pretraining's does: code 3, the last good checkpoint named
    // and left as it was.
    let diverged = dir.join("diverged");
    assert_resume_diverges("finetune", &out.join("checkpoint-1"), &diverged, None);
    assert!(!diverged.join("checkpoint-2").exists());
}

#[test]
fn a_diverging_probe_exits_with_code_3() {
    let dir = tmp("probe-nan");
    let (data, config, _) = setup(&dir);
    let schedule = ["--epochs", "3", "--blr", "3e38", "--warmup-epochs", "0"];
    let o = linprobe_with(&config, "random", "cls", &data, &dir, &schedule);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(
        err.lines()
            .last()
            .unwrap()
            .starts_with("error: the loss is"),
        "{err}"
    );
}

#[test]
fn labels_from_class_folders() {
    let dir = tmp("folders");
    let (_, config, _) = setup(&dir);
    let root = dir.join("images");
    for (split, n) in [("train", 16u32), ("val", 4)] {
        for (class, name) in ["small", "large"].iter().enumerate() {
            let folder = root.join(split).join(name);
            std::fs::create_dir_all(&folder).unwrap();
            for i in 0..n {
                let img = image::GrayImage::from_raw(28, 28, square(class as u8, i)).unwrap();
                img.save(folder.join(format!("{i}.png"))).unwrap();
            }
        }
    }
    let o = linprobe(&config, "random", "avg", &root, &dir);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("2 classes"), "{}", stderr(&o));
    assert_eq!(result_line(&o)["task"], "linprobe");
}

#[test]
fn bad_labels_and_models_are_clear_errors() {
    let dir = tmp("bad");
    let (data, config, _) = setup(&dir);
    let labels = data.join("t10k-labels-idx1-ubyte");
    let good = std::fs::read(&labels).unwrap();

    // A label file with a wrong magic number.
    let mut corrupt = good.clone();
    corrupt[2] = 9;
    std::fs::write(&labels, &corrupt).unwrap();
    assert_one_line_error(
        &linprobe(&config, "random", "cls", &data, &dir),
        "t10k-labels",
    );

    // Fewer labels than images.
    write_idx(&labels, &[15], &good[8..23]);
    let o = linprobe(&config, "random", "cls", &data, &dir);
    assert_one_line_error(&o, "(16,)");
    let o = mae(&[
        "finetune",
        "--model",
        config.to_str().unwrap(),
        "--init",
        "random",
        "--data",
        data.to_str().unwrap(),
        "--output",
        dir.join("ft").to_str().unwrap(),
    ]);
    assert_one_line_error(&o, "t10k-labels");

    // No labels at all.
    std::fs::remove_file(&labels).unwrap();
    assert_one_line_error(
        &linprobe(&config, "random", "cls", &data, &dir),
        "no labels",
    );

    // One IDX file: no held-out split.
    let single = data.join("train-images-idx3-ubyte");
    assert_one_line_error(
        &linprobe(&config, "random", "cls", &single, &dir),
        "held-out",
    );

    // --init mae needs weights.
    std::fs::write(&labels, &good).unwrap();
    assert_one_line_error(
        &linprobe(&config, "mae", "cls", &data, &dir),
        "--init random",
    );
}

#[test]
fn pretraining_on_labelled_data_reports_knn() {
    let dir = tmp("knn");
    let (data, config, _) = setup(&dir);
    let out = dir.join("pretrain");
    let extra = ["--epochs", "2", "--batch-size", "16", "--knn-every", "1"];
    let o = mae_with(&run_args("pretrain", &config, &data, &out, &extra));
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    // Before the first epoch (the random encoder) and after each.
    assert_eq!(err.matches("k-NN top-1").count(), 3, "{err}");
    let lines: Vec<Value> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &Value| v.get("top1").is_some())
        .collect();
    assert_eq!(
        lines
            .iter()
            .map(|v| v["epoch"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [0, 1, 2]
    );
    assert!(lines
        .iter()
        .all(|v| (0.0..=100.0).contains(&v["top1"].as_f64().unwrap())));
    // Two classes told apart by size: even a random encoder's features separate them.
    assert!(lines[0]["top1"].as_f64().unwrap() >= 75.0, "{lines:?}");
    let events = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("tfevents"))
        .unwrap();
    let knn: usize = common::events::read_events(&events)
        .unwrap()
        .iter()
        .map(|e| e.scalars.iter().filter(|s| s.0 == "knn/top1").count())
        .sum();
    assert_eq!(knn, 3);
}

/// Fine-tuning and probing at another resolution than the pretraining's (42 pixels, a
/// 6x6 grid, from 28 and 4x4, as 448 from 224): the position table is the pretraining's,
/// interpolated as the reference's `interpolate_pos_embed`; the checkpoint says so and
/// resumes with the same table.
#[test]
fn another_resolution_interpolates_the_position_table() {
    let dir = tmp("resolution");
    let (data, _, checkpoint) = setup(&dir);
    let device = Device::new().unwrap();
    let encoder = mae::hf::load_pretrained(&checkpoint, &device).unwrap();
    let dim = encoder.config.dim;
    let vit = mae::classify::classifier(
        encoder,
        mae::classify::Head {
            classes: 2,
            pool: mae::classify::Pool::Avg,
            drop_path: 0.0,
            image_size: Some(42),
        },
        &mut Init::new(&device, 0),
    )
    .unwrap();
    let want = nn::pos_embed::interpolate(&nn::pos_embed::sincos_2d(dim, 4), dim, 4, 6);
    assert_eq!(vit.pos_embed.shape(), [37, dim]);
    assert_eq!(vit.pos_embed.to_vec().unwrap(), want);

    let out = dir.join("ft");
    let extra = ["--epochs", "1", "--batch-size", "16", "--image-size", "42"];
    let o = mae_with(&run_args("finetune", &checkpoint, &data, &out, &extra));
    assert!(o.status.success(), "{}", stderr(&o));
    let config: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("checkpoint-1/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        (
            config["image_size"].as_u64(),
            config["pos_embed_grid"].as_u64()
        ),
        (Some(42), Some(4))
    );
    let o = mae(&[
        "finetune",
        "--resume",
        out.to_str().unwrap(),
        "--epochs",
        "2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));

    let probe = |out: &str, size: &str| {
        let schedule = ["--image-size", size, "--epochs", "2"];
        linprobe_with(&checkpoint, "mae", "cls", &data, &dir.join(out), &schedule)
    };
    let o = probe("probe", "42");
    assert!(o.status.success(), "{}", stderr(&o));
    let o = probe("bad", "40");
    assert_one_line_error(
        &o,
        "--image-size 40: not a multiple of the model's patch size 7",
    );
}
