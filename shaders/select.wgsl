// where(cond, a, b): a where the u32 condition is non-zero, else b; all three broadcast.

@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> cond: array<u32>;
@group(0) @binding(3) var<storage, read> a: array<f32>;
@group(0) @binding(4) var<storage, read> b: array<f32>;

@compute @workgroup_size(64)
fn where_select(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if (i >= p.numel) {
        return;
    }
    let o = strided_offsets(i);
    out[o.x] = select(b[o.w], a[o.z], cond[o.y] != 0u);
}
