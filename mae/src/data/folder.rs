//! Image folders: every PNG and JPEG below a root, in sorted order, with class labels from
//! the first sub-folder when every image lives in one (the layout of torchvision's
//! `ImageFolder`).

use std::path::{Path, PathBuf};

use super::{DataError, Image};

const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Per image its class index, and the sorted class names.
pub type Labels = (Vec<u32>, Vec<String>);

/// Image paths below `root` (sorted), and their labels when every image sits in a
/// sub-folder.
pub fn scan(root: &Path) -> Result<(Vec<PathBuf>, Option<Labels>), DataError> {
    let mut paths = Vec::new();
    walk(root, &mut paths)?;
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

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), DataError> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| DataError::Io(dir.display().to_string(), e))?;
    for entry in entries {
        let path = entry
            .map_err(|e| DataError::Io(dir.display().to_string(), e))?
            .path();
        if path.is_dir() {
            walk(&path, out)?;
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

/// Decode one file to `channels` (1: luma, 3: RGB) in `[0, 1]`.
pub fn decode(path: &Path, channels: usize) -> Result<Image, DataError> {
    let img = image::ImageReader::open(path)
        .map_err(|e| DataError::Io(path.display().to_string(), e))?
        .with_guessed_format()
        .map_err(|e| DataError::Io(path.display().to_string(), e))?
        .decode()
        .map_err(|e| DataError::Corrupt(path.display().to_string(), e.to_string()))?;
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
