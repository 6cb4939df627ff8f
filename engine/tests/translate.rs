//! Every kernel the engine can build, translated for every backend as wgpu's backends
//! translate it: naga writes SPIR-V (Vulkan), MSL (Metal), HLSL (DX12) and GLSL (GL) with
//! each backend's options, and checks each backend's limits; `spirv-val` validates the
//! SPIR-V and `glslangValidator` the GLSL (Debian's `spirv-tools` and `glslang-tools`,
//! which `tools/test.sh` installs). MSL and HLSL are translated only: no Metal or DirectX
//! compiler runs on Linux.

use std::path::{Path, PathBuf};
use std::process::Command;

use engine::kernels::{catalogue, Build};
use naga::back::{glsl, hlsl, msl, spv};
use naga::valid::{Capabilities, ValidationFlags, Validator};

/// What a backend allows a pipeline, as the engine asks of its adapters.
/// Metal: 31 buffer arguments per function (the uniform, the storage buffers, and the
/// buffer of runtime array sizes naga adds).
const METAL_BUFFERS: usize = 31;
/// Vulkan, DX12 and WebGPU's minimum storage buffers per stage, which wgpu's default limits
/// promise; GL's desktop minimum (4.3) is 8 too.
const STORAGE_PER_STAGE: usize = 8;

/// The module of `b`, validated with the capabilities its adapter has, its overrides
/// replaced by their values.
fn module(b: &Build) -> Result<(naga::Module, naga::valid::ModuleInfo), String> {
    let module =
        naga::front::wgsl::parse_str(&b.source).map_err(|e| e.emit_to_string(&b.source))?;
    let mut caps = Capabilities::default();
    if b.subgroup {
        caps |= Capabilities::SUBGROUP;
    }
    if b.f16 {
        caps |= Capabilities::SHADER_FLOAT16;
    }
    let info = Validator::new(ValidationFlags::all(), caps)
        .validate(&module)
        .map_err(|e| e.emit_to_string(&b.source))?;
    let mut constants = naga::back::PipelineConstants::default();
    for (name, value) in &b.overrides {
        constants.insert(name.to_string(), *value);
    }
    let stage = Some((naga::ShaderStage::Compute, b.entry));
    let (module, info) =
        naga::back::pipeline_constants::process_overrides(&module, &info, stage, &constants)
            .map_err(|e| format!("overrides: {e}"))?;
    Ok((module.into_owned(), info.into_owned()))
}

/// The SPIR-V of `b` as wgpu's Vulkan backend writes it for a Vulkan 1.1 device.
fn spirv(b: &Build, m: &naga::Module, info: &naga::valid::ModuleInfo) -> Result<Vec<u32>, String> {
    // Bindings map to themselves (group 0 is descriptor set 0), as the engine's layouts do.
    let options = spv::Options {
        lang_version: (1, 3),
        fake_missing_bindings: true,
        bounds_check_policies: naga::proc::BoundsCheckPolicies {
            index: naga::proc::BoundsCheckPolicy::Restrict,
            buffer: naga::proc::BoundsCheckPolicy::Restrict,
            ..Default::default()
        },
        ..Default::default()
    };
    let pipeline = spv::PipelineOptions {
        shader_stage: naga::ShaderStage::Compute,
        entry_point: b.entry.to_string(),
    };
    spv::write_vec(m, info, &options, Some(&pipeline)).map_err(|e| format!("{e}"))
}

/// The MSL of `b` for Metal 3 (subgroups need MSL 2.1, f16 2.0), with every buffer bound to
/// a slot as wgpu's Metal backend binds them.
fn metal(b: &Build, m: &naga::Module, info: &naga::valid::ModuleInfo) -> Result<String, String> {
    let mut resources = msl::EntryPointResources::default();
    let mut slot = 0u8;
    for (_, var) in m.global_variables.iter() {
        if let Some(binding) = var.binding {
            let mutable = var.space
                == naga::AddressSpace::Storage {
                    access: naga::StorageAccess::LOAD | naga::StorageAccess::STORE,
                };
            resources.resources.insert(
                binding,
                msl::BindTarget {
                    buffer: Some(slot),
                    mutable,
                    ..Default::default()
                },
            );
            slot += 1;
        }
    }
    resources.sizes_buffer = Some(slot);
    let buffers = slot as usize + 1;
    if buffers > METAL_BUFFERS {
        return Err(format!(
            "{buffers} buffer arguments, more than Metal's {METAL_BUFFERS}"
        ));
    }
    let options = msl::Options {
        lang_version: (3, 0),
        fake_missing_bindings: false,
        per_entry_point_map: [(b.entry.to_string(), resources)].into(),
        ..Default::default()
    };
    let pipeline = msl::PipelineOptions {
        entry_point: Some((naga::ShaderStage::Compute, b.entry.to_string())),
        ..Default::default()
    };
    msl::write_string(m, info, &options, &pipeline)
        .map(|(source, _)| source)
        .map_err(|e| format!("{e}"))
}

/// The HLSL of `b` for the shader model its features need: 6.2 for f16, 6.0 for wave
/// operations, 5.1 otherwise.
fn directx(b: &Build, m: &naga::Module, info: &naga::valid::ModuleInfo) -> Result<String, String> {
    let shader_model = match (b.f16, b.subgroup) {
        (true, _) => hlsl::ShaderModel::V6_2,
        (false, true) => hlsl::ShaderModel::V6_0,
        (false, false) => hlsl::ShaderModel::V5_1,
    };
    let options = hlsl::Options {
        shader_model,
        ..Default::default()
    };
    let pipeline = hlsl::PipelineOptions {
        entry_point: Some((naga::ShaderStage::Compute, b.entry.to_string())),
    };
    let mut out = String::new();
    hlsl::Writer::new(&mut out, &options, &pipeline)
        .write(m, info, None)
        .map_err(|e| format!("{e}"))?;
    Ok(out)
}

/// The GLSL of `b` for OpenGL ES 3.1, as wgpu's GL backend writes it, with every buffer
/// bound to its binding's index.
fn opengl(b: &Build, m: &naga::Module, info: &naga::valid::ModuleInfo) -> Result<String, String> {
    if b.storage > STORAGE_PER_STAGE {
        return Err(format!(
            "{} storage buffers, more than {STORAGE_PER_STAGE}",
            b.storage
        ));
    }
    let mut binding_map = glsl::BindingMap::default();
    for (_, var) in m.global_variables.iter() {
        if let Some(binding) = var.binding {
            binding_map.insert(binding, binding.binding as u8);
        }
    }
    let options = glsl::Options {
        version: glsl::Version::new_gles(310),
        binding_map,
        ..Default::default()
    };
    let pipeline = glsl::PipelineOptions {
        shader_stage: naga::ShaderStage::Compute,
        entry_point: b.entry.to_string(),
        multiview: None,
    };
    let mut out = String::new();
    let policies = naga::proc::BoundsCheckPolicies::default();
    glsl::Writer::new(&mut out, m, info, &options, &pipeline, policies)
        .and_then(|mut w| w.write())
        .map_err(|e| format!("{e}"))?;
    Ok(out)
}

/// Run a validator on `file`; its complaint, when it has one.
fn validate(tool: &str, args: &[&str], file: &Path) -> Result<(), String> {
    let out = Command::new(tool)
        .args(args)
        .arg(file)
        .output()
        .unwrap_or_else(|e| {
            panic!("{tool}: {e} (tools/test.sh installs spirv-tools and glslang-tools)")
        });
    match out.status.success() {
        true => Ok(()),
        false => Err(format!(
            "{tool}: {}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// Translate `b` for every backend (GL only where it can run: GL has no subgroups and no
/// f16) and validate what can be validated here; the problems, one line each.
fn check(b: &Build, dir: &Path, n: usize) -> Vec<String> {
    let (m, info) = match module(b) {
        Ok(m) => m,
        Err(e) => return vec![format!("WGSL: {e}")],
    };
    let mut problems = Vec::new();
    match spirv(b, &m, &info) {
        Ok(words) => {
            let file = dir.join(format!("{n}.spv"));
            std::fs::write(&file, bytemuck_words(&words)).unwrap();
            if let Err(e) = validate("spirv-val", &["--target-env", "vulkan1.1"], &file) {
                problems.push(format!("SPIR-V: {e}"));
            }
        }
        Err(e) => problems.push(format!("SPIR-V: {e}")),
    }
    if let Err(e) = metal(b, &m, &info) {
        problems.push(format!("MSL: {e}"));
    }
    if let Err(e) = directx(b, &m, &info) {
        problems.push(format!("HLSL: {e}"));
    }
    if !b.subgroup && !b.f16 {
        match opengl(b, &m, &info) {
            Ok(source) => {
                let file = dir.join(format!("{n}.comp"));
                std::fs::write(&file, source).unwrap();
                if let Err(e) = validate("glslangValidator", &["-l", "-S", "comp"], &file) {
                    problems.push(format!("GLSL: {e}"));
                }
            }
            Err(e) => problems.push(format!("GLSL: {e}")),
        }
    }
    problems
}

fn bytemuck_words(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("engine-translate-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn every_kernel_translates_for_every_backend() {
    let dir = tmp("all");
    let builds = catalogue();
    let count = |f: fn(&Build) -> bool| builds.iter().filter(|b| f(b)).count();
    eprintln!(
        "{} pipelines: {} with f16 operands, {} with subgroups",
        builds.len(),
        count(|b| b.f16),
        count(|b| b.subgroup)
    );
    assert!(count(|b| b.f16) > 0 && count(|b| b.subgroup) > 0);
    eprintln!("{} for GL (neither)", count(|b| !b.f16 && !b.subgroup));
    // Two threads: the validators are separate processes.
    let failures: Vec<String> = std::thread::scope(|s| {
        let halves: Vec<_> = (0..2)
            .map(|half| {
                let (builds, dir) = (&builds, &dir);
                s.spawn(move || {
                    let mut failures = Vec::new();
                    for (n, b) in builds.iter().enumerate().skip(half).step_by(2) {
                        failures.extend(
                            check(b, dir, n)
                                .into_iter()
                                .map(|p| format!("{}: {p}", b.name)),
                        );
                    }
                    failures
                })
            })
            .collect();
        halves.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        failures.is_empty(),
        "{} problems, the first: {}",
        failures.len(),
        failures
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A kernel planted to break one backend's rule: 32 storage buffers are within what SPIR-V,
/// HLSL and WGSL allow, but with the uniform and the sizes buffer they are more buffer
/// arguments than Metal takes (and more storage buffers than GL promises).
#[test]
fn a_kernel_that_breaks_a_backends_rule_is_caught() {
    let dir = tmp("planted");
    let bindings: String = (1..=32)
        .map(|i| format!("@group(0) @binding({i}) var<storage, read_write> b{i}: array<f32>;\n"))
        .collect();
    let body: String = (1..=32)
        .map(|i| format!("    b{i}[id.x] = 1.0;\n"))
        .collect();
    let source = format!(
        "struct Params {{ n: u32 }}\n@group(0) @binding(0) var<uniform> p: Params;\n{bindings}\
         @compute @workgroup_size(8)\nfn main(@builtin(global_invocation_id) id: vec3<u32>) {{\n{body}}}\n"
    );
    let planted = Build {
        name: "planted.wgsl::main".into(),
        source,
        entry: "main",
        overrides: vec![],
        storage: 32,
        subgroup: false,
        f16: false,
    };
    let problems = check(&planted, &dir, 0);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert_eq!(
        problems[0],
        "MSL: 34 buffer arguments, more than Metal's 31"
    );
    assert_eq!(problems[1], "GLSL: 32 storage buffers, more than 8");
}
