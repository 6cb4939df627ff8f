// Unary and binary elementwise ops on f32, over strided and broadcast operands.
// OP picks the function (codes in engine/src/ops/elementwise.rs). CONTIG marks operands that
// are all contiguous with the output's shape: element i is then at offset + i.

override OP: u32;
override CONTIG: bool;

@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;

// erf to f32 precision: a rational approximation on [-4, 4] (beyond, erf is +-1 in f32).
fn erf(x_in: f32) -> f32 {
    let x = clamp(x_in, -4.0, 4.0);
    let x2 = x * x;
    var num = -2.72614225801306e-10;
    num = num * x2 + 2.77068142495902e-08;
    num = num * x2 - 2.10102402082508e-06;
    num = num * x2 - 5.69250639462346e-05;
    num = num * x2 - 7.34990630326855e-04;
    num = num * x2 - 2.95459980854025e-03;
    num = num * x2 - 1.60960333262415e-02;
    var den = -1.45660718464996e-05;
    den = den * x2 - 2.13374055278905e-04;
    den = den * x2 - 1.68282697438203e-03;
    den = den * x2 - 7.37332916720468e-03;
    den = den * x2 - 1.42647390514189e-02;
    return x * num / den;
}

// x^y with PyTorch's conventions for negative bases and zero (WGSL's pow leaves them undefined).
fn power(x: f32, y: f32) -> f32 {
    if (y == 0.0) {
        return 1.0;
    }
    if (x == 0.0) {
        return select(non_finite(0x7f800000u), 0.0, y > 0.0);
    }
    let r = pow(abs(x), y);
    if (x < 0.0) {
        if (fract(y) != 0.0) {
            return non_finite(0x7fc00000u); // NaN: negative base, fractional exponent
        }
        if (fract(y * 0.5) != 0.0) {
            return -r;
        }
    }
    return r;
}

fn unary_op(x: f32) -> f32 {
    let s = p.scalar;
    switch OP {
        case 0u: { return -x; }
        case 1u: { return exp(x); }
        case 2u: { return log(x); }
        case 3u: { return sqrt(x); }
        case 4u: { return inverseSqrt(x); }
        case 5u: { return abs(x); }
        // Clamped because some drivers evaluate tanh through exp and overflow to NaN.
        case 6u: { return tanh(clamp(x, -15.0, 15.0)); }
        case 7u: { return 1.0 / (1.0 + exp(-x)); }
        case 8u: { return max(x, 0.0); }
        // GELU in its exact erf form, as torch.nn.GELU() by default.
        case 9u: { return 0.5 * x * (1.0 + erf(x * 0.7071067811865476)); }
        case 10u: { return x + s; }
        case 11u: { return x * s; }
        case 12u: { return power(x, s); }
        case 13u: { return s - x; }
        case 14u: { return s / x; }
        case 15u: { return max(x, s); }
        case 16u: { return min(x, s); }
        case 17u: { return sign(x); }
        case 18u: { return select(0.0, 1.0, x > 0.0); }
        // d/dx [x Phi(x)] = Phi(x) + x phi(x), phi the standard normal density.
        case 19u: { return 0.5 * (1.0 + erf(x * 0.7071067811865476)) + x * 0.3989422804014327 * exp(-0.5 * x * x); }
        default: { return x; }
    }
}

fn binary_op(x: f32, y: f32) -> f32 {
    switch OP {
        case 0u: { return x + y; }
        case 1u: { return x - y; }
        case 2u: { return x * y; }
        case 3u: { return x / y; }
        case 4u: { return power(x, y); }
        case 5u: { return max(x, y); }
        case 6u: { return min(x, y); }
        default: { return x; }
    }
}

@compute @workgroup_size(64)
fn unary(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < p.numel; i += nwg.x * WG) {
        if (CONTIG) {
            out[p.offsets.x + i] = unary_op(a[p.offsets.y + i]);
            continue;
        }
        let o = strided_offsets(i);
        out[o.x] = unary_op(a[o.y]);
    }
}

@compute @workgroup_size(64)
fn binary(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    for (var i = gid.x; i < p.numel; i += nwg.x * WG) {
        if (CONTIG) {
            out[p.offsets.x + i] = binary_op(a[p.offsets.y + i], b[p.offsets.z + i]);
            continue;
        }
        let o = strided_offsets(i);
        out[o.x] = binary_op(a[o.y], b[o.z]);
    }
}
