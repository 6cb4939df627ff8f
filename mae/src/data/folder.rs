//! Image folders: every PNG, JPEG and TIFF below a root, in sorted order, with class labels from
//! the first sub-folder when every image lives in one (the layout of torchvision's
//! `ImageFolder`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::decode::EXTENSIONS;
use super::DataError;

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
