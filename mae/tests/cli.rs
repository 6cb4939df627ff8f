//! `mae forward` end to end, its exit code 2 on bad input, and save_pretrained round trips.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use engine::{Device, Tensor};
use mae::hf::{load_pretrained, save_pretrained};
use nn::{named_parameters, read_safetensors, Ctx};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures")).join(name)
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mae-cli-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Run `mae forward --model M --input I --output O` with extra arguments.
fn forward(model: &Path, input: &Path, output: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "forward",
        "--model",
        model.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ];
    args.extend(extra);
    mae_within_a_minute(&args)
}

fn write_input(path: &Path, tensors: &[(&str, Vec<usize>, Vec<f32>)]) {
    let dev = Device::shared().unwrap();
    let t: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, s, v)| (n.to_string(), Tensor::from_slice(&dev, v, s).unwrap()))
        .collect();
    nn::save_safetensors(path, &t, None).unwrap();
}

#[test]
fn forward_writes_outputs_and_gradients() {
    let out = tmp("out.safetensors");
    let model = fixture("rgb_eps12");
    let input = model.join("io.safetensors");
    let run = forward(&model, &input, &out, &["--grads"]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let got = read_safetensors(&out);
    // ids_restore is written as i64, which read_safetensors refuses: read the raw file.
    assert!(got.is_err());
    let bytes = std::fs::read(&out).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let io = read_safetensors(&input).unwrap();
    let loss = f32::from_le_bytes(file.tensor("loss").unwrap().data().try_into().unwrap());
    assert!((loss - io["loss"].1[0]).abs() <= 1e-5 * io["loss"].1[0].abs());
    let ids = file.tensor("ids_restore").unwrap();
    assert_eq!(ids.dtype(), safetensors::Dtype::I64);
    let ids: Vec<f32> = ids
        .data()
        .chunks(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f32)
        .collect();
    assert_eq!(ids, io["ids_restore"].1);
    assert!(file
        .tensor("grad.vit.encoder.layer.0.attention.attention.query.weight")
        .is_ok());
    assert!(file
        .tensor("grad.decoder.decoder_layers.0.output.dense.bias")
        .is_ok());
    assert!(file.tensor("logits").is_ok() && file.tensor("mask").is_ok());
}

#[test]
fn bad_input_exits_with_code_2_and_one_line() {
    let model = fixture("rgb_eps12");
    let out = tmp("never.safetensors");
    let check = |input: &Path, model: &Path, expect: &str| {
        let run = forward(model, input, &out, &[]);
        let err = String::from_utf8_lossy(&run.stderr).to_string();
        assert_eq!(run.status.code(), Some(2), "{err}");
        let lines: Vec<&str> = err
            .lines()
            .filter(|l| !l.contains("XDG_RUNTIME_DIR"))
            .collect();
        assert_eq!(lines.len(), 1, "{err}");
        assert!(lines[0].contains(expect), "{err}");
    };
    let no_pixels = tmp("no-pixels.safetensors");
    write_input(&no_pixels, &[("noise", vec![2, 16], vec![0.5; 32])]);
    check(&no_pixels, &model, "no tensor named pixel_values");
    let wrong = tmp("wrong.safetensors");
    write_input(
        &wrong,
        &[("pixel_values", vec![1, 1, 16, 16], vec![0.0; 256])],
    );
    check(&wrong, &model, "pixel_values has shape [1, 1, 16, 16]");
    let bad_noise = tmp("bad-noise.safetensors");
    write_input(
        &bad_noise,
        &[
            ("pixel_values", vec![1, 3, 16, 16], vec![0.0; 768]),
            ("noise", vec![1, 5], vec![0.0; 5]),
        ],
    );
    check(&bad_noise, &model, "noise has shape [1, 5]");
    let bad_model = tmp("bad-model");
    std::fs::create_dir_all(&bad_model).unwrap();
    std::fs::write(bad_model.join("config.json"), r#"{"hidden_act": "relu"}"#).unwrap();
    check(&wrong, &bad_model, "hidden_act \"relu\" is not supported");
    check(&wrong, &tmp("no-such-model"), "config.json");
}

#[test]
fn forward_without_noise_uses_the_seed() {
    let model = fixture("gray_normpix_eps6");
    let input = tmp("pixels-only.safetensors");
    write_input(
        &input,
        &[(
            "pixel_values",
            vec![1, 1, 12, 12],
            (0..144).map(|i| i as f32 / 144.0).collect(),
        )],
    );
    let mask_for = |seed: &str, name: &str| {
        let out = tmp(name);
        let run = forward(&model, &input, &out, &["--seed", seed]);
        assert!(run.status.success());
        let bytes = std::fs::read(&out).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let v: Vec<u8> = file.tensor("mask").unwrap().data().to_vec();
        v
    };
    assert_eq!(
        mask_for("3", "a.safetensors"),
        mask_for("3", "b.safetensors")
    );
    assert_ne!(
        mask_for("3", "a.safetensors"),
        mask_for("4", "c.safetensors")
    );
}

#[test]
fn save_pretrained_round_trips() {
    let dev = Device::shared().unwrap();
    let model = load_pretrained(&fixture("rgb_eps12"), &dev).unwrap();
    let dir = tmp("saved-model");
    save_pretrained(&model, &dir).unwrap();
    let again = load_pretrained(&dir, &dev).unwrap();
    let values = |m: &mae::MaskedAutoencoder| -> Vec<(String, Vec<f32>)> {
        named_parameters(m)
            .into_iter()
            .map(|(n, t)| (n, t.to_vec().unwrap()))
            .collect()
    };
    assert_eq!(values(&model), values(&again));
    let io = read_safetensors(&fixture("rgb_eps12").join("io.safetensors")).unwrap();
    let t = |k: &str| Tensor::from_slice(&dev, &io[k].1, &io[k].0).unwrap();
    let a = model
        .forward(&t("pixel_values"), 0.75, &t("noise"), &mut Ctx::eval())
        .unwrap()
        .loss
        .item()
        .unwrap();
    let b = again
        .forward(&t("pixel_values"), 0.75, &t("noise"), &mut Ctx::eval())
        .unwrap()
        .loss
        .item()
        .unwrap();
    assert_eq!(a, b);
    let file = read_safetensors(&dir.join("model.safetensors")).unwrap();
    assert!(file.contains_key("decoder.decoder_layers.0.attention.attention.query.weight"));
    assert!(file.contains_key("vit.embeddings.position_embeddings"));
}

/// Run `mae` with `args`, killed (and the test failed) if it takes longer than a minute.
fn mae_within_a_minute(args: &[&str]) -> std::process::Output {
    common::output_within(Command::new(env!("CARGO_BIN_EXE_mae")).args(args), 60)
}

#[test]
fn lying_configs_are_refused_before_anything_is_built() {
    let fixture = fixture("rgb_eps12");
    let good: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("config.json")).unwrap())
            .unwrap();
    let input = fixture.join("io.safetensors");
    let out = tmp("lying.safetensors");
    let big = serde_json::Value::from(1_000_000_000u64);
    let cases: [(&[(&str, serde_json::Value)], &str); 6] = [
        (
            &[("num_hidden_layers", big.clone())],
            "num_hidden_layers is 1000000000, more than 1024",
        ),
        (
            &[("num_hidden_layers", 3.into())],
            "num_hidden_layers is 3, but model.safetensors has 2",
        ),
        (
            &[("decoder_num_hidden_layers", big.clone())],
            "decoder_num_hidden_layers is 1000000000",
        ),
        (
            &[
                ("decoder_hidden_size", big.clone()),
                ("decoder_intermediate_size", 4_000_000_000u64.into()),
            ],
            "must be at most 16384",
        ),
        (
            &[("image_size", 32.into())],
            "position_embeddings as [1, 65, 16]",
        ),
        (
            &[("num_channels", 1.into())],
            "projection.weight as [16, 1, 4, 4]",
        ),
    ];
    for (i, (fields, needle)) in cases.into_iter().enumerate() {
        let field = fields[0].0;
        let dir = tmp(&format!("lying-{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(
            fixture.join("model.safetensors"),
            dir.join("model.safetensors"),
        )
        .unwrap();
        let mut config = good.clone();
        for (f, v) in fields {
            config[*f] = v.clone();
        }
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        let run = forward(&dir, &input, &out, &[]);
        let err = String::from_utf8_lossy(&run.stderr).to_string();
        assert_eq!(run.status.code(), Some(2), "{field}: {err}");
        let line = err
            .lines()
            .rfind(|l| l.starts_with("error: ") && !l.contains("XDG_RUNTIME_DIR"))
            .unwrap_or_default();
        assert!(
            line.contains("config.json") && line.contains(needle),
            "{field}: {err}"
        );
    }

    // A config.json that is not JSON is named as such, not as a bad weights file.
    let dir = tmp("lying-not-json");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        fixture.join("model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    std::fs::write(dir.join("config.json"), "{\"hidden_size\": 16,").unwrap();
    let run = forward(&dir, &input, &out, &[]);
    let err = String::from_utf8_lossy(&run.stderr).to_string();
    assert_eq!(run.status.code(), Some(2), "{err}");
    assert!(err.contains("config.json: not JSON"), "{err}");
    assert!(!err.contains("safetensors"), "{err}");

    // Without weights the bounds alone stop it: a fresh pretraining from the config.
    let mut config = good.clone();
    config["num_hidden_layers"] = 1_000_000_000.into();
    let path = tmp("lying-fresh.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let run = mae_within_a_minute(&[
        "pretrain",
        "--model",
        path.to_str().unwrap(),
        "--output",
        tmp("lying-run").to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&run.stderr).to_string();
    assert_eq!(run.status.code(), Some(2), "{err}");
    assert!(
        err.contains("lying-fresh.json") && err.contains("more than 1024"),
        "{err}"
    );
}
