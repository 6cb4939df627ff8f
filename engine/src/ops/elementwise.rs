//! Elementwise ops: unary functions, binary arithmetic with broadcasting, scalar variants,
//! comparisons, `where` and dtype conversion.

use super::{broadcast_strides, elementwise_grid, strided_params};
use crate::error::{Error, Result};
use crate::kernels::{BINARY, COMPARE_K, COPY_K, SELECT_K, UNARY};
use crate::shape::broadcast_shape;
use crate::tensor::{DType, Tensor};
use crate::DType::F32;

/// An enum of a shader's `OP` codes, each variant with the name errors and profiles give it:
/// the code and the name written once, side by side.
macro_rules! op_codes {
    ($(#[$meta:meta])* pub enum $name:ident {
        $($(#[$doc:meta])* $variant:ident = $code:literal => $text:literal,)*
    }) => {
        $(#[$meta])*
        pub enum $name {
            $($(#[$doc])* $variant = $code,)*
        }

        impl $name {
            fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }
        }
    };
}

op_codes! {
    /// Unary functions of `elementwise.wgsl`; the discriminant is the shader's `OP` code.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    #[allow(missing_docs)]
    pub enum UnaryOp {
        Neg = 0 => "neg",
        Exp = 1 => "exp",
        Log = 2 => "log",
        Sqrt = 3 => "sqrt",
        Rsqrt = 4 => "rsqrt",
        Abs = 5 => "abs",
        Tanh = 6 => "tanh",
        Sigmoid = 7 => "sigmoid",
        Relu = 8 => "relu",
        /// Exact erf form, as `torch.nn.GELU()`.
        Gelu = 9 => "gelu",
        /// `x + s`
        AddScalar = 10 => "add_scalar",
        /// `x * s`
        MulScalar = 11 => "mul_scalar",
        /// `x ^ s`
        PowScalar = 12 => "pow_scalar",
        /// `s - x`
        RsubScalar = 13 => "rsub_scalar",
        /// `s / x`
        RdivScalar = 14 => "rdiv_scalar",
        /// `max(x, s)`
        MaxScalar = 15 => "max_scalar",
        /// `min(x, s)`
        MinScalar = 16 => "min_scalar",
        /// `-1`, `0` or `1` by the sign of `x` (the derivative of `abs`).
        Sign = 17 => "sign",
        /// `1` where `x > 0`, else `0` (the derivative of `relu`).
        Step = 18 => "step",
        /// The derivative of the exact GELU, `Phi(x) + x * phi(x)`.
        GeluGrad = 19 => "gelu_grad",
    }
}

op_codes! {
    /// Binary arithmetic of `elementwise.wgsl`, with broadcasting.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    #[allow(missing_docs)]
    pub enum BinaryOp {
        Add = 0 => "add",
        Sub = 1 => "sub",
        Mul = 2 => "mul",
        Div = 3 => "div",
        Pow = 4 => "pow",
        Maximum = 5 => "maximum",
        Minimum = 6 => "minimum",
    }
}

/// Comparisons of `compare.wgsl`; results are `U32` masks of 0 and 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum CompareOp {
    Eq = 0,
    Ne = 1,
    Lt = 2,
    Le = 3,
    Gt = 4,
    Ge = 5,
}

macro_rules! unary_methods {
    ($($(#[$doc:meta])* $name:ident => $op:ident),* $(,)?) => {
        $(
            $(#[$doc])*
            ///
            /// # Errors
            /// [`crate::Error::DType`] for a `U32` tensor.
            pub fn $name(&self) -> Result<Tensor> {
                self.unary(UnaryOp::$op, 0.0)
            }
        )*
    };
}

macro_rules! scalar_methods {
    ($($(#[$doc:meta])* $name:ident => $op:ident),* $(,)?) => {
        $(
            $(#[$doc])*
            ///
            /// # Errors
            /// [`crate::Error::DType`] for a `U32` tensor.
            pub fn $name(&self, s: f32) -> Result<Tensor> {
                self.unary(UnaryOp::$op, s)
            }
        )*
    };
}

macro_rules! binary_methods {
    ($($(#[$doc:meta])* $name:ident => $op:ident),* $(,)?) => {
        $(
            $(#[$doc])*
            ///
            /// # Errors
            /// [`crate::Error::Shape`] when the shapes do not broadcast;
            /// [`crate::Error::DType`] for `U32` operands.
            pub fn $name(&self, other: &Tensor) -> Result<Tensor> {
                self.binary(BinaryOp::$op, other)
            }
        )*
    };
}

macro_rules! compare_methods {
    ($($name:ident, $scalar_name:ident => $op:ident),* $(,)?) => {
        $(
            #[doc = concat!("Elementwise `", stringify!($op), "` comparison with broadcasting, as a `U32` mask (1 true, 0 false).")]
            ///
            /// # Errors
            /// As [`Tensor::compare`].
            pub fn $name(&self, other: &Tensor) -> Result<Tensor> {
                self.compare(CompareOp::$op, other)
            }
            #[doc = concat!("Elementwise `", stringify!($op), "` comparison with a scalar, as a `U32` mask.")]
            ///
            /// # Errors
            /// [`crate::Error::DType`] for a `U32` tensor.
            pub fn $scalar_name(&self, s: f32) -> Result<Tensor> {
                self.compare_scalar(CompareOp::$op, s)
            }
        )*
    };
}

impl Tensor {
    /// Apply a unary function (with scalar `s` for the scalar ops) to every element.
    ///
    /// # Errors
    /// [`crate::Error::DType`] for a `U32` tensor.
    pub fn unary(&self, op: UnaryOp, s: f32) -> Result<Tensor> {
        let y = self.unary_kernel(op, s)?;
        // Keep only what the gradient reads, so that an activation lives no longer than
        // some rule needs it.
        let (reads_x, reads_y) = op.reads();
        // Under autocast GELU keeps an f16 copy of its input, the product before it: what
        // PyTorch keeps there, whose f16 product output GELU takes.
        let keep = |t: &Tensor| match op {
            UnaryOp::Gelu if crate::is_autocast_f16() => t.to_half(),
            _ => Ok(t.detach()),
        };
        let x = reads_x.then(|| keep(self)).transpose()?;
        let out = reads_y.then(|| y.detach());
        Ok(y.record(op.name(), &[self], move |g| {
            Ok(vec![Some(unary_backward(op, s, (x, out), g)?)])
        }))
    }

    fn unary_kernel(&self, op: UnaryOp, s: f32) -> Result<Tensor> {
        let name = op.name();
        self.expect_dtype(name, DType::F32)?;
        let out = Tensor::empty(self.device(), name, self.shape(), DType::F32)?;
        let contig = self.is_contiguous();
        let mut p = strided_params(
            name,
            self.shape(),
            (0, out.strides()),
            &[(self.offset(), self.strides())],
        )?;
        p.scalar = s;
        self.device().dispatch(
            &UNARY,
            &[op as u32, contig as u32],
            &p,
            &[out.buffer(), self.buffer()],
            elementwise_grid(out.numel()),
        );
        Ok(out)
    }

    /// Binary arithmetic with NumPy broadcasting.
    ///
    /// # Errors
    /// [`crate::Error::Shape`] when the shapes do not broadcast; [`crate::Error::DType`] for
    /// `U32` operands.
    pub fn binary(&self, op: BinaryOp, other: &Tensor) -> Result<Tensor> {
        let y = self.binary_kernel(op, other)?;
        let need = (self.requires_grad, other.requires_grad);
        // Keep only what the gradient reads (as in `unary`).
        let reads = op.reads(need);
        let kept = Kept {
            a: reads.0.then(|| self.detach()),
            b: reads.1.then(|| other.detach()),
            y: reads.2.then(|| y.detach()),
            shapes: (self.shape().to_vec(), other.shape().to_vec()),
        };
        Ok(y.record(op.name(), &[self, other], move |g| {
            binary_backward(op, &kept, g, need)
        }))
    }

    fn binary_kernel(&self, op: BinaryOp, other: &Tensor) -> Result<Tensor> {
        let name = op.name();
        self.expect_dtype(name, DType::F32)?;
        other.expect_dtype(name, DType::F32)?;
        self.expect_same_device(name, other)?;
        let shape = broadcast_shape(name, self.shape(), other.shape())?;
        let out = Tensor::empty(self.device(), name, &shape, DType::F32)?;
        let contig = self.shape() == other.shape() && self.is_contiguous() && other.is_contiguous();
        let sa = broadcast_strides(self, &shape);
        let sb = broadcast_strides(other, &shape);
        let p = strided_params(
            name,
            &shape,
            (0, out.strides()),
            &[(self.offset(), &sa), (other.offset(), &sb)],
        )?;
        self.device().dispatch(
            &BINARY,
            &[op as u32, contig as u32],
            &p,
            &[out.buffer(), self.buffer(), other.buffer()],
            elementwise_grid(out.numel()),
        );
        Ok(out)
    }

    unary_methods! {
        /// `-x`
        neg => Neg,
        /// `e^x`
        exp => Exp,
        /// Natural logarithm.
        log => Log,
        /// Square root.
        sqrt => Sqrt,
        /// `1 / sqrt(x)`
        rsqrt => Rsqrt,
        /// `|x|`
        abs => Abs,
        /// Hyperbolic tangent.
        tanh => Tanh,
        /// `1 / (1 + e^-x)`
        sigmoid => Sigmoid,
        /// `max(x, 0)`
        relu => Relu,
        /// GELU in the exact erf form `x * (1 + erf(x / sqrt 2)) / 2`, as `torch.nn.GELU()`.
        gelu => Gelu,
    }

    scalar_methods! {
        /// `x + s`
        add_scalar => AddScalar,
        /// `x * s`
        mul_scalar => MulScalar,
        /// `x ^ s` (PyTorch's conventions for negative bases and zero).
        pow_scalar => PowScalar,
        /// `s - x`
        rsub_scalar => RsubScalar,
        /// `s / x`
        rdiv_scalar => RdivScalar,
        /// `max(x, s)`
        clamp_min => MaxScalar,
        /// `min(x, s)`
        clamp_max => MinScalar,
    }

    /// `x - s`
    ///
    /// # Errors
    /// [`crate::Error::DType`] for a `U32` tensor.
    pub fn sub_scalar(&self, s: f32) -> Result<Tensor> {
        self.unary(UnaryOp::AddScalar, -s)
    }

    /// `x / s`
    ///
    /// # Errors
    /// [`crate::Error::DType`] for a `U32` tensor.
    pub fn div_scalar(&self, s: f32) -> Result<Tensor> {
        self.unary(UnaryOp::MulScalar, 1.0 / s)
    }

    binary_methods! {
        /// `a + b`
        add => Add,
        /// `a - b`
        sub => Sub,
        /// `a * b`
        mul => Mul,
        /// `a / b`
        div => Div,
        /// `a ^ b`
        pow => Pow,
        /// Elementwise maximum.
        maximum => Maximum,
        /// Elementwise minimum.
        minimum => Minimum,
    }

    /// Compare two `F32` tensors elementwise with broadcasting into a `U32` mask.
    ///
    /// # Errors
    /// [`crate::Error::Shape`] when the shapes do not broadcast; [`crate::Error::DType`] for
    /// `U32` operands.
    pub fn compare(&self, op: CompareOp, other: &Tensor) -> Result<Tensor> {
        let name = "compare";
        self.expect_dtype(name, DType::F32)?;
        other.expect_dtype(name, DType::F32)?;
        self.expect_same_device(name, other)?;
        let shape = broadcast_shape(name, self.shape(), other.shape())?;
        let out = Tensor::empty(self.device(), name, &shape, DType::U32)?;
        let sa = broadcast_strides(self, &shape);
        let sb = broadcast_strides(other, &shape);
        let p = strided_params(
            name,
            &shape,
            (0, out.strides()),
            &[(self.offset(), &sa), (other.offset(), &sb)],
        )?;
        self.device().dispatch(
            &COMPARE_K,
            &[op as u32, 0],
            &p,
            &[out.buffer(), self.buffer(), other.buffer()],
            elementwise_grid(out.numel()),
        );
        Ok(out)
    }

    /// Compare every element with a scalar into a `U32` mask.
    ///
    /// # Errors
    /// [`crate::Error::DType`] for a `U32` tensor.
    pub fn compare_scalar(&self, op: CompareOp, s: f32) -> Result<Tensor> {
        let name = "compare_scalar";
        self.expect_dtype(name, DType::F32)?;
        let out = Tensor::empty(self.device(), name, self.shape(), DType::U32)?;
        let mut p = strided_params(
            name,
            self.shape(),
            (0, out.strides()),
            &[(self.offset(), self.strides())],
        )?;
        p.scalar = s;
        // The second operand is unused; bind the input again to fill the slot.
        self.device().dispatch(
            &COMPARE_K,
            &[op as u32, 1],
            &p,
            &[out.buffer(), self.buffer(), self.buffer()],
            elementwise_grid(out.numel()),
        );
        Ok(out)
    }

    compare_methods! {
        eq, eq_scalar => Eq,
        ne, ne_scalar => Ne,
        lt, lt_scalar => Lt,
        le, le_scalar => Le,
        gt, gt_scalar => Gt,
        ge, ge_scalar => Ge,
    }

    /// `on_true` where `cond` (a `U32` mask) is non-zero, else `on_false`; all three
    /// broadcast to a common shape.
    ///
    /// # Errors
    /// [`crate::Error::DType`] unless `cond` is `U32` and the values are `F32`;
    /// [`crate::Error::Shape`] when the shapes do not broadcast.
    pub fn where_cond(cond: &Tensor, on_true: &Tensor, on_false: &Tensor) -> Result<Tensor> {
        let y = Tensor::where_kernel(cond, on_true, on_false)?;
        let (c, ts, fs) = (
            cond.detach(),
            on_true.shape().to_vec(),
            on_false.shape().to_vec(),
        );
        Ok(y.record("where", &[on_true, on_false], move |g| {
            let zero = Tensor::zeros(g.device(), &[])?;
            Ok(vec![
                Some(Tensor::where_kernel(&c, g, &zero)?.sum_to(&ts)?),
                Some(Tensor::where_kernel(&c, &zero, g)?.sum_to(&fs)?),
            ])
        }))
    }

    fn where_kernel(cond: &Tensor, on_true: &Tensor, on_false: &Tensor) -> Result<Tensor> {
        let name = "where";
        cond.expect_dtype(name, DType::U32)?;
        on_true.expect_dtype(name, DType::F32)?;
        on_false.expect_dtype(name, DType::F32)?;
        cond.expect_same_device(name, on_true)?;
        cond.expect_same_device(name, on_false)?;
        let shape = broadcast_shape(name, cond.shape(), on_true.shape())?;
        let shape = broadcast_shape(name, &shape, on_false.shape())?;
        let out = Tensor::empty(cond.device(), name, &shape, DType::F32)?;
        let sc = broadcast_strides(cond, &shape);
        let st = broadcast_strides(on_true, &shape);
        let sf = broadcast_strides(on_false, &shape);
        let p = strided_params(
            name,
            &shape,
            (0, out.strides()),
            &[
                (cond.offset(), &sc),
                (on_true.offset(), &st),
                (on_false.offset(), &sf),
            ],
        )?;
        cond.device().dispatch(
            &SELECT_K,
            &[],
            &p,
            &[
                out.buffer(),
                cond.buffer(),
                on_true.buffer(),
                on_false.buffer(),
            ],
            elementwise_grid(out.numel()),
        );
        Ok(out)
    }

    /// Convert to another element type: `F32 -> U32` truncates toward zero (negatives become
    /// 0), `U32 -> F32` is exact below 2^24, `F32 <-> F16` as [`Tensor::to_half`] and
    /// [`Tensor::to_single`]. The same dtype returns a shared view.
    ///
    /// # Errors
    /// [`crate::Error::TooLarge`]; [`crate::Error::DType`] between `U32` and `F16`;
    /// [`crate::Error::Unsupported`] for `F16` without `SHADER_F16`.
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        let op = match (self.dtype(), dtype) {
            (a, b) if a == b => return Ok(self.clone()),
            (DType::F32, DType::F16) => return self.to_half(),
            (DType::F16, DType::F32) => return self.to_single(),
            (DType::F32, DType::U32) => 1,
            _ => 2,
        };
        self.copy_into_new("to_dtype", op, dtype)
    }

    /// A new contiguous tensor with this tensor's elements, converted by copy-kernel `op`.
    pub(crate) fn copy_into_new(
        &self,
        name: &'static str,
        op: u32,
        dtype: DType,
    ) -> Result<Tensor> {
        let out = Tensor::empty(self.device(), name, self.shape(), dtype)?;
        self.copy_to(name, op, &out)?;
        Ok(out)
    }

    /// Copy this tensor's elements into the (possibly strided) view `dst` of the same shape.
    pub(crate) fn copy_to(&self, name: &'static str, op: u32, dst: &Tensor) -> Result<()> {
        // The copy kernel moves 32-bit words; f16 tensors are made contiguous by their cast.
        for t in [self, dst] {
            if t.dtype() == DType::F16 {
                return Err(Error::DType {
                    op: name,
                    expected: DType::F32,
                    got: DType::F16,
                    shape: t.shape().to_vec(),
                });
            }
        }
        let p = strided_params(
            name,
            self.shape(),
            (dst.offset(), dst.strides()),
            &[(self.offset(), self.strides())],
        )?;
        self.device().dispatch(
            &COPY_K,
            &[op],
            &p,
            &[dst.buffer(), self.buffer()],
            elementwise_grid(self.numel()),
        );
        Ok(())
    }
}

impl UnaryOp {
    /// Whether the gradient reads the op's input and its output.
    fn reads(self) -> (bool, bool) {
        use UnaryOp::*;
        match self {
            Exp | Sqrt | Rsqrt | Tanh | Sigmoid => (false, true),
            Log | Abs | Relu | Gelu | PowScalar | RdivScalar | MaxScalar | MinScalar => {
                (true, false)
            }
            Neg | RsubScalar | AddScalar | MulScalar | Sign | Step | GeluGrad => (false, false),
        }
    }
}

impl BinaryOp {
    /// Whether the gradients of the inputs that need one (`need`) read the first input,
    /// the second, and the output.
    fn reads(self, (need_a, need_b): (bool, bool)) -> (bool, bool, bool) {
        match self {
            BinaryOp::Add | BinaryOp::Sub => (false, false, false),
            BinaryOp::Mul => (need_b, need_a, false),
            BinaryOp::Div => (false, true, need_b),
            BinaryOp::Pow => (true, true, need_b),
            BinaryOp::Maximum | BinaryOp::Minimum => (true, true, false),
        }
    }
}

/// What a binary op's rule keeps: the tensors [`BinaryOp::reads`] names, and the inputs'
/// shapes.
struct Kept {
    a: Option<Tensor>,
    b: Option<Tensor>,
    y: Option<Tensor>,
    shapes: (Vec<usize>, Vec<usize>),
}

/// Gradient of a unary op from what it kept of its input `x` and output `y`
/// ([`UnaryOp::reads`]), and the output gradient `g`.
fn unary_backward(
    op: UnaryOp,
    s: f32,
    (x, y): (Option<Tensor>, Option<Tensor>),
    g: &Tensor,
) -> Result<Tensor> {
    let kept = "UnaryOp::reads keeps what the rule reads";
    let x = || x.as_ref().expect(kept);
    let y = || y.as_ref().expect(kept);
    match op {
        UnaryOp::Neg | UnaryOp::RsubScalar => g.neg(),
        UnaryOp::Exp => g.mul(y()),
        UnaryOp::Log => g.div(x()),
        UnaryOp::Sqrt => g.mul(&y().rdiv_scalar(0.5)?),
        UnaryOp::Rsqrt => g.mul(&y().pow_scalar(3.0)?.mul_scalar(-0.5)?),
        UnaryOp::Abs => g.mul(&x().unary(UnaryOp::Sign, 0.0)?),
        UnaryOp::Tanh => g.mul(&y().mul(y())?.rsub_scalar(1.0)?),
        UnaryOp::Sigmoid => g.mul(&y().mul(&y().rsub_scalar(1.0)?)?),
        UnaryOp::Relu => g.mul(&x().unary(UnaryOp::Step, 0.0)?),
        UnaryOp::Gelu => g.mul(&x().to_dtype(F32)?.unary(UnaryOp::GeluGrad, 0.0)?),
        UnaryOp::AddScalar => Ok(g.clone()),
        UnaryOp::MulScalar => g.mul_scalar(s),
        UnaryOp::PowScalar => g.mul(&x().pow_scalar(s - 1.0)?.mul_scalar(s)?),
        UnaryOp::RdivScalar => g.mul(&x().mul(x())?.rdiv_scalar(-s)?),
        UnaryOp::MaxScalar => g.mul(&x().ge_scalar(s)?.to_dtype(F32)?),
        UnaryOp::MinScalar => g.mul(&x().le_scalar(s)?.to_dtype(F32)?),
        UnaryOp::Sign | UnaryOp::Step | UnaryOp::GeluGrad => g.mul_scalar(0.0),
    }
}

/// Gradients of a binary op for the inputs that need one, summed over broadcast axes.
fn binary_backward(
    op: BinaryOp,
    kept: &Kept,
    g: &Tensor,
    (need_a, need_b): (bool, bool),
) -> Result<Vec<Option<Tensor>>> {
    let why = "BinaryOp::reads keeps what the rule reads";
    let (a, b, y) = (
        || kept.a.as_ref().expect(why),
        || kept.b.as_ref().expect(why),
        || kept.y.as_ref().expect(why),
    );
    // Ties of maximum/minimum split the gradient in half, as PyTorch does.
    let pick = |first: CompareOp| -> Result<Tensor> {
        let wins = a().compare(first, b())?.to_dtype(F32)?;
        let ties = a().eq(b())?.to_dtype(F32)?.mul_scalar(0.5)?;
        wins.add(&ties)
    };
    let (ga, gb) = match op {
        BinaryOp::Add => (Some(g.clone()), Some(g.clone())),
        BinaryOp::Sub => (Some(g.clone()), need_b.then(|| g.neg()).transpose()?),
        BinaryOp::Mul => (
            need_a.then(|| g.mul(b())).transpose()?,
            need_b.then(|| g.mul(a())).transpose()?,
        ),
        BinaryOp::Div => (
            need_a.then(|| g.div(b())).transpose()?,
            need_b.then(|| g.mul(y())?.div(b())?.neg()).transpose()?,
        ),
        BinaryOp::Pow => (
            need_a
                .then(|| g.mul(b())?.mul(&a().pow(&b().sub_scalar(1.0)?)?))
                .transpose()?,
            need_b.then(|| g.mul(y())?.mul(&a().log()?)).transpose()?,
        ),
        BinaryOp::Maximum => (
            need_a.then(|| g.mul(&pick(CompareOp::Gt)?)).transpose()?,
            need_b.then(|| g.mul(&pick(CompareOp::Lt)?)).transpose()?,
        ),
        BinaryOp::Minimum => (
            need_a.then(|| g.mul(&pick(CompareOp::Lt)?)).transpose()?,
            need_b.then(|| g.mul(&pick(CompareOp::Gt)?)).transpose()?,
        ),
    };
    Ok(vec![
        ga.filter(|_| need_a)
            .map(|t| t.sum_to(&kept.shapes.0))
            .transpose()?,
        gb.filter(|_| need_b)
            .map(|t| t.sum_to(&kept.shapes.1))
            .transpose()?,
    ])
}
