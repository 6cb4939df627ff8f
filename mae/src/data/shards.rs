//! Webdataset shards: tar files whose members are grouped into samples by key, the member's
//! path up to the first dot of its file name (`train/000123.jpg` and `train/000123.cls` are
//! one sample, `train/000123`). A sample's image is its first `jpg`, `jpeg`, `png`, `tif` or
//! `tiff` member; its class, when it has one, the decimal integer of its `cls` member.
//!
//! Opening reads every shard's headers once through the `tar` crate, which seeks over the
//! members' data; an image is then read from its offset when a loader asks for it, never
//! extracted to disk. So shards are a [`super::Dataset`] like any other: the loader's
//! workers, the exact resume and the data-parallel split are the same code. What is theirs
//! is the order of an epoch ([`Shards::order`]): shard by shard through a shuffle buffer,
//! as webdataset reads them, so that reads stay within a few shards at a time.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::decode::{EXTENSIONS, FILE_LIMIT};
use super::{DataError, Rng};

/// Samples a stream holds back and draws from at random (webdataset's `shuffle(1000)`).
pub const SHUFFLE_BUFFER: usize = 1000;

/// The largest `cls` member read.
const CLASS_LIMIT: u64 = 64;

/// One sample: its shard, key, and where its image member lies.
struct Sample {
    shard: usize,
    key: String,
    extension: String,
    offset: u64,
    size: u64,
    class: Option<u32>,
}

/// The samples of a set of shards, in shard order and, within a shard, member order.
pub struct Shards {
    files: Vec<PathBuf>,
    samples: Vec<Sample>,
}

/// Whether `--data` names shards: a `.tar` file, a pattern (`{a..b}` ranges, `{a,b}` lists,
/// `*` and `?`), or a directory that holds `.tar` files.
pub fn names_shards(path: &Path) -> bool {
    let text = path.to_string_lossy();
    text.ends_with(".tar")
        || text.contains(['{', '*', '?'])
        || (path.is_dir() && !tar_files_in(path).is_empty())
}

fn tar_files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "tar") && p.is_file())
        .collect();
    files.sort();
    files
}

/// The shard files `spec` names: brace ranges (`{000000..000146}`, zero-padded as written)
/// and lists (`{a,b}`) expanded, then each result globbed; or every `.tar` file of a
/// directory. Sorted within each expansion, in the pattern's order across them.
///
/// # Errors
/// [`DataError::Empty`] when nothing matches.
pub fn expand(spec: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut files = Vec::new();
    if spec.is_dir() {
        files = tar_files_in(spec);
    } else {
        for pattern in braces(&spec.to_string_lossy()) {
            let mut matched: Vec<PathBuf> = glob::glob(&pattern)
                .map_err(|e| DataError::Empty(format!("{pattern}: {e}")))?
                .flatten()
                .filter(|p| p.is_file())
                .collect();
            matched.sort();
            files.extend(matched);
        }
    }
    match files.is_empty() {
        true => Err(DataError::Empty(format!(
            "{}: no shard files match",
            spec.display()
        ))),
        false => Ok(files),
    }
}

/// Every expansion of the first `{...}` group of `text`, recursively.
fn braces(text: &str) -> Vec<String> {
    let Some(open) = text.find('{') else {
        return vec![text.to_string()];
    };
    let Some(close) = text[open..].find('}').map(|c| open + c) else {
        return vec![text.to_string()];
    };
    let (head, body, tail) = (&text[..open], &text[open + 1..close], &text[close + 1..]);
    let items: Vec<String> = match body.split_once("..") {
        Some((a, b)) if a.parse::<u64>().is_ok() && b.parse::<u64>().is_ok() => {
            let (lo, hi) = (a.parse::<u64>().unwrap_or(0), b.parse::<u64>().unwrap_or(0));
            let width = if a.starts_with('0') { a.len() } else { 0 };
            (lo..=hi).map(|i| format!("{i:0width$}")).collect()
        }
        _ => body.split(',').map(str::to_string).collect(),
    };
    items
        .iter()
        .flat_map(|item| braces(&format!("{head}{item}{tail}")))
        .collect()
}

impl Shards {
    /// Index the shards `spec` names (see [`expand`]). A member that cannot be read ends its
    /// shard, and so does a member whose data runs past the file's end (a truncated
    /// shard); each is a warning in the returned list, and the samples before it are kept.
    ///
    /// # Errors
    /// [`DataError`] when no shard matches or opens, or no sample has an image.
    pub fn open(spec: &Path) -> Result<(Shards, Vec<String>), DataError> {
        let files = expand(spec)?;
        let mut samples = Vec::new();
        let mut warnings = Vec::new();
        for (shard, file) in files.iter().enumerate() {
            if let Err(why) = index(shard, file, &mut samples) {
                warnings.push(format!(
                    "warning: {}: {why}; its samples after that are not read",
                    file.display()
                ));
            }
        }
        if samples.is_empty() {
            return Err(DataError::Empty(format!(
                "{}: no sample with a {} member in {} shards",
                spec.display(),
                EXTENSIONS.join("/"),
                files.len()
            )));
        }
        Ok((Shards { files, samples }, warnings))
    }

    /// Samples.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether there are none (never for opened shards).
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Every sample's class, when every sample has one.
    pub fn classes(&self) -> Option<Vec<u32>> {
        self.samples.iter().map(|s| s.class).collect()
    }

    /// Sample `i` for messages: `shard.tar:key.extension`.
    pub fn name(&self, i: usize) -> String {
        let s = &self.samples[i];
        format!(
            "{}:{}.{}",
            self.files[s.shard].display(),
            s.key,
            s.extension
        )
    }

    /// The shard files and their sample counts, for the processes' digest.
    pub fn describe(&self) -> impl Iterator<Item = String> + '_ {
        self.samples
            .iter()
            .map(move |s| format!("{}:{}", self.files[s.shard].display(), s.key))
    }

    /// The bytes of sample `i`'s image.
    ///
    /// # Errors
    /// [`DataError`] naming the member, when its shard cannot be read there.
    pub fn read(&self, i: usize) -> Result<Vec<u8>, DataError> {
        let s = &self.samples[i];
        let io = |e| DataError::Io(self.name(i), e);
        let (mut file, _) = nn::files::open_regular(&self.files[s.shard]).map_err(io)?;
        file.seek(SeekFrom::Start(s.offset)).map_err(io)?;
        let mut bytes = vec![0; s.size as usize];
        file.read_exact(&mut bytes).map_err(io)?;
        Ok(bytes)
    }

    /// An epoch's order of the first `images` samples, drawn from `rng`: the shards
    /// shuffled and dealt in turn to `streams` streams (the processes a data-parallel run
    /// started with, so each reads its own shards); each stream's samples, shard by shard,
    /// through a shuffle buffer of [`SHUFFLE_BUFFER`]; and the streams interleaved `chunk`
    /// samples at a time (a process's share of an iteration), so that a process's slice of
    /// every global batch comes from its stream. A stream that runs short starts its samples
    /// again, so that every iteration is whole. With fewer shards than streams, a stream
    /// without a shard of its own reads another's.
    pub fn order(&self, images: usize, rng: &mut Rng, streams: usize, chunk: usize) -> Vec<usize> {
        let (streams, chunk) = (streams.max(1), chunk.max(1));
        let shards = self.files.len();
        let mut shard_order: Vec<usize> = (0..shards).collect();
        rng.shuffle(&mut shard_order);
        let mut by_shard: Vec<Vec<usize>> = vec![Vec::new(); shards];
        for (i, s) in self.samples.iter().enumerate().take(images) {
            by_shard[s.shard].push(i);
        }
        let mut dealt: Vec<Vec<usize>> = vec![Vec::new(); streams];
        for (j, &shard) in shard_order.iter().enumerate() {
            dealt[j % streams].push(shard);
        }
        let order: Vec<Vec<usize>> = (0..streams)
            .map(|k| {
                let own = match dealt[k].is_empty() {
                    false => &dealt[k],
                    true => &dealt[k % shards],
                };
                let samples = own.iter().flat_map(|&s| by_shard[s].iter().copied());
                shuffle_buffer(samples, SHUFFLE_BUFFER, rng)
            })
            .collect();
        let iterations = images / (streams * chunk);
        let mut out = Vec::with_capacity(iterations * streams * chunk);
        for t in 0..iterations {
            for stream in &order {
                if stream.is_empty() {
                    continue;
                }
                out.extend((t * chunk..(t + 1) * chunk).map(|k| stream[k % stream.len()]));
            }
        }
        out
    }
}

/// `samples` through a buffer of `size`: each new sample takes the place of one drawn at
/// random, which is emitted; what the buffer holds at the end is emitted shuffled.
fn shuffle_buffer(samples: impl Iterator<Item = usize>, size: usize, rng: &mut Rng) -> Vec<usize> {
    let mut buffer = Vec::with_capacity(size);
    let mut out = Vec::new();
    for s in samples {
        if buffer.len() < size {
            buffer.push(s);
        } else {
            let j = rng.int_upto(size - 1);
            out.push(std::mem::replace(&mut buffer[j], s));
        }
    }
    rng.shuffle(&mut buffer);
    out.extend(buffer);
    out
}

/// Append the samples of shard `shard` (the file `path`) to `samples`.
///
/// # Errors
/// Why the rest of the shard cannot be read.
fn index(shard: usize, path: &Path, samples: &mut Vec<Sample>) -> Result<(), String> {
    let (file, length) = nn::files::open_regular(path).map_err(|e| e.to_string())?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    let entries = archive.entries_with_seek().map_err(|e| e.to_string())?;
    // Members of one key, until the key changes.
    let mut group: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut key = String::new();
    let mut class = None;
    let mut flush =
        |key: &str, group: &mut BTreeMap<String, (u64, u64)>, class: &mut Option<u32>| {
            let image = EXTENSIONS.iter().find_map(|e| group.get_key_value(*e));
            if let Some((extension, &(offset, size))) = image {
                samples.push(Sample {
                    shard,
                    key: key.to_string(),
                    extension: extension.clone(),
                    offset,
                    size,
                    class: *class,
                });
            }
            group.clear();
            *class = None;
        };
    for (n, entry) in entries.enumerate() {
        let mut entry = entry.map_err(|e| format!("member {}: {e}", n + 1))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry.path().map_err(|e| format!("member {}: {e}", n + 1))?;
        let name = name.to_string_lossy().into_owned();
        let (dir, file) = name
            .rsplit_once('/')
            .map_or(("", name.as_str()), |(d, f)| (d, f));
        let Some((stem, extension)) = file.split_once('.') else {
            continue;
        };
        let this = if dir.is_empty() {
            stem.to_string()
        } else {
            format!("{dir}/{stem}")
        };
        if this != key {
            flush(&key, &mut group, &mut class);
            key = this;
        }
        let (offset, size) = (entry.raw_file_position(), entry.size());
        if offset + size > length {
            flush(&key, &mut group, &mut class);
            return Err(format!("truncated in {name}"));
        }
        let extension = extension.to_ascii_lowercase();
        if extension == "cls" && size <= CLASS_LIMIT {
            let mut text = String::new();
            let _ = entry.read_to_string(&mut text);
            class = text.trim().parse().ok();
        } else if size <= FILE_LIMIT {
            group.entry(extension).or_insert((offset, size));
        }
    }
    flush(&key, &mut group, &mut class);
    Ok(())
}

/// Pack `files` (with `classes`, when given) into shards of `per_shard` samples in `out`:
/// `shard-000000.tar`, ... , each sample a member `{index:08}.{extension}` holding the
/// file's bytes as they are, and `{index:08}.cls` its class.
///
/// # Errors
/// I/O errors, naming the file.
pub fn pack(
    files: &[PathBuf],
    classes: Option<&[u32]>,
    per_shard: usize,
    out: &Path,
) -> Result<usize, DataError> {
    fn io(p: &Path) -> impl Fn(std::io::Error) -> DataError + '_ {
        move |e| DataError::Io(p.display().to_string(), e)
    }
    std::fs::create_dir_all(out).map_err(io(out))?;
    let mut written = 0;
    for (s, chunk) in files.chunks(per_shard.max(1)).enumerate() {
        let path = out.join(format!("shard-{s:06}.tar"));
        let mut builder = tar::Builder::new(std::fs::File::create(&path).map_err(io(&path))?);
        for (k, file) in chunk.iter().enumerate() {
            let i = s * per_shard.max(1) + k;
            let extension = file
                .extension()
                .map_or("bin".into(), |e| e.to_string_lossy().to_ascii_lowercase());
            let bytes = nn::files::read_bounded(file, FILE_LIMIT).map_err(io(file))?;
            let mut member = |name: String, data: &[u8]| {
                let mut header = tar::Header::new_gnu();
                header.set_size(data.len() as u64);
                header.set_mode(0o644);
                header.set_cksum();
                builder
                    .append_data(&mut header, name, data)
                    .map_err(io(&path))
            };
            member(format!("{i:08}.{extension}"), &bytes)?;
            if let Some(classes) = classes {
                member(format!("{i:08}.cls"), classes[i].to_string().as_bytes())?;
            }
        }
        builder
            .into_inner()
            .map_err(io(&path))?
            .sync_all()
            .map_err(io(&path))?;
        written += 1;
    }
    Ok(written)
}
