// Tiled matrix product for GPUs: out[b] = A[b] * B[b] (+ bias), the contract of matmul.wgsl
// (TRANS_A / TRANS_B read an operand stored transposed in place, a batch stride of 0
// broadcasts it, HAS_BIAS adds bias[col] as the output is stored).
//
// A workgroup computes a BM x BN block of the output. For each step of BK along k its WG
// invocations copy a BM x BK tile of A and a BK x BN tile of B into workgroup memory,
// consecutive invocations reading consecutive addresses of whichever layout the operand
// is stored in; a barrier; then each invocation accumulates a TM x TN register tile.
// Invocation (tr, tc) owns rows tr + i * RT and columns tc + j * CT of the block: strided,
// so neighbouring invocations read neighbouring workgroup-memory words (no bank conflicts)
// and store neighbouring output columns. With BUFS = 2 the next tile is copied into the
// second buffer while the current one is used: one barrier per step instead of two.
//
// Split-K: the grid's z axis is batch x splits. Split s sums k in [s * k_chunk, (s + 1) *
// k_chunk); with SPLIT the block goes, without bias, to a scratch buffer of splits x batch
// blocks that splitk.wgsl adds up in split order (the same sum every run).
//
// POISON fills workgroup memory with NaN before the first tile, so a read of a tile before
// every invocation has written it gives NaN instead of a stale value that may look right.
//
// engine/src/tune/tile.rs replaces the lines between BEGIN TILE and END TILE for each
// variant (tile sizes, buffers, and which loader reads global memory); the lines here are
// one valid variant.

// BEGIN TILE
const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 8u;
const TM: u32 = 4u;
const TN: u32 = 4u;
const BUFS: u32 = 1u;
fn load_tile(blk: Block, k0: u32, buf: u32, lid: u32) {
    load_scalar(blk, k0, buf, lid);
}
// END TILE

const RT: u32 = BM / TM;
const CT: u32 = BN / TN;
const WG: u32 = RT * CT;

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
    k_chunk: u32,
}

override TRANS_A: bool;
override TRANS_B: bool;
override HAS_BIAS: bool;
override SPLIT: bool;
override POISON: bool;

// The operands' element type: f32 here, f16 in the builds `kernels::half_operands` makes
// (which also prepend `enable f16;`). Every read converts to f32, so products accumulate
// in f32 either way.
alias Operand = f32;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> a: array<Operand>;
@group(0) @binding(3) var<storage, read> b: array<Operand>;
// Bound to A's buffer (and never read) without HAS_BIAS.
@group(0) @binding(4) var<storage, read> bias: array<f32>;
// The same operands as vec4s, for load_vec4 (every size, stride and offset a multiple of 4).
@group(0) @binding(2) var<storage, read> a4: array<vec4<Operand>>;
@group(0) @binding(3) var<storage, read> b4: array<vec4<Operand>>;

// Tile t of A at As[((t % BUFS) * BK + kk) * BM + r]; of B at Bs[(... + kk) * BN + c].
var<workgroup> As: array<f32, BUFS * BK * BM>;
var<workgroup> Bs: array<f32, BUFS * BK * BN>;

// Where one workgroup's block and k range start.
struct Block {
    a_base: u32,
    b_base: u32,
    row0: u32,
    col0: u32,
    k0: u32,
    k_end: u32,
}

fn block(wid: vec3<u32>) -> Block {
    let z = wid.z % p.batch;
    let k0 = (wid.z / p.batch) * p.k_chunk;
    return Block(
        p.a_offset + z * p.a_batch_stride,
        p.b_offset + z * p.b_batch_stride,
        wid.y * BM,
        wid.x * BN,
        k0,
        min(p.k, k0 + p.k_chunk),
    );
}

// One element per invocation and step; zero outside the matrix or the split's k range.
fn load_scalar(blk: Block, k0: u32, buf: u32, lid: u32) {
    for (var e = lid; e < BM * BK; e += WG) {
        var r: u32;
        var kk: u32;
        if (TRANS_A) {
            r = e % BM;
            kk = e / BM;
        } else {
            kk = e % BK;
            r = e / BK;
        }
        let row = blk.row0 + r;
        let kg = k0 + kk;
        var v = 0.0;
        if (row < p.m && kg < blk.k_end) {
            v = f32(a[blk.a_base + select(row * p.lda + kg, kg * p.lda + row, TRANS_A)]);
        }
        As[(buf * BK + kk) * BM + r] = v;
    }
    for (var e = lid; e < BK * BN; e += WG) {
        var c: u32;
        var kk: u32;
        if (TRANS_B) {
            kk = e % BK;
            c = e / BK;
        } else {
            c = e % BN;
            kk = e / BN;
        }
        let col = blk.col0 + c;
        let kg = k0 + kk;
        var v = 0.0;
        if (col < p.n && kg < blk.k_end) {
            v = f32(b[blk.b_base + select(kg * p.ldb + col, col * p.ldb + kg, TRANS_B)]);
        }
        Bs[(buf * BK + kk) * BN + c] = v;
    }
}

// Four elements per vec4 load. Sizes, strides, offsets and k_chunk are multiples of 4, so
// a vec4 is either wholly inside the matrix and the k range or wholly outside.
fn load_vec4(blk: Block, k0: u32, buf: u32, lid: u32) {
    for (var e = lid; e < BM * BK / 4u; e += WG) {
        if (TRANS_A) {
            // Stored (k, m): a vec4 is four rows at one k.
            let r = (e % (BM / 4u)) * 4u;
            let kk = e / (BM / 4u);
            var v = vec4<f32>();
            if (blk.row0 + r < p.m && k0 + kk < blk.k_end) {
                v = vec4<f32>(a4[(blk.a_base + (k0 + kk) * p.lda + blk.row0 + r) / 4u]);
            }
            let o = (buf * BK + kk) * BM + r;
            As[o] = v.x;
            As[o + 1u] = v.y;
            As[o + 2u] = v.z;
            As[o + 3u] = v.w;
        } else {
            // Stored (m, k): a vec4 is four k at one row.
            let kk = (e % (BK / 4u)) * 4u;
            let r = e / (BK / 4u);
            var v = vec4<f32>();
            if (blk.row0 + r < p.m && k0 + kk < blk.k_end) {
                v = vec4<f32>(a4[(blk.a_base + (blk.row0 + r) * p.lda + k0 + kk) / 4u]);
            }
            let o = (buf * BK + kk) * BM + r;
            As[o] = v.x;
            As[o + BM] = v.y;
            As[o + 2u * BM] = v.z;
            As[o + 3u * BM] = v.w;
        }
    }
    for (var e = lid; e < BK * BN / 4u; e += WG) {
        if (TRANS_B) {
            // Stored (n, k): a vec4 is four k at one column.
            let kk = (e % (BK / 4u)) * 4u;
            let c = e / (BK / 4u);
            var v = vec4<f32>();
            if (blk.col0 + c < p.n && k0 + kk < blk.k_end) {
                v = vec4<f32>(b4[(blk.b_base + (blk.col0 + c) * p.ldb + k0 + kk) / 4u]);
            }
            let o = (buf * BK + kk) * BN + c;
            Bs[o] = v.x;
            Bs[o + BN] = v.y;
            Bs[o + 2u * BN] = v.z;
            Bs[o + 3u * BN] = v.w;
        } else {
            // Stored (k, n): a vec4 is four columns at one k.
            let c = (e % (BN / 4u)) * 4u;
            let kk = e / (BN / 4u);
            var v = vec4<f32>();
            if (blk.col0 + c < p.n && k0 + kk < blk.k_end) {
                v = vec4<f32>(b4[(blk.b_base + (k0 + kk) * p.ldb + blk.col0 + c) / 4u]);
            }
            let o = (buf * BK + kk) * BN + c;
            Bs[o] = v.x;
            Bs[o + 1u] = v.y;
            Bs[o + 2u] = v.z;
            Bs[o + 3u] = v.w;
        }
    }
}

fn poison(lid: u32) {
    let nan = bitcast<f32>(0x7fc00000u);
    for (var e = lid; e < BUFS * BK * BM; e += WG) {
        As[e] = nan;
    }
    for (var e = lid; e < BUFS * BK * BN; e += WG) {
        Bs[e] = nan;
    }
}

@compute @workgroup_size(WG)
fn matmul_tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let blk = block(wid);
    let tr = lid / CT;
    let tc = lid % CT;
    if (POISON) {
        poison(lid);
        workgroupBarrier();
    }
    var acc: array<f32, TM * TN>;
    let steps = (blk.k_end - min(blk.k0, blk.k_end) + BK - 1u) / BK;
    if (BUFS == 2u && steps > 0u) {
        load_tile(blk, blk.k0, 0u, lid);
        workgroupBarrier();
    }
    for (var t = 0u; t < steps; t++) {
        var buf = 0u;
        if (BUFS == 2u) {
            // Copy the next tile into the other buffer while this one is read; the barrier
            // at the end of the step orders both against the step after.
            buf = t % 2u;
            if (t + 1u < steps) {
                load_tile(blk, blk.k0 + (t + 1u) * BK, 1u - buf, lid);
            }
        } else {
            load_tile(blk, blk.k0 + t * BK, 0u, lid);
            workgroupBarrier();
        }
        for (var kk = 0u; kk < BK; kk++) {
            var av: array<f32, TM>;
            var bv: array<f32, TN>;
            for (var i = 0u; i < TM; i++) {
                av[i] = As[(buf * BK + kk) * BM + tr + i * RT];
            }
            for (var j = 0u; j < TN; j++) {
                bv[j] = Bs[(buf * BK + kk) * BN + tc + j * CT];
            }
            for (var i = 0u; i < TM; i++) {
                for (var j = 0u; j < TN; j++) {
                    acc[i * TN + j] += av[i] * bv[j];
                }
            }
        }
        workgroupBarrier();
    }
    // Block z of the output, or with SPLIT block (split, batch) of the scratch buffer.
    let base = wid.z * p.m * p.n;
    for (var i = 0u; i < TM; i++) {
        let row = blk.row0 + tr + i * RT;
        for (var j = 0u; j < TN; j++) {
            let col = blk.col0 + tc + j * CT;
            if (row < p.m && col < p.n) {
                var v = acc[i * TN + j];
                if (HAS_BIAS && !SPLIT) {
                    v += bias[p.bias_offset + col];
                }
                out[base + row * p.n + col] = v;
            }
        }
    }
}
