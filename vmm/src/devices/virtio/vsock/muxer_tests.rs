//! The hybrid-vsock connection state machine against real unix sockets.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::backend::VsockBackend;
use super::muxer::HybridMuxer;
use super::packet::*;

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn setup(name: &str) -> (Dir, HybridMuxer) {
    let d = std::env::temp_dir().join(format!("husk-vsock-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let m = HybridMuxer::new(&d.join("v.sock"), 3).unwrap();
    (Dir(d), m)
}

/// Polls the muxer until it has a packet for the guest (or 2 s pass).
fn next_pkt(m: &mut HybridMuxer) -> Option<(Header, Vec<u8>)> {
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut buf = vec![0u8; MAX_PKT_DATA];
    while Instant::now() < deadline {
        m.notify();
        if let Some((h, n)) = m.recv_pkt(&mut buf) {
            return Some((h, buf[..n].to_vec()));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

fn guest(op: u16, src_port: u32, dst_port: u32) -> Header {
    Header {
        src_cid: 3,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        type_: TYPE_STREAM,
        op,
        buf_alloc: 65536,
        ..Default::default()
    }
}

fn read_line(s: &mut UnixStream) -> String {
    let mut out = Vec::new();
    let mut b = [0u8];
    while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
        out.push(b[0]);
    }
    String::from_utf8(out).unwrap()
}

#[test]
fn host_initiated_connect_ok_and_data_both_ways() {
    let (d, mut m) = setup("host");
    let mut host = UnixStream::connect(d.0.join("v.sock")).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    host.write_all(b"CONNECT 1024\n").unwrap();
    let (req, _) = next_pkt(&mut m).expect("REQUEST to the guest");
    assert_eq!(req.op, OP_REQUEST);
    assert_eq!(
        (req.dst_port, req.dst_cid, req.src_cid),
        (1024, 3, HOST_CID)
    );
    let local = req.src_port;
    assert!(local >= 1 << 30);

    m.send_pkt(&guest(OP_RESPONSE, 1024, local), &[]);
    assert_eq!(read_line(&mut host), format!("OK {local}"));

    host.write_all(b"ping").unwrap();
    let (rw, data) = next_pkt(&mut m).expect("data to the guest");
    assert_eq!((rw.op, rw.len, data.as_slice()), (OP_RW, 4, &b"ping"[..]));

    let mut h = guest(OP_RW, 1024, local);
    h.len = 4;
    m.send_pkt(&h, b"pong");
    let mut b = [0u8; 4];
    host.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"pong");
    // Asked for credit, the muxer reports what it forwarded.
    m.send_pkt(&guest(OP_CREDIT_REQUEST, 1024, local), &[]);
    let (cu, _) = next_pkt(&mut m).expect("credit update");
    assert_eq!((cu.op, cu.fwd_cnt), (OP_CREDIT_UPDATE, 4));

    // Half-close: the guest is told the host sends no more, and its data
    // still reaches the host.
    host.shutdown(std::net::Shutdown::Write).unwrap();
    let (sd, _) = next_pkt(&mut m).expect("shutdown");
    assert_eq!((sd.op, sd.flags), (OP_SHUTDOWN, SHUTDOWN_SEND));
    let mut h = guest(OP_RW, 1024, local);
    h.len = 4;
    m.send_pkt(&h, b"tail");
    host.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"tail");
    // The guest closes too: RST, connection gone, the host reads EOF.
    let mut sd = guest(OP_SHUTDOWN, 1024, local);
    sd.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    m.send_pkt(&sd, &[]);
    assert_eq!(next_pkt(&mut m).unwrap().0.op, OP_RST);
    assert_eq!(m.connections(), 0);
    assert_eq!(host.read(&mut b).unwrap(), 0);
}

#[test]
fn guest_data_after_the_host_closed_is_reset() {
    let (d, mut m) = setup("hostgone");
    let mut host = UnixStream::connect(d.0.join("v.sock")).unwrap();
    host.write_all(b"CONNECT 1024\n").unwrap();
    let (req, _) = next_pkt(&mut m).expect("REQUEST");
    let local = req.src_port;
    m.send_pkt(&guest(OP_RESPONSE, 1024, local), &[]);
    assert_eq!(read_line(&mut host), format!("OK {local}"));
    drop(host);
    let (sd, _) = next_pkt(&mut m).expect("shutdown");
    assert_eq!((sd.op, sd.flags), (OP_SHUTDOWN, SHUTDOWN_SEND));
    let mut h = guest(OP_RW, 1024, local);
    h.len = 4;
    m.send_pkt(&h, b"late");
    assert_eq!(next_pkt(&mut m).unwrap().0.op, OP_RST);
    assert_eq!(m.connections(), 0);
}

#[test]
fn guest_initiated_goes_to_port_socket() {
    let (d, mut m) = setup("guest");
    let l = UnixListener::bind(format!("{}_5000", d.0.join("v.sock").display())).unwrap();
    m.send_pkt(&guest(OP_REQUEST, 777, 5000), &[]);
    let (resp, _) = next_pkt(&mut m).expect("RESPONSE");
    assert_eq!(
        (resp.op, resp.src_port, resp.dst_port),
        (OP_RESPONSE, 5000, 777)
    );
    let (mut s, _) = l.accept().unwrap();
    let mut h = guest(OP_RW, 777, 5000);
    h.len = 3;
    m.send_pkt(&h, b"abc");
    let mut b = [0u8; 3];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"abc");
    s.write_all(b"xyz").unwrap();
    let mut seen = Vec::new();
    while let Some((h, data)) = next_pkt(&mut m) {
        if h.op == OP_RW {
            seen = data;
            break;
        }
    }
    assert_eq!(seen, b"xyz");
    // Guest closes: RST back, connection gone, host sees EOF.
    let mut sd = guest(OP_SHUTDOWN, 777, 5000);
    sd.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    m.send_pkt(&sd, &[]);
    assert_eq!(next_pkt(&mut m).unwrap().0.op, OP_RST);
    assert_eq!(m.connections(), 0);
    assert_eq!(s.read(&mut b).unwrap(), 0);
}

#[test]
fn rst_when_nobody_listens_or_connection_unknown() {
    let (_d, mut m) = setup("rst");
    m.send_pkt(&guest(OP_REQUEST, 1, 4242), &[]);
    let (h, _) = next_pkt(&mut m).expect("RST");
    assert_eq!((h.op, h.src_port, h.dst_port), (OP_RST, 4242, 1));
    m.send_pkt(&guest(OP_RW, 2, 4242), b"x");
    assert_eq!(next_pkt(&mut m).unwrap().0.op, OP_RST);
    // An RST for an unknown connection gets no answer.
    m.send_pkt(&guest(OP_RST, 2, 4242), &[]);
    assert!(!m.has_pending_rx());
    assert_eq!(m.connections(), 0);
}

#[test]
fn bad_handshake_and_bad_cid() {
    let (d, mut m) = setup("bad");
    let mut host = UnixStream::connect(d.0.join("v.sock")).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    host.write_all(b"HELLO 1\n").unwrap();
    assert!(next_pkt(&mut m).is_none());
    let mut b = [0u8; 1];
    assert_eq!(host.read(&mut b).unwrap(), 0, "closed by the muxer");
    let mut h = guest(OP_REQUEST, 1, 2);
    h.src_cid = 9;
    m.send_pkt(&h, &[]);
    assert!(!m.has_pending_rx(), "wrong source cid is dropped");
}

#[test]
fn guest_cannot_overrun_credit() {
    let (d, mut m) = setup("credit");
    let l = UnixListener::bind(format!("{}_6000", d.0.join("v.sock").display())).unwrap();
    m.send_pkt(&guest(OP_REQUEST, 9, 6000), &[]);
    assert_eq!(next_pkt(&mut m).unwrap().0.op, OP_RESPONSE);
    let (_s, _) = l.accept().unwrap(); // never reads
    let chunk = vec![0u8; MAX_PKT_DATA];
    let mut h = guest(OP_RW, 9, 6000);
    h.len = chunk.len() as u32;
    let mut reset = false;
    for _ in 0..200 {
        m.send_pkt(&h, &chunk);
        if m.connections() == 0 {
            reset = true;
            break;
        }
    }
    assert!(reset, "connection reset once the guest overran its credit");
    let mut last = None;
    while let Some((h, _)) = next_pkt(&mut m) {
        last = Some(h.op);
        if h.op == OP_RST {
            break;
        }
    }
    assert_eq!(last, Some(OP_RST));
}

#[test]
fn host_connect_refused_by_guest_closes_without_ok() {
    let (d, mut m) = setup("refused");
    let mut host = UnixStream::connect(d.0.join("v.sock")).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    host.write_all(b"CONNECT 4321\n").unwrap();
    let (req, _) = next_pkt(&mut m).expect("REQUEST");
    assert_eq!(req.op, OP_REQUEST);
    m.send_pkt(&guest(OP_RST, 4321, req.src_port), &[]);
    assert_eq!(m.connections(), 0);
    let mut b = [0u8; 8];
    assert_eq!(host.read(&mut b).unwrap(), 0, "EOF, no OK line");
}

#[test]
fn full_listener_backlog_never_blocks_the_muxer() {
    let (d, mut m) = setup("backlog");
    let path = format!("{}_7000", d.0.join("v.sock").display());
    // A listener that never accepts, with the smallest backlog.
    let l = UnixListener::bind(&path).unwrap();
    // SAFETY: listen(2) on our own socket fd.
    unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&l), 0) };
    let start = Instant::now();
    let mut rsts = 0;
    for port in 0..64 {
        m.send_pkt(&guest(OP_REQUEST, 100 + port, 7000), &[]);
        let mut buf = [0u8; 64];
        while let Some((h, _)) = m.recv_pkt(&mut buf) {
            if h.op == OP_RST {
                rsts += 1;
            }
        }
    }
    assert!(start.elapsed() < Duration::from_secs(2), "muxer blocked");
    assert!(rsts > 0, "connections beyond the backlog are reset");
}
