//! Fused multi-head attention: one kernel forward, two backward, no score matrix in memory.

use super::grid;
use crate::autodiff::no_grad;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::kernels::{
    generated, half_operands, Kernel, ATTENTION_BACKWARD_KV_K, ATTENTION_BACKWARD_Q_K, ATTENTION_K,
    ATTENTION_TILED_BACKWARD_KV_T, ATTENTION_TILED_BACKWARD_Q_T, ATTENTION_TILED_FORWARD_T,
};
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
        self.qkv_attention_with(heads, self.device().attention_kernel())
    }

    /// [`Tensor::qkv_attention`] with a given kernel family (the tests run both).
    ///
    /// # Errors
    /// As [`Tensor::qkv_attention`].
    pub fn qkv_attention_with(&self, heads: usize, kernel: AttentionKernel) -> Result<Tensor> {
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
        // Under autocast_f16 the kernels read (and backward keeps) an f16 copy of q, k and v.
        let half = crate::is_autocast_f16();
        let qkv = if half {
            self.to_half()?
        } else {
            self.contiguous()?.detach()
        };
        let memory = self.device().info().max_compute_workgroup_storage_size as usize;
        let kernels = Kernels::of(kernel, hd, memory).with_half_operands(half);
        let (y, lse) = no_grad(|| attention_forward(&qkv, p, &kernels))?;
        let out = y.detach();
        Ok(y.record(op, &[self], move |g| {
            Ok(vec![Some(attention_backward(
                &qkv, &out, &lse, g, p, &kernels,
            )?)])
        }))
    }
}

/// The two families of attention kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionKernel {
    /// `attention.wgsl`: one invocation per row, reading keys and values from global
    /// memory; workgroups as wide as the row kernels'. What a CPU adapter runs fastest.
    Rows,
    /// `attention_tiled.wgsl`: 64 rows of one head per workgroup, keys and values shared
    /// through workgroup memory tile by tile. For GPUs.
    Tiled,
}

/// The three kernels (forward, dq, dk and dv) of one family and head dimension, with how
/// their rows map to workgroups.
struct Kernels {
    forward: &'static Kernel,
    backward_q: &'static Kernel,
    backward_kv: &'static Kernel,
    tiled: bool,
}

/// The tiled attention kernels (forward, backward of q, backward of k and v) for head size
/// `hd` on an adapter with `memory` bytes of workgroup memory.
pub(crate) fn tiled_kernels(hd: usize, memory: usize) -> [&'static Kernel; 3] {
    // BKV tokens of two HD-long rows and two statistics fit in 16 KiB, or in the adapter's
    // workgroup memory when it has less (GLES may have 16352).
    let mut bkv = 64;
    while bkv > 1 && 2 * bkv * (hd + 1) * 4 > memory.min(16384) {
        bkv /= 2;
    }
    let block = format!("const HD: u32 = {hd}u;\nconst BKV: u32 = {bkv}u;\n");
    [
        &ATTENTION_TILED_FORWARD_T,
        &ATTENTION_TILED_BACKWARD_Q_T,
        &ATTENTION_TILED_BACKWARD_KV_T,
    ]
    .map(|template| generated(template, block.clone()))
}

impl Kernels {
    /// The kernels of `kernel` for head size `hd` on an adapter with `memory` bytes of
    /// workgroup memory.
    fn of(kernel: AttentionKernel, hd: usize, memory: usize) -> Kernels {
        match kernel {
            AttentionKernel::Rows => Kernels {
                forward: &ATTENTION_K,
                backward_q: &ATTENTION_BACKWARD_Q_K,
                backward_kv: &ATTENTION_BACKWARD_KV_K,
                tiled: false,
            },
            AttentionKernel::Tiled => {
                let [forward, backward_q, backward_kv] = tiled_kernels(hd, memory);
                Kernels {
                    forward,
                    backward_q,
                    backward_kv,
                    tiled: true,
                }
            }
        }
    }

    /// These kernels, or their f16-operand builds.
    fn with_half_operands(self, half: bool) -> Kernels {
        if !half {
            return self;
        }
        Kernels {
            forward: half_operands(self.forward),
            backward_q: half_operands(self.backward_q),
            backward_kv: half_operands(self.backward_kv),
            ..self
        }
    }

    /// The override values and workgroups for `p`'s rows.
    fn launch(&self, dev: &Device, p: &AttentionParams) -> (Vec<u32>, [u32; 3]) {
        if self.tiled {
            let tiles = (p.tokens as usize).div_ceil(TILED_ROWS) as u32;
            (vec![], [tiles, p.batch * p.heads, 1])
        } else {
            let rows = (p.batch * p.heads * p.tokens) as usize;
            let wg = dev.row_workgroup();
            (vec![wg], grid(dev, rows.div_ceil(wg as usize)))
        }
    }
}

/// Rows of one head per workgroup of the tiled kernels (their `WG`).
const TILED_ROWS: usize = 64;

/// `(out (B, N, D), lse (B, H, N))` for a contiguous `qkv`.
fn attention_forward(
    qkv: &Tensor,
    mut p: AttentionParams,
    kernels: &Kernels,
) -> Result<(Tensor, Tensor)> {
    let op = "qkv_attention";
    let dev = qkv.device();
    let rows = (p.batch * p.heads * p.tokens) as usize;
    let (overrides, groups) = kernels.launch(dev, &p);
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
        kernels.forward,
        &overrides,
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
    kernels: &Kernels,
) -> Result<Tensor> {
    let op = "qkv_attention backward";
    let dev = qkv.device();
    let rows = (p.batch * p.heads * p.tokens) as usize;
    let (overrides, groups) = kernels.launch(dev, &p);
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
    for kernel in [kernels.backward_q, kernels.backward_kv] {
        dev.dispatch(kernel, &overrides, &p, &buffers, groups);
    }
    Ok(dqkv)
}
