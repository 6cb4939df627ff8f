//! The op launchers: each checks shapes and dtypes, allocates the output from the pool and
//! records one dispatch (or a few) of a kernel from `shaders/`.

mod attention;
mod create;
mod elementwise;
mod half;
mod index;
mod layout;
mod matmul;
mod reduce;
mod rowwise;

pub(crate) use attention::tiled_kernels as tiled_attention_kernels;
pub use attention::{AttentionKernel, MAX_ATTENTION_HEAD_DIM};
pub use elementwise::{BinaryOp, CompareOp, UnaryOp};
pub use half::{autocast_f16, is_autocast_f16};

use crate::device::Device;
use crate::error::{Error, Result};
use crate::params::{dims, StridedParams};
use crate::shape::MAX_RANK;
use crate::tensor::Tensor;

/// Invocations per workgroup of the 1-D kernels (elementwise, copy, fill, random).
const WG: usize = 64;
/// Most workgroups a grid-stride kernel is dispatched with: enough to fill a large GPU,
/// few enough that CPU drivers do not pay for scheduling hundreds of thousands.
const MAX_ELEMENTWISE_GROUPS: usize = 4096;

/// Workgroup counts for `groups` workgroups along one logical axis; past the per-dimension
/// limit the rest spills into y (the kernels rebuild the linear id from `num_workgroups`).
pub(crate) fn grid(device: &Device, groups: usize) -> [u32; 3] {
    let max = device.info().max_compute_workgroups_per_dimension as usize;
    if groups <= max {
        [groups as u32, 1, 1]
    } else {
        [max as u32, groups.div_ceil(max) as u32, 1]
    }
}

/// Strides that read `t` as if it had shape `out` (NumPy broadcasting: missing leading axes
/// and size-1 axes get stride 0). The shapes must already be known to broadcast.
pub(crate) fn broadcast_strides(t: &Tensor, out: &[usize]) -> Vec<usize> {
    let lead = out.len() - t.rank();
    (0..out.len())
        .map(|i| {
            if i < lead || t.shape()[i - lead] == 1 {
                0
            } else {
                t.strides()[i - lead]
            }
        })
        .collect()
}

/// Uniform for the strided kernels: iteration `shape`, output layout, up to three inputs
/// given as (offset, strides).
pub(crate) fn strided_params(
    op: &'static str,
    shape: &[usize],
    out: (usize, &[usize]),
    inputs: &[(usize, &[usize])],
) -> Result<StridedParams> {
    if shape.len() > MAX_RANK {
        return Err(Error::shape(
            op,
            format!(
                "rank {} exceeds the engine's maximum of {MAX_RANK} axes",
                shape.len()
            ),
        ));
    }
    let mut operands = vec![out.1];
    operands.extend(inputs.iter().map(|i| i.1));
    let (shape, strides) = coalesce(shape, &operands);
    let mut p = StridedParams {
        numel: crate::shape::numel(&shape) as u32,
        rank: shape.len() as u32,
        shape: dims(&shape),
        out_strides: dims(&strides[0]),
        ..Default::default()
    };
    p.offsets[0] = out.0 as u32;
    let slots = [&mut p.strides0, &mut p.strides1, &mut p.strides2];
    for (i, ((offset, _), slot)) in inputs.iter().zip(slots).enumerate() {
        p.offsets[i + 1] = *offset as u32;
        *slot = dims(&strides[i + 1]);
    }
    Ok(p)
}

/// The same walk over fewer axes: size-1 axes are dropped and neighbours that every operand
/// steps through as one (`stride[i] == stride[i + 1] * shape[i + 1]`) are merged, so a bias
/// added to `(B, N, D)` is indexed as `(B*N, D)`. Row-major element order is unchanged,
/// which is all the strided kernels rely on.
fn coalesce(shape: &[usize], operands: &[&[usize]]) -> (Vec<usize>, Vec<Vec<usize>>) {
    let mut out_shape: Vec<usize> = Vec::new();
    let mut out_strides: Vec<Vec<usize>> = vec![Vec::new(); operands.len()];
    for (axis, &size) in shape.iter().enumerate() {
        if size == 1 {
            continue;
        }
        let mergeable = out_shape.last().is_some()
            && operands
                .iter()
                .zip(&out_strides)
                .all(|(s, merged)| merged.last() == Some(&(s[axis] * size)));
        if mergeable {
            *out_shape.last_mut().expect("checked above") *= size;
            for (s, merged) in operands.iter().zip(&mut out_strides) {
                *merged.last_mut().expect("checked above") = s[axis];
            }
        } else {
            out_shape.push(size);
            for (s, merged) in operands.iter().zip(&mut out_strides) {
                merged.push(s[axis]);
            }
        }
    }
    (out_shape, out_strides)
}

/// Groups for a grid-stride kernel over `numel` elements: one invocation per element up to
/// a cap, past which each invocation loops over several elements.
pub(crate) fn elementwise_grid(numel: usize) -> [u32; 3] {
    [
        numel.div_ceil(WG).clamp(1, MAX_ELEMENTWISE_GROUPS) as u32,
        1,
        1,
    ]
}

#[cfg(test)]
mod tests {
    use super::coalesce;

    #[test]
    fn coalesce_merges_what_every_operand_walks_as_one() {
        // A bias (stride 0, 1) added to a contiguous (2, 3, 4): the leading axes merge.
        let (shape, strides) = coalesce(&[2, 3, 4], &[&[12, 4, 1], &[0, 0, 1]]);
        assert_eq!(shape, [6, 4]);
        assert_eq!(strides, [vec![4, 1], vec![0, 1]]);
        // A transposed operand keeps its axes apart; size-1 axes vanish.
        let (shape, strides) = coalesce(&[3, 1, 4], &[&[4, 4, 1], &[1, 9, 3]]);
        assert_eq!(shape, [3, 4]);
        assert_eq!(strides, [vec![4, 1], vec![1, 3]]);
        // All contiguous: one axis.
        let (shape, _) = coalesce(&[2, 3, 4], &[&[12, 4, 1], &[12, 4, 1]]);
        assert_eq!(shape, [24]);
    }
}
