//! The `mae` command-line program.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use engine::{Device, Tensor};
use mae::hf::{load_pretrained, to_published};
use nn::{read_safetensors, Ctx};
use safetensors::tensor::{Dtype, TensorView};

#[derive(Parser)]
#[command(
    name = "mae",
    version,
    about = "Masked Autoencoder pretraining of Vision Transformers on any GPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a model on given pixels (and noise) and write loss, logits, mask, ids_restore and
    /// optionally every parameter gradient: the parity check against transformers.
    Forward {
        /// Model directory as transformers' save_pretrained writes it (config.json,
        /// model.safetensors).
        #[arg(long)]
        model: PathBuf,
        /// safetensors file with `pixel_values` f32 (B, C, H, W) and optionally `noise` f32
        /// (B, L).
        #[arg(long)]
        input: PathBuf,
        /// safetensors file to write: `loss` [1], `logits` (B, L, p*p*C), `mask` (B, L),
        /// `ids_restore` (B, L) as i64, and with --grads `grad.<published name>`.
        #[arg(long)]
        output: PathBuf,
        /// Also write the gradient of the loss for every trainable parameter.
        #[arg(long)]
        grads: bool,
        /// Seed of the masking noise when the input has no `noise`.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Forward {
            model,
            input,
            output,
            grads,
            seed,
        } => forward(&model, &input, &output, grads, seed),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn forward(
    model_dir: &Path,
    input: &Path,
    output: &Path,
    grads: bool,
    seed: u64,
) -> Result<(), String> {
    let device = Device::new().map_err(|e| e.to_string())?;
    let model = load_pretrained(model_dir, &device).map_err(|e| e.to_string())?;
    let inputs = read_safetensors(input).map_err(|e| e.to_string())?;
    let c = &model.config;
    let (shape, pixels) = inputs
        .get("pixel_values")
        .ok_or_else(|| format!("{}: no tensor named pixel_values", input.display()))?;
    if shape.len() != 4 || shape[1..] != [c.channels, c.image_size, c.image_size] {
        return Err(format!(
            "{}: pixel_values has shape {shape:?}, the model needs (B, {}, {}, {})",
            input.display(),
            c.channels,
            c.image_size,
            c.image_size
        ));
    }
    let e = |e: engine::Error| e.to_string();
    let imgs = Tensor::from_slice(&device, pixels, shape).map_err(e)?;
    let out = match inputs.get("noise") {
        Some((nshape, noise)) => {
            if nshape.as_slice() != [shape[0], c.num_patches()] {
                return Err(format!(
                    "{}: noise has shape {nshape:?}, needs ({}, {})",
                    input.display(),
                    shape[0],
                    c.num_patches()
                ));
            }
            let noise = Tensor::from_slice(&device, noise, nshape).map_err(e)?;
            model.forward(&imgs, &noise, &mut Ctx::eval()).map_err(e)?
        }
        None => model
            .forward_seeded(&imgs, seed, &mut Ctx::eval())
            .map_err(e)?,
    };
    let mut f32s: Vec<(String, Vec<usize>, Vec<f32>)> = vec![
        ("loss".into(), vec![1], vec![out.loss.item().map_err(e)?]),
        (
            "logits".into(),
            out.pred.shape().to_vec(),
            out.pred.to_vec().map_err(e)?,
        ),
        (
            "mask".into(),
            out.mask.shape().to_vec(),
            out.mask.to_vec().map_err(e)?,
        ),
    ];
    let ids: Vec<u8> = out
        .ids_restore
        .to_vec_u32()
        .map_err(e)?
        .iter()
        .flat_map(|&v| (v as i64).to_le_bytes())
        .collect();
    if grads {
        let g = out.loss.backward().map_err(e)?;
        let mut ours = Vec::new();
        for (name, t) in nn::named_parameters(&model) {
            ours.push((
                name,
                t.shape().to_vec(),
                g.expect(&t).map_err(e)?.to_vec().map_err(e)?,
            ));
        }
        f32s.extend(
            to_published(ours)
                .into_iter()
                .map(|(n, s, v)| (format!("grad.{n}"), s, v)),
        );
    }
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = f32s
        .into_iter()
        .map(|(n, s, v)| (n, s, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let mut views: Vec<(String, TensorView<'_>)> = Vec::new();
    for (n, s, b) in &bytes {
        views.push((
            n.clone(),
            TensorView::new(Dtype::F32, s.clone(), b).map_err(|e| e.to_string())?,
        ));
    }
    views.push((
        "ids_restore".into(),
        TensorView::new(Dtype::I64, out.ids_restore.shape().to_vec(), &ids)
            .map_err(|e| e.to_string())?,
    ));
    let data = safetensors::serialize(views, Some(HashMap::new())).map_err(|e| e.to_string())?;
    std::fs::write(output, data).map_err(|e| format!("{}: {e}", output.display()))
}
