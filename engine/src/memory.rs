//! How much memory the adapter has, and the budget the buffer pool keeps to.
//!
//! wgpu does not report an adapter's memory, so on Vulkan it is read from the physical
//! device's memory heaps (the largest device-local one), through wgpu's hal. Elsewhere
//! (Metal, DX12, GL) it is unknown. `ENGINE_MEMORY_LIMIT` (or
//! [`crate::DeviceOptions::memory_limit`]) sets a lower budget, as a smaller GPU's would be:
//! the pool then refuses an allocation past it with [`crate::Error::OutOfMemory`], as the
//! driver would, which is how the tests check a run that does not fit.

use crate::error::{Error, Result};

/// The adapter's largest device-local memory heap in bytes, where the backend says.
pub(crate) fn adapter_memory(adapter: &wgpu::Adapter) -> Option<u64> {
    #[cfg(any(target_os = "linux", target_os = "windows", target_os = "android"))]
    {
        // SAFETY: the hal adapter is only read (its instance and physical device handles),
        // while the wgpu adapter it belongs to is alive.
        let hal = unsafe { adapter.as_hal::<wgpu::hal::api::Vulkan>() }?;
        let instance = hal.shared_instance().raw_instance();
        // SAFETY: a valid physical device of this instance; the call only fills a struct.
        let props =
            unsafe { instance.get_physical_device_memory_properties(hal.raw_physical_device()) };
        const DEVICE_LOCAL: u32 = 0x1; // VK_MEMORY_HEAP_DEVICE_LOCAL_BIT
        props.memory_heaps[..props.memory_heap_count as usize]
            .iter()
            .filter(|h| h.flags.as_raw() & DEVICE_LOCAL != 0)
            .map(|h| h.size)
            .max()
    }
    #[cfg(not(any(target_os = "linux", target_os = "windows", target_os = "android")))]
    {
        let _ = adapter;
        None
    }
}

/// A byte count as `ENGINE_MEMORY_LIMIT` takes it: a number with an optional unit (`B`,
/// `KB`, `MB`, `GB`, `TB` in powers of 1000; `KiB`, `MiB`, `GiB`, `TiB` in powers of 1024).
pub(crate) fn parse_bytes(text: &str) -> Result<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale = match unit.trim() {
        "" | "B" => 1.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        "KiB" => 1024.0,
        "MiB" => 1024f64.powi(2),
        "GiB" => 1024f64.powi(3),
        "TiB" => 1024f64.powi(4),
        _ => f64::NAN,
    };
    match number.parse::<f64>() {
        Ok(n) if (n * scale).is_finite() && n > 0.0 => Ok((n * scale) as u64),
        _ => Err(Error::setting(
            "ENGINE_MEMORY_LIMIT",
            text,
            "expected a size such as 8GB or 512MiB",
        )),
    }
}

/// Bytes as people read them: `9.06 GB`, `448 MB`.
pub fn human_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    match b {
        b if b >= 1e9 => format!("{:.2} GB", b / 1e9),
        b if b >= 1e6 => format!("{:.1} MB", b / 1e6),
        b if b >= 1e3 => format!("{:.1} KB", b / 1e3),
        b => format!("{b} B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_their_units() {
        assert_eq!(parse_bytes("8GB").unwrap(), 8_000_000_000);
        assert_eq!(parse_bytes("512 MiB").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        for bad in ["", "GB", "8 parsecs", "-1GB", "0"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
        assert_eq!(human_bytes(9_060_000_000), "9.06 GB");
        assert_eq!(human_bytes(447_600_000), "447.6 MB");
    }
}
