//! Every WGSL source of the engine, the kernels (entry points) they define, and the cache that
//! compiles each kernel and specialisation once.
//!
//! A kernel's binding 0 is always its uniform parameters (a slot of the device's uniform
//! arena, bound with a dynamic offset); bindings 1.. are storage buffers, whose access
//! modes the `Kernel` descriptor lists in binding order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use crate::error::{Error, Result};

/// One WGSL file from `shaders/`, possibly prefixed by shared helper files.
pub struct Shader {
    /// The file name under `shaders/`.
    pub file: &'static str,
    /// The complete source handed to the compiler (helpers first).
    pub source: &'static str,
}

macro_rules! shader {
    ($name:ident, $file:literal) => {
        pub(crate) static $name: Shader = Shader {
            file: $file,
            source: include_str!(concat!("../../shaders/", $file)),
        };
    };
    ($name:ident, $file:literal, with $($helper:literal),+) => {
        pub(crate) static $name: Shader = Shader {
            file: $file,
            source: concat!(
                $(include_str!(concat!("../../shaders/", $helper)),)+
                include_str!(concat!("../../shaders/", $file))
            ),
        };
    };
}

shader!(ELEMENTWISE, "elementwise.wgsl", with "strided.wgsl");
shader!(COMPARE, "compare.wgsl", with "strided.wgsl");
shader!(SELECT, "select.wgsl", with "strided.wgsl");
shader!(COPY, "copy.wgsl", with "strided.wgsl");
shader!(GATHER, "gather.wgsl", with "strided.wgsl");
shader!(SCATTER, "scatter.wgsl");
shader!(FILL, "fill.wgsl");
shader!(RANDOM, "random.wgsl");
shader!(REDUCE, "reduce.wgsl");
shader!(MATMUL, "matmul.wgsl");
shader!(MATMUL_TILED, "matmul_tiled.wgsl");
shader!(SPLITK, "splitk.wgsl");
shader!(SOFTMAX, "softmax.wgsl", with "rows.wgsl", "rows_tree.wgsl");
shader!(LAYER_NORM, "layer_norm.wgsl", with "rows.wgsl", "rows_tree.wgsl");
shader!(CROSS_ENTROPY, "cross_entropy.wgsl", with "rows.wgsl", "rows_tree.wgsl");
// The same with subgroup reductions, for adapters with SUBGROUP.
shader!(SOFTMAX_SG, "softmax.wgsl", with "rows.wgsl", "rows_subgroup.wgsl");
shader!(LAYER_NORM_SG, "layer_norm.wgsl", with "rows.wgsl", "rows_subgroup.wgsl");
shader!(CROSS_ENTROPY_SG, "cross_entropy.wgsl", with "rows.wgsl", "rows_subgroup.wgsl");
shader!(ARGSORT, "argsort.wgsl", with "rows.wgsl");
shader!(OPTIM, "optim.wgsl");
shader!(GRADIENTS, "gradients.wgsl");
shader!(ATTENTION, "attention.wgsl");
shader!(ATTENTION_TILED, "attention_tiled.wgsl");
shader!(CAST, "cast.wgsl");

/// Every shader the engine compiles; the validation test checks each with naga and checks
/// that no `.wgsl` file in `shaders/` is missing from this list.
pub static ALL_SHADERS: &[&Shader] = &[
    &ELEMENTWISE,
    &COMPARE,
    &SELECT,
    &COPY,
    &GATHER,
    &SCATTER,
    &FILL,
    &RANDOM,
    &REDUCE,
    &MATMUL,
    &MATMUL_TILED,
    &SPLITK,
    &SOFTMAX,
    &LAYER_NORM,
    &CROSS_ENTROPY,
    &SOFTMAX_SG,
    &LAYER_NORM_SG,
    &CROSS_ENTROPY_SG,
    &ARGSORT,
    &OPTIM,
    &GRADIENTS,
    &ATTENTION,
    &ATTENTION_TILED,
    &CAST,
];

/// Helper files that are only ever prepended to other shaders.
pub static HELPER_FILES: &[&str] = &[
    "strided.wgsl",
    "rows.wgsl",
    "rows_tree.wgsl",
    "rows_subgroup.wgsl",
];

/// How a kernel touches one storage binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Access {
    Read,
    ReadWrite,
}
use Access::{Read as R, ReadWrite as W};

/// One entry point of a shader with the storage bindings it uses (after the uniform) and the
/// names of its `override` constants, whose values a dispatch supplies.
pub(crate) struct Kernel {
    pub shader: &'static Shader,
    pub entry: &'static str,
    pub storage: &'static [Access],
    pub overrides: &'static [&'static str],
    /// The tests prove this kernel's indexing on poisoned workgroup memory, so a device may
    /// build it without naga's runtime checks ([`crate::DeviceOptions::trusted_kernels`]).
    pub bounds_proven: bool,
}

/// One pipeline the engine can build, as the translation test sees it.
#[doc(hidden)]
pub struct Build {
    /// `file::entry`, the variant and its override values.
    pub name: String,
    /// The module's WGSL, after specialisation and the f16 rewrite.
    pub source: String,
    /// The entry point.
    pub entry: &'static str,
    /// A value for each override constant.
    pub overrides: Vec<(&'static str, f64)>,
    /// Storage buffers bound (after the uniform).
    pub storage: usize,
    /// Built only for adapters with subgroups.
    pub subgroup: bool,
    /// Built only for adapters with `SHADER_F16`.
    pub f16: bool,
}

/// Every pipeline the engine can build: each fixed kernel, every tiled matrix-product
/// variant, the tiled attention kernels for every head size up to
/// [`crate::ops::MAX_ATTENTION_HEAD_DIM`], the f16-operand build of each that has one, and
/// the subgroup builds of the row kernels; each with its override constants at two sets of
/// values (every workgroup-width override at 8 and every flag off, then 64 and on).
#[doc(hidden)]
pub fn catalogue() -> Vec<Build> {
    let mut kernels: Vec<(&'static Kernel, String)> =
        ALL_KERNELS.iter().map(|k| (*k, String::new())).collect();
    kernels.extend(crate::tune::Tile::all().map(|t| (t.kernel(), format!(" [{}]", t.name()))));
    for hd in 1..=crate::ops::MAX_ATTENTION_HEAD_DIM {
        let tiled = crate::ops::tiled_attention_kernels(hd, 16384);
        kernels.extend(tiled.map(|k| (k, format!(" [head size {hd}]"))));
    }
    let halves: Vec<(&'static Kernel, String)> = kernels
        .iter()
        .filter(|(k, _)| k.shader.source.contains(SINGLE_OPERAND))
        .map(|(k, v)| (half_operands(k), format!("{v} f16")))
        .collect();
    kernels.extend(halves);
    let mut builds = Vec::new();
    for (k, variant) in kernels {
        for (wg, flag) in [(8.0, 0.0), (64.0, 1.0)] {
            let overrides: Vec<(&'static str, f64)> = k
                .overrides
                .iter()
                .map(|&o| (o, if o == "WG" { wg } else { flag }))
                .collect();
            let values: Vec<u32> = overrides.iter().map(|o| o.1 as u32).collect();
            builds.push(Build {
                name: format!("{}{variant}", k.name(&values)),
                source: k.shader.source.to_string(),
                entry: k.entry,
                overrides,
                storage: k.storage.len(),
                subgroup: code_lines(k.shader.source).any(|l| l.contains("subgroupAdd(")),
                f16: code_lines(k.shader.source).any(|l| l == "enable f16;"),
            });
            if k.overrides.is_empty() {
                break;
            }
        }
    }
    builds
}

/// The lines of WGSL `source` that are not comments, trimmed.
fn code_lines(source: &str) -> impl Iterator<Item = &str> {
    source
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("//"))
}

/// The storage buffers the widest kernel binds: an adapter must allow as many per shader
/// stage.
pub(crate) fn storage_bindings_needed() -> u32 {
    ALL_KERNELS
        .iter()
        .chain(TEMPLATES)
        .map(|k| k.storage.len() as u32)
        .max()
        .unwrap_or(0)
}

impl Kernel {
    /// `file::entry` and the override values of a dispatch, as profiles and errors name it.
    pub(crate) fn name(&self, values: &[u32]) -> String {
        let mut name = format!("{}::{}", self.shader.file, self.entry);
        for (k, v) in self.overrides.iter().zip(values) {
            name += &format!(" {k}={v}");
        }
        name
    }
}

macro_rules! kernels {
    ($($name:ident: $shader:ident :: $entry:literal, [$($acc:ident),*], [$($ov:literal),*];)*) => {
        $(
            pub(crate) static $name: Kernel = Kernel {
                shader: &$shader,
                entry: $entry,
                storage: &[$($acc),*],
                overrides: &[$($ov),*],
                bounds_proven: false,
            };
        )*
        /// Every kernel of a fixed shader (the generated variants, made from templates,
        /// bind as many buffers as their fixed twins).
        pub(crate) static ALL_KERNELS: &[&Kernel] = &[$(&$name),*];
    };
}

kernels! {
    UNARY: ELEMENTWISE::"unary", [W, R], ["OP", "CONTIG"];
    BINARY: ELEMENTWISE::"binary", [W, R, R], ["OP", "CONTIG"];
    COMPARE_K: COMPARE::"compare", [W, R, R], ["OP", "B_SCALAR"];
    SELECT_K: SELECT::"where_select", [W, R, R, R], [];
    COPY_K: COPY::"copy", [W, R], ["OP"];
    GATHER_K: GATHER::"gather", [W, R, R, W], [];
    SCATTER_K: SCATTER::"gather_backward", [W, R, R], [];
    FILL_K: FILL::"fill", [W], ["OP"];
    RANDOM_K: RANDOM::"random", [W], ["OP"];
    DROPOUT_K: RANDOM::"dropout", [W, R], [];
    REDUCE_K: REDUCE::"reduce", [W, R], ["OP", "WG"];
    REDUCE_COLUMNS_K: REDUCE::"reduce_columns", [W, R], ["OP", "WG"];
    MATMUL_K: MATMUL::"matmul", [W, R, R, R], ["TRANS_A", "TRANS_B", "HAS_BIAS"];
    MATMUL_VEC4_K: MATMUL::"matmul_vec4", [W, R, R, R], ["TRANS_A", "TRANS_B", "HAS_BIAS"];
    SPLITK_K: SPLITK::"splitk_sum", [W, R, R], ["HAS_BIAS"];
    SOFTMAX_K: SOFTMAX::"softmax", [W, R], ["WG"];
    LAYER_NORM_K: LAYER_NORM::"layer_norm", [W, W, R, R, R], ["WG"];
    LAYER_NORM_BACKWARD_K: LAYER_NORM::"layer_norm_backward", [W, W, R, R, R, R], ["WG"];
    CROSS_ENTROPY_K: CROSS_ENTROPY::"cross_entropy", [W, R, R, W], ["WG"];
    SOFTMAX_SG_K: SOFTMAX_SG::"softmax", [W, R], ["WG"];
    LAYER_NORM_SG_K: LAYER_NORM_SG::"layer_norm", [W, W, R, R, R], ["WG"];
    LAYER_NORM_BACKWARD_SG_K: LAYER_NORM_SG::"layer_norm_backward", [W, W, R, R, R, R], ["WG"];
    CROSS_ENTROPY_SG_K: CROSS_ENTROPY_SG::"cross_entropy", [W, R, R, W], ["WG"];
    ARGSORT_K: ARGSORT::"argsort", [W, R], ["DESCENDING"];
    ADAMW_K: OPTIM::"adamw", [W, R, R, W, W], ["SCALED"];
    SGD_K: OPTIM::"sgd", [W, R, R, W], ["SCALED"];
    PARTIAL_SUMS_K: GRADIENTS::"partial_sums", [W, R], [];
    STEP_FACTOR_K: GRADIENTS::"step_factor", [W], [];
    ATTENTION_K: ATTENTION::"attention_forward", [W, W, R], ["WG"];
    ATTENTION_BACKWARD_Q_K: ATTENTION::"attention_backward_q", [W, W, R, R, R, R], ["WG"];
    ATTENTION_BACKWARD_KV_K: ATTENTION::"attention_backward_kv", [W, W, R, R, R, R], ["WG"];
    TO_HALF_K: CAST::"to_half", [W, R], [];
    TO_SINGLE_K: CAST::"to_single", [W, R], [];
}

/// Kernels of template shaders: each variant ([`generated`]) replaces the template's
/// `BEGIN TILE` block and binds, and takes overrides, as its template does.
pub(crate) static TEMPLATES: &[&Kernel] = &[
    &MATMUL_TILED_T,
    &ATTENTION_TILED_FORWARD_T,
    &ATTENTION_TILED_BACKWARD_Q_T,
    &ATTENTION_TILED_BACKWARD_KV_T,
];

/// The tiled matrix product, one variant per `tune::Tile`.
pub(crate) static MATMUL_TILED_T: Kernel = Kernel {
    shader: &MATMUL_TILED,
    entry: "matmul_tiled",
    storage: &[W, R, R, R],
    overrides: &["TRANS_A", "TRANS_B", "HAS_BIAS", "SPLIT", "POISON"],
    // Proven by `no_kernel_reads_workgroup_memory_before_it_is_written`.
    bounds_proven: true,
};
/// Tiled attention, one variant per head size.
pub(crate) static ATTENTION_TILED_FORWARD_T: Kernel =
    attention_tiled("attention_tiled_forward", &[W, W, R]);
pub(crate) static ATTENTION_TILED_BACKWARD_Q_T: Kernel =
    attention_tiled("attention_tiled_backward_q", &[W, W, R, R, R, R]);
pub(crate) static ATTENTION_TILED_BACKWARD_KV_T: Kernel =
    attention_tiled("attention_tiled_backward_kv", &[W, W, R, R, R, R]);

const fn attention_tiled(entry: &'static str, storage: &'static [Access]) -> Kernel {
    Kernel {
        shader: &ATTENTION_TILED,
        entry,
        storage,
        overrides: &[],
        bounds_proven: false,
    }
}

/// What `make` returns for `key`, made on first use and kept for the life of the process, as
/// the static kernels are: how generated shaders and kernels get their `'static` lifetime.
fn made_once<K: Eq + std::hash::Hash, T: Sync + 'static>(
    made: &'static OnceLock<Mutex<HashMap<K, &'static T>>>,
    key: K,
    make: impl FnOnce() -> T,
) -> &'static T {
    let mut made = made
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    made.entry(key)
        .or_insert_with(|| Box::leak(Box::new(make())))
}

/// The build of `kernel` whose operands are f16: its shader declares them as
/// `array<Operand>` with `alias Operand = f32;`, and converts each read to f32, so this build
/// (with `enable f16;` first, as WGSL requires) reads half the bytes and still accumulates in
/// f32. Made on first use and kept for the life of the process, as the static kernels are.
pub(crate) fn half_operands(kernel: &'static Kernel) -> &'static Kernel {
    static MADE: OnceLock<Mutex<HashMap<usize, &'static Kernel>>> = OnceLock::new();
    made_once(&MADE, kernel as *const Kernel as usize, || {
        let shader = made_once(
            &HALF_SHADERS,
            kernel.shader as *const Shader as usize,
            || Shader {
                file: kernel.shader.file,
                source: Box::leak(half_source(kernel.shader.source).into_boxed_str()),
            },
        );
        // The poisoned-memory proof covers the f32 builds: these keep their checks.
        Kernel {
            shader,
            bounds_proven: false,
            ..*kernel
        }
    })
}

/// The f16-operand shaders, by the address of their f32 shader: the entries of one shader
/// share one module.
static HALF_SHADERS: OnceLock<Mutex<HashMap<usize, &'static Shader>>> = OnceLock::new();

/// `source` with f16 operands (see [`half_operands`]).
#[doc(hidden)]
pub fn half_source(source: &str) -> String {
    assert!(
        source.contains(SINGLE_OPERAND),
        "a shader with f16 operands declares `{SINGLE_OPERAND}`"
    );
    format!(
        "enable f16;\n{}",
        source.replace(SINGLE_OPERAND, "alias Operand = f16;")
    )
}

/// How a shader with an f16-operand build declares its operands' type.
const SINGLE_OPERAND: &str = "alias Operand = f32;";

/// The shaders that have f16-operand builds (`half_operands`), for the validation test.
pub static HALF_OPERAND_SHADERS: &[&Shader] =
    &[&MATMUL, &MATMUL_TILED, &ATTENTION, &ATTENTION_TILED];

/// `template`'s source with the lines between `// BEGIN TILE` and `// END TILE` replaced by
/// `block`: how the tiled kernels get their variants' constants.
pub(crate) fn specialise(template: &Shader, block: &str) -> String {
    let src = template.source;
    let begin = src.find("// BEGIN TILE\n").expect("template marker") + "// BEGIN TILE\n".len();
    let end = src.find("// END TILE\n").expect("template marker");
    format!("{}{block}{}", &src[..begin], &src[end..])
}

/// The variant of `template` (one of [`TEMPLATES`]) whose shader has `block` in place of the
/// lines between `BEGIN TILE` and `END TILE` ([`specialise`]); the entries of one variant
/// share one shader.
pub(crate) fn generated(template: &'static Kernel, block: String) -> &'static Kernel {
    type Made<K, T> = OnceLock<Mutex<HashMap<K, &'static T>>>;
    static KERNELS: Made<(usize, String), Kernel> = OnceLock::new();
    static SHADERS: Made<(&'static str, String), Shader> = OnceLock::new();
    let key = (template as *const Kernel as usize, block);
    made_once(&KERNELS, key.clone(), || {
        let file = template.shader.file;
        let shader = made_once(&SHADERS, (file, key.1.clone()), || Shader {
            file,
            source: Box::leak(specialise(template.shader, &key.1).into_boxed_str()),
        });
        Kernel {
            shader,
            ..*template
        }
    })
}

/// A compiled kernel specialisation.
pub(crate) struct Pipeline {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

/// Most override constants a kernel has; specialisation keys are fixed-size arrays.
pub(crate) const MAX_OVERRIDES: usize = 5;

type Key = (usize, [u32; MAX_OVERRIDES]);

/// Compiled shader modules and pipelines, keyed by kernel and override values.
#[derive(Default)]
pub(crate) struct PipelineCache {
    /// By shader address: generated variants share a file name but not a source.
    modules: HashMap<usize, wgpu::ShaderModule>,
    pipelines: HashMap<Key, Arc<Pipeline>>,
}

impl PipelineCache {
    /// The pipeline of `kernel` with override `values`, built on first use.
    ///
    /// # Errors
    /// [`Error::Kernel`] when the adapter's compiler or pipeline creation refuses it (wgpu's
    /// validation errors are captured, not left to its default handler, which panics).
    pub(crate) fn get(
        &mut self,
        device: &wgpu::Device,
        (kernel, values): (&'static Kernel, &[u32]),
        trusted: bool,
    ) -> Result<Arc<Pipeline>> {
        assert_eq!(
            values.len(),
            kernel.overrides.len(),
            "kernel {} takes overrides {:?}",
            kernel.entry,
            kernel.overrides
        );
        let mut key_values = [0u32; MAX_OVERRIDES];
        key_values[..values.len()].copy_from_slice(values);
        let key = (kernel as *const Kernel as usize, key_values);
        if let Some(p) = self.pipelines.get(&key) {
            return Ok(p.clone());
        }
        let scopes = [
            wgpu::ErrorFilter::Internal,
            wgpu::ErrorFilter::OutOfMemory,
            wgpu::ErrorFilter::Validation,
        ]
        .map(|filter| device.push_error_scope(filter));
        let shader = kernel.shader as *const Shader as usize;
        let module = self.modules.entry(shader).or_insert_with(|| {
            let descriptor = wgpu::ShaderModuleDescriptor {
                label: Some(kernel.shader.file),
                source: wgpu::ShaderSource::Wgsl(kernel.shader.source.into()),
            };
            match trusted && kernel.bounds_proven {
                // SAFETY: the kernel's indexing is proven by the tests on poisoned
                // workgroup memory (`matmul_variants`), every index it forms stays within
                // its arrays and buffers, and its loops are bounded by its parameters.
                true => unsafe {
                    device.create_shader_module_trusted(
                        descriptor,
                        wgpu::ShaderRuntimeChecks::unchecked(),
                    )
                },
                false => device.create_shader_module(descriptor),
            }
        });
        let pipeline = build_pipeline(device, module, kernel, values);
        // Scopes pop in reverse order of their pushing.
        let errors: Vec<String> = scopes
            .into_iter()
            .rev()
            .filter_map(|scope| pollster::block_on(scope.pop()))
            .map(|e| e.to_string())
            .collect();
        if let Some(message) = errors.first() {
            self.modules.remove(&shader);
            return Err(Error::Kernel {
                kernel: kernel.name(values),
                message: crate::error::one_line(message),
            });
        }
        let pipeline = Arc::new(pipeline);
        self.pipelines.insert(key, pipeline.clone());
        Ok(pipeline)
    }

    pub(crate) fn len(&self) -> usize {
        self.pipelines.len()
    }
}

fn build_pipeline(
    device: &wgpu::Device,
    module: &wgpu::ShaderModule,
    kernel: &Kernel,
    values: &[u32],
) -> Pipeline {
    let mut entries = vec![wgpu::BindGroupLayoutEntry {
        binding: 0,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: true,
            min_binding_size: None,
        },
        count: None,
    }];
    for (i, access) in kernel.storage.iter().enumerate() {
        entries.push(wgpu::BindGroupLayoutEntry {
            binding: i as u32 + 1,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage {
                    read_only: *access == Access::Read,
                },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        });
    }
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(kernel.entry),
        entries: &entries,
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(kernel.entry),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let constants: Vec<(&str, f64)> = kernel
        .overrides
        .iter()
        .zip(values)
        .map(|(name, v)| (*name, *v as f64))
        .collect();
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(kernel.entry),
        layout: Some(&pipeline_layout),
        module,
        entry_point: Some(kernel.entry),
        compilation_options: wgpu::PipelineCompilationOptions {
            constants: &constants,
            zero_initialize_workgroup_memory: false,
        },
        cache: None,
    });
    Pipeline { pipeline, layout }
}
