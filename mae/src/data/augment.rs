//! The reference's pretraining augmentation: `RandomResizedCrop(size, scale=(0.2, 1.0),
//! interpolation=bicubic)`, `RandomHorizontalFlip()`, `Normalize(mean, std)`.

use super::{Image, Rng};

/// Per-channel normalisation `(x - mean) / std`.
#[derive(Clone, Debug, PartialEq)]
pub struct Normalize {
    /// Per channel.
    pub mean: Vec<f32>,
    /// Per channel.
    pub std: Vec<f32>,
}

impl Normalize {
    /// ImageNet's mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225).
    pub fn imagenet() -> Normalize {
        Normalize {
            mean: vec![0.485, 0.456, 0.406],
            std: vec![0.229, 0.224, 0.225],
        }
    }

    /// Normalise a `(C, H, W)` image in place.
    pub fn apply(&self, chw: &mut [f32], channels: usize) {
        let plane = chw.len() / channels;
        for (c, values) in chw.chunks_mut(plane).enumerate() {
            let (m, s) = (self.mean[c % self.mean.len()], self.std[c % self.std.len()]);
            values.iter_mut().for_each(|v| *v = (*v - m) / s);
        }
    }

    /// Undo [`Normalize::apply`].
    pub fn invert(&self, chw: &mut [f32], channels: usize) {
        let plane = chw.len() / channels;
        for (c, values) in chw.chunks_mut(plane).enumerate() {
            let (m, s) = (self.mean[c % self.mean.len()], self.std[c % self.std.len()]);
            values.iter_mut().for_each(|v| *v = *v * s + m);
        }
    }
}

/// Random crop, flip and normalisation to a `size x size` training image.
#[derive(Clone, Debug)]
pub struct Augment {
    /// Output side.
    pub size: usize,
    /// Range of the crop's area as a fraction of the image's: (0.2, 1.0) in MAE.
    pub scale: (f64, f64),
    /// Range of the crop's aspect ratio (width / height): (3/4, 4/3).
    pub ratio: (f64, f64),
    /// Flip horizontally with probability 1/2.
    pub hflip: bool,
    /// Applied last.
    pub normalize: Normalize,
}

impl Augment {
    /// The reference's pretraining transform for `size`.
    pub fn pretrain(size: usize, normalize: Normalize) -> Augment {
        Augment {
            size,
            scale: (0.2, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            hflip: true,
            normalize,
        }
    }

    /// `(top, left, height, width)` of a random crop of an `h x w` image, as torchvision's
    /// `RandomResizedCrop.get_params`: ten tries at a random area and log-uniform aspect
    /// ratio, then a centre crop with the ratio clamped into range.
    pub fn crop(&self, h: usize, w: usize, rng: &mut Rng) -> (usize, usize, usize, usize) {
        let area = (h * w) as f64;
        let (lr0, lr1) = (self.ratio.0.ln(), self.ratio.1.ln());
        for _ in 0..10 {
            let target = area * rng.range(self.scale.0, self.scale.1);
            let aspect = rng.range(lr0, lr1).exp();
            let cw = (target * aspect).sqrt().round() as usize;
            let ch = (target / aspect).sqrt().round() as usize;
            if 0 < cw && cw <= w && 0 < ch && ch <= h {
                let top = rng.int_upto(h - ch);
                let left = rng.int_upto(w - cw);
                return (top, left, ch, cw);
            }
        }
        let in_ratio = w as f64 / h as f64;
        let (ch, cw) = if in_ratio < self.ratio.0 {
            ((w as f64 / self.ratio.0).round() as usize, w)
        } else if in_ratio > self.ratio.1 {
            (h, (h as f64 * self.ratio.1).round() as usize)
        } else {
            (h, w)
        };
        ((h - ch) / 2, (w - cw) / 2, ch, cw)
    }

    /// One augmented, normalised `(C, size, size)` image.
    pub fn apply(&self, img: &Image, rng: &mut Rng) -> Vec<f32> {
        let (top, left, ch, cw) = self.crop(img.height, img.width, rng);
        let mut out = resize_bicubic(img, (top, left, ch, cw), self.size);
        if self.hflip && rng.uniform() < 0.5 {
            for row in out.data.chunks_mut(self.size) {
                row.reverse();
            }
        }
        self.normalize.apply(&mut out.data, out.channels);
        out.data
    }

    /// The evaluation view: the whole image resized to `size x size`, normalised.
    pub fn center(&self, img: &Image) -> Vec<f32> {
        let mut out = resize_bicubic(img, (0, 0, img.height, img.width), self.size);
        self.normalize.apply(&mut out.data, out.channels);
        out.data
    }
}

/// Bicubic kernel with a = -0.5, as PIL's.
fn cubic(x: f64) -> f64 {
    let a = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * a
    } else {
        0.0
    }
}

/// For each of `out` samples over `len` inputs starting at `start`: the first input and
/// normalised weights. Downsampling widens the kernel by the scale (antialiasing, as PIL
/// and torchvision's `antialias=True`).
fn taps(start: usize, len: usize, out: usize) -> Vec<(usize, Vec<f32>)> {
    let scale = len as f64 / out as f64;
    let support = 2.0 * scale.max(1.0);
    (0..out)
        .map(|o| {
            let centre = (o as f64 + 0.5) * scale;
            let lo = ((centre - support).floor().max(0.0)) as usize;
            let hi = ((centre + support).ceil() as usize).min(len);
            let w: Vec<f64> = (lo..hi)
                .map(|k| cubic((k as f64 + 0.5 - centre) / scale.max(1.0)))
                .collect();
            let total: f64 = w.iter().sum();
            (start + lo, w.iter().map(|v| (v / total) as f32).collect())
        })
        .collect()
}

/// Crop `(top, left, height, width)` of `img` and resize it to `size x size` with bicubic
/// interpolation, one separable pass per axis.
pub fn resize_bicubic(img: &Image, crop: (usize, usize, usize, usize), size: usize) -> Image {
    let (top, left, ch, cw) = crop;
    let (cols, rows) = (taps(left, cw, size), taps(top, ch, size));
    let mut data = Vec::with_capacity(img.channels * size * size);
    let mut wide = vec![0f32; ch * size];
    for c in 0..img.channels {
        let plane = &img.data[c * img.height * img.width..(c + 1) * img.height * img.width];
        for r in 0..ch {
            let src = &plane[(top + r) * img.width..(top + r + 1) * img.width];
            for (x, (first, w)) in cols.iter().enumerate() {
                wide[r * size + x] = w.iter().zip(&src[*first..]).map(|(a, b)| a * b).sum();
            }
        }
        // Row by row, each tap's whole row at once (the same sums, in the same order, as
        // one output at a time, but over contiguous memory).
        let mut row = vec![0f32; size];
        for (first, w) in &rows {
            row.fill(0.0);
            for (k, a) in w.iter().enumerate() {
                let src = &wide[(first - top + k) * size..][..size];
                row.iter_mut().zip(src).for_each(|(v, s)| *v += a * s);
            }
            // As PIL, which works in bytes; float samples keep their range.
            data.extend(
                row.iter()
                    .map(|&v| if img.bounded { v.clamp(0.0, 1.0) } else { v }),
            );
        }
    }
    Image {
        channels: img.channels,
        height: size,
        width: size,
        data,
        bounded: img.bounded,
    }
}
