//! virtio devices over the virtio-mmio transport.

pub mod fs;
pub mod mmio;
pub mod net;
pub mod rng;
#[cfg(test)]
pub mod test_utils;
pub mod vsock;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::memory::GuestMem;

/// Device ids (virtio 1.2, 5).
pub const TYPE_NET: u32 = 1;
pub const TYPE_RNG: u32 = 4;
pub const TYPE_VSOCK: u32 = 19;
pub const TYPE_FS: u32 = 26;

/// Feature bits common to all devices.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Interrupt status bit: a used ring was updated.
pub const INT_VRING: u32 = 1;
/// Interrupt status bit: the configuration changed.
pub const INT_CONFIG: u32 = 2;

/// Longest descriptor chain (in descriptors) any device accepts.
pub const MAX_CHAIN_LEN: usize = 64;

/// The device's interrupt line: an irqfd plus the MMIO InterruptStatus bits.
pub struct Interrupt {
    pub status: AtomicU32,
    pub irqfd: EventFd,
}

impl Interrupt {
    pub fn new(irqfd: EventFd) -> Self {
        Interrupt {
            status: AtomicU32::new(0),
            irqfd,
        }
    }

    /// Raises the interrupt for a used-ring update.
    pub fn signal_used_queue(&self) {
        self.status.fetch_or(INT_VRING, Ordering::SeqCst);
        if let Err(e) = self.irqfd.write(1) {
            tracing::error!("cannot raise the virtio interrupt: {e}");
        }
    }
}

/// What a device gets when the driver sets DRIVER_OK.
pub struct Activation {
    pub mem: GuestMem,
    /// One queue and its notification eventfd per virtqueue.
    pub queues: Vec<(Queue, EventFd)>,
    pub interrupt: Arc<Interrupt>,
    /// Feature bits the driver accepted.
    pub acked_features: u64,
}

/// Device activation errors.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("driver set up {got} queues, the device needs {want}")]
    QueueCount { got: usize, want: usize },
    #[error("device backend failed to start: {0}")]
    Backend(String),
}

/// A virtio device as the MMIO transport sees it.
pub trait VirtioDevice: Send {
    fn device_type(&self) -> u32;
    /// Maximum size of each virtqueue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Offered feature bits (including `VIRTIO_F_VERSION_1`).
    fn features(&self) -> u64;
    fn read_config(&self, offset: u64, data: &mut [u8]);
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Called once when the driver sets DRIVER_OK.
    fn activate(&mut self, act: Activation) -> Result<(), ActivateError>;
    /// Driver reset; returns false when the device cannot be reset.
    fn reset(&mut self) -> bool {
        false
    }
}

/// Reads `data.len()` bytes at `offset` of a config space image, leaving
/// bytes past its end untouched (virtio: reads past the end are undefined).
pub fn read_config_bytes(space: &[u8], offset: u64, data: &mut [u8]) {
    let start = offset as usize;
    if let Some(src) = space.get(start..start.saturating_add(data.len())) {
        data.copy_from_slice(src);
    }
}

/// Counts guest-caused errors and logs only the first few and then every
/// 1000th, so a hostile guest cannot fill the host's disk with logs.
#[derive(Default)]
pub struct GuestErrorLog(AtomicU32);

impl GuestErrorLog {
    pub fn log(&self, device: &str, msg: &dyn std::fmt::Display) {
        let n = self.0.fetch_add(1, Ordering::Relaxed);
        if n < 10 || n.is_multiple_of(1000) {
            tracing::warn!(
                device,
                count = n + 1,
                "bad request from the guest driver: {msg}"
            );
        }
    }

    pub fn count(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }
}
