//! What an adapter lacks (GL has no subgroups and no f16; an adapter may have no timestamp
//! queries) the engine falls back on or refuses in one line. This runs on whatever
//! `WGPU_BACKEND` picks: CI runs it on Vulkan and on GL.

mod common;
use common::assert_close;
use engine::{Clock, Device, Tensor};

#[test]
fn what_the_adapter_lacks_is_fallen_back_on_or_refused() {
    let d = Device::new().unwrap();
    let info = d.info().clone();
    eprintln!(
        "{} ({}): features {}",
        info.name, info.backend, info.features
    );

    // Subgroups: without them the row kernels reduce through workgroup memory.
    assert_eq!(
        d.subgroup_reductions(),
        info.features.subgroup && !info.is_software()
    );
    let x = Tensor::from_slice(&d, &[1.0, 2.0, 3.0, 4.0], &[2, 2]).unwrap();
    let e = (1f32).exp();
    let want = [1.0 / (1.0 + e), e / (1.0 + e)];
    assert_close(
        &x.softmax().unwrap().to_vec().unwrap(),
        &[want, want].concat(),
        1e-6,
        1e-6,
        "softmax",
    );

    // f16: without it the casts (and so mixed precision) are refused in one line.
    match (info.features.shader_f16, x.to_half()) {
        (true, r) => assert_eq!(
            r.unwrap().to_single().unwrap().to_vec().unwrap(),
            [1.0, 2.0, 3.0, 4.0]
        ),
        (false, r) => assert_eq!(
            r.unwrap_err().to_string(),
            "to_half: needs the adapter feature SHADER_F16, which this adapter does not offer"
        ),
    }

    // Timestamps: without them the profiler times each dispatch alone on the wall clock.
    d.set_profiling(true);
    x.add(&x).unwrap().to_vec().unwrap();
    let clock = match info.features.timestamp_query {
        true => Clock::GpuTimestamps,
        false => Clock::WallPerDispatch,
    };
    assert_eq!(d.profile_clock(), Some(clock));
    assert!(!d.profile().is_empty());
}
