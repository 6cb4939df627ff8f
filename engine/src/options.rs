//! How a device is configured: the program's [`DeviceOptions`], the `ENGINE_*` environment
//! variables and the adapter's defaults, resolved in one place ([`DeviceOptions::resolve`]).
//! Every `ENGINE_*` variable is read in this file; docs/engine.md lists them in one table.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::ops::AttentionKernel;
use crate::tune::Autotune;

/// How [`crate::Device::with_options`] departs from what the adapter offers and the environment
/// says.
#[derive(Clone, Debug, Default)]
pub struct DeviceOptions {
    /// Lower the storage-binding limit (the largest tensor) to this many bytes, as a
    /// smaller GPU's would be: the device enforces it.
    pub binding_limit: Option<u64>,
    /// Let the buffer pool hold at most this many bytes, as a GPU with that much memory
    /// would (also `ENGINE_MEMORY_LIMIT`, e.g. `8GB`); an allocation past it fails with
    /// [`Error::OutOfMemory`].
    pub memory_limit: Option<u64>,
    /// Leave these optional features off even when the adapter offers them, as well as
    /// those named in `ENGINE_WITHOUT` (comma-separated, as [`Features`] displays them, e.g.
    /// `ENGINE_WITHOUT=shader-f16,subgroup`): how to run as on an adapter without them.
    pub without: Features,
    /// On a machine with several adapters of the preferred kind (several GPUs), take the
    /// one at this index, counting round: a data-parallel process passes its local rank.
    pub adapter_index: Option<usize>,
    /// The row kernels' workgroup width (8, 16, 32 or 64), instead of
    /// `ENGINE_ROW_WORKGROUP` or the adapter's default.
    pub row_workgroup: Option<u32>,
    /// Whether the row kernels reduce with subgroup operations: by default on a GPU with
    /// `SUBGROUP`, and not on a CPU adapter (one subgroup per workgroup there, where the
    /// tree is 5-10% faster, measured on lavapipe). `Some(true)` where the adapter has no
    /// subgroups is an error.
    pub subgroup_reductions: Option<bool>,
    /// How matrix products pick their kernel, instead of `ENGINE_AUTOTUNE`.
    pub autotune: Option<Autotune>,
    /// The tuning cache file, instead of `ENGINE_TUNE_CACHE` or `autotune.json` in the
    /// user's cache directory.
    pub tune_cache: Option<PathBuf>,
    /// The attention kernels, instead of `ENGINE_ATTENTION` (`rows` or `tiled`) or the
    /// adapter's default (rows on a CPU adapter, tiled on a GPU).
    pub attention: Option<AttentionKernel>,
    /// Fill the tiled kernels' workgroup memory with NaN before use, so that a missing
    /// barrier shows as NaN (also `ENGINE_POISON_WORKGROUP=1`). A debugging aid: slower.
    pub poison_workgroup_memory: bool,
    /// Build the kernels whose indexing the tests prove on poisoned memory (the tiled
    /// matrix-product variants) without naga's runtime checks: no loop counters, no clamped
    /// indices (also `ENGINE_TRUSTED_KERNELS=1`). Off by default until a GPU figure says it
    /// pays.
    pub trusted_kernels: bool,
}

/// Optional adapter features the engine asks for when offered, and never requires.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features {
    /// GPU timestamps at pass boundaries (the profiler's clock).
    pub timestamp_query: bool,
    /// GPU timestamps between dispatches inside a pass.
    pub timestamp_query_inside_passes: bool,
    /// Subgroup (wave, warp, SIMD-group) operations in shaders.
    pub subgroup: bool,
    /// `f16` arithmetic in shaders.
    pub shader_f16: bool,
    /// Driver-side pipeline caches.
    pub pipeline_cache: bool,
}

impl Features {
    /// Each feature's flag here, its name, and wgpu's flag: the one list the rest reads.
    fn table(&mut self) -> [(&mut bool, &'static str, wgpu::Features); 5] {
        [
            (
                &mut self.timestamp_query,
                "timestamp-query",
                wgpu::Features::TIMESTAMP_QUERY,
            ),
            (
                &mut self.timestamp_query_inside_passes,
                "timestamps-inside-passes",
                wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES,
            ),
            (&mut self.subgroup, "subgroup", wgpu::Features::SUBGROUP),
            (
                &mut self.shader_f16,
                "shader-f16",
                wgpu::Features::SHADER_F16,
            ),
            (
                &mut self.pipeline_cache,
                "pipeline-cache",
                wgpu::Features::PIPELINE_CACHE,
            ),
        ]
    }

    /// The features for which `on` holds, given wgpu's flag.
    fn with(on: impl Fn(wgpu::Features) -> bool) -> Features {
        let mut features = Features::default();
        for (flag, _, wgpu_flag) in features.table() {
            *flag = on(wgpu_flag);
        }
        features
    }

    /// What the engine would use of `offered`. Timestamps inside passes need timestamps.
    pub(crate) fn of(offered: wgpu::Features) -> Features {
        let mut features = Features::with(|f| offered.contains(f));
        features.timestamp_query_inside_passes &= features.timestamp_query;
        features
    }

    /// These features less those set in `off` (without timestamps, none inside passes).
    pub fn without(self, off: Features) -> Features {
        let (mut on, mut off) = (self, off);
        for ((flag, ..), (gone, ..)) in on.table().into_iter().zip(off.table()) {
            *flag &= !*gone;
        }
        on.timestamp_query_inside_passes &= on.timestamp_query;
        on
    }

    /// Every optional feature (for [`DeviceOptions::without`]).
    pub fn all() -> Features {
        Features::with(|_| true)
    }

    /// The wgpu features to request.
    pub(crate) fn wgpu(mut self) -> wgpu::Features {
        self.table()
            .into_iter()
            .filter(|(on, ..)| **on)
            .fold(wgpu::Features::empty(), |all, (_, _, f)| all | f)
    }

    /// The features named in a comma-separated `list` (`ENGINE_WITHOUT`).
    fn named(list: &str) -> Result<Features> {
        let mut features = Features::default();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let Some((flag, ..)) = features.table().into_iter().find(|(_, n, _)| *n == name) else {
                return Err(Error::setting(
                    "ENGINE_WITHOUT",
                    list,
                    format!(
                        "unknown feature {name:?}; expected some of {}",
                        Features::all()
                    ),
                ));
            };
            *flag = true;
        }
        Ok(features)
    }
}

impl std::fmt::Display for Features {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut copy = *self;
        let names: Vec<&str> = copy
            .table()
            .into_iter()
            .filter(|(on, ..)| **on)
            .map(|(_, name, _)| name)
            .collect();
        match names.is_empty() {
            true => write!(f, "none"),
            false => write!(f, "{}", names.join(", ")),
        }
    }
}

/// Every decision a device is opened with, from the options, the environment and the
/// adapter.
pub(crate) struct Resolved {
    /// The row kernels' workgroup width.
    pub row_workgroup: u32,
    /// The optional features to enable.
    pub features: Features,
    /// The pool's limit, from the options or `ENGINE_MEMORY_LIMIT`.
    pub memory_limit: Option<u64>,
    /// How matrix products choose their kernel.
    pub autotune: Autotune,
    /// The tuning cache file, when not the default.
    pub tune_cache: Option<PathBuf>,
    /// The time tuning may spend on one shape bucket.
    pub tune_budget: Duration,
    /// The attention kernels.
    pub attention: AttentionKernel,
    /// Row kernels reduce with subgroup operations.
    pub subgroup_reductions: bool,
    /// Tiled kernels fill workgroup memory with NaN first.
    pub poison: bool,
    /// Kernels with proven bounds are built without runtime checks.
    pub trusted: bool,
    /// Per-kernel timing from the start.
    pub profile: bool,
}

impl DeviceOptions {
    /// These options completed from the environment and the defaults for `adapter`:
    ///
    /// | variable | what it sets | default |
    /// |---|---|---|
    /// | `ENGINE_ROW_WORKGROUP` | the row kernels' workgroup width (8, 16, 32, 64) | 8 on a CPU adapter, 64 on a GPU |
    /// | `ENGINE_WITHOUT` | optional features left off (`shader-f16,subgroup`, ...) | none |
    /// | `ENGINE_MEMORY_LIMIT` | what the pool may hold (`8GB`) | a discrete GPU's memory |
    /// | `ENGINE_AUTOTUNE` | `off`, `cache` or `on` | off on a CPU adapter, on on a GPU |
    /// | `ENGINE_TUNE_CACHE` | the tuning cache file | `autotune.json` in the user's cache directory |
    /// | `ENGINE_TUNE_BUDGET_MS` | time to tune one shape bucket | 2000 |
    /// | `ENGINE_ATTENTION` | `rows` or `tiled` | rows on a CPU adapter, tiled on a GPU |
    /// | `ENGINE_POISON_WORKGROUP` | NaN in workgroup memory first (0 or 1) | 0 |
    /// | `ENGINE_TRUSTED_KERNELS` | proven kernels without runtime checks (0 or 1) | 0 |
    /// | `ENGINE_PROFILE` | per-kernel GPU timing (0 or 1) | 0 |
    ///
    /// An option set in `self` wins over its variable.
    ///
    /// # Errors
    /// [`Error::Setting`] naming a variable with a value it does not take;
    /// [`Error::Device`] for subgroup reductions asked of an adapter without subgroups.
    pub(crate) fn resolve(self, adapter: &wgpu::Adapter) -> Result<Resolved> {
        let var = |name: &str| std::env::var(name).ok();
        let info = adapter.get_info();
        let software = info.device_type == wgpu::DeviceType::Cpu;
        let row_workgroup = match self
            .row_workgroup
            .map(|n| n.to_string())
            .or(var("ENGINE_ROW_WORKGROUP"))
        {
            Some(v) => match v.parse() {
                Ok(n @ (8 | 16 | 32 | 64)) => n,
                _ => {
                    return Err(Error::setting(
                        "ENGINE_ROW_WORKGROUP",
                        v,
                        "expected 8, 16, 32 or 64",
                    ))
                }
            },
            None if software => 8,
            None => 64,
        };
        let off = Features::named(&var("ENGINE_WITHOUT").unwrap_or_default())?;
        let features = Features::of(adapter.features())
            .without(self.without)
            .without(off);
        let memory_limit = match (self.memory_limit, var("ENGINE_MEMORY_LIMIT")) {
            (Some(bytes), _) => Some(bytes),
            (None, Some(text)) => Some(crate::memory::parse_bytes(&text)?),
            (None, None) => None,
        };
        let autotune = match (self.autotune, var("ENGINE_AUTOTUNE").as_deref()) {
            (Some(mode), _) => mode,
            (None, Some("off")) => Autotune::Off,
            (None, Some("cache")) => Autotune::Cache,
            (None, Some("on")) => Autotune::On,
            (None, Some(other)) => {
                return Err(Error::setting(
                    "ENGINE_AUTOTUNE",
                    other,
                    "expected off, cache or on",
                ))
            }
            // On a CPU adapter the shipped kernels are the ones measured fastest, and
            // tuning would cost seconds per shape.
            (None, None) if software => Autotune::Off,
            (None, None) => Autotune::On,
        };
        let tune_cache = self
            .tune_cache
            .or_else(|| var("ENGINE_TUNE_CACHE").map(PathBuf::from));
        let tune_budget = match var("ENGINE_TUNE_BUDGET_MS") {
            None => Duration::from_secs(2),
            Some(ms) => match ms.parse::<u64>() {
                Ok(ms) if ms > 0 => Duration::from_millis(ms),
                _ => {
                    return Err(Error::setting(
                        "ENGINE_TUNE_BUDGET_MS",
                        ms,
                        "expected milliseconds, at least 1",
                    ))
                }
            },
        };
        let attention = match (self.attention, var("ENGINE_ATTENTION").as_deref()) {
            (Some(kernel), _) => kernel,
            (None, Some("rows")) => AttentionKernel::Rows,
            (None, Some("tiled")) => AttentionKernel::Tiled,
            (None, Some(other)) => {
                return Err(Error::setting(
                    "ENGINE_ATTENTION",
                    other,
                    "expected rows or tiled",
                ))
            }
            (None, None) if software => AttentionKernel::Rows,
            (None, None) => AttentionKernel::Tiled,
        };
        let subgroup_reductions = match self.subgroup_reductions {
            Some(true) if !features.subgroup => {
                return Err(Error::Device(format!(
                    "{} has no subgroups for the row kernels' reductions",
                    info.name
                )))
            }
            Some(on) => on,
            None => features.subgroup && !software,
        };
        Ok(Resolved {
            row_workgroup,
            features,
            memory_limit,
            autotune,
            tune_cache,
            tune_budget,
            attention,
            subgroup_reductions,
            poison: self.poison_workgroup_memory || env_switch("ENGINE_POISON_WORKGROUP")?,
            trusted: self.trusted_kernels || env_switch("ENGINE_TRUSTED_KERNELS")?,
            profile: env_switch("ENGINE_PROFILE")?,
        })
    }
}

/// An on/off environment variable: unset, empty or `0` is off, `1` is on.
///
/// # Errors
/// [`Error::Setting`] for another value.
pub fn env_switch(name: &'static str) -> Result<bool> {
    match std::env::var(name).as_deref() {
        Err(_) | Ok("" | "0") => Ok(false),
        Ok("1") => Ok(true),
        Ok(other) => Err(Error::setting(name, other, "expected 0 or 1")),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn switches_are_0_or_1() {
        // A name no other test sets.
        std::env::set_var("ENGINE_TEST_SWITCH", "yes");
        let e = super::env_switch("ENGINE_TEST_SWITCH").unwrap_err();
        assert_eq!(e.to_string(), "ENGINE_TEST_SWITCH=\"yes\": expected 0 or 1");
        std::env::set_var("ENGINE_TEST_SWITCH", "1");
        assert!(super::env_switch("ENGINE_TEST_SWITCH").unwrap());
        std::env::remove_var("ENGINE_TEST_SWITCH");
        assert!(!super::env_switch("ENGINE_TEST_SWITCH").unwrap());
    }
}
