// The gradient of gather: out (the input's shape, contiguous) sums the upstream gradient g
// over every index entry that picked each element:
//   out[.., j, ..] = sum over k with index[.., k, ..] == j of g[.., k, ..]   (along `axis`).
// Each invocation owns one output element and walks the k index entries in order, so the
// sum is deterministic and repeated indices need no atomics.

struct Params {
    numel: u32,
    rank: u32,
    axis: u32,
    // Length of the index along `axis`.
    k: u32,
    g_offset: u32,
    idx_offset: u32,
    _pad0: u32,
    _pad1: u32,
    shape: array<vec4<u32>, 2>,
    idx_shape: array<vec4<u32>, 2>,
    g_strides: array<vec4<u32>, 2>,
    idx_strides: array<vec4<u32>, 2>,
}

const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> g: array<f32>;
@group(0) @binding(3) var<storage, read> index: array<u32>;

@compute @workgroup_size(64)
fn gather_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < p.numel; i += nwg.x * WG) {
        // Coordinates of element i; offsets of the same position (axis coordinate 0) in g
        // and the index; whether the position lies inside the index's extent.
        var rem = i;
        var g_off = p.g_offset;
        var idx_off = p.idx_offset;
        var inside = true;
        var j = 0u;
        for (var d = i32(p.rank) - 1; d >= 0; d--) {
            let q = u32(d) / 4u;
            let r = u32(d) % 4u;
            let c = rem % p.shape[q][r];
            rem = rem / p.shape[q][r];
            if (u32(d) == p.axis) {
                j = c;
            } else {
                inside = inside && c < p.idx_shape[q][r];
                g_off += c * p.g_strides[q][r];
                idx_off += c * p.idx_strides[q][r];
            }
        }
        var acc = 0.0;
        if (inside) {
            let aq = p.axis / 4u;
            let ar = p.axis % 4u;
            for (var kk = 0u; kk < p.k; kk++) {
                if (index[idx_off + kk * p.idx_strides[aq][ar]] == j) {
                    acc += g[g_off + kk * p.g_strides[aq][ar]];
                }
            }
        }
        out[i] = acc;
    }
}
