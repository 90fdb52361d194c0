//! Devices: legacy ones on the port bus, virtio ones on MMIO.

pub mod bus;
pub mod console_log;
pub mod i8042;
pub mod serial;
pub mod virtio;
