// Batched matrix product out[b] = A[b] * B[b], A (m, k), B (k, n), out (m, n) contiguous.
// TRANS_A / TRANS_B read an operand stored transposed (A as (k, m), B as (n, k)) in place,
// so a transposed view is never materialised. lda / ldb are the row strides of the
// operands as stored; a batch stride of 0 broadcasts an operand over the batch.
// HAS_BIAS adds bias[col] (n floats at bias_offset) to every output row as it is stored,
// which is how a Linear layer's bias costs no pass of its own.
//
// Two entry points, both register-blocked with workgroups of 8 invocations (one SIMD
// vector on CPU drivers such as lavapipe, which run the lanes of a workgroup together):
// - `matmul_vec4` when m, n, k, strides and offsets are multiples of 4: each invocation
//   computes a 16 x 16 block as sixteen 4x4 matrices, reading 4x4 blocks of A and B as
//   vec4s (the workgroup covers 16 rows x 128 columns);
// - `matmul` for any shape: each invocation computes a 16 x 8 block from scalar loads.
// In both, the rows of a workgroup are shared by all its lanes, so A loads are uniform
// (one read broadcast to every lane), and lanes own neighbouring columns.

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
    bias_offset: u32,
    // The k range of one split, for matmul_tiled.wgsl (the same uniform); unused here.
    k_chunk: u32,
}

override TRANS_A: bool;
override TRANS_B: bool;
override HAS_BIAS: bool;

// The operands' element type: f32 here, f16 in the builds `kernels::half_operands` makes
// (which also prepend `enable f16;`). Every read converts to f32, so products accumulate
// in f32 either way.
alias Operand = f32;

const LANES: u32 = 8u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> a: array<Operand>;
@group(0) @binding(3) var<storage, read> b: array<Operand>;
// Bound to A's buffer (and never read) without HAS_BIAS.
@group(0) @binding(4) var<storage, read> bias: array<f32>;

// ---- vec4 path. Every quantity below counts vec4s (4 floats). ----

@group(0) @binding(1) var<storage, read_write> out4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> a4: array<vec4<Operand>>;
@group(0) @binding(3) var<storage, read> b4: array<vec4<Operand>>;
@group(0) @binding(4) var<storage, read> bias4: array<vec4<f32>>;

fn a4_at(i: u32) -> vec4<f32> {
    return vec4<f32>(a4[i]);
}

fn b4_at(i: u32) -> vec4<f32> {
    return vec4<f32>(b4[i]);
}

// The 4x4 block of A at rows 4q.., k = 4kq..: column j holds row 4q + j along k.
fn a_block(base: u32, q: u32, kq: u32) -> mat4x4<f32> {
    let ld = p.lda / 4u;
    if (TRANS_A) {
        // Stored (k, m): a vec4 holds 4 rows at one k; transpose to rows along k.
        let o = base + kq * 4u * ld + q;
        return transpose(mat4x4<f32>(a4_at(o), a4_at(o + ld), a4_at(o + 2u * ld), a4_at(o + 3u * ld)));
    }
    let o = base + 4u * q * ld + kq;
    return mat4x4<f32>(a4_at(o), a4_at(o + ld), a4_at(o + 2u * ld), a4_at(o + 3u * ld));
}

// The 4x4 block of B at k = 4kq.., columns 4c..: column i holds k = 4kq + i along n.
fn b_block(base: u32, kq: u32, c: u32) -> mat4x4<f32> {
    let ld = p.ldb / 4u;
    if (TRANS_B) {
        // Stored (n, k): a vec4 holds one column along k; transpose to k along n.
        let o = base + 4u * c * ld + kq;
        return transpose(mat4x4<f32>(b4_at(o), b4_at(o + ld), b4_at(o + 2u * ld), b4_at(o + 3u * ld)));
    }
    let o = base + kq * 4u * ld + c;
    return mat4x4<f32>(b4_at(o), b4_at(o + ld), b4_at(o + 2u * ld), b4_at(o + 3u * ld));
}

// Column j of `acc` is row 4q + j of the output, columns 4c..4c+3.
fn store_block(base: u32, q: u32, c: u32, acc: mat4x4<f32>) {
    let n4 = p.n / 4u;
    if (4u * q >= p.m || c >= n4) {
        return;
    }
    let o = base + 4u * q * n4 + c;
    var add = vec4<f32>();
    if (HAS_BIAS) {
        add = bias4[p.bias_offset / 4u + c];
    }
    out4[o] = acc[0] + add;
    out4[o + n4] = acc[1] + add;
    out4[o + 2u * n4] = acc[2] + add;
    out4[o + 3u * n4] = acc[3] + add;
}

@compute @workgroup_size(8)
fn matmul_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let a_base = (p.a_offset + wid.z * p.a_batch_stride) / 4u;
    let b_base = (p.b_offset + wid.z * p.b_batch_stride) / 4u;
    // Row quads q0 .. q0 + 3 (16 rows); column quads c0 + g * LANES for g = 0..3. Past the
    // edge, loads are clamped to the last quad and stores skipped. acc{r}_{g} is the 4x4
    // block of row quad q0 + r and column quad c0 + g * LANES; column j of it is one row.
    let q0 = wid.y * 4u;
    let c0 = wid.x * 4u * LANES + lid;
    let last_q = p.m / 4u - 1u;
    let last_c = p.n / 4u - 1u;
    let c0c = min(c0, last_c);
    let c1c = min(c0 + LANES, last_c);
    let c2c = min(c0 + 2u * LANES, last_c);
    let c3c = min(c0 + 3u * LANES, last_c);
    var acc0_0 = mat4x4<f32>();
    var acc0_1 = mat4x4<f32>();
    var acc0_2 = mat4x4<f32>();
    var acc0_3 = mat4x4<f32>();
    var acc1_0 = mat4x4<f32>();
    var acc1_1 = mat4x4<f32>();
    var acc1_2 = mat4x4<f32>();
    var acc1_3 = mat4x4<f32>();
    var acc2_0 = mat4x4<f32>();
    var acc2_1 = mat4x4<f32>();
    var acc2_2 = mat4x4<f32>();
    var acc2_3 = mat4x4<f32>();
    var acc3_0 = mat4x4<f32>();
    var acc3_1 = mat4x4<f32>();
    var acc3_2 = mat4x4<f32>();
    var acc3_3 = mat4x4<f32>();
    let k4 = p.k / 4u;
    for (var kq = 0u; kq < k4; kq++) {
        // (B block) * (A block): column j gains sum_i B[:, i] * A[i, j].
        let kb0 = b_block(b_base, kq, c0c);
        let kb1 = b_block(b_base, kq, c1c);
        let kb2 = b_block(b_base, kq, c2c);
        let kb3 = b_block(b_base, kq, c3c);
        let r0 = a_block(a_base, min(q0, last_q), kq);
        acc0_0 += kb0 * r0;
        acc0_1 += kb1 * r0;
        acc0_2 += kb2 * r0;
        acc0_3 += kb3 * r0;
        let r1 = a_block(a_base, min(q0 + 1u, last_q), kq);
        acc1_0 += kb0 * r1;
        acc1_1 += kb1 * r1;
        acc1_2 += kb2 * r1;
        acc1_3 += kb3 * r1;
        let r2 = a_block(a_base, min(q0 + 2u, last_q), kq);
        acc2_0 += kb0 * r2;
        acc2_1 += kb1 * r2;
        acc2_2 += kb2 * r2;
        acc2_3 += kb3 * r2;
        let r3 = a_block(a_base, min(q0 + 3u, last_q), kq);
        acc3_0 += kb0 * r3;
        acc3_1 += kb1 * r3;
        acc3_2 += kb2 * r3;
        acc3_3 += kb3 * r3;
    }
    let base = wid.z * p.m * p.n / 4u;
    store_block(base, q0, c0, acc0_0);
    store_block(base, q0, c0 + LANES, acc0_1);
    store_block(base, q0, c0 + 2u * LANES, acc0_2);
    store_block(base, q0, c0 + 3u * LANES, acc0_3);
    store_block(base, q0 + 1u, c0, acc1_0);
    store_block(base, q0 + 1u, c0 + LANES, acc1_1);
    store_block(base, q0 + 1u, c0 + 2u * LANES, acc1_2);
    store_block(base, q0 + 1u, c0 + 3u * LANES, acc1_3);
    store_block(base, q0 + 2u, c0, acc2_0);
    store_block(base, q0 + 2u, c0 + LANES, acc2_1);
    store_block(base, q0 + 2u, c0 + 2u * LANES, acc2_2);
    store_block(base, q0 + 2u, c0 + 3u * LANES, acc2_3);
    store_block(base, q0 + 3u, c0, acc3_0);
    store_block(base, q0 + 3u, c0 + LANES, acc3_1);
    store_block(base, q0 + 3u, c0 + 2u * LANES, acc3_2);
    store_block(base, q0 + 3u, c0 + 3u * LANES, acc3_3);
}

// ---- scalar path, any shape. ----

fn a_start(row: vec4<u32>) -> vec4<u32> {
    return select(row * p.lda, row, TRANS_A);
}

fn b_start(col: vec4<u32>) -> vec4<u32> {
    return select(col, col * p.ldb, TRANS_B);
}

// A at four rows (start offsets `rows`) and one k; B at one k and four columns.
fn a_rows(rows: vec4<u32>, ka: u32) -> vec4<f32> {
    return vec4<f32>(f32(a[rows.x + ka]), f32(a[rows.y + ka]), f32(a[rows.z + ka]), f32(a[rows.w + ka]));
}

fn b_cols(cols: vec4<u32>, kb: u32) -> vec4<f32> {
    return vec4<f32>(f32(b[cols.x + kb]), f32(b[cols.y + kb]), f32(b[cols.z + kb]), f32(b[cols.w + kb]));
}

// The outer product col * row^T: column j is col * row[j].
fn outer(col: vec4<f32>, row: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(col * row.x, col * row.y, col * row.z, col * row.w);
}

// Column j of `acc` is output row `row + j` at columns col, col + LANES, ... col + 3 LANES.
fn store_scalar_block(base: u32, row: u32, col: u32, acc: mat4x4<f32>) {
    for (var j = 0u; j < 4u; j++) {
        for (var i = 0u; i < 4u; i++) {
            let r = row + j;
            let c = col + i * LANES;
            if (r < p.m && c < p.n) {
                var add = 0.0;
                if (HAS_BIAS) {
                    add = bias[p.bias_offset + c];
                }
                out[base + r * p.n + c] = acc[j][i] + add;
            }
        }
    }
}

@compute @workgroup_size(8)
fn matmul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let a_base = p.a_offset + wid.z * p.a_batch_stride;
    let b_base = p.b_offset + wid.z * p.b_batch_stride;
    // A 16 x 64 tile: rows row0 .. row0 + 15 in four quads; this lane's columns are
    // col0 + i * LANES for i = 0..7, in two groups of four. Past the edge, loads are clamped
    // and stores skipped.
    let row0 = wid.y * 16u;
    let col0 = wid.x * LANES * 8u + lid;
    let quad = vec4<u32>(0u, 1u, 2u, 3u);
    let last_row = vec4<u32>(p.m - 1u);
    let last_col = vec4<u32>(p.n - 1u);
    let rows0 = a_base + a_start(min(row0 + quad, last_row));
    let rows1 = a_base + a_start(min(row0 + 4u + quad, last_row));
    let rows2 = a_base + a_start(min(row0 + 8u + quad, last_row));
    let rows3 = a_base + a_start(min(row0 + 12u + quad, last_row));
    let cols0 = b_base + b_start(min(col0 + quad * LANES, last_col));
    let cols1 = b_base + b_start(min(col0 + (4u + quad) * LANES, last_col));
    let a_step = select(1u, p.lda, TRANS_A);
    let b_step = select(p.ldb, 1u, TRANS_B);

    var acc0_0 = mat4x4<f32>();
    var acc0_1 = mat4x4<f32>();
    var acc1_0 = mat4x4<f32>();
    var acc1_1 = mat4x4<f32>();
    var acc2_0 = mat4x4<f32>();
    var acc2_1 = mat4x4<f32>();
    var acc3_0 = mat4x4<f32>();
    var acc3_1 = mat4x4<f32>();
    var ka = 0u;
    var kb = 0u;
    for (var kk = 0u; kk < p.k; kk++) {
        let b0 = b_cols(cols0, kb);
        let b1 = b_cols(cols1, kb);
        let x0 = a_rows(rows0, ka);
        acc0_0 += outer(b0, x0);
        acc0_1 += outer(b1, x0);
        let x1 = a_rows(rows1, ka);
        acc1_0 += outer(b0, x1);
        acc1_1 += outer(b1, x1);
        let x2 = a_rows(rows2, ka);
        acc2_0 += outer(b0, x2);
        acc2_1 += outer(b1, x2);
        let x3 = a_rows(rows3, ka);
        acc3_0 += outer(b0, x3);
        acc3_1 += outer(b1, x3);
        ka += a_step;
        kb += b_step;
    }

    let base = wid.z * p.m * p.n;
    store_scalar_block(base, row0, col0, acc0_0);
    store_scalar_block(base, row0, col0 + 4u * LANES, acc0_1);
    store_scalar_block(base, row0 + 4u, col0, acc1_0);
    store_scalar_block(base, row0 + 4u, col0 + 4u * LANES, acc1_1);
    store_scalar_block(base, row0 + 8u, col0, acc2_0);
    store_scalar_block(base, row0 + 8u, col0 + 4u * LANES, acc2_1);
    store_scalar_block(base, row0 + 12u, col0, acc3_0);
    store_scalar_block(base, row0 + 12u, col0 + 4u * LANES, acc3_1);
}
