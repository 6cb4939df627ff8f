// Fused optimizer updates, one dispatch per parameter tensor, with PyTorch's semantics.
// Each first multiplies its gradient by factor[0]: 1, or what gradients.wgsl computed (the
// inverse loss scale times the clipping coefficient), so unscaling and clipping cost no
// pass over the gradients of their own.
//
// adamw (torch.optim.AdamW):
//   param *= 1 - lr * weight_decay                      (decoupled weight decay)
//   m = beta1 * m + (1 - beta1) * g
//   v = beta2 * v + (1 - beta2) * g^2
//   param -= step_size * m / (sqrt(v) / bc2_sqrt + eps)
// with step_size = lr / (1 - beta1^t) and bc2_sqrt = sqrt(1 - beta2^t) computed on the host.
//
// sgd (torch.optim.SGD with momentum):
//   d = g + weight_decay * param
//   buf = d on the first step, else momentum * buf + (1 - dampening) * d
//   param -= lr * (nesterov ? d + momentum * buf : buf)

struct Params {
    numel: u32,
    param_offset: u32,
    grad_offset: u32,
    first: u32,
    lr: f32,
    weight_decay: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    step_size: f32,
    bc2_sqrt: f32,
    momentum: f32,
    dampening: f32,
    nesterov: u32,
    _pad0: u32,
    _pad1: u32,
}

const WG: u32 = 64u;

// Whether `factor` scales the gradients; without, it is bound and never read, and the
// update costs what it did before factors.
override SCALED: bool;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> param: array<f32>;
@group(0) @binding(2) var<storage, read> grad: array<f32>;
@group(0) @binding(3) var<storage, read> factor: array<f32>;
// AdamW: first moment; SGD: momentum buffer.
@group(0) @binding(4) var<storage, read_write> m: array<f32>;
// AdamW: second moment.
@group(0) @binding(5) var<storage, read_write> v: array<f32>;

@compute @workgroup_size(64)
fn adamw(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    // Read once: the compiler cannot hoist a load from a buffer it may see written.
    var k = 1.0;
    if (SCALED) {
        k = factor[0];
    }
    for (var i = gid.x; i < p.numel; i += nwg.x * WG) {
        var g = grad[p.grad_offset + i];
        if (SCALED) {
            g *= k;
        }
        let mi = p.beta1 * m[i] + (1.0 - p.beta1) * g;
        let vi = p.beta2 * v[i] + (1.0 - p.beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        let x = param[p.param_offset + i] * (1.0 - p.lr * p.weight_decay);
        param[p.param_offset + i] = x - p.step_size * mi / (sqrt(vi) / p.bc2_sqrt + p.eps);
    }
}

@compute @workgroup_size(64)
fn sgd(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    var k = 1.0;
    if (SCALED) {
        k = factor[0];
    }
    for (var i = gid.x; i < p.numel; i += nwg.x * WG) {
        let x = param[p.param_offset + i];
        var g = grad[p.grad_offset + i];
        if (SCALED) {
            g *= k;
        }
        let d = g + p.weight_decay * x;
        var buf = d;
        if (p.first == 0u) {
            buf = p.momentum * m[i] + (1.0 - p.dampening) * d;
        }
        m[i] = buf;
        var step = buf;
        if (p.nesterov != 0u) {
            step = d + p.momentum * buf;
        }
        param[p.param_offset + i] = x - p.lr * step;
    }
}
