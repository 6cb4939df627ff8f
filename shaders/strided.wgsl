// Shared prelude of the strided kernels (elementwise, compare, select, copy, gather): the
// uniform layout, and the index arithmetic for operands addressed through shape and
// strides, so that views and broadcasts (stride 0) need no copy.
// Rust twin: StridedParams in engine/src/params.rs.

struct Params {
    numel: u32,
    rank: u32,
    scalar: f32,
    axis_stride: u32,
    axis_size: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    // Element offsets of the output and of inputs 0, 1, 2.
    offsets: vec4<u32>,
    // Iteration shape and per-operand strides, up to eight axes.
    shape: array<vec4<u32>, 2>,
    out_strides: array<vec4<u32>, 2>,
    strides0: array<vec4<u32>, 2>,
    strides1: array<vec4<u32>, 2>,
    strides2: array<vec4<u32>, 2>,
}

@group(0) @binding(0) var<uniform> p: Params;

// Invocations per workgroup. The kernels walk the elements in a grid-stride loop
// (i += WG * num_workgroups), so the host caps the number of workgroups: fewer, longer-lived
// invocations cost less scheduling, above all on CPU drivers.
const WG: u32 = 64u;

// Buffer offsets of element `i` (row-major over p.shape) in the output and the three inputs.
fn strided_offsets(i: u32) -> vec4<u32> {
    var rem = i;
    var off = p.offsets;
    for (var d = i32(p.rank) - 1; d >= 0; d--) {
        let q = u32(d) / 4u;
        let r = u32(d) % 4u;
        let size = p.shape[q][r];
        let c = rem % size;
        rem = rem / size;
        off += c * vec4<u32>(p.out_strides[q][r], p.strides0[q][r], p.strides1[q][r], p.strides2[q][r]);
    }
    return off;
}

// Infinity or NaN from its bits. p._pad0 is always 0; adding it keeps the value out of
// constant evaluation, which rejects non-finite constants.
fn non_finite(bits: u32) -> f32 {
    return bitcast<f32>(bits + p._pad0);
}
