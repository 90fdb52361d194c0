//! The virtio-rng device: one request queue of device-writable buffers.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::EntropySource;
use crate::devices::virtio::{
    ActivateError, Activation, GuestErrorLog, Interrupt, VirtioDevice, MAX_CHAIN_LEN, TYPE_RNG,
};
use crate::memory::GuestMem;

const QUEUE_SIZE: u16 = 256;
/// At most this many bytes per request.
const MAX_REQUEST: usize = 64 * 1024;

struct Active {
    mem: GuestMem,
    queue: Queue,
    evt: EventFd,
    interrupt: Arc<Interrupt>,
}

/// virtio-rng over an [`EntropySource`].
pub struct Rng<S: EntropySource> {
    source: S,
    sizes: [u16; 1],
    active: Option<Active>,
    activate_evt: EventFd,
    errors: GuestErrorLog,
    /// Bytes handed to the guest so far.
    pub bytes: u64,
}

impl<S: EntropySource> Rng<S> {
    pub fn new(source: S) -> std::io::Result<Self> {
        Ok(Rng {
            source,
            sizes: [QUEUE_SIZE],
            active: None,
            activate_evt: EventFd::new(libc::EFD_NONBLOCK)?,
            errors: GuestErrorLog::default(),
            bytes: 0,
        })
    }

    /// Serves every available request; returns how many were completed.
    pub fn process_queue(&mut self) -> usize {
        let Some(a) = self.active.as_mut() else {
            return 0;
        };
        let mut done = 0;
        let mut buf = Vec::new();
        while let Some(chain) = a.queue.pop_descriptor_chain(&a.mem) {
            let head = chain.head_index();
            let len = if chain.clone().count() > MAX_CHAIN_LEN {
                self.errors.log("rng", &"descriptor chain too long");
                0
            } else {
                match chain.writer(&a.mem) {
                    Ok(mut w) => {
                        let n = w.available_bytes().min(MAX_REQUEST);
                        buf.resize(n, 0);
                        match self.source.fill(&mut buf) {
                            Ok(()) => w.write_all(&buf).map_or(0, |_| n as u32),
                            Err(e) => {
                                tracing::error!("entropy source failed: {e}");
                                0
                            }
                        }
                    }
                    Err(e) => {
                        self.errors.log("rng", &e);
                        0
                    }
                }
            };
            self.bytes += u64::from(len);
            if let Err(e) = a.queue.add_used(&a.mem, head, len) {
                self.errors.log("rng", &e);
            }
            done += 1;
        }
        if done > 0 && a.queue.needs_notification(&a.mem).unwrap_or(true) {
            a.interrupt.signal_used_queue();
        }
        done
    }

    /// Bad requests seen so far.
    pub fn guest_errors(&self) -> u32 {
        self.errors.count()
    }
}

impl<S: EntropySource> VirtioDevice for Rng<S> {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }
    fn features(&self) -> u64 {
        0
    }
    fn read_config(&self, _offset: u64, _data: &mut [u8]) {}
    fn activate(&mut self, mut act: Activation) -> Result<(), ActivateError> {
        if act.queues.len() != 1 {
            return Err(ActivateError::QueueCount {
                got: act.queues.len(),
                want: 1,
            });
        }
        let (queue, evt) = act.queues.remove(0);
        self.active = Some(Active {
            mem: act.mem,
            queue,
            evt,
            interrupt: act.interrupt,
        });
        self.activate_evt
            .write(1)
            .map_err(|e| ActivateError::Backend(e.to_string()))
    }
}

impl<S: EntropySource> MutEventSubscriber for Rng<S> {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.activate_evt, EventSet::IN)) {
            tracing::error!("rng: cannot watch activation: {e:?}");
        }
    }
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.activate_evt.as_raw_fd() {
            let _ = self.activate_evt.read();
            if let Some(a) = &self.active {
                if let Err(e) = ops.add(Events::new(&a.evt, EventSet::IN)) {
                    tracing::error!("rng: cannot watch the queue: {e:?}");
                }
            }
            return;
        }
        if let Some(a) = &self.active {
            let _ = a.evt.read();
        }
        self.process_queue();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::{guest_mem, interrupt};
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    const F_NEXT: u16 = 1;
    const F_WRITE: u16 = 2;

    struct Fixed;
    impl EntropySource for Fixed {
        fn fill(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
            buf.fill(0x5a);
            Ok(())
        }
    }

    fn d(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags, next))
    }

    fn active_rng<'a>(mem: &'a GuestMem) -> (Rng<Fixed>, MockSplitQueue<'a, GuestMem>) {
        let vq = MockSplitQueue::create(mem, GuestAddress(0x1000), 16);
        let mut rng = Rng::new(Fixed).unwrap();
        let queue: Queue = vq.create_queue().unwrap();
        rng.activate(Activation {
            mem: mem.clone(),
            queues: vec![(queue, EventFd::new(0).unwrap())],
            interrupt: interrupt(),
            acked_features: 0,
        })
        .unwrap();
        (rng, vq)
    }

    fn used(vq: &MockSplitQueue<GuestMem>, i: u16) -> (u32, u32) {
        let e = vq.used().ring().ref_at(i as usize).unwrap().load();
        (e.id(), e.len())
    }

    #[test]
    fn fills_writable_buffers() {
        let mem = guest_mem();
        let (mut rng, vq) = active_rng(&mem);
        vq.add_desc_chains(
            &[d(0x8000, 16, F_WRITE | F_NEXT, 1), d(0x9000, 8, F_WRITE, 0)],
            0,
        )
        .unwrap();
        assert_eq!(rng.process_queue(), 1);
        assert_eq!(used(&vq, 0), (0, 24));
        let mut b = [0u8; 17];
        mem.read_slice(&mut b, GuestAddress(0x8000)).unwrap();
        assert_eq!(&b[..16], &[0x5a; 16]);
        assert_eq!(b[16], 0, "nothing written past the descriptor");
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(0x9000)).unwrap(),
            0x5a5a_5a5a_5a5a_5a5a
        );
        assert_eq!(rng.bytes, 24);
    }

    #[test]
    fn out_of_range_buffer_is_rejected() {
        let mem = guest_mem();
        let (mut rng, vq) = active_rng(&mem);
        // Straddles the end of guest memory (1 MiB).
        vq.add_desc_chains(&[d(0xf_fff0, 64, F_WRITE, 0)], 0)
            .unwrap();
        assert_eq!(rng.process_queue(), 1);
        assert_eq!(used(&vq, 0), (0, 0));
        assert_eq!(rng.guest_errors(), 1);
        assert_eq!(mem.read_obj::<u64>(GuestAddress(0xf_fff0)).unwrap(), 0);
    }

    #[test]
    fn descriptor_loop_terminates() {
        let mem = guest_mem();
        let (mut rng, vq) = active_rng(&mem);
        // 0 -> 1 -> 0 -> ... : the chain iterator stops after queue-size steps.
        vq.desc_table()
            .store(0, d(0x8000, 4, F_WRITE | F_NEXT, 1))
            .unwrap();
        vq.desc_table()
            .store(1, d(0x8100, 4, F_WRITE | F_NEXT, 0))
            .unwrap();
        vq.avail().ring().ref_at(0).unwrap().store(0);
        vq.avail().idx().store(1);
        assert_eq!(rng.process_queue(), 1);
        assert_eq!(used(&vq, 0).0, 0);
        assert!(used(&vq, 0).1 <= 64, "bounded by the queue size");
    }

    #[test]
    fn too_long_chain_is_rejected() {
        let mem = guest_mem();
        let vq = MockSplitQueue::create(&mem, GuestAddress(0x1000), 128);
        let mut rng = Rng::new(Fixed).unwrap();
        rng.activate(Activation {
            mem: mem.clone(),
            queues: vec![(vq.create_queue().unwrap(), EventFd::new(0).unwrap())],
            interrupt: interrupt(),
            acked_features: 0,
        })
        .unwrap();
        let descs: Vec<_> = (0..100u16)
            .map(|i| d(0x8000 + u64::from(i) * 16, 16, F_WRITE | F_NEXT, i + 1))
            .collect();
        vq.add_desc_chains(&descs, 0).unwrap();
        assert_eq!(rng.process_queue(), 1);
        let e = vq.used().ring().ref_at(0).unwrap().load();
        assert_eq!(e.len(), 0);
        assert_eq!(rng.guest_errors(), 1);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x8000)).unwrap(), 0);
    }

    #[test]
    fn read_only_buffers_get_nothing() {
        let mem = guest_mem();
        let (mut rng, vq) = active_rng(&mem);
        mem.write_obj(0x1111u16, GuestAddress(0x8000)).unwrap();
        vq.add_desc_chains(&[d(0x8000, 2, 0, 0)], 0).unwrap();
        assert_eq!(rng.process_queue(), 1);
        assert_eq!(used(&vq, 0), (0, 0));
        assert_eq!(mem.read_obj::<u16>(GuestAddress(0x8000)).unwrap(), 0x1111);
    }
}
