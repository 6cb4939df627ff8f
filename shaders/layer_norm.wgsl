// Layer normalisation over the last axis, fused: one workgroup per row computes the mean,
// then the biased variance from a second pass (more accurate than E[x^2] - E[x]^2), then
// writes (x - mean) * rstd * weight + bias. Mean and rstd are kept per row for the backward.

@group(0) @binding(1) var<storage, read_write> out: array<f32>;
// (mean, rstd) per row.
@group(0) @binding(2) var<storage, read_write> stats: array<f32>;
@group(0) @binding(3) var<storage, read> x: array<f32>;
@group(0) @binding(4) var<storage, read> weight: array<f32>;
@group(0) @binding(5) var<storage, read> bias: array<f32>;

@compute @workgroup_size(WG)
fn layer_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let row = row_index(wid, nwg);
    if (row >= p.rows) {
        return;
    }
    let base = p.x_offset + row * p.cols;
    var s = 0.0;
    for (var c = lid; c < p.cols; c += WG) {
        s += x[base + c];
    }
    let mean = reduce_sum(lid, s) / f32(p.cols);
    var sq = 0.0;
    for (var c = lid; c < p.cols; c += WG) {
        let d = x[base + c] - mean;
        sq += d * d;
    }
    let rstd = inverseSqrt(reduce_sum(lid, sq) / f32(p.cols) + p.eps);
    for (var c = lid; c < p.cols; c += WG) {
        let y = (x[base + c] - mean) * rstd;
        out[row * p.cols + c] = y * weight[p.w_offset + c] + bias[p.b_offset + c];
    }
    if (lid == 0u) {
        stats[2u * row] = mean;
        stats[2u * row + 1u] = rstd;
    }
}

// The backward, fused per row: with xhat = (x - mean) * rstd and gh = g * weight,
// dx = rstd * (gh - mean(gh) - xhat * mean(gh * xhat)). It also writes g * xhat, whose
// column sums (taken by the host) are the weight's gradient. Here p.b_offset is g's offset.
@group(0) @binding(1) var<storage, read_write> dx: array<f32>;
@group(0) @binding(2) var<storage, read_write> g_xhat: array<f32>;
@group(0) @binding(5) var<storage, read> g: array<f32>;
@group(0) @binding(6) var<storage, read> saved: array<f32>;

@compute @workgroup_size(WG)
fn layer_norm_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    let row = row_index(wid, nwg);
    if (row >= p.rows) {
        return;
    }
    let mean = saved[2u * row];
    let rstd = saved[2u * row + 1u];
    let xb = p.x_offset + row * p.cols;
    let gb = p.b_offset + row * p.cols;
    var s_gh = 0.0;
    var s_ghx = 0.0;
    for (var c = lid; c < p.cols; c += WG) {
        let xhat = (x[xb + c] - mean) * rstd;
        let gh = g[gb + c] * weight[p.w_offset + c];
        s_gh += gh;
        s_ghx += gh * xhat;
    }
    let mean_gh = reduce_sum(lid, s_gh) / f32(p.cols);
    let mean_ghx = reduce_sum(lid, s_ghx) / f32(p.cols);
    for (var c = lid; c < p.cols; c += WG) {
        let xhat = (x[xb + c] - mean) * rstd;
        let gc = g[gb + c];
        dx[row * p.cols + c] = rstd * (gc * weight[p.w_offset + c] - mean_gh - xhat * mean_ghx);
        g_xhat[row * p.cols + c] = gc * xhat;
    }
}
