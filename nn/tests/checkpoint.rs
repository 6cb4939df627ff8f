//! Checkpoints: round trip, strict loading, half-precision files, hostile files, atomic save.

use std::path::{Path, PathBuf};

use engine::{Device, Tensor};
use nn::{
    load_safetensors, named_parameters, read_safetensors, save_safetensors, Block, CheckpointError,
    Init, Module,
};
use safetensors::tensor::{Dtype, TensorView};

fn dev() -> Device {
    Device::shared().unwrap()
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nn-checkpoint-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn block(seed: u64) -> Block {
    Block::new(8, 2, 4.0, true, 1e-6, &mut Init::new(&dev(), seed)).unwrap()
}

fn values(m: &dyn Module) -> Vec<(String, Vec<f32>)> {
    named_parameters(m)
        .into_iter()
        .map(|(n, t)| (n, t.to_vec().unwrap()))
        .collect()
}

#[test]
fn round_trip_restores_every_parameter() {
    let path = tmp("block.safetensors");
    let a = block(1);
    save_safetensors(&path, &named_parameters(&a), None).unwrap();
    let mut b = block(2);
    assert_ne!(values(&a), values(&b));
    load_safetensors(&path, &mut b).unwrap();
    assert_eq!(values(&a), values(&b));
    assert!(named_parameters(&b).iter().all(|(_, t)| t.is_tracked()));
    let names: Vec<String> = named_parameters(&b).into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names[..4],
        [
            "norm1.weight",
            "norm1.bias",
            "attn.qkv.weight",
            "attn.qkv.bias"
        ]
    );
}

#[test]
fn strict_loading_lists_every_problem_and_changes_nothing() {
    let path = tmp("mismatch.safetensors");
    let a = block(1);
    let mut tensors = named_parameters(&a);
    tensors.retain(|(n, _)| n != "mlp.fc2.bias");
    tensors.push(("extra.weight".into(), Tensor::zeros(&dev(), &[2]).unwrap()));
    let i = tensors
        .iter()
        .position(|(n, _)| n == "norm2.weight")
        .unwrap();
    tensors[i].1 = Tensor::zeros(&dev(), &[9]).unwrap();
    save_safetensors(&path, &tensors, None).unwrap();
    let mut b = block(2);
    let before = values(&b);
    let e = load_safetensors(&path, &mut b).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, CheckpointError::Mismatch { .. }));
    assert!(msg.contains("missing [mlp.fc2.bias]"), "{msg}");
    assert!(msg.contains("unexpected [extra.weight]"), "{msg}");
    assert!(msg.contains("norm2.weight: file [9] vs model [8]"), "{msg}");
    assert_eq!(values(&b), before, "a failed load changes nothing");
}

fn write_raw(path: &Path, tensors: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)>) {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.to_string(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let bytes = safetensors::serialize(views, None).unwrap();
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn half_precision_files_are_converted() {
    let path = tmp("half.safetensors");
    let vals = [1.5f32, -2.25, 0.0, 65504.0];
    let f16: Vec<u8> = vals
        .iter()
        .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
        .collect();
    let bf16: Vec<u8> = vals
        .iter()
        .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
        .collect();
    write_raw(
        &path,
        vec![
            ("a", Dtype::F16, vec![2, 2], f16),
            ("b", Dtype::BF16, vec![4], bf16),
        ],
    );
    let m = read_safetensors(&path).unwrap();
    assert_eq!(m["a"], (vec![2, 2], vals.to_vec()));
    assert_eq!(m["b"].1[..3], vals[..3]);
    let ints = tmp("ints.safetensors");
    write_raw(
        &ints,
        vec![("i", Dtype::I64, vec![1], 7i64.to_le_bytes().to_vec())],
    );
    let e = read_safetensors(&ints).unwrap_err().to_string();
    assert!(e.contains("I64 is not supported"), "{e}");
}

#[test]
fn corrupt_and_hostile_files_are_errors() {
    let good = tmp("good.safetensors");
    save_safetensors(&good, &named_parameters(&block(1)), None).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + header_len])
        .unwrap()
        .to_string();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("truncated", bytes[..bytes.len() / 2].to_vec()),
        (
            "huge header length",
            [u64::MAX.to_le_bytes().to_vec(), bytes[8..].to_vec()].concat(),
        ),
        (
            "header longer than file",
            [
                (bytes.len() as u64).to_le_bytes().to_vec(),
                bytes[8..].to_vec(),
            ]
            .concat(),
        ),
        (
            "garbage header",
            [8u64.to_le_bytes().to_vec(), b"{not json".to_vec()].concat(),
        ),
        ("offsets out of range", {
            let h = r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,1000000]}}"#;
            [
                (h.len() as u64).to_le_bytes().to_vec(),
                h.as_bytes().to_vec(),
                vec![0; 8],
            ]
            .concat()
        }),
        ("absurd shape", {
            let h = r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,8]}}"#;
            [
                (h.len() as u64).to_le_bytes().to_vec(),
                h.as_bytes().to_vec(),
                vec![0; 8],
            ]
            .concat()
        }),
    ];
    assert!(header.contains("norm1.weight"));
    for (what, data) in cases {
        let path = tmp(&format!("bad-{}.safetensors", what.replace(' ', "-")));
        std::fs::write(&path, data).unwrap();
        let e = read_safetensors(&path)
            .err()
            .unwrap_or_else(|| panic!("{what} was accepted"));
        assert!(matches!(e, CheckpointError::Format(..)), "{what}: {e}");
        let mut b = block(3);
        assert!(load_safetensors(&path, &mut b).is_err(), "{what}");
    }
    let e = read_safetensors(&tmp("does-not-exist.safetensors")).unwrap_err();
    assert!(matches!(e, CheckpointError::Io(..)), "{e}");
    // A FIFO is refused, not waited on for a writer that never comes.
    let fifo = tmp("fifo.safetensors");
    let _ = std::fs::remove_file(&fifo);
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    assert!(made.is_ok_and(|s| s.success()));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        tx.send(
            read_safetensors(&fifo)
                .map(|_| ())
                .map_err(|e| e.to_string()),
        )
    });
    let read = rx.recv_timeout(std::time::Duration::from_secs(10));
    let e = read.expect("a FIFO is refused at once").unwrap_err();
    assert!(e.ends_with("not a regular file"), "{e}");
}

/// Child side of the kill test: save large checkpoints to the given path forever.
#[test]
fn child_saves_in_a_loop() {
    let Ok(path) = std::env::var("NN_TEST_SAVE_LOOP") else {
        return;
    };
    let big = Tensor::rand(&dev(), &[4_000_000], 7).unwrap();
    for i in 0.. {
        let t = vec![
            ("big".to_string(), big.clone()),
            (
                "step".to_string(),
                Tensor::full(&dev(), &[1], i as f32).unwrap(),
            ),
        ];
        save_safetensors(Path::new(&path), &t, None).unwrap();
    }
}

#[test]
fn a_process_killed_mid_save_leaves_a_valid_checkpoint() {
    let path = tmp("killed.safetensors");
    let small = vec![(
        "step".to_string(),
        Tensor::full(&dev(), &[1], -1.0).unwrap(),
    )];
    save_safetensors(&path, &small, None).unwrap();
    let mut saw_child_save = false;
    for delay_ms in [300u64, 700, 1100] {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_saves_in_a_loop",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("NN_TEST_SAVE_LOOP", &path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        child.kill().unwrap();
        child.wait().unwrap();
        // Whatever instant the kill came, the file is a complete checkpoint.
        let m = read_safetensors(&path).unwrap();
        assert!(m.contains_key("step"));
        if let Some((shape, values)) = m.get("big") {
            assert_eq!(shape, &[4_000_000]);
            assert_eq!(values.len(), 4_000_000);
            saw_child_save = true;
        }
    }
    // The child did write checkpoints (a kill before its first save would prove nothing);
    // it may leave its temporary file behind, never a broken target.
    assert!(saw_child_save, "the child process never completed a save");
}

#[test]
fn loading_after_the_optimizer_is_built_keeps_the_model_trained() {
    // The order that used to train nothing: optimizer first, then the weights.
    let path = tmp("before-optimizer.safetensors");
    let source = block(1);
    save_safetensors(&path, &named_parameters(&source), None).unwrap();
    let x = Tensor::randn(&dev(), &[2, 3, 8], 5).unwrap();
    let train = |m: &Block, opt: &mut engine::AdamW| {
        let loss = m
            .forward(&x, &mut nn::Ctx::eval())
            .unwrap()
            .mean_all()
            .unwrap();
        opt.step(&loss.backward().unwrap()).unwrap();
    };
    let adamw = |m: &Block| {
        let params = named_parameters(m).into_iter().map(|(_, t)| t).collect();
        engine::AdamW::new(
            vec![engine::ParamGroup::new(params, 0.1, 0.0)],
            (0.9, 0.999),
            1e-8,
        )
        .unwrap()
    };

    let mut late = block(2);
    let ids: Vec<_> = named_parameters(&late)
        .iter()
        .map(|(_, t)| t.id())
        .collect();
    let mut opt = adamw(&late);
    load_safetensors(&path, &mut late).unwrap();
    let after: Vec<_> = named_parameters(&late)
        .iter()
        .map(|(_, t)| t.id())
        .collect();
    assert_eq!(ids, after, "loading keeps the parameter tensors");
    train(&late, &mut opt);

    let mut early = block(3);
    load_safetensors(&path, &mut early).unwrap();
    let mut opt = adamw(&early);
    train(&early, &mut opt);

    assert_ne!(
        values(&late),
        values(&source),
        "the step changed the loaded weights"
    );
    assert_eq!(values(&late), values(&early), "either order, the same step");
}
