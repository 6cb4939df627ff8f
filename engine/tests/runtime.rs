//! The runtime: batched submission, buffer pool reuse, pipeline cache, device report.
//! Each test uses a private device so the counters it reads are its own.

use engine::tune::Autotune;
use engine::{Device, DeviceOptions, Features, Tensor, DISPATCHES_PER_BATCH};

#[test]
fn ops_are_recorded_not_submitted_one_by_one() {
    let d = Device::new().unwrap();
    let x = Tensor::ones(&d, &[33]).unwrap();
    let before = d.submission_count();
    let mut y = x.clone();
    for _ in 0..100 {
        y = y.mul_scalar(1.01).unwrap();
    }
    assert_eq!(
        d.submission_count(),
        before,
        "no submission while recording"
    );
    let v = y.to_vec().unwrap();
    assert_eq!(
        d.submission_count(),
        before + 1,
        "one submission at the read-back"
    );
    assert!((v[0] - 1.01f32.powi(100)).abs() < 1e-3);
    // A long chain is cut into batches, still far fewer submissions than ops.
    let n = 3 * DISPATCHES_PER_BATCH + 5;
    for _ in 0..n {
        y = y.add_scalar(1.0).unwrap();
    }
    y.to_vec().unwrap();
    assert_eq!(d.submission_count(), before + 1 + 3 + 1);
}

#[test]
fn steady_loop_reuses_buffers_and_pipelines() {
    let d = Device::new().unwrap();
    let x = Tensor::rand(&d, &[16, 33], 1).unwrap();
    let w = Tensor::rand(&d, &[33, 7], 2).unwrap();
    let step = || {
        let h = x.matmul(&w).unwrap().gelu().unwrap();
        h.softmax().unwrap().sum_all().unwrap().item().unwrap()
    };
    let first = step();
    let stats = d.pool_stats();
    let pipelines = d.pipeline_count();
    for _ in 0..20 {
        assert_eq!(step(), first);
    }
    let after = d.pool_stats();
    assert_eq!(
        after.allocations, stats.allocations,
        "no fresh buffers in a steady loop"
    );
    assert!(after.reuses > stats.reuses);
    assert_eq!(
        after.live_bytes, stats.live_bytes,
        "temporaries return to the pool"
    );
    assert_eq!(
        d.pipeline_count(),
        pipelines,
        "each specialisation compiled once"
    );
    assert!(after.peak_bytes >= after.live_bytes);
    drop((x, w));
    assert_eq!(d.pool_stats().live_bytes, 0);
    d.trim_pool();
    assert_eq!(d.pool_stats().cached_bytes, 0);
}

#[test]
fn a_reused_buffer_is_not_overwritten_before_pending_reads() {
    // `a` feeds a recorded op, is dropped (its buffer returns to the pool) and the buffer is
    // immediately refilled by an upload: the recorded op must still see the old values.
    let d = Device::new().unwrap();
    let a = Tensor::from_slice(&d, &[1.0; 64], &[64]).unwrap();
    let b = a.mul_scalar(2.0).unwrap();
    drop(a);
    let c = Tensor::from_slice(&d, &[5.0; 64], &[64]).unwrap();
    assert_eq!(b.to_vec().unwrap(), vec![2.0; 64]);
    assert_eq!(c.to_vec().unwrap(), vec![5.0; 64]);
}

#[test]
fn device_reports_adapter_and_limits() {
    let d = Device::new().unwrap();
    let info = d.info();
    assert!(!info.name.is_empty() && !info.backend.is_empty());
    assert!(info.max_storage_buffer_binding_size >= 128 << 20);
    let line = info.to_string();
    assert!(line.contains(&info.name) && line.contains("max storage binding"));
    assert!(line.contains(&format!("features: {}", info.features)));
    d.synchronize().unwrap();
}

#[test]
fn buffers_stay_within_a_low_binding_limit() {
    // A limit that is no size class: 1,000,000 bytes round up to the 1 MiB class.
    let limit = 1_000_100;
    let d = Device::with_options(DeviceOptions {
        binding_limit: Some(limit),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(d.info().max_storage_buffer_binding_size, limit);
    let n = 250_000;
    let x = Tensor::full(&d, &[n], 1.5).unwrap();
    let y = x
        .add(&x)
        .unwrap()
        .mul_scalar(2.0)
        .unwrap()
        .sum_all()
        .unwrap();
    assert_eq!(y.item().unwrap(), 6.0 * n as f32);
    // One element more than the limit holds: an error naming the limit, not a panic.
    let e = Tensor::zeros(&d, &[250_026]).unwrap_err();
    assert!(
        matches!(
            e,
            engine::Error::TooLarge {
                limit: 1_000_100,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn the_profiler_times_every_dispatch_without_a_submission_each() {
    // With the adapter's timestamps, and as on an adapter without them.
    // Kernel choice fixed, so that no tuning run is counted (ENGINE_AUTOTUNE may say on).
    let options = |without| DeviceOptions {
        without,
        autotune: Some(Autotune::Off),
        ..Default::default()
    };
    let plain = Device::with_options(options(Features::all())).unwrap();
    assert_eq!(plain.info().features, Features::default());
    for d in [
        Device::with_options(options(Features::default())).unwrap(),
        plain,
    ] {
        profile_a_loop(d);
    }
}

fn profile_a_loop(d: Device) {
    d.set_profiling(true);
    let clock = d.profile_clock().unwrap();
    assert_eq!(
        clock == engine::Clock::GpuTimestamps,
        d.info().features.timestamp_query
    );
    let x = Tensor::rand(&d, &[64, 64], 1).unwrap();
    let before = d.submission_count();
    let mut y = x.clone();
    for _ in 0..20 {
        y = y.matmul(&x).unwrap().mul_scalar(0.01).unwrap();
    }
    y.to_vec().unwrap();
    let submissions = d.submission_count() - before;
    let times = d.profile();
    let find = |name: &str| times.iter().find(|t| t.kernel.contains(name)).unwrap();
    assert_eq!(find("matmul.wgsl").dispatches, 20, "{times:?}");
    assert_eq!(find("elementwise.wgsl::unary").dispatches, 20, "{times:?}");
    assert!(times.iter().all(|t| t.seconds > 0.0), "{times:?}");
    if clock == engine::Clock::GpuTimestamps {
        assert_eq!(submissions, 1, "the batch went whole");
    } else {
        assert!(submissions >= 40);
    }
    d.set_profiling(false);
    assert!(d.profile().is_empty() && d.profile_clock().is_none());
}
