//! The number of visible patches against Python's `int(L * (1 - mask_ratio))` (fixture from
//! tools/fixtures/gen_len_keep.py), with the ratios read from JSON as a config.json carries
//! them, and through the config and the command line.

use mae::config::len_keep;
use serde_json::Value;

fn fixture() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/len_keep.json"
    ))
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn len_keep_is_pythons_for_every_ratio_and_patch_count() {
    let f = fixture();
    let counts: Vec<usize> = f["num_patches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let cases = f["cases"].as_array().unwrap();
    assert!(cases.len() > 100 && counts.len() > 100);
    let mut wrong = Vec::new();
    for case in cases {
        let ratio = case["mask_ratio"].as_f64().unwrap();
        assert_eq!(
            ratio.to_bits(),
            case["bits"].as_u64().unwrap(),
            "{ratio} is not the double Python wrote"
        );
        for (l, want) in counts.iter().zip(case["len_keep"].as_array().unwrap()) {
            let got = len_keep(*l, ratio);
            if got as u64 != want.as_u64().unwrap() {
                wrong.push(format!("L {l} ratio {ratio}: {got} vs Python {want}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} differ: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(10)]
    );
}

#[test]
fn the_config_keeps_pythons_count_at_the_rounding_edges() {
    // 25 patches at 0.6: Python keeps 10 (an f32 ratio keeps 9); 196 at 0.3 keeps 137.
    for (image, patch, text, want) in [
        (20, 4, "0.6", 10),
        (224, 16, "0.3", 137),
        (20, 4, "0.30000000000000004", 17),
        (40, 4, "0.9", 9),
    ] {
        let json: Value = serde_json::from_str(&format!(
            r#"{{"image_size": {image}, "patch_size": {patch}, "hidden_size": 8,
                "num_attention_heads": 2, "decoder_hidden_size": 8,
                "decoder_num_attention_heads": 2, "intermediate_size": 32,
                "decoder_intermediate_size": 32, "mask_ratio": {text}}}"#
        ))
        .unwrap();
        let config = mae::hf::config_from_json(&json).unwrap();
        assert_eq!(config.len_keep(), want, "{image}/{patch} at {text}");
        assert_eq!(config.mask_ratio, text.parse::<f64>().unwrap());
    }
}
