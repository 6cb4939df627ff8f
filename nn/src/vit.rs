//! A Vision Transformer classifier for fine-tuning and from-scratch baselines, as the MAE
//! reference's `models_vit.py`: patch embedding, fixed sin-cos position embedding, cls token,
//! pre-norm blocks with linearly increasing drop path, then either the cls token through
//! `norm` or the mean of the patch tokens through `fc_norm` (global pool), and a linear head.

use engine::{Result, Tensor};

use crate::init::Init;
use crate::layers::{Block, LayerNorm, Linear, PatchEmbed};
use crate::module::{join, Ctx, Module};
use crate::pos_embed::{interpolate, sincos_2d};

/// Shape of a [`VisionTransformer`].
#[derive(Clone, Debug, PartialEq)]
pub struct VitConfig {
    /// Square image side.
    pub image_size: usize,
    /// Square patch side; divides `image_size`.
    pub patch_size: usize,
    /// Image channels.
    pub channels: usize,
    /// Token width `D` (a multiple of 4 for the position embedding).
    pub dim: usize,
    /// Number of blocks.
    pub depth: usize,
    /// Attention heads.
    pub heads: usize,
    /// MLP hidden width over `D`.
    pub mlp_ratio: f32,
    /// Bias on the qkv projection.
    pub qkv_bias: bool,
    /// LayerNorm epsilon.
    pub eps: f32,
    /// Output classes.
    pub classes: usize,
    /// Mean of patch tokens with `fc_norm` (true) or the cls token with `norm` (false).
    pub global_pool: bool,
    /// Drop-path rate of the last block (linearly from 0 at the first).
    pub drop_path: f32,
    /// The patch grid side the position table was made for: the pretraining's. At another
    /// `image_size` the table is that grid's, interpolated to this one as the reference's
    /// `interpolate_pos_embed` does ([`crate::pos_embed::interpolate`]).
    pub pos_grid: usize,
}

impl VitConfig {
    fn check(&self) -> Result<()> {
        let ok = self.patch_size > 0
            && self.image_size.is_multiple_of(self.patch_size)
            && self.dim.is_multiple_of(4)
            && self.heads > 0
            && self.dim.is_multiple_of(self.heads)
            && self.pos_grid > 0;
        if !ok {
            return Err(engine::Error::Shape {
                op: "VitConfig",
                msg: format!("inconsistent config {self:?}: image_size must be a multiple of patch_size, dim of 4 and of heads"),
            });
        }
        Ok(())
    }
}

/// The classifier. Parameter names follow timm: `patch_embed.proj.weight`, `cls_token`,
/// `blocks.{i}.*`, `norm.*` or `fc_norm.*`, `head.*`.
pub struct VisionTransformer {
    /// The config it was built from.
    pub config: VitConfig,
    /// Image to tokens.
    pub patch_embed: PatchEmbed,
    /// `[1, 1, D]`
    pub cls_token: Tensor,
    /// Fixed `(1 + L, D)` sin-cos table (not trained), interpolated from the pretraining's
    /// grid at another resolution.
    pub pos_embed: Tensor,
    /// The blocks.
    pub blocks: Vec<Block>,
    /// Final norm: `fc_norm` with global pooling, `norm` otherwise.
    pub norm: LayerNorm,
    /// Classifier head.
    pub head: Linear,
}

impl VisionTransformer {
    /// A classifier with the reference's initialisation: xavier-uniform linears, cls token
    /// normal(0.02), head truncated normal with std 2e-5 (the fine-tuning recipe).
    ///
    /// # Errors
    /// [`engine::Error::Shape`] for an inconsistent config.
    pub fn new(config: VitConfig, init: &mut Init) -> Result<VisionTransformer> {
        config.check()?;
        let grid = config.image_size / config.patch_size;
        let patch_embed = PatchEmbed::new(config.channels, config.patch_size, config.dim, init)?;
        let cls_token = init.normal(&[1, 1, config.dim], 0.02)?;
        let mut table = sincos_2d(config.dim, config.pos_grid);
        if config.pos_grid != grid {
            table = interpolate(&table, config.dim, config.pos_grid, grid);
        }
        let pos_embed = Tensor::from_slice(init.device(), &table, &[1 + grid * grid, config.dim])?;
        let mut blocks = Vec::with_capacity(config.depth);
        for i in 0..config.depth {
            let mut b = Block::new(
                config.dim,
                config.heads,
                config.mlp_ratio,
                config.qkv_bias,
                config.eps,
                init,
            )?;
            b.drop_path = config.drop_path * i as f32 / (config.depth.max(2) - 1) as f32;
            blocks.push(b);
        }
        let norm = LayerNorm::new(config.dim, config.eps, init)?;
        let head = Linear {
            weight: init.trunc_normal(&[config.classes, config.dim], 2e-5)?,
            bias: Some(init.constant(&[config.classes], 0.0)?),
        };
        Ok(VisionTransformer {
            config,
            patch_embed,
            cls_token,
            pos_embed,
            blocks,
            norm,
            head,
        })
    }

    /// The last block's output `(B, 1 + L, D)` for images `(B, C, H, W)`, cls token first,
    /// before the final norm.
    ///
    /// # Errors
    /// [`engine::Error::Shape`] for images of the wrong shape.
    pub fn forward_tokens(&self, img: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let x = self.patch_embed.forward(img)?; // (B, L, D)
        let (b, l, d) = (x.shape()[0], x.shape()[1], x.shape()[2]);
        let x = x.add(&self.pos_embed.narrow(0, 1, l)?)?;
        let cls = self
            .cls_token
            .add(&self.pos_embed.narrow(0, 0, 1)?)?
            .broadcast_to(&[b, 1, d])?;
        let mut x = Tensor::concat(&[&cls, &x], 1)?; // (B, 1 + L, D)
        for block in &self.blocks {
            x = block.forward(&x, ctx)?;
        }
        Ok(x)
    }

    /// Pooled features `(B, D)` of tokens `(B, 1 + L, D)`: the mean of the patch tokens
    /// through `fc_norm` (global pool), or the cls token through `norm`.
    ///
    /// # Errors
    /// [`engine::Error::Shape`] for tokens of the wrong shape.
    pub fn pool(&self, tokens: &Tensor) -> Result<Tensor> {
        let l = tokens.shape()[1] - 1;
        if self.config.global_pool {
            self.norm.forward(&tokens.narrow(1, 1, l)?.mean(1, false)?)
        } else {
            self.norm.forward(&tokens.narrow(1, 0, 1)?.squeeze(1)?)
        }
    }

    /// Pooled features `(B, D)` of images `(B, C, H, W)`: what a linear probe reads.
    ///
    /// # Errors
    /// [`engine::Error::Shape`] for images of the wrong shape.
    pub fn features(&self, img: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        self.pool(&self.forward_tokens(img, ctx)?)
    }

    /// The final norm's name: `fc_norm` with global pooling, `norm` otherwise (timm's).
    fn norm_name(&self) -> &'static str {
        if self.config.global_pool {
            "fc_norm"
        } else {
            "norm"
        }
    }

    /// Logits `(B, classes)`.
    ///
    /// # Errors
    /// As [`VisionTransformer::features`].
    pub fn forward(&self, img: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        self.head.forward(&self.features(img, ctx)?)
    }
}

impl Module for VisionTransformer {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        self.patch_embed.visit(&join(prefix, "patch_embed"), f);
        self.cls_token.visit(&join(prefix, "cls_token"), f);
        self.blocks.visit(&join(prefix, "blocks"), f);
        self.norm.visit(&join(prefix, self.norm_name()), f);
        self.head.visit(&join(prefix, "head"), f);
    }

    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Tensor)) {
        let norm = self.norm_name();
        self.patch_embed.visit_mut(&join(prefix, "patch_embed"), f);
        self.cls_token.visit_mut(&join(prefix, "cls_token"), f);
        self.blocks.visit_mut(&join(prefix, "blocks"), f);
        self.norm.visit_mut(&join(prefix, norm), f);
        self.head.visit_mut(&join(prefix, "head"), f);
    }
}
