//! The row kernels' two builds: subgroup reductions at subgroup sizes 4 and 8 (lavapipe's
//! `LP_NATIVE_VECTOR_WIDTH=128` and `256`) and tree reductions on a device without
//! subgroups, at every workgroup width, against the CPU reference. Lavapipe reads the
//! vector width once, so each setting runs in a child process of this test binary.

mod common;
use common::check_row_kernels;
use engine::{Device, DeviceOptions, Features};

#[test]
fn subgroup_reductions_need_the_feature() {
    let e = Device::with_options(DeviceOptions {
        subgroup_reductions: Some(true),
        without: Features {
            subgroup: true,
            ..Features::default()
        },
        ..Default::default()
    })
    .unwrap_err();
    assert!(e.to_string().contains("has no subgroups"), "{e}");
}

#[test]
fn row_kernels_at_subgroup_sizes_4_and_8_and_without_subgroups() {
    let info = Device::shared().unwrap().info().clone();
    if !info.features.subgroup {
        // GL has no subgroups: the tree reductions, which every device falls back on.
        eprintln!("{}: no subgroups; checking the tree reductions", info.name);
        std::env::set_var("ROWS_WITH_SUBGROUPS", "0");
        row_kernels_in_this_process();
        return;
    }
    if !info.name.contains("llvmpipe") {
        // Other drivers fix their subgroup size; the in-process check still runs below.
        eprintln!(
            "{}: the subgroup width cannot be set; checking it as it is",
            info.name
        );
        row_kernels_in_this_process();
        return;
    }
    for (width, subgroups, size) in [("128", true, 4), ("256", true, 8), ("256", false, 8)] {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "row_kernels_in_this_process",
                "--ignored",
                "--nocapture",
            ])
            .env("LP_NATIVE_VECTOR_WIDTH", width)
            .env("ROWS_WITH_SUBGROUPS", if subgroups { "1" } else { "0" })
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "width {width}, subgroups {subgroups}: {text}"
        );
        assert!(text.contains("1 passed"), "the check ran: {text}");
        assert!(
            text.contains(&format!("subgroups {size}-{size}")),
            "width {width} gives subgroups of {size}: {text}"
        );
    }
}

#[test]
#[ignore = "run by row_kernels_at_subgroup_sizes_4_and_8_and_without_subgroups"]
fn row_kernels_in_this_process() {
    let subgroups = std::env::var("ROWS_WITH_SUBGROUPS").map_or(true, |v| v == "1");
    for width in [8u32, 16, 32, 64] {
        let d = Device::with_options(DeviceOptions {
            subgroup_reductions: Some(subgroups),
            row_workgroup: Some(width),
            ..Default::default()
        })
        .unwrap();
        if width == 8 {
            println!("{}", d.info());
        }
        assert_eq!(d.row_workgroup(), width);
        assert_eq!(d.subgroup_reductions(), subgroups);
        check_row_kernels(&d, &format!("width {width}, subgroups {subgroups}"));
    }
}
