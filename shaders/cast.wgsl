// Conversions between f32 and f16 storage, contiguous to contiguous: how mixed-precision
// products get their f16 operands (`to_half`) and how f16 tensors are read back
// (`to_single`). f32 to f16 rounds to nearest even, as IEEE conversion does; a value beyond
// f16's range becomes an infinity of its sign, which the loss scaler then sees in the
// gradients (engine/tests/half.rs checks both on the adapter).
enable f16;

struct Params {
    numel: u32,
    in_offset: u32,
    out_offset: u32,
    _pad: u32,
}

const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> half_out: array<f16>;
@group(0) @binding(2) var<storage, read> single_in: array<f32>;
@group(0) @binding(1) var<storage, read_write> single_out: array<f32>;
@group(0) @binding(2) var<storage, read> half_in: array<f16>;

@compute @workgroup_size(64)
fn to_half(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < p.numel; i += nwg.x * WG) {
        half_out[p.out_offset + i] = f16(single_in[p.in_offset + i]);
    }
}

@compute @workgroup_size(64)
fn to_single(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < p.numel; i += nwg.x * WG) {
        single_out[p.out_offset + i] = f32(half_in[p.in_offset + i]);
    }
}
