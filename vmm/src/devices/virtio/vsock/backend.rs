//! The host side of the vsock device, behind a narrow trait so device
//! tests can plug in a fake.

use std::os::fd::RawFd;

use super::packet::Header;

/// Where guest packets go and host packets come from.
pub trait VsockBackend: Send {
    /// A packet from the guest (header already validated for size).
    fn send_pkt(&mut self, hdr: &Header, data: &[u8]);
    /// The next packet for the guest; payload is written to `buf`.
    fn recv_pkt(&mut self, buf: &mut [u8]) -> Option<(Header, usize)>;
    /// True when `recv_pkt` has something.
    fn has_pending_rx(&self) -> bool;
    /// One fd that becomes readable when the backend needs `notify`.
    fn fd(&self) -> RawFd;
    /// Handles whatever made `fd` readable.
    fn notify(&mut self);
}
