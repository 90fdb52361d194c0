//! virtio-fs: the device model lives here, the file server is a
//! vhost-user backend (virtiofsd) that reads the queues from guest memory
//! it maps through the memfd we send it.

mod backend;
mod device;
mod vhost_user;

pub use backend::{FsBackend, FsError, QueueSetup};
pub use device::Fs;
pub use vhost_user::VhostUserFs;
