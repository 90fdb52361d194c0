//! Boot-time vCPU state for the PVH entry: 32-bit protected mode, flat
//! segments, paging off, EBX = start info.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress};

use super::layout::{GDT_START, IDT_START, PVH_INFO_START};
use crate::memory::GuestMem;

/// null, 32-bit flat code, 32-bit flat data, TSS.
pub const GDT: [u64; 4] = [
    0,
    0x00cf_9b00_0000_ffff,
    0x00cf_9300_0000_ffff,
    0x008f_8b00_0000_ffff,
];

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;

/// Writes the GDT and an empty IDT into guest memory.
pub fn write_gdt(mem: &GuestMem) -> Result<(), vm_memory::GuestMemoryError> {
    for (i, e) in GDT.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT_START + 8 * i as u64))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_START))
}

/// Decodes GDT entry `index` into a KVM segment.
pub fn segment(index: u16) -> kvm_segment {
    let e = GDT[index as usize];
    let limit = ((e & 0xffff) | ((e >> 32) & 0x000f_0000)) as u32;
    let g = ((e >> 55) & 1) as u8;
    kvm_segment {
        base: ((e >> 16) & 0x00ff_ffff) | ((e >> 32) & 0xff00_0000),
        limit: if g == 1 { (limit << 12) | 0xfff } else { limit },
        selector: index * 8,
        type_: ((e >> 40) & 0xf) as u8,
        present: ((e >> 47) & 1) as u8,
        dpl: ((e >> 45) & 3) as u8,
        db: ((e >> 54) & 1) as u8,
        s: ((e >> 44) & 1) as u8,
        l: ((e >> 53) & 1) as u8,
        g,
        avl: ((e >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

/// Applies the PVH boot segments to `sregs`.
pub fn pvh_sregs(sregs: &mut kvm_sregs) {
    sregs.cs = segment(1);
    let data = segment(2);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(3);
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = 7;
    sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
}

/// General registers at the PVH entry.
pub fn pvh_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry,
        rbx: PVH_INFO_START,
        ..Default::default()
    }
}

/// x87/SSE state after reset.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_segments_decode() {
        let cs = segment(1);
        assert_eq!((cs.base, cs.limit, cs.selector), (0, 0xffff_ffff, 8));
        assert_eq!(
            (cs.type_, cs.present, cs.db, cs.s, cs.g, cs.l),
            (0xb, 1, 1, 1, 1, 0)
        );
        let ds = segment(2);
        assert_eq!((ds.type_, ds.selector), (0x3, 0x10));
        let tr = segment(3);
        assert_eq!((tr.type_, tr.s, tr.g, tr.limit), (0xb, 0, 1, 0xffff_ffff));
    }

    #[test]
    fn pvh_entry_state() {
        let mut s = kvm_sregs::default();
        pvh_sregs(&mut s);
        assert_eq!(s.cr0 & X86_CR0_PE, 1);
        assert_eq!(s.cs.selector, 8);
        let r = pvh_regs(0x100_0000);
        assert_eq!((r.rip, r.rbx, r.rflags), (0x100_0000, PVH_INFO_START, 2));
    }
}
