//! The Rust twins of the shaders' uniform `Params` structs. Each struct is `#[repr(C)]` and
//! `Pod`, and lists the shader files that declare the same struct; a test compares every
//! field offset and the size against naga's layout of those shaders.

/// A uniform struct's layout, for the shader-twin test.
#[doc(hidden)]
pub struct UniformLayout {
    /// Rust name of the twin.
    pub name: &'static str,
    /// Shader files whose `Params` struct must match.
    pub shaders: &'static [&'static str],
    /// `size_of` the twin.
    pub size: usize,
    /// Field names and byte offsets, in declaration order.
    pub fields: &'static [(&'static str, usize)],
}

macro_rules! uniform {
    ($(#[$doc:meta])* $name:ident in [$($shader:literal),+] { $($field:ident: $ty:ty),+ $(,)? }) => {
        $(#[$doc])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
        pub(crate) struct $name {
            $(pub $field: $ty),+
        }
        impl $name {
            pub(crate) const LAYOUT: UniformLayout = UniformLayout {
                name: stringify!($name),
                shaders: &[$($shader),+],
                size: std::mem::size_of::<$name>(),
                fields: &[$((stringify!($field), std::mem::offset_of!($name, $field))),+],
            };
        }
    };
}

/// Up to eight axis sizes or strides, packed as WGSL `array<vec4<u32>, 2>`.
pub(crate) type Dims = [[u32; 4]; 2];

/// Pack a shape or strides (at most [`crate::shape::MAX_RANK`] axes) for a uniform.
pub(crate) fn dims(values: &[usize]) -> Dims {
    let mut d = [[0u32; 4]; 2];
    for (i, v) in values.iter().enumerate() {
        d[i / 4][i % 4] = *v as u32;
    }
    d
}

uniform! {
    /// Elementwise, compare, select, copy and gather: up to three strided inputs and a
    /// strided output over one iteration shape.
    StridedParams in ["elementwise.wgsl", "compare.wgsl", "select.wgsl", "copy.wgsl", "gather.wgsl"] {
        numel: u32,
        rank: u32,
        scalar: f32,
        axis_stride: u32,
        axis_size: u32,
        _pad0: u32,
        _pad1: u32,
        _pad2: u32,
        offsets: [u32; 4],
        shape: Dims,
        out_strides: Dims,
        strides0: Dims,
        strides1: Dims,
        strides2: Dims,
    }
}

uniform! {
    /// The gradient of gather (a deterministic scatter-add).
    ScatterParams in ["scatter.wgsl"] {
        numel: u32,
        rank: u32,
        axis: u32,
        k: u32,
        g_offset: u32,
        idx_offset: u32,
        _pad0: u32,
        _pad1: u32,
        shape: Dims,
        idx_shape: Dims,
        g_strides: Dims,
        idx_strides: Dims,
    }
}

uniform! {
    /// `fill` and `arange`.
    FillParams in ["fill.wgsl"] {
        numel: u32,
        _pad: u32,
        start: f32,
        step: f32,
    }
}

uniform! {
    /// Counter-based random numbers and dropout.
    RandomParams in ["random.wgsl"] {
        numel: u32,
        seed_lo: u32,
        seed_hi: u32,
        offset: u32,
        a: f32,
        b: f32,
        _pad0: u32,
        _pad1: u32,
    }
}

uniform! {
    /// Reductions over the middle axis of an `(outer, n, inner)` view.
    ReduceParams in ["reduce.wgsl"] {
        outer: u32,
        n: u32,
        inner: u32,
        offset: u32,
        scale: f32,
        chunk: u32,
        _pad1: u32,
        _pad2: u32,
    }
}

uniform! {
    /// Batched matrix product `out[b] = op(A[b]) op(B[b])`.
    MatmulParams in ["matmul.wgsl", "matmul_tiled.wgsl"] {
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
        // The k range of one split (matmul_tiled.wgsl's split-K; unused by matmul.wgsl).
        k_chunk: u32,
    }
}

uniform! {
    /// Row-wise kernels: softmax, layer norm, cross-entropy, argsort.
    RowParams in ["softmax.wgsl", "layer_norm.wgsl", "cross_entropy.wgsl", "argsort.wgsl"] {
        rows: u32,
        cols: u32,
        x_offset: u32,
        w_offset: u32,
        b_offset: u32,
        eps: f32,
        _pad0: u32,
        _pad1: u32,
    }
}

uniform! {
    /// Fused AdamW and SGD updates of one parameter tensor.
    OptimParams in ["optim.wgsl"] {
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
}

uniform! {
    /// The factor of an optimizer step: one gradient's partial sums, or their total.
    GradientParams in ["gradients.wgsl"] {
        numel: u32,
        grad_offset: u32,
        slot: u32,
        unscale: f32,
        max_norm: f32,
        _pad0: u32,
        _pad1: u32,
        _pad2: u32,
    }
}

uniform! {
    /// Fused multi-head attention, forward and backward.
    AttentionParams in ["attention.wgsl", "attention_tiled.wgsl"] {
        batch: u32,
        tokens: u32,
        heads: u32,
        head_dim: u32,
        scale: f32,
        qkv_offset: u32,
        g_offset: u32,
        _pad0: u32,
    }
}

uniform! {
    /// The sum of split-K partial products.
    SplitKParams in ["splitk.wgsl"] {
        numel: u32,
        n: u32,
        splits: u32,
        bias_offset: u32,
    }
}

uniform! {
    /// Conversions between f32 and f16 storage.
    CastParams in ["cast.wgsl"] {
        numel: u32,
        in_offset: u32,
        out_offset: u32,
        _pad: u32,
    }
}

/// Every uniform twin, for the layout test.
#[doc(hidden)]
pub static ALL_UNIFORMS: &[UniformLayout] = &[
    StridedParams::LAYOUT,
    ScatterParams::LAYOUT,
    FillParams::LAYOUT,
    RandomParams::LAYOUT,
    ReduceParams::LAYOUT,
    MatmulParams::LAYOUT,
    RowParams::LAYOUT,
    OptimParams::LAYOUT,
    GradientParams::LAYOUT,
    AttentionParams::LAYOUT,
    SplitKParams::LAYOUT,
    CastParams::LAYOUT,
];
