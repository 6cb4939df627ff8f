//! Choosing the matrix product's kernel per adapter and shape, and remembering the choice.
//!
//! Two families compute a product: the register-blocked 8-lane kernels of `matmul.wgsl`
//! ([`MatmulKernel::Lanes`], shaped for CPU drivers such as lavapipe) and the tiled variants
//! of `matmul_tiled.wgsl` ([`MatmulKernel::Tiled`], shaped for GPUs, with split-K for long
//! inner dimensions). A product's [`MatmulKey`] buckets its shape (transposes, bias,
//! alignment, and `ceil(log2)` of m, n, k and batch). The first time a bucket is met,
//! [`Autotune::On`] times the candidates on the product itself, keeps the fastest, and
//! writes the choice to a cache file keyed by adapter, backend, driver and a hash of the
//! kernel sources, so the next process starts with it. Every candidate computes the same
//! sums in a different order: a choice changes results only by rounding.

pub mod tile;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use tile::Tile;

use crate::device::Device;
use crate::error::Result;
use crate::info::DeviceInfo;
use crate::kernels::{MATMUL, MATMUL_TILED, SPLITK};

/// How the matrix product picks its kernel (`ENGINE_AUTOTUNE`, or
/// [`crate::DeviceOptions::autotune`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Autotune {
    /// The shipped default for the adapter kind; the cache is neither read nor written.
    Off,
    /// The cached choice where there is one, else the default; nothing is timed.
    Cache,
    /// The cached choice, or time the candidates and cache the fastest.
    On,
}

/// The kernel that computes one product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulKernel {
    /// `matmul.wgsl`: 8-lane workgroups, vec4 blocks when the problem is aligned.
    Lanes,
    /// A `matmul_tiled.wgsl` variant; with `splits > 1`, k is cut into that many chunks
    /// whose partial products `splitk.wgsl` adds up.
    Tiled {
        /// The variant (its `vec4` loads only on an aligned problem).
        tile: Tile,
        /// Chunks of k.
        splits: u32,
    },
}

impl MatmulKernel {
    /// A short name, e.g. `lanes` or `tiled 64x64x8/4x4 vec4, splits 4`.
    pub fn name(&self) -> String {
        match self {
            MatmulKernel::Lanes => "lanes".into(),
            MatmulKernel::Tiled { tile, splits } => {
                format!("tiled {}, splits {splits}", tile.name())
            }
        }
    }

    /// Whether this kernel can run on the adapter of `info` a problem that is `aligned` (or
    /// not): the tile within the adapter's limits, and vec4 loads only on aligned problems.
    /// The one answer the tuner, the defaults, the cache and [`crate::Tensor::matmul_with`]
    /// all ask.
    pub fn runs_on(&self, info: &DeviceInfo, aligned: bool) -> bool {
        match self {
            MatmulKernel::Lanes => true,
            MatmulKernel::Tiled { tile, .. } => tile.fits(info) && (aligned || !tile.vec4),
        }
    }

    /// The kernel named by [`MatmulKernel::name`].
    pub fn parse(name: &str) -> Option<MatmulKernel> {
        if name == "lanes" {
            return Some(MatmulKernel::Lanes);
        }
        let (tile, splits) = name.strip_prefix("tiled ")?.split_once(", splits ")?;
        Some(MatmulKernel::Tiled {
            tile: Tile::parse(tile)?,
            splits: splits.parse().ok().filter(|&s| s >= 1)?,
        })
    }
}

/// The bucket of a product that one choice serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MatmulKey {
    /// A is read transposed.
    pub trans_a: bool,
    /// B is read transposed.
    pub trans_b: bool,
    /// A bias is added.
    pub bias: bool,
    /// Every size, stride and offset is a multiple of 4 (vec4 loads allowed).
    pub aligned: bool,
    /// `ceil(log2)` of m, n, k and the batch count.
    pub log2: [u32; 4],
    /// The operands are f16 (mixed precision): half the bytes to load, so possibly another
    /// best kernel.
    pub half: bool,
}

impl MatmulKey {
    /// The bucket of a product of sizes `[m, n, k, batch]`, with no transpose, no bias, f32
    /// operands and unaligned; the flags that differ are set by name
    /// (`MatmulKey { aligned: true, ..MatmulKey::of(sizes) }`).
    pub fn of(sizes: [usize; 4]) -> MatmulKey {
        let log2 = |x: usize| x.max(1).next_power_of_two().trailing_zeros();
        MatmulKey {
            trans_a: false,
            trans_b: false,
            bias: false,
            aligned: false,
            log2: sizes.map(log2),
            half: false,
        }
    }

    /// The bucket as text, as the cache file keys it: `ta=0 tb=1 bias=1 aligned=1 m=2^8 ...`,
    /// with ` f16` last for f16 operands (so f32 keys read as before).
    pub fn text(&self) -> String {
        let [m, n, k, b] = self.log2;
        format!(
            "ta={} tb={} bias={} aligned={} m=2^{m} n=2^{n} k=2^{k} batch=2^{b}{}",
            self.trans_a as u8,
            self.trans_b as u8,
            self.bias as u8,
            self.aligned as u8,
            if self.half { " f16" } else { "" }
        )
    }
}

/// PCI vendor ids of the GPUs whose default tile is chosen by name.
const NVIDIA: u32 = 0x10de;
const AMD: u32 = 0x1002;
const APPLE: u32 = 0x106b;

/// The kernel an adapter uses for a bucket it has no measurement of. On a CPU adapter the
/// 8-lane kernels (measured fastest on lavapipe). On a GPU a tile by vendor, chosen on
/// principle, not measured: NVIDIA and AMD, [`tile::LARGE`] with vec4 loads and double
/// buffering; Apple, [`tile::DEEP`] with vec4 loads; others (Intel, unknown),
/// [`tile::PORTABLE`]. k is split when the output has too few blocks to fill a GPU.
pub fn default_kernel(
    info: &DeviceInfo,
    key: &MatmulKey,
    [m, n, k, batch]: [usize; 4],
) -> MatmulKernel {
    if info.is_software() {
        return MatmulKernel::Lanes;
    }
    let by_vendor = match info.vendor {
        NVIDIA | AMD => tile::LARGE.with(true, true),
        APPLE => tile::DEEP.with(true, false),
        _ => tile::PORTABLE.with(true, false),
    };
    let tile = [by_vendor, tile::PORTABLE.with(true, false)]
        .into_iter()
        .map(|t| t.with(t.vec4 && key.aligned, t.double_buffer))
        .find(|&tile| MatmulKernel::Tiled { tile, splits: 1 }.runs_on(info, key.aligned));
    let Some(tile) = tile else {
        return MatmulKernel::Lanes;
    };
    let blocks = m.div_ceil(tile.bm as usize) * n.div_ceil(tile.bn as usize) * batch;
    let splits = if blocks < 64 && k >= 2048 {
        (128 / blocks).clamp(1, 16).min(k / 512) as u32
    } else {
        1
    };
    MatmulKernel::Tiled { tile, splits }
}

/// Every kernel worth timing for a bucket on this adapter.
pub fn candidates(info: &DeviceInfo, key: &MatmulKey, k: usize) -> Vec<MatmulKernel> {
    let tiled = Tile::all().flat_map(|tile| {
        [1u32, 4, 16]
            .into_iter()
            .filter(|&splits| splits == 1 || k >= 256 * splits as usize)
            .map(move |splits| MatmulKernel::Tiled { tile, splits })
    });
    std::iter::once(MatmulKernel::Lanes)
        .chain(tiled)
        .filter(|kernel| kernel.runs_on(info, key.aligned))
        .collect()
}

/// The kernel for a product in bucket `key` of sizes `[m, n, k, batch]` on `device`: the one
/// chosen before for the bucket (in this process or the cache file), else with
/// [`Autotune::On`] the fastest of the candidates, each timed by `run` (which records the
/// product itself with a given kernel), else the adapter's default. The device holds the
/// choices; this is where they are made.
///
/// # Errors
/// Whatever `run` or synchronisation return while tuning.
pub(crate) fn choose(
    device: &Device,
    key: &MatmulKey,
    sizes: [usize; 4],
    run: impl FnMut(MatmulKernel) -> Result<()>,
) -> Result<MatmulKernel> {
    let info = device.info();
    let mut tuner = device.tuner();
    // A cached variant this adapter cannot run (a cache copied from elsewhere) is ignored.
    let known = tuner.lookup(key);
    if let Some(kernel) = known.filter(|k| k.runs_on(info, key.aligned)) {
        return Ok(kernel);
    }
    let tuned = tuner.mode == Autotune::On;
    let kernel = if tuned {
        let candidates = candidates(info, key, sizes[2]);
        fastest(&candidates, tuner.budget, run, || device.synchronize())?
    } else {
        default_kernel(info, key, sizes)
    };
    tuner.remember(key, kernel, tuned);
    Ok(kernel)
}

/// Time each candidate with `run` (which records one product with that kernel) and return
/// the fastest. Each is run once to compile it, then timed over enough repetitions to fill
/// about 20 ms; a candidate slower than four times the best so far is dropped after its
/// first timing, one that cannot run this product (its split-K scratch too large, too many
/// workgroups) is skipped, and tuning stops after `budget` with the best found.
///
/// # Errors
/// Whatever synchronisation returns, or `run`'s error when no candidate runs.
pub fn fastest(
    candidates: &[MatmulKernel],
    budget: Duration,
    mut run: impl FnMut(MatmulKernel) -> Result<()>,
    mut sync: impl FnMut() -> Result<()>,
) -> Result<MatmulKernel> {
    let start = Instant::now();
    let mut best: Option<(MatmulKernel, f64)> = None;
    for &kernel in candidates {
        if best.is_some() && start.elapsed() > budget {
            break;
        }
        // Compile and warm up; a candidate this product does not fit is passed over.
        if let Err(e) = run(kernel) {
            if best.is_none() && kernel == *candidates.last().expect("not empty") {
                return Err(e);
            }
            continue;
        }
        sync()?;
        let mut time = |reps: u32| -> Result<f64> {
            let t = Instant::now();
            for _ in 0..reps {
                run(kernel)?;
            }
            sync()?;
            Ok(t.elapsed().as_secs_f64() / reps as f64)
        };
        let first = time(1)?;
        if best.is_some_and(|(_, b)| first > 4.0 * b) {
            continue;
        }
        let reps = (0.02 / first.max(1e-6)).clamp(1.0, 20.0) as u32;
        let seconds = if reps > 1 { time(reps)? } else { first };
        if best.is_none_or(|(_, b)| seconds < b) {
            best = Some((kernel, seconds));
        }
    }
    Ok(best.map_or(MatmulKernel::Lanes, |(k, _)| k))
}

/// The choices of one device: what the cache file holds for it, and what was tuned since.
pub(crate) struct Tuner {
    pub(crate) mode: Autotune,
    /// The time tuning may spend on one shape bucket's candidates.
    budget: Duration,
    file: Option<PathBuf>,
    device: String,
    choices: HashMap<MatmulKey, MatmulKernel>,
    texts: HashMap<String, MatmulKernel>,
}

impl Tuner {
    /// The tuner of a device, with the cache file at `file` (the user's cache directory when
    /// `None`) read unless `mode` is `Off`, spending at most `budget` on one bucket.
    pub(crate) fn new(
        info: &DeviceInfo,
        mode: Autotune,
        file: Option<PathBuf>,
        budget: Duration,
    ) -> Tuner {
        let file = file.or_else(|| dirs::cache_dir().map(|d| d.join("mae-stack/autotune.json")));
        let device = device_key(info);
        let texts = match (&file, mode) {
            (Some(path), Autotune::Cache | Autotune::On) => read_choices(path, &device),
            _ => HashMap::new(),
        };
        Tuner {
            mode,
            budget,
            file,
            device,
            choices: HashMap::new(),
            texts,
        }
    }

    /// The choice for `key`: remembered in this process, else from the cache file.
    pub(crate) fn lookup(&mut self, key: &MatmulKey) -> Option<MatmulKernel> {
        if let Some(k) = self.choices.get(key) {
            return Some(*k);
        }
        let k = *self.texts.get(&key.text())?;
        self.choices.insert(*key, k);
        Some(k)
    }

    /// The choices made or read in this process: (bucket, kernel) names.
    pub(crate) fn choices(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .choices
            .iter()
            .map(|(key, kernel)| (key.text(), kernel.name()))
            .collect();
        out.sort();
        out
    }

    /// Remember `kernel` for `key`; a tuned choice (`save`) also goes to the cache file.
    pub(crate) fn remember(&mut self, key: &MatmulKey, kernel: MatmulKernel, save: bool) {
        self.choices.insert(*key, kernel);
        if save {
            self.texts.insert(key.text(), kernel);
            if let Some(path) = &self.file {
                // A cache that cannot be written costs a re-tune next time, nothing more.
                let _ = write_choice(path, &self.device, &key.text(), kernel);
            }
        }
    }
}

/// The cache's key for an adapter: its name, backend and driver, and a hash of every
/// kernel source the choice depends on, so that a changed kernel set is tuned afresh.
fn device_key(info: &DeviceInfo) -> String {
    let mut hash = crate::Fnv::new();
    let candidates: Vec<String> = Tile::all().map(|t| t.name()).collect();
    for part in [
        MATMUL.source,
        MATMUL_TILED.source,
        SPLITK.source,
        &candidates.join(";"),
    ] {
        hash.add(part.as_bytes());
    }
    let hash = hash.finish();
    format!(
        "{} | {} | {} | kernels {hash:016x}",
        info.name, info.backend, info.driver
    )
}

/// The tuning cache's JSON, or an empty object when it is missing, unreadable, not a
/// regular file or larger than any real cache (16 MiB).
fn read_file(path: &Path) -> serde_json::Value {
    std::fs::metadata(path)
        .ok()
        .filter(|m| m.is_file() && m.len() <= 16 << 20)
        .and_then(|_| std::fs::read_to_string(path).ok())
        .and_then(|t| serde_json::from_str(&t).ok())
        .filter(serde_json::Value::is_object)
        .unwrap_or_else(|| serde_json::json!({}))
}

fn read_choices(path: &Path, device: &str) -> HashMap<String, MatmulKernel> {
    let file = read_file(path);
    let Some(entries) = file.get(device).and_then(|d| d.as_object()) else {
        return HashMap::new();
    };
    entries
        .iter()
        .filter_map(|(key, v)| Some((key.clone(), MatmulKernel::parse(v.as_str()?)?)))
        .collect()
}

/// Add one choice to the cache file: read it afresh (another process may have added
/// choices), insert, write a temporary file beside it and rename it into place.
fn write_choice(path: &Path, device: &str, key: &str, kernel: MatmulKernel) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = read_file(path);
    let entries = file
        .as_object_mut()
        .expect("read_file returns an object")
        .entry(device)
        .or_insert_with(|| serde_json::json!({}));
    if !entries.is_object() {
        *entries = serde_json::json!({});
    }
    entries[key] = serde_json::Value::String(kernel.name());
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, serde_json::to_string_pretty(&file).expect("JSON"))?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::options::Features;

    fn adapter(vendor: u32, device_type: &str, workgroup_bytes: u32) -> DeviceInfo {
        DeviceInfo {
            name: "test".into(),
            backend: "Vulkan".into(),
            device_type: device_type.into(),
            vendor,
            driver: String::new(),
            max_storage_buffer_binding_size: 1 << 30,
            max_buffer_size: 1 << 30,
            max_storage_buffers_per_shader_stage: 8,
            max_compute_workgroup_storage_size: workgroup_bytes,
            max_compute_invocations_per_workgroup: 256,
            max_compute_workgroup_size_x: 256,
            max_compute_workgroups_per_dimension: 65535,
            subgroup_sizes: (32, 32),
            features: Features::default(),
            memory_bytes: None,
            memory_budget: None,
            cooperative_matrices: vec![],
        }
    }

    #[test]
    fn defaults_by_adapter_kind_and_vendor() {
        let key = |aligned| MatmulKey {
            aligned,
            ..MatmulKey::of([1024, 1024, 1024, 1])
        };
        let sizes = [1024, 1024, 1024, 1];
        let tile_of = |info: &DeviceInfo, aligned| match default_kernel(info, &key(aligned), sizes)
        {
            MatmulKernel::Tiled { tile, splits } => {
                assert_eq!(splits, 1);
                tile
            }
            MatmulKernel::Lanes => panic!("a GPU gets a tile"),
        };
        let cpu = adapter(0x10005, "Cpu", 32768);
        assert_eq!(default_kernel(&cpu, &key(true), sizes), MatmulKernel::Lanes);
        let nvidia = tile_of(&adapter(0x10de, "DiscreteGpu", 49152), true);
        assert_eq!(nvidia.name(), "128x128x8/8x8 vec4 db");
        // Unaligned problems read scalars; a tile too big for the adapter falls back.
        assert_eq!(
            tile_of(&adapter(0x10de, "DiscreteGpu", 49152), false).name(),
            "128x128x8/8x8 db"
        );
        assert_eq!(
            tile_of(&adapter(0x1002, "DiscreteGpu", 8192), true).name(),
            "64x64x8/4x4 vec4"
        );
        assert_eq!(
            tile_of(&adapter(0x106b, "IntegratedGpu", 32768), true).name(),
            "64x64x16/4x4 vec4"
        );
        assert_eq!(
            tile_of(&adapter(0x8086, "IntegratedGpu", 32768), true).name(),
            "64x64x8/4x4 vec4"
        );
        // A weight gradient: few output blocks, long k, split.
        let wgrad = [64, 64, 12608, 1];
        let key = MatmulKey {
            trans_a: true,
            aligned: true,
            ..MatmulKey::of(wgrad)
        };
        let intel = adapter(0x8086, "IntegratedGpu", 32768);
        assert!(matches!(
            default_kernel(&intel, &key, wgrad),
            MatmulKernel::Tiled { splits: 16, .. }
        ));
    }

    /// The candidates are exactly what `runs_on` allows: vec4 loads only on aligned
    /// problems, and no tile past the adapter's workgroup memory.
    #[test]
    fn candidates_are_what_runs_here() {
        let small = adapter(0x8086, "IntegratedGpu", 8192);
        let is_tiled = |k: &MatmulKernel, f: fn(&Tile) -> bool| match k {
            MatmulKernel::Tiled { tile, .. } => f(tile),
            MatmulKernel::Lanes => false,
        };
        for aligned in [false, true] {
            let key = MatmulKey {
                aligned,
                ..MatmulKey::of([256, 256, 4096, 1])
            };
            let all = candidates(&small, &key, 4096);
            assert!(all.iter().all(|k| k.runs_on(&small, aligned)));
            assert_eq!(all.iter().any(|k| is_tiled(k, |t| t.vec4)), aligned);
            assert!(!all.iter().any(|k| is_tiled(k, |t| t.shared_bytes() > 8192)));
            let portable = MatmulKernel::Tiled {
                tile: tile::PORTABLE,
                splits: 16,
            };
            assert!(all.contains(&portable));
            assert_eq!(all[0], MatmulKernel::Lanes);
        }
    }

    #[test]
    fn tuning_keeps_the_fastest_and_passes_over_what_cannot_run() {
        let tiled = |splits| MatmulKernel::Tiled {
            tile: tile::PORTABLE,
            splits,
        };
        let candidates = [MatmulKernel::Lanes, tiled(1), tiled(4)];
        // Lanes cannot run (say, too many workgroups); splits 4 is the fastest.
        let cost = |k: MatmulKernel| match k {
            MatmulKernel::Lanes => None,
            MatmulKernel::Tiled { splits: 1, .. } => Some(3),
            MatmulKernel::Tiled { .. } => Some(1),
        };
        let run = |k: MatmulKernel| match cost(k) {
            None => Err(Error::Shape {
                op: "matmul",
                msg: "too many workgroups".into(),
            }),
            Some(ms) => {
                std::thread::sleep(Duration::from_millis(ms));
                Ok(())
            }
        };
        let best = fastest(&candidates, Duration::from_secs(5), run, || Ok(())).unwrap();
        assert_eq!(best, tiled(4));
        // When nothing runs, the error says why.
        let none = |_| -> Result<()> { Err(Error::Device("nothing fits".into())) };
        let e = fastest(&candidates, Duration::from_secs(5), none, || Ok(())).unwrap_err();
        assert!(e.to_string().contains("nothing fits"));
    }

    #[test]
    fn kernel_names_read_back() {
        for kernel in [
            MatmulKernel::Lanes,
            MatmulKernel::Tiled {
                tile: tile::CANDIDATES[2].with(true, true),
                splits: 4,
            },
        ] {
            assert_eq!(MatmulKernel::parse(&kernel.name()), Some(kernel));
        }
        assert_eq!(MatmulKernel::parse("tiled 1x1x1/1x1, splits 2"), None);
        assert_eq!(MatmulKernel::parse("tiled 64x64x8/4x4, splits 0"), None);
    }
}
