//! Reconstruction pictures as the MAE demo draws them: per image, original | masked |
//! reconstruction | reconstruction with the visible patches pasted back.

use engine::Tensor;
use image::{Rgb, RgbImage};
use nn::Ctx;

use crate::data::{resize_bicubic, Image, Normalize};
use crate::MaskedAutoencoder;

/// Gap between panels, in pixels.
const GAP: u32 = 4;
/// Masked patches are drawn in this grey.
const MASKED: f32 = 0.35;

/// The picture for `images` (any size; each is resized to the model's), masked with
/// `mask_ratio` from `seed`. For a `norm_pix_loss` model each predicted patch is
/// de-normalised with the mean and variance of the true patch, since the model predicts
/// normalised patches. Small images are enlarged to at least 112 pixels per panel.
///
/// # Errors
/// Engine errors, or no images.
pub fn reconstruction_grid(
    model: &mut MaskedAutoencoder,
    images: &[Image],
    normalize: &Normalize,
    mask_ratio: f32,
    seed: u64,
) -> Result<RgbImage, String> {
    if images.is_empty() {
        return Err("no images to reconstruct".into());
    }
    let trained_ratio = model.config.mask_ratio;
    model.config.mask_ratio = mask_ratio;
    let picture = draw_grid(model, images, normalize, seed);
    model.config.mask_ratio = trained_ratio;
    picture
}

fn draw_grid(
    model: &MaskedAutoencoder,
    images: &[Image],
    normalize: &Normalize,
    seed: u64,
) -> Result<RgbImage, String> {
    let c = &model.config;
    c.validate()?;
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
    let e = |e: engine::Error| e.to_string();
    let flat: Vec<f32> = inputs.concat();
    let imgs = Tensor::from_slice(device, &flat, &[images.len(), ch, size, size]).map_err(e)?;
    let noise = Tensor::rand(device, &[images.len(), c.num_patches()], seed).map_err(e)?;
    let out = engine::no_grad(|| model.forward(&imgs, &noise, &mut Ctx::eval())).map_err(e)?;
    let pred = out.pred.to_vec().map_err(e)?;
    let mask = out.mask.to_vec().map_err(e)?;
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
            let (mean, std) = if c.norm_pix_loss {
                let mean = t.iter().sum::<f32>() / pd as f32;
                let var =
                    t.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / (pd as f32 - 1.0).max(1.0);
                (mean, (var + 1e-6).sqrt())
            } else {
                (0.0, 1.0)
            };
            for (r, v) in recon[i * pd..(i + 1) * pd].iter_mut().zip(y) {
                *r = v * std + mean;
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
        for (col, patches_of) in [&target, &shown, &recon, &pasted].into_iter().enumerate() {
            let mut chw = unpatch(patches_of, size, p, ch);
            normalize.invert(&mut chw, ch);
            draw(
                &mut picture,
                &chw,
                size,
                ch,
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

/// Draw a `(C, size, size)` image in `[0, 1]` (NaN for masked) at `origin`, enlarged by
/// `scale`.
fn draw(
    picture: &mut RgbImage,
    chw: &[f32],
    size: usize,
    ch: usize,
    scale: u32,
    origin: (u32, u32),
) {
    let plane = size * size;
    for y in 0..size {
        for x in 0..size {
            let v = |c: usize| {
                let v = chw[(c % ch) * plane + y * size + x];
                let v = if v.is_nan() { MASKED } else { v };
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
