//! Port-I/O and MMIO dispatch from vCPU exits to devices.

use std::sync::{Arc, Mutex};

/// A device on the PIO or MMIO bus. `offset` is relative to its base.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Bus errors.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap { base: u64, len: u64 },
}

type Entry = (u64, u64, Arc<Mutex<dyn BusDevice>>);

/// A set of non-overlapping address ranges, each owned by one device.
#[derive(Default, Clone)]
pub struct Bus {
    devices: Vec<Entry>,
}

impl Bus {
    pub fn insert(
        &mut self,
        base: u64,
        len: u64,
        dev: Arc<Mutex<dyn BusDevice>>,
    ) -> Result<(), BusError> {
        let end = base + len;
        if self
            .devices
            .iter()
            .any(|(b, l, _)| base < b + l && *b < end)
        {
            return Err(BusError::Overlap { base, len });
        }
        self.devices.push((base, len, dev));
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(u64, &Arc<Mutex<dyn BusDevice>>)> {
        self.devices
            .iter()
            .find(|(b, l, _)| addr >= *b && addr < b + l)
            .map(|(b, _, d)| (addr - b, d))
    }

    /// Reads from the device at `addr`; returns false (data left as all ones)
    /// when nothing is there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((off, d)) => {
                d.lock().unwrap_or_else(|p| p.into_inner()).read(off, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Writes to the device at `addr`; returns false when nothing is there.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((off, d)) => {
                d.lock().unwrap_or_else(|p| p.into_inner()).write(off, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Reg(u8);
    impl BusDevice for Reg {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data[0] = self.0 + offset as u8;
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    #[test]
    fn dispatch_and_overlap() {
        let mut bus = Bus::default();
        bus.insert(0x10, 4, Arc::new(Mutex::new(Reg(1)))).unwrap();
        assert!(bus.insert(0x12, 4, Arc::new(Mutex::new(Reg(0)))).is_err());
        bus.insert(0x14, 4, Arc::new(Mutex::new(Reg(0x40))))
            .unwrap();
        let mut b = [0u8];
        assert!(bus.read(0x12, &mut b));
        assert_eq!(b[0], 3);
        assert!(bus.write(0x14, &[7]));
        assert!(bus.read(0x15, &mut b));
        assert_eq!(b[0], 8);
        assert!(!bus.read(0x20, &mut b));
        assert_eq!(b[0], 0xff);
        assert!(!bus.write(0x20, &[1]));
    }
}
