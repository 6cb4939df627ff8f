// Counter-based random numbers: element i of a tensor drawn with seed s is a pure function of
// (s, i). The random words are integer arithmetic, the same on every device and in the CPU
// reference (engine/src/reference.rs mirrors these functions); uniform [0, 1) values scale
// them exactly, while normal values go through log, sqrt and cos, whose last bits are each
// implementation's own.

struct Params {
    numel: u32,
    seed_lo: u32,
    seed_hi: u32,
    offset: u32,
    // uniform: low, high. normal: mean, std. dropout: drop probability, 1 / (1 - p).
    a: f32,
    b: f32,
    _pad0: u32,
    _pad1: u32,
}

// OP 0: uniform on [a, b). OP 1: normal with mean a and std b (Box-Muller).
override OP: u32;
const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;

// "lowbias32" integer hash (Chris Wellons): every output bit depends on every input bit.
fn hash(v_in: u32) -> u32 {
    var v = v_in;
    v ^= v >> 16u;
    v *= 0x7feb352du;
    v ^= v >> 15u;
    v *= 0x846ca68bu;
    v ^= v >> 16u;
    return v;
}

// Random word `k` (0 or 1) of element i.
fn word(i: u32, k: u32) -> u32 {
    let key = hash(p.seed_lo ^ hash(p.seed_hi + 0x9e3779b9u));
    return hash(hash(2u * i + k) ^ key);
}

// Uniform on [0, 1) with 24 random bits.
fn unit(w: u32) -> f32 {
    return f32(w >> 8u) * (1.0 / 16777216.0);
}

@compute @workgroup_size(64)
fn random(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < p.numel; i += nwg.x * WG) {
        if (OP == 0u) {
            out[i] = p.a + (p.b - p.a) * unit(word(i, 0u));
        } else {
            let u1 = 1.0 - unit(word(i, 0u)); // (0, 1]: log stays finite
            let u2 = unit(word(i, 1u));
            out[i] = p.a + p.b * sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
        }
    }
}

// Inverted dropout: keep an element with probability 1 - p.a and scale it by p.b.
@compute @workgroup_size(64)
fn dropout(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < p.numel; i += nwg.x * WG) {
        let keep = unit(word(i, 0u)) >= p.a;
        out[i] = select(0.0, x[p.offset + i] * p.b, keep);
    }
}
