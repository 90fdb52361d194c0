//! Builds a VM from a [`VmConfig`] and runs it until the guest leaves.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::{MutEventSubscriber, SubscriberOps};
use kvm_ioctls::{IoEventAddress, Kvm, VmFd};
use vm_superio::Serial;
use vmm_sys_util::eventfd::EventFd;

use crate::boot::layout::{IRQ_BASE, IRQ_MAX, MMIO_SIZE, MMIO_START};
use crate::boot::{self, BootError};
use crate::config::{ConsoleOutput, VmConfig};
use crate::cpu::Profile;
use crate::devices::bus::Bus;
use crate::devices::console_log::{self, CappedFile};
use crate::devices::i8042::I8042;
use crate::devices::serial::{ConsoleSink, IrqTrigger, SerialDevice};
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::{Interrupt, VirtioDevice};
use crate::kvm::{self, KvmError};
use crate::memory::{self, GuestMem, MemoryError};
use crate::vcpu::{Vcpu, VcpuError};

/// Serial port base and IRQ (ttyS0).
pub const SERIAL_PORT: u64 = 0x3f8;
pub const SERIAL_IRQ: u32 = 4;
/// i8042 data (0x60) through command/status (0x64).
pub const I8042_PORT: u64 = 0x60;

/// virtio-mmio QueueNotify register offset.
const NOTIFY_REG: u64 = 0x50;

/// Base command line; profile words, virtio devices and user words follow.
pub const BASE_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 pci=off \
i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd";

/// VM build errors.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Kvm(#[from] KvmError),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("cannot open console output {0}: {1}")]
    Console(std::path::PathBuf, #[source] std::io::Error),
    #[error("cannot create an eventfd or register it with kvm: {0}")]
    EventFd(#[source] std::io::Error),
    #[error("cannot place device: {0}")]
    Bus(#[from] crate::devices::bus::BusError),
    #[error("too many virtio devices: no IRQ left")]
    NoIrq,
}

/// A built VM, ready to run.
pub struct Machine {
    pub kvm: Kvm,
    pub vm: VmFd,
    pub mem: GuestMem,
    pub pio: Bus,
    pub mmio: Bus,
    pub profile: Profile,
    pub vcpus: u8,
    pub entry: u64,
    /// Written by the i8042 when the guest resets.
    pub reset_evt: EventFd,
    /// Set when the console showed a kernel panic.
    pub panicked: Arc<AtomicBool>,
    /// `virtio_mmio.device=` words for devices added so far.
    pub mmio_cmdline: Vec<String>,
}

/// Builds the full kernel command line.
pub fn cmdline(profile: Profile, devices: &[String], user: &str) -> String {
    let mut parts = vec![BASE_CMDLINE.to_string()];
    parts.push(profile.cmdline_words().to_string());
    parts.extend(devices.iter().cloned());
    parts.push(user.to_string());
    parts.retain(|p| !p.is_empty());
    parts.join(" ")
}

fn console_writer(c: &ConsoleOutput) -> Result<Box<dyn Write + Send>, VmError> {
    Ok(match c {
        ConsoleOutput::Stdout => Box::new(std::io::stdout()),
        ConsoleOutput::Off => Box::new(std::io::sink()),
        ConsoleOutput::File(p) => Box::new(
            CappedFile::open(p, console_log::DEFAULT_MAX_BYTES)
                .map_err(|e| VmError::Console(p.clone(), e))?,
        ),
    })
}

impl Machine {
    /// Memory, KVM VM, irqchip, serial and i8042. Devices are added next,
    /// then [`Machine::load`] writes the guest image.
    pub fn new(cfg: &VmConfig) -> Result<Self, VmError> {
        let mem = memory::create(u64::from(cfg.mem_mib) << 20)?;
        let (kvm, vm) = kvm::create_vm(&mem)?;
        kvm::setup_irqchip(&vm)?;
        let mut pio = Bus::default();

        let serial_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::EventFd)?;
        vm.register_irqfd(&serial_evt, SERIAL_IRQ)
            .map_err(|e| VmError::EventFd(e.into()))?;
        let sink = ConsoleSink::new(console_writer(&cfg.console)?);
        let panicked = sink.panicked.clone();
        let serial = SerialDevice(Serial::new(IrqTrigger(serial_evt), sink));
        pio.insert(SERIAL_PORT, 8, Arc::new(Mutex::new(serial)))?;

        let reset_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::EventFd)?;
        let i8042 = I8042::new(reset_evt.try_clone().map_err(VmError::EventFd)?);
        pio.insert(I8042_PORT, 5, Arc::new(Mutex::new(i8042)))?;

        Ok(Machine {
            kvm,
            vm,
            mem,
            pio,
            mmio: Bus::default(),
            profile: cfg.cpu_profile.resolve(),
            vcpus: cfg.vcpus,
            entry: 0,
            reset_evt,
            panicked,
            mmio_cmdline: Vec::new(),
        })
    }

    /// Loads kernel, initrd and the command line; call after adding devices.
    pub fn load(&mut self, cfg: &VmConfig) -> Result<(), VmError> {
        let cl = cmdline(self.profile, &self.mmio_cmdline, &cfg.cmdline);
        tracing::info!(profile = ?self.profile, "kernel command line: {cl}");
        let entry = boot::load(
            &self.mem,
            &cfg.kernel,
            cfg.initrd.as_deref(),
            &cl,
            self.vcpus,
        )?;
        self.entry = entry.0;
        Ok(())
    }

    /// Creates and configures the vCPUs (vCPU 0 at the PVH entry).
    pub fn create_vcpus(&self) -> Result<Vec<Vcpu>, VmError> {
        let mut out = Vec::new();
        for id in 0..self.vcpus {
            let v = Vcpu::new(&self.vm, id, self.pio.clone(), self.mmio.clone())?;
            let entry = (id == 0).then_some(self.entry);
            v.configure(&self.kvm, self.profile, self.vcpus, entry)?;
            out.push(v);
        }
        Ok(out)
    }

    /// Puts a virtio device on the next MMIO window with its own IRQ, wires
    /// its queue notifications as KVM ioeventfds, and subscribes it to `events`.
    pub fn add_virtio<D>(
        &mut self,
        dev: Arc<Mutex<D>>,
        events: &mut crate::vmm::EventLoop,
    ) -> Result<(), VmError>
    where
        D: VirtioDevice + MutEventSubscriber + Send + 'static,
    {
        let idx = self.mmio_cmdline.len() as u64;
        let base = MMIO_START + idx * MMIO_SIZE;
        let irq = IRQ_BASE + idx as u32;
        if irq > IRQ_MAX {
            return Err(VmError::NoIrq);
        }
        let irqfd = EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::EventFd)?;
        self.vm
            .register_irqfd(&irqfd, irq)
            .map_err(|e| VmError::EventFd(e.into()))?;
        let nqueues = dev.lock().unwrap().queue_max_sizes().len();
        let mut evts = Vec::with_capacity(nqueues);
        for q in 0..nqueues {
            let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(VmError::EventFd)?;
            self.vm
                .register_ioevent(&evt, &IoEventAddress::Mmio(base + NOTIFY_REG), q as u32)
                .map_err(|e| VmError::EventFd(e.into()))?;
            evts.push(evt);
        }
        let transport = MmioTransport::new(
            dev.clone(),
            self.mem.clone(),
            Arc::new(Interrupt::new(irqfd)),
            evts,
        );
        self.mmio
            .insert(base, MMIO_SIZE, Arc::new(Mutex::new(transport)))?;
        self.mmio_cmdline
            .push(format!("virtio_mmio.device=4K@{base:#x}:{irq}"));
        events.add_subscriber(dev);
        Ok(())
    }

    pub fn guest_panicked(&self) -> bool {
        self.panicked.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_order() {
        let c = cmdline(
            Profile::Compat,
            &["virtio_mmio.device=4K@0xd0000000:5".into()],
            "quiet",
        );
        assert!(c.starts_with("console=ttyS0 reboot=k panic=-1"));
        let pos = |w: &str| c.find(w).unwrap();
        assert!(pos("noxsave") < pos("virtio_mmio.device") && pos("virtio_mmio") < pos("quiet"));
        assert!(!cmdline(Profile::Host, &[], "").contains("noxsave"));
        assert!(!cmdline(Profile::Host, &[], "").ends_with(' '));
    }
}
