//! The Intel MultiProcessor table: how a guest without ACPI learns its
//! vCPUs, the IO-APIC and the interrupt routing. Without it Linux falls back
//! to virtual-wire mode: one CPU, no IO-APIC, no x2APIC.
//!
//! Layout (MP spec 1.4): the floating pointer at the start of the EBDA
//! (0x9fc00, where Linux scans), then the configuration table: one processor
//! entry per vCPU, an ISA bus, the IO-APIC, ISA IRQs 0-23 routed 1:1 to
//! IO-APIC pins, and LINT0 = ExtINT, LINT1 = NMI.

use vm_memory::{Bytes, GuestAddress};

use crate::memory::{GuestMemory, EBDA_START};

/// Guest address of the IO-APIC.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// Guest address of the local APICs.
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// IO-APIC pins routed.
pub const IOAPIC_PINS: u8 = 24;

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;

/// Errors writing the table.
#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    /// Too many vCPUs for the table's space.
    #[error("{0} vCPUs do not fit in the MP table")]
    TooManyCpus(u8),
    /// Guest memory write failed.
    #[error("cannot write the MP table: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// Builds the floating pointer and configuration table for `cpus` vCPUs,
/// to be placed at `base`.
pub fn build(cpus: u8, base: u64) -> Result<Vec<u8>, MpTableError> {
    if cpus == 0 || cpus > 254 {
        return Err(MpTableError::TooManyCpus(cpus));
    }
    let ioapic_id = cpus;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for id in 0..cpus {
        let flags = 1 | if id == 0 { 2 } else { 0 }; // enabled, BSP
        entries.extend_from_slice(&[0, id, APIC_VERSION, flags]);
        entries.extend_from_slice(&0x600u32.to_le_bytes()); // CPU signature: family 6
        entries.extend_from_slice(&0x201u32.to_le_bytes()); // features: FPU, APIC
        entries.extend_from_slice(&[0u8; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[1, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[2, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    count += 1;
    for irq in 0..IOAPIC_PINS {
        // type 3 (I/O interrupt), INT, conforming polarity/trigger, ISA bus.
        entries.extend_from_slice(&[3, 0, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    // Local interrupts: ExtINT on every LINT0... of the BSP, NMI on all LINT1.
    entries.extend_from_slice(&[4, 3, 0, 0, 0, 0, 0, 0]);
    entries.extend_from_slice(&[4, 1, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_len = 44 + entries.len();
    if table_len > 0x400 - 16 {
        return Err(MpTableError::TooManyCpus(cpus));
    }
    let mut table = Vec::with_capacity(table_len);
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&(table_len as u16).to_le_bytes());
    table.push(4); // spec revision 1.4
    table.push(0); // checksum, below
    table.extend_from_slice(b"SILO    ");
    table.extend_from_slice(b"SILOVMM     ");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table
    table.extend_from_slice(&0u16.to_le_bytes());
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    table.extend_from_slice(&0u16.to_le_bytes()); // extended table
    table.extend_from_slice(&[0, 0]);
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut fp = Vec::with_capacity(16);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&((base + 16) as u32).to_le_bytes());
    fp.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]); // 16 bytes, rev 1.4, checksum, features
    fp[10] = checksum(&fp);

    let mut out = fp;
    out.extend_from_slice(&table);
    Ok(out)
}

/// Writes the MP table for `cpus` vCPUs at the start of the EBDA.
pub fn write(mem: &GuestMemory, cpus: u8) -> Result<(), MpTableError> {
    let bytes = build(cpus, EBDA_START)?;
    mem.write_slice(&bytes, GuestAddress(EBDA_START))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_signatures_and_counts_are_right() {
        for cpus in [1u8, 2, 8] {
            let t = build(cpus, EBDA_START).unwrap();
            assert_eq!(&t[0..4], b"_MP_");
            assert_eq!(
                t[..16].iter().fold(0u8, |a, b| a.wrapping_add(*b)),
                0,
                "pointer checksum"
            );
            let ptr = u32::from_le_bytes(t[4..8].try_into().unwrap()) as u64;
            assert_eq!(ptr, EBDA_START + 16);
            let cfg = &t[16..];
            assert_eq!(&cfg[0..4], b"PCMP");
            let len = u16::from_le_bytes([cfg[4], cfg[5]]) as usize;
            assert_eq!(len, cfg.len());
            assert_eq!(
                cfg.iter().fold(0u8, |a, b| a.wrapping_add(*b)),
                0,
                "table checksum"
            );
            let count = u16::from_le_bytes([cfg[34], cfg[35]]);
            assert_eq!(count, u16::from(cpus) + 1 + 1 + u16::from(IOAPIC_PINS) + 2);
            // Exactly one boot processor.
            let bsp = (0..cpus as usize)
                .filter(|i| cfg[44 + i * 20 + 3] & 2 != 0)
                .count();
            assert_eq!(bsp, 1);
            assert!(t.len() <= 0x400, "fits in the EBDA's first KiB");
        }
        assert!(build(0, EBDA_START).is_err());
    }
}
