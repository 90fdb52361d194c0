//! Hybrid vsock (Firecracker / Cloud Hypervisor style): host-initiated
//! connections on one unix socket (`CONNECT <port>\n` -> `OK <host port>\n`),
//! guest-initiated ones to `<uds>_<port>`.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::backend::VsockBackend;
use super::connection::{Conn, ConnError, State, BUF_ALLOC};
use super::packet::*;
use crate::devices::virtio::GuestErrorLog;

/// Most simultaneous connections.
pub const MAX_CONNECTIONS: usize = 1024;
/// Most host connections still sending their CONNECT line.
const MAX_HANDSHAKES: usize = 64;
/// Most standalone RST replies queued for the guest.
const MAX_RST_QUEUE: usize = 1024;
/// Longest accepted `CONNECT <port>\n` line.
const MAX_HANDSHAKE_LINE: usize = 32;
/// Host-initiated connections get local ports from here up.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// Muxer setup errors.
#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    #[error(
        "cannot listen on vsock socket {0}: {1}; does the directory exist and is the path free?"
    )]
    Bind(PathBuf, #[source] std::io::Error),
    #[error("cannot create the vsock epoll set: {0}")]
    Epoll(#[source] std::io::Error),
}

type Key = (u32, u32); // (local port, peer port)

/// The hybrid vsock backend.
pub struct HybridMuxer {
    uds: PathBuf,
    guest_cid: u64,
    listener: UnixListener,
    epoll: Epoll,
    handshakes: HashMap<RawFd, UnixStream>,
    conns: HashMap<Key, Conn>,
    by_fd: HashMap<RawFd, Key>,
    rx_list: VecDeque<Key>,
    rst_queue: VecDeque<Header>,
    next_local_port: u32,
    errors: GuestErrorLog,
}

impl HybridMuxer {
    pub fn new(uds: &Path, guest_cid: u64) -> Result<Self, MuxerError> {
        let listener = UnixListener::bind(uds).map_err(|e| MuxerError::Bind(uds.into(), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| MuxerError::Bind(uds.into(), e))?;
        let epoll = Epoll::new().map_err(MuxerError::Epoll)?;
        let fd = listener.as_raw_fd();
        epoll
            .ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, fd as u64),
            )
            .map_err(MuxerError::Epoll)?;
        Ok(HybridMuxer {
            uds: uds.into(),
            guest_cid,
            listener,
            epoll,
            handshakes: HashMap::new(),
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            rx_list: VecDeque::new(),
            rst_queue: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
            errors: GuestErrorLog::default(),
        })
    }

    /// Number of open connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    fn watch(&self, fd: RawFd, ev: EventSet, op: ControlOperation) {
        if let Err(e) = self.epoll.ctl(op, fd, EpollEvent::new(ev, fd as u64)) {
            tracing::warn!("vsock: epoll_ctl failed: {e}");
        }
    }

    fn rst(&mut self, local_port: u32, peer_port: u32) {
        if self.rst_queue.len() < MAX_RST_QUEUE {
            self.rst_queue.push_back(Header {
                src_cid: HOST_CID,
                dst_cid: self.guest_cid,
                src_port: local_port,
                dst_port: peer_port,
                type_: TYPE_STREAM,
                op: OP_RST,
                buf_alloc: BUF_ALLOC,
                ..Default::default()
            });
        }
    }

    fn add_conn(&mut self, conn: Conn) {
        let key = (conn.local_port, conn.peer_port);
        let fd = conn.stream.as_raw_fd();
        self.watch(fd, conn.interest(), ControlOperation::Add);
        self.by_fd.insert(fd, key);
        self.conns.insert(key, conn);
        self.rx_list.push_back(key);
    }

    fn remove_conn(&mut self, key: Key) {
        if let Some(c) = self.conns.remove(&key) {
            let fd = c.stream.as_raw_fd();
            self.watch(fd, EventSet::empty(), ControlOperation::Delete);
            self.by_fd.remove(&fd);
        }
    }

    /// Re-arms epoll for `key` and lists it for rx if it has something.
    fn refresh(&mut self, key: Key) {
        let Some(c) = self.conns.get(&key) else {
            return;
        };
        self.watch(c.stream.as_raw_fd(), c.interest(), ControlOperation::Modify);
        if c.has_rx() && !self.rx_list.contains(&key) {
            self.rx_list.push_back(key);
        }
    }

    fn guest_connect(&mut self, hdr: &Header) {
        let (local, peer) = (hdr.dst_port, hdr.src_port);
        if self.conns.len() >= MAX_CONNECTIONS {
            self.errors.log("vsock", &"too many connections");
            return self.rst(local, peer);
        }
        let path = PathBuf::from(format!("{}_{}", self.uds.display(), local));
        let stream = match connect_nonblocking(&path) {
            Ok(s) => s,
            Err(_) => {
                tracing::debug!("vsock: nobody listens on {}; RST", path.display());
                return self.rst(local, peer);
            }
        };
        let mut conn = Conn::new(stream, local, peer, State::Established);
        conn.update_peer_credit(hdr);
        conn.push_op(OP_RESPONSE, 0);
        self.add_conn(conn);
    }

    fn accept(&mut self) {
        while let Ok((s, _)) = self.listener.accept() {
            if self.handshakes.len() >= MAX_HANDSHAKES || s.set_nonblocking(true).is_err() {
                continue;
            }
            let fd = s.as_raw_fd();
            self.watch(fd, EventSet::IN, ControlOperation::Add);
            self.handshakes.insert(fd, s);
        }
    }

    /// Reads exactly the `CONNECT <port>\n` line (peek, then read it) so no
    /// byte after it is consumed.
    fn handshake(&mut self, fd: RawFd) {
        let Some(stream) = self.handshakes.get(&fd) else {
            return;
        };
        let mut buf = [0u8; MAX_HANDSHAKE_LINE];
        // SAFETY: `buf` is a writable buffer of the given length and `fd`
        // is the open socket owned by `stream`.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_PEEK) };
        let port = match n {
            n if n < 0
                && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock =>
            {
                return
            }
            n if n <= 0 => None,
            n => match buf[..n as usize].iter().position(|&b| b == b'\n') {
                None if (n as usize) < MAX_HANDSHAKE_LINE => return,
                None => None,
                Some(end) => {
                    let mut line = vec![0u8; end + 1];
                    let _ = std::io::Read::read_exact(&mut &*stream, &mut line);
                    parse_connect(&line[..end])
                }
            },
        };
        let stream = self.handshakes.remove(&fd).expect("present");
        self.watch(fd, EventSet::empty(), ControlOperation::Delete);
        let Some(peer) = port else {
            tracing::debug!("vsock: bad handshake; closing");
            return;
        };
        if self.conns.len() >= MAX_CONNECTIONS {
            return;
        }
        let local = self.alloc_local_port(peer);
        let mut conn = Conn::new(stream, local, peer, State::LocalInit);
        conn.push_op(OP_REQUEST, 0);
        self.add_conn(conn);
    }

    fn alloc_local_port(&mut self, peer: u32) -> u32 {
        loop {
            let p = self.next_local_port;
            self.next_local_port = self
                .next_local_port
                .checked_add(1)
                .unwrap_or(FIRST_LOCAL_PORT);
            if !self.conns.contains_key(&(p, peer)) {
                return p;
            }
        }
    }

    fn conn_event(&mut self, key: Key, ev: EventSet) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if ev.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR)
            && c.state == State::Established
        {
            c.readable = true;
        }
        let failed = ev.contains(EventSet::OUT) && c.flush_tx().is_err();
        if failed || (c.peer_closed && !c.tx_pending()) {
            self.rst(key.0, key.1);
            return self.remove_conn(key);
        }
        self.refresh(key);
    }
}

/// Connects without ever blocking the event loop: a listener whose backlog
/// is full (e.g. one that never accepts) gives EAGAIN, which becomes an RST.
fn connect_nonblocking(path: &Path) -> std::io::Result<UnixStream> {
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain old data; all-zero is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(std::io::ErrorKind::InvalidInput.into());
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket we own; wrapping it closes it on error.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
    let rc = unsafe { libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stream)
}

fn parse_connect(line: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(line).ok()?;
    s.strip_prefix("CONNECT ")?.trim().parse().ok()
}

impl VsockBackend for HybridMuxer {
    fn send_pkt(&mut self, hdr: &Header, data: &[u8]) {
        if hdr.dst_cid != HOST_CID || hdr.src_cid != self.guest_cid {
            return self.errors.log(
                "vsock",
                &format!("bad cids {} -> {}", hdr.src_cid, hdr.dst_cid),
            );
        }
        let key = (hdr.dst_port, hdr.src_port);
        if hdr.type_ != TYPE_STREAM {
            return self.rst(key.0, key.1);
        }
        let Some(c) = self.conns.get_mut(&key) else {
            match hdr.op {
                OP_REQUEST => self.guest_connect(hdr),
                OP_RST => {}
                _ => self.rst(key.0, key.1),
            }
            return;
        };
        c.update_peer_credit(hdr);
        let ok = match hdr.op {
            OP_RESPONSE if c.state == State::LocalInit => {
                c.state = State::Established;
                let line = format!("OK {}\n", c.local_port);
                (&c.stream).write_all(line.as_bytes()).is_ok()
            }
            OP_RW if c.state != State::LocalInit => match c.send_to_host(data) {
                Ok(()) => true,
                // The host side went away (e.g. closed after its EOF): an
                // RST tells the guest, nothing the guest did wrong.
                Err(ConnError::Io(e)) => {
                    tracing::debug!("vsock: host socket gone: {e}; RST");
                    false
                }
                Err(e) => {
                    self.errors.log("vsock", &e);
                    false
                }
            },
            OP_CREDIT_UPDATE => true,
            OP_CREDIT_REQUEST => {
                c.push_op(OP_CREDIT_UPDATE, 0);
                true
            }
            OP_SHUTDOWN => {
                if hdr.flags & SHUTDOWN_SEND != 0 && hdr.flags & SHUTDOWN_RCV == 0 {
                    let _ = c.stream.shutdown(std::net::Shutdown::Write);
                    true
                } else {
                    c.peer_closed = true;
                    c.tx_pending()
                }
            }
            OP_RST => {
                self.remove_conn(key);
                return;
            }
            _ => false,
        };
        if ok {
            self.refresh(key);
        } else {
            self.rst(key.0, key.1);
            self.remove_conn(key);
        }
    }

    fn recv_pkt(&mut self, buf: &mut [u8]) -> Option<(Header, usize)> {
        if let Some(h) = self.rst_queue.pop_front() {
            return Some((h, 0));
        }
        while let Some(key) = self.rx_list.pop_front() {
            let Some(c) = self.conns.get_mut(&key) else {
                continue;
            };
            match c.recv(self.guest_cid, buf) {
                Some((h, n)) => {
                    if h.op == OP_RST {
                        self.remove_conn(key);
                    } else if c.has_rx() {
                        self.rx_list.push_back(key);
                    }
                    self.refresh(key);
                    return Some((h, n));
                }
                None => self.refresh(key),
            }
        }
        None
    }

    fn has_pending_rx(&self) -> bool {
        !self.rst_queue.is_empty()
            || self
                .rx_list
                .iter()
                .any(|k| self.conns.get(k).is_some_and(|c| c.has_rx()))
    }

    fn fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    fn notify(&mut self) {
        let mut events = [EpollEvent::default(); 32];
        let n = self.epoll.wait(0, &mut events).unwrap_or(0);
        for e in &events[..n] {
            let fd = e.fd();
            if fd == self.listener.as_raw_fd() {
                self.accept();
            } else if self.handshakes.contains_key(&fd) {
                self.handshake(fd);
            } else if let Some(&key) = self.by_fd.get(&fd) {
                self.conn_event(key, e.event_set());
            }
        }
    }
}

impl Drop for HybridMuxer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds);
    }
}
