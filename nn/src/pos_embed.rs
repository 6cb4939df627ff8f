//! The fixed 2-D sin-cos position embedding of the MAE reference.

/// `(1 + grid*grid, dim)` row-major: row 0 (the cls token) is zeros; the patch at grid row
/// `h`, column `w` gets `[sin(w ω), cos(w ω), sin(h ω), cos(h ω)]` in four blocks of
/// `dim / 4`, with `ω_i = 1 / 10000^(i / (dim / 4))`. The column comes first: the reference
/// code swaps its names for h and w, and every published checkpoint relies on that layout.
/// Computed in `f64`, rounded once to `f32`.
///
/// # Panics
/// When `dim` is not a multiple of 4 (a programming error in a model config, caught by the
/// config's validation first).
pub fn sincos_2d(dim: usize, grid: usize) -> Vec<f32> {
    assert!(
        dim.is_multiple_of(4),
        "sin-cos position embedding needs a width divisible by 4, got {dim}"
    );
    let quarter = dim / 4;
    let omega: Vec<f64> = (0..quarter)
        .map(|i| 1.0 / 10000f64.powf(i as f64 / quarter as f64))
        .collect();
    let mut out = vec![0.0f32; (1 + grid * grid) * dim];
    for h in 0..grid {
        for w in 0..grid {
            let row = &mut out[(1 + h * grid + w) * dim..][..dim];
            for (i, &o) in omega.iter().enumerate() {
                row[i] = (w as f64 * o).sin() as f32;
                row[quarter + i] = (w as f64 * o).cos() as f32;
                row[2 * quarter + i] = (h as f64 * o).sin() as f32;
                row[3 * quarter + i] = (h as f64 * o).cos() as f32;
            }
        }
    }
    out
}

/// A `(1 + from*from, dim)` position table (cls row first) made for a grid of `to x to`
/// patches, as the reference's `interpolate_pos_embed` does when fine-tuning at another
/// resolution: the cls row kept, the patch rows resized as a `(dim, from, from)` image by
/// PyTorch's bicubic interpolation (`align_corners=False`, a = -0.75, edges repeated).
/// Computed in `f64` and rounded once: PyTorch's `f32` arithmetic is itself up to about
/// ten units in the last place from the exact values.
pub fn interpolate(table: &[f32], dim: usize, from: usize, to: usize) -> Vec<f32> {
    let taps = bicubic_taps(from, to);
    let mut out = vec![0.0f32; (1 + to * to) * dim];
    out[..dim].copy_from_slice(&table[..dim]);
    let at = |h: usize, w: usize, c: usize| table[(1 + h * from + w) * dim + c] as f64;
    for (y, (ys, wy)) in taps.iter().enumerate() {
        for (x, (xs, wx)) in taps.iter().enumerate() {
            for c in 0..dim {
                let mut v = 0.0;
                for (&h, &a) in ys.iter().zip(wy) {
                    for (&w, &b) in xs.iter().zip(wx) {
                        v += a * b * at(h, w, c);
                    }
                }
                out[(1 + y * to + x) * dim + c] = v as f32;
            }
        }
    }
    out
}

/// For each of `to` outputs over `from` inputs: the four input indices (clamped to the
/// edge) and their weights, as PyTorch's `upsample_bicubic2d` chooses them.
fn bicubic_taps(from: usize, to: usize) -> Vec<([usize; 4], [f64; 4])> {
    const A: f64 = -0.75;
    let near = |x: f64| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f64| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    let scale = from as f64 / to as f64;
    (0..to)
        .map(|o| {
            let real = scale * (o as f64 + 0.5) - 0.5;
            let first = (real.floor() as isize).min(from as isize - 1);
            let t = (real - first as f64).clamp(0.0, 1.0);
            let index = |k: isize| (first + k).clamp(0, from as isize - 1) as usize;
            (
                [index(-1), index(0), index(1), index(2)],
                [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)],
            )
        })
        .collect()
}
