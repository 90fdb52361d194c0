//! The seam between the virtio-fs device and whoever serves its queues.

use std::os::fd::RawFd;

use vmm_sys_util::eventfd::EventFd;

use crate::memory::GuestMem;

/// virtio-fs backend errors.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("cannot connect to the vhost-user socket {0}: {1}; is virtiofsd running?")]
    Connect(std::path::PathBuf, #[source] vhost::Error),
    #[error("vhost-user backend refused {0}: {1}")]
    Protocol(&'static str, #[source] vhost::Error),
    #[error("guest memory has no fd to share; it must be memfd-backed")]
    Memory,
    #[error("queue address {0:#x} is outside guest memory")]
    QueueAddress(u64),
}

/// One virtqueue as the backend needs it.
pub struct QueueSetup<'a> {
    pub size: u16,
    pub max_size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub kick: &'a EventFd,
    pub call: &'a EventFd,
}

/// Serves the virtio-fs queues.
pub trait FsBackend: Send {
    /// virtio feature bits the backend offers.
    fn features(&self) -> u64;
    /// Hands memory and queues to the backend and starts it.
    fn activate(
        &mut self,
        mem: &GuestMem,
        acked: u64,
        queues: &[QueueSetup],
    ) -> Result<(), FsError>;
    /// A descriptor that reads EOF / hangs up when the backend dies.
    fn fd(&self) -> RawFd;
}
