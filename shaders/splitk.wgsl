// The sum of a split-K product's partial blocks (matmul_tiled.wgsl with SPLIT): out[i] =
// partial[0 * numel + i] + partial[1 * numel + i] + ..., in split order, plus bias[col] with
// HAS_BIAS.

struct Params {
    numel: u32,
    n: u32,
    splits: u32,
    bias_offset: u32,
}

override HAS_BIAS: bool;
const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> partial: array<f32>;
// Bound to the partial buffer (and never read) without HAS_BIAS.
@group(0) @binding(3) var<storage, read> bias: array<f32>;

@compute @workgroup_size(64)
fn splitk_sum(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < p.numel; i += nwg.x * WG) {
        var s = partial[i];
        for (var split = 1u; split < p.splits; split++) {
            s += partial[split * p.numel + i];
        }
        if (HAS_BIAS) {
            s += bias[p.bias_offset + i % p.n];
        }
        out[i] = s;
    }
}
