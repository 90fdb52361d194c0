//! virtio-vsock device tests against real guest memory and virtio-queue's
//! MockSplitQueue, with a fake backend.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};

use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::backend::VsockBackend;
use super::device::Vsock;
use super::packet::*;
use crate::devices::virtio::test_utils::{guest_mem, interrupt};
use crate::devices::virtio::{Activation, VirtioDevice};
use crate::memory::GuestMem;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

struct Fake {
    sent: Vec<(Header, Vec<u8>)>,
    to_guest: VecDeque<(Header, Vec<u8>)>,
    evt: EventFd,
}

impl VsockBackend for Fake {
    fn send_pkt(&mut self, hdr: &Header, data: &[u8]) {
        self.sent.push((*hdr, data.to_vec()));
    }
    fn recv_pkt(&mut self, buf: &mut [u8]) -> Option<(Header, usize)> {
        let (h, d) = self.to_guest.front()?;
        if d.len() > buf.len() {
            return None;
        }
        let (h, d) = (*h, d.clone());
        self.to_guest.pop_front();
        buf[..d.len()].copy_from_slice(&d);
        Some((h, d.len()))
    }
    fn has_pending_rx(&self) -> bool {
        !self.to_guest.is_empty()
    }
    fn fd(&self) -> RawFd {
        self.evt.as_raw_fd()
    }
    fn notify(&mut self) {}
}

struct Rig<'a> {
    dev: Vsock<Fake>,
    rx: MockSplitQueue<'a, GuestMem>,
    tx: MockSplitQueue<'a, GuestMem>,
}

fn rig(mem: &GuestMem) -> Rig<'_> {
    let rx = MockSplitQueue::create(mem, GuestAddress(0x1000), 16);
    let tx = MockSplitQueue::create(mem, GuestAddress(0x3000), 128);
    let ev = MockSplitQueue::create(mem, GuestAddress(0x6000), 16);
    let fake = Fake {
        sent: vec![],
        to_guest: VecDeque::new(),
        evt: EventFd::new(0).unwrap(),
    };
    let mut dev = Vsock::new(fake, 3).unwrap();
    let q = |m: &MockSplitQueue<GuestMem>| -> (Queue, EventFd) {
        (m.create_queue().unwrap(), EventFd::new(0).unwrap())
    };
    dev.activate(Activation {
        mem: mem.clone(),
        queues: vec![q(&rx), q(&tx), q(&ev)],
        interrupt: interrupt(),
        acked_features: 0,
    })
    .unwrap();
    Rig { dev, rx, tx }
}

fn d(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags, next))
}

fn hdr(op: u16, len: u32) -> Header {
    Header {
        src_cid: 3,
        dst_cid: 2,
        src_port: 5000,
        dst_port: 1024,
        len,
        type_: TYPE_STREAM,
        op,
        buf_alloc: 4096,
        ..Default::default()
    }
}

fn used(q: &MockSplitQueue<GuestMem>, i: usize) -> (u32, u32) {
    let e = q.used().ring().ref_at(i).unwrap().load();
    (e.id(), e.len())
}

#[test]
fn tx_packet_reaches_backend() {
    let mem = guest_mem();
    let mut r = rig(&mem);
    mem.write_slice(&hdr(OP_RW, 5).encode(), GuestAddress(0x8000))
        .unwrap();
    mem.write_slice(b"hello", GuestAddress(0x9000)).unwrap();
    r.tx.add_desc_chains(&[d(0x8000, 44, F_NEXT, 1), d(0x9000, 5, 0, 0)], 0)
        .unwrap();
    assert_eq!(r.dev.process_tx(), 1);
    assert_eq!(used(&r.tx, 0), (0, 0));
    let sent = &r.dev.backend().sent;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, hdr(OP_RW, 5));
    assert_eq!(sent[0].1, b"hello");
    assert_eq!(r.dev.guest_errors(), 0);
}

#[test]
fn malformed_tx_chains_are_dropped_without_panic() {
    let mem = guest_mem();
    let mut r = rig(&mem);
    // 1: header cut short.
    // 2: len claims more than the chain holds.
    // 3: len above the 64 KiB limit.
    // 4: buffer outside guest memory.
    mem.write_slice(&hdr(OP_RW, 100).encode(), GuestAddress(0x8000))
        .unwrap();
    mem.write_slice(&hdr(OP_RW, 1 << 20).encode(), GuestAddress(0x8100))
        .unwrap();
    let chains = [
        d(0x8000, 20, 0, 0),
        d(0x8000, 44, F_NEXT, 2),
        d(0x9000, 10, 0, 0),
        d(0x8100, 44, 0, 0),
        d(0xfff_0000, 44, 0, 0),
    ];
    r.tx.add_desc_chains(&chains, 0).unwrap();
    assert_eq!(r.dev.process_tx(), 4);
    assert!(r.dev.backend().sent.is_empty());
    assert_eq!(r.dev.guest_errors(), 4);
}

#[test]
fn too_long_and_looping_tx_chains_are_dropped() {
    let mem = guest_mem();
    let mut r = rig(&mem);
    mem.write_slice(&hdr(OP_RW, 0).encode(), GuestAddress(0x8000))
        .unwrap();
    // 100 descriptors, each 1 byte: longer than MAX_CHAIN_LEN.
    let long: Vec<_> = (0..100u16)
        .map(|i| d(0x8000 + u64::from(i), 1, F_NEXT, i + 1))
        .collect();
    r.tx.add_desc_chains(&long, 0).unwrap();
    assert_eq!(r.dev.process_tx(), 1);
    // A loop 100 -> 101 -> 100.
    r.tx.desc_table()
        .store(100, d(0x8000, 44, F_NEXT, 101))
        .unwrap();
    r.tx.desc_table()
        .store(101, d(0x9000, 4, F_NEXT, 100))
        .unwrap();
    let idx = r.tx.avail().idx().load();
    r.tx.avail().ring().ref_at(idx as usize).unwrap().store(100);
    r.tx.avail().idx().store(idx + 1);
    assert_eq!(r.dev.process_tx(), 1);
    assert!(r.dev.backend().sent.is_empty());
    assert_eq!(r.dev.guest_errors(), 2);
}

#[test]
fn rx_packet_written_byte_by_byte() {
    let mem = guest_mem();
    let mut r = rig(&mem);
    let mut h = hdr(OP_RW, 3);
    h.src_cid = 2;
    h.dst_cid = 3;
    r.dev
        .backend_mut_for_test()
        .to_guest
        .push_back((h, b"abc".to_vec()));
    r.rx.add_desc_chains(&[d(0x8000, 4096, F_WRITE, 0)], 0)
        .unwrap();
    assert_eq!(r.dev.process_rx(), 1);
    assert_eq!(used(&r.rx, 0), (0, 47));
    let mut got = [0u8; 48];
    mem.read_slice(&mut got, GuestAddress(0x8000)).unwrap();
    assert_eq!(&got[..44], &h.encode());
    assert_eq!(&got[44..47], b"abc");
    assert_eq!(got[47], 0);
}

#[test]
fn rx_waits_for_buffers_and_rejects_tiny_ones() {
    let mem = guest_mem();
    let mut r = rig(&mem);
    r.dev
        .backend_mut_for_test()
        .to_guest
        .push_back((hdr(OP_RESPONSE, 0), vec![]));
    assert_eq!(r.dev.process_rx(), 0, "no buffers yet");
    assert!(r.dev.backend().has_pending_rx());
    // A 10-byte buffer cannot hold a header: returned empty, packet kept.
    r.rx.add_desc_chains(&[d(0x8000, 10, F_WRITE, 0)], 0)
        .unwrap();
    assert_eq!(r.dev.process_rx(), 1);
    assert_eq!(used(&r.rx, 0), (0, 0));
    assert!(r.dev.backend().has_pending_rx());
    // A read-only buffer: same.
    r.rx.add_desc_chains(&[d(0x8000, 64, 0, 0)], 1).unwrap();
    assert_eq!(r.dev.process_rx(), 1);
    assert_eq!(used(&r.rx, 1), (1, 0));
    r.rx.add_desc_chains(&[d(0x8000, 64, F_WRITE, 0)], 2)
        .unwrap();
    assert_eq!(r.dev.process_rx(), 1);
    assert_eq!(used(&r.rx, 2), (2, 44));
    assert!(!r.dev.backend().has_pending_rx());
}

#[test]
fn config_is_the_guest_cid() {
    let mem = guest_mem();
    let r = rig(&mem);
    let mut b = [0u8; 8];
    r.dev.read_config(0, &mut b);
    assert_eq!(u64::from_le_bytes(b), 3);
    let mut b = [0xffu8; 4];
    r.dev.read_config(100, &mut b);
    assert_eq!(b, [0xff; 4], "reads past the config are ignored");
}
