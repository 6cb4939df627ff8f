// Fused multi-head softmax attention over a (B, N, 3D) qkv projection (q, k and v side by
// side, head h in columns h*hd .. (h+1)*hd of each), writing (B, N, D) with the heads
// concatenated. One invocation per (batch, head, row); scores are never stored: the forward
// keeps each row's log-sum-exp, and the backward recomputes the probabilities from it
// (as FlashAttention does), so memory stays O(B H N) instead of O(B H N^2).
// Rust twin of Params: AttentionParams in engine/src/params.rs.

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

// Invocations per workgroup, chosen by the host per adapter.
override WG: u32 = 64u;
// Longest head the private row buffers hold; the host falls back to unfused ops beyond it.
const MAX_HD: u32 = 128u;

struct Row {
    b: u32,
    h: u32,
    i: u32,
    // The row's index in (B, H, N) order, for the per-row statistics.
    r: u32,
    valid: bool,
}

fn row_of(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> Row {
    let r = (wid.y * nwg.x + wid.x) * WG + lid;
    let n = p.tokens;
    return Row(r / (n * p.heads), (r / n) % p.heads, r % n, r, r < p.batch * p.heads * n);
}

// Start of the q (part 0), k (1) or v (2) slice of token t of row's head in qkv.
fn qkv_at(row: Row, t: u32, part: u32) -> u32 {
    let d = p.heads * p.head_dim;
    return p.qkv_offset + (row.b * p.tokens + t) * 3u * d + part * d + row.h * p.head_dim;
}

// Start of token t of row's head in a (B, N, D) tensor.
fn bnd_at(row: Row, t: u32) -> u32 {
    let d = p.heads * p.head_dim;
    return (row.b * p.tokens + t) * d + row.h * p.head_dim;
}

// ---- forward: out (B, N, D) and lse (B, H, N) ----

@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read_write> lse: array<f32>;
@group(0) @binding(3) var<storage, read> qkv: array<Operand>;

@compute @workgroup_size(WG)
fn attention_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = row_of(wid, nwg, lid);
    if (!row.valid) {
        return;
    }
    let hd = p.head_dim;
    var q: array<f32, MAX_HD>;
    var acc: array<f32, MAX_HD>;
    let q0 = qkv_at(row, row.i, 0u);
    for (var d = 0u; d < hd; d++) {
        q[d] = f32(qkv[q0 + d]) * p.scale;
    }
    // Online softmax: a running maximum m, the sum l of exp(s - m) and the weighted sum of
    // values, rescaled whenever m grows. Token 0 starts them, so no infinity is needed.
    var m = 0.0;
    var l = 0.0;
    for (var j = 0u; j < p.tokens; j++) {
        let k0 = qkv_at(row, j, 1u);
        let v0 = qkv_at(row, j, 2u);
        var s = 0.0;
        for (var d = 0u; d < hd; d++) {
            s += q[d] * f32(qkv[k0 + d]);
        }
        if (j == 0u) {
            m = s;
        }
        let m_new = max(m, s);
        let c = exp(m - m_new);
        let e = exp(s - m_new);
        l = l * c + e;
        for (var d = 0u; d < hd; d++) {
            acc[d] = acc[d] * c + e * f32(qkv[v0 + d]);
        }
        m = m_new;
    }
    let o0 = bnd_at(row, row.i);
    for (var d = 0u; d < hd; d++) {
        out[o0 + d] = acc[d] / l;
    }
    lse[row.r] = m + log(l);
}

// ---- backward: dqkv (B, N, 3D) from g = d(out), out, lse and qkv ----
// attention_backward_q runs first: it writes dq and each row's delta = g_i . out_i, which
// attention_backward_kv then reads for every query.

@group(0) @binding(1) var<storage, read_write> dqkv: array<f32>;
@group(0) @binding(2) var<storage, read_write> delta: array<f32>;
@group(0) @binding(3) var<storage, read> g: array<f32>;
@group(0) @binding(4) var<storage, read> fwd_out: array<f32>;
@group(0) @binding(5) var<storage, read> fwd_lse: array<f32>;
@group(0) @binding(6) var<storage, read> fwd_qkv: array<Operand>;

// dS_ij = P_ij (g_i . v_j - delta_i), P_ij = exp(scale q_i . k_j - lse_i);
// dq_i = scale sum_j dS_ij k_j.
@compute @workgroup_size(WG)
fn attention_backward_q(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = row_of(wid, nwg, lid);
    if (!row.valid) {
        return;
    }
    let hd = p.head_dim;
    var q: array<f32, MAX_HD>;
    var go: array<f32, MAX_HD>;
    var dq: array<f32, MAX_HD>;
    let q0 = qkv_at(row, row.i, 0u);
    let o0 = bnd_at(row, row.i);
    var dl = 0.0;
    for (var d = 0u; d < hd; d++) {
        q[d] = f32(fwd_qkv[q0 + d]) * p.scale;
        go[d] = g[p.g_offset + o0 + d];
        dl += go[d] * fwd_out[o0 + d];
    }
    delta[row.r] = dl;
    let lse_i = fwd_lse[row.r];
    for (var j = 0u; j < p.tokens; j++) {
        let k0 = qkv_at(row, j, 1u);
        let v0 = qkv_at(row, j, 2u);
        var s = 0.0;
        var dp = 0.0;
        for (var d = 0u; d < hd; d++) {
            s += q[d] * f32(fwd_qkv[k0 + d]);
            dp += go[d] * f32(fwd_qkv[v0 + d]);
        }
        let ds = exp(s - lse_i) * (dp - dl);
        for (var d = 0u; d < hd; d++) {
            dq[d] += ds * f32(fwd_qkv[k0 + d]);
        }
    }
    // dqkv has qkv's layout without its offset.
    let qd = q0 - p.qkv_offset;
    for (var d = 0u; d < hd; d++) {
        dqkv[qd + d] = dq[d] * p.scale;
    }
}

// For key row j: dv_j = sum_i P_ij g_i and dk_j = scale sum_i dS_ij q_i.
@compute @workgroup_size(WG)
fn attention_backward_kv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = row_of(wid, nwg, lid);
    if (!row.valid) {
        return;
    }
    let hd = p.head_dim;
    var k: array<f32, MAX_HD>;
    var v: array<f32, MAX_HD>;
    var dk: array<f32, MAX_HD>;
    var dv: array<f32, MAX_HD>;
    let k0 = qkv_at(row, row.i, 1u);
    let v0 = qkv_at(row, row.i, 2u);
    for (var d = 0u; d < hd; d++) {
        k[d] = f32(fwd_qkv[k0 + d]) * p.scale;
        v[d] = f32(fwd_qkv[v0 + d]);
    }
    // Rows of the same (batch, head) are contiguous in (B, H, N) order.
    let first = row.r - row.i;
    for (var i = 0u; i < p.tokens; i++) {
        let q0 = qkv_at(row, i, 0u);
        let o0 = bnd_at(row, i);
        var s = 0.0;
        var dp = 0.0;
        for (var d = 0u; d < hd; d++) {
            s += f32(fwd_qkv[q0 + d]) * k[d];
            dp += g[p.g_offset + o0 + d] * v[d];
        }
        let pr = exp(s - fwd_lse[first + i]);
        let ds = pr * (dp - delta[first + i]);
        for (var d = 0u; d < hd; d++) {
            dv[d] += pr * g[p.g_offset + o0 + d];
            dk[d] += ds * f32(fwd_qkv[q0 + d]);
        }
    }
    // dqkv has qkv's layout without its offset.
    let kd = k0 - p.qkv_offset;
    let vd = v0 - p.qkv_offset;
    for (var d = 0u; d < hd; d++) {
        dk[d] *= p.scale;
        dqkv[kd + d] = dk[d];
        dqkv[vd + d] = dv[d];
    }
}
