//! Images for pretraining and evaluation: IDX files (MNIST, Fashion-MNIST) and image
//! folders (PNG, JPEG, TIFF of any number of bands), augmentation as the reference (RandomResizedCrop, flip, normalisation), and a
//! loader that decodes and augments on worker threads while the GPU trains.

mod augment;
mod decode;
mod folder;
mod idx;
mod loader;
mod rng;
pub mod shards;

use std::path::{Path, PathBuf};

pub use augment::{resize_bicubic, Augment, Normalize};
pub use decode::{
    bands_of, bands_of_bytes, decode, decode_bytes, DECODED_LIMIT, EXTENSIONS, FILE_LIMIT,
};
pub use idx::{read_idx, IDX_LIMIT};
pub use loader::{Batch, Loader, Plan, Skipped};
pub use rng::{streams, Rng};
pub use shards::Shards;

/// Where Debian's `dataset-fashion-mnist` package puts Fashion-MNIST: the default data.
pub const FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

/// Why data could not be read. One line each, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file or folder that cannot be read.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// A file that is not what it claims to be.
    #[error("{0}: {1}")]
    Corrupt(String, String),
    /// A source with nothing usable in it, or that does not exist.
    #[error("{0}")]
    Empty(String),
    /// A channel count the images cannot supply.
    #[error("{0}")]
    Channels(String),
    /// One file whose bands cannot make the model's channels (it is skipped, as an
    /// undecodable one).
    #[error("{0}")]
    Bands(String),
    /// A loader thread that stopped without a batch.
    #[error("a data loader thread stopped: {0}")]
    Worker(String),
}

/// One image, channels first.
#[derive(Clone, Debug, PartialEq)]
pub struct Image {
    /// Bands: 1 (gray), 3 (RGB), or any other count (a multispectral TIFF).
    pub channels: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// `channels * height * width` values.
    pub data: Vec<f32>,
    /// Whether the values lie in `[0, 1]` (integer samples scaled by their type's range),
    /// so that resampling clamps to it as PIL does in bytes; float samples are unbounded.
    pub bounded: bool,
}

/// Which part of a dataset: IDX directories hold `train-*` and `t10k-*` files, image folders
/// may hold `train/` and `val/` (or `test/`) sub-folders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// The training images.
    Train,
    /// The held-out images.
    Test,
}

enum Source {
    /// Decoded in memory: `n` images of `h x w` unsigned bytes, one channel.
    Idx { pixels: Vec<u8>, h: usize, w: usize },
    /// Files below `root`, decoded when asked for; `bands` is what most of the first
    /// readable ones have.
    Files {
        root: PathBuf,
        paths: Vec<PathBuf>,
        bands: usize,
    },
    /// Webdataset shards, read member by member; `bands` as for files.
    Shards { shards: Shards, bands: usize },
}

/// A set of images, with class labels when the source has them.
pub struct Dataset {
    source: Source,
    /// Class index per image, when known.
    pub labels: Option<Vec<u32>>,
    /// Class names (sub-folder names, or the digits of IDX labels).
    pub classes: Vec<String>,
    /// What was opened, for messages.
    pub description: String,
    /// What opening found and passed over (truncated shards), one line each.
    pub warnings: Vec<String>,
}

impl Dataset {
    /// Open `path`: a directory holding IDX files (`{train,t10k}-images-idx3-ubyte[.gz]`
    /// and the matching labels), one IDX image file, or a folder of PNG, JPEG and TIFF
    /// images (searched recursively; with `train/` and `val/` or `test/` sub-folders, the
    /// split's).
    ///
    /// # Errors
    /// [`DataError::Empty`] for a missing path or one without images (naming how to get
    /// Fashion-MNIST when that is what is missing); IDX and I/O errors otherwise.
    pub fn open(path: &Path, split: Split) -> Result<Dataset, DataError> {
        if shards::names_shards(path) {
            return Dataset::open_shards(path, split);
        }
        if !path.exists() {
            return Err(not_found(path));
        }
        let prefix = match split {
            Split::Train => "train",
            Split::Test => "t10k",
        };
        if path.is_file() {
            return Dataset::open_idx(path);
        }
        if let Some(images) = idx_file(path, &format!("{prefix}-images-idx3-ubyte")) {
            return Dataset::open_idx(&images);
        }
        let sub = match split {
            Split::Train => vec!["train"],
            Split::Test => vec!["val", "test"],
        };
        let root = sub
            .iter()
            .map(|s| path.join(s))
            .find(|p| p.is_dir())
            .unwrap_or_else(|| path.to_path_buf());
        let (paths, labels) = folder::scan(&root)?;
        if paths.is_empty() {
            return Err(DataError::Empty(format!(
                "{}: no PNG, JPEG or TIFF images and no IDX files",
                root.display()
            )));
        }
        // The band count most of the first 64 readable files have is the data's; a file
        // that differs is skipped with a warning when it is read.
        let readable = paths.iter().take(256).filter_map(|p| bands_of(p).ok());
        let bands = majority_bands(readable).ok_or_else(|| {
            DataError::Empty(format!("{}: no image could be read", root.display()))
        })?;
        let (labels, classes) = labels.map_or((None, Vec::new()), |(l, c)| (Some(l), c));
        Ok(Dataset {
            description: format!(
                "{} ({} images of {bands} bands)",
                root.display(),
                paths.len()
            ),
            source: Source::Files { root, paths, bands },
            labels,
            classes,
            warnings: Vec::new(),
        })
    }

    /// Webdataset shards (see [`shards`]): training data only, with labels when every
    /// sample has a class.
    fn open_shards(spec: &Path, split: Split) -> Result<Dataset, DataError> {
        if split == Split::Test {
            return Err(DataError::Empty(format!(
                "{}: shards have no held-out split",
                spec.display()
            )));
        }
        let (shards, warnings) = Shards::open(spec)?;
        let bands = majority_bands((0..shards.len().min(64)).filter_map(|i| {
            let bytes = shards.read(i).ok()?;
            bands_of_bytes(&shards.name(i), &bytes).ok()
        }))
        .ok_or_else(|| DataError::Empty(format!("{}: no image could be read", spec.display())))?;
        let labels = shards.classes();
        let classes = classes_of(labels.as_deref());
        Ok(Dataset {
            description: format!(
                "{} ({} samples of {bands} bands)",
                spec.display(),
                shards.len()
            ),
            source: Source::Shards { shards, bands },
            labels,
            classes,
            warnings,
        })
    }

    /// An IDX image file `(n, h, w)`, with the labels file next to it when there is one.
    fn open_idx(images: &Path) -> Result<Dataset, DataError> {
        let (dims, pixels) = read_idx(images)?;
        let &[n, h, w] = dims.as_slice() else {
            return Err(DataError::Corrupt(
                images.display().to_string(),
                format!("images need sizes (n, rows, cols), got {dims:?}"),
            ));
        };
        if n == 0 {
            return Err(DataError::Empty(format!("{}: no images", images.display())));
        }
        if h == 0 || w == 0 {
            return Err(DataError::Corrupt(
                images.display().to_string(),
                format!("images of {h}x{w} pixels"),
            ));
        }
        let name = images.file_name().map(|f| f.to_string_lossy().into_owned());
        let labels_path = name.filter(|f| f.contains("images-idx3")).and_then(|f| {
            let stem = f
                .trim_end_matches(".gz")
                .replace("images-idx3", "labels-idx1");
            idx_file(images.parent()?, &stem)
        });
        let labels = labels_path.map(|p| read_labels(&p, n)).transpose()?;
        let classes = classes_of(labels.as_deref());
        Ok(Dataset {
            description: format!("{} ({n} images of {h}x{w})", images.display()),
            source: Source::Idx { pixels, h, w },
            labels,
            classes,
            warnings: Vec::new(),
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        match &self.source {
            Source::Idx { pixels, h, w } => pixels.len() / (h * w),
            Source::Files { paths, .. } => paths.len(),
            Source::Shards { shards, .. } => shards.len(),
        }
    }

    /// Whether there are no images (never true for an opened dataset).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bands images have natively: 1 for IDX; for a folder, what most of its first 64
    /// readable files have.
    pub fn native_channels(&self) -> usize {
        match self.source {
            Source::Idx { .. } => 1,
            Source::Files { bands, .. } | Source::Shards { bands, .. } => bands,
        }
    }

    /// Refuse a channel count this data cannot supply: its own band count, or gray and RGB
    /// from gray or RGB images (gray repeated, RGB reduced to luma).
    ///
    /// # Errors
    /// [`DataError::Channels`] naming the data and the counts it supplies.
    pub fn check_channels(&self, channels: usize) -> Result<(), DataError> {
        check_channels(&self.description, self.native_channels(), channels)
    }

    /// What the processes of a data-parallel run compare to know they read the same
    /// images: the count, and a digest of the file names below the root (or of an IDX
    /// file's sizes and bytes).
    pub fn digest(&self) -> String {
        let mut hash = engine::Fnv::new();
        match &self.source {
            Source::Idx { pixels, h, w } => {
                hash.add(&(*h as u64).to_le_bytes());
                hash.add(&(*w as u64).to_le_bytes());
                hash.add(pixels);
            }
            Source::Files { root, paths, .. } => {
                for p in paths {
                    let name = p.strip_prefix(root).unwrap_or(p);
                    hash.add(name.to_string_lossy().as_bytes());
                    hash.add(&[0]);
                }
            }
            Source::Shards { shards, .. } => {
                for name in shards.describe() {
                    hash.add(name.as_bytes());
                    hash.add(&[0]);
                }
            }
        }
        format!("{} images, digest {:016x}", self.len(), hash.finish())
    }

    /// The image files of a folder, in the dataset's order; `None` for other sources.
    pub fn files(&self) -> Option<&[PathBuf]> {
        match &self.source {
            Source::Files { paths, .. } => Some(paths),
            _ => None,
        }
    }

    /// An epoch's order of the first `images` images, drawn from `rng`: a shuffle of them
    /// all, or for shards [`Shards::order`] with `streams` streams of `chunk` images an
    /// iteration (the processes the run started with, and each one's batch).
    pub fn epoch_order(
        &self,
        images: usize,
        rng: &mut Rng,
        streams: usize,
        chunk: usize,
    ) -> Vec<usize> {
        if let Source::Shards { shards, .. } = &self.source {
            return shards.order(images, rng, streams, chunk);
        }
        let mut order: Vec<usize> = (0..images).collect();
        rng.shuffle(&mut order);
        order
    }

    /// A name for image `i` in messages: its path, or its index in the IDX file.
    pub fn name(&self, i: usize) -> String {
        match &self.source {
            Source::Idx { .. } => format!("image {i}"),
            Source::Files { paths, .. } => paths[i].display().to_string(),
            Source::Shards { shards, .. } => shards.name(i),
        }
    }

    /// Image `i` with `channels` channels (grayscale is repeated to RGB, RGB turned to
    /// luma).
    ///
    /// # Errors
    /// [`DataError`] for a file that cannot be read or decoded, or whose bands cannot make
    /// `channels` ([`DataError::Bands`]).
    pub fn get(&self, i: usize, channels: usize) -> Result<Image, DataError> {
        match &self.source {
            Source::Idx { pixels, h, w } => {
                check_channels(&self.description, 1, channels)?;
                let plane: Vec<f32> = pixels[i * h * w..(i + 1) * h * w]
                    .iter()
                    .map(|&v| v as f32 / 255.0)
                    .collect();
                Ok(Image {
                    channels,
                    height: *h,
                    width: *w,
                    data: plane.repeat(channels),
                    bounded: true,
                })
            }
            Source::Files { paths, .. } => decode(&paths[i], channels),
            Source::Shards { shards, .. } => {
                decode_bytes(&shards.name(i), &shards.read(i)?, channels)
            }
        }
    }

    /// Per-channel mean and standard deviation for normalisation: with
    /// [`NormalizeFrom::Default`], ImageNet's for RGB (the reference's) and the data's own
    /// for any other channel count; with [`NormalizeFrom::Auto`], the data's own for every
    /// count. The data's own are computed over every pixel of an IDX file, or of a sample
    /// of [`STATS_SAMPLE`] images of a folder drawn with `seed` (whole images, before
    /// augmentation; population statistics, in double precision).
    pub fn normalize(&self, channels: usize, from: NormalizeFrom, seed: u64) -> Normalize {
        if channels == 3 && from == NormalizeFrom::Default {
            return Normalize::imagenet();
        }
        // Per band: count, sum, sum of squares.
        let mut sums = vec![(0f64, 0f64, 0f64); channels];
        let mut add = |c: usize, v: f64| {
            let (n, sum, sq) = &mut sums[c];
            *n += 1.0;
            *sum += v;
            *sq += v * v;
        };
        match &self.source {
            Source::Idx { pixels, .. } => {
                // Gray, repeated to every channel.
                for &v in pixels {
                    (0..channels).for_each(|c| add(c, v as f64 / 255.0));
                }
            }
            Source::Files { .. } | Source::Shards { .. } => {
                let mut sample: Vec<usize> = (0..self.len()).collect();
                Rng::new(&[seed, streams::STATS]).shuffle(&mut sample);
                sample.truncate(STATS_SAMPLE);
                for img in sample
                    .into_iter()
                    .filter_map(|i| self.get(i, channels).ok())
                {
                    let plane = img.height * img.width;
                    for (c, values) in img.data.chunks(plane).enumerate() {
                        values.iter().for_each(|&v| add(c, v as f64));
                    }
                }
            }
        }
        let (mean, std) = sums
            .iter()
            .map(|&(n, sum, sq)| match n > 0.0 {
                true => {
                    let mean = sum / n;
                    let std = (sq / n - mean * mean).max(0.0).sqrt();
                    (mean as f32, (std as f32).max(1e-3))
                }
                false => (0.5, 0.5),
            })
            .unzip();
        Normalize { mean, std }
    }
}

/// The band count most of `counts` have (the first of a tie), `None` for none.
fn majority_bands(counts: impl Iterator<Item = usize>) -> Option<usize> {
    let mut seen = std::collections::BTreeMap::new();
    for bands in counts.take(64) {
        *seen.entry(bands).or_insert(0usize) += 1;
    }
    seen.into_iter()
        .max_by_key(|&(bands, n)| (n, std::cmp::Reverse(bands)))
        .map(|(b, _)| b)
}

/// Class names for integer labels: `"0"` to the largest.
fn classes_of(labels: Option<&[u32]>) -> Vec<String> {
    labels
        .map(|l| {
            let max = l.iter().copied().max().unwrap_or(0);
            (0..=max).map(|c| c.to_string()).collect()
        })
        .unwrap_or_default()
}

/// Images of a folder its normalisation statistics are computed from.
pub const STATS_SAMPLE: usize = 512;

/// Where the mean and std of the normalisation come from, when not given.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum NormalizeFrom {
    /// ImageNet's for RGB, as the reference; the data's own for any other channel count.
    #[default]
    Default,
    /// The data's own for every channel count.
    Auto,
}

/// Whether images of `bands` bands can be read as `channels` channels: as they are, or
/// between gray and RGB.
pub fn converts(bands: usize, channels: usize) -> bool {
    bands == channels || ([1, 3].contains(&bands) && [1, 3].contains(&channels))
}

fn check_channels(data: &str, bands: usize, channels: usize) -> Result<(), DataError> {
    match converts(bands, channels) {
        true => Ok(()),
        false => Err(DataError::Channels(format!(
            "{data}: the model takes {channels} channels; these images give {}",
            match bands {
                1 | 3 => "1 (gray) or 3 (RGB)".to_string(),
                n => format!("{n} (a model of {n} channels reads them: --channels {n})"),
            }
        ))),
    }
}

/// The error for a missing source; for the default data it says how to install it.
fn not_found(path: &Path) -> DataError {
    let hint = if path == Path::new(FASHION_MNIST) {
        " (install Fashion-MNIST with `sudo apt-get install dataset-fashion-mnist`, or pass \
         --data with an image folder or IDX files)"
    } else {
        ""
    };
    DataError::Empty(format!("data not found: {}{hint}", path.display()))
}

/// `dir/name` or `dir/name.gz`, whichever exists.
fn idx_file(dir: &Path, name: &str) -> Option<PathBuf> {
    [name.to_string(), format!("{name}.gz")]
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

/// IDX labels `(n,)`, checked against the image count.
pub fn read_labels(path: &Path, images: usize) -> Result<Vec<u32>, DataError> {
    let (dims, bytes) = read_idx(path)?;
    if dims.len() != 1 || dims[0] != images {
        return Err(DataError::Corrupt(
            path.display().to_string(),
            format!("labels need sizes ({images},) to match the images, got {dims:?}"),
        ));
    }
    Ok(bytes.iter().map(|&b| b as u32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_default_data_says_how_to_get_it() {
        let msg = not_found(Path::new(FASHION_MNIST)).to_string();
        assert!(
            msg.contains("apt-get install dataset-fashion-mnist"),
            "{msg}"
        );
        assert!(!msg.contains('\n'));
        assert_eq!(not_found(Path::new("/x")).to_string(), "data not found: /x");
    }
}
