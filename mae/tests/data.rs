//! Loaders on tiny generated files (corrupt and empty ones among them), augmentation
//! properties, the loader's determinism, and the learning-rate schedule.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mae::data::{
    read_idx, resize_bicubic, Augment, DataError, Dataset, Image, Loader, Normalize, Plan, Rng,
    Skipped, Split,
};

fn tmp(name: &str) -> PathBuf {
    common::tmp("data", name)
}

/// An IDX file of unsigned bytes with the given sizes, gzipped or not.
fn write_idx(path: &Path, dims: &[u32], data: &[u8], gzip: bool) {
    let mut bytes = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        bytes.extend(d.to_be_bytes());
    }
    bytes.extend(data);
    let mut f = std::fs::File::create(path).unwrap();
    if gzip {
        let mut gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
        gz.write_all(&bytes).unwrap();
        gz.finish().unwrap();
    } else {
        f.write_all(&bytes).unwrap();
    }
}

#[test]
fn idx_directories_plain_and_gzipped() {
    for gzip in [false, true] {
        let dir = tmp(&format!("idx-{gzip}"));
        let ext = if gzip { ".gz" } else { "" };
        let pixels: Vec<u8> = (0..3 * 4 * 5).map(|i| (i * 4) as u8).collect();
        write_idx(
            &dir.join(format!("train-images-idx3-ubyte{ext}")),
            &[3, 4, 5],
            &pixels,
            gzip,
        );
        write_idx(
            &dir.join(format!("train-labels-idx1-ubyte{ext}")),
            &[3],
            &[7, 0, 2],
            gzip,
        );
        let d = Dataset::open(&dir, Split::Train).unwrap();
        assert_eq!(d.len(), 3);
        assert_eq!(d.labels.as_deref(), Some(&[7, 0, 2][..]));
        assert_eq!(d.classes.len(), 8);
        let img = d.get(1, 1).unwrap();
        assert_eq!((img.channels, img.height, img.width), (1, 4, 5));
        assert_eq!(img.data[0], 80.0 / 255.0);
        // Grayscale repeated to RGB.
        let rgb = d.get(1, 3).unwrap();
        assert_eq!(rgb.data[..20], rgb.data[40..]);
        // No t10k files: the test split of this directory is an error that says so.
        assert!(Dataset::open(&dir, Split::Test).is_err());
        // The dataset's own statistics for grayscale.
        let n = d.normalize(1, Default::default(), 0);
        let mean = pixels.iter().map(|&v| v as f32 / 255.0).sum::<f32>() / 60.0;
        assert!((n.mean[0] - mean).abs() < 1e-5);
    }
}

#[test]
fn corrupt_idx_and_labels_are_clear_errors() {
    let dir = tmp("idx-bad");
    let cases: [(&str, Vec<u8>); 4] = [
        ("empty", vec![]),
        ("magic", vec![1, 2, 8, 1, 0, 0, 0, 1, 5]),
        (
            "truncated",
            vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2, 1, 2, 3],
        ),
        ("float", vec![0, 0, 0x0d, 1, 0, 0, 0, 1, 0, 0, 0, 0]),
    ];
    for (name, bytes) in cases {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        let err = read_idx(&path).unwrap_err().to_string();
        assert!(err.contains(name), "{name}: {err}");
        assert!(!err.contains('\n'));
    }
    // A gzip stream cut short.
    let gz = dir.join("cut.gz");
    write_idx(&gz, &[2, 2, 2], &[1; 8], true);
    let bytes = std::fs::read(&gz).unwrap();
    std::fs::write(&gz, &bytes[..bytes.len() / 2]).unwrap();
    assert!(matches!(read_idx(&gz), Err(DataError::Corrupt(..))));
    // Labels that do not match the images.
    write_idx(
        &dir.join("train-images-idx3-ubyte"),
        &[3, 2, 2],
        &[0; 12],
        false,
    );
    write_idx(&dir.join("train-labels-idx1-ubyte"), &[2], &[0, 1], false);
    let err = Dataset::open(&dir, Split::Train).err().unwrap().to_string();
    assert!(err.contains("labels") && err.contains("(3,)"), "{err}");
}

#[test]
fn missing_and_empty_sources() {
    let err = Dataset::open(Path::new("/no/such/data"), Split::Train)
        .err()
        .unwrap()
        .to_string();
    assert_eq!(err, "data not found: /no/such/data");
    let dir = tmp("empty");
    std::fs::write(dir.join("notes.txt"), "not an image").unwrap();
    let err = Dataset::open(&dir, Split::Train).err().unwrap().to_string();
    assert!(err.contains("no PNG, JPEG or TIFF images"), "{err}");
}

/// A 6x8 RGB picture whose left half is red and right half blue.
fn picture() -> image::RgbImage {
    image::RgbImage::from_fn(8, 6, |x, _| {
        if x < 4 {
            image::Rgb([255, 0, 0])
        } else {
            image::Rgb([0, 0, 255])
        }
    })
}

#[test]
fn image_folders_with_classes_and_bad_files() {
    let dir = tmp("folder");
    for class in ["cat", "dog"] {
        std::fs::create_dir_all(dir.join(class)).unwrap();
    }
    picture().save(dir.join("cat/a.png")).unwrap();
    picture().save(dir.join("dog/b.JPG")).unwrap();
    picture().save(dir.join("dog/c.jpeg")).unwrap();
    std::fs::write(dir.join("dog/garbage.png"), b"definitely not a png").unwrap();
    let png = std::fs::read(dir.join("cat/a.png")).unwrap();
    std::fs::write(dir.join("cat/truncated.png"), &png[..png.len() / 2]).unwrap();
    std::fs::write(dir.join("dog/readme.txt"), "ignored").unwrap();

    let d = Arc::new(Dataset::open(&dir, Split::Train).unwrap());
    assert_eq!(d.len(), 5);
    assert_eq!(d.classes, ["cat", "dog"]);
    assert_eq!(d.labels.as_deref(), Some(&[0, 0, 1, 1, 1][..]));
    let img = d.get(0, 3).unwrap();
    assert_eq!((img.channels, img.height, img.width), (3, 6, 8));
    assert_eq!((img.data[0], img.data[2 * 48]), (1.0, 0.0)); // red left, no blue
    assert!(d.get(1, 3).is_err()); // cat/truncated.png

    // The loader skips both bad files, once each, and keeps going.
    let augment = Arc::new(Augment::pretrain(4, Normalize::imagenet()));
    let skipped = Arc::new(Skipped::default());
    let loader = Loader::new(Plan {
        data: d.clone(),
        augment,
        random: true,
        channels: 3,
        order: (0..5).collect(),
        batch: 1,
        workers: 2,
        seed: 0,
        epoch: 0,
        skipped: skipped.clone(),
    });
    let batches: Vec<_> = loader.map(|b| b.unwrap()).collect();
    assert_eq!(batches.len(), 5);
    assert!(batches.iter().all(|b| b.pixels.len() == 3 * 4 * 4));
    assert_eq!(skipped.count(), 2);
    let warnings = skipped.take_new();
    assert_eq!(warnings.len(), 2);
    assert!(
        warnings.iter().any(|w| w.contains("garbage.png")),
        "{warnings:?}"
    );
    assert!(skipped.take_new().is_empty(), "each file is reported once");

    // Images in the root as well as in sub-folders: no labels.
    picture().save(dir.join("loose.png")).unwrap();
    assert!(Dataset::open(&dir, Split::Train).unwrap().labels.is_none());
}

#[test]
fn a_bad_file_is_decoded_once_an_epoch_and_a_dead_loader_thread_is_an_error() {
    let dir = tmp("once");
    picture().save(dir.join("a.png")).unwrap();
    std::fs::write(dir.join("garbage.png"), b"not a png").unwrap();
    picture().save(dir.join("z.png")).unwrap();
    let d = Arc::new(Dataset::open(&dir, Split::Train).unwrap());
    let augment = Arc::new(Augment::pretrain(4, Normalize::imagenet()));
    let skipped = Arc::new(Skipped::default());
    // Six batches of the bad image: each stands in z.png, and the bad one is tried once.
    let epoch = |e: u64| {
        let order = vec![1; 6];
        let loader = Loader::new(Plan {
            data: d.clone(),
            augment: augment.clone(),
            random: true,
            channels: 3,
            order,
            batch: 1,
            workers: 1,
            seed: 0,
            epoch: e,
            skipped: skipped.clone(),
        });
        loader.map(Result::unwrap).collect::<Vec<_>>().len()
    };
    assert_eq!(epoch(0), 6);
    assert_eq!(skipped.failures(), 1);
    assert_eq!(epoch(1), 6);
    assert_eq!(skipped.failures(), 2, "once an epoch");
    assert_eq!(skipped.count(), 1);

    // A loader thread that dies (here a normalisation without values panics) ends the
    // epoch with an error, not with fewer batches.
    let broken = Arc::new(Augment::pretrain(
        4,
        Normalize {
            mean: vec![],
            std: vec![],
        },
    ));
    let loader = Loader::new(Plan {
        data: d.clone(),
        augment: broken,
        random: true,
        channels: 3,
        order: vec![0, 2, 0, 2],
        batch: 1,
        workers: 1,
        seed: 0,
        epoch: 0,
        skipped,
    });
    let batches: Vec<_> = loader.collect();
    assert_eq!(batches.len(), 1, "no batch after the error");
    let e = batches[0].as_ref().err().expect("an error").to_string();
    assert!(e.starts_with("a data loader thread stopped: "), "{e}");
}

#[test]
fn random_resized_crop_respects_scale_and_ratio() {
    let aug = Augment::pretrain(28, Normalize::imagenet());
    for (h, w) in [(28, 28), (480, 640), (100, 30)] {
        let mut fallback = 0;
        for i in 0..500 {
            let (top, left, ch, cw) = aug.crop(h, w, &mut Rng::new(&[7, i]));
            assert!(ch > 0 && cw > 0 && top + ch <= h && left + cw <= w);
            let area = (ch * cw) as f64 / (h * w) as f64;
            let ratio = cw as f64 / ch as f64;
            // Rounding to whole pixels moves small crops a little outside the ranges.
            let slack = 2.0 / (ch.min(cw) as f64);
            let in_range = area >= 0.2 - slack
                && area <= 1.0 + slack
                && ratio >= 0.75 * (1.0 - slack)
                && ratio <= 4.0 / 3.0 * (1.0 + slack);
            if !in_range {
                // Only the centre-crop fallback may leave the ranges, with the whole height or
                // width.
                assert!(ch == h || cw == w, "{h}x{w}: crop {ch}x{cw}");
                fallback += 1;
            }
        }
        assert!(fallback < 50, "{h}x{w}: {fallback} fallbacks");
    }
}

#[test]
fn flip_resize_and_normalisation() {
    let img = Image {
        channels: 1,
        height: 4,
        width: 4,
        data: (0..16).map(|v| v as f32 / 15.0).collect(),
        bounded: true,
    };
    // Resizing to the same size is the identity (the bicubic weights are 1, 0, 0, 0).
    let same = resize_bicubic(&img, (0, 0, 4, 4), 4);
    for (a, b) in same.data.iter().zip(&img.data) {
        assert!((a - b).abs() < 1e-6);
    }
    // A whole-image "crop" with flips: each output is the image or its mirror, both occur.
    let aug = Augment {
        scale: (1.0, 1.0),
        ratio: (1.0, 1.0),
        ..Augment::pretrain(
            4,
            Normalize {
                mean: vec![0.0],
                std: vec![1.0],
            },
        )
    };
    let mirror: Vec<f32> = img
        .data
        .chunks(4)
        .flat_map(|r| r.iter().rev().copied())
        .collect();
    let (mut plain, mut flipped) = (0, 0);
    for i in 0..64 {
        let out = aug.apply(&img, &mut Rng::new(&[i]));
        let close = |want: &[f32]| out.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-5);
        if close(&img.data) {
            plain += 1;
        } else {
            assert!(close(&mirror), "neither the image nor its mirror");
            flipped += 1;
        }
    }
    assert!(
        plain > 16 && flipped > 16,
        "{plain} plain, {flipped} flipped"
    );
    // Normalisation and its inverse.
    let n = Normalize::imagenet();
    let mut x: Vec<f32> = (0..12).map(|v| v as f32 / 11.0).collect();
    let orig = x.clone();
    n.apply(&mut x, 3);
    assert!((x[4] - (orig[4] - 0.456) / 0.224).abs() < 1e-6);
    n.invert(&mut x, 3);
    assert!(x.iter().zip(&orig).all(|(a, b)| (a - b).abs() < 1e-6));
}

#[test]
fn loader_batches_do_not_depend_on_worker_count() {
    let dir = tmp("workers");
    let pixels: Vec<u8> = (0..10 * 28 * 28).map(|i| (i * 7 % 251) as u8).collect();
    write_idx(
        &dir.join("train-images-idx3-ubyte"),
        &[10, 28, 28],
        &pixels,
        false,
    );
    let d = Arc::new(Dataset::open(&dir, Split::Train).unwrap());
    let aug = Arc::new(Augment::pretrain(28, d.normalize(1, Default::default(), 0)));
    let run = |workers, seed| -> Vec<Vec<f32>> {
        let order = vec![3, 1, 4, 0, 9, 2, 6, 5];
        Loader::new(Plan {
            data: d.clone(),
            augment: aug.clone(),
            random: true,
            channels: 1,
            order,
            batch: 3,
            workers,
            seed,
            epoch: 2,
            skipped: Arc::new(Skipped::default()),
        })
        .map(|b| b.unwrap().pixels)
        .collect()
    };
    let one = run(1, 5);
    assert_eq!(
        one.len(),
        2,
        "8 images in batches of 3: the partial batch is dropped"
    );
    assert_eq!(one, run(3, 5));
    assert_ne!(one, run(1, 6));
}

#[test]
fn schedule_follows_the_reference_formula() {
    use mae::pretrain::Settings;
    let s = Settings {
        blr: 1.5e-4,
        batch_size: 64,
        accum_iter: 4,
        ..Settings::recipe("x", &mae::MaeConfig::mae_tiny_28_patch7(), PathBuf::new())
    };
    assert!((s.lr() - 1.5e-4).abs() < 1e-12, "lr = blr * 256 / 256");
    // main_pretrain.py's adjust_learning_rate, written out.
    let reference = |epoch: f64, lr: f64, min_lr: f64, warmup: f64, epochs: f64| {
        if epoch < warmup {
            lr * epoch / warmup
        } else {
            min_lr
                + (lr - min_lr)
                    * 0.5
                    * (1.0 + (std::f64::consts::PI * (epoch - warmup) / (epochs - warmup)).cos())
        }
    };
    for &e in &[0.0, 0.5, 4.99, 5.0, 6.25, 20.0, 39.9, 40.0] {
        let got = engine::warmup_cosine_lr(e, 1e-3, 1e-6, 5.0, 40.0);
        assert!(
            (got - reference(e, 1e-3, 1e-6, 5.0, 40.0)).abs() < 1e-15,
            "epoch {e}"
        );
    }
    assert_eq!(engine::warmup_cosine_lr(0.0, 1e-3, 0.0, 5.0, 40.0), 0.0);
    assert!((engine::warmup_cosine_lr(22.5, 1e-3, 0.0, 5.0, 40.0) - 5e-4).abs() < 1e-12);
}
