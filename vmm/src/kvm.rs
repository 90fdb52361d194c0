//! The KVM VM: memory slots, in-kernel irqchip and PIT.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::boot::layout::{KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS};
use crate::memory::GuestMem;

/// KVM setup errors.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    #[error("cannot open /dev/kvm: {0}; is KVM enabled and may this user open /dev/kvm?")]
    Open(#[source] kvm_ioctls::Error),
    #[error("cannot create a KVM VM: {0}")]
    CreateVm(#[source] kvm_ioctls::Error),
    #[error("cannot register guest memory with KVM: {0}")]
    MemorySlot(#[source] kvm_ioctls::Error),
    #[error("cannot set up the in-kernel irqchip/PIT: {0}")]
    Irqchip(#[source] kvm_ioctls::Error),
}

/// Opens KVM, creates a VM and registers every guest memory region.
pub fn create_vm(mem: &GuestMem) -> Result<(Kvm, VmFd), KvmError> {
    let kvm = Kvm::new().map_err(KvmError::Open)?;
    let vm = kvm.create_vm().map_err(KvmError::CreateVm)?;
    for (slot, region) in mem.iter().enumerate() {
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the region is a live mapping of `region.len()` bytes owned by
        // `mem`, which the caller keeps alive for as long as the VM exists.
        unsafe { vm.set_user_memory_region(r) }.map_err(KvmError::MemorySlot)?;
    }
    Ok((kvm, vm))
}

/// In-kernel PIC+IOAPIC+LAPIC and PIT (the guest's clock source at boot).
pub fn setup_irqchip(vm: &VmFd) -> Result<(), KvmError> {
    vm.set_tss_address(KVM_TSS_ADDRESS)
        .map_err(KvmError::Irqchip)?;
    vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
        .map_err(KvmError::Irqchip)?;
    vm.create_irq_chip().map_err(KvmError::Irqchip)?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(KvmError::Irqchip)
}
