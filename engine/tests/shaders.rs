//! Every WGSL file is parsed and validated with naga (as wgpu does), without a device, and
//! every uniform `Params` struct is checked field by field against its Rust twin.

use std::collections::HashSet;

use engine::kernels::{half_source, ALL_SHADERS, HALF_OPERAND_SHADERS, HELPER_FILES};
use engine::params::ALL_UNIFORMS;

/// Parse and validate as wgpu does; subgroup operations only in the row kernels' subgroup
/// builds (`rows_subgroup.wgsl`), which are compiled only where the adapter has them.
fn parse(source: &str, file: &str) -> (naga::Module, naga::valid::ModuleInfo) {
    let module = naga::front::wgsl::parse_str(source)
        .unwrap_or_else(|e| panic!("{file}: {}", e.emit_to_string(source)));
    let mut caps = naga::valid::Capabilities::default();
    if source.contains(include_str!("../../shaders/rows_subgroup.wgsl")) {
        caps |= naga::valid::Capabilities::SUBGROUP;
    }
    // f16 only in the builds that enable it, which need the adapter's SHADER_F16.
    if source.contains("enable f16;") {
        caps |= naga::valid::Capabilities::SHADER_FLOAT16;
    }
    let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
        .validate(&module)
        .unwrap_or_else(|e| panic!("{file}: {}", e.emit_to_string(source)));
    (module, info)
}

#[test]
fn every_wgsl_file_is_registered_and_valid() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../shaders");
    let on_disk: HashSet<String> = std::fs::read_dir(dir)
        .expect("shaders/ exists")
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".wgsl"))
        .collect();
    let registered: HashSet<String> = ALL_SHADERS
        .iter()
        .map(|s| s.file.to_string())
        .chain(HELPER_FILES.iter().map(|s| s.to_string()))
        .collect();
    assert_eq!(
        on_disk, registered,
        "shaders/ and kernels::ALL_SHADERS disagree"
    );
    for shader in ALL_SHADERS {
        parse(shader.source, shader.file);
    }
    for shader in HALF_OPERAND_SHADERS {
        parse(&half_source(shader.source), shader.file);
    }
}

#[test]
fn uniform_twins_match_the_shaders() {
    let mut checked = 0;
    for twin in ALL_UNIFORMS {
        for file in twin.shaders {
            let shader = ALL_SHADERS
                .iter()
                .find(|s| s.file == *file)
                .expect("registered shader");
            let (module, _) = parse(shader.source, file);
            let mut layouter = naga::proc::Layouter::default();
            layouter.update(module.to_ctx()).unwrap();
            let (_, var) = module
                .global_variables
                .iter()
                .find(|(_, v)| v.space == naga::AddressSpace::Uniform)
                .unwrap_or_else(|| panic!("{file} has no uniform"));
            let ty = &module.types[var.ty];
            let naga::TypeInner::Struct { members, span } = &ty.inner else {
                panic!("{file}: uniform is not a struct");
            };
            assert_eq!(
                *span as usize, twin.size,
                "{file}: size of {} differs",
                twin.name
            );
            let shader_fields: Vec<(String, usize)> = members
                .iter()
                .map(|m| (m.name.clone().unwrap(), m.offset as usize))
                .collect();
            let rust_fields: Vec<(String, usize)> = twin
                .fields
                .iter()
                .map(|(n, o)| (n.to_string(), *o))
                .collect();
            assert_eq!(
                shader_fields, rust_fields,
                "{file}: fields of {} differ",
                twin.name
            );
            checked += 1;
        }
    }
    // Every shader file with a uniform has a twin (some files are built twice).
    let files: HashSet<&str> = ALL_SHADERS.iter().map(|s| s.file).collect();
    assert_eq!(checked, files.len());
}

#[test]
fn every_tiled_matmul_variant_is_valid() {
    let mut names = HashSet::new();
    for tile in engine::tune::Tile::all() {
        parse(&tile.source(), &tile.name());
        assert!(
            names.insert(tile.name()),
            "two variants named {}",
            tile.name()
        );
        assert_eq!(engine::tune::Tile::parse(&tile.name()), Some(tile));
    }
    assert_eq!(names.len(), 4 * engine::tune::tile::CANDIDATES.len());
}

#[test]
fn a_broken_shader_is_caught() {
    let bad = "@compute @workgroup_size(64) fn main() { let x: f32 = 1u; }";
    let module = naga::front::wgsl::parse_str(bad);
    assert!(
        module.is_err()
            || naga::valid::Validator::new(
                naga::valid::ValidationFlags::all(),
                naga::valid::Capabilities::default()
            )
            .validate(&module.unwrap())
            .is_err()
    );
}
