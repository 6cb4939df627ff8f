//! The root crate re-exports the stack; a smoke test that the crates link together.

use mae_stack::engine::{Device, Tensor};

#[test]
fn facade_reaches_the_engine() {
    let dev = Device::shared().expect("a wgpu adapter (apt-get install mesa-vulkan-drivers)");
    let x = Tensor::from_slice(&dev, &[1.0, 2.0, 3.0], &[3]).unwrap();
    assert_eq!(x.mul(&x).unwrap().sum_all().unwrap().item().unwrap(), 14.0);
}
