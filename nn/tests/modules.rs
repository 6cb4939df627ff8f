//! Initialisation, names, train and eval modes, the ViT classifier, and gradcheck on small
//! layers.

use engine::{gradcheck, Device, GradcheckOptions, Tensor};
use nn::layers::{drop_path, dropout};
use nn::{
    named_parameters, Attention, BatchNorm, Block, Ctx, Init, Linear, Module, VisionTransformer,
    VitConfig,
};

fn dev() -> Device {
    Device::shared().unwrap()
}

fn all_values(m: &dyn Module) -> Vec<(String, Vec<f32>)> {
    named_parameters(m)
        .into_iter()
        .map(|(n, t)| (n, t.to_vec().unwrap()))
        .collect()
}

fn tiny_vit(global_pool: bool) -> VitConfig {
    VitConfig {
        image_size: 8,
        patch_size: 4,
        channels: 1,
        dim: 8,
        depth: 2,
        heads: 2,
        mlp_ratio: 4.0,
        qkv_bias: true,
        eps: 1e-6,
        classes: 3,
        global_pool,
        drop_path: 0.1,
        pos_grid: 2,
    }
}

#[test]
fn same_seed_same_weights_bit_for_bit() {
    let a = VisionTransformer::new(tiny_vit(true), &mut Init::new(&dev(), 7)).unwrap();
    let b = VisionTransformer::new(tiny_vit(true), &mut Init::new(&dev(), 7)).unwrap();
    let c = VisionTransformer::new(tiny_vit(true), &mut Init::new(&dev(), 8)).unwrap();
    assert_eq!(all_values(&a), all_values(&b));
    assert_ne!(all_values(&a), all_values(&c));
}

#[test]
fn initialisation_follows_the_reference() {
    let mut init = Init::new(&dev(), 1);
    let l = Linear::new(64, 32, true, &mut init).unwrap();
    let bound = (6.0f32 / 96.0).sqrt();
    let w = l.weight.to_vec().unwrap();
    assert!(w.iter().all(|v| v.abs() <= bound));
    assert!(
        w.iter().any(|v| v.abs() > 0.9 * bound),
        "xavier draws reach the bound"
    );
    assert!(l
        .bias
        .as_ref()
        .unwrap()
        .to_vec()
        .unwrap()
        .iter()
        .all(|&v| v == 0.0));
    let b = Block::new(8, 2, 4.0, true, 1e-6, &mut init).unwrap();
    assert!(b.norm1.weight.to_vec().unwrap().iter().all(|&v| v == 1.0));
    assert!(b.norm1.bias.to_vec().unwrap().iter().all(|&v| v == 0.0));
    let head = init.trunc_normal(&[1000], 0.01).unwrap().to_vec().unwrap();
    assert!(head.iter().all(|v| v.abs() <= 0.02 + 1e-9));
    let std = (head.iter().map(|v| v * v).sum::<f32>() / 1000.0).sqrt();
    assert!((std - 0.0088).abs() < 0.001, "truncated normal std {std}");
    let tok = init.normal(&[4000], 0.02).unwrap().to_vec().unwrap();
    let std = (tok.iter().map(|v| v * v).sum::<f32>() / 4000.0).sqrt();
    assert!((std - 0.02).abs() < 0.001, "normal std {std}");
}

#[test]
fn vit_names_shapes_and_pooling() {
    for global_pool in [true, false] {
        let vit = VisionTransformer::new(tiny_vit(global_pool), &mut Init::new(&dev(), 0)).unwrap();
        let names: Vec<String> = named_parameters(&vit).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names[0], "patch_embed.proj.weight");
        assert!(names.contains(&"blocks.1.mlp.fc2.bias".to_string()));
        assert!(names.contains(&"cls_token".to_string()));
        let norm = if global_pool {
            "fc_norm.weight"
        } else {
            "norm.weight"
        };
        assert!(names.contains(&norm.to_string()), "{names:?}");
        assert_eq!(names.last().unwrap(), "head.bias");
        let img = Tensor::randn(&dev(), &[2, 1, 8, 8], 1).unwrap();
        let logits = vit.forward(&img, &mut Ctx::eval()).unwrap();
        assert_eq!(logits.shape(), &[2, 3]);
        assert_eq!(
            vit.features(&img, &mut Ctx::eval()).unwrap().shape(),
            &[2, 8]
        );
        assert_eq!(vit.blocks[1].drop_path, 0.1);
    }
    let bad = VitConfig {
        image_size: 9,
        ..tiny_vit(true)
    };
    assert!(VisionTransformer::new(bad, &mut Init::new(&dev(), 0)).is_err());
}

#[test]
fn dropout_and_drop_path_only_in_train_mode() {
    let x = Tensor::ones(&dev(), &[64, 4, 8]).unwrap();
    assert_eq!(
        dropout(&x, 0.5, &mut Ctx::eval())
            .unwrap()
            .to_vec()
            .unwrap(),
        x.to_vec().unwrap()
    );
    assert_eq!(
        drop_path(&x, 0.5, &mut Ctx::eval())
            .unwrap()
            .to_vec()
            .unwrap(),
        x.to_vec().unwrap()
    );
    let mut ctx = Ctx::train(3);
    let y = drop_path(&x, 0.5, &mut ctx).unwrap().to_vec().unwrap();
    // Whole samples are dropped or scaled by 2.
    for sample in y.chunks(32) {
        assert!(sample.iter().all(|&v| v == sample[0]) && (sample[0] == 0.0 || sample[0] == 2.0));
    }
    let kept = y.chunks(32).filter(|s| s[0] != 0.0).count();
    assert!((16..=48).contains(&kept), "kept {kept} of 64 samples");
    // Each call draws a fresh mask.
    let z = drop_path(&x, 0.5, &mut ctx).unwrap().to_vec().unwrap();
    assert_ne!(y, z);
}

#[test]
fn small_layers_pass_gradcheck() {
    let mut init = Init::new(&dev(), 5);
    let attn = Attention::new(4, 2, true, &mut init).unwrap();
    let x = Tensor::randn(&dev(), &[1, 3, 4], 9).unwrap();
    let report = gradcheck(
        |t| attn.forward(&t[0], &mut Ctx::eval()),
        std::slice::from_ref(&x),
        GradcheckOptions::default(),
    )
    .unwrap();
    assert!(report.passed, "attention: {report}");
    let block = Block::new(4, 2, 2.0, true, 1e-6, &mut init).unwrap();
    let report = gradcheck(
        |t| block.forward(&t[0], &mut Ctx::eval()),
        &[x],
        GradcheckOptions::default(),
    )
    .unwrap();
    assert!(report.passed, "block: {report}");
}

#[test]
fn fused_and_unfused_attention_agree() {
    // Attention dropout in train mode takes the unfused path; with p = 1e-9 it keeps every
    // weight (scaled by 1 / (1 - p) = 1 in f32), so both paths compute the same function.
    let mut attn = Attention::new(16, 2, true, &mut Init::new(&dev(), 6)).unwrap();
    let x = Tensor::randn(&dev(), &[2, 5, 16], 10).unwrap();
    let fused = attn
        .forward(&x, &mut Ctx::eval())
        .unwrap()
        .to_vec()
        .unwrap();
    attn.attn_drop = 1e-9;
    let unfused = attn
        .forward(&x, &mut Ctx::train(0))
        .unwrap()
        .to_vec()
        .unwrap();
    for (a, b) in fused.iter().zip(&unfused) {
        assert!((a - b).abs() <= 1e-5 + 1e-4 * b.abs(), "{a} vs {b}");
    }
}

#[test]
fn batch_norm_matches_the_cpu_reference_and_passes_gradcheck() {
    // (4, 3) features with different scales per column.
    let x: Vec<f32> = vec![
        1.0, 10.0, -3.0, 2.0, 30.0, -1.0, 4.0, 20.0, 0.5, -1.0, 0.0, 2.0,
    ];
    let (b, d) = (4, 3);
    let t = Tensor::from_slice(&dev(), &x, &[b, d]).unwrap();
    let mut bn = BatchNorm::new(&dev(), d).unwrap();
    let y = bn.forward(&t, &Ctx::train(0)).unwrap().to_vec().unwrap();
    let mut mean_want = vec![0.0; d];
    let mut var_want = vec![0.0; d];
    for c in 0..d {
        let col: Vec<f64> = (0..b).map(|r| x[r * d + c] as f64).collect();
        let mean = col.iter().sum::<f64>() / b as f64;
        let var = col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / b as f64;
        for r in 0..b {
            let want = (col[r] - mean) / (var + 1e-5).sqrt();
            assert!((y[r * d + c] as f64 - want).abs() < 1e-4, "({r}, {c})");
        }
        // running = 0.9 * initial + 0.1 * batch, the variance unbiased
        mean_want[c] = 0.1 * mean;
        var_want[c] = 0.9 + 0.1 * var * b as f64 / (b - 1) as f64;
    }
    let close = |got: Vec<f32>, want: &[f64]| {
        got.iter()
            .zip(want)
            .all(|(g, w)| (*g as f64 - w).abs() < 1e-3 * w.abs().max(1.0))
    };
    assert!(close(bn.running_mean.to_vec().unwrap(), &mean_want));
    assert!(close(bn.running_var.to_vec().unwrap(), &var_want));
    // Eval mode uses the running estimates.
    let e = bn.forward(&t, &Ctx::eval()).unwrap().to_vec().unwrap();
    let want = (x[1] as f64 - mean_want[1]) / (var_want[1] + 1e-5).sqrt();
    assert!((e[1] as f64 - want).abs() < 1e-3);
    // A single row cannot be normalised by its own statistics.
    assert!(bn
        .forward(&t.narrow(0, 0, 1).unwrap(), &Ctx::train(0))
        .is_err());

    // Gradients flow through the batch statistics.
    let x = Tensor::randn(&dev(), &[5, 3], 4).unwrap();
    let report = gradcheck(
        |t| BatchNorm::new(&dev(), 3)?.forward(&t[0], &Ctx::train(0)),
        &[x],
        GradcheckOptions::default(),
    )
    .unwrap();
    assert!(report.passed, "batch norm: {report}");
}

#[test]
fn masks_of_a_split_batch_are_the_whole_batchs() {
    // Data parallelism: two processes with three rows each draw the masks one process draws
    // for all six.
    let x = Tensor::randn(&dev(), &[6, 5], 1).unwrap();
    type Layer = fn(&Tensor, f32, &mut Ctx) -> engine::Result<Tensor>;
    for (name, layer) in [
        ("drop_path", drop_path as Layer),
        ("dropout", dropout as Layer),
    ] {
        let whole = layer(&x, 0.4, &mut Ctx::train(9))
            .unwrap()
            .to_vec()
            .unwrap();
        let mut halves = Vec::new();
        for first in [0, 3] {
            let rows = x.narrow(0, first, 3).unwrap();
            let mut ctx = Ctx::train(9).rows_of(first, 6);
            halves.extend(layer(&rows, 0.4, &mut ctx).unwrap().to_vec().unwrap());
        }
        assert_eq!(halves, whole, "{name}");
        assert!(
            whole.contains(&0.0) && whole.iter().any(|v| *v != 0.0),
            "{name}"
        );
    }
}

#[test]
fn the_patch_embedding_weight_gradient_is_one_product() {
    // 256 images of 4 patches of 3x8x8: a (B, D, C*p*p) stack of per-image weight
    // gradients would be 256 x 64 x 192 floats (12.6 MB); one product over all patches is
    // the weight's 49 KB.
    let device = dev();
    let m = nn::PatchEmbed::new(3, 8, 64, &mut Init::new(&device, 0)).unwrap();
    let img = Tensor::randn(&device, &[256, 3, 16, 16], 1).unwrap();
    let y = m.forward(&img).unwrap();
    let backward = || y.sum_all().unwrap().backward().unwrap();
    let (grads, growth) = device.peak_growth(backward).unwrap();
    assert!(grads.get(&m.weight).is_some());
    assert!(growth < 4 << 20, "backward took {growth} bytes more");
}
