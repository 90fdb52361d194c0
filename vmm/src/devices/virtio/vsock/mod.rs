//! virtio-vsock with a userspace hybrid-vsock backend (no vhost-vsock on
//! the host).

mod backend;
mod connection;
mod device;
#[cfg(test)]
mod device_tests;
mod muxer;
#[cfg(test)]
mod muxer_tests;
pub mod packet;

pub use backend::VsockBackend;
pub use device::Vsock;
pub use muxer::{HybridMuxer, MuxerError};
