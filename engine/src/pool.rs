//! The buffer pool: freed tensor buffers are kept by size class and handed out again, so a
//! steady training loop allocates no fresh GPU memory after its first step.
//!
//! Size classes are powers of two split into four steps (1, 1.25, 1.5, 1.75 × 2^k), so a
//! buffer wastes at most a fifth of its size while still being reused across close sizes.
//! A class never exceeds the adapter's buffer limit: a request near the limit (1.75 to 2
//! GiB where the limit is 2^31 - 1) gets a buffer of the limit, not of the next class.
//! Creating a buffer can fail (the GPU's memory is full); that is an error to report, not a
//! validation panic, so fresh buffers are made inside an error scope.
//!
//! The memory budget (a discrete GPU's memory, or the lower `ENGINE_MEMORY_LIMIT`) is
//! enforced here too, in [`Device`]'s `alloc`: the one story of where a tensor's memory
//! comes from and what happens when there is none.

use std::collections::HashMap;

use crate::device::{lock, Device};
use crate::error::Error;

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

/// The size class (bytes actually allocated) for a request of `bytes`, at most `limit`
/// (the largest buffer the adapter binds) rounded down to a multiple of 4, which a request
/// of whole 32-bit elements never exceeds.
pub(crate) fn size_class(bytes: u64, limit: u64) -> u64 {
    let bytes = bytes.max(MIN_CLASS);
    let pow = bytes.next_power_of_two();
    let class = if pow == bytes {
        bytes
    } else {
        let step = pow / 8; // quarter steps between pow/2 and pow
        bytes.div_ceil(step) * step
    };
    class.min(limit & !3)
}

#[derive(Default)]
pub(crate) struct Pool {
    free: HashMap<u64, Vec<wgpu::Buffer>>,
    stats: PoolStats,
}

impl Pool {
    /// A buffer of at least `bytes` (at most `limit`), from the free list when one of its
    /// class is there.
    ///
    /// # Errors
    /// The driver's message when a fresh buffer cannot be created.
    pub(crate) fn take(
        &mut self,
        device: &wgpu::Device,
        bytes: u64,
        limit: u64,
    ) -> Result<(wgpu::Buffer, u64), String> {
        let class = size_class(bytes, limit);
        let buffer = match self.free.get_mut(&class).and_then(Vec::pop) {
            Some(buffer) => {
                self.stats.cached_bytes -= class;
                self.stats.reuses += 1;
                buffer
            }
            None => {
                let buffer = create(device, class, TENSOR_USAGE)?;
                self.stats.allocations += 1;
                buffer
            }
        };
        self.stats.live_bytes += class;
        self.stats.peak_bytes = self.stats.peak_bytes.max(self.stats.live_bytes);
        Ok((buffer, class))
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

/// A buffer of `size` bytes for `usage`, or the driver's reason (out of memory, over a
/// limit).
pub(crate) fn create(
    device: &wgpu::Device,
    size: u64,
    usage: wgpu::BufferUsages,
) -> Result<wgpu::Buffer, String> {
    let memory = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let buffer = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size,
        usage,
        mapped_at_creation: false,
    });
    let invalid = pollster::block_on(validation.pop());
    let out_of_memory = pollster::block_on(memory.pop());
    match out_of_memory.or(invalid) {
        None => Ok(buffer),
        Some(e) => Err(crate::error::one_line(&e.to_string())),
    }
}

/// What a tensor's buffer is used for: kernels' storage, and copies both ways.
pub(crate) const TENSOR_USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

/// The device's side of the pool: its figures, and the memory budget's policy, which refuses
/// past the budget, frees cached buffers when they would cross it, and frees them and tries
/// again when the driver has no memory left.
impl Device {
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
    pub fn peak_growth<T>(&self, f: impl FnOnce() -> T) -> crate::Result<(T, u64)> {
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

    /// A pooled buffer for `bytes`, after checking the adapter's limit.
    pub(crate) fn alloc(
        &self,
        op: &'static str,
        shape: &[usize],
        bytes: u64,
    ) -> crate::Result<(wgpu::Buffer, u64)> {
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
            let class = size_class(bytes, limit);
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
}

#[cfg(test)]
mod tests {
    use super::size_class;

    const NO_LIMIT: u64 = u64::MAX;

    #[test]
    fn size_classes_round_up_by_quarter_steps() {
        assert_eq!(size_class(1, NO_LIMIT), 256);
        assert_eq!(size_class(256, NO_LIMIT), 256);
        assert_eq!(size_class(257, NO_LIMIT), 320);
        assert_eq!(size_class(1024, NO_LIMIT), 1024);
        assert_eq!(size_class(1025, NO_LIMIT), 1280);
        assert_eq!(size_class(1537, NO_LIMIT), 1792);
        for bytes in [300u64, 5000, 123_457, 9_999_999] {
            let class = size_class(bytes, NO_LIMIT);
            assert!(class >= bytes && (class as f64) < bytes as f64 * 1.25 + 1.0);
        }
    }

    #[test]
    fn size_classes_stop_at_the_binding_limit() {
        // A common limit (2^31 - 1): requests of 1.75 to 2 GiB would round to 2 GiB.
        let limit = (1u64 << 31) - 1;
        for bytes in [
            (7u64 << 28) + 4,
            (15u64 << 27) + 4,
            (1 << 31) - 1024,
            (1 << 31) - 4,
        ] {
            let class = size_class(bytes, limit);
            assert!(
                class >= bytes && class <= limit && class.is_multiple_of(4),
                "{bytes} -> {class}"
            );
        }
        assert_eq!(size_class(1000, 1000), 1000);
        assert_eq!(size_class(996, 1001), 1000);
        assert_eq!(size_class(100, 1000), 256);
    }

    #[test]
    fn a_buffer_the_driver_refuses_is_an_error_not_a_panic() {
        let d = crate::Device::shared().unwrap();
        let too_big = d.info().max_buffer_size + 4;
        let usage = super::TENSOR_USAGE;
        let e = super::create(&d.inner.device, too_big, usage).unwrap_err();
        assert!(!e.is_empty() && !e.contains('\n'), "{e}");
        // The device goes on working.
        assert!(super::create(&d.inner.device, 1024, usage).is_ok());
    }
}
