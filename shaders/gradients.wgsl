// What an optimizer step multiplies every gradient by, computed on the device from all the
// step's gradients: the inverse loss scale times the clipping coefficient of
// torch.nn.utils.clip_grad_norm_, min(max_norm / (norm + 1e-6), 1), where norm is the global
// L2 norm of the unscaled gradients. The sum of their magnitudes comes with it: it is
// finite exactly when every element is (short of 3e38 in all), which is GradScaler's test.
//
// One `partial_sums` dispatch per gradient writes one (sum |g|, sum g^2) pair per
// workgroup into the slots that gradient was given; `step_factor` then adds every slot in a
// fixed order. The result buffer's first four floats are the factor, the norm, the sum of
// magnitudes and a spare; slot s is at 4 + 2s.

struct Params {
    numel: u32,
    grad_offset: u32,
    slot: u32,
    unscale: f32,
    max_norm: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> result: array<f32>;
@group(0) @binding(2) var<storage, read> grad: array<f32>;

var<workgroup> magnitudes: array<f32, WG>;
var<workgroup> squares: array<f32, WG>;

// Tree sum of both workgroup arrays into element 0; every lane writes its own element first.
fn sum_workgroup(lane: u32, magnitude: f32, square: f32) {
    magnitudes[lane] = magnitude;
    squares[lane] = square;
    workgroupBarrier();
    for (var half = WG / 2u; half > 0u; half = half / 2u) {
        if (lane < half) {
            magnitudes[lane] += magnitudes[lane + half];
            squares[lane] += squares[lane + half];
        }
        workgroupBarrier();
    }
}

@compute @workgroup_size(64)
fn partial_sums(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    var magnitude = 0.0;
    var square = 0.0;
    for (var i = wid.x * WG + lid.x; i < p.numel; i += nwg.x * WG) {
        // A power-of-two loss scale makes this product exact.
        let g = grad[p.grad_offset + i] * p.unscale;
        magnitude += abs(g);
        square += g * g;
    }
    sum_workgroup(lid.x, magnitude, square);
    if (lid.x == 0u) {
        let at = 4u + 2u * (p.slot + wid.x);
        result[at] = magnitudes[0];
        result[at + 1u] = squares[0];
    }
}

// One workgroup; `numel` is the number of slots.
@compute @workgroup_size(64)
fn step_factor(@builtin(local_invocation_id) lid: vec3<u32>) {
    var magnitude = 0.0;
    var square = 0.0;
    for (var s = lid.x; s < p.numel; s += WG) {
        magnitude += result[4u + 2u * s];
        square += result[5u + 2u * s];
    }
    sum_workgroup(lid.x, magnitude, square);
    if (lid.x == 0u) {
        let norm = sqrt(squares[0]);
        var factor = p.unscale;
        if (p.max_norm > 0.0) {
            factor *= min(p.max_norm / (norm + 1e-6), 1.0);
        }
        result[0] = factor;
        result[1] = norm;
        result[2] = magnitudes[0];
    }
}
