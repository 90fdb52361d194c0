//! The Intel MultiProcessor table, so an ACPI-less guest finds its vCPUs
//! and the IOAPIC (MP spec 1.4).

use vm_memory::{Bytes, GuestAddress};

use super::layout::{APIC_DEFAULT_BASE, IOAPIC_DEFAULT_BASE, IRQ_MAX, MPTABLE_START};
use crate::memory::GuestMem;

/// MP table errors.
#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    #[error("mp table for {0} vcpus does not fit below the 640 KiB line")]
    TooLarge(u8),
    #[error("cannot write the mp table into guest memory")]
    Write,
}

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b))
        .wrapping_neg()
}

/// Builds the floating pointer and the config table for `vcpus` CPUs, as
/// they will sit at `MPTABLE_START`.
pub fn build(vcpus: u8) -> Vec<u8> {
    let ioapic_id = vcpus + 1;
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..vcpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries.extend_from_slice(&[0, cpu, APIC_VERSION, flags]);
        entries.extend_from_slice(&0x600u32.to_le_bytes()); // cpu signature: family 6
        entries.extend_from_slice(&0x201u32.to_le_bytes()); // features: fpu, apic
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[1, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[2, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_DEFAULT_BASE.to_le_bytes());
    count += 1;
    for irq in 0..=IRQ_MAX as u8 {
        let kind = if irq == 0 {
            INT_TYPE_EXTINT
        } else {
            INT_TYPE_INT
        };
        entries.extend_from_slice(&[3, kind, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    // LINT0 is ExtINT, LINT1 is NMI on every local APIC (0xff).
    entries.extend_from_slice(&[4, INT_TYPE_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[4, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_addr = MPTABLE_START as u32 + 16;
    let mut table = Vec::with_capacity(44 + entries.len());
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    table.push(4); // spec revision 1.4
    table.push(0); // checksum, below
    table.extend_from_slice(b"HUSK    ");
    table.extend_from_slice(b"HUSK-VMM    ");
    table.extend_from_slice(&0u32.to_le_bytes()); // oem table
    table.extend_from_slice(&0u16.to_le_bytes());
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&APIC_DEFAULT_BASE.to_le_bytes());
    table.extend_from_slice(&[0; 4]); // extended table length, checksum, reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut out = Vec::with_capacity(16 + table.len());
    out.extend_from_slice(b"_MP_");
    out.extend_from_slice(&table_addr.to_le_bytes());
    out.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]);
    out[10] = checksum(&out);
    out.extend_from_slice(&table);
    out
}

/// Writes the MP table for `vcpus` CPUs into guest memory.
pub fn write(mem: &GuestMem, vcpus: u8) -> Result<(), MpTableError> {
    let bytes = build(vcpus);
    if MPTABLE_START + bytes.len() as u64 > super::layout::EBDA_END {
        return Err(MpTableError::TooLarge(vcpus));
    }
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START))
        .map_err(|_| MpTableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_and_counts() {
        for vcpus in [1u8, 2, 32] {
            let t = build(vcpus);
            assert_eq!(&t[0..4], b"_MP_");
            assert_eq!(sum(&t[0..16]), 0, "floating pointer checksum");
            let ptr = u32::from_le_bytes(t[4..8].try_into().unwrap());
            assert_eq!(ptr as u64, MPTABLE_START + 16);
            let cfg = &t[16..];
            assert_eq!(&cfg[0..4], b"PCMP");
            let len = u16::from_le_bytes(cfg[4..6].try_into().unwrap()) as usize;
            assert_eq!(len, cfg.len());
            assert_eq!(sum(cfg), 0, "config table checksum");
            let count = u16::from_le_bytes(cfg[34..36].try_into().unwrap());
            assert_eq!(count as usize, vcpus as usize + 1 + 1 + 24 + 2);
            // First processor entry is the enabled BSP with APIC id 0.
            assert_eq!(&cfg[44..48], &[0, 0, APIC_VERSION, 3]);
            assert!(MPTABLE_START + t.len() as u64 <= super::super::layout::EBDA_END);
        }
    }

    #[test]
    fn written_to_guest_memory() {
        let mem = crate::memory::create(1 << 20).unwrap();
        write(&mem, 2).unwrap();
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(MPTABLE_START))
            .unwrap();
        assert_eq!(&sig, b"_MP_");
    }
}
