//! Guest physical memory layout (x86-64, PVH boot).

/// In-memory GDT the boot segments describe.
pub const GDT_START: u64 = 0x500;
/// Empty IDT.
pub const IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`; its address is passed in EBX.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initrd).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map (e820-like table).
pub const PVH_MEMMAP_START: u64 = 0x7000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// x86 `COMMAND_LINE_SIZE`.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// MP floating pointer + config table: the last KiB of base memory, where
/// Linux scans for it.
pub const MPTABLE_START: u64 = 0x9fc00;
/// End of low RAM (the 640 KiB line).
pub const EBDA_END: u64 = 0xa0000;
/// Kernels are loaded at or above 1 MiB.
pub const HIMEM_START: u64 = 0x10_0000;
/// First virtio-mmio device window; each takes one page.
pub const MMIO_START: u64 = 0xd000_0000;
/// Size of one virtio-mmio window.
pub const MMIO_SIZE: u64 = 0x1000;
/// First IRQ handed to virtio-mmio devices (4 is the serial port).
pub const IRQ_BASE: u32 = 5;
/// Last usable IOAPIC pin.
pub const IRQ_MAX: u32 = 23;
/// Local APIC and IOAPIC addresses.
pub const APIC_DEFAULT_BASE: u32 = 0xfee0_0000;
pub const IOAPIC_DEFAULT_BASE: u32 = 0xfec0_0000;
/// KVM needs three pages for the TSS and one for the identity map, below 4 GiB
/// and outside RAM and MMIO.
pub const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;
