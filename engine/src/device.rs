//! The device: adapter choice, and the runtime every op goes through (pipeline cache, buffer
//! pool, uniform arena, batched command recording, read-back).
//!
//! An op never submits work by itself. It records a dispatch into the open compute pass;
//! the recorded batch is submitted when a result is read back, when host data is uploaded,
//! or when [`DISPATCHES_PER_BATCH`] dispatches have been recorded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use crate::error::{Error, Result};
use crate::info::DeviceInfo;
use crate::kernels::{Kernel, PipelineCache};
use crate::ops::AttentionKernel;
use crate::options::DeviceOptions;
use crate::pool::{Pool, PoolStats};
use crate::profile::{Clock, KernelTime, Profiler};
use crate::tune::{Autotune, MatmulKernel, MatmulKey, Tuner};

/// Dispatches recorded before the batch is submitted without waiting for a read-back.
pub const DISPATCHES_PER_BATCH: usize = 512;
/// Bytes of one uniform-arena slot: every kernel's parameters fit, and 256 is the largest
/// dynamic-offset alignment WebGPU allows an adapter to require.
const PARAM_SLOT: u64 = 256;

/// A GPU (or software) device with its runtime. Cheap to clone; all clones share one queue,
/// pool and pipeline cache. Safe to use from several threads.
#[derive(Clone)]
pub struct Device {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) device: wgpu::Device,
    queue: wgpu::Queue,
    info: DeviceInfo,
    pipelines: Mutex<PipelineCache>,
    pool: Mutex<Pool>,
    recorder: Mutex<Recorder>,
    /// Four words a kernel writes when it meets a bad index: op code, index, axis size.
    status: wgpu::Buffer,
    /// Invocations per workgroup of the row kernels.
    row_workgroup: u32,
    /// Per-kernel times while profiling is on (see [`Device::set_profiling`]).
    profile: Mutex<Option<Profiler>>,
    /// The matrix product's kernel choices.
    tuner: Mutex<Tuner>,
    /// Tiled kernels fill workgroup memory with NaN first.
    poison: bool,
    /// Kernels with proven bounds are built without runtime checks.
    trusted: bool,
    /// The time tuning may spend on one shape bucket's candidates.
    tune_budget: std::time::Duration,
    /// The attention kernels' family.
    attention: AttentionKernel,
    /// Row kernels reduce with subgroup operations.
    subgroup_reductions: bool,
    /// An error met where no caller could take it (a kernel that did not build, wgpu's
    /// uncaptured errors, a lost device), returned by the next synchronisation or read-back.
    failure: Arc<Mutex<Option<Error>>>,
    /// Bind groups by pipeline and buffers: a training loop binds the same pooled buffers
    /// to the same kernels step after step, and making a bind group costs as much as the
    /// rest of a dispatch's recording.
    bind_groups: Mutex<HashMap<BindKey, wgpu::BindGroup>>,
}

/// The most storage buffers a kernel binds (`kernels::storage_bindings_needed` is 6).
const MAX_BINDINGS: usize = 8;

/// A bind group's identity: the pipeline (its address in the never-emptied pipeline cache)
/// and the buffers bound to bindings 1.., in order.
type BindKey = (usize, [Option<wgpu::Buffer>; MAX_BINDINGS]);

/// Bind groups kept at most; past it the cache starts afresh (a loop needs a few hundred).
const BIND_GROUPS_KEPT: usize = 16384;

/// Commands recorded but not yet submitted.
struct Recorder {
    // Field order matters: the pass must be dropped before the encoder it records into.
    pass: Option<wgpu::ComputePass<'static>>,
    encoder: Option<wgpu::CommandEncoder>,
    /// Host copy of this batch's uniform parameters, written to `arena` in one go at submit.
    params: Vec<u8>,
    arena: wgpu::Buffer,
    dispatches: usize,
    submissions: u64,
    /// Dispatches recorded so far.
    recorded: u64,
}

/// Ops that report bad indices through the status buffer, by code.
pub(crate) const STATUS_OPS: [&str; 3] = ["", "gather", "cross_entropy"];

impl Device {
    /// Choose an adapter and create a device on it.
    ///
    /// Order of preference: discrete GPU, integrated, virtual, other, then a CPU (software)
    /// adapter. wgpu's environment conventions override it: `WGPU_BACKEND` (e.g. `vulkan`,
    /// `metal`, `dx12`, `gl`) limits the backends and `WGPU_ADAPTER_NAME` picks the first
    /// adapter whose name contains the given text. The adapter's own limits are requested,
    /// so tensors can be as large as the hardware allows.
    ///
    /// # Errors
    /// [`Error::NoAdapter`] when no adapter exists (the message says what to install) or none
    /// matches `WGPU_ADAPTER_NAME`; [`Error::Device`] when the device cannot be created.
    pub fn new() -> Result<Device> {
        Device::with_options(DeviceOptions::default())
    }

    /// [`Device::new`] with [`DeviceOptions`]: a device that behaves as a smaller or plainer
    /// adapter would, for tests of the paths such adapters take and to rehearse a run for
    /// one.
    ///
    /// # Errors
    /// As [`Device::new`].
    pub fn with_options(options: DeviceOptions) -> Result<Device> {
        Device::open(options)
    }

    fn open(options: DeviceOptions) -> Result<Device> {
        // Without WGPU_BACKEND, try the modern APIs first and fall back to GL only when they
        // have no adapter (probing GL on a headless machine is slow and noisy).
        let from_env = wgpu::Backends::from_env();
        let mut adapters = Vec::new();
        for backends in from_env.map_or(vec![wgpu::Backends::PRIMARY, wgpu::Backends::all()], |b| {
            vec![b]
        }) {
            let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
            descriptor.backends = backends;
            let instance = wgpu::Instance::new(descriptor);
            adapters = pollster::block_on(instance.enumerate_adapters(backends));
            if !adapters.is_empty() {
                break;
            }
        }
        let adapter = choose_adapter(adapters, options.adapter_index.unwrap_or(0))?;
        let binding_limit = options.binding_limit;
        let settings = options.resolve(&adapter)?;
        let mut limits = adapter.limits();
        if let Some(bytes) = binding_limit {
            limits.max_storage_buffer_binding_size =
                limits.max_storage_buffer_binding_size.min(bytes);
        }
        check_limits(&adapter.get_info().name, &limits)?;
        let features = settings.features;
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("engine"),
            required_features: features.wgpu(),
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| Error::Device(e.to_string()))?;
        let failure = Arc::new(Mutex::new(None));
        report_wgpu_failures(&device, &failure);
        let info = DeviceInfo::of(&adapter, &limits, features, settings.memory_limit);
        let tuner = Tuner::new(&info, settings.autotune, settings.tune_cache);
        assert!(limits.min_uniform_buffer_offset_alignment as u64 <= PARAM_SLOT);
        let arena = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("uniform arena"),
            size: PARAM_SLOT * DISPATCHES_PER_BATCH as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let status = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("status"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: true,
        });
        status.unmap(); // mapped at creation so it starts zeroed
        let profile = settings.profile;
        let opened = Device {
            inner: Arc::new(Inner {
                device,
                queue,
                info,
                pipelines: Mutex::new(PipelineCache::default()),
                pool: Mutex::new(Pool::default()),
                recorder: Mutex::new(Recorder {
                    pass: None,
                    encoder: None,
                    params: Vec::with_capacity((PARAM_SLOT as usize) * DISPATCHES_PER_BATCH),
                    arena,
                    dispatches: 0,
                    submissions: 0,
                    recorded: 0,
                }),
                status,
                row_workgroup: settings.row_workgroup,
                profile: Mutex::new(None),
                tuner: Mutex::new(tuner),
                poison: settings.poison,
                trusted: settings.trusted,
                tune_budget: settings.tune_budget,
                attention: settings.attention,
                subgroup_reductions: settings.subgroup_reductions,
                failure,
                bind_groups: Mutex::new(HashMap::new()),
            }),
        };
        opened.set_profiling(profile);
        Ok(opened)
    }

    /// One device shared by the whole process, created on first use. Tests, examples and
    /// programs that need just one device use this instead of [`Device::new`].
    ///
    /// # Errors
    /// As [`Device::new`]; the failure is remembered and returned again.
    pub fn shared() -> Result<Device> {
        static SHARED: OnceLock<std::result::Result<Device, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| Device::new().map_err(|e| e.to_string()))
            .clone()
            .map_err(Error::Device)
    }

    /// The adapter and the limits in use.
    pub fn info(&self) -> &DeviceInfo {
        &self.inner.info
    }

    /// Invocations per workgroup of the row kernels (softmax, layer norm, cross-entropy,
    /// reductions): 8 on a CPU adapter, whose driver runs 8 lanes as one SIMD vector and pays
    /// for every barrier, 64 on a GPU; `ENGINE_ROW_WORKGROUP` (8, 16, 32 or 64) overrides it.
    pub fn row_workgroup(&self) -> u32 {
        self.inner.row_workgroup
    }

    /// Memory figures of the buffer pool.
    pub fn pool_stats(&self) -> PoolStats {
        lock(&self.inner.pool).stats()
    }

    /// Start measuring `peak_bytes` afresh from the current live bytes.
    pub fn reset_peak(&self) {
        lock(&self.inner.pool).reset_peak();
    }

    /// Run `f` and return its result with the most bytes of live tensors it added at any
    /// moment over those live before it (the pool's peak, after submitted work completes).
    ///
    /// # Errors
    /// A device lost while synchronising.
    pub fn peak_growth<T>(&self, f: impl FnOnce() -> T) -> Result<(T, u64)> {
        self.synchronize()?;
        self.reset_peak();
        let before = self.pool_stats().live_bytes;
        let out = f();
        self.synchronize()?;
        Ok((out, self.pool_stats().peak_bytes - before))
    }

    /// Release the pool's cached buffers back to the driver.
    pub fn trim_pool(&self) {
        lock(&self.inner.pool).trim();
        // A cached bind group keeps its buffers alive: freeing them frees the groups too.
        lock(&self.inner.bind_groups).clear();
    }

    /// Number of compiled pipelines (kernel specialisations) so far.
    pub fn pipeline_count(&self) -> usize {
        lock(&self.inner.pipelines).len()
    }

    /// Dispatches recorded so far (kernels launched; an empty one is not counted).
    pub fn dispatch_count(&self) -> u64 {
        lock(&self.inner.recorder).recorded
    }

    /// Command-buffer submissions so far: one per batch, read-back or upload, never one per op.
    pub fn submission_count(&self) -> u64 {
        lock(&self.inner.recorder).submissions
    }

    /// Turn per-kernel profiling on (clearing earlier figures) or off; [`Device::profile`]
    /// reads the figures. With `TIMESTAMP_QUERY` each dispatch runs in a pass of its own
    /// that the GPU stamps, and the batch is still submitted whole; without, each dispatch
    /// is submitted alone and waited for, which measures wall time and is slow.
    /// `ENGINE_PROFILE=1` in the environment is how the programs turn it on.
    pub fn set_profiling(&self, on: bool) {
        if on {
            self.synchronize().ok();
        }
        let timestamps = self.inner.info.features.timestamp_query;
        *lock(&self.inner.profile) =
            on.then(|| Profiler::new(&self.inner.device, &self.inner.queue, timestamps));
    }

    /// What the profiler measures with, or `None` when profiling is off.
    pub fn profile_clock(&self) -> Option<Clock> {
        lock(&self.inner.profile).as_ref().map(Profiler::clock)
    }

    /// Per-kernel times gathered since profiling was turned on, slowest first; empty when
    /// profiling is off. Dispatches not yet submitted are not counted: synchronize first.
    pub fn profile(&self) -> Vec<KernelTime> {
        lock(&self.inner.profile)
            .as_ref()
            .map(Profiler::times)
            .unwrap_or_default()
    }

    /// How this device's matrix products pick their kernel.
    pub fn autotune(&self) -> Autotune {
        lock(&self.inner.tuner).mode
    }

    /// The kernel for a product in bucket `key` of sizes `[m, n, k, batch]`: the one chosen
    /// before for the bucket, else (with [`Autotune::On`]) the fastest of the candidates,
    /// each timed by `run`, or the adapter's default.
    ///
    /// # Errors
    /// Whatever `run` or synchronisation return while tuning.
    pub(crate) fn matmul_kernel(
        &self,
        key: &MatmulKey,
        sizes: [usize; 4],
        run: impl FnMut(MatmulKernel) -> Result<()>,
    ) -> Result<MatmulKernel> {
        let mut tuner = lock(&self.inner.tuner);
        let info = &self.inner.info;
        // A cached variant this adapter cannot run (a cache copied from elsewhere) is ignored.
        let runs_here = |k: &MatmulKernel| match k {
            MatmulKernel::Lanes => true,
            MatmulKernel::Tiled { tile, .. } => tile.fits(info) && (key.aligned || !tile.vec4),
        };
        if let Some(kernel) = tuner.lookup(key).filter(runs_here) {
            return Ok(kernel);
        }
        let (kernel, tuned) = match tuner.mode {
            Autotune::On => {
                let candidates = crate::tune::candidates(info, key, sizes[2]);
                let budget = self.inner.tune_budget;
                let best = crate::tune::fastest(&candidates, budget, run, || self.synchronize())?;
                (best, true)
            }
            Autotune::Off | Autotune::Cache => {
                (crate::tune::default_kernel(info, key, sizes), false)
            }
        };
        tuner.remember(key, kernel, tuned);
        Ok(kernel)
    }

    /// The matrix-product kernel chosen for each shape bucket met so far (or read from the
    /// tuning cache): `(bucket, kernel)` names, for reports such as the bench's.
    pub fn matmul_choices(&self) -> Vec<(String, String)> {
        lock(&self.inner.tuner).choices()
    }

    /// Whether the row kernels reduce with subgroup operations
    /// ([`DeviceOptions::subgroup_reductions`]).
    pub fn subgroup_reductions(&self) -> bool {
        self.inner.subgroup_reductions
    }

    /// The attention kernels' family this device uses ([`DeviceOptions::attention`]).
    pub fn attention_kernel(&self) -> AttentionKernel {
        self.inner.attention
    }

    /// Whether the kernels with proven bounds are built without runtime checks
    /// ([`DeviceOptions::trusted_kernels`]).
    pub fn trusted_kernels(&self) -> bool {
        self.inner.trusted
    }

    /// Whether tiled kernels poison their workgroup memory ([`DeviceOptions`]).
    pub(crate) fn poisons_workgroup_memory(&self) -> bool {
        self.inner.poison
    }

    /// Submit what has been recorded and wait until the GPU has finished it.
    ///
    /// # Errors
    /// [`Error::Device`] if the device was lost.
    pub fn synchronize(&self) -> Result<()> {
        let index = {
            let mut rec = lock(&self.inner.recorder);
            self.submit(&mut rec)
        };
        self.wait(index)
    }

    pub(crate) fn same(&self, other: &Device) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// A pooled buffer for `bytes`, after checking the adapter's limit.
    pub(crate) fn alloc(
        &self,
        op: &'static str,
        shape: &[usize],
        bytes: u64,
    ) -> Result<(wgpu::Buffer, u64)> {
        let limit = self
            .inner
            .info
            .max_storage_buffer_binding_size
            .min(self.inner.info.max_buffer_size);
        if bytes > limit {
            return Err(Error::TooLarge {
                op,
                shape: shape.to_vec(),
                bytes,
                limit,
            });
        }
        if let Some(budget) = self.inner.info.memory_budget {
            let class = crate::pool::size_class(bytes, limit);
            let stats = self.pool_stats();
            if stats.live_bytes + class > budget {
                return Err(Error::OutOfMemory {
                    op,
                    shape: shape.to_vec(),
                    bytes,
                    live_bytes: stats.live_bytes,
                    message: format!(
                        "past the memory budget of {}",
                        crate::memory::human_bytes(budget)
                    ),
                });
            }
            if stats.live_bytes + stats.cached_bytes + class > budget {
                // Cached buffers count against the memory too: free them first.
                self.trim_pool();
                self.synchronize()?;
            }
        }
        let take = || lock(&self.inner.pool).take(&self.inner.device, bytes, limit);
        let out_of_memory = |message| Error::OutOfMemory {
            op,
            shape: shape.to_vec(),
            bytes,
            live_bytes: self.pool_stats().live_bytes,
            message,
        };
        match take() {
            Ok(taken) => Ok(taken),
            // Cached buffers of other sizes may be what fills the memory: free them (once
            // the GPU is done with them) and try again.
            Err(_) if self.pool_stats().cached_bytes > 0 => {
                self.trim_pool();
                self.synchronize()?;
                take().map_err(out_of_memory)
            }
            Err(message) => Err(out_of_memory(message)),
        }
    }

    pub(crate) fn release(&self, buffer: wgpu::Buffer, class: u64) {
        lock(&self.inner.pool).give_back(buffer, class);
    }

    /// Record one dispatch of `kernel`, specialised by `overrides`, with `params` as its
    /// uniform and `buffers` bound to storage bindings 1.. in order.
    pub(crate) fn dispatch<P: bytemuck::Pod>(
        &self,
        kernel: &'static Kernel,
        overrides: &[u32],
        params: &P,
        buffers: &[&wgpu::Buffer],
        groups: [u32; 3],
    ) {
        debug_assert_eq!(buffers.len(), kernel.storage.len(), "{}", kernel.entry);
        debug_assert!(buffers.len() <= MAX_BINDINGS, "{}", kernel.entry);
        debug_assert!(std::mem::size_of::<P>() as u64 <= PARAM_SLOT);
        if groups.contains(&0) {
            return;
        }
        let built = lock(&self.inner.pipelines).get(
            &self.inner.device,
            (kernel, overrides),
            self.inner.trusted,
        );
        let pipeline = match built {
            Ok(p) => p,
            Err(e) => return fail(&self.inner.failure, e),
        };
        let mut rec = lock(&self.inner.recorder);
        let offset = rec.params.len();
        rec.params.extend_from_slice(bytemuck::bytes_of(params));
        rec.params.resize(offset + PARAM_SLOT as usize, 0);
        rec.recorded += 1;
        let bind_group = self.bind_group(&pipeline, buffers, &rec.arena);
        let mut profile = lock(&self.inner.profile);
        let Some(profiler) = profile.as_mut() else {
            drop(profile);
            let pass = self.open_pass(&mut rec);
            pass.set_pipeline(&pipeline.pipeline);
            pass.set_bind_group(0, &bind_group, &[offset as u32]);
            pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
            rec.dispatches += 1;
            if rec.dispatches >= DISPATCHES_PER_BATCH {
                self.submit(&mut rec);
            }
            return;
        };
        let name = kernel.name(overrides);
        rec.pass = None;
        let timestamp_writes = profiler.stamp(name.clone());
        let stamped = timestamp_writes.is_some();
        {
            let mut pass =
                self.open_encoder(&mut rec)
                    .begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: None,
                        timestamp_writes,
                    });
            pass.set_pipeline(&pipeline.pipeline);
            pass.set_bind_group(0, &bind_group, &[offset as u32]);
            pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        }
        drop(profile);
        rec.dispatches += 1;
        if stamped {
            if rec.dispatches >= DISPATCHES_PER_BATCH {
                self.submit(&mut rec);
            }
        } else {
            let start = std::time::Instant::now();
            let index = self.submit(&mut rec);
            drop(rec);
            self.wait(index).ok();
            if let Some(p) = lock(&self.inner.profile).as_mut() {
                p.add(name, start.elapsed().as_secs_f64());
            }
        }
    }

    /// The bind group of `buffers` (bindings 1..) and the uniform arena (binding 0, at a
    /// dynamic offset) for `pipeline`: made once, then taken from the cache.
    fn bind_group(
        &self,
        pipeline: &Arc<crate::kernels::Pipeline>,
        buffers: &[&wgpu::Buffer],
        arena: &wgpu::Buffer,
    ) -> wgpu::BindGroup {
        let mut bound: [Option<wgpu::Buffer>; MAX_BINDINGS] = Default::default();
        for (slot, b) in bound.iter_mut().zip(buffers) {
            *slot = Some((*b).clone());
        }
        let key = (Arc::as_ptr(pipeline) as usize, bound);
        let mut cache = lock(&self.inner.bind_groups);
        if let Some(group) = cache.get(&key) {
            return group.clone();
        }
        let mut entries = Vec::with_capacity(buffers.len() + 1);
        entries.push(wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: arena,
                offset: 0,
                size: wgpu::BufferSize::new(PARAM_SLOT),
            }),
        });
        for (i, buffer) in buffers.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: buffer.as_entire_binding(),
            });
        }
        let group = self
            .inner
            .device
            .create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &pipeline.layout,
                entries: &entries,
            });
        if cache.len() >= BIND_GROUPS_KEPT {
            cache.clear();
        }
        cache.insert(key, group.clone());
        group
    }

    /// Write host bytes into a buffer at byte `offset`, after everything recorded so far.
    pub(crate) fn upload(&self, buffer: &wgpu::Buffer, offset: u64, bytes: &[u8]) {
        let mut rec = lock(&self.inner.recorder);
        // queue.write_buffer lands before the next submission's commands, so recorded work
        // that still reads this (reused) buffer must be submitted first.
        if rec.encoder.is_some() {
            self.submit(&mut rec);
        }
        self.inner.queue.write_buffer(buffer, offset, bytes);
    }

    /// Read `len` bytes at `offset` of a buffer back to the host, after everything recorded
    /// so far. This is a synchronisation point; it also reports a bad index any kernel met.
    pub(crate) fn read(&self, buffer: &wgpu::Buffer, offset: u64, len: u64) -> Result<Vec<u8>> {
        let staging = crate::pool::create(
            &self.inner.device,
            len + 16,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        )
        .map_err(|message| Error::OutOfMemory {
            op: "read-back",
            shape: vec![len as usize / 4],
            bytes: len + 16,
            live_bytes: self.pool_stats().live_bytes,
            message,
        })?;
        let index = {
            let mut rec = lock(&self.inner.recorder);
            rec.pass = None;
            let encoder = self.open_encoder(&mut rec);
            if len > 0 {
                encoder.copy_buffer_to_buffer(buffer, offset, &staging, 0, len);
            }
            encoder.copy_buffer_to_buffer(&self.inner.status, 0, &staging, len, 16);
            self.submit(&mut rec)
        };
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.wait(index)?;
        rx.recv()
            .map_err(|e| Error::Device(e.to_string()))?
            .map_err(|e| Error::Device(e.to_string()))?;
        let mut bytes = staging
            .get_mapped_range(..)
            .map_err(|e| Error::Device(e.to_string()))?
            .to_vec();
        staging.unmap();
        let status: [u32; 4] = bytemuck::pod_read_unaligned(&bytes[len as usize..]);
        if status[0] != 0 {
            self.inner
                .queue
                .write_buffer(&self.inner.status, 0, &[0u8; 16]);
            return Err(Error::Index {
                op: STATUS_OPS
                    .get(status[0] as usize)
                    .copied()
                    .unwrap_or("kernel"),
                index: status[1],
                size: status[2],
            });
        }
        bytes.truncate(len as usize);
        Ok(bytes)
    }

    pub(crate) fn status_buffer(&self) -> &wgpu::Buffer {
        &self.inner.status
    }

    fn open_encoder<'r>(&self, rec: &'r mut Recorder) -> &'r mut wgpu::CommandEncoder {
        rec.encoder.get_or_insert_with(|| {
            self.inner
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None })
        })
    }

    fn open_pass<'r>(&self, rec: &'r mut Recorder) -> &'r mut wgpu::ComputePass<'static> {
        if rec.pass.is_none() {
            let pass = self
                .open_encoder(rec)
                .begin_compute_pass(&wgpu::ComputePassDescriptor::default())
                .forget_lifetime();
            rec.pass = Some(pass);
        }
        rec.pass.as_mut().expect("pass was just opened")
    }

    /// Close the pass, write the batch's parameters and submit. Does not wait, unless the
    /// profiler stamped the batch's dispatches: then it waits to read the stamps.
    fn submit(&self, rec: &mut Recorder) -> Option<wgpu::SubmissionIndex> {
        rec.pass = None;
        let mut encoder = rec.encoder.take()?;
        if !rec.params.is_empty() {
            self.inner.queue.write_buffer(&rec.arena, 0, &rec.params);
            rec.params.clear();
        }
        rec.dispatches = 0;
        rec.submissions += 1;
        let mut profile = lock(&self.inner.profile);
        let stamped = profile.as_ref().is_some_and(Profiler::has_pending);
        if let Some(p) = profile.as_ref() {
            p.resolve(&mut encoder);
        }
        let index = self.inner.queue.submit([encoder.finish()]);
        if let (true, Some(p)) = (stamped, profile.as_mut()) {
            // The figures are lost if the device is; the read-back that follows reports it.
            p.collect(&self.inner.device).ok();
        }
        Some(index)
    }

    /// Wait for submission `index` (everything submitted, with `None`), then report what
    /// went wrong since the last wait where no caller could take it.
    fn wait(&self, index: Option<wgpu::SubmissionIndex>) -> Result<()> {
        self.inner
            .device
            .poll(wgpu::PollType::Wait {
                submission_index: index,
                timeout: None,
            })
            .map_err(|e| Error::Device(e.to_string()))?;
        match lock(&self.inner.failure).take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Refuse an adapter whose limits are below what the engine's kernels need (a GLES-class
/// adapter may allow only 4 storage buffers per stage; the widest kernel binds 6). The
/// workgroup memory is not refused here: the tiled kernels size their tiles to it.
fn check_limits(adapter: &str, limits: &wgpu::Limits) -> Result<()> {
    let needs = crate::kernels::storage_bindings_needed();
    if limits.max_storage_buffers_per_shader_stage < needs {
        return Err(Error::AdapterLimit {
            adapter: adapter.to_string(),
            limit: "max_storage_buffers_per_shader_stage",
            has: limits.max_storage_buffers_per_shader_stage as u64,
            needs: needs as u64,
        });
    }
    Ok(())
}

/// Keep the first of the failures met where no caller can take them.
fn fail(slot: &Mutex<Option<Error>>, e: Error) {
    lock(slot).get_or_insert(e);
}

/// Send wgpu's uncaptured errors and a lost device to `slot` instead of wgpu's default
/// handler, which panics.
fn report_wgpu_failures(device: &wgpu::Device, slot: &Arc<Mutex<Option<Error>>>) {
    let errors = slot.clone();
    device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
        let message = crate::error::one_line(&e.to_string());
        fail(&errors, Error::Device(message));
    }));
    let lost = slot.clone();
    device.set_device_lost_callback(move |reason, message| {
        if reason != wgpu::DeviceLostReason::Destroyed {
            fail(
                &lost,
                Error::Device(format!("the device was lost: {message}")),
            );
        }
    });
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Device({})", self.inner.info.name)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock leaves plain bookkeeping behind, still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Rank adapters: hardware before software, modern APIs before GL; honour
/// `WGPU_ADAPTER_NAME` and `WGPU_POWER_PREF=low`.
fn choose_adapter(adapters: Vec<wgpu::Adapter>, index: usize) -> Result<wgpu::Adapter> {
    if adapters.is_empty() {
        return Err(Error::NoAdapter(
            "wgpu enumerated no adapter on any backend".into(),
        ));
    }
    if let Ok(wanted) = std::env::var("WGPU_ADAPTER_NAME") {
        let wanted_lc = wanted.to_lowercase();
        let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
        return adapters
            .into_iter()
            .find(|a| a.get_info().name.to_lowercase().contains(&wanted_lc))
            .ok_or_else(|| {
                Error::NoAdapter(format!(
                    "WGPU_ADAPTER_NAME={wanted:?} matches none of {names:?}"
                ))
            });
    }
    let low_power = std::env::var("WGPU_POWER_PREF").is_ok_and(|v| v.eq_ignore_ascii_case("low"));
    let rank = |a: &wgpu::Adapter| {
        let info = a.get_info();
        let kind = match info.device_type {
            wgpu::DeviceType::DiscreteGpu if low_power => 1,
            wgpu::DeviceType::DiscreteGpu => 0,
            wgpu::DeviceType::IntegratedGpu if low_power => 0,
            wgpu::DeviceType::IntegratedGpu => 1,
            wgpu::DeviceType::VirtualGpu => 2,
            wgpu::DeviceType::Other => 3,
            wgpu::DeviceType::Cpu => 4,
        };
        (kind, info.backend == wgpu::Backend::Gl)
    };
    // Several adapters of the best kind (a machine with several GPUs): the `index`-th,
    // counting round.
    let best = adapters
        .iter()
        .map(rank)
        .min()
        .expect("adapters is not empty");
    let mut peers: Vec<wgpu::Adapter> = adapters.into_iter().filter(|a| rank(a) == best).collect();
    let i = index % peers.len();
    Ok(peers.swap_remove(i))
}

#[cfg(test)]
mod tests {
    use super::Device;

    #[test]
    fn a_buffer_the_driver_refuses_is_an_error_not_a_panic() {
        let d = Device::shared().unwrap();
        let too_big = d.info().max_buffer_size + 4;
        let usage = crate::pool::TENSOR_USAGE;
        let e = crate::pool::create(&d.inner.device, too_big, usage).unwrap_err();
        assert!(!e.is_empty() && !e.contains('\n'), "{e}");
        // The device goes on working.
        assert!(crate::pool::create(&d.inner.device, 1024, usage).is_ok());
    }

    /// A kernel the adapter's compiler refuses is an error at the next synchronisation,
    /// naming the kernel, and the device goes on working.
    #[test]
    fn a_kernel_that_does_not_build_is_an_error_not_a_panic() {
        use crate::kernels::{Access, Kernel, Shader};
        static BROKEN: Shader = Shader {
            file: "broken.wgsl",
            source: "@compute @workgroup_size(8) fn main() { let x: u32 = 1.5; }",
        };
        static KERNEL: Kernel = Kernel {
            shader: &BROKEN,
            entry: "main",
            storage: &[Access::ReadWrite],
            overrides: &[],
            bounds_proven: false,
        };
        let d = Device::new().unwrap();
        let t = crate::Tensor::zeros(&d, &[4]).unwrap();
        d.dispatch(&KERNEL, &[], &[0u32; 4], &[t.buffer()], [1, 1, 1]);
        let e = d.synchronize().unwrap_err();
        assert!(
            matches!(&e, crate::Error::Kernel { kernel, .. } if kernel == "broken.wgsl::main"),
            "{e}"
        );
        assert!(!e.to_string().contains('\n'), "{e}");
        d.synchronize().unwrap();
        assert_eq!(t.to_vec().unwrap(), [0.0; 4]);
    }

    /// What wgpu reports outside a captured call (here an invalid buffer) is an error at the
    /// next synchronisation, not wgpu's default handler's panic.
    #[test]
    fn uncaptured_wgpu_errors_are_errors_not_panics() {
        let d = Device::new().unwrap();
        let _ = d.inner.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: 16,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::MAP_WRITE,
            mapped_at_creation: false,
        });
        let e = d.synchronize().unwrap_err();
        assert!(matches!(e, crate::Error::Device(_)), "{e}");
        d.synchronize().unwrap();
    }

    #[test]
    fn an_adapter_with_too_few_storage_buffers_is_refused_in_one_line() {
        let gles = wgpu::Limits::downlevel_defaults();
        let e = super::check_limits("a GLES adapter", &gles).unwrap_err();
        assert_eq!(
            e.to_string(),
            "a GLES adapter: max_storage_buffers_per_shader_stage is 4, and the engine's \
             kernels need 6"
        );
        super::check_limits("WebGPU's minimum", &wgpu::Limits::default()).unwrap();
    }

    /// A loop that binds the same pooled buffers to the same kernel makes its bind group
    /// once; trimming the pool frees the cached groups with the buffers.
    #[test]
    fn bind_groups_are_made_once_for_the_same_buffers() {
        let d = Device::new().unwrap();
        let a = crate::Tensor::ones(&d, &[16]).unwrap();
        let groups = || super::lock(&d.inner.bind_groups).len();
        let step = || a.add(&a).unwrap().to_vec().unwrap();
        assert_eq!(step(), [2.0; 16]);
        let made = groups();
        for _ in 0..5 {
            assert_eq!(step(), [2.0; 16]);
        }
        assert_eq!(
            groups(),
            made,
            "the output's pooled buffer comes back: no new group"
        );
        d.trim_pool();
        assert_eq!(groups(), 0);
        assert_eq!(step(), [2.0; 16]);
    }
}
