//! Plain CPU reference implementations of the ops, written for clarity, not speed. Every
//! kernel is tested against these; they are also the shortest statement of what each op
//! computes. Tensors are row-major `(data, shape)` pairs; sums accumulate in `f64`.

use crate::shape::{broadcast_shape, contiguous_strides, numel};

/// Coordinates of flat index `i` in `shape` (row-major).
fn coords(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut c = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        c[d] = i % shape[d];
        i /= shape[d];
    }
    c
}

/// Flat index of the element of `shape` that coordinates `c` of a broadcast shape read.
fn broadcast_index(c: &[usize], shape: &[usize]) -> usize {
    let lead = c.len() - shape.len();
    let strides = contiguous_strides(shape);
    (0..shape.len())
        .map(|d| {
            if shape[d] == 1 {
                0
            } else {
                c[lead + d] * strides[d]
            }
        })
        .sum()
}

/// Elementwise `f(a, b)` with NumPy broadcasting. Panics when the shapes do not broadcast.
pub fn binary(
    a: &[f32],
    ash: &[usize],
    b: &[f32],
    bsh: &[usize],
    f: impl Fn(f32, f32) -> f32,
) -> (Vec<f32>, Vec<usize>) {
    let shape = broadcast_shape("reference", ash, bsh).expect("shapes broadcast");
    let out = (0..numel(&shape))
        .map(|i| {
            let c = coords(i, &shape);
            f(a[broadcast_index(&c, ash)], b[broadcast_index(&c, bsh)])
        })
        .collect();
    (out, shape)
}

/// `where(cond, a, b)` with all three broadcast.
pub fn select(
    cond: &[u32],
    csh: &[usize],
    a: &[f32],
    ash: &[usize],
    b: &[f32],
    bsh: &[usize],
) -> (Vec<f32>, Vec<usize>) {
    let shape = broadcast_shape("reference", csh, ash).expect("shapes broadcast");
    let shape = broadcast_shape("reference", &shape, bsh).expect("shapes broadcast");
    let out = (0..numel(&shape))
        .map(|i| {
            let c = coords(i, &shape);
            if cond[broadcast_index(&c, csh)] != 0 {
                a[broadcast_index(&c, ash)]
            } else {
                b[broadcast_index(&c, bsh)]
            }
        })
        .collect();
    (out, shape)
}

/// `erf` in double precision.
pub fn erf(x: f64) -> f64 {
    libm::erf(x)
}

/// GELU, exact erf form.
pub fn gelu(x: f32) -> f32 {
    let x = x as f64;
    (0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))) as f32
}

/// Derivative of the exact GELU: `Phi(x) + x phi(x)`.
pub fn gelu_grad(x: f32) -> f32 {
    let x = x as f64;
    let cdf = 0.5 * (1.0 + erf(x / std::f64::consts::SQRT_2));
    let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
    (cdf + x * pdf) as f32
}

/// `x ^ y` with PyTorch's conventions.
pub fn pow(x: f32, y: f32) -> f32 {
    (x as f64).powf(y as f64) as f32
}

/// Which reduction [`reduce`] computes.
#[derive(Clone, Copy, Debug)]
pub enum Reduce {
    /// Sum.
    Sum,
    /// Mean.
    Mean,
    /// Maximum.
    Max,
    /// Minimum.
    Min,
    /// Variance, unbiased when the flag is set.
    Var(bool),
    /// Index of the first maximum (as f32).
    Argmax,
    /// Index of the first minimum (as f32).
    Argmin,
}

/// Reduce `axis` of `x`, dropping it from the shape.
pub fn reduce(x: &[f32], shape: &[usize], axis: usize, how: Reduce) -> (Vec<f32>, Vec<usize>) {
    let outer = numel(&shape[..axis]);
    let n = shape[axis];
    let inner = numel(&shape[axis + 1..]);
    let mut out = Vec::with_capacity(outer * inner);
    for o in 0..outer {
        for i in 0..inner {
            let v: Vec<f64> = (0..n).map(|j| x[(o * n + j) * inner + i] as f64).collect();
            let mean = v.iter().sum::<f64>() / n as f64;
            let first = |better: fn(f64, f64) -> bool| {
                let mut best = 0;
                for j in 1..n {
                    if better(v[j], v[best]) {
                        best = j;
                    }
                }
                best as f64
            };
            let r = match how {
                Reduce::Sum => v.iter().sum(),
                Reduce::Mean => mean,
                Reduce::Max => v.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
                Reduce::Min => v.iter().cloned().fold(f64::INFINITY, f64::min),
                Reduce::Var(unbiased) => {
                    let ss: f64 = v.iter().map(|x| (x - mean) * (x - mean)).sum();
                    ss / (n as f64 - if unbiased { 1.0 } else { 0.0 })
                }
                Reduce::Argmax => first(|a, b| a > b),
                Reduce::Argmin => first(|a, b| a < b),
            };
            out.push(r as f32);
        }
    }
    let mut out_shape = shape.to_vec();
    out_shape.remove(axis);
    (out, out_shape)
}

/// `(m, k) x (k, n)` product of row-major matrices.
pub fn matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] = (0..k)
                .map(|t| a[i * k + t] as f64 * b[t * n + j] as f64)
                .sum::<f64>() as f32;
        }
    }
    out
}

/// Row-major transpose of an `(r, c)` matrix.
pub fn transpose(a: &[f32], r: usize, c: usize) -> Vec<f32> {
    (0..r * c).map(|i| a[(i % r) * c + i / r]).collect()
}

/// Softmax of each row of length `cols`.
pub fn softmax(x: &[f32], cols: usize) -> Vec<f32> {
    x.chunks(cols)
        .flat_map(|row| {
            let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let s: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
            row.iter().map(move |&v| ((v as f64 - m).exp() / s) as f32)
        })
        .collect()
}

/// Layer norm of each row (biased variance), with weight and bias.
pub fn layer_norm(x: &[f32], w: &[f32], b: &[f32], eps: f32) -> Vec<f32> {
    let cols = w.len();
    x.chunks(cols)
        .flat_map(|row| {
            let n = cols as f64;
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / n;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
            let rstd = 1.0 / (var + eps as f64).sqrt();
            row.iter()
                .enumerate()
                .map(move |(c, &v)| ((v as f64 - mean) * rstd * w[c] as f64 + b[c] as f64) as f32)
        })
        .collect()
}

/// Per-row cross-entropy with label smoothing `eps`.
pub fn cross_entropy(x: &[f32], targets: &[u32], cols: usize, eps: f32) -> Vec<f32> {
    x.chunks(cols)
        .zip(targets)
        .map(|(row, &t)| {
            let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = m + row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / cols as f64;
            let eps = eps as f64;
            (lse - (1.0 - eps) * row[t as usize] as f64 - eps * mean) as f32
        })
        .collect()
}

/// Stable argsort of each row.
pub fn argsort(x: &[f32], cols: usize, descending: bool) -> Vec<u32> {
    x.chunks(cols)
        .flat_map(|row| {
            let mut idx: Vec<u32> = (0..cols as u32).collect();
            idx.sort_by(|&i, &j| {
                let o = row[i as usize]
                    .partial_cmp(&row[j as usize])
                    .expect("no NaN");
                if descending {
                    o.reverse()
                } else {
                    o
                }
            });
            idx
        })
        .collect()
}

/// `torch.gather` along `axis`; the output has the index's shape.
pub fn gather(
    x: &[f32],
    shape: &[usize],
    axis: usize,
    index: &[u32],
    ishape: &[usize],
) -> Vec<f32> {
    let strides = contiguous_strides(shape);
    (0..numel(ishape))
        .map(|i| {
            let mut c = coords(i, ishape);
            c[axis] = index[i] as usize;
            x[c.iter().zip(&strides).map(|(a, b)| a * b).sum::<usize>()]
        })
        .collect()
}

/// Permute axes: axis `i` of the result is axis `perm[i]` of `x`.
pub fn permute(x: &[f32], shape: &[usize], perm: &[usize]) -> (Vec<f32>, Vec<usize>) {
    let strides = contiguous_strides(shape);
    let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let out = (0..x.len())
        .map(|i| {
            let c = coords(i, &out_shape);
            x[perm
                .iter()
                .enumerate()
                .map(|(d, &p)| c[d] * strides[p])
                .sum::<usize>()]
        })
        .collect();
    (out, out_shape)
}

/// The integer hash of `random.wgsl` ("lowbias32").
pub fn hash(mut v: u32) -> u32 {
    v ^= v >> 16;
    v = v.wrapping_mul(0x7feb_352d);
    v ^= v >> 15;
    v = v.wrapping_mul(0x846c_a68b);
    v ^= v >> 16;
    v
}

/// Random word `k` of element `i` for `seed`, as the shader computes it.
pub fn random_word(seed: u64, i: u32, k: u32) -> u32 {
    let key = hash(seed as u32 ^ hash(((seed >> 32) as u32).wrapping_add(0x9e37_79b9)));
    hash(hash(2 * i + k) ^ key)
}

fn unit(w: u32) -> f32 {
    (w >> 8) as f32 * (1.0 / 16_777_216.0)
}

/// Element `i` of [`crate::Tensor::rand_uniform`].
pub fn uniform(seed: u64, i: u32, low: f32, high: f32) -> f32 {
    low + (high - low) * unit(random_word(seed, i, 0))
}

/// Element `i` of [`crate::Tensor::rand_normal`].
pub fn normal(seed: u64, i: u32, mean: f32, std: f32) -> f32 {
    let u1 = 1.0 - unit(random_word(seed, i, 0)) as f64;
    let u2 = unit(random_word(seed, i, 1)) as f64;
    (mean as f64 + std as f64 * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

/// Whether [`crate::Tensor::dropout`] keeps element `i`.
pub fn dropout_keeps(seed: u64, i: u32, p: f32) -> bool {
    unit(random_word(seed, i, 0)) >= p
}

/// Multi-head attention from a fused `(B, N, 3D)` qkv (q, k, v side by side, heads
/// contiguous within each): `(B, N, D)`, in f64 and without any trick.
pub fn qkv_attention(qkv: &[f32], b: usize, n: usize, d: usize, heads: usize) -> Vec<f32> {
    let hd = d / heads;
    let scale = (hd as f64).powf(-0.5);
    let at = |bi: usize, t: usize, part: usize, h: usize, e: usize| {
        qkv[(bi * n + t) * 3 * d + part * d + h * hd + e] as f64
    };
    let mut out = vec![0.0f32; b * n * d];
    for bi in 0..b {
        for h in 0..heads {
            for i in 0..n {
                let scores: Vec<f64> = (0..n)
                    .map(|j| {
                        scale
                            * (0..hd)
                                .map(|e| at(bi, i, 0, h, e) * at(bi, j, 1, h, e))
                                .sum::<f64>()
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|s| (s - m).exp()).sum();
                for e in 0..hd {
                    let v: f64 = (0..n)
                        .map(|j| (scores[j] - m).exp() / z * at(bi, j, 2, h, e))
                        .sum();
                    out[(bi * n + i) * d + h * hd + e] = v as f32;
                }
            }
        }
    }
    out
}
