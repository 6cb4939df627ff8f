// Numerically stable softmax over the last axis, fused: one workgroup per row finds the row
// maximum, sums exp(x - max) and writes the normalised values, reading the row three times
// and writing it once.

@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;

@compute @workgroup_size(WG)
fn softmax(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let row = row_index(wid, nwg);
    if (row >= p.rows) {
        return;
    }
    let base = p.x_offset + row * p.cols;
    var m = -3.4028235e38;
    for (var c = lid; c < p.cols; c += WG) {
        m = max(m, x[base + c]);
    }
    m = reduce_max(lid, m);
    var s = 0.0;
    for (var c = lid; c < p.cols; c += WG) {
        s += exp(x[base + c] - m);
    }
    let inv = 1.0 / reduce_sum(lid, s);
    for (var c = lid; c < p.cols; c += WG) {
        out[row * p.cols + c] = exp(x[base + c] - m) * inv;
    }
}
