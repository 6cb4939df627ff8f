//! The model against transformers' ViTMAEForPreTraining with the same weights, pixels and
//! noise (fixtures from tools/fixtures/gen_mae.py): RGB and grayscale, norm_pix_loss on and
//! off, LayerNorm eps 1e-12 and 1e-6, mask ratios 0.75 and 0.6, and 25 patches at 0.6, where
//! the number kept is decided by double-precision rounding. Loss, logits, mask, ids_restore
//! and the gradient of every parameter, under its published name.

use std::path::PathBuf;

use engine::{Device, Tensor};
use mae::hf::load_pretrained;
use nn::{read_safetensors, Ctx};

fn dir(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures")).join(name)
}

fn check(name: &str) {
    let dev = Device::shared().unwrap();
    let model = load_pretrained(&dir(name), &dev).unwrap();
    let io = read_safetensors(&dir(name).join("io.safetensors")).unwrap();
    let t = |k: &str| Tensor::from_slice(&dev, &io[k].1, &io[k].0).unwrap();
    let out = model
        .forward(
            &t("pixel_values"),
            model.config.mask_ratio,
            &t("noise"),
            &mut Ctx::eval(),
        )
        .unwrap();
    let ids: Vec<u32> = io["ids_restore"].1.iter().map(|&v| v as u32).collect();
    assert_eq!(
        out.ids_restore.to_vec_u32().unwrap(),
        ids,
        "{name}: ids_restore"
    );
    assert_eq!(out.mask.to_vec().unwrap(), io["mask"].1, "{name}: mask");
    let (loss, want) = (out.loss.item().unwrap(), io["loss"].1[0]);
    assert!(
        ((loss - want) / want).abs() <= 1e-5,
        "{name}: loss {loss} vs {want}"
    );
    assert_eq!(out.pred.shape(), io["logits"].0.as_slice());
    for (i, (a, b)) in out
        .pred
        .to_vec()
        .unwrap()
        .iter()
        .zip(&io["logits"].1)
        .enumerate()
    {
        assert!((a - b).abs() <= 1e-4, "{name}: logits[{i}] {a} vs {b}");
    }

    let grads = out.loss.backward().unwrap();
    let ours = nn::named_parameters(&model)
        .into_iter()
        .map(|(n, t)| {
            let g = grads.expect(&t).unwrap().to_vec().unwrap();
            (n, t.shape().to_vec(), g)
        })
        .collect();
    let published = mae::hf::to_published(ours);
    let want_count = io.keys().filter(|k| k.starts_with("grad.")).count();
    assert_eq!(published.len(), want_count, "{name}: gradients compared");
    let norm = |v: &mut dyn Iterator<Item = f64>| v.map(|x| x * x).sum::<f64>().sqrt();
    // The scale of rounding for a gradient that is zero in exact arithmetic: f32 units of
    // the largest gradient it is computed beside.
    let largest = published
        .iter()
        .map(|(_, _, g)| norm(&mut g.iter().map(|&x| x as f64)))
        .fold(0.0f64, f64::max);
    let mut worst = (0.0f64, String::new());
    for (param, shape, got) in published {
        let (want_shape, want) = &io[&format!("grad.{param}")];
        assert_eq!(&shape, want_shape, "{name}: grad.{param} shape");
        let diff = got.iter().zip(want).map(|(a, b)| (a - b) as f64);
        if param.contains(".key.bias") {
            // Zero in exact arithmetic (softmax ignores a per-row shift): only rounding is
            // left on either side, so the comparison is absolute (to the model's scale).
            let err = norm(&mut diff.into_iter());
            assert!(
                err <= ZERO_GRAD_ATOL * largest,
                "{name}: grad.{param} is {err:e} in norm, not zero"
            );
        } else {
            let rel = norm(&mut diff.into_iter()) / norm(&mut want.iter().map(|&x| x as f64));
            assert!(
                rel <= GRAD_RTOL,
                "{name}: grad.{param} off by {rel:e} in norm"
            );
            if rel > worst.0 {
                worst = (rel, param);
            }
        }
    }
    eprintln!(
        "{name}: worst gradient {} off by {:e} in norm",
        worst.1, worst.0
    );
}

/// Relative (norm-wise) tolerance of a parameter gradient against transformers'.
const GRAD_RTOL: f64 = 1e-5;

/// The norm of a gradient that is zero in exact arithmetic, relative to the model's largest
/// gradient norm: one f32 unit (rounding leaves about 1/200 of that; a key-bias gradient
/// that is not zero is as large as the query bias's, 1e-5 to 1e-3).
const ZERO_GRAD_ATOL: f64 = f32::EPSILON as f64;

#[test]
fn rgb_with_eps_1e12_matches_transformers() {
    check("rgb_eps12");
}

#[test]
fn grayscale_with_norm_pix_loss_and_mask_ratio_0_6_matches_transformers() {
    check("gray_normpix_eps6");
}

#[test]
fn twenty_five_patches_at_ratio_0_6_keep_ten_as_transformers() {
    check("edge_25_patches_ratio_0_6");
}

#[test]
fn thirteen_bands_with_norm_pix_loss_match_transformers() {
    check("bands13_normpix");
}

#[test]
fn our_position_tables_equal_the_checkpoints() {
    let file = read_safetensors(&dir("rgb_eps12").join("model.safetensors")).unwrap();
    for (name, dim) in [
        ("vit.embeddings.position_embeddings", 16),
        ("decoder.decoder_pos_embed", 8),
    ] {
        let ours = nn::pos_embed::sincos_2d(dim, 4);
        for (i, (a, b)) in ours.iter().zip(&file[name].1).enumerate() {
            assert!((a - b).abs() <= 1e-6, "{name}[{i}]: {a} vs {b}");
        }
    }
}
