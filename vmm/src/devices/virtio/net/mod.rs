//! virtio-net on a tap device (userspace backend: the host has no vhost-net).

mod device;
mod tap;

pub use device::Net;
pub use tap::{NetBackend, Tap, TapError, TUNSETOFFLOAD};
