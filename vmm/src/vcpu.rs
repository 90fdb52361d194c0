//! One vCPU: boot state, CPUID, and the run loop dispatching exits to the
//! PIO and MMIO buses.

use kvm_bindings::{kvm_msr_entry, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};

use crate::boot::regs;
use crate::cpu::{self, Profile};
use crate::devices::bus::Bus;

/// vCPU errors.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("cannot create vcpu {0}: {1}")]
    Create(u8, #[source] kvm_ioctls::Error),
    #[error("cannot read the host's supported cpuid: {0}")]
    SupportedCpuid(#[source] kvm_ioctls::Error),
    #[error(transparent)]
    Cpuid(#[from] cpu::CpuidError),
    #[error("cannot set vcpu {0} state ({1}): {2}")]
    SetState(u8, &'static str, #[source] kvm_ioctls::Error),
}

/// Why a vCPU stopped running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuStop {
    /// HLT reached userspace (only without an in-kernel irqchip: tiny guests).
    Halted,
    /// Triple fault or a KVM system event (reset/shutdown).
    Shutdown,
    /// KVM could not run the guest (e.g. an emulation failure).
    Failed(String),
    /// Asked to stop by the VMM.
    Stopped,
}

const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MISC_ENABLE_FAST_STRING: u64 = 1;
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// A vCPU with the buses its exits go to.
pub struct Vcpu {
    pub fd: VcpuFd,
    pub id: u8,
    pio: Bus,
    mmio: Bus,
}

impl Vcpu {
    pub fn new(vm: &VmFd, id: u8, pio: Bus, mmio: Bus) -> Result<Self, VcpuError> {
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(|e| VcpuError::Create(id, e))?;
        Ok(Vcpu { fd, id, pio, mmio })
    }

    /// CPUID, MSRs, LAPIC LINT pins and (for the boot vCPU) PVH entry state.
    pub fn configure(
        &self,
        kvm: &Kvm,
        profile: Profile,
        count: u8,
        entry: Option<u64>,
    ) -> Result<(), VcpuError> {
        let id = self.id;
        let set = |what, r: Result<(), kvm_ioctls::Error>| {
            r.map_err(|e| VcpuError::SetState(id, what, e))
        };
        let mut cpuid: CpuId = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(VcpuError::SupportedCpuid)?;
        cpu::apply(&mut cpuid, profile, id, count)?;
        set("cpuid", self.fd.set_cpuid2(&cpuid))?;
        let msrs = Msrs::from_entries(&[kvm_msr_entry {
            index: MSR_IA32_MISC_ENABLE,
            data: MISC_ENABLE_FAST_STRING,
            ..Default::default()
        }])
        .expect("one msr fits");
        set("msrs", self.fd.set_msrs(&msrs).map(|_| ()))?;
        self.set_lint()?;
        if let Some(entry) = entry {
            let mut sregs = self
                .fd
                .get_sregs()
                .map_err(|e| VcpuError::SetState(id, "sregs", e))?;
            regs::pvh_sregs(&mut sregs);
            set("sregs", self.fd.set_sregs(&sregs))?;
            set("regs", self.fd.set_regs(&regs::pvh_regs(entry)))?;
            set("fpu", self.fd.set_fpu(&regs::boot_fpu()))?;
        }
        Ok(())
    }

    fn set_lint(&self) -> Result<(), VcpuError> {
        let mut lapic = self
            .fd
            .get_lapic()
            .map_err(|e| VcpuError::SetState(self.id, "lapic", e))?;
        for (reg, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
            let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[reg + i] as u8);
            let v = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
            for (i, b) in v.to_le_bytes().iter().enumerate() {
                lapic.regs[reg + i] = *b as _;
            }
        }
        self.fd
            .set_lapic(&lapic)
            .map_err(|e| VcpuError::SetState(self.id, "lapic", e))
    }

    /// Runs the guest until one exit ends it; `None` means keep going.
    pub fn run_once(&mut self) -> Option<VcpuStop> {
        match self.fd.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                self.pio.write(u64::from(port), data);
                None
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                self.pio.read(u64::from(port), data);
                None
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                self.mmio.read(addr, data);
                None
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                self.mmio.write(addr, data);
                None
            }
            Ok(VcpuExit::Hlt) => Some(VcpuStop::Halted),
            Ok(VcpuExit::Shutdown) | Ok(VcpuExit::SystemEvent(..)) => Some(VcpuStop::Shutdown),
            Ok(VcpuExit::FailEntry(reason, cpu)) => Some(VcpuStop::Failed(format!(
                "kvm entry failed on cpu {cpu}: hardware reason {reason:#x}"
            ))),
            Ok(VcpuExit::InternalError) => Some(VcpuStop::Failed(
                "kvm internal error (emulation failure?); try --cpu-profile compat".into(),
            )),
            Ok(other) => {
                tracing::debug!(vcpu = self.id, "unhandled exit {other:?}");
                None
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                self.fd.set_kvm_immediate_exit(0);
                Some(VcpuStop::Stopped)
            }
            Err(e) => Some(VcpuStop::Failed(format!("KVM_RUN failed: {e}"))),
        }
    }
}
