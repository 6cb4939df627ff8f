//! Kernel choice per shape bucket: tuning times the candidates once and writes the choice
//! to the cache file; a later device reads it back instead of tuning; a choice changes
//! results only by rounding; a corrupt cache is ignored.

mod common;
use common::*;
use engine::tune::Autotune;
use engine::{Device, DeviceOptions, Tensor};

fn device(mode: Autotune, cache: &std::path::Path) -> Device {
    Device::with_options(DeviceOptions {
        autotune: Some(mode),
        tune_cache: Some(cache.to_path_buf()),
        ..Default::default()
    })
    .unwrap()
}

fn product(dev: &Device) -> Vec<f32> {
    let a = Tensor::from_slice(dev, &data(96 * 80, 1), &[96, 80]).unwrap();
    let b = Tensor::from_slice(dev, &data(80 * 72, 2), &[80, 72]).unwrap();
    a.matmul(&b).unwrap().to_vec().unwrap()
}

#[test]
fn a_tuned_choice_is_cached_and_read_back() {
    let dir = std::env::temp_dir().join(format!("engine-autotune-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cache = dir.join("autotune.json");

    let plain = device(Autotune::Off, &cache);
    let want = product(&plain);
    assert!(!cache.exists(), "Off neither reads nor writes the cache");

    let started = std::time::Instant::now();
    let tuner = device(Autotune::On, &cache);
    let tuned = product(&tuner);
    let seconds = started.elapsed().as_secs_f64();
    assert_close(&tuned, &want, 1e-4, 1e-5, "tuned against default kernel");
    let choices = tuner.matmul_choices();
    assert_eq!(choices.len(), 1, "{choices:?}");
    let (bucket, kernel) = &choices[0];
    assert!(bucket.contains("m=2^7 n=2^7 k=2^7"), "{bucket}");
    // The budget is 2 s of timing; compiling the candidates comes on top on lavapipe.
    assert!(seconds < 60.0, "tuning took {seconds} s");

    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cache).unwrap()).unwrap();
    let entries = file.as_object().unwrap();
    assert_eq!(entries.len(), 1, "one device");
    let (device_key, choices_of_device) = entries.iter().next().unwrap();
    assert!(device_key.contains(&tuner.info().name) && device_key.contains("kernels "));
    assert_eq!(choices_of_device[bucket.as_str()], kernel.as_str());

    // A new device in Cache mode takes the choice without timing anything.
    let reader = device(Autotune::Cache, &cache);
    let read = product(&reader);
    assert_eq!(reader.matmul_choices(), choices);
    assert_eq!(read, tuned, "the same kernel gives the same bits");

    // A corrupt cache is ignored: the default kernel, and the file is left alone.
    std::fs::write(&cache, "{ not json").unwrap();
    let fallback = device(Autotune::Cache, &cache);
    assert_eq!(product(&fallback), want);
    assert_eq!(std::fs::read_to_string(&cache).unwrap(), "{ not json");
}
