//! No panic on any input and no hang on hostile files: every value that enters from outside
//! (command line, environment, config, preprocessor config, trainer state, optimizer state,
//! IDX headers, image files, safetensors headers) is checked where it enters, in one line
//! with exit code 2; a bug is one line and exit code 1; links, gzip bombs, huge images,
//! huge files and FIFOs are refused or walked once.

mod common;
use common::{assert_one_line_error, stderr};

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use mae::data::{decode, DataError, Dataset, Split};

fn tmp(name: &str) -> PathBuf {
    common::tmp("hostile", name)
}

fn mae_env(args: &[String], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mae"));
    cmd.args(args).envs(env.iter().copied());
    common::output_within(&mut cmd, 120)
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}

/// An IDX image file of `n` images of `h` x `w`.
fn idx(path: &Path, (n, h, w): (u32, u32, u32)) {
    let mut bytes = vec![0, 0, 8, 3];
    for d in [n, h, w] {
        bytes.extend(d.to_be_bytes());
    }
    bytes.resize(bytes.len() + (n * h * w) as usize, 7);
    std::fs::write(path, bytes).unwrap();
}

/// A checkpoint (edited by `edit`, then sealed again as a complete checkpoint would be)
/// resumed: what it holds is checked as it is read.
fn resume_edited(base: &Path, dir: &Path, name: &str, edit: impl FnOnce(&Path)) -> Output {
    let run = dir.join(name);
    common::copy_dir(base, &run);
    let ckpt = run.join("checkpoint-1");
    edit(&ckpt);
    mae::run::seal(&ckpt).unwrap();
    let args = [
        "pretrain",
        "--resume",
        ckpt.to_str().unwrap(),
        "--epochs",
        "2",
    ];
    mae_env(&args.map(String::from), &[])
}

#[test]
fn bad_values_from_every_source_are_one_line_and_exit_2() {
    let dir = tmp("values");
    let (data, config) = common::shapes_and_tiny_config(&dir);
    let base = dir.join("base");
    let run = |extra: &[&str]| {
        let settings = ["--epochs", "1", "--batch-size", "8", "--knn-every", "0"];
        let mut args = common::run_args("pretrain", &config, &data, &dir.join("run"), &settings);
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let o = mae_env(
        &[
            run(&[]),
            vec!["--output".into(), base.display().to_string()],
        ]
        .concat(),
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));

    // The command line and the environment.
    for (extra, env, needle) in [
        (
            vec!["--blr", "nan"],
            vec![],
            "invalid value 'nan' for '--blr <BLR>': must be a finite number",
        ),
        (
            vec!["--warmup-epochs", "inf"],
            vec![],
            "'--warmup-epochs <WARMUP_EPOCHS>': must be a finite number",
        ),
        (
            vec!["--batch-size", "many"],
            vec![],
            "invalid value 'many' for '--batch-size",
        ),
        (
            vec!["--outptu", "x"],
            vec![],
            "unexpected argument '--outptu' found; tip: a similar argument exists: '--output'",
        ),
        (
            vec![],
            vec![("ENGINE_ATTENTION", "fast")],
            "ENGINE_ATTENTION=\"fast\": expected rows or tiled",
        ),
        (
            vec![],
            vec![("ENGINE_PROFILE", "yes")],
            "ENGINE_PROFILE=\"yes\": expected 0 or 1",
        ),
        (
            vec![],
            vec![("ENGINE_MEMORY_LIMIT", "lots")],
            "ENGINE_MEMORY_LIMIT=\"lots\"",
        ),
    ] {
        let o = mae_env(&run(&extra), &env);
        assert_one_line_error(&o, needle);
    }

    // config.json.
    let zero = dir.join("zero.json");
    std::fs::copy(&config, &zero).unwrap();
    edit_json(&zero, |c| c["image_size"] = 0.into());
    let o = mae_env(&run(&["--model", zero.to_str().unwrap()]), &[]);
    assert_one_line_error(
        &o,
        "image_size 0 is not a positive multiple of patch_size 7",
    );
    edit_json(&zero, |c| c["image_size"] = serde_json::json!([28, 56]));
    let o = mae_env(&run(&["--model", zero.to_str().unwrap()]), &[]);
    assert_one_line_error(&o, "image_size [28,56]: only square images and patches");

    // IDX headers.
    let flat = dir.join("flat-idx");
    idx(&flat, (4, 28, 0));
    let o = mae_env(&run(&["--data", flat.to_str().unwrap()]), &[]);
    assert_one_line_error(&o, "images of 28x0 pixels");

    // A channel count the data cannot give is refused before training.
    let folder = dir.join("folder");
    std::fs::create_dir_all(&folder).unwrap();
    for i in 0..8u8 {
        let img = image::GrayImage::from_pixel(28, 28, image::Luma([i * 30]));
        img.save(folder.join(format!("{i}.png"))).unwrap();
    }
    let four = dir.join("four.json");
    std::fs::copy(&config, &four).unwrap();
    edit_json(&four, |c| c["num_channels"] = 4.into());
    let o = mae_env(
        &run(&[
            "--model",
            four.to_str().unwrap(),
            "--data",
            folder.to_str().unwrap(),
        ]),
        &[],
    );
    assert_one_line_error(
        &o,
        "the model takes 4 channels; these images give 1 (gray) or 3 (RGB)",
    );

    // trainer_state.json and optimizer.safetensors of a checkpoint.
    let o = resume_edited(&base, &dir, "off-step", |c| {
        edit_json(&c.join("trainer_state.json"), |s| s["step"] = 12.into())
    });
    assert_one_line_error(&o, "step 12 is not a step boundary of epoch 2");
    let o = resume_edited(&base, &dir, "scale", |c| {
        edit_json(&c.join("trainer_state.json"), |s| {
            s["loss_scaler"] = serde_json::json!({"scale": -1.0, "growth_tracker": 0})
        })
    });
    assert_one_line_error(&o, "the loss scale -1 is not a positive number");
    let o = resume_edited(&base, &dir, "moments", |c| {
        let path = c.join("optimizer.safetensors");
        let mut state = nn::read_safetensors(&path).unwrap();
        state.retain(|name, _| !name.starts_with("0.0."));
        let tensors = state.into_iter().map(|(n, (s, v))| (n, s, v)).collect();
        nn::save_host_safetensors(&path, tensors, None).unwrap();
    });
    assert_one_line_error(
        &o,
        "optimizer.safetensors: load_state: 0.0: 0 of its 2 state tensors",
    );

    // preprocessor_config.json and safetensors shapes of a model directory.
    let model = |name: &str, edit: &dyn Fn(&Path)| {
        let m = dir.join(name);
        common::copy_dir(&base.join("checkpoint-1"), &m);
        edit(&m);
        let picture = dir.join("v.png");
        let args = [
            "visualize",
            "--model",
            m.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--out",
            picture.to_str().unwrap(),
        ];
        mae_env(&args.map(String::from), &[])
    };
    let o = model("std", &|m| {
        edit_json(&m.join("preprocessor_config.json"), |p| {
            p["image_std"] = serde_json::json!([0.0])
        })
    });
    assert_one_line_error(&o, "preprocessor_config.json: image_std 0 must be positive");
    let o = model("mean", &|m| {
        edit_json(&m.join("preprocessor_config.json"), |p| {
            p["image_mean"] = serde_json::json!([0.5, 0.5, 0.5])
        })
    });
    assert_one_line_error(&o, "image_mean has 3 values for a model of 1 channels");
    let o = model("scalar", &|m| {
        let path = m.join("model.safetensors");
        let mut w = nn::read_safetensors(&path).unwrap();
        let q = "vit.encoder.layer.0.attention.attention.query.weight".to_string();
        w.insert(q, (vec![], vec![1.0]));
        let tensors = w.into_iter().map(|(n, (s, v))| (n, s, v)).collect();
        nn::save_host_safetensors(&path, tensors, None).unwrap();
    });
    assert_one_line_error(&o, "q, k and v incomplete, scalars or of different shapes");
}

/// The child side of [`a_panic_is_one_line_and_exit_1`]: with the hook, panic.
#[test]
fn child_panics() {
    if std::env::var_os("MAE_TEST_PANIC_CHILD").is_none() {
        return;
    }
    mae::dist::end_the_job_on_panic();
    let empty: Vec<u32> = Vec::new();
    let _ = empty[std::hint::black_box(1)];
}

#[test]
fn a_panic_is_one_line_and_exit_1() {
    let o = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_panics",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("MAE_TEST_PANIC_CHILD", "1")
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0]
            .starts_with("error: internal error (a bug; please report it): index out of bounds")
            && lines[0].contains("hostile.rs"),
        "{err}"
    );
}

/// `f` on a thread, failing the test when it takes more than `seconds`.
fn within<T: Send + 'static>(seconds: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(f()));
    rx.recv_timeout(Duration::from_secs(seconds))
        .expect("it ends in time")
}

/// A PNG whose header says `w` x `h` gray pixels, followed by a few bytes of image data.
fn png_header(path: &Path, (w, h): (u32, u32)) {
    let chunk = |kind: &[u8], data: &[u8]| {
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        [
            &(data.len() as u32).to_be_bytes()[..],
            kind,
            data,
            &crc.sum().to_be_bytes(),
        ]
        .concat()
    };
    let ihdr = [&w.to_be_bytes()[..], &h.to_be_bytes(), &[8, 0, 0, 0, 0]].concat();
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut z, &[0u8; 4096]).unwrap();
    let png = [
        &b"\x89PNG\r\n\x1a\n"[..],
        &chunk(b"IHDR", &ihdr),
        &chunk(b"IDAT", &z.finish().unwrap()),
        &chunk(b"IEND", &[]),
    ]
    .concat();
    std::fs::write(path, png).unwrap();
}

#[test]
fn hostile_files_are_refused_without_hanging_or_filling_memory() {
    let dir = tmp("files");

    // Two links to the folder itself: each directory is walked once.
    let folder = dir.join("loops");
    std::fs::create_dir_all(&folder).unwrap();
    image::GrayImage::new(4, 4)
        .save(folder.join("a.png"))
        .unwrap();
    for link in ["x", "y"] {
        std::os::unix::fs::symlink(".", folder.join(link)).unwrap();
    }
    let d = within(20, move || {
        Dataset::open(&folder, Split::Train).map(|d| d.len())
    });
    assert_eq!(d.unwrap(), 1);

    // A gzip bomb: the header promises one 28x28 image, the stream holds 256 MiB.
    let bomb = dir.join("bomb-idx3-ubyte.gz");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut header = vec![0, 0, 8, 3];
    for d in [1u32, 28, 28] {
        header.extend(d.to_be_bytes());
    }
    std::io::Write::write_all(&mut gz, &header).unwrap();
    for _ in 0..256 {
        std::io::Write::write_all(&mut gz, &[0u8; 1 << 20]).unwrap();
    }
    std::fs::write(&bomb, gz.finish().unwrap()).unwrap();
    let e = mae::data::read_idx(&bomb).unwrap_err().to_string();
    assert!(
        e.ends_with("sizes [1, 28, 28] need 784 bytes of data, the file has more"),
        "{e}"
    );
    // A header that promises more than an IDX file may hold.
    let mut huge = vec![0, 0, 8, 3];
    for d in [u32::MAX, 28, 28] {
        huge.extend(d.to_be_bytes());
    }
    let path = dir.join("huge-idx3-ubyte");
    std::fs::write(&path, &huge).unwrap();
    let e = mae::data::read_idx(&path).unwrap_err().to_string();
    assert!(e.contains("describe more than 4294967296 bytes"), "{e}");

    // A 23000 x 23000 gray PNG of a few bytes: refused from its header.
    let big = dir.join("big.png");
    png_header(&big, (23000, 23000));
    let e = within(20, move || decode(&big, 1).map(|_| ())).unwrap_err();
    assert!(matches!(e, DataError::Corrupt(..)), "{e}");
    assert!(
        e.to_string()
            .contains("23000x23000 pixels take 2116000000 bytes as f32"),
        "{e}"
    );

    // A file larger than any image: refused from its size.
    let sparse = dir.join("sparse.png");
    std::fs::File::create(&sparse)
        .unwrap()
        .set_len(300 << 20)
        .unwrap();
    let e = decode(&sparse, 1).unwrap_err().to_string();
    assert!(
        e.contains("314572800 bytes, more than the 268435456"),
        "{e}"
    );

    // A FIFO among the images: refused, not waited on.
    let fifo = dir.join("fifo.png");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let e = within(20, move || decode(&fifo, 1).map(|_| ())).unwrap_err();
    assert!(e.to_string().ends_with("not a regular file"), "{e}");
}
