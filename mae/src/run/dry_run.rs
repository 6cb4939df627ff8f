//! `--dry-run`: one training step of the chosen model, batch and options, measured by the
//! buffer pool, printed beside the adapter's memory. A step that does not fit the adapter's
//! memory (or `ENGINE_MEMORY_LIMIT`) fails on its first allocation past it, and the run is
//! refused in one line with the figures, before any output is written.

use engine::{human_bytes, AdamW, Device, Gradients, Tensor};

use super::Precision;
use crate::Error;

/// What one step holds, in bytes of GPU buffers.
pub struct StepMemory {
    /// Trainable values.
    pub parameters: usize,
    /// The weights' bytes.
    pub weights: u64,
    /// AdamW's two moments.
    pub optimizer: u64,
    /// The pool's peak over a step: weights, moments, activations and gradients.
    pub peak: u64,
}

/// Run one step of `loss` (forward, backward, AdamW) as training would, with `opt`'s moments
/// already in place, and measure the pool.
///
/// # Errors
/// Engine failures, [`engine::Error::OutOfMemory`] among them.
pub fn measure(
    device: &Device,
    opt: &mut AdamW,
    precision: Precision,
    loss: impl FnOnce() -> Result<Tensor, Error>,
) -> Result<StepMemory, Error> {
    precision.check(device.info())?;
    let params: Vec<Tensor> = opt.groups.iter().flat_map(|g| g.params.clone()).collect();
    device.synchronize()?;
    let weights = device.pool_stats().live_bytes;
    // Training holds the moments from its first step on: make them with zero gradients.
    let mut zeros = Gradients::default();
    for p in &params {
        zeros.insert(p, Tensor::zeros(device, p.shape())?)?;
    }
    opt.step(&zeros)?;
    drop(zeros);
    device.synchronize()?;
    let optimizer = device.pool_stats().live_bytes - weights;
    device.reset_peak();
    let loss = match precision {
        Precision::Fp32 => loss(),
        Precision::F16Mixed => engine::autocast_f16(loss),
    }?;
    let grads = loss.backward()?;
    drop(loss);
    opt.step(&grads)?;
    drop(grads);
    device.synchronize()?;
    Ok(StepMemory {
        parameters: params.iter().map(Tensor::numel).sum(),
        weights,
        optimizer,
        peak: device.pool_stats().peak_bytes,
    })
}

/// The options that change a step's memory, as a report names them.
pub fn options(precision: Precision, checkpoint_activations: bool) -> String {
    let precision = clap::ValueEnum::to_possible_value(&precision).expect("no skipped variants");
    format!(
        "{}, activation checkpointing {}",
        precision.get_name(),
        if checkpoint_activations { "on" } else { "off" }
    )
}

/// Print what `measured` found for `what` beside the adapter's memory.
///
/// # Errors
/// [`Error::Setup`], naming the figures, when the step did not fit; other failures of the
/// step as they came.
pub fn report(
    device: &Device,
    what: &str,
    measured: Result<StepMemory, Error>,
) -> Result<(), Error> {
    let info = device.info();
    let budget = info.memory_budget.map(human_bytes);
    let m = match measured {
        Ok(m) => m,
        Err(Error::Engine(engine::Error::OutOfMemory {
            bytes, live_bytes, ..
        })) => {
            return Err(Error::Setup(format!(
                "{what} does not fit {} ({}): one step needs more than {} (an allocation of {} \
                 failed with {} held); try --checkpoint-activations, --precision f16-mixed or \
                 a smaller --batch-size",
                info.name,
                budget.unwrap_or_else(|| "memory unknown".into()),
                human_bytes(live_bytes + bytes),
                human_bytes(bytes),
                human_bytes(live_bytes)
            )))
        }
        Err(e) => return Err(e),
    };
    println!("dry run on {}: {what}", info.name);
    println!(
        "  parameters        {:>10}  ({:.1} M)",
        human_bytes(m.weights),
        m.parameters as f64 / 1e6
    );
    println!("  AdamW state       {:>10}", human_bytes(m.optimizer));
    println!(
        "  one step's peak   {:>10}  (activations and gradients: {})",
        human_bytes(m.peak),
        human_bytes(m.peak.saturating_sub(m.weights + m.optimizer))
    );
    match (info.memory_budget, info.memory_bytes) {
        (Some(budget), _) => println!(
            "  memory budget     {:>10}  fits, {:.0}% used at the peak",
            human_bytes(budget),
            100.0 * m.peak as f64 / budget as f64
        ),
        (None, Some(heap)) => println!(
            "  adapter memory    {:>10}  device-local, as reported; this {} adapter also uses \
             system memory",
            human_bytes(heap),
            info.device_type.to_lowercase()
        ),
        (None, None) => println!("  adapter memory    unknown (read on Vulkan only)"),
    }
    Ok(())
}
