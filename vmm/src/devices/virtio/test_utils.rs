//! Test helpers for virtio devices and the MMIO transport.

use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use super::mmio::MmioTransport;
use super::{ActivateError, Activation, Interrupt, VirtioDevice};
use crate::devices::bus::BusDevice;
use crate::memory::GuestMem;

/// A device that only counts activations.
pub struct Dummy {
    pub sizes: Vec<u16>,
    pub activated: u32,
}

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        99
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }
    fn features(&self) -> u64 {
        0
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&[0xaa, 0xbb], offset, data)
    }
    fn activate(&mut self, act: Activation) -> Result<(), ActivateError> {
        if act.queues.len() != self.sizes.len() {
            return Err(ActivateError::QueueCount {
                got: act.queues.len(),
                want: self.sizes.len(),
            });
        }
        self.activated += 1;
        Ok(())
    }
}

pub fn guest_mem() -> GuestMem {
    crate::memory::create(1 << 20).unwrap()
}

pub fn interrupt() -> Arc<Interrupt> {
    Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()))
}

pub fn transport_with_dummy(sizes: &[u16]) -> (Arc<Mutex<Dummy>>, GuestMem, MmioTransport) {
    let dev = Arc::new(Mutex::new(Dummy {
        sizes: sizes.to_vec(),
        activated: 0,
    }));
    let mem = guest_mem();
    let evts = sizes
        .iter()
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
        .collect();
    let t = MmioTransport::new(dev.clone(), mem.clone(), interrupt(), evts);
    (dev, mem, t)
}

pub fn rd(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

pub fn wr(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

/// Negotiates VERSION_1, sets up `n` queues of 16 in guest memory, DRIVER_OK.
pub fn drive_to_ok(t: &mut MmioTransport, _mem: &GuestMem, n: u32) {
    wr(t, 0x70, 1 | 2);
    wr(t, 0x24, 1);
    wr(t, 0x20, 1);
    wr(t, 0x70, 1 | 2 | 8);
    for q in 0..n {
        let base = 0x1_0000 + u32::from(q as u16) * 0x1000;
        wr(t, 0x30, q);
        wr(t, 0x38, 16);
        wr(t, 0x80, base);
        wr(t, 0x90, base + 0x100);
        wr(t, 0xa0, base + 0x200);
        wr(t, 0x44, 1);
    }
    wr(t, 0x70, 1 | 2 | 8 | 4);
}
