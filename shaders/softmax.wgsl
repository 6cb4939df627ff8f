// Numerically stable softmax over the last axis, fused: one workgroup per row finds the row
// maximum, sums exp(x - max) and writes the normalised values, reading the row three times
// and writing it once.

struct Params {
    rows: u32,
    cols: u32,
    x_offset: u32,
    w_offset: u32,
    b_offset: u32,
    eps: f32,
    _pad0: u32,
    _pad1: u32,
}

// Invocations per workgroup, a power of two up to 64 chosen by the host per adapter.
override WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;

var<workgroup> red: array<f32, 64>;

fn reduce_max(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red[lid] = max(red[lid], red[lid + s]);
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn reduce_sum(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red[lid] += red[lid + s];
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(WG)
fn softmax(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let row = wid.y * nwg.x + wid.x;
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
