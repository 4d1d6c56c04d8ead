//! Initial vCPU state for the 64-bit boot protocol: GDT, identity-mapped
//! page tables, segment and control registers, MSRs, FPU and LAPIC.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

use crate::memory::{
    GuestMemory, BOOT_GDT_START, BOOT_STACK_POINTER, PDE_START, PDPTE_START, PML4_START,
    ZERO_PAGE_START,
};

/// Errors setting up a vCPU's registers.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// A KVM register ioctl failed.
    #[error("KVM {op} failed: {source}")]
    Kvm {
        /// Which ioctl.
        op: &'static str,
        /// The errno.
        source: kvm_ioctls::Error,
    },
    /// KVM accepted fewer MSRs than given.
    #[error("KVM accepted {set} of {wanted} boot MSRs")]
    Msrs {
        /// MSRs accepted.
        set: usize,
        /// MSRs given.
        wanted: usize,
    },
    /// Writing the GDT or page tables into guest memory failed.
    #[error("cannot write boot tables into guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

fn kvm(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> RegsError {
    move |source| RegsError::Kvm { op, source }
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// A GDT entry from flags, base and limit (the packed x86 descriptor format).
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// Boot GDT: null, 64-bit code, data, TSS.
pub const BOOT_GDT: [u64; 4] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

/// The `kvm_segment` a GDT entry at `index` describes.
pub fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let base = ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000);
    let mut limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    if g == 1 {
        limit = (limit << 12) | 0xfff;
    }
    kvm_segment {
        base,
        limit,
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: if (entry >> 47) & 1 == 1 { 0 } else { 1 },
        padding: 0,
    }
}

/// Writes the GDT and an identity map of the first 1 GiB (2 MiB pages).
pub fn write_boot_tables(mem: &GuestMemory) -> Result<(), RegsError> {
    for (i, e) in BOOT_GDT.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(BOOT_GDT_START + i as u64 * 8))?;
    }
    mem.write_obj(PDPTE_START | 0x03, GuestAddress(PML4_START))?;
    mem.write_obj(PDE_START | 0x03, GuestAddress(PDPTE_START))?;
    for i in 0..512u64 {
        mem.write_obj((i << 21) | 0x83, GuestAddress(PDE_START + i * 8))?;
    }
    Ok(())
}

/// Segment and control registers for 64-bit entry with the boot tables.
pub fn long_mode_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    let code = segment_from_gdt(BOOT_GDT[1], 1);
    let data = segment_from_gdt(BOOT_GDT[2], 2);
    let tss = segment_from_gdt(BOOT_GDT[3], 3);
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (BOOT_GDT.len() * 8 - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
    sregs.cr3 = PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.efer |= EFER_LME | EFER_LMA;
    sregs
}

/// General registers at the kernel's 64-bit entry: RIP at the entry, RSI at
/// the zero page, a boot stack.
pub fn boot_regs(entry: GuestAddress) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry.0,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    }
}

/// MSRs the boot vCPU starts with.
pub fn boot_msr_entries() -> Vec<kvm_msr_entry> {
    const MSR_IA32_SYSENTER_CS: u32 = 0x174;
    const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
    const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
    const MSR_STAR: u32 = 0xc000_0081;
    const MSR_LSTAR: u32 = 0xc000_0082;
    const MSR_CSTAR: u32 = 0xc000_0083;
    const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
    const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
    const MSR_IA32_TSC: u32 = 0x10;
    const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
    const MISC_ENABLE_FAST_STRING: u64 = 1;
    const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
    const MTRR_ENABLE_WRITEBACK: u64 = (1 << 11) | 6;
    let e = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        e(MSR_IA32_SYSENTER_CS, 0),
        e(MSR_IA32_SYSENTER_ESP, 0),
        e(MSR_IA32_SYSENTER_EIP, 0),
        e(MSR_STAR, 0),
        e(MSR_CSTAR, 0),
        e(MSR_KERNEL_GS_BASE, 0),
        e(MSR_SYSCALL_MASK, 0),
        e(MSR_LSTAR, 0),
        e(MSR_IA32_TSC, 0),
        e(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        e(MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITEBACK),
    ]
}

/// Programs the local APIC: LINT0 as ExtINT (the PIC's interrupts), LINT1 as NMI.
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<(), RegsError> {
    const APIC_LVT0: usize = 0x350;
    const APIC_LVT1: usize = 0x360;
    const APIC_MODE_EXTINT: u32 = 0x7;
    const APIC_MODE_NMI: u32 = 0x4;
    let mut lapic = vcpu.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?;
    for (reg, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[reg + i] as u8);
        let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
        for (i, b) in value.to_le_bytes().iter().enumerate() {
            lapic.regs[reg + i] = *b as _;
        }
    }
    vcpu.set_lapic(&lapic).map_err(kvm("KVM_SET_LAPIC"))
}

/// Sets every register a vCPU needs to enter the kernel: MSRs, FPU, LAPIC, and
/// for the boot vCPU the long-mode sregs and entry regs (APs wait for INIT/SIPI).
pub fn setup_vcpu(vcpu: &VcpuFd, entry: GuestAddress, boot_cpu: bool) -> Result<(), RegsError> {
    let entries = boot_msr_entries();
    let msrs = Msrs::from_entries(&entries).map_err(|_| RegsError::Msrs {
        set: 0,
        wanted: entries.len(),
    })?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
    if set != entries.len() {
        return Err(RegsError::Msrs {
            set,
            wanted: entries.len(),
        });
    }
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("KVM_SET_FPU"))?;
    setup_lapic(vcpu)?;
    if boot_cpu {
        let sregs = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
        vcpu.set_sregs(&long_mode_sregs(sregs))
            .map_err(kvm("KVM_SET_SREGS"))?;
        vcpu.set_regs(&boot_regs(entry))
            .map_err(kvm("KVM_SET_REGS"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn gdt_entries_round_trip_into_segments() {
        let code = segment_from_gdt(BOOT_GDT[1], 1);
        assert_eq!(code.selector, 8);
        assert_eq!(code.l, 1, "64-bit code segment");
        assert_eq!(code.present, 1);
        assert_eq!(code.limit, 0xffff_ffff);
        let data = segment_from_gdt(BOOT_GDT[2], 2);
        assert_eq!((data.selector, data.db, data.l), (16, 1, 0));
        assert_eq!(segment_from_gdt(BOOT_GDT[0], 0).unusable, 1);
    }

    #[test]
    fn identity_map_and_gdt_are_written() {
        let mem = crate::memory::create_guest_memory(64).unwrap();
        write_boot_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPTE_START | 3);
        let pde5: u64 = mem.read_obj(GuestAddress(PDE_START + 5 * 8)).unwrap();
        assert_eq!(pde5, (5 << 21) | 0x83);
        let gdt1: u64 = mem.read_obj(GuestAddress(BOOT_GDT_START + 8)).unwrap();
        assert_eq!(gdt1, BOOT_GDT[1]);
    }

    #[test]
    fn long_mode_sregs_enable_paging_and_lma() {
        let s = long_mode_sregs(kvm_sregs::default());
        assert_ne!(s.cr0 & X86_CR0_PG, 0);
        assert_ne!(s.cr4 & X86_CR4_PAE, 0);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(s.cr3, PML4_START);
        let r = boot_regs(GuestAddress(0x100_0000));
        assert_eq!((r.rip, r.rsi), (0x100_0000, ZERO_PAGE_START));
    }
}
