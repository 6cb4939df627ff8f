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
