// Batched matrix product out[b] = A[b] * B[b], A (m, k), B (k, n), out (m, n) contiguous.
// TRANS_A / TRANS_B read an operand stored transposed (A as (k, m), B as (n, k)) in place,
// so a transposed view is never materialised. lda / ldb are the row strides of the
// operands as stored; a batch stride of 0 broadcasts an operand over the batch.
//
// Register blocking: a workgroup of LANES invocations computes a TM x (LANES * TN) tile;
// each invocation keeps TM x TN accumulators and owns columns col0 + j * LANES, so the
// lanes of one load touch neighbouring addresses. The A element of a row is the same for
// every lane (a uniform load, one scalar read broadcast on SIMD CPU drivers like lavapipe).

struct Params {
    m: u32,
    n: u32,
    k: u32,
    batch: u32,
    a_offset: u32,
    b_offset: u32,
    a_batch_stride: u32,
    b_batch_stride: u32,
    lda: u32,
    ldb: u32,
    _pad0: u32,
    _pad1: u32,
}

override TRANS_A: bool;
override TRANS_B: bool;

const LANES: u32 = 8u;
const TM: u32 = 4u;
const TN: u32 = 4u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;

fn load_a(base: u32, row: u32, kk: u32) -> f32 {
    if (TRANS_A) {
        return a[base + kk * p.lda + row];
    }
    return a[base + row * p.lda + kk];
}

fn load_b(base: u32, kk: u32, col: u32) -> f32 {
    if (TRANS_B) {
        return b[base + col * p.ldb + kk];
    }
    return b[base + kk * p.ldb + col];
}

@compute @workgroup_size(8)
fn matmul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let batch = wid.z;
    let a_base = p.a_offset + batch * p.a_batch_stride;
    let b_base = p.b_offset + batch * p.b_batch_stride;
    let row0 = wid.y * TM;
    let col0 = wid.x * LANES * TN + lid;

    // Clamp out-of-range rows and columns for loading; they are not stored.
    var rows: array<u32, TM>;
    for (var r = 0u; r < TM; r++) {
        rows[r] = min(row0 + r, p.m - 1u);
    }
    var cols: array<u32, TN>;
    for (var j = 0u; j < TN; j++) {
        cols[j] = min(col0 + j * LANES, p.n - 1u);
    }

    var acc: array<vec4<f32>, TM>;
    for (var kk = 0u; kk < p.k; kk++) {
        let bv = vec4<f32>(load_b(b_base, kk, cols[0]), load_b(b_base, kk, cols[1]),
                           load_b(b_base, kk, cols[2]), load_b(b_base, kk, cols[3]));
        for (var r = 0u; r < TM; r++) {
            acc[r] = fma(vec4<f32>(load_a(a_base, rows[r], kk)), bv, acc[r]);
        }
    }

    let out_base = batch * p.m * p.n;
    for (var r = 0u; r < TM; r++) {
        let row = row0 + r;
        if (row >= p.m) {
            break;
        }
        for (var j = 0u; j < TN; j++) {
            let col = col0 + j * LANES;
            if (col < p.n) {
                out[out_base + row * p.n + col] = acc[r][j];
            }
        }
    }
}
