//! The device: the runtime every op goes through. It holds what the other modules keep
//! (the adapter from `adapter.rs`, pipelines from `kernels.rs`, the pool and its memory
//! budget in `pool.rs`, the recorder and bind groups in `recorder.rs`, the profiler in
//! `profile.rs`, the matrix product's choices from `tune/`) and does the dispatch, the
//! submission, the upload and the read-back.
//!
//! An op never submits work by itself. It records a dispatch into the open compute pass;
//! the recorded batch is submitted when a result is read back, when host data is uploaded,
//! or when [`DISPATCHES_PER_BATCH`] dispatches have been recorded.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use crate::error::{Error, Result};
use crate::info::DeviceInfo;
use crate::kernels::{Kernel, PipelineCache};
use crate::ops::AttentionKernel;
use crate::options::DeviceOptions;
use crate::pool::Pool;
use crate::profile::Profiler;
use crate::recorder::{BindGroups, Recorder, PARAM_SLOT};
use crate::tune::{Autotune, Tuner};

/// Dispatches recorded before the batch is submitted without waiting for a read-back.
pub const DISPATCHES_PER_BATCH: usize = 512;

/// A GPU (or software) device with its runtime. Cheap to clone; all clones share one queue,
/// pool and pipeline cache. Safe to use from several threads.
#[derive(Clone)]
pub struct Device {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) info: DeviceInfo,
    pipelines: Mutex<PipelineCache>,
    pub(crate) pool: Mutex<Pool>,
    recorder: Mutex<Recorder>,
    /// Four words a kernel writes when it meets a bad index: op code, index, axis size.
    status: wgpu::Buffer,
    /// Invocations per workgroup of the row kernels.
    row_workgroup: u32,
    /// Per-kernel times while profiling is on (see [`Device::set_profiling`]).
    pub(crate) profile: Mutex<Option<Profiler>>,
    /// The matrix product's kernel choices.
    tuner: Mutex<Tuner>,
    /// Tiled kernels fill workgroup memory with NaN first.
    poison: bool,
    /// Kernels with proven bounds are built without runtime checks.
    trusted: bool,
    /// The attention kernels' family.
    attention: AttentionKernel,
    /// Row kernels reduce with subgroup operations.
    subgroup_reductions: bool,
    /// An error met where no caller could take it (a kernel that did not build, wgpu's
    /// uncaptured errors, a lost device), returned by the next synchronisation or read-back.
    failure: Arc<Mutex<Option<Error>>>,
    pub(crate) bind_groups: Mutex<BindGroups>,
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
        let (adapter, limits) = crate::adapter::find(&options)?;
        let settings = options.resolve(&adapter)?;
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
        let tuner = Tuner::new(
            &info,
            settings.autotune,
            settings.tune_cache,
            settings.tune_budget,
        );
        assert!(limits.min_uniform_buffer_offset_alignment as u64 <= PARAM_SLOT);
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
        let recorder = Recorder::new(&device);
        let opened = Device {
            inner: Arc::new(Inner {
                device,
                queue,
                info,
                pipelines: Mutex::new(PipelineCache::default()),
                pool: Mutex::new(Pool::default()),
                recorder: Mutex::new(recorder),
                status,
                row_workgroup: settings.row_workgroup,
                profile: Mutex::new(None),
                tuner: Mutex::new(tuner),
                poison: settings.poison,
                trusted: settings.trusted,
                attention: settings.attention,
                subgroup_reductions: settings.subgroup_reductions,
                failure,
                bind_groups: Mutex::new(BindGroups::default()),
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

    /// How this device's matrix products pick their kernel.
    pub fn autotune(&self) -> Autotune {
        lock(&self.inner.tuner).mode
    }

    /// The matrix product's kernel choices, held for [`crate::tune::choose`].
    pub(crate) fn tuner(&self) -> MutexGuard<'_, Tuner> {
        lock(&self.inner.tuner)
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
        let offset = rec.record_params(params);
        let bind_group =
            lock(&self.inner.bind_groups).get(&self.inner.device, &pipeline, buffers, &rec.arena);
        if lock(&self.inner.profile).is_some() {
            let name = kernel.name(overrides);
            return self.dispatch_profiled(rec, name, &pipeline, &bind_group, offset, groups);
        }
        let pass = rec.open_pass(&self.inner.device);
        pass.set_pipeline(&pipeline.pipeline);
        pass.set_bind_group(0, &bind_group, &[offset]);
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        rec.dispatches += 1;
        if rec.dispatches >= DISPATCHES_PER_BATCH {
            self.submit(&mut rec);
        }
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
            let encoder = rec.open_encoder(&self.inner.device);
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

    /// Close the pass, write the batch's parameters and submit. Does not wait, unless the
    /// profiler stamped the batch's dispatches: then it waits to read the stamps.
    pub(crate) fn submit(&self, rec: &mut Recorder) -> Option<wgpu::SubmissionIndex> {
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
    pub(crate) fn wait(&self, index: Option<wgpu::SubmissionIndex>) -> Result<()> {
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

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock leaves plain bookkeeping behind, still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::Device;

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
}
