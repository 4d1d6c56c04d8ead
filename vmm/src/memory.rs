//! Guest memory: the x86_64 physical layout silo uses, and creation of
//! anonymous, `MAP_NORESERVE` guest RAM with vm-memory.
//!
//! RAM starts at 0. Sizes above [`MMIO_GAP_START`] are split around the
//! 32-bit MMIO gap (where virtio-mmio windows live) and continue at 4 GiB.

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestAddress, GuestRegionMmap};

/// Guest physical memory as the VMM maps it.
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;

/// One MiB.
pub const MIB: u64 = 1 << 20;
/// GDT placed by the VMM for 64-bit entry.
pub const BOOT_GDT_START: u64 = 0x500;
/// The zero page (`struct boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page map level 4 table of the boot identity map.
pub const PML4_START: u64 = 0x9000;
/// Page directory pointer table of the boot identity map.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory (2 MiB pages) of the boot identity map.
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line accepted (bytes, including the NUL).
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Start of the extended BIOS data area: low RAM ends here in the e820 map.
pub const EBDA_START: u64 = 0x9fc00;
/// Where high memory (and the kernel) starts.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap (device windows, IOAPIC, LAPIC).
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO gap: RAM above the gap resumes here.
pub const MMIO_GAP_END: u64 = 1 << 32;
/// First virtio-mmio device window.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
/// Smallest guest memory silo boots (MiB).
pub const MIN_MEM_MIB: u32 = 32;
/// Largest guest memory silo boots (MiB); Lambda's maximum is 10,240.
pub const MAX_MEM_MIB: u32 = 16 * 1024;

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The requested size is outside what silo supports.
    #[error("guest memory of {0} MiB is out of range ({MIN_MEM_MIB}..={MAX_MEM_MIB} MiB)")]
    OutOfRange(u32),
    /// mmap of guest RAM failed.
    #[error("could not map {size} bytes of guest memory: {source}")]
    Mmap {
        /// Bytes requested.
        size: u64,
        /// The mmap error.
        source: vm_memory::mmap::MmapRegionError,
    },
    /// vm-memory rejected the region layout.
    #[error("invalid guest memory layout: {0}")]
    Layout(String),
}

/// RAM ranges `(start, len)` for `mem_mib` of guest memory, split around the
/// MMIO gap.
pub fn ram_ranges(mem_mib: u32) -> Result<Vec<(u64, u64)>, MemoryError> {
    if !(MIN_MEM_MIB..=MAX_MEM_MIB).contains(&mem_mib) {
        return Err(MemoryError::OutOfRange(mem_mib));
    }
    let size = u64::from(mem_mib) * MIB;
    if size <= MMIO_GAP_START {
        Ok(vec![(0, size)])
    } else {
        Ok(vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, size - MMIO_GAP_START),
        ])
    }
}

/// Maps anonymous guest RAM (`MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE`):
/// pages cost host memory only once the guest touches them.
pub fn create_guest_memory(mem_mib: u32) -> Result<GuestMemory, MemoryError> {
    let mut regions = Vec::new();
    for (start, len) in ram_ranges(mem_mib)? {
        let mapping = MmapRegionBuilder::new(len as usize)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE)
            .build()
            .map_err(|source| MemoryError::Mmap { size: len, source })?;
        let region = GuestRegionMmap::new(mapping, GuestAddress(start))
            .ok_or_else(|| MemoryError::Layout(format!("region at {start:#x} overflows")))?;
        regions.push(region);
    }
    GuestMemory::from_regions(regions).map_err(|e| MemoryError::Layout(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

    #[test]
    fn small_memory_is_one_range() {
        assert_eq!(ram_ranges(128).unwrap(), vec![(0, 128 * MIB)]);
    }

    #[test]
    fn large_memory_skips_the_mmio_gap() {
        let r = ram_ranges(4096).unwrap();
        assert_eq!(r, vec![(0, MMIO_GAP_START), (MMIO_GAP_END, 1 << 30)]);
        assert!(r
            .iter()
            .all(|&(s, l)| s + l <= MMIO_GAP_START || s >= MMIO_GAP_END));
    }

    #[test]
    fn out_of_range_sizes_are_named() {
        let e = ram_ranges(8).unwrap_err().to_string();
        assert!(e.contains("8 MiB"), "{e}");
        assert!(ram_ranges(MAX_MEM_MIB + 1).is_err());
    }

    #[test]
    fn memory_is_mapped_and_writable() {
        let mem = create_guest_memory(64).unwrap();
        assert_eq!(mem.num_regions(), 1);
        assert_eq!(mem.iter().next().unwrap().len(), 64 * MIB);
        mem.write_obj(0xdead_beef_u32, GuestAddress(HIMEM_START))
            .unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(HIMEM_START)).unwrap(),
            0xdead_beef
        );
    }
}
