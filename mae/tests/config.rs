//! Configs: the parameter count that bounds them equals the built model's, and the bounds
//! refuse what no GPU could train.

use engine::Device;
use mae::{MaeConfig, MaskedAutoencoder};
use nn::{named_parameters, Init};

#[test]
fn parameter_count_is_the_built_models() {
    let dev = Device::shared().unwrap();
    for config in [
        MaeConfig::mae_tiny_28_patch7(),
        MaeConfig::mae_tiny_32_patch4(),
        MaeConfig {
            mlp_ratio: 2.0,
            decoder_depth: 0,
            ..MaeConfig::mae_tiny_28_patch4()
        },
    ] {
        let model = MaskedAutoencoder::new(config.clone(), &mut Init::new(&dev, 0)).unwrap();
        let built: usize = named_parameters(&model)
            .iter()
            .map(|(_, t)| t.numel())
            .sum();
        assert_eq!(config.parameter_count(), built as f64, "{config:?}");
    }
    // The reference's MAE ViT-B/16 has 111,907,840 parameters in PyTorch's count, which
    // includes the two fixed position tables, (1 + 196) x (768 + 512) values.
    let base = MaeConfig::mae_vit_base_patch16().parameter_count();
    assert_eq!(base, 111_907_840.0 - 197.0 * (768.0 + 512.0));
}

#[test]
fn bounds_refuse_what_no_gpu_trains() {
    let ok = MaeConfig::mae_vit_huge_patch14();
    assert!(ok.validate().is_ok());
    let refused = |c: MaeConfig, needle: &str| {
        let e = c.validate().unwrap_err();
        assert!(e.contains(needle), "{e}");
    };
    refused(
        MaeConfig {
            depth: 1_000_000_000,
            ..ok.clone()
        },
        "more than 1024",
    );
    refused(
        MaeConfig {
            decoder_depth: 1025,
            ..ok.clone()
        },
        "more than 1024",
    );
    refused(
        MaeConfig {
            dim: 1 << 20,
            heads: 16,
            ..ok.clone()
        },
        "at most 16384",
    );
    refused(
        MaeConfig {
            depth: 1000,
            dim: 8192,
            heads: 64,
            ..ok.clone()
        },
        "parameters, more than",
    );
    refused(
        MaeConfig {
            image_size: 1 << 20,
            patch_size: 1,
            ..ok.clone()
        },
        "per side",
    );
    refused(
        MaeConfig {
            mlp_ratio: f32::NAN,
            ..ok.clone()
        },
        "MLP ratio",
    );
    refused(
        MaeConfig {
            patch_size: 0,
            ..ok.clone()
        },
        "patch_size 0",
    );
    refused(MaeConfig { channels: 0, ..ok }, "at least 1");
}
