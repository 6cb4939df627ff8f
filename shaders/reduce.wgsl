// Reductions over the middle axis of a contiguous (outer, n, inner) view: one workgroup per
// output element and chunk of the axis, each invocation folding a strided share of the
// chunk's values, then a tree in workgroup memory. With one chunk (chunk = n) this is the
// whole reduction; long axes with few outputs are cut into chunks whose partial results,
// laid out (outer, chunks, inner), the host reduces again.
// `reduce_columns` serves sums, maxima and minima with inner > 1 (a bias gradient is the sum
// of (tokens, width) over tokens): a workgroup takes WG neighbouring columns, each
// invocation folds its column down the chunk, so a workgroup reads whole rows at once.
// OP 0 sum (times scale: 1, or 1/n for the mean), 1 max, 2 min,
// 3 variance (two passes: mean, then squared deviations times scale = 1/(n - correction)),
// 4 argmax and 5 argmin (u32 index of the first extreme element).

struct Params {
    outer: u32,
    n: u32,
    inner: u32,
    offset: u32,
    scale: f32,
    chunk: u32,
    _pad1: u32,
    _pad2: u32,
}

override OP: u32;
// Invocations per workgroup, a power of two up to 64 chosen by the host per adapter.
override WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;

var<workgroup> vals: array<f32, 64>;
var<workgroup> idxs: array<u32, 64>;

// Does candidate (v, i) beat the current (w, j)? Ties go to the lower index.
fn better(v: f32, i: u32, w: f32, j: u32) -> bool {
    if (OP == 4u) {
        return v > w || (v == w && i < j);
    }
    return v < w || (v == w && i < j);
}

fn combine(x0: f32, x1: f32) -> f32 {
    switch OP {
        case 1u: { return max(x0, x1); }
        case 2u: { return min(x0, x1); }
        default: { return x0 + x1; }
    }
}

fn tree(lid: u32) {
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            if (OP >= 4u) {
                if (better(vals[lid + s], idxs[lid + s], vals[lid], idxs[lid])) {
                    vals[lid] = vals[lid + s];
                    idxs[lid] = idxs[lid + s];
                }
            } else {
                vals[lid] = combine(vals[lid], vals[lid + s]);
            }
        }
        workgroupBarrier();
    }
}

@compute @workgroup_size(WG)
fn reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let g = wid.y * nwg.x + wid.x;
    let chunks = max((p.n + p.chunk - 1u) / p.chunk, 1u);
    if (g >= p.outer * chunks * p.inner) {
        return;
    }
    let o = g / (chunks * p.inner);
    let c = (g / p.inner) % chunks;
    let base = p.offset + o * p.n * p.inner + g % p.inner;
    let start = c * p.chunk;
    let end = min(start + p.chunk, p.n);
    var acc = x[base + start * p.inner];
    var best = start;
    if (OP == 0u || OP == 3u) {
        acc = 0.0;
    }
    for (var j = start + lid; j < end; j += WG) {
        let v = x[base + j * p.inner];
        if (OP >= 4u) {
            if (better(v, j, acc, best)) {
                acc = v;
                best = j;
            }
        } else {
            acc = combine(acc, v);
        }
    }
    vals[lid] = acc;
    idxs[lid] = best;
    workgroupBarrier();
    tree(lid);
    if (OP == 3u) {
        // Variance is only launched with one chunk.
        let mean = vals[0] / f32(p.n);
        workgroupBarrier();
        var sq = 0.0;
        for (var j = lid; j < p.n; j += WG) {
            let d = x[base + j * p.inner] - mean;
            sq += d * d;
        }
        vals[lid] = sq;
        workgroupBarrier();
        tree(lid);
    }
    if (lid == 0u) {
        if (OP >= 4u) {
            out[g] = idxs[0];
        } else if (OP == 0u || OP == 3u) {
            out[g] = bitcast<u32>(vals[0] * p.scale);
        } else {
            out[g] = bitcast<u32>(vals[0]);
        }
    }
}

@compute @workgroup_size(WG)
fn reduce_columns(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let g = wid.y * nwg.x + wid.x;
    let chunks = max((p.n + p.chunk - 1u) / p.chunk, 1u);
    let tiles = (p.inner + WG - 1u) / WG;
    if (g >= p.outer * chunks * tiles) {
        return;
    }
    let o = g / (chunks * tiles);
    let c = (g / tiles) % chunks;
    let i = (g % tiles) * WG + lid;
    if (i >= p.inner) {
        return;
    }
    let base = p.offset + o * p.n * p.inner + i;
    let start = c * p.chunk;
    let end = min(start + p.chunk, p.n);
    var acc = x[base + start * p.inner];
    if (OP == 0u) {
        acc = 0.0;
    }
    for (var j = start; j < end; j++) {
        acc = combine(acc, x[base + j * p.inner]);
    }
    if (OP == 0u) {
        acc *= p.scale;
    }
    out[(o * chunks + c) * p.inner + i] = bitcast<u32>(acc);
}
