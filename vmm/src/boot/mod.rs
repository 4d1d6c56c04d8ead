//! Booting Linux: loading the kernel and initrd, the zero page, and the
//! initial vCPU state (CPUID, MSRs, registers) per the x86 boot protocol.

pub mod cpuid;
pub mod loader;
pub mod mptable;
pub mod params;
pub mod regs;
