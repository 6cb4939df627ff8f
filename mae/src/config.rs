//! Model configurations: the reference presets and small ones for machines without a GPU,
//! and the config a `--model` value names.

use std::path::Path;

use crate::hf::read_config;
use crate::Error;

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

    /// The number of trained parameters, in `f64` so that no config can overflow it.
    pub fn parameter_count(&self) -> f64 {
        let block = |d: f64| {
            let hidden = d * self.mlp_ratio as f64;
            4.0 * d // two norms
                + 3.0 * d * d + 3.0 * d // qkv
                + d * d + d // proj
                + 2.0 * d * hidden + hidden + d // mlp
        };
        let (d, dd) = (self.dim as f64, self.decoder_dim as f64);
        let p = (self.patch_size as f64).powi(2) * self.channels as f64;
        let encoder = d * p + d + d + self.depth as f64 * block(d) + 2.0 * d;
        let decoder =
            d * dd + dd + dd + self.decoder_depth as f64 * block(dd) + 2.0 * dd + dd * p + p;
        encoder + decoder
    }

    /// Check that the sizes fit together and stay within what one GPU can train: at most
    /// [`MAX_BLOCKS`] blocks in the encoder and in the decoder, and at most
    /// [`MAX_PARAMETERS`] parameters. A config is read before any weights are, so these
    /// bounds are what stops a corrupt or hostile one from allocating without end.
    ///
    /// # Errors
    /// A message naming the first inconsistency.
    pub fn validate(&self) -> Result<(), String> {
        if self.patch_size == 0
            || self.image_size < self.patch_size
            || !self.image_size.is_multiple_of(self.patch_size)
        {
            return Err(format!(
                "image_size {} is not a positive multiple of patch_size {}",
                self.image_size, self.patch_size
            ));
        }
        if self.grid() > MAX_GRID {
            return Err(format!(
                "{}x{} patches of {}, more than {MAX_GRID} per side",
                self.grid(),
                self.grid(),
                self.patch_size
            ));
        }
        if self.dim == 0 || self.decoder_dim == 0 || self.channels == 0 {
            return Err("widths and channels must be at least 1".into());
        }
        if self.dim.max(self.decoder_dim) > MAX_WIDTH {
            return Err(format!(
                "widths {} and {} must be at most {MAX_WIDTH}",
                self.dim, self.decoder_dim
            ));
        }
        for (what, depth) in [
            ("num_hidden_layers", self.depth),
            ("decoder_num_hidden_layers", self.decoder_depth),
        ] {
            if depth > MAX_BLOCKS {
                return Err(format!("{what} is {depth}, more than {MAX_BLOCKS}"));
            }
        }
        if !(self.mlp_ratio > 0.0 && self.mlp_ratio <= 64.0) {
            return Err(format!(
                "the MLP ratio {} must be in (0, 64]",
                self.mlp_ratio
            ));
        }
        if !(self.eps >= 0.0 && self.eps.is_finite()) {
            return Err(format!(
                "layer_norm_eps {} must be a non-negative number",
                self.eps
            ));
        }
        let parameters = self.parameter_count();
        if parameters > MAX_PARAMETERS {
            return Err(format!(
                "the config describes {parameters:.3e} parameters, more than {MAX_PARAMETERS:e} (weights, gradients and AdamW state take 16 bytes each)"
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

/// The widest encoder or decoder (ViT-22B is 6144 wide).
pub const MAX_WIDTH: usize = 16384;

/// The most patches per side (a 4096-pixel image in patches of 16 has 256).
pub const MAX_GRID: usize = 256;

/// The most blocks an encoder or decoder may have (ViT-22B has 48).
pub const MAX_BLOCKS: usize = 1024;

/// The most parameters a model may have: at 16 bytes each (weights, gradients, AdamW's two
/// moments) 1e10 parameters fill 160 GB, more than one GPU holds today.
pub const MAX_PARAMETERS: f64 = 1e10;

/// The number of patches kept visible out of `num_patches` at `mask_ratio`:
/// `int(L * (1 - mask_ratio))` exactly as the reference and transformers compute it, in
/// double precision and truncated. The rounding decides the count: `1 - 0.6` is `0.4` and
/// 25 patches keep 10, where a ratio held in `f32` would keep 9; `1 - 0.9` is just below
/// `0.1` and 100 patches keep 9.
pub fn len_keep(num_patches: usize, mask_ratio: f64) -> usize {
    (num_patches as f64 * (1.0 - mask_ratio)) as usize
}

/// The config a `--model` value names, before any weights are made.
///
/// # Errors
/// One line when the value is neither a preset nor a readable config.
pub fn config_from(model: &str) -> Result<MaeConfig, Error> {
    if let Some(c) = MaeConfig::by_name(model) {
        return Ok(c);
    }
    let path = Path::new(model);
    let config_path = if path.is_dir() {
        path.join("config.json")
    } else {
        path.to_path_buf()
    };
    if !config_path.is_file() {
        return Err(Error::Setup(format!(
            "--model {model}: not a preset ({}) and no {}",
            MaeConfig::PRESETS.join(", "),
            config_path.display()
        )));
    }
    Ok(read_config(&config_path)?)
}
