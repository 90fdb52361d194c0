//! CPUID table filtering (the normalisation Firecracker does for every
//! guest, plus the compat profile's hidden features).

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

use super::Profile;

/// CPUID table errors.
#[derive(Debug, thiserror::Error)]
pub enum CpuidError {
    #[error("cpuid table is full; cannot add leaf {0:#x}")]
    Full(u32),
}

// Leaf 1 ECX.
const L1_ECX_FMA: u32 = 1 << 12;
const L1_ECX_CX16: u32 = 1 << 13;
const L1_ECX_POPCNT: u32 = 1 << 23;
const L1_ECX_XSAVE: u32 = 1 << 26;
const L1_ECX_OSXSAVE: u32 = 1 << 27;
const L1_ECX_AVX: u32 = 1 << 28;
const L1_ECX_HYPERVISOR: u32 = 1 << 31;
// Leaf 1 EDX.
const L1_EDX_HTT: u32 = 1 << 28;
// Leaf 6 ECX: energy performance bias MSR, not virtualised.
const L6_ECX_EPB: u32 = 1 << 3;
// Leaf 7 subleaf 0.
const L7_EBX_AVX2: u32 = 1 << 5;
const L7_EBX_ERMS: u32 = 1 << 9;
const L7_EBX_SMAP: u32 = 1 << 20;
const L7_EDX_FSRM: u32 = 1 << 4;
// Leaf 0x80000008 EBX: FXSAVE/XSAVE always save the x87 error pointers;
// without it an AMD guest takes the `fnclex` path that PVM cannot emulate.
const L80000008_EBX_XSAVEERPTR: u32 = 1 << 2;

/// Rewrites `cpuid` (KVM's supported table) for vCPU `id` of `count`.
pub fn apply(cpuid: &mut CpuId, profile: Profile, id: u8, count: u8) -> Result<(), CpuidError> {
    for e in cpuid.as_mut_slice() {
        normalize(e, id, count);
        if profile == Profile::Compat {
            compat(e);
        }
    }
    if profile == Profile::Compat && !cpuid.as_slice().iter().any(|e| e.function == 0x8000_0008) {
        let e = kvm_cpuid_entry2 {
            function: 0x8000_0008,
            ebx: L80000008_EBX_XSAVEERPTR,
            ..Default::default()
        };
        cpuid.push(e).map_err(|_| CpuidError::Full(0x8000_0008))?;
    }
    Ok(())
}

fn normalize(e: &mut kvm_cpuid_entry2, id: u8, count: u8) {
    let count = u32::from(count.max(1));
    match e.function {
        0x1 => {
            // APIC id in EBX[31:24], logical processor count in EBX[23:16].
            e.ebx = (e.ebx & 0x0000_ffff) | (u32::from(id) << 24) | (count << 16);
            e.ecx |= L1_ECX_HYPERVISOR;
            if count > 1 {
                e.edx |= L1_EDX_HTT;
            } else {
                e.edx &= !L1_EDX_HTT;
            }
        }
        0x4 => {
            // Cores per package - 1 in EAX[31:26]; threads sharing the cache - 1 in EAX[25:14].
            let level = (e.eax >> 5) & 0x7;
            let sharing = if level >= 3 { count - 1 } else { 0 };
            e.eax = (e.eax & 0x3fff) | (sharing << 14) | ((count - 1) << 26);
        }
        0x6 => e.ecx &= !L6_ECX_EPB,
        0xa => {
            // No virtual PMU.
            e.eax = 0;
            e.ebx = 0;
            e.ecx = 0;
            e.edx = 0;
        }
        // Extended topology (0xB) and its v2 (0x1F, which Linux prefers when
        // present): one package, `count` cores of one thread; x2APIC id = id.
        0xb | 0x1f => {
            e.flags |= KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
            e.edx = u32::from(id);
            match e.index {
                0 => {
                    e.eax = 0;
                    e.ebx = 1;
                    e.ecx = 1 << 8;
                }
                1 => {
                    e.eax = 32 - (count - 1).leading_zeros();
                    e.ebx = count;
                    e.ecx = (2 << 8) | 1;
                }
                i => {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = i;
                }
            }
        }
        _ => {}
    }
}

fn compat(e: &mut kvm_cpuid_entry2) {
    match (e.function, e.index) {
        (0x1, _) => {
            e.ecx &= !(L1_ECX_CX16
                | L1_ECX_POPCNT
                | L1_ECX_XSAVE
                | L1_ECX_OSXSAVE
                | L1_ECX_AVX
                | L1_ECX_FMA);
        }
        (0x7, 0) => {
            e.ebx &= !(L7_EBX_SMAP | L7_EBX_ERMS | L7_EBX_AVX2);
            e.edx &= !L7_EDX_FSRM;
        }
        (0x8000_0008, _) => e.ebx |= L80000008_EBX_XSAVEERPTR,
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    fn host_like() -> CpuId {
        CpuId::from_entries(&[
            entry(0x1, 0, [0x806f8, 0x0008_0800, !L1_ECX_HYPERVISOR, u32::MAX]),
            entry(0x4, 0, [0x121, 0, 0, 0]),
            entry(0x4, 3, [0x163, 0, 0, 0]),
            entry(0x6, 0, [0, 0, 0xffff, 0]),
            entry(0x7, 0, [0, u32::MAX, 0, u32::MAX]),
            entry(0xa, 0, [7, 7, 7, 7]),
            entry(0xb, 0, [9, 9, 9, 9]),
            entry(0xb, 1, [9, 9, 9, 9]),
            entry(0x1f, 0, [9, 9, 9, 9]),
            entry(0x1f, 1, [9, 9, 9, 9]),
            entry(0x1f, 2, [9, 9, 9, 9]),
        ])
        .unwrap()
    }

    fn find(c: &CpuId, f: u32, i: u32) -> kvm_cpuid_entry2 {
        *c.as_slice()
            .iter()
            .find(|e| e.function == f && e.index == i)
            .unwrap()
    }

    #[test]
    fn host_profile_normalizes_topology() {
        let mut c = host_like();
        apply(&mut c, Profile::Host, 2, 4).unwrap();
        let l1 = find(&c, 1, 0);
        assert_eq!(l1.ebx >> 24, 2, "apic id");
        assert_eq!((l1.ebx >> 16) & 0xff, 4, "logical count");
        assert_eq!(l1.ebx & 0xffff, 0x0800, "clflush size kept");
        assert_ne!(l1.ecx & L1_ECX_HYPERVISOR, 0);
        assert_ne!(l1.ecx & L1_ECX_CX16, 0, "host keeps cx16");
        assert_eq!(find(&c, 0x4, 0).eax >> 26, 3);
        assert_eq!((find(&c, 0x4, 3).eax >> 14) & 0xfff, 3, "L3 shared by all");
        assert_eq!(find(&c, 0x6, 0).ecx & L6_ECX_EPB, 0);
        assert_eq!(find(&c, 0xa, 0).eax, 0);
        let b1 = find(&c, 0xb, 1);
        assert_eq!((b1.eax, b1.ebx, b1.edx), (2, 4, 2));
        assert_eq!(find(&c, 0xb, 0).ebx, 1);
        let v2 = find(&c, 0x1f, 1);
        assert_eq!((v2.eax, v2.ebx, v2.ecx, v2.edx), (2, 4, (2 << 8) | 1, 2));
        let v2_die = find(&c, 0x1f, 2);
        assert_eq!(
            (v2_die.ebx, v2_die.ecx & 0xff00, v2_die.edx),
            (0, 0, 2),
            "no die level"
        );
        assert!(!c.as_slice().iter().any(|e| e.function == 0x8000_0008));
    }

    #[test]
    fn single_vcpu_has_no_htt() {
        let mut c = host_like();
        apply(&mut c, Profile::Host, 0, 1).unwrap();
        assert_eq!(find(&c, 1, 0).edx & L1_EDX_HTT, 0);
        assert_eq!(find(&c, 0xb, 1).eax, 0);
    }

    #[test]
    fn compat_profile_hides_unemulated_features() {
        let mut c = host_like();
        apply(&mut c, Profile::Compat, 0, 1).unwrap();
        let l1 = find(&c, 1, 0);
        for bit in [
            L1_ECX_CX16,
            L1_ECX_POPCNT,
            L1_ECX_XSAVE,
            L1_ECX_OSXSAVE,
            L1_ECX_AVX,
        ] {
            assert_eq!(l1.ecx & bit, 0, "bit {bit:#x} hidden");
        }
        let l7 = find(&c, 7, 0);
        assert_eq!(l7.ebx & (L7_EBX_SMAP | L7_EBX_ERMS | L7_EBX_AVX2), 0);
        assert_eq!(l7.edx & L7_EDX_FSRM, 0);
        assert_ne!(l7.ebx & 1, 0, "unrelated bits stay");
        let ext = find(&c, 0x8000_0008, 0);
        assert_ne!(ext.ebx & L80000008_EBX_XSAVEERPTR, 0, "xsaveerptr added");
    }

    #[test]
    fn compat_sets_xsaveerptr_on_existing_leaf() {
        let mut c = CpuId::from_entries(&[entry(0x8000_0008, 0, [0x3030, 0x1, 0, 0])]).unwrap();
        apply(&mut c, Profile::Compat, 0, 1).unwrap();
        assert_eq!(c.as_slice().len(), 1);
        assert_eq!(find(&c, 0x8000_0008, 0).ebx, 0x1 | L80000008_EBX_XSAVEERPTR);
        assert_eq!(find(&c, 0x8000_0008, 0).eax, 0x3030);
    }
}
