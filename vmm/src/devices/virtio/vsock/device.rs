//! The virtio-vsock device: rx (0), tx (1) and event (2) queues, moving
//! packets between guest memory and a [`VsockBackend`].

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::backend::VsockBackend;
use super::packet::{Header, HDR_SIZE, MAX_PKT_DATA};
use crate::devices::virtio::{
    ActivateError, Activation, GuestErrorLog, Interrupt, VirtioDevice, MAX_CHAIN_LEN, TYPE_VSOCK,
};
use crate::memory::GuestMem;

const QUEUE_SIZE: u16 = 256;

struct Active {
    mem: GuestMem,
    rxq: Queue,
    rx_evt: EventFd,
    txq: Queue,
    tx_evt: EventFd,
    _evq: Queue,
    ev_evt: EventFd,
    interrupt: Arc<Interrupt>,
}

/// virtio-vsock device.
pub struct Vsock<B: VsockBackend> {
    backend: B,
    cid: u64,
    sizes: [u16; 3],
    active: Option<Active>,
    activate_evt: EventFd,
    errors: GuestErrorLog,
    buf: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
enum TxError {
    #[error("descriptor chain too long")]
    ChainTooLong,
    #[error("bad descriptor chain: {0}")]
    Chain(#[from] virtio_queue::Error),
    #[error("packet shorter than its header")]
    ShortHeader,
    #[error("packet length {0} exceeds the buffer or the {MAX_PKT_DATA}-byte limit")]
    BadLength(u32),
}

impl<B: VsockBackend> Vsock<B> {
    pub fn new(backend: B, cid: u64) -> std::io::Result<Self> {
        Ok(Vsock {
            backend,
            cid,
            sizes: [QUEUE_SIZE; 3],
            active: None,
            activate_evt: EventFd::new(libc::EFD_NONBLOCK)?,
            errors: GuestErrorLog::default(),
            buf: vec![0; MAX_PKT_DATA],
        })
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    #[cfg(test)]
    pub fn backend_mut_for_test(&mut self) -> &mut B {
        &mut self.backend
    }

    pub fn guest_errors(&self) -> u32 {
        self.errors.count()
    }

    fn read_packet(
        chain: DescriptorChain<&GuestMem>,
        mem: &GuestMem,
        buf: &mut Vec<u8>,
    ) -> Result<Header, TxError> {
        if chain.clone().count() > MAX_CHAIN_LEN {
            return Err(TxError::ChainTooLong);
        }
        let mut r = chain.reader(mem)?;
        let mut raw = [0u8; HDR_SIZE];
        r.read_exact(&mut raw).map_err(|_| TxError::ShortHeader)?;
        let h = Header::decode(&raw);
        let len = h.len as usize;
        if len > MAX_PKT_DATA || len > r.available_bytes() {
            return Err(TxError::BadLength(h.len));
        }
        buf.resize(len, 0);
        r.read_exact(buf).map_err(|_| TxError::BadLength(h.len))?;
        Ok(h)
    }

    /// Guest-to-host packets; returns how many chains were consumed.
    pub fn process_tx(&mut self) -> usize {
        let Some(a) = self.active.as_mut() else {
            return 0;
        };
        let mut n = 0;
        let mut data = Vec::new();
        while let Some(chain) = a.txq.pop_descriptor_chain(&a.mem) {
            let head = chain.head_index();
            match Self::read_packet(chain, &a.mem, &mut data) {
                Ok(h) => self.backend.send_pkt(&h, &data),
                Err(e) => self.errors.log("vsock", &e),
            }
            if let Err(e) = a.txq.add_used(&a.mem, head, 0) {
                self.errors.log("vsock", &e);
            }
            n += 1;
        }
        if n > 0 && a.txq.needs_notification(&a.mem).unwrap_or(true) {
            a.interrupt.signal_used_queue();
        }
        n
    }

    /// Host-to-guest packets; returns how many were delivered.
    pub fn process_rx(&mut self) -> usize {
        let Some(a) = self.active.as_mut() else {
            return 0;
        };
        let mut n = 0;
        while self.backend.has_pending_rx() {
            let Some(chain) = a.rxq.pop_descriptor_chain(&a.mem) else {
                break;
            };
            let head = chain.head_index();
            let too_long = chain.clone().count() > MAX_CHAIN_LEN;
            let writer = chain.writer(&a.mem);
            let mut w = match writer {
                Ok(w) if !too_long && w.available_bytes() >= HDR_SIZE => w,
                _ => {
                    self.errors.log("vsock", &"unusable rx buffer");
                    let _ = a.rxq.add_used(&a.mem, head, 0);
                    n += 1;
                    continue;
                }
            };
            let cap = (w.available_bytes() - HDR_SIZE).min(MAX_PKT_DATA);
            let Some((mut h, len)) = self.backend.recv_pkt(&mut self.buf[..cap]) else {
                a.rxq.go_to_previous_position();
                break;
            };
            h.len = len as u32;
            let written = w
                .write_all(&h.encode())
                .and_then(|_| w.write_all(&self.buf[..len]));
            let used = if written.is_ok() { HDR_SIZE + len } else { 0 };
            if let Err(e) = a.rxq.add_used(&a.mem, head, used as u32) {
                self.errors.log("vsock", &e);
            }
            n += 1;
        }
        if n > 0 && a.rxq.needs_notification(&a.mem).unwrap_or(true) {
            a.interrupt.signal_used_queue();
        }
        n
    }
}

impl<B: VsockBackend> VirtioDevice for Vsock<B> {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }
    fn features(&self) -> u64 {
        0
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::super::read_config_bytes(&self.cid.to_le_bytes(), offset, data)
    }
    fn activate(&mut self, act: Activation) -> Result<(), ActivateError> {
        let got = act.queues.len();
        let Ok([(rxq, rx_evt), (txq, tx_evt), (evq, ev_evt)]) =
            <[(Queue, EventFd); 3]>::try_from(act.queues)
        else {
            return Err(ActivateError::QueueCount { got, want: 3 });
        };
        self.active = Some(Active {
            mem: act.mem,
            rxq,
            rx_evt,
            txq,
            tx_evt,
            _evq: evq,
            ev_evt,
            interrupt: act.interrupt,
        });
        self.activate_evt
            .write(1)
            .map_err(|e| ActivateError::Backend(e.to_string()))
    }
}

impl<B: VsockBackend> MutEventSubscriber for Vsock<B> {
    fn init(&mut self, ops: &mut EventOps) {
        let a = ops.add(Events::new(&self.activate_evt, EventSet::IN));
        let b = ops.add(Events::new_raw(self.backend.fd(), EventSet::IN));
        if a.is_err() || b.is_err() {
            tracing::error!("vsock: cannot register events");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.activate_evt.as_raw_fd() {
            let _ = self.activate_evt.read();
            if let Some(a) = &self.active {
                for e in [&a.rx_evt, &a.tx_evt, &a.ev_evt] {
                    let _ = ops.add(Events::new(e, EventSet::IN));
                }
            }
        } else if fd == self.backend.fd() {
            self.backend.notify();
        } else if let Some(a) = &self.active {
            if fd == a.tx_evt.as_raw_fd() {
                let _ = a.tx_evt.read();
                self.process_tx();
            } else if fd == a.rx_evt.as_raw_fd() {
                let _ = a.rx_evt.read();
            } else if fd == a.ev_evt.as_raw_fd() {
                let _ = a.ev_evt.read();
            }
        }
        // Whatever happened may have made packets for the guest.
        self.process_rx();
    }
}
