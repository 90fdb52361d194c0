//! The virtio-fs device: a high-priority queue plus one request queue,
//! config = tag + number of request queues. Queue processing is the
//! backend's; we relay its "used" notifications as MMIO interrupts and
//! watch it for death.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_queue::QueueT;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::backend::{FsBackend, QueueSetup};
use crate::config::MAX_FS_TAG_LEN;
use crate::devices::virtio::{ActivateError, Activation, Interrupt, VirtioDevice, TYPE_FS};

const QUEUE_SIZE: u16 = 256;
const NUM_QUEUES: usize = 2;

/// Called once when the backend dies; ends the VM with this message.
pub type OnFatal = Box<dyn Fn(String) + Send>;

/// virtio-fs device.
pub struct Fs<B: FsBackend> {
    backend: B,
    config: [u8; MAX_FS_TAG_LEN + 4],
    sizes: [u16; NUM_QUEUES],
    calls: Vec<EventFd>,
    /// Kick eventfds, kept so they live as long as the backend uses them.
    kicks: Vec<EventFd>,
    interrupt: Option<Arc<Interrupt>>,
    activate_evt: EventFd,
    on_fatal: OnFatal,
    dead: bool,
}

impl<B: FsBackend> Fs<B> {
    /// `tag` must be 1..=36 bytes (checked by the config).
    pub fn new(backend: B, tag: &str, on_fatal: OnFatal) -> std::io::Result<Self> {
        let mut config = [0u8; MAX_FS_TAG_LEN + 4];
        let n = tag.len().min(MAX_FS_TAG_LEN);
        config[..n].copy_from_slice(&tag.as_bytes()[..n]);
        config[MAX_FS_TAG_LEN..].copy_from_slice(&1u32.to_le_bytes());
        Ok(Fs {
            backend,
            config,
            sizes: [QUEUE_SIZE; NUM_QUEUES],
            calls: Vec::new(),
            kicks: Vec::new(),
            interrupt: None,
            activate_evt: EventFd::new(libc::EFD_NONBLOCK)?,
            on_fatal,
            dead: false,
        })
    }

    fn backend_gone(&self) -> bool {
        let mut b = [0u8; 1];
        // SAFETY: peeks one byte into a valid local buffer from the
        // backend's socket fd, which `self.backend` keeps open.
        let n = unsafe {
            libc::recv(
                self.backend.fd(),
                b.as_mut_ptr().cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        n == 0
            || (n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock)
    }
}

impl<B: FsBackend> VirtioDevice for Fs<B> {
    fn device_type(&self) -> u32 {
        TYPE_FS
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }
    fn features(&self) -> u64 {
        self.backend.features()
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::super::read_config_bytes(&self.config, offset, data)
    }
    fn activate(&mut self, act: Activation) -> Result<(), ActivateError> {
        if act.queues.len() != NUM_QUEUES {
            return Err(ActivateError::QueueCount {
                got: act.queues.len(),
                want: NUM_QUEUES,
            });
        }
        let backend_err = |e: &dyn std::fmt::Display| ActivateError::Backend(e.to_string());
        let calls = (0..NUM_QUEUES)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| backend_err(&e))?;
        let setups: Vec<QueueSetup> = act
            .queues
            .iter()
            .zip(&calls)
            .map(|((q, kick), call)| QueueSetup {
                size: q.size(),
                max_size: q.max_size(),
                desc: q.desc_table(),
                avail: q.avail_ring(),
                used: q.used_ring(),
                kick,
                call,
            })
            .collect();
        self.backend
            .activate(&act.mem, act.acked_features, &setups)
            .map_err(|e| backend_err(&e))?;
        self.kicks = act.queues.into_iter().map(|(_, k)| k).collect();
        self.calls = calls;
        self.interrupt = Some(act.interrupt);
        self.activate_evt.write(1).map_err(|e| backend_err(&e))
    }
}

impl<B: FsBackend> MutEventSubscriber for Fs<B> {
    fn init(&mut self, ops: &mut EventOps) {
        let a = ops.add(Events::new(&self.activate_evt, EventSet::IN));
        let b = ops.add(Events::new_raw(
            self.backend.fd(),
            EventSet::IN | EventSet::READ_HANG_UP,
        ));
        if a.is_err() || b.is_err() {
            tracing::error!("virtio-fs: cannot register events");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.activate_evt.as_raw_fd() {
            let _ = self.activate_evt.read();
            for c in &self.calls {
                let _ = ops.add(Events::new(c, EventSet::IN));
            }
        } else if fd == self.backend.fd() {
            if !self.dead && self.backend_gone() {
                self.dead = true;
                let _ = ops.remove(events);
                (self.on_fatal)(
                    "the virtio-fs vhost-user backend (virtiofsd) closed its socket; \
                     check that it is running and its log"
                        .into(),
                );
            }
        } else if let Some(c) = self.calls.iter().find(|c| c.as_raw_fd() == fd) {
            let _ = c.read();
            if let Some(i) = &self.interrupt {
                i.signal_used_queue();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::fs::FsError;
    use crate::devices::virtio::mmio::MmioTransport;
    use crate::devices::virtio::test_utils::{drive_to_ok, guest_mem, interrupt, rd};
    use std::os::fd::RawFd;
    use std::os::unix::net::UnixStream;
    use std::sync::Mutex;

    /// (size, desc, avail, used) of each queue handed over.
    type QueueLog = Arc<Mutex<Vec<(u16, u64, u64, u64)>>>;

    struct FakeBackend {
        sock: UnixStream,
        activated: QueueLog,
    }
    impl FsBackend for FakeBackend {
        fn features(&self) -> u64 {
            1 << 32
        }
        fn activate(
            &mut self,
            _mem: &crate::memory::GuestMem,
            _acked: u64,
            q: &[QueueSetup],
        ) -> Result<(), FsError> {
            let mut a = self.activated.lock().unwrap();
            for s in q {
                a.push((s.size, s.desc, s.avail, s.used));
            }
            Ok(())
        }
        fn fd(&self) -> RawFd {
            self.sock.as_raw_fd()
        }
    }

    #[test]
    fn config_tag_and_queue_handover() {
        let (a, b) = UnixStream::pair().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let fs = Fs::new(
            FakeBackend {
                sock: a,
                activated: log.clone(),
            },
            "husk",
            Box::new(|_| {}),
        )
        .unwrap();
        let mut cfg = [0u8; 40];
        fs.read_config(0, &mut cfg);
        assert_eq!(&cfg[..5], b"husk\0");
        assert_eq!(&cfg[36..], &1u32.to_le_bytes());
        assert!(!fs.backend_gone());
        let dev = Arc::new(Mutex::new(fs));
        let evts = (0..2).map(|_| EventFd::new(0).unwrap()).collect();
        let mem = guest_mem();
        let mut t = MmioTransport::new(dev.clone(), mem.clone(), interrupt(), evts);
        drive_to_ok(&mut t, &mem, 2);
        assert_eq!(rd(&mut t, 0x70) & 0x80, 0, "not failed");
        let got = log.lock().unwrap().clone();
        assert_eq!(
            got,
            vec![
                (16, 0x1_0000, 0x1_0100, 0x1_0200),
                (16, 0x1_1000, 0x1_1100, 0x1_1200)
            ]
        );
        drop(b);
        assert!(dev.lock().unwrap().backend_gone(), "peer closed is noticed");
    }
}
