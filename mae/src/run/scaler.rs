//! Mixed precision for the training commands: the `--precision` option and the dynamic loss
//! scaler of `torch.amp.GradScaler`, whose state a checkpoint saves.
//!
//! Under f16-mixed, products round their upstream gradients to f16 (`engine::autocast_f16`),
//! where small ones would flush to zero. So the loss is multiplied by a large scale before
//! backward, and the gradients divided by it before the optimizer sees them. When they hold
//! an infinity or a NaN (an f16 overflow) the step is skipped and the scale halved; after
//! [`GROWTH_INTERVAL`] finite steps in a row it doubles. The constants are `GradScaler`'s
//! defaults.

use engine::{GradientFactor, Gradients, ParamGroup};
use serde::{Deserialize, Serialize};

use crate::Error;

/// The scale a run starts with (`init_scale`).
pub const INIT_SCALE: f64 = 65536.0;
/// Factor on an overflow (`backoff_factor`).
pub const BACKOFF: f64 = 0.5;
/// Factor after [`GROWTH_INTERVAL`] finite steps (`growth_factor`).
pub const GROWTH: f64 = 2.0;
/// Finite steps in a row before the scale grows (`growth_interval`).
pub const GROWTH_INTERVAL: u32 = 2000;

/// The arithmetic of a training run's products.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    Fp32,
    /// f16 operands for matmuls and attention, accumulated in f32; f32 everywhere else,
    /// f32 weights and optimizer state; dynamic loss scaling. Needs `SHADER_F16`.
    F16Mixed,
}

impl Precision {
    /// Refuse a precision the adapter cannot run: f16-mixed needs `SHADER_F16`.
    ///
    /// # Errors
    /// [`Error::Setup`] in one line naming the adapter.
    pub fn check(self, info: &engine::DeviceInfo) -> Result<(), Error> {
        match self {
            Precision::F16Mixed if !info.features.shader_f16 => Err(Error::Setup(format!(
                "--precision f16-mixed needs an adapter with SHADER_F16, and {} ({}) does not \
                 offer it; use --precision fp32",
                info.name, info.backend
            ))),
            _ => Ok(()),
        }
    }
}

/// `GradScaler`'s state: the current scale and the finite steps since it last changed.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    /// What the loss is multiplied by before backward.
    pub scale: f64,
    /// Finite steps in a row since the scale last changed.
    pub growth_tracker: u32,
}

impl Default for LossScaler {
    fn default() -> LossScaler {
        LossScaler {
            scale: INIT_SCALE,
            growth_tracker: 0,
        }
    }
}

impl LossScaler {
    /// What the optimizer multiplies `grads` by to take the scale out, computed on the
    /// device; its `all_finite` is the step's overflow check.
    ///
    /// # Errors
    /// Engine failures.
    pub fn unscale(
        &self,
        groups: &[ParamGroup],
        grads: &Gradients,
    ) -> Result<GradientFactor, Error> {
        Ok(GradientFactor::new(
            groups,
            grads,
            (1.0 / self.scale) as f32,
            None,
        )?)
    }

    /// After a step with finite gradients or one skipped for an overflow.
    pub fn update(&mut self, finite: bool) {
        if !finite {
            self.scale *= BACKOFF;
            self.growth_tracker = 0;
        } else if self.growth_tracker + 1 == GROWTH_INTERVAL {
            self.scale *= GROWTH;
            self.growth_tracker = 0;
        } else {
            self.growth_tracker += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scale_halves_on_overflow_and_doubles_after_the_interval() {
        let mut s = LossScaler::default();
        s.update(false);
        assert_eq!((s.scale, s.growth_tracker), (32768.0, 0));
        for _ in 0..GROWTH_INTERVAL - 1 {
            s.update(true);
        }
        assert_eq!((s.scale, s.growth_tracker), (32768.0, GROWTH_INTERVAL - 1));
        s.update(true);
        assert_eq!((s.scale, s.growth_tracker), (65536.0, 0));
        s.update(true);
        s.update(false);
        assert_eq!((s.scale, s.growth_tracker), (32768.0, 0));
    }
}
