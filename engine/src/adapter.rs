//! Finding the adapter a device opens: the backends to enumerate, the ranking of what they
//! offer, and the limits the engine's kernels need.

use crate::error::{Error, Result};
use crate::options::DeviceOptions;

/// The adapter `options` and wgpu's environment variables pick, with the limits to request:
/// the adapter's own, lowered where `options` says so.
///
/// # Errors
/// [`Error::NoAdapter`] when none exists or none matches `WGPU_ADAPTER_NAME`;
/// [`Error::AdapterLimit`] when its limits are below what the kernels need.
pub(crate) fn find(options: &DeviceOptions) -> Result<(wgpu::Adapter, wgpu::Limits)> {
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
    let mut limits = adapter.limits();
    if let Some(bytes) = options.binding_limit {
        limits.max_storage_buffer_binding_size = limits.max_storage_buffer_binding_size.min(bytes);
    }
    check_limits(&adapter.get_info().name, &limits)?;
    Ok((adapter, limits))
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
}
