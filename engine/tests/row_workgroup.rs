//! The row kernels at every workgroup width: GPUs run them 64 wide, lavapipe 8 wide, so
//! this process forces the other widths through `ENGINE_ROW_WORKGROUP` and checks them
//! against the CPU reference here as well.

mod common;
use common::check_row_kernels;
use engine::{Device, Error};

#[test]
fn row_kernels_agree_at_every_width() {
    for width in [16u32, 32, 64] {
        std::env::set_var("ENGINE_ROW_WORKGROUP", width.to_string());
        let d = Device::new().unwrap();
        assert_eq!(d.row_workgroup(), width);
        check_row_kernels(&d, &format!("width {width}"));
    }
    std::env::set_var("ENGINE_ROW_WORKGROUP", "12");
    let e = Device::new().unwrap_err();
    assert!(
        matches!(
            e,
            Error::Setting {
                name: "ENGINE_ROW_WORKGROUP",
                ..
            }
        ) && e.to_string() == "ENGINE_ROW_WORKGROUP=\"12\": expected 8, 16, 32 or 64",
        "{e}"
    );
    std::env::remove_var("ENGINE_ROW_WORKGROUP");
}
