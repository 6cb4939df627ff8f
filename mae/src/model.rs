//! The Masked Autoencoder, step for step as the reference `models_mae.py`.
//!
//! Shapes: `N` images, `L` patches, `K = len_keep` visible patches, `D` encoder width,
//! `Dd` decoder width, `P = p*p*C` values per patch.

use engine::{DType, Result, Tensor};
use nn::layers::{Block, LayerNorm, Linear, PatchEmbed};
use nn::pos_embed::sincos_2d;
use nn::{Ctx, Init};

use crate::config::MaeConfig;

/// `imgs: (N, C, H, W)` -> `(N, L, p*p*C)`, patches row-major, each patch ordered
/// (row in patch, column in patch, channel).
///
/// # Errors
/// [`engine::Error::Shape`] when the image sides are not multiples of `p`.
pub fn patchify(imgs: &Tensor, p: usize) -> Result<Tensor> {
    let &[n, c, h, w] = imgs.shape() else {
        return Err(engine::Error::Shape {
            op: "patchify",
            msg: format!("needs (N, C, H, W), got {:?}", imgs.shape()),
        });
    };
    if p == 0 || !h.is_multiple_of(p) || !w.is_multiple_of(p) {
        return Err(engine::Error::Shape {
            op: "patchify",
            msg: format!("image {h}x{w} is not divisible into {p}x{p} patches"),
        });
    }
    let (gh, gw) = (h / p, w / p);
    // (N, C, gh, p, gw, p) -> (N, gh, gw, p, p, C)
    imgs.reshape(&[n, c, gh, p, gw, p])?
        .permute(&[0, 2, 4, 3, 5, 1])?
        .reshape(&[n, gh * gw, p * p * c])
}

/// The inverse of [`patchify`]: `(N, L, p*p*C)` -> `(N, C, H, W)` for square images.
///
/// # Errors
/// [`engine::Error::Shape`] when `L` is not a square or `P != p*p*c`.
pub fn unpatchify(x: &Tensor, p: usize, c: usize) -> Result<Tensor> {
    let &[n, l, pp] = x.shape() else {
        return Err(engine::Error::Shape {
            op: "unpatchify",
            msg: format!("needs (N, L, P), got {:?}", x.shape()),
        });
    };
    let g = (l as f64).sqrt().round() as usize;
    if g * g != l || pp != p * p * c {
        return Err(engine::Error::Shape {
            op: "unpatchify",
            msg: format!("{:?} is not (N, g*g, {p}*{p}*{c})", x.shape()),
        });
    }
    // (N, g, g, p, p, C) -> (N, C, g, p, g, p)
    x.reshape(&[n, g, g, p, p, c])?
        .permute(&[0, 5, 1, 3, 2, 4])?
        .reshape(&[n, c, g * p, g * p])
}

/// What [`MaskedAutoencoder::forward`] returns.
pub struct MaeOutput {
    /// Mean squared error over the removed patches, rank 0.
    pub loss: Tensor,
    /// `(N, L, P)` predicted pixel values (normalised per patch when `norm_pix_loss`).
    pub pred: Tensor,
    /// `(N, L)`, 0 is keep, 1 is remove, in original patch order.
    pub mask: Tensor,
    /// `(N, L)` `U32`: the permutation that puts shuffled tokens back in order.
    pub ids_restore: Tensor,
}

/// The model: an encoder over visible patches and a decoder over all of them.
pub struct MaskedAutoencoder {
    /// The config it was built from.
    pub config: MaeConfig,
    /// Image to patch tokens.
    pub patch_embed: PatchEmbed,
    /// `[1, 1, D]`
    pub cls_token: Tensor,
    /// `[1, 1 + L, D]`, fixed sin-cos, not trained.
    pub pos_embed: Tensor,
    /// Encoder blocks.
    pub blocks: Vec<Block>,
    /// Encoder's final norm.
    pub norm: LayerNorm,
    /// `D -> Dd`
    pub decoder_embed: Linear,
    /// `[1, 1, Dd]`, stands in for every removed patch.
    pub mask_token: Tensor,
    /// `[1, 1 + L, Dd]`, fixed sin-cos.
    pub decoder_pos_embed: Tensor,
    /// Decoder blocks.
    pub decoder_blocks: Vec<Block>,
    /// Decoder's final norm.
    pub decoder_norm: LayerNorm,
    /// `Dd -> P`
    pub decoder_pred: Linear,
}

impl MaskedAutoencoder {
    /// A model with the reference's initialisation from `init`.
    ///
    /// # Errors
    /// [`engine::Error::Shape`] for an inconsistent config.
    pub fn new(config: MaeConfig, init: &mut Init) -> Result<MaskedAutoencoder> {
        config.validate().map_err(|msg| engine::Error::Shape {
            op: "MaeConfig",
            msg,
        })?;
        let c = &config;
        let (l, g) = (c.num_patches(), c.grid());
        let dev = init.device().clone();
        let blocks = |dim, heads, depth, init: &mut Init| -> Result<Vec<Block>> {
            (0..depth)
                .map(|_| Block::new(dim, heads, c.mlp_ratio, c.qkv_bias, c.eps, init))
                .collect()
        };
        Ok(MaskedAutoencoder {
            patch_embed: PatchEmbed::new(c.channels, c.patch_size, c.dim, init)?,
            cls_token: init.normal(&[1, 1, c.dim], 0.02)?,
            pos_embed: Tensor::from_slice(&dev, &sincos_2d(c.dim, g), &[1, 1 + l, c.dim])?,
            blocks: blocks(c.dim, c.heads, c.depth, init)?,
            norm: LayerNorm::new(c.dim, c.eps, init)?,
            decoder_embed: Linear::new(c.dim, c.decoder_dim, true, init)?,
            mask_token: init.normal(&[1, 1, c.decoder_dim], 0.02)?,
            decoder_pos_embed: Tensor::from_slice(
                &dev,
                &sincos_2d(c.decoder_dim, g),
                &[1, 1 + l, c.decoder_dim],
            )?,
            decoder_blocks: blocks(c.decoder_dim, c.decoder_heads, c.decoder_depth, init)?,
            decoder_norm: LayerNorm::new(c.decoder_dim, c.eps, init)?,
            decoder_pred: Linear::new(c.decoder_dim, c.patch_dim(), true, init)?,
            config,
        })
    }

    /// Per-sample random masking by sorting `noise (N, L)`: the `K = len_keep(L,
    /// mask_ratio)` patches with the smallest noise stay visible.
    /// Returns `x_masked (N, K, D)`, `mask (N, L)` (1 = removed) and `ids_restore (N, L)`.
    ///
    /// # Errors
    /// [`engine::Error::Shape`] when `noise` is not `(N, L)` or `mask_ratio` is not in
    /// `[0, 1)`.
    pub fn random_masking(
        &self,
        x: &Tensor,
        mask_ratio: f64,
        noise: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (n, l, d) = (x.shape()[0], x.shape()[1], x.shape()[2]);
        if noise.shape() != [n, l] || !(0.0..1.0).contains(&mask_ratio) {
            return Err(engine::Error::Shape {
                op: "random_masking",
                msg: format!(
                    "needs noise ({n}, {l}) and a mask ratio in [0, 1), got {:?} and {mask_ratio}",
                    noise.shape()
                ),
            });
        }
        let k = crate::config::len_keep(l, mask_ratio);
        let ids_shuffle = noise.argsort(false)?; // ascend: small is keep
        let ids_restore = ids_shuffle.to_dtype(DType::F32)?.argsort(false)?;
        let ids_keep = ids_shuffle.narrow(1, 0, k)?;
        let x_masked = x.gather(1, &ids_keep.unsqueeze(-1)?.broadcast_to(&[n, k, d])?)?;
        // 0 for the first K of the shuffled order, 1 after; then back in original order.
        let sorted_mask = Tensor::arange(x.device(), 0.0, l as f32, 1.0)?
            .ge_scalar(k as f32)?
            .to_dtype(DType::F32)?;
        let mask = sorted_mask.broadcast_to(&[n, l])?.gather(1, &ids_restore)?;
        Ok((x_masked, mask, ids_restore))
    }

    /// Encode the patches `mask_ratio` leaves visible: `latent (N, 1 + K, D)` with the cls
    /// token first, and the mask and `ids_restore` of [`MaskedAutoencoder::random_masking`].
    ///
    /// # Errors
    /// [`engine::Error::Shape`] for images or noise of the wrong shape.
    pub fn forward_encoder(
        &self,
        imgs: &Tensor,
        mask_ratio: f64,
        noise: &Tensor,
        ctx: &mut Ctx,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let l = self.config.num_patches();
        // embed patches and add the position embedding without the cls row: (N, L, D)
        let x = self
            .patch_embed
            .forward(imgs)?
            .add(&self.pos_embed.narrow(1, 1, l)?)?;
        let (x, mask, ids_restore) = self.random_masking(&x, mask_ratio, noise)?; // (N, K, D)
        let n = x.shape()[0];
        let cls = self
            .cls_token
            .add(&self.pos_embed.narrow(1, 0, 1)?)?
            .broadcast_to(&[n, 1, self.config.dim])?;
        let mut x = Tensor::concat(&[&cls, &x], 1)?; // (N, 1 + K, D)
        for block in &self.blocks {
            x = block.forward(&x, ctx)?;
        }
        Ok((self.norm.forward(&x)?, mask, ids_restore))
    }

    /// Decode all patches from the latent: `pred (N, L, P)`.
    ///
    /// # Errors
    /// [`engine::Error::Shape`] for inputs of the wrong shape.
    pub fn forward_decoder(
        &self,
        latent: &Tensor,
        ids_restore: &Tensor,
        ctx: &mut Ctx,
    ) -> Result<Tensor> {
        let x = self.decoder_embed.forward(latent)?; // (N, 1 + K, Dd)
        let (n, k1, dd) = (x.shape()[0], x.shape()[1], x.shape()[2]);
        let l = self.config.num_patches();
        // append mask tokens after the visible tokens (cls excluded), then unshuffle
        let mask_tokens = self.mask_token.broadcast_to(&[n, l + 1 - k1, dd])?;
        let x_ = Tensor::concat(&[&x.narrow(1, 1, k1 - 1)?, &mask_tokens], 1)?; // (N, L, Dd)
        let x_ = x_.gather(1, &ids_restore.unsqueeze(-1)?.broadcast_to(&[n, l, dd])?)?;
        let mut x = Tensor::concat(&[&x.narrow(1, 0, 1)?, &x_], 1)?.add(&self.decoder_pos_embed)?; // (N, 1 + L, Dd)
        for block in &self.decoder_blocks {
            x = block.forward(&x, ctx)?;
        }
        let x = self.decoder_pred.forward(&self.decoder_norm.forward(&x)?)?; // (N, 1 + L, P)
        x.narrow(1, 1, l) // drop the cls token
    }

    /// Mean squared error per patch, averaged over the removed patches only; with
    /// `norm_pix_loss` the target patches are normalised by their own mean and unbiased
    /// variance (eps 1e-6).
    ///
    /// # Errors
    /// [`engine::Error::Shape`] for inputs of the wrong shape.
    pub fn forward_loss(&self, imgs: &Tensor, pred: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let mut target = patchify(imgs, self.config.patch_size)?; // (N, L, P)
        if self.config.norm_pix_loss {
            let mean = target.mean(-1, true)?;
            let var = target.var(-1, true, true)?;
            target = target.sub(&mean)?.div(&var.add_scalar(1e-6)?.sqrt()?)?;
        }
        let diff = pred.sub(&target)?;
        let loss = diff.mul(&diff)?.mean(-1, false)?; // (N, L), mean loss per patch
        loss.mul(mask)?.sum_all()?.div(&mask.sum_all()?) // mean over removed patches
    }

    /// The whole model on `imgs (N, C, H, W)`, masking `mask_ratio` of the patches (the
    /// reference's `forward(imgs, mask_ratio)`) by the noise `(N, L)` given, as
    /// transformers' `noise=` argument.
    ///
    /// # Errors
    /// [`engine::Error::Shape`] for images or noise of the wrong shape.
    pub fn forward(
        &self,
        imgs: &Tensor,
        mask_ratio: f64,
        noise: &Tensor,
        ctx: &mut Ctx,
    ) -> Result<MaeOutput> {
        let (latent, mask, ids_restore) = self.forward_encoder(imgs, mask_ratio, noise, ctx)?;
        let pred = self.forward_decoder(&latent, &ids_restore, ctx)?;
        let loss = self.forward_loss(imgs, &pred, &mask)?;
        Ok(MaeOutput {
            loss,
            pred,
            mask,
            ids_restore,
        })
    }

    /// [`MaskedAutoencoder::forward`] with uniform noise drawn on the device from `seed`.
    ///
    /// # Errors
    /// As [`MaskedAutoencoder::forward`].
    pub fn forward_seeded(
        &self,
        imgs: &Tensor,
        mask_ratio: f64,
        seed: u64,
        ctx: &mut Ctx,
    ) -> Result<MaeOutput> {
        let noise = Tensor::rand(
            imgs.device(),
            &[imgs.shape()[0], self.config.num_patches()],
            seed,
        )?;
        self.forward(imgs, mask_ratio, &noise, ctx)
    }
}

// The position embeddings are fixed tables, not parameters: built from the config, then
// replaced by a checkpoint's own tables when it has them (`hf::load_pretrained`).
nn::module_fields!(MaskedAutoencoder {
    patch_embed: "patch_embed",
    cls_token: "cls_token",
    blocks: "blocks",
    norm: "norm",
    decoder_embed: "decoder_embed",
    mask_token: "mask_token",
    decoder_blocks: "decoder_blocks",
    decoder_norm: "decoder_norm",
    decoder_pred: "decoder_pred",
});
