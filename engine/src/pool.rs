//! The buffer pool: freed tensor buffers are kept by size class and handed out again, so a
//! steady training loop allocates no fresh GPU memory after its first step.
//!
//! Size classes are powers of two split into four steps (1, 1.25, 1.5, 1.75 × 2^k), so a
//! buffer wastes at most a fifth of its size while still being reused across close sizes.

use std::collections::HashMap;

/// Memory figures of one device's pool, in bytes of GPU buffers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Bytes held by live tensors (rounded up to their size class).
    pub live_bytes: u64,
    /// The highest `live_bytes` seen since the device was created or [`crate::Device::reset_peak`].
    pub peak_bytes: u64,
    /// Bytes of freed buffers kept for reuse.
    pub cached_bytes: u64,
    /// Fresh GPU buffers created so far.
    pub allocations: u64,
    /// Requests served from the free lists instead.
    pub reuses: u64,
}

/// Smallest buffer the pool hands out; tiny tensors share this class.
const MIN_CLASS: u64 = 256;

/// The size class (bytes actually allocated) for a request of `bytes`.
pub(crate) fn size_class(bytes: u64) -> u64 {
    let bytes = bytes.max(MIN_CLASS);
    let pow = bytes.next_power_of_two();
    if pow == bytes {
        return bytes;
    }
    let step = pow / 8; // quarter steps between pow/2 and pow
    bytes.div_ceil(step) * step
}

#[derive(Default)]
pub(crate) struct Pool {
    free: HashMap<u64, Vec<wgpu::Buffer>>,
    stats: PoolStats,
}

impl Pool {
    /// A buffer of at least `bytes`, from the free list when one of its class is there.
    pub(crate) fn take(&mut self, device: &wgpu::Device, bytes: u64) -> (wgpu::Buffer, u64) {
        let class = size_class(bytes);
        let buffer = match self.free.get_mut(&class).and_then(Vec::pop) {
            Some(buffer) => {
                self.stats.cached_bytes -= class;
                self.stats.reuses += 1;
                buffer
            }
            None => {
                self.stats.allocations += 1;
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("tensor"),
                    size: class,
                    usage: wgpu::BufferUsages::STORAGE
                        | wgpu::BufferUsages::COPY_SRC
                        | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            }
        };
        self.stats.live_bytes += class;
        self.stats.peak_bytes = self.stats.peak_bytes.max(self.stats.live_bytes);
        (buffer, class)
    }

    /// Return a buffer taken with [`Pool::take`]. Commands already recorded that use it stay
    /// correct: the encoder orders them before any later writer.
    pub(crate) fn give_back(&mut self, buffer: wgpu::Buffer, class: u64) {
        self.stats.live_bytes -= class;
        self.stats.cached_bytes += class;
        self.free.entry(class).or_default().push(buffer);
    }

    pub(crate) fn stats(&self) -> PoolStats {
        self.stats
    }

    pub(crate) fn reset_peak(&mut self) {
        self.stats.peak_bytes = self.stats.live_bytes;
    }

    /// Drop every cached buffer (wgpu frees them once the GPU is done with them).
    pub(crate) fn trim(&mut self) {
        self.free.clear();
        self.stats.cached_bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn size_classes_round_up_by_quarter_steps() {
        assert_eq!(size_class(1), 256);
        assert_eq!(size_class(256), 256);
        assert_eq!(size_class(257), 320);
        assert_eq!(size_class(1024), 1024);
        assert_eq!(size_class(1025), 1280);
        assert_eq!(size_class(1537), 1792);
        for bytes in [300u64, 5000, 123_457, 9_999_999] {
            let class = size_class(bytes);
            assert!(class >= bytes && (class as f64) < bytes as f64 * 1.25 + 1.0);
        }
    }
}
