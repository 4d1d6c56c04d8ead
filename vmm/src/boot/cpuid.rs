//! CPUID for the guest: KVM's supported set, filtered to what this VMM
//! provides, with per-vCPU topology.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// Leaf 1 ECX: running under a hypervisor.
const ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 ECX: x2APIC. KVM's in-kernel LAPIC emulates it even when the host
/// CPU lacks it; MSR-based APIC access avoids an MMIO exit per access.
const ECX_X2APIC: u32 = 1 << 21;
/// Leaf 1 ECX: TSC-deadline timer mode of the LAPIC (emulated by KVM when
/// it has KVM_CAP_TSC_DEADLINE_TIMER); spares the guest a LAPIC timer
/// calibration against the PIT.
pub const ECX_TSC_DEADLINE: u32 = 1 << 24;
/// Leaf 1 ECX: MONITOR/MWAIT (not offered: idle must exit via HLT).
const ECX_MONITOR: u32 = 1 << 3;
/// Leaf 1 ECX: DTES64, DS-CPL, VMX, SMX, EST, TM2 (debug store, nested
/// virtualization, power management: none emulated).
const ECX_UNEMULATED: u32 = (1 << 2) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8);
/// Leaf 1 ECX: perfmon and debug capability MSR.
const ECX_PDCM: u32 = 1 << 15;
/// Leaf 1 EDX: DS, ACPI thermal, TM, PBE.
const EDX_UNEMULATED: u32 = (1 << 21) | (1 << 22) | (1 << 29) | (1 << 31);
/// Leaf 6 EAX: always-running APIC timer (ARAT). KVM's LAPIC timer is
/// emulated and keeps running in every idle state, and KVM reports the bit
/// as supported. Without it a 6.1 guest also keeps the PIT as its early tick
/// source (`apic_needs_pit`): PIT interrupts and the IO-APIC timer check on
/// every boot.
pub const EAX_ARAT: u32 = 1 << 2;
/// Leaf 0x8000_0001 ECX: SVM (no nested virtualization inside silo guests).
const EXT_ECX_SVM: u32 = 1 << 2;

/// Adjusts KVM's supported CPUID for vCPU `cpu_index` of `cpu_count`.
pub fn filter_cpuid(cpuid: &mut CpuId, cpu_index: u8, cpu_count: u8) {
    for entry in cpuid.as_mut_slice().iter_mut() {
        filter_entry(entry, cpu_index, cpu_count);
    }
}

/// Advertises the TSC-deadline timer (call only when KVM has the capability).
pub fn enable_tsc_deadline(cpuid: &mut CpuId) {
    for entry in cpuid.as_mut_slice().iter_mut().filter(|e| e.function == 1) {
        entry.ecx |= ECX_TSC_DEADLINE;
    }
}

fn filter_entry(entry: &mut kvm_cpuid_entry2, cpu_index: u8, cpu_count: u8) {
    match entry.function {
        0x1 => {
            // EBX[31:24] initial APIC id, [23:16] logical processors, [15:8] CLFLUSH size.
            entry.ebx = (u32::from(cpu_index) << 24) | (u32::from(cpu_count) << 16) | (8 << 8);
            entry.ecx |= ECX_HYPERVISOR | ECX_X2APIC;
            entry.ecx &= !(ECX_MONITOR | ECX_UNEMULATED | ECX_PDCM);
            entry.edx &= !EDX_UNEMULATED;
            // HTT: more than one logical processor in the package.
            if cpu_count > 1 {
                entry.edx |= 1 << 28;
            } else {
                entry.edx &= !(1 << 28);
            }
        }
        0x4 => {
            // Deterministic cache parameters: cores per package in EAX[31:26].
            entry.eax &= !(0x3f << 26);
            entry.eax |= (u32::from(cpu_count.saturating_sub(1)) & 0x3f) << 26;
        }
        0x6 => {
            // Thermal and power management: only ARAT, and only when KVM
            // reports it.
            entry.eax &= EAX_ARAT;
            entry.ebx = 0;
            entry.ecx = 0;
            entry.edx = 0;
        }
        0x5 | 0xa => {
            // MONITOR/MWAIT details, architectural PMU: not offered.
            entry.eax = 0;
            entry.ebx = 0;
            entry.ecx = 0;
            entry.edx = 0;
        }
        0xb | 0x1f => {
            // Extended topology: one thread per core, `cpu_count` cores.
            entry.edx = u32::from(cpu_index);
            match entry.index {
                0 => {
                    entry.eax = 0;
                    entry.ebx = 1;
                    entry.ecx = 1 << 8;
                }
                1 => {
                    entry.eax = bits_for(cpu_count);
                    entry.ebx = u32::from(cpu_count);
                    entry.ecx = (2 << 8) | 1;
                }
                _ => {
                    entry.eax = 0;
                    entry.ebx = 0;
                    entry.ecx = entry.index;
                }
            }
        }
        0x8000_0001 => {
            entry.ecx &= !EXT_ECX_SVM;
        }
        _ => {}
    }
}

/// Bits needed to hold an APIC id below `count`.
fn bits_for(count: u8) -> u32 {
    if count <= 1 {
        0
    } else {
        u32::BITS - u32::from(count - 1).leading_zeros()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, reg: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: reg,
            ebx: reg,
            ecx: reg,
            edx: reg,
            ..Default::default()
        }
    }

    fn sample() -> CpuId {
        CpuId::from_entries(&[
            entry(0x1, 0, 0xffff_ffff),
            entry(0x6, 0, 0xffff_ffff),
            entry(0xa, 0, 0xffff_ffff),
            entry(0xb, 0, 0),
            entry(0xb, 1, 0),
            entry(0x8000_0001, 0, 0xffff_ffff),
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
    fn leaf1_has_apic_id_hypervisor_bit_and_no_unemulated_features() {
        let mut c = sample();
        filter_cpuid(&mut c, 2, 4);
        let l1 = find(&c, 1, 0);
        assert_eq!(l1.ebx >> 24, 2);
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(l1.ecx & ECX_X2APIC, 0);
        assert_eq!(l1.ecx & (ECX_MONITOR | ECX_UNEMULATED | ECX_PDCM), 0);
        assert_eq!(l1.edx & EDX_UNEMULATED, 0);
        assert_ne!(l1.edx & (1 << 28), 0);
    }

    #[test]
    fn pmu_and_power_leaves_are_cleared_but_arat_kept_and_svm_hidden() {
        let mut c = sample();
        filter_cpuid(&mut c, 0, 1);
        assert_eq!(find(&c, 0x6, 0).eax, EAX_ARAT, "ARAT only");
        assert_eq!(find(&c, 0x6, 0).ecx, 0);
        assert_eq!(find(&c, 0xa, 0).eax, 0);
        assert_eq!(find(&c, 0x8000_0001, 0).ecx & EXT_ECX_SVM, 0);
        assert_eq!(find(&c, 1, 0).edx & (1 << 28), 0, "no HTT with one vCPU");
    }

    #[test]
    fn topology_leaf_reports_x2apic_id_and_core_count() {
        let mut c = sample();
        filter_cpuid(&mut c, 3, 4);
        let l0 = find(&c, 0xb, 0);
        let l1 = find(&c, 0xb, 1);
        assert_eq!(l0.edx, 3);
        assert_eq!(l1.ebx, 4);
        assert_eq!(l1.eax, 2);
        assert_eq!(bits_for(1), 0);
        assert_eq!(bits_for(2), 1);
        assert_eq!(bits_for(5), 3);
    }
}
