// gather along one axis: out[..., i, ...] = x[..., index[..., i, ...], ...]. The iteration
// shape is the index's; input 0 is x with the gathered axis' stride zeroed (its stride is
// p.axis_stride), input 1 the u32 index, broadcast views allowed. An index outside
// 0..p.axis_size writes 0 and is reported through the status buffer, never read.

@group(0) @binding(1) var<storage, read_write> out: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<u32>;
@group(0) @binding(3) var<storage, read> index: array<u32>;
@group(0) @binding(4) var<storage, read_write> status: array<atomic<u32>, 4>;

// Keep the first bad index seen: code 1 names this op on the host.
fn report(idx: u32) {
    loop {
        let r = atomicCompareExchangeWeak(&status[0], 0u, 1u);
        if (r.exchanged) {
            atomicStore(&status[1], idx);
            atomicStore(&status[2], p.axis_size);
            break;
        }
        if (r.old_value != 0u) {
            break;
        }
    }
}

@compute @workgroup_size(64)
fn gather(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < p.numel; i += nwg.x * WG) {
        let o = strided_offsets(i);
        let idx = index[o.z];
        if (idx >= p.axis_size) {
            report(idx);
            out[o.x] = 0u;
            continue;
        }
        out[o.x] = x[o.y + idx * p.axis_stride];
    }
}
