//! Matrix products, 2-D and batched, reading transposed operands in place.

use crate::autodiff::no_grad;
use crate::error::{Error, Result};
use crate::kernels::{MATMUL_K, MATMUL_VEC4_K};
use crate::params::MatmulParams;
use crate::shape::{broadcast_shape, numel};
use crate::tensor::{DType, Tensor};

/// Output tile (rows, columns) of one workgroup of `matmul.wgsl`'s two entry points.
const TILE_SCALAR: (usize, usize) = (16, 64);
const TILE_VEC4: (usize, usize) = (16, 128);

/// How the kernel reads one operand: stored row-major (`trans = false`, row stride `ld`) or
/// stored transposed (`trans = true`, column stride `ld`), and the stride between batches.
struct Operand {
    t: Tensor,
    trans: bool,
    ld: usize,
    batch_stride: usize,
}

fn operand(t: &Tensor, batch: &[usize]) -> Result<Operand> {
    let r = t.rank();
    let (rows, cols) = (t.shape()[r - 2], t.shape()[r - 1]);
    let (sr, sc) = (t.strides()[r - 2], t.strides()[r - 1]);
    let t_batch = &t.shape()[..r - 2];
    // Batch axes must collapse into one stride (or all be broadcast).
    let batch_stride = if numel(t_batch) == 1 {
        Some(0)
    } else if t_batch == batch {
        let collapsible = (0..r - 3)
            .all(|i| t.shape()[i] == 1 || t.strides()[i] == t.strides()[i + 1] * t.shape()[i + 1]);
        collapsible.then(|| t.strides()[r - 3])
    } else {
        None
    };
    let layout = if sc == 1 || cols == 1 {
        Some((false, if rows == 1 { cols } else { sr }))
    } else if sr == 1 {
        Some((true, sc))
    } else {
        None
    };
    match (batch_stride, layout) {
        (Some(batch_stride), Some((trans, ld))) => Ok(Operand {
            t: t.clone(),
            trans,
            ld,
            batch_stride,
        }),
        _ => {
            // A layout the kernel cannot address: materialise it once, row-major.
            let mut full = batch.to_vec();
            full.extend([rows, cols]);
            let c = t.broadcast_to(&full)?.contiguous()?;
            Ok(Operand {
                t: c,
                trans: false,
                ld: cols.max(1),
                batch_stride: if batch.is_empty() { 0 } else { rows * cols },
            })
        }
    }
}

impl Tensor {
    /// Matrix product over the last two axes, `(.., M, K) x (.., K, N) -> (.., M, N)`, with
    /// the leading (batch) axes broadcast as in `torch.matmul`. Transposed views such as
    /// `b.t()` are read in place, never copied.
    ///
    /// # Errors
    /// [`Error::Shape`] for rank below 2, mismatched inner sizes or batch axes that do not
    /// broadcast, or more rows than one dispatch can cover; [`Error::DType`] for `U32`.
    pub fn matmul(&self, other: &Tensor) -> Result<Tensor> {
        let y = no_grad(|| self.matmul_untracked(other))?;
        let (a, b) = (self.detach(), other.detach());
        let need = (self.requires_grad, other.requires_grad);
        Ok(y.record("matmul", &[self, other], move |g| {
            // dA = dY B^T and dB = A^T dY, summed over batch axes that were broadcast.
            Ok(vec![
                need.0
                    .then(|| g.matmul(&b.t()?)?.sum_to(a.shape()))
                    .transpose()?,
                need.1
                    .then(|| a.t()?.matmul(g)?.sum_to(b.shape()))
                    .transpose()?,
            ])
        }))
    }

    /// A fully connected layer, `x W^T + b`: `self` is `(.., in)`, `weight` is `[out, in]` as
    /// PyTorch stores it, `bias` is `[out]`; the result is `(.., out)`. All leading axes are
    /// multiplied as one `(rows, in)` matrix, so the weight gradient is summed over rows
    /// inside one product, and the bias is added as the product is stored.
    ///
    /// # Errors
    /// [`Error::Shape`] when `weight` is not `[out, in]` for the last axis of `self`, or
    /// `bias` is not `[out]`; [`Error::DType`] for `U32`.
    pub fn linear(&self, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let op = "linear";
        let (Some((&in_dim, lead)), &[out_dim, w_in]) = (self.shape().split_last(), weight.shape())
        else {
            return Err(Error::shape(
                op,
                format!(
                    "needs (.., in) and [out, in], got {:?} and {:?}",
                    self.shape(),
                    weight.shape()
                ),
            ));
        };
        let bias_ok = bias.is_none_or(|b| b.shape() == [out_dim]);
        if w_in != in_dim || !bias_ok {
            return Err(Error::shape(
                op,
                format!(
                    "input {:?}, weight {:?} and bias {:?} do not fit (.., in), [out, in], [out]",
                    self.shape(),
                    weight.shape(),
                    bias.map(|b| b.shape().to_vec())
                ),
            ));
        }
        let rows = numel(lead);
        let x = self.reshape(&[rows, in_dim])?;
        let y = no_grad(|| x.product(&weight.t()?, bias))?;
        let (xd, wd) = (x.detach(), weight.detach());
        let need = [
            x.requires_grad,
            weight.requires_grad,
            bias.is_some_and(|b| b.requires_grad),
        ];
        let has_bias = bias.is_some();
        let mut inputs = vec![&x, weight];
        inputs.extend(bias);
        let y = y.record(op, &inputs, move |g| {
            let mut grads = vec![
                need[0].then(|| g.matmul(&wd)).transpose()?,
                need[1].then(|| g.t()?.matmul(&xd)).transpose()?,
            ];
            if has_bias {
                grads.push(need[2].then(|| g.sum(0, false)).transpose()?);
            }
            Ok(grads)
        });
        y.reshape(&[lead, &[out_dim]].concat())
    }

    fn matmul_untracked(&self, other: &Tensor) -> Result<Tensor> {
        self.product(other, None)
    }

    /// `self x other (+ bias)` without recording, `bias` a row added to every output row.
    fn product(&self, other: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let op = "matmul";
        self.expect_dtype(op, DType::F32)?;
        other.expect_dtype(op, DType::F32)?;
        self.expect_same_device(op, other)?;
        if self.rank() < 2 || other.rank() < 2 {
            return Err(Error::shape(
                op,
                format!(
                    "needs operands of rank 2 or more, got {:?} and {:?}",
                    self.shape(),
                    other.shape()
                ),
            ));
        }
        let (m, k) = (self.shape()[self.rank() - 2], self.shape()[self.rank() - 1]);
        let (k2, n) = (
            other.shape()[other.rank() - 2],
            other.shape()[other.rank() - 1],
        );
        if k != k2 {
            return Err(Error::shape(
                op,
                format!(
                    "inner sizes differ: {:?} x {:?}",
                    self.shape(),
                    other.shape()
                ),
            ));
        }
        let batch = broadcast_shape(
            op,
            &self.shape()[..self.rank() - 2],
            &other.shape()[..other.rank() - 2],
        )?;
        let nbatch = numel(&batch);
        let dev = self.device();
        let mut shape = batch.clone();
        shape.extend([m, n]);
        if k == 0 {
            let zeros = Tensor::zeros(dev, &shape)?;
            return bias.map_or(Ok(zeros.clone()), |b| zeros.add(b));
        }
        let a = operand(self, &batch)?;
        let b = operand(other, &batch)?;
        let bias = bias.map(|t| t.contiguous()).transpose()?;
        let p = MatmulParams {
            m: m as u32,
            n: n as u32,
            k: k as u32,
            batch: nbatch as u32,
            a_offset: a.t.offset() as u32,
            b_offset: b.t.offset() as u32,
            a_batch_stride: a.batch_stride as u32,
            b_batch_stride: b.batch_stride as u32,
            lda: a.ld as u32,
            ldb: b.ld as u32,
            bias_offset: bias.as_ref().map_or(0, |t| t.offset() as u32),
            ..Default::default()
        };
        // The vec4 kernel reads whole 4x4 blocks, so every size, stride and offset it
        // touches must be a multiple of 4.
        let aligned = [
            m,
            n,
            k,
            a.ld,
            b.ld,
            a.t.offset(),
            b.t.offset(),
            a.batch_stride,
            b.batch_stride,
            p.bias_offset as usize,
        ]
        .iter()
        .all(|v| v % 4 == 0);
        let (kernel, tile) = if aligned {
            (&MATMUL_VEC4_K, TILE_VEC4)
        } else {
            (&MATMUL_K, TILE_SCALAR)
        };
        let groups = [n.div_ceil(tile.1), m.div_ceil(tile.0), nbatch];
        let max_groups = dev.info().max_compute_workgroups_per_dimension as usize;
        if groups.iter().any(|&g| g > max_groups) {
            return Err(Error::shape(op, format!("{:?} x {:?} needs more workgroups than the adapter allows per dimension ({max_groups})", self.shape(), other.shape())));
        }
        let out = Tensor::empty(dev, op, &shape, DType::F32)?;
        dev.dispatch(
            kernel,
            &[a.trans as u32, b.trans as u32, bias.is_some() as u32],
            &p,
            &[
                out.buffer(),
                a.t.buffer(),
                b.t.buffer(),
                bias.as_ref().unwrap_or(&a.t).buffer(),
            ],
            groups.map(|g| g as u32),
        );
        Ok(out)
    }
}
