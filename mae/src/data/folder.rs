//! Image folders: every PNG and JPEG below a root, in sorted order, with class labels from
//! the first sub-folder when every image lives in one (the layout of torchvision's
//! `ImageFolder`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::{DataError, Image};

const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Per image its class index, and the sorted class names.
pub type Labels = (Vec<u32>, Vec<String>);

/// Image paths below `root` (sorted), and their labels when every image sits in a
/// sub-folder.
pub fn scan(root: &Path) -> Result<(Vec<PathBuf>, Option<Labels>), DataError> {
    let mut paths = Vec::new();
    walk(root, &mut paths, &mut HashSet::new())?;
    paths.sort();
    let class_of = |p: &PathBuf| -> Option<String> {
        let rel = p.strip_prefix(root).ok()?;
        let mut parts = rel.components();
        let first = parts.next()?;
        parts
            .next()
            .map(|_| first.as_os_str().to_string_lossy().into_owned())
    };
    let names: Option<Vec<String>> = paths.iter().map(class_of).collect();
    let labels = names.filter(|n| !n.is_empty()).map(|names| {
        let mut classes = names.clone();
        classes.sort();
        classes.dedup();
        let labels = names
            .iter()
            .map(|n| classes.binary_search(n).expect("a class from this list") as u32)
            .collect();
        (labels, classes)
    });
    Ok((paths, labels))
}

/// Collect the image files below `dir`. Links to directories are followed, but each
/// directory is walked once however many links lead to it (`seen` holds the directories
/// walked, by device and inode), so a link to an ancestor cannot make the walk endless.
fn walk(
    dir: &Path,
    out: &mut Vec<PathBuf>,
    seen: &mut HashSet<(u64, u64)>,
) -> Result<(), DataError> {
    let io = |e| DataError::Io(dir.display().to_string(), e);
    if !seen.insert(identity(&std::fs::metadata(dir).map_err(io)?)) {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.is_dir() {
            walk(&path, out, seen)?;
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(unix)]
fn identity(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

#[cfg(not(unix))]
fn identity(_: &std::fs::Metadata) -> (u64, u64) {
    // No inode to tell directories apart: every directory is new, as before.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    (0, NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

/// The largest image file read: 256 MiB.
pub const FILE_LIMIT: u64 = 256 << 20;

/// The most memory one decoded image may take as `f32` values: 1 GiB (a 16384 x 16384 gray
/// image, or 9459 x 9459 in RGB). A larger one is refused from its header, before decoding.
pub const DECODED_LIMIT: u64 = 1 << 30;

/// Decode one file to `channels` (1: luma, 3: RGB) in `[0, 1]`.
///
/// # Errors
/// [`DataError`] naming the file: unreadable, not a regular file, larger than
/// [`FILE_LIMIT`], undecodable, or more than [`DECODED_LIMIT`] once decoded.
pub fn decode(path: &Path, channels: usize) -> Result<Image, DataError> {
    let name = path.display().to_string();
    super::check_channels(&name, channels)?;
    let bytes = nn::files::read_bounded(path, FILE_LIMIT).map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidData => DataError::Corrupt(name.clone(), e.to_string()),
        _ => DataError::Io(name.clone(), e),
    })?;
    let corrupt = |e: image::ImageError| DataError::Corrupt(name.clone(), e.to_string());
    let reader = || {
        image::ImageReader::new(std::io::Cursor::new(&bytes[..]))
            .with_guessed_format()
            .map_err(|e| DataError::Io(name.clone(), e))
    };
    let (width, height) = reader()?.into_dimensions().map_err(corrupt)?;
    let decoded = width as u64 * height as u64 * channels as u64 * 4;
    if decoded > DECODED_LIMIT {
        return Err(DataError::Corrupt(
            name.clone(),
            format!(
                "{width}x{height} pixels take {decoded} bytes as f32, more than the {DECODED_LIMIT} an image may"
            ),
        ));
    }
    let mut reader = reader()?;
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(DECODED_LIMIT);
    reader.limits(limits);
    let img = reader.decode().map_err(corrupt)?;
    let (width, height) = (img.width() as usize, img.height() as usize);
    let data = if channels == 1 {
        img.to_luma32f().into_raw()
    } else {
        // HWC to CHW.
        let rgb = img.to_rgb32f().into_raw();
        (0..3)
            .flat_map(|c| rgb.iter().skip(c).step_by(3).copied().collect::<Vec<_>>())
            .collect()
    };
    Ok(Image {
        channels,
        height,
        width,
        data,
    })
}
