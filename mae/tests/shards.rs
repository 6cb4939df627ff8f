//! Webdataset shards: patterns, packing, pretraining with an exact resume, each process's
//! own shards, a corrupt member skipped by name and a truncated shard ended with a warning.

mod common;
use std::path::{Path, PathBuf};

use common::*;
use mae::data::{shards, Dataset, Rng, Split};

/// A folder of `n` 32x32 RGB PNGs in two class sub-folders.
fn photos(dir: &Path, n: u32) -> PathBuf {
    for i in 0..n {
        let class = dir.join(["cats", "dogs"][(i % 2) as usize]);
        std::fs::create_dir_all(&class).unwrap();
        let img = image::RgbImage::from_fn(32, 32, |x, y| {
            image::Rgb([
                (x * 8 + i) as u8,
                (y * 8) as u8,
                ((x + y) * 4 + i * 9) as u8,
            ])
        });
        img.save(class.join(format!("{i:03}.png"))).unwrap();
    }
    dir.to_path_buf()
}

fn pack(data: &Path, out: &Path, per_shard: &str) {
    let o = mae(&[
        "shards",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--per-shard",
        per_shard,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn patterns_name_shards_by_range_list_glob_or_directory() {
    let dir = tmp("shards", "patterns");
    for i in 0..4 {
        std::fs::write(dir.join(format!("train-{i:06}.tar")), b"").unwrap();
    }
    let names = |spec: &str| -> Vec<String> {
        shards::expand(&dir.join(spec))
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    };
    assert_eq!(
        names("train-{000001..000002}.tar"),
        ["train-000001.tar", "train-000002.tar"]
    );
    assert_eq!(
        names("train-{000003,000000}.tar"),
        ["train-000003.tar", "train-000000.tar"]
    );
    assert_eq!(names("train-*.tar").len(), 4);
    assert_eq!(names(".").len(), 4, "a directory of tar files");
    let e = shards::expand(&dir.join("valid-{0..3}.tar"))
        .unwrap_err()
        .to_string();
    assert!(e.ends_with("no shard files match"), "{e}");
}

#[test]
fn packed_shards_pretrain_and_resume_exactly() {
    let dir = tmp("shards", "resume");
    let data = photos(&dir.join("photos"), 40);
    pack(&data, &dir.join("shards"), "8");
    let spec = dir.join("shards/shard-{000000..000004}.tar");
    let d = Dataset::open(&spec, Split::Train).unwrap();
    assert_eq!(d.len(), 40);
    assert_eq!(d.classes, ["0", "1"]);
    let model = Path::new("mae_tiny_32_patch4");
    let extra = ["--batch-size", "8", "--knn-every", "0", "--epochs", "2"];
    let whole = dir.join("whole");
    let o = mae_with(&run_args("pretrain", model, &spec, &whole, &extra));
    assert!(o.status.success(), "{}", stderr(&o));
    // From the first epoch's checkpoint, elsewhere: the second epoch again.
    let again = dir.join("again");
    let o = mae(&[
        "pretrain",
        "--resume",
        whole.join("checkpoint-1").to_str().unwrap(),
        "--output",
        again.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (a, b) = (metrics(&whole), metrics(&again));
    assert_eq!(a.len(), 10);
    assert_eq!(
        a[5..],
        b[..],
        "the resumed epoch's losses are the uninterrupted run's"
    );
    let weights = |d: &Path| std::fs::read(d.join("checkpoint-2/model.safetensors")).unwrap();
    assert!(weights(&whole) == weights(&again), "the same final weights");
}

/// The shard a sample's name (`path/shard-N.tar:key.ext`) says it came from.
fn shard_of(d: &Dataset, i: usize) -> String {
    d.name(i).split(':').next().unwrap().to_string()
}

#[test]
fn each_process_reads_its_own_shards_and_no_sample_twice() {
    let dir = tmp("shards", "ranks");
    let data = photos(&dir.join("photos"), 48);
    pack(&data, &dir.join("shards"), "6");
    let d = Dataset::open(&dir.join("shards"), Split::Train).unwrap();
    let (ranks, per_rank) = (2, 4);
    for epoch in 0..3 {
        let order = d.epoch_order(48, &mut Rng::new(&[0, 1, epoch]), ranks, per_rank);
        assert_eq!(order.len(), 48);
        let mut seen = order.clone();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 48, "every sample once an epoch");
        // Rank r's slice of each global batch, as Dist::shard cuts it.
        let mine = |r: usize| -> Vec<usize> {
            order
                .chunks(ranks * per_rank)
                .flat_map(|b| b[r * per_rank..(r + 1) * per_rank].to_vec())
                .collect()
        };
        let shards_of = |r: usize| -> std::collections::BTreeSet<String> {
            mine(r).iter().map(|&i| shard_of(&d, i)).collect()
        };
        assert_eq!(shards_of(0).len(), 4);
        assert!(shards_of(0).is_disjoint(&shards_of(1)), "epoch {epoch}");
    }
    let again = d.epoch_order(48, &mut Rng::new(&[0, 1, 0]), ranks, per_rank);
    assert_eq!(
        again,
        d.epoch_order(48, &mut Rng::new(&[0, 1, 0]), ranks, per_rank)
    );
    assert_ne!(
        again,
        d.epoch_order(48, &mut Rng::new(&[0, 1, 1]), ranks, per_rank)
    );
}

#[test]
fn a_corrupt_member_is_skipped_by_name_and_a_truncated_shard_ends_with_a_warning() {
    let dir = tmp("shards", "hostile");
    let data = photos(&dir.join("photos"), 24);
    let out = dir.join("shards");
    pack(&data, &out, "12");
    // Shard 0's third sample becomes garbage of the same size: its bytes are read where
    // the index says, and do not decode.
    let first = out.join("shard-000000.tar");
    let mut bytes = std::fs::read(&first).unwrap();
    let d = Dataset::open(&first, Split::Train).unwrap();
    let victim = d.name(2);
    let png = bytes
        .windows(8)
        .enumerate()
        .filter(|(_, w)| *w == b"\x89PNG\r\n\x1a\n")
        .nth(2)
        .unwrap()
        .0;
    bytes[png..png + 64].fill(0x55);
    std::fs::write(&first, &bytes).unwrap();
    // Shard 1 cut in the middle of its fifth sample.
    let second = out.join("shard-000001.tar");
    let bytes = std::fs::read(&second).unwrap();
    let png = bytes
        .windows(8)
        .enumerate()
        .filter(|(_, w)| *w == b"\x89PNG\r\n\x1a\n")
        .nth(4)
        .unwrap()
        .0;
    std::fs::write(&second, &bytes[..png + 100]).unwrap();
    let d = Dataset::open(&out, Split::Train).unwrap();
    assert_eq!(
        d.len(),
        12 + 4,
        "the truncated shard keeps the samples before the cut"
    );
    assert_eq!(d.warnings.len(), 1, "{:?}", d.warnings);
    assert!(
        d.warnings[0].contains("shard-000001.tar: truncated in 00000016.png"),
        "{:?}",
        d.warnings
    );
    let o = mae_with(&run_args(
        "pretrain",
        Path::new("mae_tiny_32_patch4"),
        &out,
        &dir.join("run"),
        &["--batch-size", "8", "--knn-every", "0"],
    ));
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(&format!("warning: skipping {victim}: ")),
        "{err}"
    );
    assert!(err.contains("truncated in 00000016.png"), "{err}");
}
