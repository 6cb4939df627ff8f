// Stable per-row argsort by ranking: element i of a row goes to position
//   #{j : key_j < key_i} + #{j < i : key_j == key_i}
// (reversed comparison when DESCENDING). O(cols^2) comparisons per row, all independent, so
// it needs no sorting network and works for any row length; MAE sorts rows of a few hundred
// noise values. NaN keys are not supported.

override DESCENDING: bool;

@group(0) @binding(1) var<storage, read_write> out: array<u32>;
@group(0) @binding(2) var<storage, read> keys: array<f32>;

@compute @workgroup_size(WG)
fn argsort(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let row = row_index(wid, nwg);
    if (row >= p.rows) {
        return;
    }
    let base = p.x_offset + row * p.cols;
    for (var i = lid; i < p.cols; i += WG) {
        let ki = keys[base + i];
        var rank = 0u;
        for (var j = 0u; j < p.cols; j++) {
            let kj = keys[base + j];
            var before = kj < ki;
            if (DESCENDING) {
                before = kj > ki;
            }
            if (before || (kj == ki && j < i)) {
                rank += 1u;
            }
        }
        out[row * p.cols + rank] = i;
    }
}
