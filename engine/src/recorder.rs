//! Commands recorded but not yet submitted, and the bind groups they use.
//!
//! Dispatches go into one open compute pass; each one's uniform parameters take a
//! [`PARAM_SLOT`] of a host copy that is written to the uniform arena in one go when the
//! batch is submitted (`Device::submit`).

use std::collections::HashMap;
use std::sync::Arc;

use crate::device::DISPATCHES_PER_BATCH;
use crate::kernels::Pipeline;

/// Bytes of one uniform-arena slot: every kernel's parameters fit, and 256 is the largest
/// dynamic-offset alignment WebGPU allows an adapter to require.
pub(crate) const PARAM_SLOT: u64 = 256;

pub(crate) struct Recorder {
    // Field order matters: the pass must be dropped before the encoder it records into.
    pub(crate) pass: Option<wgpu::ComputePass<'static>>,
    pub(crate) encoder: Option<wgpu::CommandEncoder>,
    /// Host copy of this batch's uniform parameters, written to `arena` in one go at submit.
    pub(crate) params: Vec<u8>,
    pub(crate) arena: wgpu::Buffer,
    pub(crate) dispatches: usize,
    pub(crate) submissions: u64,
    /// Dispatches recorded so far.
    pub(crate) recorded: u64,
}

impl Recorder {
    pub(crate) fn new(device: &wgpu::Device) -> Recorder {
        Recorder {
            pass: None,
            encoder: None,
            params: Vec::with_capacity((PARAM_SLOT as usize) * DISPATCHES_PER_BATCH),
            arena: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("uniform arena"),
                size: PARAM_SLOT * DISPATCHES_PER_BATCH as u64,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
            dispatches: 0,
            submissions: 0,
            recorded: 0,
        }
    }

    /// Add one dispatch's parameters to the batch; returns their offset in the arena.
    pub(crate) fn record_params<P: bytemuck::Pod>(&mut self, params: &P) -> u32 {
        debug_assert!(std::mem::size_of::<P>() as u64 <= PARAM_SLOT);
        let offset = self.params.len();
        self.params.extend_from_slice(bytemuck::bytes_of(params));
        self.params.resize(offset + PARAM_SLOT as usize, 0);
        self.recorded += 1;
        offset as u32
    }

    pub(crate) fn open_encoder(&mut self, device: &wgpu::Device) -> &mut wgpu::CommandEncoder {
        self.encoder.get_or_insert_with(|| {
            device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None })
        })
    }

    pub(crate) fn open_pass(&mut self, device: &wgpu::Device) -> &mut wgpu::ComputePass<'static> {
        if self.pass.is_none() {
            let pass = self
                .open_encoder(device)
                .begin_compute_pass(&wgpu::ComputePassDescriptor::default())
                .forget_lifetime();
            self.pass = Some(pass);
        }
        self.pass.as_mut().expect("pass was just opened")
    }
}

/// The most storage buffers a kernel binds (`kernels::storage_bindings_needed` is 6).
const MAX_BINDINGS: usize = 8;

/// A bind group's identity: the pipeline (its address in the never-emptied pipeline cache)
/// and the buffers bound to bindings 1.., in order.
type BindKey = (usize, [Option<wgpu::Buffer>; MAX_BINDINGS]);

/// Bind groups kept at most; past it the cache starts afresh (a loop needs a few hundred).
const BIND_GROUPS_KEPT: usize = 16384;

/// Bind groups by pipeline and buffers: a training loop binds the same pooled buffers to the
/// same kernels step after step, and making a bind group costs as much as the rest of a
/// dispatch's recording.
#[derive(Default)]
pub(crate) struct BindGroups {
    groups: HashMap<BindKey, wgpu::BindGroup>,
}

impl BindGroups {
    /// The bind group of `buffers` (bindings 1..) and the uniform arena (binding 0, at a
    /// dynamic offset) for `pipeline`: made once, then taken from the cache.
    pub(crate) fn get(
        &mut self,
        device: &wgpu::Device,
        pipeline: &Arc<Pipeline>,
        buffers: &[&wgpu::Buffer],
        arena: &wgpu::Buffer,
    ) -> wgpu::BindGroup {
        debug_assert!(buffers.len() <= MAX_BINDINGS);
        let mut bound: [Option<wgpu::Buffer>; MAX_BINDINGS] = Default::default();
        for (slot, b) in bound.iter_mut().zip(buffers) {
            *slot = Some((*b).clone());
        }
        let key = (Arc::as_ptr(pipeline) as usize, bound);
        if let Some(group) = self.groups.get(&key) {
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
        let group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.layout,
            entries: &entries,
        });
        if self.groups.len() >= BIND_GROUPS_KEPT {
            self.groups.clear();
        }
        self.groups.insert(key, group.clone());
        group
    }

    /// Forget every group: a cached group keeps its buffers alive.
    pub(crate) fn clear(&mut self) {
        self.groups.clear();
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.groups.len()
    }
}

#[cfg(test)]
mod tests {
    use crate::Device;

    /// A loop that binds the same pooled buffers to the same kernel makes its bind group
    /// once; trimming the pool frees the cached groups with the buffers.
    #[test]
    fn bind_groups_are_made_once_for_the_same_buffers() {
        let d = Device::new().unwrap();
        let a = crate::Tensor::ones(&d, &[16]).unwrap();
        let groups = || crate::device::lock(&d.inner.bind_groups).len();
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
