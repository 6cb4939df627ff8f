//! Fused multi-head attention: one kernel forward, two backward, no score matrix in memory.

use super::grid;
use crate::autodiff::no_grad;
use crate::error::{Error, Result};
use crate::kernels::{ATTENTION_BACKWARD_KV_K, ATTENTION_BACKWARD_Q_K, ATTENTION_K};
use crate::params::AttentionParams;
use crate::tensor::{DType, Tensor};

/// Longest head (`D / heads`) the fused attention kernels hold in their row buffers.
pub const MAX_ATTENTION_HEAD_DIM: usize = 128;

impl Tensor {
    /// Multi-head softmax attention from a fused projection: `self` is `(B, N, 3D)` with q, k
    /// and v side by side (the layout of timm's `qkv` Linear), each split into `heads` heads
    /// of `D / heads` columns. Returns `(B, N, D)`, the heads' `softmax(q k^T / sqrt(hd)) v`
    /// concatenated. The same as the unfused ops (reshape, permute, matmul, softmax, matmul,
    /// permute), in one dispatch forward and two backward, keeping only a log-sum-exp per
    /// row for the gradient.
    ///
    /// # Errors
    /// [`Error::Shape`] when `self` is not `(B, N, 3D)` with `D` a multiple of `heads`, or the
    /// head is longer than [`MAX_ATTENTION_HEAD_DIM`]; [`Error::DType`] for `U32`.
    pub fn qkv_attention(&self, heads: usize) -> Result<Tensor> {
        let op = "qkv_attention";
        self.expect_dtype(op, DType::F32)?;
        let &[b, n, d3] = self.shape() else {
            return Err(Error::shape(
                op,
                format!("needs (B, N, 3D), got {:?}", self.shape()),
            ));
        };
        if heads == 0 || !d3.is_multiple_of(3 * heads) || d3 / 3 / heads > MAX_ATTENTION_HEAD_DIM {
            return Err(Error::shape(
                op,
                format!(
                    "needs a last axis of 3 * heads * head_dim with head_dim <= \
                     {MAX_ATTENTION_HEAD_DIM}, got {d3} for {heads} heads"
                ),
            ));
        }
        let hd = d3 / 3 / heads;
        let p = AttentionParams {
            batch: b as u32,
            tokens: n as u32,
            heads: heads as u32,
            head_dim: hd as u32,
            scale: (hd as f32).powf(-0.5),
            ..Default::default()
        };
        let qkv = self.contiguous()?.detach();
        let (y, lse) = no_grad(|| attention_forward(&qkv, p))?;
        let out = y.detach();
        Ok(y.record(op, &[self], move |g| {
            Ok(vec![Some(attention_backward(&qkv, &out, &lse, g, p)?)])
        }))
    }
}

/// Rows (batch, head, token) and the workgroups that cover them.
fn row_grid(qkv: &Tensor, p: &AttentionParams) -> (usize, [u32; 3]) {
    let rows = (p.batch * p.heads * p.tokens) as usize;
    let wg = qkv.device().row_workgroup() as usize;
    (rows, grid(qkv.device(), rows.div_ceil(wg)))
}

/// `(out (B, N, D), lse (B, H, N))` for a contiguous `qkv`.
fn attention_forward(qkv: &Tensor, mut p: AttentionParams) -> Result<(Tensor, Tensor)> {
    let op = "qkv_attention";
    let dev = qkv.device();
    let (rows, groups) = row_grid(qkv, &p);
    let (b, n) = (p.batch as usize, p.tokens as usize);
    let out = Tensor::empty(
        dev,
        op,
        &[b, n, (p.heads * p.head_dim) as usize],
        DType::F32,
    )?;
    let lse = Tensor::empty(dev, op, &[rows], DType::F32)?;
    p.qkv_offset = qkv.offset() as u32;
    dev.dispatch(
        &ATTENTION_K,
        &[dev.row_workgroup()],
        &p,
        &[out.buffer(), lse.buffer(), qkv.buffer()],
        groups,
    );
    Ok((out, lse))
}

/// `d qkv (B, N, 3D)` from `g = d out`.
fn attention_backward(
    qkv: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    g: &Tensor,
    mut p: AttentionParams,
) -> Result<Tensor> {
    let op = "qkv_attention backward";
    let dev = qkv.device();
    let (rows, groups) = row_grid(qkv, &p);
    let g = g.contiguous()?;
    let dqkv = Tensor::empty(dev, op, qkv.shape(), DType::F32)?;
    let delta = Tensor::empty(dev, op, &[rows], DType::F32)?;
    p.qkv_offset = qkv.offset() as u32;
    p.g_offset = g.offset() as u32;
    let buffers = [
        dqkv.buffer(),
        delta.buffer(),
        g.buffer(),
        out.buffer(),
        lse.buffer(),
        qkv.buffer(),
    ];
    // The q pass writes delta, which the k/v pass reads: dispatches in one pass are ordered.
    for kernel in [&ATTENTION_BACKWARD_Q_K, &ATTENTION_BACKWARD_KV_K] {
        dev.dispatch(kernel, &[dev.row_workgroup()], &p, &buffers, groups);
    }
    Ok(dqkv)
}
