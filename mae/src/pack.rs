//! `mae shards`: pack an image folder into webdataset shards, so that data published as
//! folders can be read as large sets are, and tests can make shards.

use std::path::PathBuf;

use crate::data::{shards, streams, Dataset, Rng, Split};
use crate::Error;

/// `mae shards`'s options.
#[derive(Clone, Debug, clap::Args)]
pub struct Args {
    /// The image folder to pack (its `train/` sub-folder when it has one); class
    /// sub-folders become `cls` members.
    #[arg(long)]
    pub data: PathBuf,
    /// Directory to write `shard-000000.tar`, ... into.
    #[arg(long)]
    pub out: PathBuf,
    /// Samples per shard.
    #[arg(long, default_value_t = 1000)]
    pub per_shard: usize,
    /// Seed of the order the images are packed in: shuffled, so that every shard holds a
    /// mix of the classes, which a shuffle buffer alone cannot give.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// `mae shards`: pack `args.data` into shards in `args.out`.
///
/// # Errors
/// A source that is not an image folder, unreadable files, I/O errors.
pub fn command(args: &Args) -> Result<(), Error> {
    let data = Dataset::open(&args.data, Split::Train)?;
    let Some(files) = data.files() else {
        return Err(Error::Setup(format!(
            "{}: shards are packed from an image folder",
            data.description
        )));
    };
    if args.per_shard == 0 {
        return Err(Error::Setup("--per-shard must be at least 1".into()));
    }
    let mut order: Vec<usize> = (0..files.len()).collect();
    Rng::new(&[args.seed, streams::PACK]).shuffle(&mut order);
    let files: Vec<PathBuf> = order.iter().map(|&i| files[i].clone()).collect();
    let labels = data
        .labels
        .as_ref()
        .map(|l| order.iter().map(|&i| l[i]).collect::<Vec<u32>>());
    let written = shards::pack(&files, labels.as_deref(), args.per_shard, &args.out)?;
    eprintln!(
        "wrote {written} shards of up to {} samples ({} in all{}) to {}",
        args.per_shard,
        files.len(),
        if labels.is_some() {
            ", with classes"
        } else {
            ""
        },
        args.out.display()
    );
    Ok(())
}
