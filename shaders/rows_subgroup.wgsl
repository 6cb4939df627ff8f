// Workgroup reductions for the row kernels with subgroup operations: each subgroup (a warp,
// wave or SIMD group, 4 to 128 invocations) reduces in registers, its first invocation
// stores the result in its own slot of `red` (the others store the identity), and every
// invocation folds the WG slots in index order: two barriers whatever the width, no
// assumption on how invocations are grouped. Compiled only for adapters with SUBGROUP
// (wgpu's naga takes subgroup operations without an `enable subgroups;` directive, which it
// does not parse yet).

fn reduce_sum(lid: u32, v: f32) -> f32 {
    let s = subgroupAdd(v);
    red[lid] = select(0.0, s, subgroupExclusiveAdd(1u) == 0u);
    workgroupBarrier();
    var t = 0.0;
    for (var i = 0u; i < WG; i++) {
        t += red[i];
    }
    workgroupBarrier();
    return t;
}

fn reduce_max(lid: u32, v: f32) -> f32 {
    let s = subgroupMax(v);
    red[lid] = select(-3.4028235e38, s, subgroupExclusiveAdd(1u) == 0u);
    workgroupBarrier();
    var t = -3.4028235e38;
    for (var i = 0u; i < WG; i++) {
        t = max(t, red[i]);
    }
    workgroupBarrier();
    return t;
}
