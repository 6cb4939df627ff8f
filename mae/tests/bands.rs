//! Images as they are: TIFF of any number of bands and sample type, interleaved or planar,
//! 16-bit PNG; pretraining on 4- and 13-band folders with their pictures and checkpoints; a
//! file whose bands differ skipped by name; normalisation from the data or given.

mod common;
use common::tiff::{tiff, Samples};
use common::*;
use mae::data::{decode_bytes, Image};

/// `(H, W, bands)` values to `(bands, H, W)`.
fn planes<T: Copy>(hwc: &[T], bands: usize) -> Vec<T> {
    (0..bands)
        .flat_map(|c| hwc.iter().skip(c).step_by(bands).copied())
        .collect()
}

fn decoded(bytes: &[u8], channels: usize) -> Image {
    decode_bytes("test.tif", bytes, channels).unwrap()
}

#[test]
fn tiff_samples_are_scaled_by_their_type_and_floats_kept() {
    let (w, h) = (3u32, 2u32);
    let hwc16: Vec<u16> = (0..w * h * 4).map(|i| (i * 2731 % 65536) as u16).collect();
    let want: Vec<f32> = planes(&hwc16, 4)
        .iter()
        .map(|&v| v as f32 / 65535.0)
        .collect();
    let img = decoded(&tiff(w, h, 4, &Samples::U16(hwc16.clone()), false), 4);
    assert_eq!((img.channels, img.height, img.width), (4, 2, 3));
    assert_eq!(img.data, want);
    assert!(img.bounded);
    // The same samples stored band after band.
    let planar = Samples::U16(planes(&hwc16, 4));
    assert_eq!(decoded(&tiff(w, h, 4, &planar, true), 4), img);

    let hwc8: Vec<u8> = (0..w * h * 13).map(|i| (i * 37 % 256) as u8).collect();
    let img = decoded(&tiff(w, h, 13, &Samples::U8(hwc8.clone()), false), 13);
    let want: Vec<f32> = planes(&hwc8, 13)
        .iter()
        .map(|&v| v as f32 / 255.0)
        .collect();
    assert_eq!(img.data, want);

    let floats = vec![2.5f32, -1.0, 0.25, 7.0, 0.0, 1e-3];
    let img = decoded(&tiff(w, h, 1, &Samples::F32(floats.clone()), false), 1);
    assert_eq!(img.data, floats, "float samples are kept as they are");
    assert!(!img.bounded);
    // Resampling clamps bounded values only.
    let big = mae::data::resize_bicubic(&img, (0, 0, 2, 3), 4);
    assert!(big.data.iter().any(|&v| v > 1.0) && big.data.iter().any(|&v| v < 0.0));
}

#[test]
fn gray_and_rgb_convert_and_other_band_counts_are_refused_by_name() {
    let rgb: Vec<u8> = vec![255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30];
    let bytes = tiff(2, 2, 3, &Samples::U8(rgb.clone()), false);
    let gray = decoded(&bytes, 1);
    let luma =
        |p: &[u8]| (0.2126 * p[0] as f32 + 0.7152 * p[1] as f32 + 0.0722 * p[2] as f32) / 255.0;
    let want: Vec<f32> = rgb.chunks(3).map(luma).collect();
    assert!(
        gray.data
            .iter()
            .zip(&want)
            .all(|(a, b)| (a - b).abs() < 1e-6),
        "{:?}",
        gray.data
    );
    let one = tiff(2, 2, 1, &Samples::U8(vec![0, 51, 102, 255]), false);
    assert_eq!(decoded(&one, 3).data, [0.0, 0.2, 0.4, 1.0].repeat(3));
    let four = tiff(2, 2, 4, &Samples::U8(vec![0; 16]), false);
    let e = decode_bytes("odd.tif", &four, 3).unwrap_err().to_string();
    assert_eq!(e, "odd.tif: 4 bands, where the model takes 3 channels");
    let e = decode_bytes("bad.tif", &four[..60], 4)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("bad.tif: "), "{e}");
}

#[test]
fn sixteen_bit_png_is_scaled_by_65535() {
    let values: Vec<u16> = vec![0, 1, 32768, 65535];
    let png = image::ImageBuffer::<image::Luma<u16>, _>::from_raw(2, 2, values.clone()).unwrap();
    let mut bytes = Vec::new();
    png.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .unwrap();
    let img = decode_bytes("x.png", &bytes, 1).unwrap();
    let want: Vec<f32> = values.iter().map(|&v| v as f32 / 65535.0).collect();
    assert_eq!(img.data, want);
}

/// A folder of `n` images `side x side` of `bands` 16-bit bands, each band a different
/// gradient, and their samples as `(bands, H, W)` values in `[0, 1]`.
fn band_folder(dir: &std::path::Path, n: usize, bands: u16, side: u32) -> Vec<Vec<f64>> {
    std::fs::create_dir_all(dir).unwrap();
    (0..n)
        .map(|i| {
            let hwc: Vec<u16> = (0..side * side)
                .flat_map(|p| {
                    let (y, x) = (p / side, p % side);
                    (0..bands as u32).map(move |b| {
                        ((x * (b + 1) * 97 + y * 131 + i as u32 * 4099 + b * 1000) % 65536) as u16
                    })
                })
                .collect();
            let bytes = tiff(side, side, bands, &Samples::U16(hwc.clone()), false);
            std::fs::write(dir.join(format!("img{i:03}.tif")), bytes).unwrap();
            planes(&hwc, bands as usize)
                .iter()
                .map(|&v| v as f64 / 65535.0)
                .collect()
        })
        .collect()
}

fn json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn a_13_band_16_bit_folder_pretrains_draws_and_skips_a_file_of_other_bands() {
    let dir = tmp("bands", "thirteen");
    let data = dir.join("data");
    band_folder(&data, 20, 13, 32);
    let odd = data.join("a_odd.tif"); // sorts first, so the limit keeps it
    std::fs::write(
        &odd,
        tiff(32, 32, 3, &Samples::U8(vec![9; 32 * 32 * 3]), false),
    )
    .unwrap();
    let out = dir.join("out");
    let args = run_args(
        "pretrain",
        std::path::Path::new("mae_tiny_32_patch4"),
        &data,
        &out,
        &[
            "--channels",
            "13",
            "--limit",
            "16",
            "--batch-size",
            "8",
            "--knn-every",
            "0",
            "--bands",
            "4,3,2",
        ],
    );
    let o = mae_with(&args);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "warning: skipping {}: 3 bands, where the model takes 13 channels",
            odd.display()
        )),
        "{err}"
    );
    let checkpoint = out.join("checkpoint-1");
    assert_eq!(json(&checkpoint.join("config.json"))["num_channels"], 13);
    let pre = json(&checkpoint.join("preprocessor_config.json"));
    assert_eq!(pre["image_mean"].as_array().unwrap().len(), 13);
    let picture = image::open(out.join("reconstruction.png"))
        .unwrap()
        .to_rgb8();
    let colours: std::collections::HashSet<_> = picture.pixels().map(|p| p.0).collect();
    assert!(
        colours.len() > 50,
        "a picture, not a blank: {} colours",
        colours.len()
    );
    // The checkpoint draws again, one band as gray, and refuses a band it does not have.
    let pic = dir.join("gray.png");
    let draw = |bands: &str| {
        let (model, data, out) = (checkpoint.to_str(), data.to_str(), pic.to_str());
        let given = [
            "--model",
            model.unwrap(),
            "--data",
            data.unwrap(),
            "--out",
            out.unwrap(),
        ];
        let mut args = vec!["visualize", "--count", "2", "--bands", bands];
        args.extend(given);
        mae(&args)
    };
    let o = draw("13");
    assert!(o.status.success(), "{}", stderr(&o));
    let o = draw("14");
    assert_one_line_error(&o, "--bands [14]: one band (gray) or three");
}

#[test]
fn normalisation_comes_from_the_data_or_is_given_and_a_band_count_the_data_lacks_is_refused() {
    let dir = tmp("bands", "auto");
    let data = dir.join("data");
    let images = band_folder(&data, 6, 4, 32);
    let out = dir.join("auto");
    let common = [
        "--channels",
        "4",
        "--limit",
        "4",
        "--batch-size",
        "4",
        "--knn-every",
        "0",
    ];
    let model = std::path::Path::new("mae_tiny_32_patch4");
    let mut extra = common.to_vec();
    extra.extend(["--normalize", "auto"]);
    let o = mae_with(&run_args("pretrain", model, &data, &out, &extra));
    assert!(o.status.success(), "{}", stderr(&o));
    let pre = json(&out.join("checkpoint-1/preprocessor_config.json"));
    let plane = 32 * 32;
    for band in 0..4 {
        let values: Vec<f64> = images
            .iter()
            .flat_map(|img| img[band * plane..(band + 1) * plane].to_vec())
            .collect();
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        let std =
            (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64).sqrt();
        let (m, s) = (
            pre["image_mean"][band].as_f64().unwrap(),
            pre["image_std"][band].as_f64().unwrap(),
        );
        assert!(
            (m - mean).abs() < 1e-6 && (s - std).abs() < 1e-6,
            "band {band}: {m} {s} vs {mean} {std}"
        );
    }
    // Given values are kept as given.
    let out = dir.join("given");
    let mut extra = common.to_vec();
    extra.extend(["--mean", "0.1,0.2,0.3,0.4", "--std", "1,2,3,4"]);
    let o = mae_with(&run_args("pretrain", model, &data, &out, &extra));
    assert!(o.status.success(), "{}", stderr(&o));
    let pre = json(&out.join("checkpoint-1/preprocessor_config.json"));
    let means: Vec<f64> = pre["image_mean"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert!(
        means
            .iter()
            .zip([0.1, 0.2, 0.3, 0.4])
            .all(|(a, b)| (a - b).abs() < 1e-7),
        "{means:?}"
    );
    let mut extra = common.to_vec();
    extra.extend(["--mean", "0.1,0.2", "--std", "1,2"]);
    let o = mae_with(&run_args(
        "pretrain",
        model,
        &data,
        &dir.join("short"),
        &extra,
    ));
    assert_one_line_error(
        &o,
        "--mean and --std need one value per channel (4), got 2 and 2",
    );
    // The preset's 3 channels from 4-band images: refused at start, saying what would do.
    let o = mae_with(&run_args(
        "pretrain",
        model,
        &data,
        &dir.join("three"),
        &common[2..],
    ));
    assert_one_line_error(&o, "the model takes 3 channels; these images give 4 (a model of 4 channels reads them: --channels 4)");
}

#[test]
fn a_4_band_labelled_folder_pretrains_probes_and_fine_tunes() {
    let dir = tmp("bands", "labelled");
    let data = dir.join("data");
    for (split, n) in [("train", 16), ("val", 8)] {
        for class in ["a", "b"] {
            band_folder(&data.join(split).join(class), n / 2, 4, 32);
        }
    }
    let out = dir.join("pretrain");
    let model = std::path::Path::new("mae_tiny_32_patch4");
    let o = mae_with(&run_args(
        "pretrain",
        model,
        &data,
        &out,
        &["--channels", "4", "--batch-size", "8"],
    ));
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("k-NN top-1"),
        "the monitor runs on 4 bands: {err}"
    );
    let checkpoint = out.join("checkpoint-1");
    let o = mae_with(&run_args(
        "linprobe",
        &checkpoint,
        &data,
        &dir.join("probe"),
        &[
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--cache",
            dir.join("cache").to_str().unwrap(),
        ],
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    let o = mae_with(&run_args(
        "finetune",
        &checkpoint,
        &data,
        &dir.join("ft"),
        &["--epochs", "1", "--batch-size", "8"],
    ));
    assert!(o.status.success(), "{}", stderr(&o));
}
