//! Hugging Face interop: `ViTMAEForPreTraining` model directories (`config.json` +
//! `model.safetensors`) as transformers writes them, in both decoder name layouts found in
//! the wild (`decoder.decoder_layers.N` in the published facebook/vit-mae-* checkpoints,
//! `decoder.decoder_encoder.layer.N` in current transformers releases).

use std::collections::BTreeMap;
use std::path::Path;

use engine::Device;
use nn::{load_tensors, read_safetensors, CheckpointError, Init, TensorMap};
use serde_json::{json, Value};

use crate::config::MaeConfig;
use crate::data::Normalize;
use crate::model::MaskedAutoencoder;

/// Read a transformers `ViTMAEConfig` (`config.json`), refusing settings this crate does not
/// implement.
///
/// # Errors
/// A one-line reason naming the field.
pub fn config_from_json(json: &Value) -> Result<MaeConfig, String> {
    let int = |k: &str, default: u64| -> Result<usize, String> {
        match json.get(k) {
            None => Ok(default as usize),
            Some(v) => v
                .as_u64()
                .map(|v| v as usize)
                .ok_or_else(|| format!("config field {k} must be an integer, got {v}")),
        }
    };
    let float = |k: &str, default: f64| -> Result<f64, String> {
        match json.get(k) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| format!("config field {k} must be a number, got {v}")),
        }
    };
    let boolean = |k: &str, default: bool| -> Result<bool, String> {
        match json.get(k) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| format!("config field {k} must be true or false, got {v}")),
        }
    };
    if let Some(act) = json.get("hidden_act") {
        if act.as_str() != Some("gelu") {
            return Err(format!(
                "hidden_act {act} is not supported (only \"gelu\", the exact erf form)"
            ));
        }
    }
    for k in ["image_size", "patch_size"] {
        if json.get(k).is_some_and(|v| v.is_array()) {
            return Err(format!(
                "{k} {}: only square images and patches (transformers' ViTMAE builds its position tables for a square grid)",
                json[k]
            ));
        }
    }
    let dim = int("hidden_size", 768)?;
    let decoder_dim = int("decoder_hidden_size", 512)?;
    let intermediate = int("intermediate_size", 3072)?;
    let decoder_intermediate = int("decoder_intermediate_size", 2048)?;
    if intermediate * decoder_dim != decoder_intermediate * dim {
        return Err(format!(
            "intermediate sizes {intermediate} and {decoder_intermediate} use different MLP ratios for widths {dim} and {decoder_dim}; one ratio is supported"
        ));
    }
    let config = MaeConfig {
        image_size: int("image_size", 224)?,
        patch_size: int("patch_size", 16)?,
        channels: int("num_channels", 3)?,
        dim,
        depth: int("num_hidden_layers", 12)?,
        heads: int("num_attention_heads", 12)?,
        decoder_dim,
        decoder_depth: int("decoder_num_hidden_layers", 8)?,
        decoder_heads: int("decoder_num_attention_heads", 16)?,
        mlp_ratio: intermediate as f32 / dim as f32,
        mask_ratio: float("mask_ratio", 0.75)?,
        norm_pix_loss: boolean("norm_pix_loss", false)?,
        eps: float("layer_norm_eps", 1e-12)? as f32,
        qkv_bias: boolean("qkv_bias", true)?,
    };
    config.validate()?;
    Ok(config)
}

/// The names of a block's tensors, ours and transformers', after `blocks.{i}.` and
/// `vit.encoder.layer.{i}.` (or the decoder's): one table read in both directions.
const BLOCK_NAMES: [(&str, &str); 5] = [
    ("attn.proj.", "attention.output.dense."),
    ("mlp.fc1.", "intermediate.dense."),
    ("mlp.fc2.", "output.dense."),
    ("norm1.", "layernorm_before."),
    ("norm2.", "layernorm_after."),
];

/// Our fused qkv, and transformers' query, key and value (rows q, then k, then v).
const QKV: (&str, [&str; 3]) = (
    "attn.qkv.",
    [
        "attention.attention.query.",
        "attention.attention.key.",
        "attention.attention.value.",
    ],
);

/// The prefixes of the other tensors, ours and transformers', in the order they are tried;
/// the blocks' prefixes are followed by the block index and [`BLOCK_NAMES`]. The decoder's
/// own tensors (`mask_token`, `decoder_embed`, `decoder_norm`, `decoder_pred`) keep their
/// names under `decoder.`.
const PREFIXES: [(&str, &str); 6] = [
    ("cls_token", "vit.embeddings.cls_token"),
    (
        "patch_embed.proj.",
        "vit.embeddings.patch_embeddings.projection.",
    ),
    ("norm.", "vit.layernorm."),
    ("blocks.", "vit.encoder.layer."),
    ("decoder_blocks.", "decoder.decoder_layers."),
    ("", "decoder."),
];

/// Older transformers named the decoder's blocks so.
const OLD_DECODER_BLOCKS: &str = "decoder.decoder_encoder.layer.";

/// Our name for a transformers tensor name, or `None` for the fixed position tables.
/// q, k and v map to the fused qkv with a part index (0, 1, 2). A name not in the tables
/// comes back marked with `?`, so that loading names it as unexpected.
fn our_name(hf: &str) -> Option<(String, Option<usize>)> {
    if [
        "vit.embeddings.position_embeddings",
        "decoder.decoder_pos_embed",
    ]
    .contains(&hf)
    {
        return None;
    }
    let old = hf
        .strip_prefix(OLD_DECODER_BLOCKS)
        .map(|rest| ("decoder_blocks.", rest));
    let found = old.or_else(|| {
        PREFIXES
            .iter()
            .find_map(|(ours, theirs)| hf.strip_prefix(theirs).map(|rest| (*ours, rest)))
    });
    let Some((ours, rest)) = found else {
        return Some((format!("?{hf}"), None));
    };
    if !ours.ends_with("blocks.") {
        return Some((format!("{ours}{rest}"), None));
    }
    let (i, inner) = rest.split_once('.').unwrap_or((rest, ""));
    let part = QKV.1.iter().enumerate().find_map(|(k, theirs)| {
        let p = inner.strip_prefix(theirs)?;
        Some((format!("{ours}{i}.{}{p}", QKV.0), Some(k)))
    });
    let plain = BLOCK_NAMES.iter().find_map(|(local, theirs)| {
        let p = inner.strip_prefix(theirs)?;
        Some((format!("{ours}{i}.{local}{p}"), None))
    });
    Some(
        part.or(plain)
            .unwrap_or((format!("{ours}{i}.?{inner}"), None)),
    )
}

/// Rename a transformers state dict into ours, fusing q, k and v (rows q, then k, then v).
fn to_ours(hf: TensorMap) -> TensorMap {
    let mut out: TensorMap = BTreeMap::new();
    type Part = Option<(Vec<usize>, Vec<f32>)>;
    let mut parts: BTreeMap<String, [Part; 3]> = BTreeMap::new();
    for (name, t) in hf {
        match our_name(&name) {
            None => {}
            Some((ours, None)) => {
                out.insert(ours, t);
            }
            Some((ours, Some(i))) => {
                parts.entry(ours).or_default()[i] = Some(t);
            }
        }
    }
    for (name, [q, k, v]) in parts {
        match (q, k, v) {
            (Some(q), Some(k), Some(v)) if q.0 == k.0 && k.0 == v.0 && !q.0.is_empty() => {
                let mut shape = q.0.clone();
                shape[0] *= 3;
                out.insert(name, (shape, [q.1, k.1, v.1].concat()));
            }
            _ => {
                out.insert(
                    format!("{name} (q, k and v incomplete, scalars or of different shapes)"),
                    (vec![], vec![]),
                );
            }
        }
    }
    out
}

/// A transformers `config.json` as our config.
///
/// # Errors
/// [`CheckpointError`] naming the file: unreadable, not JSON, or an unsupported config.
pub fn read_config(path: &Path) -> Result<MaeConfig, CheckpointError> {
    let text = nn::files::read_text_bounded(path, nn::files::JSON_LIMIT)
        .map_err(|e| CheckpointError::Io(path.to_path_buf(), e))?;
    let json: Value = serde_json::from_str(&text)
        .map_err(|e| CheckpointError::Config(path.to_path_buf(), format!("not JSON: {e}")))?;
    config_from_json(&json).map_err(|e| CheckpointError::Config(path.to_path_buf(), e))
}

/// Check a config against the tensors of its weights file before a model is built from it:
/// the number of layers and the shapes that fix the widths, patch size, channels, MLP size
/// and patch count. A config that claims more than the file holds is refused here, before
/// anything is allocated for it; the strict load afterwards checks every name and shape.
fn check_against_weights(c: &MaeConfig, file: &TensorMap) -> Result<(), String> {
    let layers = |prefixes: &[&str]| {
        file.keys()
            .filter_map(|k| {
                let rest = prefixes.iter().find_map(|p| k.strip_prefix(p))?;
                rest.split('.').next()?.parse::<usize>().ok()
            })
            .max()
            .map_or(0, |i| i + 1)
    };
    let encoder = layers(&["vit.encoder.layer."]);
    let decoder = layers(&["decoder.decoder_layers.", "decoder.decoder_encoder.layer."]);
    for (field, claimed, held) in [
        ("num_hidden_layers", c.depth, encoder),
        ("decoder_num_hidden_layers", c.decoder_depth, decoder),
    ] {
        if claimed != held {
            return Err(format!(
                "{field} is {claimed}, but model.safetensors has {held} such layers"
            ));
        }
    }
    let (d, dd, l, p) = (c.dim, c.decoder_dim, c.num_patches(), c.patch_size);
    let hidden = |width: usize| (width as f32 * c.mlp_ratio) as usize;
    let shapes = [
        ("vit.embeddings.cls_token", vec![1, 1, d]),
        (
            "vit.embeddings.patch_embeddings.projection.weight",
            vec![d, c.channels, p, p],
        ),
        ("vit.embeddings.position_embeddings", vec![1, 1 + l, d]),
        ("decoder.mask_token", vec![1, 1, dd]),
        ("decoder.decoder_pos_embed", vec![1, 1 + l, dd]),
        ("decoder.decoder_pred.weight", vec![c.patch_dim(), dd]),
        (
            "vit.encoder.layer.0.intermediate.dense.weight",
            vec![hidden(d), d],
        ),
    ];
    for (name, want) in shapes {
        if let Some((shape, _)) = file.get(name) {
            if *shape != want {
                return Err(format!(
                    "describes {name} as {want:?}, but model.safetensors holds {shape:?}"
                ));
            }
        }
    }
    Ok(())
}

/// `preprocessor_config.json` as transformers' `ViTImageProcessor` reads it.
///
/// # Errors
/// [`CheckpointError::Io`] naming the file.
pub fn save_preprocessor(
    dir: &Path,
    image_size: usize,
    norm: &Normalize,
) -> Result<(), CheckpointError> {
    let json = json!({
        "image_processor_type": "ViTImageProcessor",
        "do_resize": true,
        "size": {"height": image_size, "width": image_size},
        "resample": 3,
        "do_rescale": true,
        "rescale_factor": 1.0 / 255.0,
        "do_normalize": true,
        "image_mean": norm.mean,
        "image_std": norm.std,
    });
    let path = dir.join("preprocessor_config.json");
    let text = serde_json::to_string_pretty(&json).expect("JSON");
    nn::files::write_atomically(&path, text.as_bytes()).map_err(|e| CheckpointError::Io(path, e))
}

/// The normalisation a model of `channels` channels in `dir` was trained with: its
/// `preprocessor_config.json`, or `None` when it has none. `image_mean` and `image_std`
/// are lists of one number per channel (or one number for all, as transformers allows),
/// the deviations positive.
///
/// # Errors
/// [`CheckpointError::Config`] naming the file and the value that cannot be used.
pub fn read_preprocessor(
    dir: &Path,
    channels: usize,
) -> Result<Option<Normalize>, CheckpointError> {
    let path = dir.join("preprocessor_config.json");
    if !path.exists() {
        return Ok(None);
    }
    let bad = |why: String| CheckpointError::Config(path.clone(), why);
    let text = nn::files::read_text_bounded(&path, nn::files::JSON_LIMIT)
        .map_err(|e| CheckpointError::Io(path.clone(), e))?;
    let json: Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let list = |k: &str| -> Result<Vec<f32>, CheckpointError> {
        let values = match json.get(k) {
            Some(Value::Array(a)) => a.iter().map(Value::as_f64).collect(),
            Some(v) => v.as_f64().map(|f| vec![f; channels]),
            None => None,
        };
        let values: Vec<f32> = values
            .filter(|v: &Vec<f64>| v.iter().all(|f| f.is_finite()))
            .ok_or_else(|| {
                bad(format!(
                    "{k} must be numbers, got {}",
                    json.get(k).unwrap_or(&Value::Null)
                ))
            })?
            .into_iter()
            .map(|f| f as f32)
            .collect();
        if values.len() != channels {
            return Err(bad(format!(
                "{k} has {} values for a model of {channels} channels",
                values.len()
            )));
        }
        Ok(values)
    };
    let (mean, std) = (list("image_mean")?, list("image_std")?);
    if let Some(s) = std.iter().find(|s| !(**s > 0.0 && s.is_finite())) {
        return Err(bad(format!("image_std {s} must be positive")));
    }
    Ok(Some(Normalize { mean, std }))
}

/// Load a transformers `ViTMAEForPreTraining` directory: `config.json` and
/// `model.safetensors`, strictly (every parameter present with its shape, nothing left over).
///
/// # Errors
/// [`CheckpointError`] with one line naming the problem: a missing or unreadable file, an
/// unsupported config, or the missing, unexpected and mis-shaped tensors.
pub fn load_pretrained(dir: &Path, device: &Device) -> Result<MaskedAutoencoder, CheckpointError> {
    let config_path = dir.join("config.json");
    let config = read_config(&config_path)?;
    let weights_path = dir.join("model.safetensors");
    let file = read_safetensors(&weights_path)?;
    check_against_weights(&config, &file).map_err(|e| CheckpointError::Config(config_path, e))?;
    let mut model = MaskedAutoencoder::new(config, &mut Init::new(device, 0))?;
    // The fixed position tables: the file's, when it has them (as transformers runs it);
    // their shapes were checked with the config's.
    for (hf_name, table) in [
        ("vit.embeddings.position_embeddings", &model.pos_embed),
        ("decoder.decoder_pos_embed", &model.decoder_pos_embed),
    ] {
        if let Some((_, values)) = file.get(hf_name) {
            table.copy_from_slice(values)?;
        }
    }
    load_tensors(&mut model, to_ours(file), &weights_path)?;
    Ok(model)
}

/// The published-layout name(s) of one of our parameters: the fused qkv splits into
/// query, key and value (rows q, then k, then v).
fn published_names(ours: &str) -> Vec<String> {
    // The last prefix is empty, so one always matches.
    let (prefix, theirs, rest) = PREFIXES
        .iter()
        .find_map(|(o, t)| ours.strip_prefix(o).map(|rest| (*o, *t, rest)))
        .unwrap_or(("", "decoder.", ours));
    if !prefix.ends_with("blocks.") {
        return vec![format!("{theirs}{rest}")];
    }
    let (i, inner) = rest.split_once('.').unwrap_or((rest, ""));
    if let Some(p) = inner.strip_prefix(QKV.0) {
        return QKV
            .1
            .iter()
            .map(|q| format!("{theirs}{i}.{q}{p}"))
            .collect();
    }
    let mapped = BLOCK_NAMES.iter().find_map(|(local, t)| {
        inner
            .strip_prefix(local)
            .map(|p| format!("{theirs}{i}.{t}{p}"))
    });
    vec![mapped.unwrap_or_else(|| format!("{theirs}{i}.{inner}"))]
}

/// Tensors named as in the published checkpoints (facebook/vit-mae-*), from ours: `(name,
/// shape, values)` in, the same out with the fused qkv split into query, key and value.
pub fn to_published(
    ours: Vec<(String, Vec<usize>, Vec<f32>)>,
) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut out = Vec::new();
    for (name, shape, values) in ours {
        let names = published_names(&name);
        if names.len() == 1 {
            out.push((names[0].clone(), shape, values));
            continue;
        }
        let mut part_shape = shape.clone();
        part_shape[0] /= 3;
        let len = values.len() / 3;
        for (i, n) in names.into_iter().enumerate() {
            out.push((
                n,
                part_shape.clone(),
                values[i * len..(i + 1) * len].to_vec(),
            ));
        }
    }
    out
}

/// The transformers `config.json` of a model.
pub fn config_to_json(c: &MaeConfig) -> Value {
    serde_json::json!({
        "architectures": ["ViTMAEForPreTraining"],
        "model_type": "vit_mae",
        "image_size": c.image_size,
        "patch_size": c.patch_size,
        "num_channels": c.channels,
        "hidden_size": c.dim,
        "num_hidden_layers": c.depth,
        "num_attention_heads": c.heads,
        "intermediate_size": (c.dim as f32 * c.mlp_ratio) as usize,
        "decoder_hidden_size": c.decoder_dim,
        "decoder_num_hidden_layers": c.decoder_depth,
        "decoder_num_attention_heads": c.decoder_heads,
        "decoder_intermediate_size": (c.decoder_dim as f32 * c.mlp_ratio) as usize,
        "mask_ratio": c.mask_ratio,
        "norm_pix_loss": c.norm_pix_loss,
        "layer_norm_eps": c.eps,
        "hidden_act": "gelu",
        "qkv_bias": c.qkv_bias,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
    })
}

/// Write `dir/config.json` and `dir/model.safetensors` in the published layout (the
/// position tables included), so that transformers' `ViTMAEForPreTraining.from_pretrained`
/// loads them without missing or unexpected keys. The weights are written atomically.
///
/// # Errors
/// [`CheckpointError::Io`] when the directory or files cannot be written.
pub fn save_pretrained(model: &MaskedAutoencoder, dir: &Path) -> Result<(), CheckpointError> {
    std::fs::create_dir_all(dir).map_err(|e| CheckpointError::Io(dir.to_path_buf(), e))?;
    let mut ours = Vec::new();
    for (name, t) in nn::named_parameters(model) {
        ours.push((name, t.shape().to_vec(), t.to_vec()?));
    }
    let mut tensors = to_published(ours);
    for (name, table) in [
        ("vit.embeddings.position_embeddings", &model.pos_embed),
        ("decoder.decoder_pos_embed", &model.decoder_pos_embed),
    ] {
        tensors.push((name.into(), table.shape().to_vec(), table.to_vec()?));
    }
    let config_path = dir.join("config.json");
    let text = serde_json::to_string_pretty(&config_to_json(&model.config))
        .expect("a JSON value serialises");
    nn::files::write_atomically(&config_path, text.as_bytes())
        .map_err(|e| CheckpointError::Io(config_path, e))?;
    let metadata = [("format".to_string(), "pt".to_string())]
        .into_iter()
        .collect();
    nn::save_host_safetensors(&dir.join("model.safetensors"), tensors, Some(metadata))
}
