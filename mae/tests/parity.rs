//! The model against transformers' ViTMAEForPreTraining with the same weights, pixels and
//! noise (fixtures from tools/fixtures/gen_mae.py): RGB and grayscale, norm_pix_loss on and
//! off, LayerNorm eps 1e-12 and 1e-6, mask ratios 0.75 and 0.6.

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
        .forward(&t("pixel_values"), &t("noise"), &mut Ctx::eval())
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
}

#[test]
fn rgb_with_eps_1e12_matches_transformers() {
    check("rgb_eps12");
}

#[test]
fn grayscale_with_norm_pix_loss_and_mask_ratio_0_6_matches_transformers() {
    check("gray_normpix_eps6");
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
