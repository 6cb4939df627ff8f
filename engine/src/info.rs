//! What the chosen adapter is: its name, backend, limits, features and memory, as the
//! device was created with them.

use crate::options::Features;

/// What the chosen adapter is and the limits the device was created with.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    /// Adapter name as the driver reports it (e.g. `llvmpipe (LLVM 15.0.6, 256 bits)`).
    pub name: String,
    /// Graphics API in use (Vulkan, Metal, Dx12, Gl).
    pub backend: String,
    /// Discrete, integrated, virtual, CPU or other.
    pub device_type: String,
    /// The backend's vendor id (PCI ids on Vulkan: 0x10de NVIDIA, 0x1002 AMD, 0x8086 Intel;
    /// Apple's 0x106b on Metal).
    pub vendor: u32,
    /// Driver name and version.
    pub driver: String,
    /// Largest storage buffer binding, in bytes: the largest tensor.
    pub max_storage_buffer_binding_size: u64,
    /// Largest buffer, in bytes.
    pub max_buffer_size: u64,
    /// Storage buffers one kernel may bind.
    pub max_storage_buffers_per_shader_stage: u32,
    /// Workgroup shared memory, in bytes.
    pub max_compute_workgroup_storage_size: u32,
    /// Invocations in one workgroup.
    pub max_compute_invocations_per_workgroup: u32,
    /// Invocations along a workgroup's x axis.
    pub max_compute_workgroup_size_x: u32,
    /// Workgroups along one dispatch dimension.
    pub max_compute_workgroups_per_dimension: u32,
    /// The smallest and largest subgroup (warp, wave) the adapter runs, 0 when unknown.
    pub subgroup_sizes: (u32, u32),
    /// The optional features the adapter offered and the device enabled; kernels that use
    /// one have a path without it.
    pub features: Features,
    /// The adapter's device-local memory in bytes, where the backend reports it (Vulkan).
    pub memory_bytes: Option<u64>,
    /// What the buffer pool may hold: a discrete GPU's memory, or the lower
    /// [`crate::DeviceOptions::memory_limit`] / `ENGINE_MEMORY_LIMIT`. `None` when neither applies.
    pub memory_budget: Option<u64>,
    /// The cooperative-matrix (tensor core) shapes the adapter reports, e.g.
    /// `16x16x16 F16*F16+F32`: what a matrix-unit kernel could use. The engine does not use
    /// them yet.
    pub cooperative_matrices: Vec<String>,
}

impl DeviceInfo {
    /// True for a software rasteriser such as Mesa's lavapipe.
    pub fn is_software(&self) -> bool {
        self.device_type == "Cpu"
    }
}

impl std::fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}, {}, driver {}; max storage binding {} MiB, max buffer {} MiB, workgroup memory {} KiB, {} invocations, subgroups {}-{}; features: {})",
            self.name,
            self.backend,
            self.device_type,
            self.driver,
            self.max_storage_buffer_binding_size >> 20,
            self.max_buffer_size >> 20,
            self.max_compute_workgroup_storage_size >> 10,
            self.max_compute_invocations_per_workgroup,
            self.subgroup_sizes.0,
            self.subgroup_sizes.1,
            self.features
        )
    }
}

impl DeviceInfo {
    /// The description of `adapter` opened with `limits` and `features`; the pool's budget
    /// is the lower of a discrete GPU's memory and `limit`.
    pub(crate) fn of(
        adapter: &wgpu::Adapter,
        limits: &wgpu::Limits,
        features: Features,
        limit: Option<u64>,
    ) -> DeviceInfo {
        let a = adapter.get_info();
        let memory_bytes = crate::memory::adapter_memory(adapter);
        // Only a discrete GPU's device-local memory is a hard limit: a software adapter (its
        // heap is nominal; lavapipe reports 2 GB and runs 9 GB steps) and an integrated GPU
        // (which also uses system memory) go past theirs.
        let hard = memory_bytes.filter(|_| a.device_type == wgpu::DeviceType::DiscreteGpu);
        let memory_budget = match (hard, limit) {
            (Some(m), Some(l)) => Some(m.min(l)),
            (m, l) => m.or(l),
        };
        DeviceInfo {
            name: a.name,
            backend: format!("{:?}", a.backend),
            device_type: format!("{:?}", a.device_type),
            vendor: a.vendor,
            driver: format!("{} {}", a.driver, a.driver_info).trim().to_string(),
            max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
            max_buffer_size: limits.max_buffer_size,
            max_storage_buffers_per_shader_stage: limits.max_storage_buffers_per_shader_stage,
            max_compute_workgroup_storage_size: limits.max_compute_workgroup_storage_size,
            max_compute_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
            max_compute_workgroup_size_x: limits.max_compute_workgroup_size_x,
            max_compute_workgroups_per_dimension: limits.max_compute_workgroups_per_dimension,
            subgroup_sizes: (a.subgroup_min_size, a.subgroup_max_size),
            features,
            memory_bytes,
            memory_budget,
            cooperative_matrices: adapter
                .cooperative_matrix_properties()
                .iter()
                .map(|p| {
                    format!(
                        "{}x{}x{} {:?}*{:?}+{:?}",
                        p.m_size, p.n_size, p.k_size, p.ab_type, p.ab_type, p.cr_type
                    )
                })
                .collect(),
        }
    }
}
