//! Matrix products, 2-D and batched, reading transposed operands in place.

use crate::autodiff::no_grad;
use crate::error::{Error, Result};
use crate::kernels::{half_operands, Kernel, MATMUL_K, MATMUL_VEC4_K, SPLITK_K};
use crate::ops::elementwise_grid;
use crate::ops::is_autocast_f16;
use crate::params::{MatmulParams, SplitKParams};
use crate::shape::{broadcast_shape, numel};
use crate::tensor::{DType, Tensor};
use crate::tune::{MatmulKernel, MatmulKey, Tile};

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
        let half = is_autocast_f16();
        let (a, b) = (operand_copy(self, half)?, operand_copy(other, half)?);
        let y = no_grad(|| a.matmul_untracked(&b))?;
        let (shape_a, shape_b) = (self.shape().to_vec(), other.shape().to_vec());
        let need = (self.requires_grad, other.requires_grad);
        Ok(y.record("matmul", &[self, other], move |g| {
            // dA = dY B^T and dB = A^T dY, summed over batch axes that were broadcast; with
            // f16 operands, from dY in f16 too.
            let g = &operand_copy(g, half)?;
            Ok(vec![
                need.0
                    .then(|| g.matmul_untracked(&b.t()?)?.sum_to(&shape_a))
                    .transpose()?,
                need.1
                    .then(|| matmul_rhs_grad(&a, &shape_b, g))
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
        let half = is_autocast_f16();
        let (xd, wd) = (operand_copy(&x, half)?, operand_copy(weight, half)?);
        let y = no_grad(|| xd.product(&wd.t()?, bias))?;
        let need = [
            x.requires_grad,
            weight.requires_grad,
            bias.is_some_and(|b| b.requires_grad),
        ];
        let has_bias = bias.is_some();
        let mut inputs = vec![&x, weight];
        inputs.extend(bias);
        let y = y.record(op, &inputs, move |g| {
            let gh = operand_copy(g, half)?;
            let mut grads = vec![
                need[0].then(|| gh.matmul_untracked(&wd)).transpose()?,
                need[1].then(|| gh.t()?.matmul_untracked(&xd)).transpose()?,
            ];
            if has_bias {
                grads.push(need[2].then(|| g.sum(0, false)).transpose()?);
            }
            Ok(grads)
        });
        y.reshape(&[lead, &[out_dim]].concat())
    }

    pub(crate) fn matmul_untracked(&self, other: &Tensor) -> Result<Tensor> {
        self.product(other, None)
    }

    /// `self x other (+ bias)` without recording, `bias` a row added to every output row,
    /// with the kernel the device picks for this shape (`crate::tune`).
    fn product(&self, other: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let problem = Problem::new(self, other, bias)?;
        if problem.k == 0 {
            let zeros = Tensor::zeros(self.device(), &problem.shape)?;
            return bias.map_or(Ok(zeros.clone()), |b| zeros.add(b));
        }
        let kernel = crate::tune::choose(self.device(), &problem.key(), problem.sizes(), |k| {
            problem.run(k).map(drop)
        })?;
        problem.run(kernel)
    }

    /// `self x other (+ bias)` with a given kernel, not recorded for autodiff: how the tests
    /// run every variant and the bench times them. Shapes as [`Tensor::matmul`].
    ///
    /// # Errors
    /// As [`Tensor::matmul`]; [`Error::Shape`] for a variant with vec4 loads on a problem
    /// whose sizes, strides or offsets are not all multiples of 4, or one the adapter
    /// cannot run.
    pub fn matmul_with(
        &self,
        other: &Tensor,
        bias: Option<&Tensor>,
        kernel: MatmulKernel,
    ) -> Result<Tensor> {
        let problem = Problem::new(self, other, bias)?;
        if !kernel.runs_on(self.device().info(), problem.aligned) {
            return Err(Error::shape(
                "matmul",
                format!(
                    "variant {} cannot run this problem on this adapter",
                    kernel.name()
                ),
            ));
        }
        if problem.k == 0 {
            let zeros = Tensor::zeros(self.device(), &problem.shape)?;
            return bias.map_or(Ok(zeros.clone()), |b| zeros.add(b));
        }
        problem.run(kernel)
    }
}

/// One product, checked and laid out for the kernels.
struct Problem {
    a: Operand,
    b: Operand,
    bias: Option<Tensor>,
    m: usize,
    n: usize,
    k: usize,
    nbatch: usize,
    /// The output's shape: batch axes, then (m, n).
    shape: Vec<usize>,
    /// Every size, stride and offset a multiple of 4: vec4 loads allowed.
    aligned: bool,
}

impl Problem {
    fn new(x: &Tensor, y: &Tensor, bias: Option<&Tensor>) -> Result<Problem> {
        let op = "matmul";
        // Both operands f32, or both f16 (mixed precision); the product is f32 either way.
        let dtype = if x.dtype() == DType::F16 {
            DType::F16
        } else {
            DType::F32
        };
        x.expect_dtype(op, dtype)?;
        y.expect_dtype(op, dtype)?;
        x.expect_same_device(op, y)?;
        if x.rank() < 2 || y.rank() < 2 {
            return Err(Error::shape(
                op,
                format!(
                    "needs operands of rank 2 or more, got {:?} and {:?}",
                    x.shape(),
                    y.shape()
                ),
            ));
        }
        let (m, k) = (x.shape()[x.rank() - 2], x.shape()[x.rank() - 1]);
        let (k2, n) = (y.shape()[y.rank() - 2], y.shape()[y.rank() - 1]);
        if k != k2 {
            return Err(Error::shape(
                op,
                format!("inner sizes differ: {:?} x {:?}", x.shape(), y.shape()),
            ));
        }
        let batch = broadcast_shape(op, &x.shape()[..x.rank() - 2], &y.shape()[..y.rank() - 2])?;
        let nbatch = numel(&batch);
        let mut shape = batch.clone();
        shape.extend([m, n]);
        let (a, b) = if k == 0 {
            // No kernel runs: the operands are never read.
            let none = |t: &Tensor| Operand {
                t: t.clone(),
                trans: false,
                ld: 0,
                batch_stride: 0,
            };
            (none(x), none(y))
        } else {
            (operand(x, &batch)?, operand(y, &batch)?)
        };
        let bias = bias.map(|t| t.contiguous()).transpose()?;
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
            bias.as_ref().map_or(0, |t| t.offset()),
        ]
        .iter()
        .all(|v| v % 4 == 0);
        Ok(Problem {
            a,
            b,
            bias,
            m,
            n,
            k,
            nbatch,
            shape,
            aligned,
        })
    }

    fn sizes(&self) -> [usize; 4] {
        [self.m, self.n, self.k, self.nbatch]
    }

    fn key(&self) -> MatmulKey {
        MatmulKey {
            trans_a: self.a.trans,
            trans_b: self.b.trans,
            bias: self.bias.is_some(),
            aligned: self.aligned,
            half: self.half(),
            ..MatmulKey::of(self.sizes())
        }
    }

    fn half(&self) -> bool {
        self.a.t.dtype() == DType::F16
    }

    /// `kernel`, or its f16-operand build for f16 operands.
    fn build(&self, kernel: &'static Kernel) -> &'static Kernel {
        if self.half() {
            half_operands(kernel)
        } else {
            kernel
        }
    }

    fn dev(&self) -> &crate::Device {
        self.a.t.device()
    }

    /// Check a grid against the adapter's per-dimension limit.
    fn check_grid(&self, groups: [usize; 3]) -> Result<[u32; 3]> {
        let max_groups = self.dev().info().max_compute_workgroups_per_dimension as usize;
        if groups.iter().any(|&g| g > max_groups) {
            return Err(Error::shape(
                "matmul",
                format!(
                    "{:?} needs {groups:?} workgroups, more than the adapter allows per dimension ({max_groups})",
                    self.shape
                ),
            ));
        }
        Ok(groups.map(|g| g as u32))
    }

    /// Record the product with `kernel` into a new tensor.
    fn run(&self, kernel: MatmulKernel) -> Result<Tensor> {
        match kernel {
            MatmulKernel::Lanes => self.run_lanes(),
            MatmulKernel::Tiled { tile, splits } => self.run_tiled(tile, splits),
        }
    }

    /// The uniform both families read; `k_chunk` is one split's k range (split-K).
    fn params(&self, k_chunk: usize) -> MatmulParams {
        let (a, b) = (&self.a, &self.b);
        MatmulParams {
            m: self.m as u32,
            n: self.n as u32,
            k: self.k as u32,
            batch: self.nbatch as u32,
            a_offset: a.t.offset() as u32,
            b_offset: b.t.offset() as u32,
            a_batch_stride: a.batch_stride as u32,
            b_batch_stride: b.batch_stride as u32,
            lda: a.ld as u32,
            ldb: b.ld as u32,
            bias_offset: self.bias.as_ref().map_or(0, |t| t.offset() as u32),
            k_chunk: k_chunk as u32,
        }
    }

    fn run_lanes(&self) -> Result<Tensor> {
        let (a, b, dev) = (&self.a, &self.b, self.dev());
        let p = self.params(self.k);
        // The vec4 kernel reads whole 4x4 blocks: only for aligned problems.
        let (kernel, tile) = if self.aligned {
            (&MATMUL_VEC4_K, TILE_VEC4)
        } else {
            (&MATMUL_K, TILE_SCALAR)
        };
        let groups = self.check_grid([
            self.n.div_ceil(tile.1),
            self.m.div_ceil(tile.0),
            self.nbatch,
        ])?;
        let out = Tensor::empty(dev, "matmul", &self.shape, DType::F32)?;
        dev.dispatch(
            self.build(kernel),
            &[a.trans as u32, b.trans as u32, self.bias.is_some() as u32],
            &p,
            &[
                out.buffer(),
                a.t.buffer(),
                b.t.buffer(),
                self.bias.as_ref().unwrap_or(&a.t).buffer(),
            ],
            groups,
        );
        Ok(out)
    }

    fn run_tiled(&self, tile: Tile, splits: u32) -> Result<Tensor> {
        let (a, b, dev) = (&self.a, &self.b, self.dev());
        // `MatmulKernel::runs_on` is the one guard: no caller gets here with vec4 loads on an
        // unaligned problem.
        debug_assert!(self.aligned || !tile.vec4, "{}", tile.name());
        // Chunks of k that are whole steps of BK (so vec4 loads never straddle one).
        let k_chunk = self
            .k
            .div_ceil(splits.max(1) as usize)
            .next_multiple_of(tile.bk as usize);
        let splits = self.k.div_ceil(k_chunk);
        let groups = self.check_grid([
            self.n.div_ceil(tile.bn as usize),
            self.m.div_ceil(tile.bm as usize),
            self.nbatch * splits,
        ])?;
        let p = self.params(k_chunk);
        let out = Tensor::empty(dev, "matmul", &self.shape, DType::F32)?;
        let split = splits > 1;
        let target = if split {
            Tensor::empty(
                dev,
                "matmul",
                &[splits, self.nbatch * self.m * self.n],
                DType::F32,
            )?
        } else {
            out.clone()
        };
        let has_bias = self.bias.is_some();
        dev.dispatch(
            self.build(tile.kernel()),
            &[
                a.trans as u32,
                b.trans as u32,
                has_bias as u32,
                split as u32,
                dev.poisons_workgroup_memory() as u32,
            ],
            &p,
            &[
                target.buffer(),
                a.t.buffer(),
                b.t.buffer(),
                self.bias.as_ref().unwrap_or(&a.t).buffer(),
            ],
            groups,
        );
        if split {
            let numel = self.nbatch * self.m * self.n;
            let p = SplitKParams {
                numel: numel as u32,
                n: self.n as u32,
                splits: splits as u32,
                bias_offset: p.bias_offset,
            };
            dev.dispatch(
                &SPLITK_K,
                &[has_bias as u32],
                &p,
                &[
                    out.buffer(),
                    target.buffer(),
                    self.bias.as_ref().unwrap_or(&target).buffer(),
                ],
                elementwise_grid(numel),
            );
        }
        Ok(out)
    }
}

/// The gradient of `b` in `a @ b` from the output's gradient `g`: `A^T dY`, summed over the
/// batch axes `b` was broadcast along. A matrix shared by every batch (a weight) gets one
/// product over all rows of `a` and `g`, never a per-batch stack summed afterwards, which
/// would take batch times the weight's memory.
fn matmul_rhs_grad(a: &Tensor, b_shape: &[usize], g: &Tensor) -> Result<Tensor> {
    let (k, n) = (b_shape[0], b_shape[b_shape.len() - 1]);
    if b_shape.len() == 2 && a.rank() > 2 && k > 0 && n > 0 {
        let rows = |t: &Tensor, cols: usize| t.reshape(&[t.numel() / cols, cols]);
        return rows(a, k)?.t()?.matmul_untracked(&rows(g, n)?);
    }
    a.t()?.matmul_untracked(g)?.sum_to(b_shape)
}

/// What a product reads of `t` and keeps for backward: `t` itself (detached), or under
/// [`crate::autocast_f16`] its f16 copy (an f16 tensor is its own).
fn operand_copy(t: &Tensor, half: bool) -> Result<Tensor> {
    if half && t.dtype() == DType::F32 {
        t.to_half()
    } else {
        Ok(t.detach())
    }
}
