//! The 8250 UART at 0x3f8 (IRQ 4), output only, to a file or stdout.

use std::io::Write;

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::bus::BusDevice;

/// Raises the serial IRQ through a KVM irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Console output sink that also notices a kernel panic.
pub struct ConsoleSink {
    out: Box<dyn Write + Send>,
    line: Vec<u8>,
    /// Set once the guest printed "Kernel panic".
    pub panicked: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl ConsoleSink {
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        ConsoleSink {
            out,
            line: Vec::new(),
            panicked: Default::default(),
        }
    }
}

impl Write for ConsoleSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for &b in buf {
            if b == b'\n' {
                if self.line.windows(12).any(|w| w == b"Kernel panic") {
                    self.panicked
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                }
                self.line.clear();
            } else if self.line.len() < 256 {
                self.line.push(b);
            }
        }
        self.out.write_all(buf)?;
        if buf.contains(&b'\n') {
            self.out.flush()?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Bus adapter for vm-superio's UART.
pub struct SerialDevice(pub Serial<IrqTrigger, vm_superio::serial::NoEvents, ConsoleSink>);

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let (Some(b), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *b = self.0.read(off);
        }
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(&b), Ok(off)) = (data.first(), u8::try_from(offset)) {
            if let Err(e) = self.0.write(off, b) {
                tracing::debug!("serial write failed: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn bytes_reach_the_sink_and_panic_is_noticed() {
        let out = Shared::default();
        let sink = ConsoleSink::new(Box::new(out.clone()));
        let panicked = sink.panicked.clone();
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = SerialDevice(Serial::new(IrqTrigger(evt), sink));
        for b in b"hi\nKernel panic - not syncing\n" {
            dev.write(0, &[*b]);
        }
        assert_eq!(&out.0.lock().unwrap()[..3], b"hi\n");
        assert!(panicked.load(std::sync::atomic::Ordering::SeqCst));
        let mut lsr = [0u8];
        dev.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0, "transmitter empty");
    }
}
