//! Reconstruction pictures as the MAE demo draws them: per image, original | masked |
//! reconstruction | reconstruction with the visible patches pasted back; and the
//! `visualize` command, which draws them for a model.

use std::path::PathBuf;

use engine::{Device, Tensor};
use image::{Rgb, RgbImage};
use nn::Ctx;

use crate::data::{decode, resize_bicubic, Dataset, Image, Normalize, Split};
use crate::hf::{load_pretrained, read_preprocessor};
use crate::{run, Error, MaskedAutoencoder};

/// `mae visualize`'s options.
#[derive(Clone, Debug, clap::Args)]
pub struct Args {
    /// Model directory: one of our checkpoints or a Hugging Face ViTMAE directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Image files (PNG, JPEG), resized to the model's input.
    #[arg(long, num_args = 1.., required_unless_present = "data")]
    pub image: Vec<PathBuf>,
    /// Or take images from a dataset (its test split when it has one).
    #[arg(long, conflicts_with = "image")]
    pub data: Option<PathBuf>,
    /// How many images to take from --data.
    #[arg(long, default_value_t = 8)]
    pub count: usize,
    /// PNG to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Fraction of patches masked [default: the model's].
    #[arg(long, value_parser = run::finite)]
    pub mask_ratio: Option<f64>,
    /// Seed of the mask.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The bands drawn, numbered from 1: three as red, green and blue, or one as gray
    /// [default: 1,2,3, or 1 for fewer than 3 channels].
    #[arg(long, value_delimiter = ',')]
    pub bands: Option<Vec<usize>>,
}

/// The bands a picture draws (from 0): three as red, green and blue, or one as gray.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bands(Vec<usize>);

impl Bands {
    /// `given` (numbered from 1, as `--bands`) for a model of `channels` channels, or the
    /// default: the first three, or the first as gray for fewer than three channels.
    ///
    /// # Errors
    /// [`Error::Setup`] for a count other than 1 or 3, or a band the model does not have.
    pub fn new(given: Option<&[usize]>, channels: usize) -> Result<Bands, Error> {
        let Some(given) = given else {
            return Ok(Bands(if channels >= 3 {
                vec![0, 1, 2]
            } else {
                vec![0]
            }));
        };
        if ![1, 3].contains(&given.len()) || given.iter().any(|&b| b == 0 || b > channels) {
            return Err(Error::Setup(format!(
                "--bands {given:?}: one band (gray) or three (red, green, blue), each from 1 to {channels}"
            )));
        }
        Ok(Bands(given.iter().map(|b| b - 1).collect()))
    }
}

/// `mae visualize`: draw the reconstructions of the images `args` names.
///
/// # Errors
/// An unreadable model or image, a picture that cannot be written, engine failures.
pub fn command(args: &Args) -> Result<(), Error> {
    let device = Device::new()?;
    let model = load_pretrained(&args.model, &device)?;
    let ch = model.config.channels;
    let normalize = match read_preprocessor(&args.model, ch)? {
        Some(n) => n,
        None if ch == 3 => Normalize::imagenet(),
        None => {
            return Err(Error::Setup(format!(
                "{}: no preprocessor_config.json, so the normalisation of this {ch}-channel \
                 model is unknown",
                args.model.display()
            )))
        }
    };
    if !(0.0..1.0).contains(&ratio_of(args, &model)) {
        return Err(Error::Setup("--mask-ratio must be in [0, 1)".into()));
    }
    let images = match &args.data {
        Some(path) => {
            let d = Dataset::open(path, Split::Test)?;
            d.check_channels(ch)?;
            (0..d.len())
                .filter_map(|i| d.get(i, ch).ok())
                .take(args.count)
                .collect()
        }
        None => args
            .image
            .iter()
            .map(|f| decode(f, ch))
            .collect::<Result<Vec<_>, _>>()?,
    };
    let ratio = ratio_of(args, &model);
    let bands = Bands::new(args.bands.as_deref(), ch)?;
    let picture = reconstruction_grid(&model, &images, &normalize, &bands, ratio, args.seed)?;
    picture.save(&args.out).map_err(Error::image(&args.out))?;
    eprintln!("wrote {} ({} images)", args.out.display(), images.len());
    Ok(())
}

fn ratio_of(args: &Args, model: &MaskedAutoencoder) -> f64 {
    args.mask_ratio.unwrap_or(model.config.mask_ratio)
}

/// Gap between panels, in pixels.
const GAP: u32 = 4;
/// Masked patches are drawn in this grey.
const MASKED: f32 = 0.35;

/// The picture for `images` (any size; each is resized to the model's), masked with
/// `mask_ratio` from `seed`, drawing `bands`. For a `norm_pix_loss` model each predicted
/// patch is de-normalised with the mean and variance of the true patch, since the model
/// predicts normalised patches. Small images are enlarged to at least 112 pixels per panel.
/// Gray and RGB values are drawn as they are, 0 to 1; the bands of any other channel count
/// are each stretched from the 2nd to the 98th percentile of the original image's band, the
/// same stretch in its four panels, since multispectral values seldom fill 0 to 1.
///
/// # Errors
/// Engine errors, or no images.
pub fn reconstruction_grid(
    model: &MaskedAutoencoder,
    images: &[Image],
    normalize: &Normalize,
    bands: &Bands,
    mask_ratio: f64,
    seed: u64,
) -> Result<RgbImage, Error> {
    if images.is_empty() {
        return Err(Error::Setup("no images to reconstruct".into()));
    }
    let c = &model.config;
    let (size, p, ch) = (c.image_size, c.patch_size, c.channels);
    let inputs: Vec<Vec<f32>> = images
        .iter()
        .map(|img| {
            let mut x = resize_bicubic(img, (0, 0, img.height, img.width), size).data;
            normalize.apply(&mut x, ch);
            x
        })
        .collect();
    let device = model.cls_token.device();
    let flat: Vec<f32> = inputs.concat();
    let imgs = Tensor::from_slice(device, &flat, &[images.len(), ch, size, size])?;
    let noise = Tensor::rand(device, &[images.len(), c.num_patches()], seed)?;
    let out = engine::no_grad(|| model.forward(&imgs, mask_ratio, &noise, &mut Ctx::eval()))?;
    let pred = out.pred.to_vec()?;
    let mask = out.mask.to_vec()?;
    let (l, pd) = (c.num_patches(), c.patch_dim());

    let scale = (112 / size).max(1) as u32;
    let panel = size as u32 * scale;
    let mut picture = RgbImage::from_pixel(
        4 * panel + 5 * GAP,
        images.len() as u32 * (panel + GAP) + GAP,
        Rgb([255, 255, 255]),
    );
    for (b, x) in inputs.iter().enumerate() {
        let target = patches(x, size, p, ch);
        let mut recon = vec![0f32; l * pd];
        for i in 0..l {
            let t = &target[i * pd..(i + 1) * pd];
            let y = &pred[(b * l + i) * pd..(b * l + i + 1) * pd];
            let r = &mut recon[i * pd..(i + 1) * pd];
            r.copy_from_slice(y);
            if c.norm_pix_loss {
                denormalize_patch(r, t);
            }
        }
        let masked_at = |i: usize| mask[b * l + i] > 0.5;
        let mut shown = target.clone();
        let mut pasted = target.clone();
        for i in 0..l {
            if masked_at(i) {
                let at = i * pd..(i + 1) * pd;
                shown[at.clone()].fill(f32::NAN);
                pasted[at.clone()].copy_from_slice(&recon[at]);
            }
        }
        let mut stretch = None;
        for (col, patches_of) in [&target, &shown, &recon, &pasted].into_iter().enumerate() {
            let mut chw = unpatch(patches_of, size, p, ch);
            normalize.invert(&mut chw, ch);
            let stretch = stretch.get_or_insert_with(|| stretch_of(&chw, ch, bands));
            draw(
                &mut picture,
                &chw,
                ch,
                bands,
                stretch,
                scale,
                (
                    GAP + col as u32 * (panel + GAP),
                    GAP + b as u32 * (panel + GAP),
                ),
            );
        }
    }
    Ok(picture)
}

/// Undo norm_pix_loss's target normalisation on a predicted patch, with the statistics of
/// the true patch: `pred * sqrt(var + 1e-6) + mean`, the variance unbiased as the
/// reference's `target.var(dim=-1)`.
fn denormalize_patch(pred: &mut [f32], truth: &[f32]) {
    let n = truth.len() as f32;
    let mean = truth.iter().sum::<f32>() / n;
    let var = truth.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / (n - 1.0).max(1.0);
    let std = (var + 1e-6).sqrt();
    pred.iter_mut().for_each(|v| *v = *v * std + mean);
}

/// `(C, H, W)` to `(L, p*p*C)` in the reference's patch order (row, column, channel).
fn patches(x: &[f32], size: usize, p: usize, ch: usize) -> Vec<f32> {
    let g = size / p;
    let mut out = Vec::with_capacity(x.len());
    for gy in 0..g {
        for gx in 0..g {
            for py in 0..p {
                for px in 0..p {
                    for c in 0..ch {
                        out.push(x[(c * size + gy * p + py) * size + gx * p + px]);
                    }
                }
            }
        }
    }
    out
}

/// The inverse of [`patches`].
fn unpatch(x: &[f32], size: usize, p: usize, ch: usize) -> Vec<f32> {
    let g = size / p;
    let mut out = vec![0f32; x.len()];
    let mut k = 0;
    for gy in 0..g {
        for gx in 0..g {
            for py in 0..p {
                for px in 0..p {
                    for c in 0..ch {
                        out[(c * size + gy * p + py) * size + gx * p + px] = x[k];
                        k += 1;
                    }
                }
            }
        }
    }
    out
}

/// Per drawn band, the values shown as black and white: 0 and 1 for gray and RGB, else the
/// 2nd and 98th percentiles of that band of the `(C, H, W)` image `chw`.
fn stretch_of(chw: &[f32], ch: usize, bands: &Bands) -> Vec<(f32, f32)> {
    let plane = chw.len() / ch;
    bands
        .0
        .iter()
        .map(|&band| {
            if [1, 3].contains(&ch) {
                return (0.0, 1.0);
            }
            let mut v: Vec<f32> = chw[band * plane..(band + 1) * plane]
                .iter()
                .copied()
                .filter(|v| v.is_finite())
                .collect();
            v.sort_by(f32::total_cmp);
            let at = |q: f64| v.get(((v.len() - 1) as f64 * q).round() as usize).copied();
            match (at(0.02), at(0.98)) {
                (Some(lo), Some(hi)) if hi > lo => (lo, hi),
                (Some(lo), _) => (lo - 0.5, lo + 0.5),
                _ => (0.0, 1.0),
            }
        })
        .collect()
}

/// Draw `bands` of a square `(C, size, size)` image (NaN for masked) at `origin`, each
/// mapped from its `stretch` to black and white, enlarged by `scale`.
fn draw(
    picture: &mut RgbImage,
    chw: &[f32],
    ch: usize,
    bands: &Bands,
    stretch: &[(f32, f32)],
    scale: u32,
    origin: (u32, u32),
) {
    let plane = chw.len() / ch;
    let size = (plane as f64).sqrt() as usize;
    for y in 0..size {
        for x in 0..size {
            let v = |i: usize| {
                let i = i % bands.0.len();
                let (lo, hi) = stretch[i];
                let v = chw[bands.0[i] * plane + y * size + x];
                let v = if v.is_nan() {
                    MASKED
                } else {
                    (v - lo) / (hi - lo)
                };
                (v.clamp(0.0, 1.0) * 255.0).round() as u8
            };
            let px = Rgb([v(0), v(1), v(2)]);
            for dy in 0..scale {
                for dx in 0..scale {
                    picture.put_pixel(
                        origin.0 + x as u32 * scale + dx,
                        origin.1 + y as u32 * scale + dy,
                        px,
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patches_round_trip_and_norm_pix_is_undone() {
        let (size, p, ch) = (8, 4, 3);
        let x: Vec<f32> = (0..ch * size * size).map(|v| v as f32).collect();
        let pt = patches(&x, size, p, ch);
        // Patch 1 (top right), pixel (0, 0), channel 2 is x[2][0][4].
        assert_eq!(pt[p * p * ch + 2], x[2 * size * size + 4]);
        assert_eq!(unpatch(&pt, size, p, ch), x);
        // A perfect norm_pix prediction becomes the true patch again.
        let truth = [0.1f32, 0.7, 0.3, 0.9];
        let mean = truth.iter().sum::<f32>() / 4.0;
        let var = truth.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / 3.0;
        let mut pred: Vec<f32> = truth
            .iter()
            .map(|v| (v - mean) / (var + 1e-6).sqrt())
            .collect();
        denormalize_patch(&mut pred, &truth);
        assert!(pred.iter().zip(&truth).all(|(a, b)| (a - b).abs() < 1e-6));
    }
}
