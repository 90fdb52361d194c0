//! Just enough of the i8042 keyboard controller for the guest to reset the
//! machine: command 0xFE on port 0x64 pulses the reset line.

use vmm_sys_util::eventfd::EventFd;

use super::bus::BusDevice;

const CMD_RESET_CPU: u8 = 0xfe;

/// Ports 0x60-0x64; the bus offset 4 is the command/status port.
pub struct I8042 {
    reset: EventFd,
}

impl I8042 {
    /// `reset` is written when the guest asks for a reset.
    pub fn new(reset: EventFd) -> Self {
        I8042 { reset }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status 0: output buffer empty, input buffer empty (so kb_wait() ends).
        data.fill(0);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 4 && data.first() == Some(&CMD_RESET_CPU) {
            tracing::info!("guest requested a reset through the i8042");
            if let Err(e) = self.reset.write(1) {
                tracing::error!("cannot signal the guest reset: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_signals() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = I8042::new(evt.try_clone().unwrap());
        let mut status = [0xffu8];
        dev.read(4, &mut status);
        assert_eq!(status[0], 0);
        dev.write(0, &[0xfe]);
        dev.write(4, &[0xd1]);
        assert!(evt.read().is_err(), "only 0xfe on port 0x64 resets");
        dev.write(4, &[0xfe]);
        assert_eq!(evt.read().unwrap(), 1);
    }
}
