//! Direct boot of an ELF `vmlinux` through its PVH entry point.

pub mod layout;
pub mod mptable;
pub mod regs;
pub mod sparse;

use std::fs::File;
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{load_cmdline, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::memory::GuestMem;
use layout::*;

const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;

/// Boot errors.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot open kernel {0}: {1}")]
    OpenKernel(PathBuf, #[source] std::io::Error),
    #[error("cannot load kernel {0}: {1}; is it an x86-64 vmlinux that fits into guest memory?")]
    LoadKernel(PathBuf, #[source] linux_loader::loader::Error),
    #[error("kernel {0} has no PVH entry note; build it with CONFIG_PVH=y")]
    NoPvhEntry(PathBuf),
    #[error("cannot read initrd {0}: {1}")]
    Initrd(PathBuf, #[source] std::io::Error),
    #[error("initrd of {size} bytes does not fit above the kernel (ends at {kernel_end:#x}); give the VM more memory")]
    InitrdTooLarge { size: u64, kernel_end: u64 },
    #[error("kernel command line is invalid or longer than {CMDLINE_MAX_SIZE} bytes: {0}")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    #[error("cannot write the kernel command line: {0}")]
    WriteCmdline(#[source] linux_loader::loader::Error),
    #[error("cannot write PVH boot parameters: {0}")]
    StartInfo(#[source] linux_loader::configurator::Error),
    #[error(transparent)]
    MpTable(#[from] mptable::MpTableError),
    #[error("cannot write boot structures into guest memory")]
    Write,
}

/// Loads kernel, initrd, command line, PVH start info, MP table and GDT.
/// Returns the PVH entry address.
pub fn load(
    mem: &GuestMem,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
    vcpus: u8,
) -> Result<GuestAddress, BootError> {
    let f = File::open(kernel).map_err(|e| BootError::OpenKernel(kernel.into(), e))?;
    // Guest RAM is fresh here: the image's zero pages need not be written.
    let mut f = sparse::SkipZeros::new(f, mem);
    let res = Elf::load(mem, None, &mut f, Some(GuestAddress(HIMEM_START)))
        .map_err(|e| BootError::LoadKernel(kernel.into(), e))?;
    tracing::debug!(
        "kernel image: {} KiB of zero pages not written",
        f.skipped >> 10
    );
    let PvhBootCapability::PvhEntryPresent(entry) = res.pvh_boot_cap else {
        return Err(BootError::NoPvhEntry(kernel.into()));
    };
    let mem_end = mem.last_addr().0 + 1;
    let mut modules = Vec::new();
    if let Some(path) = initrd {
        let (addr, size) = load_initrd(mem, path, res.kernel_end, mem_end)?;
        modules.push(hvm_modlist_entry {
            paddr: addr,
            size,
            ..Default::default()
        });
    }

    let cl = Cmdline::try_from(cmdline, CMDLINE_MAX_SIZE).map_err(BootError::Cmdline)?;
    load_cmdline(mem, GuestAddress(CMDLINE_START), &cl).map_err(BootError::WriteCmdline)?;

    let memmap = [
        memmap_entry(0, MPTABLE_START, E820_RAM),
        memmap_entry(MPTABLE_START, EBDA_END - MPTABLE_START, E820_RESERVED),
        memmap_entry(HIMEM_START, mem_end - HIMEM_START, E820_RAM),
    ];
    let start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        nr_modules: modules.len() as u32,
        modlist_paddr: if modules.is_empty() {
            0
        } else {
            PVH_MODLIST_START
        },
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let mut params = BootParams::new(&start_info, GuestAddress(PVH_INFO_START));
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
    if !modules.is_empty() {
        params.set_modules(&modules, GuestAddress(PVH_MODLIST_START));
    }
    PvhBootConfigurator::write_bootparams(&params, mem).map_err(BootError::StartInfo)?;

    mptable::write(mem, vcpus)?;
    regs::write_gdt(mem).map_err(|_| BootError::Write)?;
    Ok(entry)
}

fn memmap_entry(addr: u64, size: u64, type_: u32) -> hvm_memmap_table_entry {
    hvm_memmap_table_entry {
        addr,
        size,
        type_,
        reserved: 0,
    }
}

/// Puts the initrd at the top of RAM, page aligned. Returns (address, size).
fn load_initrd(
    mem: &GuestMem,
    path: &Path,
    kernel_end: u64,
    mem_end: u64,
) -> Result<(u64, u64), BootError> {
    let f = File::open(path).map_err(|e| BootError::Initrd(path.into(), e))?;
    let size = f
        .metadata()
        .map_err(|e| BootError::Initrd(path.into(), e))?
        .len();
    let too_large = BootError::InitrdTooLarge { size, kernel_end };
    let addr = mem_end.checked_sub(size).ok_or(too_large)? & !0xfff;
    if addr < kernel_end {
        return Err(BootError::InitrdTooLarge { size, kernel_end });
    }
    // Fresh guest RAM, as for the kernel: written through the memfd.
    let mut f = sparse::SkipZeros::new(f, mem);
    mem.read_exact_volatile_from(GuestAddress(addr), &mut f, size as usize)
        .map_err(|e| BootError::Initrd(path.into(), std::io::Error::other(e.to_string())))?;
    Ok((addr, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_pvh_or_garbage_kernels_are_errors() {
        let mem = crate::memory::create(32 << 20).unwrap();
        let p = std::env::temp_dir().join(format!("husk-vmm-badk-{}", std::process::id()));
        std::fs::write(&p, b"\x7fELF garbage that is no real header").unwrap();
        let e = load(&mem, &p, None, "console=ttyS0", 1).unwrap_err();
        assert!(matches!(e, BootError::LoadKernel(..)), "{e}");
        std::fs::remove_file(&p).unwrap();
        let e = load(&mem, &p, None, "", 1).unwrap_err();
        assert!(matches!(e, BootError::OpenKernel(..)));
    }

    #[test]
    fn initrd_goes_to_top_of_ram_or_fails_clearly() {
        let mem = crate::memory::create(4 << 20).unwrap();
        let p = std::env::temp_dir().join(format!("husk-vmm-initrd-{}", std::process::id()));
        std::fs::write(&p, vec![0xabu8; 5000]).unwrap();
        let (addr, size) = load_initrd(&mem, &p, 0x20_0000, 4 << 20).unwrap();
        assert_eq!(size, 5000);
        assert_eq!(addr, ((4 << 20) - 5000) & !0xfff);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(addr + 4999)).unwrap(), 0xab);
        let e = load_initrd(&mem, &p, (4 << 20) - 100, 4 << 20).unwrap_err();
        assert!(e.to_string().contains("give the VM more memory"));
        std::fs::remove_file(&p).unwrap();
    }
}
