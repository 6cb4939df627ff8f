// Comparisons of f32 operands into u32 masks (1 true, 0 false), broadcasting like the
// elementwise kernels. B_SCALAR compares against p.scalar instead of the second operand.

override OP: u32;
override B_SCALAR: bool;

@group(0) @binding(1) var<storage, read_write> out: array<u32>;
@group(0) @binding(2) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;

fn compare_op(x: f32, y: f32) -> bool {
    switch OP {
        case 0u: { return x == y; }
        case 1u: { return x != y; }
        case 2u: { return x < y; }
        case 3u: { return x <= y; }
        case 4u: { return x > y; }
        default: { return x >= y; }
    }
}

@compute @workgroup_size(64)
fn compare(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < p.numel; i += nwg.x * WG) {
        let o = strided_offsets(i);
        var y = p.scalar;
        if (!B_SCALAR) {
            y = b[o.z];
        }
        out[o.x] = select(0u, 1u, compare_op(a[o.y], y));
    }
}
