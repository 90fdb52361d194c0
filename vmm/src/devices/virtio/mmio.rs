//! The virtio-mmio transport (virtio 1.2, 4.2.2, version 2 registers).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::{Activation, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::devices::bus::BusDevice;
use crate::memory::GuestMem;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR: u32 = 0x4b53_5548; // "HUSK"

const S_ACKNOWLEDGE: u32 = 1;
const S_DRIVER: u32 = 2;
const S_DRIVER_OK: u32 = 4;
const S_FEATURES_OK: u32 = 8;
const S_FAILED: u32 = 0x80;

/// One virtio device behind its MMIO window.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMem,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    queue_sel: u32,
    features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u32,
    activated: bool,
    config_generation: u32,
}

impl MmioTransport {
    /// `queue_evts` must hold one eventfd per queue (also registered as
    /// KVM ioeventfds on QueueNotify, when available).
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: GuestMem,
        interrupt: Arc<Interrupt>,
        queue_evts: Vec<EventFd>,
    ) -> Self {
        let sizes = device.lock().unwrap().queue_max_sizes().to_vec();
        let queues = sizes
            .iter()
            .map(|&s| Queue::new(s).expect("queue max size is a power of two"))
            .collect();
        MmioTransport {
            device,
            mem,
            interrupt,
            queues,
            queue_evts,
            queue_sel: 0,
            features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            status: 0,
            activated: false,
            config_generation: 0,
        }
    }

    fn queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        let dev = self.device.lock().unwrap();
        match offset {
            0x00 => MAGIC,
            0x04 => VERSION,
            0x08 => dev.device_type(),
            0x0c => VENDOR,
            0x10 => {
                let f = dev.features() | VIRTIO_F_VERSION_1;
                match self.features_sel {
                    0 => f as u32,
                    1 => (f >> 32) as u32,
                    _ => 0,
                }
            }
            0x34 => {
                drop(dev);
                self.queue().map_or(0, |q| u32::from(q.max_size()))
            }
            0x44 => {
                drop(dev);
                self.queue().map_or(0, |q| u32::from(q.ready()))
            }
            0x60 => self.interrupt.status.load(Ordering::SeqCst),
            // ShmLen/ShmBase: all ones = no shared memory region.
            0xb0..=0xbc => u32::MAX,
            0x70 => self.status,
            0xfc => self.config_generation,
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        let lo = |x: u32| Some(x);
        match offset {
            0x14 => self.features_sel = v,
            0x20 => {
                if self.status & S_FEATURES_OK == 0 {
                    let shift = 32 * u64::from(self.driver_features_sel.min(2));
                    if shift < 64 {
                        self.driver_features |= u64::from(v) << shift;
                    }
                }
            }
            0x24 => self.driver_features_sel = v,
            0x30 => self.queue_sel = v,
            0x38 => {
                if let Some(q) = self.queue() {
                    q.set_size(v as u16);
                }
            }
            0x44 => {
                if let Some(q) = self.queue() {
                    q.set_ready(v == 1);
                }
            }
            0x50 => {
                if let Some(evt) = self.queue_evts.get(v as usize) {
                    let _ = evt.write(1);
                }
            }
            0x64 => {
                self.interrupt.status.fetch_and(!v, Ordering::SeqCst);
            }
            0x70 => self.set_status(v),
            0x80 => self
                .queue()
                .map_or((), |q| q.set_desc_table_address(lo(v), None)),
            0x84 => self
                .queue()
                .map_or((), |q| q.set_desc_table_address(None, lo(v))),
            0x90 => self
                .queue()
                .map_or((), |q| q.set_avail_ring_address(lo(v), None)),
            0x94 => self
                .queue()
                .map_or((), |q| q.set_avail_ring_address(None, lo(v))),
            0xa0 => self
                .queue()
                .map_or((), |q| q.set_used_ring_address(lo(v), None)),
            0xa4 => self
                .queue()
                .map_or((), |q| q.set_used_ring_address(None, lo(v))),
            _ => tracing::debug!("virtio-mmio: write to unknown register {offset:#x}"),
        }
    }

    fn set_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        if v & S_FEATURES_OK != 0 && self.status & S_FEATURES_OK == 0 {
            let offered = self.device.lock().unwrap().features() | VIRTIO_F_VERSION_1;
            if self.driver_features & !offered != 0
                || self.driver_features & VIRTIO_F_VERSION_1 == 0
            {
                // Driver asked for something we did not offer: FEATURES_OK stays clear.
                self.status = v & !S_FEATURES_OK;
                return;
            }
        }
        self.status = v;
        if v & S_DRIVER_OK != 0 && !self.activated {
            self.activate();
        }
    }

    fn activate(&mut self) {
        let ready = v_all(S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK, self.status);
        let queues_valid = self.queues.iter().all(|q| q.is_valid(&self.mem));
        let evts: Result<Vec<EventFd>, _> = self.queue_evts.iter().map(|e| e.try_clone()).collect();
        if !ready || !queues_valid || evts.is_err() {
            tracing::warn!("virtio-mmio: driver set DRIVER_OK with invalid queues; marking failed");
            self.status |= S_FAILED;
            return;
        }
        let act = Activation {
            mem: self.mem.clone(),
            queues: self.queues.drain(..).zip(evts.unwrap()).collect(),
            interrupt: self.interrupt.clone(),
            acked_features: self.driver_features,
        };
        match self.device.lock().unwrap().activate(act) {
            Ok(()) => self.activated = true,
            Err(e) => {
                tracing::error!("virtio device activation failed: {e}");
                self.status |= S_FAILED;
            }
        }
    }

    fn reset(&mut self) {
        let sizes = {
            let mut dev = self.device.lock().unwrap();
            if self.activated && !dev.reset() {
                tracing::warn!("virtio device cannot be reset; keeping it active");
                return;
            }
            dev.queue_max_sizes().to_vec()
        };
        self.queues = sizes
            .iter()
            .map(|&s| Queue::new(s).expect("queue max size is a power of two"))
            .collect();
        self.activated = false;
        self.status = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.interrupt.status.store(0, Ordering::SeqCst);
    }
}

fn v_all(bits: u32, v: u32) -> bool {
    v & bits == bits
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= 0x100 {
            self.device
                .lock()
                .unwrap()
                .read_config(offset - 0x100, data);
            return;
        }
        if data.len() != 4 {
            data.fill(0);
            return;
        }
        let v = self.read_reg(offset);
        data.copy_from_slice(&v.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= 0x100 {
            self.device
                .lock()
                .unwrap()
                .write_config(offset - 0x100, data);
            self.config_generation = self.config_generation.wrapping_add(1);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return;
        };
        self.write_reg(offset, u32::from_le_bytes(bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::*;

    #[test]
    fn registers_and_activation() {
        let (dev, mem, mut t) = transport_with_dummy(&[16, 16]);
        assert_eq!(rd(&mut t, 0x00), MAGIC);
        assert_eq!(rd(&mut t, 0x04), 2);
        assert_eq!(rd(&mut t, 0x08), 99);
        wr(&mut t, 0x14, 1);
        assert_eq!(rd(&mut t, 0x10), 1, "VERSION_1 in the high word");
        wr(&mut t, 0x30, 1);
        assert_eq!(rd(&mut t, 0x34), 16);
        wr(&mut t, 0x30, 7);
        assert_eq!(rd(&mut t, 0x34), 0, "no such queue");
        assert_eq!(rd(&mut t, 0xb0), u32::MAX, "no shared memory regions");
        drive_to_ok(&mut t, &mem, 2);
        assert_eq!(rd(&mut t, 0x70) & S_DRIVER_OK, S_DRIVER_OK);
        assert_eq!(dev.lock().unwrap().activated, 1);
        // Config space reads go to the device.
        let mut b = [0u8; 2];
        t.read(0x100, &mut b);
        assert_eq!(b, [0xaa, 0xbb]);
    }

    #[test]
    fn unoffered_features_are_refused() {
        let (_dev, _mem, mut t) = transport_with_dummy(&[16]);
        wr(&mut t, 0x70, S_ACKNOWLEDGE | S_DRIVER);
        wr(&mut t, 0x24, 0);
        wr(&mut t, 0x20, 1 << 5); // never offered
        wr(&mut t, 0x24, 1);
        wr(&mut t, 0x20, 1);
        wr(&mut t, 0x70, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
        assert_eq!(rd(&mut t, 0x70) & S_FEATURES_OK, 0);
    }

    #[test]
    fn driver_ok_with_bad_queue_fails_without_activating() {
        let (dev, _mem, mut t) = transport_with_dummy(&[16]);
        wr(&mut t, 0x70, S_ACKNOWLEDGE | S_DRIVER);
        wr(&mut t, 0x24, 1);
        wr(&mut t, 0x20, 1);
        wr(&mut t, 0x70, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
        // Queue 0: size not a power of two, rings outside guest memory.
        wr(&mut t, 0x38, 3);
        wr(&mut t, 0x80, 0xffff_0000);
        wr(&mut t, 0x44, 1);
        wr(
            &mut t,
            0x70,
            S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK,
        );
        assert_ne!(rd(&mut t, 0x70) & S_FAILED, 0);
        assert_eq!(dev.lock().unwrap().activated, 0);
    }

    #[test]
    fn notify_interrupt_ack_and_odd_sizes() {
        let (_dev, _mem, mut t) = transport_with_dummy(&[16]);
        wr(&mut t, 0x50, 0);
        assert_eq!(t.queue_evts[0].read().unwrap(), 1);
        wr(&mut t, 0x50, 9); // no such queue: ignored
        t.interrupt.signal_used_queue();
        assert_eq!(rd(&mut t, 0x60), 1);
        wr(&mut t, 0x64, 1);
        assert_eq!(rd(&mut t, 0x60), 0);
        let mut b = [0xffu8; 2];
        t.read(0x00, &mut b);
        assert_eq!(b, [0, 0], "non-4-byte register reads return zero");
        t.write(0x70, &[1, 2]); // ignored
        assert_eq!(rd(&mut t, 0x70), 0);
    }
}
