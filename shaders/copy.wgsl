// Strided copy between any two layouts of 32-bit words (contiguous(), concat, views of
// either dtype), optionally converting: OP 0 copies bits, 1 converts f32 to u32 (truncating
// toward zero, negatives to 0), 2 converts u32 to f32.

override OP: u32;

@group(0) @binding(1) var<storage, read_write> out: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<u32>;

@compute @workgroup_size(64)
fn copy(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < p.numel; i += nwg.x * WG) {
        let o = strided_offsets(i);
        let v = x[o.y];
        switch OP {
            case 1u: { out[o.x] = u32(max(bitcast<f32>(v), 0.0)); }
            case 2u: { out[o.x] = bitcast<u32>(f32(v)); }
            default: { out[o.x] = v; }
        }
    }
}
