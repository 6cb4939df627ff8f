// Constant and range fills. OP 0: every element is `start` (f32 bits); OP 1: f32 range
// start + i * step; OP 2: u32 range u32(start) + i.

struct Params {
    numel: u32,
    _pad: u32,
    start: f32,
    step: f32,
}

override OP: u32;
const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;

@compute @workgroup_size(64)
fn fill(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < p.numel; i += nwg.x * WG) {
        switch OP {
            case 1u: { out[i] = bitcast<u32>(p.start + f32(i) * p.step); }
            case 2u: { out[i] = u32(p.start) + i; }
            default: { out[i] = bitcast<u32>(p.start); }
        }
    }
}
