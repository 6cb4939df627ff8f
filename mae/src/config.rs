//! Model configurations: the reference presets and small ones for machines without a GPU.

/// Shape and options of a [`crate::MaskedAutoencoder`].
#[derive(Clone, Debug, PartialEq)]
pub struct MaeConfig {
    /// Square image side.
    pub image_size: usize,
    /// Square patch side; divides `image_size`.
    pub patch_size: usize,
    /// Image channels.
    pub channels: usize,
    /// Encoder width.
    pub dim: usize,
    /// Encoder blocks.
    pub depth: usize,
    /// Encoder heads.
    pub heads: usize,
    /// Decoder width.
    pub decoder_dim: usize,
    /// Decoder blocks.
    pub decoder_depth: usize,
    /// Decoder heads.
    pub decoder_heads: usize,
    /// MLP hidden width over the block width.
    pub mlp_ratio: f32,
    /// Fraction of patches removed, in double precision as the reference holds it: the
    /// number of visible patches is decided by its rounding ([`len_keep`]).
    pub mask_ratio: f64,
    /// Normalise each target patch by its mean and (unbiased) variance.
    pub norm_pix_loss: bool,
    /// LayerNorm epsilon (1e-6 in the reference code, 1e-12 in transformers' default).
    pub eps: f32,
    /// Bias on the qkv projections.
    pub qkv_bias: bool,
}

impl MaeConfig {
    fn preset(
        image_size: usize,
        patch_size: usize,
        channels: usize,
        dim: usize,
        depth: usize,
        heads: usize,
        decoder: (usize, usize, usize),
    ) -> MaeConfig {
        MaeConfig {
            image_size,
            patch_size,
            channels,
            dim,
            depth,
            heads,
            decoder_dim: decoder.0,
            decoder_depth: decoder.1,
            decoder_heads: decoder.2,
            mlp_ratio: 4.0,
            mask_ratio: 0.75,
            norm_pix_loss: false,
            eps: 1e-6,
            qkv_bias: true,
        }
    }

    /// ViT-B/16 encoder, 512-wide 8-block decoder.
    pub fn mae_vit_base_patch16() -> MaeConfig {
        MaeConfig::preset(224, 16, 3, 768, 12, 12, (512, 8, 16))
    }

    /// ViT-L/16 encoder, 512-wide 8-block decoder.
    pub fn mae_vit_large_patch16() -> MaeConfig {
        MaeConfig::preset(224, 16, 3, 1024, 24, 16, (512, 8, 16))
    }

    /// ViT-H/14 encoder, 512-wide 8-block decoder.
    pub fn mae_vit_huge_patch14() -> MaeConfig {
        MaeConfig::preset(224, 14, 3, 1280, 32, 16, (512, 8, 16))
    }

    /// 28x28 grayscale (MNIST, Fashion-MNIST), patch 4: 49 patches; a 128-wide 6-block
    /// encoder and a 64-wide 2-block decoder, small enough to train without a GPU.
    pub fn mae_tiny_28_patch4() -> MaeConfig {
        MaeConfig::preset(28, 4, 1, 128, 6, 4, (64, 2, 4))
    }

    /// 28x28 grayscale, patch 7: 16 patches, 4 of them visible at mask ratio 0.75; the
    /// encoder and decoder of `mae_tiny_28_patch4`. Three times cheaper per image, which is
    /// what lets the default run learn within minutes on a CPU.
    pub fn mae_tiny_28_patch7() -> MaeConfig {
        MaeConfig::preset(28, 7, 1, 128, 6, 4, (64, 2, 4))
    }

    /// 32x32 RGB (CIFAR-sized), patch 4: 64 patches; a 192-wide 12-block encoder with 3
    /// heads (ViT-Ti) and a 128-wide 4-block decoder with 4 heads.
    pub fn mae_tiny_32_patch4() -> MaeConfig {
        MaeConfig::preset(32, 4, 3, 192, 12, 3, (128, 4, 4))
    }

    /// The names [`MaeConfig::by_name`] knows.
    pub const PRESETS: [&'static str; 6] = [
        "mae_vit_base_patch16",
        "mae_vit_large_patch16",
        "mae_vit_huge_patch14",
        "mae_tiny_28_patch4",
        "mae_tiny_28_patch7",
        "mae_tiny_32_patch4",
    ];

    /// A preset by name.
    pub fn by_name(name: &str) -> Option<MaeConfig> {
        Some(match name {
            "mae_vit_base_patch16" => MaeConfig::mae_vit_base_patch16(),
            "mae_vit_large_patch16" => MaeConfig::mae_vit_large_patch16(),
            "mae_vit_huge_patch14" => MaeConfig::mae_vit_huge_patch14(),
            "mae_tiny_28_patch4" => MaeConfig::mae_tiny_28_patch4(),
            "mae_tiny_28_patch7" => MaeConfig::mae_tiny_28_patch7(),
            "mae_tiny_32_patch4" => MaeConfig::mae_tiny_32_patch4(),
            _ => return None,
        })
    }

    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Number of patches `L`.
    pub fn num_patches(&self) -> usize {
        self.grid() * self.grid()
    }

    /// Values per patch, `p * p * C`.
    pub fn patch_dim(&self) -> usize {
        self.patch_size * self.patch_size * self.channels
    }

    /// Patches kept visible, [`len_keep`] of this config's patch count and ratio.
    pub fn len_keep(&self) -> usize {
        len_keep(self.num_patches(), self.mask_ratio)
    }

    /// Check that the sizes fit together.
    ///
    /// # Errors
    /// A message naming the first inconsistency.
    pub fn validate(&self) -> Result<(), String> {
        if self.patch_size == 0 || !self.image_size.is_multiple_of(self.patch_size) {
            return Err(format!(
                "image_size {} is not a multiple of patch_size {}",
                self.image_size, self.patch_size
            ));
        }
        for (what, dim, heads) in [
            ("encoder", self.dim, self.heads),
            ("decoder", self.decoder_dim, self.decoder_heads),
        ] {
            if heads == 0 || !dim.is_multiple_of(heads) || !dim.is_multiple_of(4) {
                return Err(format!(
                    "{what} width {dim} must be a multiple of 4 and of its {heads} heads"
                ));
            }
        }
        if !(0.0..1.0).contains(&self.mask_ratio) {
            return Err(format!(
                "mask_ratio must be in [0, 1), got {}",
                self.mask_ratio
            ));
        }
        Ok(())
    }
}

/// The number of patches kept visible out of `num_patches` at `mask_ratio`:
/// `int(L * (1 - mask_ratio))` exactly as the reference and transformers compute it, in
/// double precision and truncated. The rounding decides the count: `1 - 0.6` is `0.4` and
/// 25 patches keep 10, where a ratio held in `f32` would keep 9; `1 - 0.9` is just below
/// `0.1` and 100 patches keep 9.
pub fn len_keep(num_patches: usize, mask_ratio: f64) -> usize {
    (num_patches as f64 * (1.0 - mask_ratio)) as usize
}
