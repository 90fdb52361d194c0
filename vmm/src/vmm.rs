//! The VMM's main loop: build the machine, start the vCPUs, serve events
//! until the guest leaves, and say how it left.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::config::{ConfigError, VmConfig};
use crate::control::{ControlServer, Metrics};
use crate::devices::virtio::fs::{Fs, VhostUserFs};
use crate::devices::virtio::net::{Net, Tap};
use crate::devices::virtio::rng::{EntropySource, OsEntropy, Rng};
use crate::devices::virtio::vsock::{HybridMuxer, Vsock};
use crate::runner::Vcpus;
use crate::seccomp::{self, ThreadKind};
use crate::vcpu::VcpuStop;
use crate::vm::{Machine, VmError};

/// How the VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest reset through the i8042 (its way to power off): success.
    Reset,
    /// The guest kernel panicked (seen on the console).
    Panic,
    /// The guest triple-faulted or KVM reported a shutdown event.
    Shutdown,
    /// Asked to stop over the control socket.
    Stopped,
    /// KVM could not run the guest, or a device backend failed.
    Failed(String),
}

impl VmExit {
    /// Process exit code: 0 for a clean reset or a requested stop.
    pub fn code(&self) -> u8 {
        match self {
            VmExit::Reset | VmExit::Stopped => 0,
            VmExit::Failed(_) => 1,
            VmExit::Panic => 2,
            VmExit::Shutdown => 3,
        }
    }
}

impl std::fmt::Display for VmExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmExit::Reset => write!(f, "guest reset (powered off); exiting 0"),
            VmExit::Panic => write!(f, "guest kernel panicked; see the console log"),
            VmExit::Shutdown => write!(f, "guest triple-faulted or shut down unexpectedly"),
            VmExit::Stopped => write!(f, "stopped on request"),
            VmExit::Failed(why) => write!(f, "vm failed: {why}"),
        }
    }
}

/// Errors before the guest runs.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error("cannot start the event loop: {0}")]
    EventLoop(String),
    #[error("cannot start vcpu threads: {0}")]
    Threads(#[source] std::io::Error),
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    #[error("cannot set up {0}: {1}")]
    Device(&'static str, String),
}

/// Shared exit slot that event handlers fill.
pub type ExitSlot = Arc<Mutex<Option<VmExit>>>;

/// Watches the reset eventfd and the vCPU stop eventfd.
struct ExitWatcher {
    reset: EventFd,
    vcpus: Arc<crate::runner::VcpuControl>,
    panicked: Arc<std::sync::atomic::AtomicBool>,
    exit: ExitSlot,
}

impl MutEventSubscriber for ExitWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&self.reset, EventSet::IN));
        let _ = ops.add(Events::new(&self.vcpus.stop_evt, EventSet::IN));
    }
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let panicked = self.panicked.load(std::sync::atomic::Ordering::SeqCst);
        let exit = if events.fd() == self.reset.as_raw_fd() {
            let _ = self.reset.read();
            if panicked {
                VmExit::Panic
            } else {
                VmExit::Reset
            }
        } else {
            let _ = self.vcpus.stop_evt.read();
            match self.vcpus.stop.lock().unwrap().clone() {
                Some(VcpuStop::Failed(why)) => VmExit::Failed(why),
                _ if panicked => VmExit::Panic,
                _ => VmExit::Shutdown,
            }
        };
        self.exit.lock().unwrap().get_or_insert(exit);
    }
}

/// The event manager every subscriber is added to.
pub type EventLoop = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

/// Removes the sockets husk-vmm created, whichever way `run` returns.
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn add_devices(
    cfg: &VmConfig,
    m: &mut Machine,
    events: &mut EventLoop,
    exit: &ExitSlot,
) -> Result<(), VmmError> {
    let rng = Rng::new(OsEntropy).map_err(|e| VmmError::Device("rng", e.to_string()))?;
    m.add_virtio(Arc::new(Mutex::new(rng)), events)?;
    if let Some(v) = &cfg.vsock {
        let muxer = HybridMuxer::new(&v.uds, u64::from(v.cid))
            .map_err(|e| VmmError::Device("vsock", e.to_string()))?;
        let dev = Vsock::new(muxer, u64::from(v.cid))
            .map_err(|e| VmmError::Device("vsock", e.to_string()))?;
        m.add_virtio(Arc::new(Mutex::new(dev)), events)?;
    }
    if let Some(n) = &cfg.net {
        let tap = Tap::open(&n.tap, n.netns.as_deref())
            .map_err(|e| VmmError::Device("virtio-net", e.to_string()))?;
        let mac = n.mac.map_or_else(random_mac, |m| m.0);
        let dev = Net::new(tap, mac).map_err(|e| VmmError::Device("virtio-net", e.to_string()))?;
        m.add_virtio(Arc::new(Mutex::new(dev)), events)?;
    }
    if let Some(f) = &cfg.fs {
        let backend = VhostUserFs::connect(&f.socket, 2)
            .map_err(|e| VmmError::Device("virtio-fs", e.to_string()))?;
        let exit = exit.clone();
        let on_fatal = Box::new(move |why: String| {
            tracing::error!("{why}");
            exit.lock().unwrap().get_or_insert(VmExit::Failed(why));
        });
        let dev = Fs::new(backend, &f.tag, on_fatal)
            .map_err(|e| VmmError::Device("virtio-fs", e.to_string()))?;
        m.add_virtio(Arc::new(Mutex::new(dev)), events)?;
    }
    Ok(())
}

/// A random locally administered unicast MAC (02:xx:xx:xx:xx:xx).
fn random_mac() -> [u8; 6] {
    let mut mac = [0u8; 6];
    let _ = OsEntropy.fill(&mut mac);
    mac[0] = 0x02;
    mac
}

/// Validates `cfg`, builds and runs the VM until it ends.
pub fn run(cfg: &VmConfig) -> Result<VmExit, VmmError> {
    let started = Instant::now();
    cfg.validate()?;
    let mut cleanup = Cleanup(Vec::new());
    let mut machine = Machine::new(cfg)?;
    let mut events = EventLoop::new().map_err(|e| VmmError::EventLoop(e.to_string()))?;
    if let Some(v) = &cfg.vsock {
        cleanup.0.push(v.uds.clone());
    }
    let exit: ExitSlot = Arc::new(Mutex::new(None));
    add_devices(cfg, &mut machine, &mut events, &exit)?;
    machine.load(cfg)?;
    let vcpus = machine.create_vcpus()?;
    let on_vcpu_start: Arc<dyn Fn() + Send + Sync> = if cfg.no_seccomp {
        Arc::new(|| {})
    } else {
        seccomp::install_sigsys_handler()?;
        Arc::new(|| {
            if let Err(e) = seccomp::apply(ThreadKind::Vcpu) {
                eprintln!("husk-vmm: {e}");
                std::process::exit(1);
            }
        })
    };
    let vcpus = Arc::new(Vcpus::start(vcpus, on_vcpu_start).map_err(VmmError::Threads)?);
    tracing::info!(
        "first vcpu started {} us after exec of run()",
        started.elapsed().as_micros()
    );
    let watcher = ExitWatcher {
        reset: machine
            .reset_evt
            .try_clone()
            .map_err(|e| VmmError::EventLoop(e.to_string()))?,
        vcpus: vcpus.control.clone(),
        panicked: machine.panicked.clone(),
        exit: exit.clone(),
    };
    events.add_subscriber(Arc::new(Mutex::new(watcher)));
    if let Some(path) = &cfg.control_socket {
        let metrics = Metrics {
            started,
            vcpus: cfg.vcpus,
            mem_mib: cfg.mem_mib,
        };
        let server = ControlServer::new(path, vcpus.clone(), exit.clone(), metrics)
            .map_err(|e| VmmError::Device("control socket", e.to_string()))?;
        cleanup.0.push(path.clone());
        events.add_subscriber(Arc::new(Mutex::new(server)));
    }
    if cfg.no_seccomp {
        tracing::warn!("seccomp filters DISABLED (--no-seccomp)");
        eprintln!(
            "husk-vmm: WARNING: seccomp filters are DISABLED (--no-seccomp); \
             for debugging only, never in production"
        );
    } else {
        seccomp::apply(ThreadKind::Vmm)?;
    }
    loop {
        if let Some(e) = exit.lock().unwrap().clone() {
            return Ok(e);
        }
        events
            .run()
            .map_err(|e| VmmError::EventLoop(e.to_string()))?;
    }
}
