//! The layers of a Vision Transformer, with the parameter names of the MAE reference (timm):
//! `fc1`, `qkv`, `norm1`, `patch_embed.proj`, ...
//!
//! Shapes use `B` batch, `N` tokens, `D` width, `H` heads.

use engine::{Result, Tensor};

use crate::init::Init;
use crate::module::Ctx;
use crate::module_fields;

/// `y = x W^T + b`, with `W` stored `[out, in]` as in PyTorch (read transposed in place by
/// the matmul kernel).
#[derive(Clone)]
pub struct Linear {
    /// `[out, in]`
    pub weight: Tensor,
    /// `[out]`, or none.
    pub bias: Option<Tensor>,
}

impl Linear {
    /// Xavier-uniform weight, zero bias (when `bias`).
    ///
    /// # Errors
    /// Engine errors only.
    pub fn new(in_dim: usize, out_dim: usize, bias: bool, init: &mut Init) -> Result<Linear> {
        Ok(Linear {
            weight: init.xavier_uniform(out_dim, in_dim)?,
            bias: bias.then(|| init.constant(&[out_dim], 0.0)).transpose()?,
        })
    }

    /// `(.., in) -> (.., out)`
    ///
    /// # Errors
    /// [`engine::Error::Shape`] when the last axis is not `in`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.linear(&self.weight, self.bias.as_ref())
    }
}

/// Layer normalisation over the last axis with learned scale and shift.
#[derive(Clone)]
pub struct LayerNorm {
    /// `[D]`, initialised to 1.
    pub weight: Tensor,
    /// `[D]`, initialised to 0.
    pub bias: Tensor,
    /// Added to the variance: 1e-6 in the MAE reference, 1e-12 in transformers' ViTMAE.
    pub eps: f32,
}

impl LayerNorm {
    /// Weight 1, bias 0.
    ///
    /// # Errors
    /// Engine errors only.
    pub fn new(dim: usize, eps: f32, init: &mut Init) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: init.constant(&[dim], 1.0)?,
            bias: init.constant(&[dim], 0.0)?,
            eps,
        })
    }

    /// `(.., D) -> (.., D)`
    ///
    /// # Errors
    /// [`engine::Error::Shape`] when the last axis is not `D`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.layer_norm(&self.weight, &self.bias, self.eps)
    }
}

/// Batch normalisation of `(B, D)` features without affine parameters, as PyTorch's
/// `BatchNorm1d(D, affine=False)`: the linear probe's feature normaliser. In train mode
/// each feature is normalised with the batch's mean and biased variance (gradients flow
/// through both) and the running estimates move towards the batch's (momentum 0.1, the
/// variance unbiased); in eval mode the running estimates are used.
pub struct BatchNorm {
    /// `[D]`, starts at 0. A buffer, not a parameter.
    pub running_mean: Tensor,
    /// `[D]`, starts at 1. A buffer, not a parameter.
    pub running_var: Tensor,
    /// Weight of the batch's statistics in the running update.
    pub momentum: f32,
    /// Added to the variance.
    pub eps: f32,
}

impl BatchNorm {
    /// Running mean 0, variance 1, momentum 0.1, eps 1e-5 (PyTorch's defaults).
    ///
    /// # Errors
    /// Engine errors only.
    pub fn new(device: &engine::Device, dim: usize) -> Result<BatchNorm> {
        Ok(BatchNorm {
            running_mean: Tensor::zeros(device, &[dim])?,
            running_var: Tensor::ones(device, &[dim])?,
            momentum: 0.1,
            eps: 1e-5,
        })
    }

    /// `(B, D) -> (B, D)`; in train mode also updates the running estimates.
    ///
    /// # Errors
    /// [`engine::Error::Shape`] when `x` is not `(B, D)`, or is a single row in train mode
    /// (its variance is undefined).
    pub fn forward(&mut self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let dim = self.running_mean.numel();
        if x.rank() != 2 || x.shape()[1] != dim || (ctx.train && x.shape()[0] < 2) {
            return Err(engine::Error::Shape {
                op: "BatchNorm",
                msg: format!(
                    "needs (B, {dim}) features with B >= 2 in train mode, got {:?}",
                    x.shape()
                ),
            });
        }
        if !ctx.train {
            let std = self.running_var.add_scalar(self.eps)?.sqrt()?;
            return x.sub(&self.running_mean)?.div(&std);
        }
        let b = x.shape()[0];
        let mean = x.mean(0, true)?; // (1, D)
        let var = x.var(0, true, false)?; // (1, D)
        engine::no_grad(|| {
            let m = self.momentum;
            let unbiased = var.mul_scalar(b as f32 / (b - 1) as f32)?.squeeze(0)?;
            self.running_mean = self
                .running_mean
                .mul_scalar(1.0 - m)?
                .add(&mean.squeeze(0)?.mul_scalar(m)?)?;
            self.running_var = self
                .running_var
                .mul_scalar(1.0 - m)?
                .add(&unbiased.mul_scalar(m)?)?;
            Ok(())
        })?;
        x.sub(&mean)?.div(&var.add_scalar(self.eps)?.sqrt()?)
    }
}

/// Inverted dropout in train mode, identity in eval mode.
///
/// # Errors
/// Engine errors only.
pub fn dropout(x: &Tensor, p: f32, ctx: &mut Ctx) -> Result<Tensor> {
    if !ctx.train || p == 0.0 {
        return Ok(x.clone());
    }
    let (first, total) = ctx.global_rows(x.shape()[0]);
    if (first, total) == (0, x.shape()[0]) {
        return x.dropout(p, ctx.next_seed());
    }
    // Rows of a larger batch: the global batch's mask, cut to these rows. The dropout
    // kernel keeps element i where its uniform draw is at least p, so this is its mask.
    let mut shape = x.shape().to_vec();
    shape[0] = total;
    let mask = Tensor::rand(x.device(), &shape, ctx.next_seed())?
        .narrow(0, first, x.shape()[0])?
        .ge_scalar(p)?
        .to_dtype(engine::DType::F32)?
        .mul_scalar(1.0 / (1.0 - p))?;
    x.mul(&mask)
}

/// Stochastic depth: in train mode each sample's residual branch is dropped with
/// probability `p` and the kept ones scaled by `1 / (1 - p)`. `x` is `(B, ..)`.
///
/// # Errors
/// Engine errors only.
pub fn drop_path(x: &Tensor, p: f32, ctx: &mut Ctx) -> Result<Tensor> {
    if !ctx.train || p == 0.0 {
        return Ok(x.clone());
    }
    let (first, total) = ctx.global_rows(x.shape()[0]);
    let mut shape = vec![1; x.rank()];
    shape[0] = total;
    let keep = 1.0 - p;
    let mask = Tensor::rand(x.device(), &shape, ctx.next_seed())?
        .narrow(0, first, x.shape()[0])?
        .lt_scalar(keep)?
        .to_dtype(engine::DType::F32)?
        .div_scalar(keep)?;
    x.mul(&mask)
}

/// `fc2(gelu(fc1(x)))`
#[derive(Clone)]
pub struct Mlp {
    /// `D -> hidden`
    pub fc1: Linear,
    /// `hidden -> D`
    pub fc2: Linear,
}

impl Mlp {
    /// Two linear layers around the exact GELU.
    ///
    /// # Errors
    /// Engine errors only.
    pub fn new(dim: usize, hidden: usize, init: &mut Init) -> Result<Mlp> {
        Ok(Mlp {
            fc1: Linear::new(dim, hidden, true, init)?,
            fc2: Linear::new(hidden, dim, true, init)?,
        })
    }

    /// `(.., D) -> (.., D)`
    ///
    /// # Errors
    /// As [`Linear::forward`].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&self.fc1.forward(x)?.gelu()?)
    }
}

/// The qkv bias, whose key part gets a gradient of exactly zero. A key bias adds the same
/// amount to every score of a query's row, which the softmax ignores, so its gradient is
/// zero in exact arithmetic; computed, it is `f32` rounding (about 1e-10), which AdamW,
/// dividing by the gradient's own scale, turns into a random walk of up to the learning
/// rate per step, different on every device and every split of the batch. Exactly zero
/// leaves the key bias where it is, as exact arithmetic would.
fn key_bias_gradient_zeroed(bias: &Tensor, d: usize) -> Result<Tensor> {
    if !bias.is_tracked() {
        return Ok(bias.clone());
    }
    Ok(bias.detach().with_backward("qkv bias", &[bias], move |g| {
        // Filled on the device: no upload, so the recorded batch is not cut.
        let dev = g.device();
        let (one, zero) = (Tensor::ones(dev, &[d])?, Tensor::zeros(dev, &[d])?);
        let keep = Tensor::concat(&[&one, &zero, &one], 0)?;
        Ok(vec![Some(g.mul(&keep)?)])
    }))
}

/// Multi-head self-attention with a fused qkv projection:
/// `softmax(q k^T / sqrt(head_dim)) v`, heads concatenated, then `proj`.
#[derive(Clone)]
pub struct Attention {
    /// `D -> 3D`: rows are q, then k, then v.
    pub qkv: Linear,
    /// `D -> D`
    pub proj: Linear,
    /// Number of heads `H` (`D % H == 0`).
    pub heads: usize,
    /// Dropout on the attention weights in train mode.
    pub attn_drop: f32,
}

impl Attention {
    /// `heads` heads over width `dim`; `qkv_bias` as the config says.
    ///
    /// # Errors
    /// [`engine::Error::Shape`] when `dim` is not a multiple of `heads`.
    pub fn new(dim: usize, heads: usize, qkv_bias: bool, init: &mut Init) -> Result<Attention> {
        if heads == 0 || !dim.is_multiple_of(heads) {
            return Err(engine::Error::Shape {
                op: "Attention::new",
                msg: format!("width {dim} is not divisible into {heads} heads"),
            });
        }
        Ok(Attention {
            qkv: Linear::new(dim, 3 * dim, qkv_bias, init)?,
            proj: Linear::new(dim, dim, true, init)?,
            heads,
            attn_drop: 0.0,
        })
    }

    /// `(B, N, D) -> (B, N, D)`
    ///
    /// # Errors
    /// [`engine::Error::Shape`] for an input that is not `(B, N, D)`.
    pub fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let &[b, n, d] = x.shape() else {
            return Err(engine::Error::Shape {
                op: "Attention",
                msg: format!("needs (B, N, D), got {:?}", x.shape()),
            });
        };
        let hd = d / self.heads;
        let bias = self
            .qkv
            .bias
            .as_ref()
            .map(|b| key_bias_gradient_zeroed(b, d))
            .transpose()?;
        let qkv = x.linear(&self.qkv.weight, bias.as_ref())?;
        let attn_dropout = ctx.train && self.attn_drop > 0.0;
        if !attn_dropout && hd <= engine::MAX_ATTENTION_HEAD_DIM {
            // The fused kernel: the same function, without the score matrix in memory.
            return self.proj.forward(&qkv.qkv_attention(self.heads)?);
        }
        // (B, N, 3D) -> (3, B, H, N, hd)
        let qkv = qkv
            .reshape(&[b, n, 3, self.heads, hd])?
            .permute(&[2, 0, 3, 1, 4])?;
        let part = |i| -> Result<Tensor> { qkv.narrow(0, i, 1)?.squeeze(0) };
        let (q, k, v) = (part(0)?, part(1)?, part(2)?);
        // attn: (B, H, N, N)
        let attn = q
            .matmul(&k.t()?)?
            .mul_scalar((hd as f32).powf(-0.5))?
            .softmax()?;
        let attn = dropout(&attn, self.attn_drop, ctx)?;
        // (B, H, N, hd) -> (B, N, D)
        let out = attn
            .matmul(&v)?
            .permute(&[0, 2, 1, 3])?
            .reshape(&[b, n, d])?;
        self.proj.forward(&out)
    }
}

/// The pre-norm transformer block:
/// `x = x + drop_path(attn(norm1(x)))`, then `x = x + drop_path(mlp(norm2(x)))`.
#[derive(Clone)]
pub struct Block {
    /// Before attention.
    pub norm1: LayerNorm,
    /// Self-attention.
    pub attn: Attention,
    /// Before the MLP.
    pub norm2: LayerNorm,
    /// The MLP.
    pub mlp: Mlp,
    /// Stochastic-depth probability of both residual branches.
    pub drop_path: f32,
}

impl Block {
    /// A block of width `dim` with `heads` heads and an MLP of `mlp_ratio * dim`.
    ///
    /// # Errors
    /// As [`Attention::new`].
    pub fn new(
        dim: usize,
        heads: usize,
        mlp_ratio: f32,
        qkv_bias: bool,
        eps: f32,
        init: &mut Init,
    ) -> Result<Block> {
        Ok(Block {
            norm1: LayerNorm::new(dim, eps, init)?,
            attn: Attention::new(dim, heads, qkv_bias, init)?,
            norm2: LayerNorm::new(dim, eps, init)?,
            mlp: Mlp::new(dim, (dim as f32 * mlp_ratio) as usize, init)?,
            drop_path: 0.0,
        })
    }

    /// `(B, N, D) -> (B, N, D)`. With [`Ctx::checkpoint`] set (and a graph being
    /// recorded) the block keeps only its input: its inner activations are freed after the
    /// forward and recomputed in backward, as `torch.utils.checkpoint`, with the same masks.
    ///
    /// # Errors
    /// As [`Attention::forward`].
    pub fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        if !(ctx.checkpoint && engine::is_grad_enabled()) {
            return self.forward_kept(x, ctx);
        }
        let start = ctx.clone();
        let y = engine::no_grad(|| self.forward_kept(x, ctx))?;
        let params: Vec<Tensor> = crate::named_parameters(self)
            .into_iter()
            .map(|(_, t)| t)
            .collect();
        let inputs: Vec<&Tensor> = std::iter::once(x).chain(&params).collect();
        let (block, x, kept) = (self.clone(), x.detach(), params.clone());
        // Backward runs outside the forward's autocast: recompute in the forward's precision.
        let half = engine::is_autocast_f16();
        Ok(y.with_backward("checkpoint", &inputs, move |grad| {
            let x = x.requires_grad(true)?;
            let recompute = || engine::enable_grad(|| block.forward_kept(&x, &mut start.clone()));
            let y = if half {
                engine::autocast_f16(recompute)
            } else {
                recompute()
            }?;
            let mut grads = engine::Gradients::default();
            y.backward_into(grad, &mut grads)?;
            let mut out = vec![grads.remove(&x)];
            out.extend(kept.iter().map(|p| grads.remove(p)));
            Ok(out)
        }))
    }

    /// The block's forward, recording every activation.
    fn forward_kept(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let a = self.attn.forward(&self.norm1.forward(x)?, ctx)?;
        let x = x.add(&drop_path(&a, self.drop_path, ctx)?)?;
        let m = self.mlp.forward(&self.norm2.forward(&x)?)?;
        x.add(&drop_path(&m, self.drop_path, ctx)?)
    }
}

/// Image to patch tokens: a convolution with kernel and stride `p`, done as patchify (in the
/// convolution's `(C, p, p)` order) followed by a matrix product.
pub struct PatchEmbed {
    /// `[D, C, p, p]`, as PyTorch's `Conv2d` stores it.
    pub weight: Tensor,
    /// `[D]`
    pub bias: Tensor,
    /// Patch size `p`.
    pub patch: usize,
}

impl PatchEmbed {
    /// Xavier-uniform weight over the weight viewed as `[D, C*p*p]`, zero bias.
    ///
    /// # Errors
    /// Engine errors only.
    pub fn new(channels: usize, patch: usize, dim: usize, init: &mut Init) -> Result<PatchEmbed> {
        let weight = init
            .xavier_uniform(dim, channels * patch * patch)?
            .reshape(&[dim, channels, patch, patch])?
            .requires_grad(true)?;
        Ok(PatchEmbed {
            weight,
            bias: init.constant(&[dim], 0.0)?,
            patch,
        })
    }

    /// `(B, C, H, W) -> (B, L, D)` with `L = (H/p) (W/p)` patches in row-major order.
    ///
    /// # Errors
    /// [`engine::Error::Shape`] when the image is not `(B, C, H, W)` with `H` and `W`
    /// multiples of `p` and `C` matching the weight.
    pub fn forward(&self, img: &Tensor) -> Result<Tensor> {
        let (d, c, p) = (self.weight.shape()[0], self.weight.shape()[1], self.patch);
        let ok = img.rank() == 4
            && img.shape()[1] == c
            && img.shape()[2].is_multiple_of(p)
            && img.shape()[3].is_multiple_of(p);
        if !ok {
            return Err(engine::Error::Shape {
                op: "PatchEmbed",
                msg: format!(
                    "needs images (B, {c}, H, W) with H and W multiples of {p}, got {:?}",
                    img.shape()
                ),
            });
        }
        let (b, gh, gw) = (img.shape()[0], img.shape()[2] / p, img.shape()[3] / p);
        // (B, C, gh, p, gw, p) -> (B, gh, gw, C, p, p) -> (B, L, C*p*p)
        let patches = img
            .reshape(&[b, c, gh, p, gw, p])?
            .permute(&[0, 2, 4, 1, 3, 5])?
            .reshape(&[b, gh * gw, c * p * p])?;
        // As a linear layer, so that the weight gradient is one product over all B * L
        // patches, not a (B, D, C*p*p) stack summed afterwards.
        let w = self.weight.reshape(&[d, c * p * p])?;
        patches.linear(&w, Some(&self.bias))
    }
}

module_fields!(Linear {
    weight: "weight",
    bias: "bias"
});
module_fields!(LayerNorm {
    weight: "weight",
    bias: "bias"
});
module_fields!(Mlp {
    fc1: "fc1",
    fc2: "fc2"
});
module_fields!(Attention {
    qkv: "qkv",
    proj: "proj"
});
module_fields!(Block {
    norm1: "norm1",
    attn: "attn",
    norm2: "norm2",
    mlp: "mlp"
});
module_fields!(PatchEmbed {
    weight: "proj.weight",
    bias: "proj.bias"
});
