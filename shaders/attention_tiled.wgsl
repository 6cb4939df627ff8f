// Fused multi-head attention for GPUs: the contract of attention.wgsl (qkv (B, N, 3D) in,
// out (B, N, D) and the log-sum-exp per row, the backward recomputing probabilities from
// it), with tiles shared through workgroup memory.
//
// A workgroup takes WG consecutive rows of one (batch, head): wid.x is the tile of rows,
// wid.y is batch * heads + head. Its invocations copy the keys and values (forward, dq) or
// the queries, output gradients and row statistics (dk, dv) of BKV tokens at a time into
// workgroup memory, consecutive invocations reading consecutive words; every invocation
// then reads the same word at once (a broadcast), and each keeps its own row's vectors in
// registers. Global memory is read once per workgroup instead of once per row. Invocations
// past the last token load and wait at the barriers like the others but write nothing.
//
// engine/src/ops/attention.rs replaces the lines between BEGIN TILE and END TILE per head
// dimension: HD, and BKV sized so that the tiles fit in 16 KiB, the workgroup memory every
// WebGPU adapter has.

// BEGIN TILE
const HD: u32 = 64u;
const BKV: u32 = 16u;
// END TILE

const WG: u32 = 64u;

struct Params {
    batch: u32,
    tokens: u32,
    heads: u32,
    head_dim: u32,
    scale: f32,
    qkv_offset: u32,
    g_offset: u32,
    _pad0: u32,
}

// The operands' element type: f32 here, f16 in the builds `kernels::half_operands` makes
// (which also prepend `enable f16;`). Every read converts to f32, so products accumulate
// in f32 either way.
alias Operand = f32;

@group(0) @binding(0) var<uniform> p: Params;

// Two tiles of BKV rows of HD, and two of BKV statistics.
var<workgroup> tile_a: array<f32, BKV * HD>;
var<workgroup> tile_b: array<f32, BKV * HD>;
var<workgroup> stat_a: array<f32, BKV>;
var<workgroup> stat_b: array<f32, BKV>;

// The rows a workgroup takes, and this invocation's.
struct Rows {
    b: u32,
    h: u32,
    // This invocation's token, clamped to the last one for reads.
    i: u32,
    valid: bool,
    // Its index in (B, H, N) order, for the per-row statistics.
    r: u32,
}

fn rows_of(wid: vec3<u32>, lid: u32) -> Rows {
    let i = wid.x * WG + lid;
    let b = wid.y / p.heads;
    let h = wid.y % p.heads;
    let ic = min(i, p.tokens - 1u);
    return Rows(b, h, ic, i < p.tokens, (b * p.heads + h) * p.tokens + ic);
}

// Start of the q (part 0), k (1) or v (2) slice of token t of the rows' head in qkv.
fn qkv_at(rows: Rows, t: u32, part: u32) -> u32 {
    let d = p.heads * HD;
    return p.qkv_offset + (rows.b * p.tokens + t) * 3u * d + part * d + rows.h * HD;
}

// Start of token t of the rows' head in a (B, N, D) tensor.
fn bnd_at(rows: Rows, t: u32) -> u32 {
    let d = p.heads * HD;
    return (rows.b * p.tokens + t) * d + rows.h * HD;
}

// ---- forward: out (B, N, D) and lse (B, H, N) ----

@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read_write> lse: array<f32>;
@group(0) @binding(3) var<storage, read> qkv: array<Operand>;

@compute @workgroup_size(WG)
fn attention_tiled_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let rows = rows_of(wid, lid);
    var q: array<f32, HD>;
    var acc: array<f32, HD>;
    let q0 = qkv_at(rows, rows.i, 0u);
    for (var d = 0u; d < HD; d++) {
        q[d] = f32(qkv[q0 + d]) * p.scale;
    }
    // Online softmax from a running maximum below any score: the first key rescales the
    // empty sums by exp(-huge) = 0, as starting from that key would.
    var m = -3.0e38;
    var l = 0.0;
    for (var j0 = 0u; j0 < p.tokens; j0 += BKV) {
        for (var e = lid; e < BKV * HD; e += WG) {
            let t = min(j0 + e / HD, p.tokens - 1u);
            tile_a[e] = f32(qkv[qkv_at(rows, t, 1u) + e % HD]);
            tile_b[e] = f32(qkv[qkv_at(rows, t, 2u) + e % HD]);
        }
        workgroupBarrier();
        let count = min(BKV, p.tokens - j0);
        for (var t = 0u; t < count; t++) {
            var s = 0.0;
            for (var d = 0u; d < HD; d++) {
                s += q[d] * tile_a[t * HD + d];
            }
            let m_new = max(m, s);
            let c = exp(m - m_new);
            let e = exp(s - m_new);
            l = l * c + e;
            for (var d = 0u; d < HD; d++) {
                acc[d] = acc[d] * c + e * tile_b[t * HD + d];
            }
            m = m_new;
        }
        workgroupBarrier();
    }
    if (rows.valid) {
        let o0 = bnd_at(rows, rows.i);
        for (var d = 0u; d < HD; d++) {
            out[o0 + d] = acc[d] / l;
        }
        lse[rows.r] = m + log(l);
    }
}

// ---- backward: dqkv (B, N, 3D) from g = d(out), out, lse and qkv ----
// attention_tiled_backward_q runs first: it writes dq and each row's delta = g_i . out_i,
// which attention_tiled_backward_kv then reads for every query.

@group(0) @binding(1) var<storage, read_write> dqkv: array<f32>;
@group(0) @binding(2) var<storage, read_write> delta: array<f32>;
@group(0) @binding(3) var<storage, read> g: array<f32>;
@group(0) @binding(4) var<storage, read> fwd_out: array<f32>;
@group(0) @binding(5) var<storage, read> fwd_lse: array<f32>;
@group(0) @binding(6) var<storage, read> fwd_qkv: array<Operand>;

// dS_ij = P_ij (g_i . v_j - delta_i), P_ij = exp(scale q_i . k_j - lse_i);
// dq_i = scale sum_j dS_ij k_j. Tiles: keys in tile_a, values in tile_b.
@compute @workgroup_size(WG)
fn attention_tiled_backward_q(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let rows = rows_of(wid, lid);
    var q: array<f32, HD>;
    var go: array<f32, HD>;
    var dq: array<f32, HD>;
    let q0 = qkv_at(rows, rows.i, 0u);
    let o0 = bnd_at(rows, rows.i);
    var dl = 0.0;
    for (var d = 0u; d < HD; d++) {
        q[d] = f32(fwd_qkv[q0 + d]) * p.scale;
        go[d] = g[p.g_offset + o0 + d];
        dl += go[d] * fwd_out[o0 + d];
    }
    if (rows.valid) {
        delta[rows.r] = dl;
    }
    let lse_i = fwd_lse[rows.r];
    for (var j0 = 0u; j0 < p.tokens; j0 += BKV) {
        for (var e = lid; e < BKV * HD; e += WG) {
            let t = min(j0 + e / HD, p.tokens - 1u);
            tile_a[e] = f32(fwd_qkv[qkv_at(rows, t, 1u) + e % HD]);
            tile_b[e] = f32(fwd_qkv[qkv_at(rows, t, 2u) + e % HD]);
        }
        workgroupBarrier();
        let count = min(BKV, p.tokens - j0);
        for (var t = 0u; t < count; t++) {
            var s = 0.0;
            var dp = 0.0;
            for (var d = 0u; d < HD; d++) {
                s += q[d] * tile_a[t * HD + d];
                dp += go[d] * tile_b[t * HD + d];
            }
            let ds = exp(s - lse_i) * (dp - dl);
            for (var d = 0u; d < HD; d++) {
                dq[d] += ds * tile_a[t * HD + d];
            }
        }
        workgroupBarrier();
    }
    if (rows.valid) {
        // dqkv has qkv's layout without its offset.
        let qd = q0 - p.qkv_offset;
        for (var d = 0u; d < HD; d++) {
            dqkv[qd + d] = dq[d] * p.scale;
        }
    }
}

// For key row j: dv_j = sum_i P_ij g_i and dk_j = scale sum_i dS_ij q_i. Tiles: queries in
// tile_a, output gradients in tile_b, their lse in stat_a and delta in stat_b.
@compute @workgroup_size(WG)
fn attention_tiled_backward_kv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let rows = rows_of(wid, lid);
    var k: array<f32, HD>;
    var v: array<f32, HD>;
    var dk: array<f32, HD>;
    var dv: array<f32, HD>;
    let k0 = qkv_at(rows, rows.i, 1u);
    let v0 = qkv_at(rows, rows.i, 2u);
    for (var d = 0u; d < HD; d++) {
        k[d] = f32(fwd_qkv[k0 + d]) * p.scale;
        v[d] = f32(fwd_qkv[v0 + d]);
    }
    // The (B, H, N) index of token 0 of these rows' head.
    let first = rows.r - rows.i;
    for (var i0 = 0u; i0 < p.tokens; i0 += BKV) {
        for (var e = lid; e < BKV * HD; e += WG) {
            let t = min(i0 + e / HD, p.tokens - 1u);
            tile_a[e] = f32(fwd_qkv[qkv_at(rows, t, 0u) + e % HD]);
            tile_b[e] = g[p.g_offset + bnd_at(rows, t) + e % HD];
        }
        for (var e = lid; e < BKV; e += WG) {
            let t = min(i0 + e, p.tokens - 1u);
            stat_a[e] = fwd_lse[first + t];
            stat_b[e] = delta[first + t];
        }
        workgroupBarrier();
        let count = min(BKV, p.tokens - i0);
        for (var t = 0u; t < count; t++) {
            var s = 0.0;
            var dp = 0.0;
            for (var d = 0u; d < HD; d++) {
                s += tile_a[t * HD + d] * k[d];
                dp += tile_b[t * HD + d] * v[d];
            }
            let pr = exp(s - stat_a[t]);
            let ds = pr * (dp - stat_b[t]);
            for (var d = 0u; d < HD; d++) {
                dv[d] += pr * tile_b[t * HD + d];
                dk[d] += ds * tile_a[t * HD + d];
            }
        }
        workgroupBarrier();
    }
    if (rows.valid) {
        // dqkv has qkv's layout without its offset.
        let kd = k0 - p.qkv_offset;
        let vd = v0 - p.qkv_offset;
        for (var d = 0u; d < HD; d++) {
            dqkv[kd + d] = dk[d] * p.scale;
            dqkv[vd + d] = dv[d];
        }
    }
}
