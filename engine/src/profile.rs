//! The per-kernel profiler (`Device::set_profiling`, `ENGINE_PROFILE=1`).
//!
//! On an adapter with `TIMESTAMP_QUERY`, each dispatch is recorded in a compute pass of its
//! own whose beginning and end the GPU stamps; the stamps are resolved into a buffer when
//! the batch is submitted and read once that batch is done. The figures are GPU time, and
//! the batch is still submitted whole: one wait per submission, not per dispatch. Without
//! timestamps, every dispatch is submitted alone and waited for, and its wall time (with
//! one submission's overhead) is what is counted.

use std::sync::MutexGuard;

use crate::device::{lock, Device, DISPATCHES_PER_BATCH};
use crate::error::{Error, Result};
use crate::kernels::Pipeline;
use crate::recorder::Recorder;

/// Time spent in one kernel while profiling was on.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelTime {
    /// `file::entry` of the kernel and its override values, e.g.
    /// `matmul.wgsl::matmul_vec4 TRANS_A=0 TRANS_B=1`.
    pub kernel: String,
    /// How many dispatches were timed.
    pub dispatches: u64,
    /// Their total time: GPU time with timestamps, else wall time (see [`Clock`]).
    pub seconds: f64,
}

/// What the profiler measures with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clock {
    /// GPU timestamps around each dispatch.
    GpuTimestamps,
    /// Wall time of each dispatch submitted alone and waited for.
    WallPerDispatch,
}

/// The timestamps of one batch: two per dispatch.
struct Stamps {
    queries: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    readback: wgpu::Buffer,
    /// Nanoseconds per tick.
    period: f64,
    /// The kernels of the dispatches stamped in the open batch, in query order.
    pending: Vec<String>,
}

/// Figures gathered since profiling was turned on.
pub(crate) struct Profiler {
    times: Vec<KernelTime>,
    stamps: Option<Stamps>,
}

impl Profiler {
    /// A profiler that uses GPU timestamps when `timestamps` (the device has the feature).
    pub(crate) fn new(device: &wgpu::Device, queue: &wgpu::Queue, timestamps: bool) -> Profiler {
        let stamps = timestamps.then(|| {
            let count = 2 * DISPATCHES_PER_BATCH as u32;
            let bytes = count as u64 * 8;
            let buffer = |label, usage| {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size: bytes,
                    usage,
                    mapped_at_creation: false,
                })
            };
            Stamps {
                queries: device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("profiler"),
                    ty: wgpu::QueryType::Timestamp,
                    count,
                }),
                resolve: buffer(
                    "profiler resolve",
                    wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                ),
                readback: buffer(
                    "profiler read-back",
                    wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                ),
                period: queue.get_timestamp_period() as f64,
                pending: Vec::new(),
            }
        });
        Profiler {
            times: Vec::new(),
            stamps,
        }
    }

    pub(crate) fn clock(&self) -> Clock {
        if self.stamps.is_some() {
            Clock::GpuTimestamps
        } else {
            Clock::WallPerDispatch
        }
    }

    /// The timestamp writes of the next dispatch's own pass, or `None` without timestamps.
    pub(crate) fn stamp(&mut self, kernel: String) -> Option<wgpu::ComputePassTimestampWrites<'_>> {
        let stamps = self.stamps.as_mut()?;
        let i = 2 * stamps.pending.len() as u32;
        stamps.pending.push(kernel);
        Some(wgpu::ComputePassTimestampWrites {
            query_set: &stamps.queries,
            beginning_of_pass_write_index: Some(i),
            end_of_pass_write_index: Some(i + 1),
        })
    }

    /// Whether the open batch has dispatches to read the stamps of.
    pub(crate) fn has_pending(&self) -> bool {
        self.stamps.as_ref().is_some_and(|s| !s.pending.is_empty())
    }

    /// Record the copy of the open batch's stamps into the read-back buffer.
    pub(crate) fn resolve(&self, encoder: &mut wgpu::CommandEncoder) {
        if let Some(s) = self.stamps.as_ref().filter(|s| !s.pending.is_empty()) {
            let n = 2 * s.pending.len() as u32;
            encoder.resolve_query_set(&s.queries, 0..n, &s.resolve, 0);
            encoder.copy_buffer_to_buffer(&s.resolve, 0, &s.readback, 0, n as u64 * 8);
        }
    }

    /// Read the stamps of a batch that has finished (the caller waited for it) and add them.
    pub(crate) fn collect(&mut self, device: &wgpu::Device) -> Result<()> {
        let Some(s) = self.stamps.as_mut() else {
            return Ok(());
        };
        let n = 2 * s.pending.len() as u64;
        let (tx, rx) = std::sync::mpsc::channel();
        s.readback
            .slice(..n * 8)
            .map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx.send(r);
            });
        device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Device(e.to_string()))?;
        rx.recv()
            .map_err(|e| Error::Device(e.to_string()))?
            .map_err(|e| Error::Device(e.to_string()))?;
        let ticks: Vec<u64> = bytemuck::cast_slice(
            &s.readback
                .get_mapped_range(..n * 8)
                .map_err(|e| Error::Device(e.to_string()))?,
        )
        .to_vec();
        s.readback.unmap();
        let period = s.period;
        let pending = std::mem::take(&mut s.pending);
        for (kernel, pair) in pending.into_iter().zip(ticks.chunks(2)) {
            let seconds = pair[1].saturating_sub(pair[0]) as f64 * period * 1e-9;
            self.add(kernel, seconds);
        }
        Ok(())
    }

    /// Count one dispatch of `kernel` taking `seconds`.
    pub(crate) fn add(&mut self, kernel: String, seconds: f64) {
        match self.times.iter_mut().find(|t| t.kernel == kernel) {
            Some(t) => {
                t.dispatches += 1;
                t.seconds += seconds;
            }
            None => self.times.push(KernelTime {
                kernel,
                dispatches: 1,
                seconds,
            }),
        }
    }

    /// The figures, slowest kernel first.
    pub(crate) fn times(&self) -> Vec<KernelTime> {
        let mut times = self.times.clone();
        times.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
        times
    }
}

/// The device's side of profiling.
impl Device {
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

    /// Record one dispatch while profiling: in a pass of its own that the GPU stamps, or,
    /// without timestamps, submitted alone and waited for, its wall time counted.
    pub(crate) fn dispatch_profiled(
        &self,
        mut rec: MutexGuard<'_, Recorder>,
        name: String,
        pipeline: &Pipeline,
        bind_group: &wgpu::BindGroup,
        offset: u32,
        groups: [u32; 3],
    ) {
        rec.pass = None;
        let mut profile = lock(&self.inner.profile);
        let timestamp_writes = profile.as_mut().and_then(|p| p.stamp(name.clone()));
        let stamped = timestamp_writes.is_some();
        {
            let mut pass = rec.open_encoder(&self.inner.device).begin_compute_pass(
                &wgpu::ComputePassDescriptor {
                    label: None,
                    timestamp_writes,
                },
            );
            pass.set_pipeline(&pipeline.pipeline);
            pass.set_bind_group(0, bind_group, &[offset]);
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
}
