//! The virtio-net device: rx (0) and tx (1) queues, frames with their
//! 12-byte virtio-net header moved to and from a [`NetBackend`].

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::tap::{NetBackend, TUN_F_CSUM, TUN_F_TSO4, VNET_HDR_LEN};
use crate::devices::virtio::{
    ActivateError, Activation, GuestErrorLog, Interrupt, VirtioDevice, MAX_CHAIN_LEN, TYPE_NET,
};
use crate::memory::GuestMem;

const QUEUE_SIZE: u16 = 256;
/// Header plus the largest frame the tap can hand us.
const MAX_FRAME: usize = VNET_HDR_LEN + 65550;
/// VIRTIO_NET_F_CSUM: the guest may send partially checksummed frames.
const F_CSUM: u64 = 1 << 0;
/// VIRTIO_NET_F_GUEST_CSUM: the guest takes partially checksummed frames.
const F_GUEST_CSUM: u64 = 1 << 1;
/// VIRTIO_NET_F_MAC: the device has a MAC address in its config.
const F_MAC: u64 = 1 << 5;
/// VIRTIO_NET_F_GUEST_TSO4: the guest takes TCPv4 segments up to 64 KiB.
const F_GUEST_TSO4: u64 = 1 << 7;
/// VIRTIO_NET_F_HOST_TSO4: the guest may send TCPv4 segments up to 64 KiB.
const F_HOST_TSO4: u64 = 1 << 11;
/// What the device offers. The tap does the work: it takes the guest's
/// virtio-net header as it is (IFF_VNET_HDR) and, told which offloads the
/// guest took (TUNSETOFFLOAD), hands it large or partially checksummed
/// frames only then. Every guest kernel packet costs a lot on an emulating
/// host, so segmentation offload is what makes guest TCP usable there.
/// Without VIRTIO_NET_F_MRG_RXBUF a guest that takes GUEST_TSO4 posts
/// 64 KiB receive chains ("big packets"), which fit MAX_CHAIN_LEN.
const FEATURES: u64 = F_MAC | F_CSUM | F_GUEST_CSUM | F_GUEST_TSO4 | F_HOST_TSO4;

/// The tap offloads (TUN_F_*) matching the features the guest acked.
fn tap_offloads(acked: u64) -> u32 {
    let mut f = 0;
    if acked & F_GUEST_CSUM != 0 {
        f |= TUN_F_CSUM;
        if acked & F_GUEST_TSO4 != 0 {
            f |= TUN_F_TSO4;
        }
    }
    f
}

struct Active {
    mem: GuestMem,
    rxq: Queue,
    rx_evt: EventFd,
    txq: Queue,
    tx_evt: EventFd,
    interrupt: Arc<Interrupt>,
    /// TUN_F_* for the tap, set by the event loop once the device is live.
    offloads: u32,
}

/// virtio-net device.
pub struct Net<B: NetBackend> {
    backend: B,
    mac: [u8; 6],
    sizes: [u16; 2],
    active: Option<Active>,
    activate_evt: EventFd,
    errors: GuestErrorLog,
    /// A frame read from the backend, waiting for a guest buffer.
    rx_frame: Vec<u8>,
    rx_len: usize,
    /// The backend fd is watched only while there is room in the guest.
    rx_watching: bool,
    tx_buf: Vec<u8>,
}

impl<B: NetBackend> Net<B> {
    pub fn new(backend: B, mac: [u8; 6]) -> std::io::Result<Self> {
        Ok(Net {
            backend,
            mac,
            sizes: [QUEUE_SIZE; 2],
            active: None,
            activate_evt: EventFd::new(libc::EFD_NONBLOCK)?,
            errors: GuestErrorLog::default(),
            rx_frame: vec![0; MAX_FRAME],
            rx_len: 0,
            rx_watching: true,
            tx_buf: Vec::with_capacity(MAX_FRAME),
        })
    }

    pub fn guest_errors(&self) -> u32 {
        self.errors.count()
    }

    #[cfg(test)]
    pub fn backend_mut_for_test(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Guest-to-host frames; returns how many chains were consumed.
    pub fn process_tx(&mut self) -> usize {
        let Some(a) = self.active.as_mut() else {
            return 0;
        };
        let mut n = 0;
        while let Some(chain) = a.txq.pop_descriptor_chain(&a.mem) {
            let head = chain.head_index();
            self.tx_buf.clear();
            let ok = chain.clone().count() <= MAX_CHAIN_LEN
                && chain.reader(&a.mem).is_ok_and(|r| {
                    r.available_bytes() <= MAX_FRAME
                        && r.available_bytes() > VNET_HDR_LEN
                        && r.take(MAX_FRAME as u64)
                            .read_to_end(&mut self.tx_buf)
                            .is_ok()
                });
            if ok {
                if let Err(e) = self.backend.write_frame(&self.tx_buf) {
                    tracing::debug!("virtio-net: tap write failed, frame dropped: {e}");
                }
            } else {
                self.errors.log("net", &"bad tx chain");
            }
            if let Err(e) = a.txq.add_used(&a.mem, head, 0) {
                self.errors.log("net", &e);
            }
            n += 1;
        }
        if n > 0 && a.txq.needs_notification(&a.mem).unwrap_or(true) {
            a.interrupt.signal_used_queue();
        }
        n
    }

    /// Host-to-guest frames; returns how many were delivered. Stops when
    /// the backend has nothing or the guest has no buffers (then the caller
    /// stops watching the backend until the guest adds some).
    pub fn process_rx(&mut self) -> usize {
        let Some(a) = self.active.as_mut() else {
            return 0;
        };
        let mut n = 0;
        loop {
            if self.rx_len == 0 {
                match self.backend.read_frame(&mut self.rx_frame) {
                    Ok(len) if len > VNET_HDR_LEN => self.rx_len = len,
                    Ok(0) => {
                        self.rx_watching = true;
                        break;
                    }
                    Ok(_) => continue,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => {
                        if e.kind() != ErrorKind::WouldBlock {
                            tracing::debug!("virtio-net: tap read failed: {e}");
                        }
                        self.rx_watching = true;
                        break;
                    }
                }
            }
            let Some(chain) = a.rxq.pop_descriptor_chain(&a.mem) else {
                self.rx_watching = false;
                break;
            };
            let head = chain.head_index();
            // num_buffers = 1 (no VIRTIO_NET_F_MRG_RXBUF).
            self.rx_frame[10..12].copy_from_slice(&1u16.to_le_bytes());
            let frame = &self.rx_frame[..self.rx_len];
            let used = if chain.clone().count() > MAX_CHAIN_LEN {
                None
            } else {
                chain.writer(&a.mem).ok().and_then(|mut w| {
                    (w.available_bytes() >= frame.len() && w.write_all(frame).is_ok())
                        .then_some(frame.len())
                })
            };
            if used.is_none() {
                self.errors
                    .log("net", &"rx buffer unusable or too small; frame dropped");
            }
            if let Err(e) = a.rxq.add_used(&a.mem, head, used.unwrap_or(0) as u32) {
                self.errors.log("net", &e);
            }
            self.rx_len = 0;
            n += 1;
        }
        if n > 0 && a.rxq.needs_notification(&a.mem).unwrap_or(true) {
            a.interrupt.signal_used_queue();
        }
        n
    }
}

impl<B: NetBackend> VirtioDevice for Net<B> {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }
    fn features(&self) -> u64 {
        FEATURES
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut cfg = [0u8; 8];
        cfg[..6].copy_from_slice(&self.mac);
        super::super::read_config_bytes(&cfg, offset, data)
    }
    fn activate(&mut self, act: Activation) -> Result<(), ActivateError> {
        let got = act.queues.len();
        let Ok([(rxq, rx_evt), (txq, tx_evt)]) = <[(Queue, EventFd); 2]>::try_from(act.queues)
        else {
            return Err(ActivateError::QueueCount { got, want: 2 });
        };
        self.active = Some(Active {
            mem: act.mem,
            rxq,
            rx_evt,
            txq,
            tx_evt,
            interrupt: act.interrupt,
            offloads: tap_offloads(act.acked_features),
        });
        self.activate_evt
            .write(1)
            .map_err(|e| ActivateError::Backend(e.to_string()))
    }
}

impl<B: NetBackend> Net<B> {
    fn watch_backend(&mut self, ops: &mut EventOps, on: bool) {
        let ev = if on { EventSet::IN } else { EventSet::empty() };
        let _ = ops.modify(Events::new_raw(self.backend.fd(), ev));
    }
}

impl<B: NetBackend> MutEventSubscriber for Net<B> {
    fn init(&mut self, ops: &mut EventOps) {
        if ops
            .add(Events::new(&self.activate_evt, EventSet::IN))
            .is_err()
        {
            tracing::error!("virtio-net: cannot register events");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.activate_evt.as_raw_fd() {
            let _ = self.activate_evt.read();
            if let Some(a) = &self.active {
                // Always set, 0 included: a driver re-activating with fewer
                // features must not get frames it cannot take.
                if let Err(e) = self.backend.set_offloads(a.offloads) {
                    tracing::warn!(
                        "virtio-net: tap offloads {:#x} refused ({e}); frames stay MTU-sized",
                        a.offloads
                    );
                }
                let _ = ops.add(Events::new(&a.rx_evt, EventSet::IN));
                let _ = ops.add(Events::new(&a.tx_evt, EventSet::IN));
                let _ = ops.add(Events::new_raw(self.backend.fd(), EventSet::IN));
            }
            return;
        }
        if let Some(a) = &self.active {
            if fd == a.tx_evt.as_raw_fd() {
                let _ = a.tx_evt.read();
                self.process_tx();
                return;
            }
            if fd == a.rx_evt.as_raw_fd() {
                let _ = a.rx_evt.read();
            }
        }
        let was = self.rx_watching;
        self.process_rx();
        if was != self.rx_watching {
            self.watch_backend(ops, self.rx_watching);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::{guest_mem, interrupt};
    use std::collections::VecDeque;
    use std::os::fd::RawFd;
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    const F_NEXT: u16 = 1;
    const F_WRITE: u16 = 2;

    struct Fake {
        incoming: VecDeque<Vec<u8>>,
        sent: Vec<Vec<u8>>,
        evt: EventFd,
        offloads: Vec<u32>,
    }
    impl NetBackend for Fake {
        fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let f = self.incoming.pop_front().ok_or(ErrorKind::WouldBlock)?;
            buf[..f.len()].copy_from_slice(&f);
            Ok(f.len())
        }
        fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<()> {
            self.sent.push(frame.to_vec());
            Ok(())
        }
        fn fd(&self) -> RawFd {
            self.evt.as_raw_fd()
        }
        fn set_offloads(&mut self, flags: u32) -> std::io::Result<()> {
            self.offloads.push(flags);
            Ok(())
        }
    }

    fn d(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags, next))
    }

    fn rig(
        mem: &GuestMem,
    ) -> (
        Net<Fake>,
        MockSplitQueue<'_, GuestMem>,
        MockSplitQueue<'_, GuestMem>,
    ) {
        let rx = MockSplitQueue::create(mem, GuestAddress(0x1000), 16);
        let tx = MockSplitQueue::create(mem, GuestAddress(0x3000), 128);
        let fake = Fake {
            incoming: VecDeque::new(),
            sent: vec![],
            evt: EventFd::new(0).unwrap(),
            offloads: vec![],
        };
        let mut net = Net::new(fake, [2, 0, 0, 0, 0, 1]).unwrap();
        net.activate(Activation {
            mem: mem.clone(),
            queues: vec![
                (rx.create_queue().unwrap(), EventFd::new(0).unwrap()),
                (tx.create_queue().unwrap(), EventFd::new(0).unwrap()),
            ],
            interrupt: interrupt(),
            acked_features: F_MAC,
        })
        .unwrap();
        (net, rx, tx)
    }

    #[test]
    fn tx_frame_goes_out_with_header() {
        let mem = guest_mem();
        let (mut net, _rx, tx) = rig(&mem);
        mem.write_slice(&[0u8; 12], GuestAddress(0x8000)).unwrap();
        mem.write_slice(b"ethernet-frame", GuestAddress(0x9000))
            .unwrap();
        tx.add_desc_chains(&[d(0x8000, 12, F_NEXT, 1), d(0x9000, 14, 0, 0)], 0)
            .unwrap();
        assert_eq!(net.process_tx(), 1);
        let sent = &net.backend_mut_for_test().sent;
        assert_eq!(sent.len(), 1);
        assert_eq!(&sent[0][12..], b"ethernet-frame");
    }

    #[test]
    fn malformed_tx_is_dropped() {
        let mem = guest_mem();
        let (mut net, _rx, tx) = rig(&mem);
        let long: Vec<_> = (0..100u16)
            .map(|i| d(0x8000 + u64::from(i), 1, F_NEXT, i + 1))
            .collect();
        tx.add_desc_chains(&long, 0).unwrap();
        tx.add_desc_chains(&[d(0xfff_0000, 64, 0, 0)], 100).unwrap();
        tx.add_desc_chains(&[d(0x8000, 4, 0, 0)], 101).unwrap(); // shorter than the header
        assert_eq!(net.process_tx(), 3);
        assert!(net.backend_mut_for_test().sent.is_empty());
        assert_eq!(net.guest_errors(), 3);
    }

    #[test]
    fn rx_frame_lands_with_num_buffers_and_waits_for_buffers() {
        let mem = guest_mem();
        let (mut net, rx, _tx) = rig(&mem);
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(b"incoming");
        net.backend_mut_for_test().incoming.push_back(frame.clone());
        assert_eq!(net.process_rx(), 0, "no guest buffers yet");
        assert!(
            !net.rx_watching,
            "backend not polled while the guest is full"
        );
        rx.add_desc_chains(&[d(0x8000, 4, F_WRITE, 0)], 0).unwrap(); // too small
        rx.add_desc_chains(&[d(0x9000, 2048, F_WRITE, 0)], 1)
            .unwrap();
        net.backend_mut_for_test().incoming.push_back(frame.clone());
        assert_eq!(net.process_rx(), 2);
        let e0 = rx.used().ring().ref_at(0).unwrap().load();
        assert_eq!(
            (e0.id(), e0.len()),
            (0, 0),
            "first frame dropped: buffer too small"
        );
        let e1 = rx.used().ring().ref_at(1).unwrap().load();
        assert_eq!((e1.id(), e1.len()), (1, 20));
        let mut got = [0u8; 20];
        mem.read_slice(&mut got, GuestAddress(0x9000)).unwrap();
        assert_eq!(&got[10..12], &[1, 0], "num_buffers = 1");
        assert_eq!(&got[12..], b"incoming");
        assert!(net.rx_watching);
    }

    #[test]
    fn offloads_follow_what_the_guest_acked() {
        assert_eq!(tap_offloads(0), 0);
        assert_eq!(tap_offloads(F_GUEST_TSO4), 0, "TSO needs GUEST_CSUM");
        assert_eq!(tap_offloads(F_GUEST_CSUM), TUN_F_CSUM);
        assert_eq!(
            tap_offloads(F_GUEST_CSUM | F_GUEST_TSO4 | F_CSUM | F_HOST_TSO4),
            TUN_F_CSUM | TUN_F_TSO4
        );
        let mem = guest_mem();
        let (net, _rx, _tx) = rig(&mem);
        assert_eq!(net.features() & FEATURES, FEATURES);
        assert_eq!(
            net.active.as_ref().unwrap().offloads,
            0,
            "rig acks only F_MAC"
        );
    }

    #[test]
    fn config_has_the_mac() {
        let mem = guest_mem();
        let (net, _rx, _tx) = rig(&mem);
        let mut mac = [0u8; 6];
        net.read_config(0, &mut mac);
        assert_eq!(mac, [2, 0, 0, 0, 0, 1]);
        assert_eq!(net.features() & F_MAC, F_MAC);
    }
}
