//! Activation checkpointing: an MAE step with every block recomputed in backward gives the
//! plain step's loss and gradients, drop-path masks included, for less memory.

mod common;
use common::step::{step, tiny_model, worst};

use engine::Device;

#[test]
fn checkpointed_blocks_give_the_same_gradients_for_less_memory() {
    let device = Device::new().unwrap();
    let model = tiny_model(&device);
    let (loss, plain, plain_peak) = step(&model, 8, (false, false));
    let (loss_ckpt, ckpt, ckpt_peak) = step(&model, 8, (false, true));
    assert_eq!(loss, loss_ckpt);
    let (worst, name) = worst(&plain, &ckpt);
    assert!(worst <= 1e-6, "{name}: relative difference {worst:e}");
    eprintln!(
        "worst relative gradient difference {worst:e}; peak {plain_peak} bytes plain, \
         {ckpt_peak} checkpointed"
    );
    assert!(
        (ckpt_peak as f64) < 0.8 * plain_peak as f64,
        "peak {ckpt_peak} checkpointed against {plain_peak} plain"
    );
}
