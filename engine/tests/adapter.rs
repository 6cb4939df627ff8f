//! Adapter choice through wgpu's environment variables, and the error when there is none.
//! One test function, since it changes the process environment.

use engine::{Device, Error};

#[test]
fn environment_picks_the_adapter_and_absence_says_what_to_install() {
    let name = Device::new().unwrap().info().name.clone();

    std::env::set_var("WGPU_ADAPTER_NAME", &name[..name.len().min(6)]);
    assert_eq!(Device::new().unwrap().info().name, name);

    std::env::set_var("WGPU_ADAPTER_NAME", "no such adapter");
    let e = Device::new().unwrap_err();
    assert!(matches!(e, Error::NoAdapter(_)), "{e}");
    assert!(e.to_string().contains("matches none of"), "{e}");
    std::env::remove_var("WGPU_ADAPTER_NAME");

    // A backend this machine does not have: no adapter at all.
    let missing = if cfg!(target_os = "linux") {
        "dx12"
    } else {
        "gl"
    };
    std::env::set_var("WGPU_BACKEND", missing);
    let e = Device::new().unwrap_err();
    assert!(matches!(e, Error::NoAdapter(_)), "{e}");
    assert!(
        e.to_string()
            .contains("apt-get install mesa-vulkan-drivers"),
        "{e}"
    );
    std::env::remove_var("WGPU_BACKEND");
}
