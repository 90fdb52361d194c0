//! virtio-rng: fills the guest's buffers from the host's entropy, so the
//! guest kernel does not wait for entropy at boot.

mod device;
mod source;

pub use device::Rng;
pub use source::{EntropySource, OsEntropy};
