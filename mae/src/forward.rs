//! The `forward` command: run a model on given pixels (and noise) and write what
//! transformers' `ViTMAEForPreTraining` returns, and optionally every parameter's gradient
//! under its published name: the parity check against the reference.

use std::collections::HashMap;
use std::path::PathBuf;

use engine::{Device, Tensor};
use nn::{read_safetensors, Ctx};
use safetensors::tensor::{Dtype, TensorView};

use crate::hf::{load_pretrained, to_published};
use crate::Error;

/// `mae forward`'s options.
#[derive(Clone, Debug, clap::Args)]
pub struct Args {
    /// Model directory as transformers' save_pretrained writes it (config.json,
    /// model.safetensors).
    #[arg(long)]
    pub model: PathBuf,
    /// safetensors file with `pixel_values` f32 (B, C, H, W) and optionally `noise` f32
    /// (B, L).
    #[arg(long)]
    pub input: PathBuf,
    /// safetensors file to write: `loss` (1), `logits` (B, L, p*p*C), `mask` (B, L),
    /// `ids_restore` (B, L) as i64, and with --grads `grad.<published name>`.
    #[arg(long)]
    pub output: PathBuf,
    /// Also write the gradient of the loss for every trainable parameter.
    #[arg(long)]
    pub grads: bool,
    /// Seed of the masking noise when the input has no `noise`.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// `mae forward`: one forward (and with `--grads` backward) pass, written to `--output`.
///
/// # Errors
/// An unreadable model or input, inputs of the wrong shape, I/O and engine failures.
pub fn command(args: &Args) -> Result<(), Error> {
    let device = Device::new()?;
    let model = load_pretrained(&args.model, &device)?;
    let inputs = read_safetensors(&args.input)?;
    let c = &model.config;
    let input = |name: &str, shape: &[usize]| -> Result<Option<Tensor>, Error> {
        let Some((got, values)) = inputs.get(name) else {
            return Ok(None);
        };
        if got.len() != shape.len() || got.iter().zip(shape).any(|(g, s)| *s != 0 && g != s) {
            return Err(Error::Setup(format!(
                "{}: {name} has shape {got:?}, the model needs {shape:?} (0: any)",
                args.input.display()
            )));
        }
        Ok(Some(Tensor::from_slice(&device, values, got)?))
    };
    let image = [0, c.channels, c.image_size, c.image_size];
    let imgs = input("pixel_values", &image)?.ok_or_else(|| {
        Error::Setup(format!(
            "{}: no tensor named pixel_values",
            args.input.display()
        ))
    })?;
    let batch = imgs.shape()[0];
    let out = match input("noise", &[batch, c.num_patches()])? {
        Some(noise) => model.forward(&imgs, c.mask_ratio, &noise, &mut Ctx::eval())?,
        None => model.forward_seeded(&imgs, c.mask_ratio, args.seed, &mut Ctx::eval())?,
    };
    let mut f32s: Vec<(String, Vec<usize>, Vec<f32>)> = vec![
        ("loss".into(), vec![1], vec![out.loss.item()?]),
        (
            "logits".into(),
            out.pred.shape().to_vec(),
            out.pred.to_vec()?,
        ),
        ("mask".into(), out.mask.shape().to_vec(), out.mask.to_vec()?),
    ];
    if args.grads {
        let g = out.loss.backward()?;
        let mut ours = Vec::new();
        for (name, t) in nn::named_parameters(&model) {
            ours.push((name, t.shape().to_vec(), g.expect(&t)?.to_vec()?));
        }
        let published = to_published(ours).into_iter();
        f32s.extend(published.map(|(n, s, v)| (format!("grad.{n}"), s, v)));
    }
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = f32s
        .into_iter()
        .map(|(n, s, v)| {
            (
                n,
                Dtype::F32,
                s,
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        })
        .collect();
    let ids = out.ids_restore.to_vec_u32()?;
    tensors.push((
        "ids_restore".into(),
        Dtype::I64,
        out.ids_restore.shape().to_vec(),
        ids.iter().flat_map(|&v| (v as i64).to_le_bytes()).collect(),
    ));
    let views = tensors
        .iter()
        .map(|(n, dtype, s, b)| Ok((n.clone(), TensorView::new(*dtype, s.clone(), b)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()
        .map_err(|e| Error::Setup(e.to_string()))?;
    let data = safetensors::serialize(views, Some(HashMap::new()))
        .map_err(|e| Error::Setup(e.to_string()))?;
    std::fs::write(&args.output, data).map_err(Error::io(&args.output))
}
