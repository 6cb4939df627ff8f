//! `mae pretrain` end to end on a tiny config: outputs, checkpoints that `mae forward` and
//! `mae visualize` load, exact resume, a diverging run, and bad input.

mod common;
use common::{assert_one_line_error, assert_resume_diverges, mae, mae_with, run_args, stderr};

use std::path::{Path, PathBuf};
use std::process::Output;

fn tmp(name: &str) -> PathBuf {
    common::tmp("pretrain", name)
}

fn setup(dir: &Path) -> (PathBuf, PathBuf) {
    common::shapes_and_tiny_config(dir)
}

/// The events of the one TensorBoard file in `dir`, CRCs checked.
fn tensorboard_events(dir: &Path) -> Vec<common::events::Event> {
    let files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("tfevents"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    common::events::read_events(&files[0]).unwrap()
}

fn pretrain(config: &Path, data: &Path, out: &Path, extra: &[&str]) -> Output {
    let settings = [
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--limit",
        "32",
        "--blr",
        "1e-2",
    ];
    let mut args = run_args("pretrain", config, data, out, &settings);
    args.extend(["--seed", "3"].iter().chain(extra).map(|a| a.to_string()));
    mae_with(&args)
}

fn losses(metrics: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(metrics)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            for key in ["step", "epoch", "loss", "lr", "img_per_s", "elapsed_s"] {
                assert!(v.get(key).is_some(), "{key} missing from {l}");
            }
            (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap())
        })
        .collect()
}

#[test]
fn pretrain_end_to_end_and_exact_resume() {
    let dir = tmp("e2e");
    let (data, config) = setup(&dir);
    let out = dir.join("run");
    let o = pretrain(&config, &data, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let log = losses(&out.join("metrics.jsonl"));
    assert_eq!(
        log.iter().map(|l| l.0).collect::<Vec<_>>(),
        (0..8).collect::<Vec<_>>()
    );
    assert!(log.iter().all(|l| l.1.is_finite()));
    for file in [
        "checkpoint-1/config.json",
        "checkpoint-1/model.safetensors",
        "checkpoint-1/preprocessor_config.json",
        "checkpoint-1/optimizer.safetensors",
        "checkpoint-1/trainer_state.json",
        "checkpoint-2/model.safetensors",
    ] {
        assert!(out.join(file).is_file(), "{file}");
    }
    for png in ["loss.png", "reconstruction.png"] {
        let img = image::open(out.join(png)).unwrap();
        assert!(img.width() > 100 && img.height() > 100, "{png}");
    }
    // TensorBoard: every step's loss and lr, and a reconstruction picture per epoch.
    let events = tensorboard_events(&out);
    let scalars: Vec<(u64, f32)> = events
        .iter()
        .flat_map(|e| {
            e.scalars
                .iter()
                .filter(|s| s.0 == "train/loss")
                .map(|s| (e.step, s.1))
        })
        .collect();
    assert_eq!(
        scalars,
        log.iter().map(|l| (l.0, l.1 as f32)).collect::<Vec<_>>()
    );
    let pictures: Vec<u64> = events
        .iter()
        .filter(|e| e.images.iter().any(|i| i.0 == "reconstruction"))
        .map(|e| e.step)
        .collect();
    assert_eq!(pictures, [3, 7], "one picture per epoch, at its last step");

    // Resuming after epoch 1 gives the uninterrupted run's epoch 2, bit for bit.
    let resumed = dir.join("resumed");
    let ckpt = out.join("checkpoint-1");
    let o = mae(&[
        "pretrain",
        "--resume",
        ckpt.to_str().unwrap(),
        "--output",
        resumed.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("resuming"));
    assert_eq!(losses(&resumed.join("metrics.jsonl")), log[4..]);
    assert_eq!(
        std::fs::read(resumed.join("checkpoint-2/model.safetensors")).unwrap(),
        std::fs::read(out.join("checkpoint-2/model.safetensors")).unwrap()
    );
    // Resuming in the run's own directory keeps the log's past and replaces its future
    // (--overwrite: its later checkpoint is replaced).
    let o = mae(&[
        "pretrain",
        "--resume",
        ckpt.to_str().unwrap(),
        "--overwrite",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(losses(&out.join("metrics.jsonl")), log);

    // The checkpoint is a model directory for the other commands.
    let model = out.join("checkpoint-2");
    let input = dir.join("input.safetensors");
    let pixels: Vec<u8> = (0..2 * 28 * 28)
        .flat_map(|i| ((i % 7) as f32 * 0.1).to_le_bytes())
        .collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 1, 28, 28], &pixels)
            .unwrap();
    std::fs::write(
        &input,
        safetensors::serialize([("pixel_values", view)], None).unwrap(),
    )
    .unwrap();
    let o = mae(&[
        "forward",
        "--model",
        model.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        dir.join("fwd.safetensors").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let picture = dir.join("vis.png");
    let o = mae(&[
        "visualize",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--count",
        "3",
        "--out",
        picture.to_str().unwrap(),
        "--mask-ratio",
        "0.5",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let img = image::open(&picture).unwrap();
    assert!(img.height() > img.width() / 2, "three rows of four panels");
}

#[test]
fn a_diverging_run_stops_and_keeps_its_checkpoint() {
    let dir = tmp("nan");
    let (data, config) = setup(&dir);
    let out = dir.join("run");
    let o = pretrain(&config, &data, &out, &["--epochs", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The same checkpoint with an absurd learning rate in its settings.
    let ckpt = out.join("checkpoint-1");
    assert_resume_diverges("pretrain", &ckpt, &out, Some(3));
    assert!(!out.join("checkpoint-2").exists());
}

#[test]
fn checkpointed_activations_train_the_same_run() {
    let dir = tmp("checkpointing");
    let (data, config) = setup(&dir);
    let (plain, ckpt) = (dir.join("plain"), dir.join("ckpt"));
    let o = pretrain(&config, &data, &plain, &["--epochs", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let flags = ["--epochs", "1", "--checkpoint-activations"];
    let o = pretrain(&config, &data, &ckpt, &flags);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        losses(&ckpt.join("metrics.jsonl")),
        losses(&plain.join("metrics.jsonl"))
    );
    let weights = |out: &Path| std::fs::read(out.join("checkpoint-1/model.safetensors")).unwrap();
    assert_eq!(weights(&ckpt), weights(&plain), "the same bytes");
}

#[test]
fn bad_input_is_one_line_and_exit_2() {
    let dir = tmp("bad");
    let (data, config) = setup(&dir);
    let out = dir.join("run");
    let cases: [(&[&str], &str); 5] = [
        (&["--data", "/no/such/dir"], "data not found: /no/such/dir"),
        (&["--model", "no_such_preset"], "not a preset"),
        (&["--limit", "4"], "fewer than one batch"),
        (&["--mask-ratio", "1.5"], "mask_ratio must be in [0, 1)"),
        (
            &["--resume", "/no/such/ckpt"],
            "--resume /no/such/ckpt: no such directory",
        ),
    ];
    for (extra, want) in cases {
        let o = pretrain(&config, &data, &out, extra);
        // (--resume also warns that the other flags given here are ignored.)
        assert_one_line_error(&o, want);
    }
    assert!(!Path::new("/no").exists(), "a bad --resume creates nothing");
}

#[test]
fn visualize_a_transformers_directory_with_image_files() {
    // A directory written by transformers' save_pretrained (no preprocessor config: ImageNet
    // normalisation), on a JPEG and a grayscale PNG of other sizes than the model's 16x16.
    let dir = tmp("vis-hf");
    let model = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/rgb_eps12"
    ));
    let jpeg = dir.join("a.jpg");
    image::RgbImage::from_fn(40, 30, |x, y| {
        image::Rgb([(x * 6) as u8, (y * 8) as u8, 90])
    })
    .save(&jpeg)
    .unwrap();
    let png = dir.join("b.png");
    image::GrayImage::from_fn(9, 9, |x, _| image::Luma([(x * 28) as u8]))
        .save(&png)
        .unwrap();
    let out = dir.join("vis.png");
    let o = mae(&[
        "visualize",
        "--model",
        model.to_str().unwrap(),
        "--image",
        jpeg.to_str().unwrap(),
        png.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let img = image::open(&out).unwrap();
    assert!(img.height() > img.width() / 4, "two rows of four panels");
    // A file that is not an image: one line, exit 2.
    let bad = dir.join("bad.png");
    std::fs::write(&bad, "no").unwrap();
    let o = mae(&[
        "visualize",
        "--model",
        model.to_str().unwrap(),
        "--image",
        bad.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("bad.png"));
}
