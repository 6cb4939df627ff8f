// Shared prelude of the row kernels (softmax, layer norm, cross-entropy, argsort): one
// workgroup per row of a contiguous (rows, cols) view and the uniform layout. The
// reductions across the workgroup, reduce_sum and reduce_max, come from rows_tree.wgsl or,
// on adapters with subgroups, rows_subgroup.wgsl. Rust twin: RowParams in
// engine/src/params.rs.

struct Params {
    rows: u32,
    cols: u32,
    x_offset: u32,
    // Offsets of the second and third inputs (weight and bias, or targets).
    w_offset: u32,
    b_offset: u32,
    // Layer norm's epsilon, or cross-entropy's label smoothing.
    eps: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// Invocations per workgroup, a power of two up to 64 chosen by the host per adapter.
override WG: u32 = 64u;

// One slot per invocation for the reductions.
var<workgroup> red: array<f32, 64>;

// The row this workgroup handles; rows past 65535 workgroups spill into y.
fn row_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.y * nwg.x + wid.x;
}
