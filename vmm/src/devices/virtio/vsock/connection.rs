//! One vsock stream between a guest port and a host unix socket, with
//! virtio-vsock credit flow control in both directions.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;

use vmm_sys_util::epoll::EventSet;

use super::packet::*;

/// Receive buffer we advertise to the guest; also the most guest-to-host
/// data we ever hold for one connection.
pub const BUF_ALLOC: u32 = 256 * 1024;
/// Send a credit update once this much was forwarded since the last one.
const CREDIT_UPDATE_THRESHOLD: u32 = BUF_ALLOC / 4;

/// Connection errors (each ends the connection with an RST).
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("guest sent more than the advertised credit")]
    CreditExceeded,
    #[error("host socket error: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Host connected and sent CONNECT; REQUEST sent, waiting for RESPONSE.
    LocalInit,
    Established,
    /// Host side hit EOF; SHUTDOWN(SEND) sent to the guest, which may still
    /// send data to the host.
    HostClosed,
}

/// A vsock stream.
pub struct Conn {
    pub stream: UnixStream,
    pub local_port: u32,
    pub peer_port: u32,
    pub state: State,
    /// Control packets (op, flags) waiting to go to the guest.
    pending: VecDeque<(u16, u32)>,
    /// Guest-to-host bytes the host socket has not taken yet.
    tx_buf: Vec<u8>,
    fwd_cnt: u32,
    last_fwd_cnt_sent: u32,
    rx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// The host socket has data (or EOF) we have not read.
    pub readable: bool,
    /// The guest closed its side; finish once `tx_buf` drained.
    pub peer_closed: bool,
}

impl Conn {
    pub fn new(stream: UnixStream, local_port: u32, peer_port: u32, state: State) -> Self {
        Conn {
            stream,
            local_port,
            peer_port,
            state,
            pending: VecDeque::new(),
            tx_buf: Vec::new(),
            fwd_cnt: 0,
            last_fwd_cnt_sent: 0,
            rx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            readable: false,
            peer_closed: false,
        }
    }

    /// Queues a control packet for the guest.
    pub fn push_op(&mut self, op: u16, flags: u32) {
        // At most a handful are ever outstanding; never grow without bound.
        if self.pending.len() < 8 {
            self.pending.push_back((op, flags));
        }
    }

    /// Takes the credit fields of any packet the guest sent.
    pub fn update_peer_credit(&mut self, h: &Header) {
        self.peer_buf_alloc = h.buf_alloc;
        self.peer_fwd_cnt = h.fwd_cnt;
    }

    /// Bytes the guest can still take.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.rx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Guest-to-host data.
    pub fn send_to_host(&mut self, data: &[u8]) -> Result<(), ConnError> {
        if self.tx_buf.len() + data.len() > BUF_ALLOC as usize {
            return Err(ConnError::CreditExceeded);
        }
        self.tx_buf.extend_from_slice(data);
        self.flush_tx()
    }

    /// Writes buffered guest data to the host socket as far as it goes.
    pub fn flush_tx(&mut self) -> Result<(), ConnError> {
        while !self.tx_buf.is_empty() {
            match self.stream.write(&self.tx_buf) {
                Ok(0) => return Err(ConnError::Io(ErrorKind::WriteZero.into())),
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
        // The guest believes `tx_buf + unsent` of our buffer is in use; tell
        // it once a quarter of the buffer was consumed behind its back, so
        // it never stalls (threshold < BUF_ALLOC) without an extra packet
        // per message. Every packet we send carries fwd_cnt anyway.
        let unsent = self.fwd_cnt.wrapping_sub(self.last_fwd_cnt_sent);
        if unsent >= CREDIT_UPDATE_THRESHOLD && !self.pending.contains(&(OP_CREDIT_UPDATE, 0)) {
            self.push_op(OP_CREDIT_UPDATE, 0);
        }
        Ok(())
    }

    pub fn tx_pending(&self) -> bool {
        !self.tx_buf.is_empty()
    }

    /// True when `recv` would produce a packet.
    pub fn has_rx(&self) -> bool {
        !self.pending.is_empty()
            || (self.state == State::Established && self.readable && self.peer_credit() > 0)
    }

    /// Epoll interest for the host socket.
    pub fn interest(&self) -> EventSet {
        let mut e = EventSet::empty();
        if self.state == State::Established && !self.readable {
            e |= EventSet::IN;
        }
        if self.tx_pending() {
            e |= EventSet::OUT;
        }
        e
    }

    /// Header for a packet to the guest.
    pub fn header(&self, guest_cid: u64, op: u16, flags: u32, len: u32) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// The next host-to-guest packet: (header, payload length in `buf`).
    pub fn recv(&mut self, guest_cid: u64, buf: &mut [u8]) -> Option<(Header, usize)> {
        if let Some((op, flags)) = self.pending.pop_front() {
            if op == OP_CREDIT_UPDATE || op == OP_RESPONSE || op == OP_RW {
                self.last_fwd_cnt_sent = self.fwd_cnt;
            }
            return Some((self.header(guest_cid, op, flags, 0), 0));
        }
        if !self.has_rx() {
            return None;
        }
        let max = buf.len().min(self.peer_credit() as usize).min(MAX_PKT_DATA);
        if max == 0 {
            return None;
        }
        loop {
            match self.stream.read(&mut buf[..max]) {
                Ok(0) => {
                    // EOF says only that the host sends no more: it may be a
                    // half-close (shutdown(SHUT_WR)) with the host still
                    // reading, so the guest may go on sending. If the host
                    // closed for good, the next guest data fails to write
                    // and becomes an RST.
                    self.readable = false;
                    self.state = State::HostClosed;
                    return Some((self.header(guest_cid, OP_SHUTDOWN, SHUTDOWN_SEND, 0), 0));
                }
                Ok(n) => {
                    self.rx_cnt = self.rx_cnt.wrapping_add(n as u32);
                    self.last_fwd_cnt_sent = self.fwd_cnt;
                    return Some((self.header(guest_cid, OP_RW, 0, n as u32), n));
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.readable = false;
                    return None;
                }
                Err(_) => {
                    self.readable = false;
                    self.state = State::HostClosed;
                    return Some((self.header(guest_cid, OP_RST, 0, 0), 0));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Conn, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        (Conn::new(a, 1 << 30, 1024, State::Established), b)
    }

    fn credit(c: &mut Conn, buf_alloc: u32, fwd_cnt: u32) {
        c.update_peer_credit(&Header {
            buf_alloc,
            fwd_cnt,
            ..Default::default()
        });
    }

    #[test]
    fn host_data_respects_guest_credit() {
        let (mut c, mut host) = pair();
        host.write_all(&[7u8; 100]).unwrap();
        c.readable = true;
        assert!(!c.has_rx(), "no credit yet");
        credit(&mut c, 30, 0);
        let mut buf = [0u8; 4096];
        let (h, n) = c.recv(3, &mut buf).unwrap();
        assert_eq!((h.op, h.len, n), (OP_RW, 30, 30));
        assert_eq!((h.src_port, h.dst_port, h.dst_cid), (1 << 30, 1024, 3));
        assert_eq!(c.peer_credit(), 0);
        assert!(!c.has_rx());
        credit(&mut c, 30, 30); // guest consumed it
        assert_eq!(c.recv(3, &mut buf).unwrap().1, 30);
    }

    #[test]
    fn guest_data_is_forwarded_and_bounded() {
        let (mut c, mut host) = pair();
        c.send_to_host(b"hello").unwrap();
        let mut b = [0u8; 5];
        host.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"hello");
        // Fill the host socket until it blocks, then the rest is buffered,
        // and more than BUF_ALLOC outstanding is refused.
        let chunk = vec![1u8; 64 * 1024];
        let mut sent = 0usize;
        loop {
            match c.send_to_host(&chunk) {
                Ok(()) => sent += chunk.len(),
                Err(ConnError::CreditExceeded) => break,
                Err(e) => panic!("{e}"),
            }
            assert!(sent < 64 << 20, "never refused");
        }
        assert!(c.tx_pending());
        assert_eq!(c.interest(), EventSet::IN | EventSet::OUT);
    }

    #[test]
    fn credit_update_after_a_quarter_of_the_buffer() {
        let (mut c, mut host) = pair();
        let reader = std::thread::spawn(move || {
            let mut sink = vec![0u8; CREDIT_UPDATE_THRESHOLD as usize];
            host.read_exact(&mut sink).unwrap();
        });
        c.send_to_host(b"abc").unwrap();
        let mut buf = [0u8; 16];
        assert!(c.recv(3, &mut buf).is_none(), "no update for a few bytes");
        let rest = vec![0u8; CREDIT_UPDATE_THRESHOLD as usize - 3];
        c.send_to_host(&rest).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while c.tx_pending() {
            assert!(std::time::Instant::now() < deadline);
            c.flush_tx().unwrap();
        }
        reader.join().unwrap();
        let (h, _) = c.recv(3, &mut buf).unwrap();
        assert_eq!(
            (h.op, h.fwd_cnt),
            (OP_CREDIT_UPDATE, CREDIT_UPDATE_THRESHOLD)
        );
        assert!(
            c.recv(3, &mut buf).is_none(),
            "one update, not one per packet"
        );
    }

    #[test]
    fn host_eof_becomes_shutdown() {
        let (mut c, host) = pair();
        credit(&mut c, 1000, 0);
        drop(host);
        c.readable = true;
        let mut buf = [0u8; 16];
        let (h, _) = c.recv(3, &mut buf).unwrap();
        assert_eq!((h.op, h.flags), (OP_SHUTDOWN, SHUTDOWN_SEND));
        assert_eq!(c.state, State::HostClosed);
        assert!(!c.has_rx());
        // The host is gone for good: guest data cannot be delivered.
        assert!(c.send_to_host(b"late").is_err());
    }

    #[test]
    fn host_half_close_still_receives_guest_data() {
        let (mut c, mut host) = pair();
        credit(&mut c, 1000, 0);
        host.shutdown(std::net::Shutdown::Write).unwrap();
        c.readable = true;
        let mut buf = [0u8; 16];
        let (h, _) = c.recv(3, &mut buf).unwrap();
        assert_eq!((h.op, h.flags), (OP_SHUTDOWN, SHUTDOWN_SEND));
        c.send_to_host(b"output after stdin eof").unwrap();
        drop(c);
        let mut got = String::new();
        host.read_to_string(&mut got).unwrap();
        assert_eq!(got, "output after stdin eof");
    }
}
