//! The zero page (`struct boot_params`): setup header fields, e820 map,
//! command line and initrd pointers, written with linux-loader's configurator.

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::memory::{GuestMemory, EBDA_START, HIMEM_START, ZERO_PAGE_START};

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
/// `initrd_addr_max` a 64-bit kernel reports; used when there is no header.
pub const DEFAULT_INITRD_ADDR_MAX: u64 = 0x7fff_ffff;

/// Errors writing the zero page.
#[derive(Debug, thiserror::Error)]
pub enum ParamsError {
    /// More RAM ranges than the e820 table holds.
    #[error("too many e820 entries")]
    E820Full,
    /// Writing to guest memory failed.
    #[error("cannot write the zero page: {0}")]
    Write(#[from] linux_loader::configurator::Error),
}

/// Inputs of the zero page.
pub struct BootInfo {
    /// The bzImage's setup header, if the kernel had one.
    pub setup_header: Option<setup_header>,
    /// Guest address and length (including NUL) of the command line.
    pub cmdline: (GuestAddress, usize),
    /// Guest address and size of the initrd.
    pub initrd: Option<(GuestAddress, u64)>,
}

/// The e820 map for `mem`: low RAM up to the EBDA, then each RAM region from
/// 1 MiB up.
pub fn e820_entries(mem: &GuestMemory) -> Vec<boot_e820_entry> {
    let mut entries = vec![boot_e820_entry {
        addr: 0,
        size: EBDA_START,
        r#type: E820_RAM,
    }];
    for region in mem.iter() {
        let start = region.start_addr().raw_value().max(HIMEM_START);
        let end = region.start_addr().raw_value() + region.len();
        if end > start {
            entries.push(boot_e820_entry {
                addr: start,
                size: end - start,
                r#type: E820_RAM,
            });
        }
    }
    entries
}

/// Builds `struct boot_params` for the kernel.
pub fn build_boot_params(mem: &GuestMemory, info: &BootInfo) -> Result<boot_params, ParamsError> {
    let mut params = boot_params::default();
    if let Some(hdr) = info.setup_header {
        params.hdr = hdr;
    } else {
        params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
        params.hdr.header = KERNEL_HDR_MAGIC;
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.cmd_line_ptr = info.cmdline.0.raw_value() as u32;
    params.hdr.cmdline_size = info.cmdline.1 as u32;
    if let Some((addr, size)) = info.initrd {
        params.hdr.ramdisk_image = addr.raw_value() as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    let entries = e820_entries(mem);
    if entries.len() > params.e820_table.len() {
        return Err(ParamsError::E820Full);
    }
    for (slot, e) in params.e820_table.iter_mut().zip(&entries) {
        *slot = *e;
    }
    params.e820_entries = entries.len() as u8;
    Ok(params)
}

/// Writes `params` to the zero page.
pub fn write_boot_params(mem: &GuestMemory, params: &boot_params) -> Result<(), ParamsError> {
    LinuxBootConfigurator::write_bootparams(
        &BootParams::new::<boot_params>(params, GuestAddress(ZERO_PAGE_START)),
        mem,
    )?;
    Ok(())
}

/// `initrd_addr_max` from the header, or the 64-bit default.
pub fn initrd_addr_max(hdr: Option<&setup_header>) -> u64 {
    match hdr {
        Some(h) if h.initrd_addr_max != 0 => u64::from(h.initrd_addr_max),
        _ => DEFAULT_INITRD_ADDR_MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{create_guest_memory, CMDLINE_START, MIB, MMIO_GAP_END, MMIO_GAP_START};
    use vm_memory::Bytes;

    #[test]
    fn e820_covers_low_and_high_ram_but_not_the_ebda_or_gap() {
        let mem = create_guest_memory(128).unwrap();
        let e = e820_entries(&mem);
        assert_eq!(e.len(), 2);
        assert_eq!(
            (e[0].addr, e[0].size, e[0].r#type),
            (0, EBDA_START, E820_RAM)
        );
        assert_eq!(
            (e[1].addr, e[1].size),
            (HIMEM_START, 128 * MIB - HIMEM_START)
        );

        let big = create_guest_memory(4096).unwrap();
        let e = e820_entries(&big);
        assert_eq!(e.len(), 3);
        assert_eq!(e[1].addr + e[1].size, MMIO_GAP_START);
        assert_eq!(
            (e[2].addr, e[2].size),
            (MMIO_GAP_END, 4096 * MIB - MMIO_GAP_START)
        );
    }

    #[test]
    fn zero_page_carries_cmdline_initrd_and_loader_fields() {
        let mem = create_guest_memory(64).unwrap();
        let info = BootInfo {
            setup_header: None,
            cmdline: (GuestAddress(CMDLINE_START), 23),
            initrd: Some((GuestAddress(0x300_0000), 0x1234)),
        };
        let p = build_boot_params(&mem, &info).unwrap();
        write_boot_params(&mem, &p).unwrap();
        let back: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!({ back.hdr.boot_flag }, 0xaa55);
        assert_eq!({ back.hdr.header }, 0x5372_6448);
        assert_eq!({ back.hdr.type_of_loader }, 0xff);
        assert_eq!({ back.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ back.hdr.cmdline_size }, 23);
        assert_eq!({ back.hdr.ramdisk_image }, 0x300_0000);
        assert_eq!({ back.hdr.ramdisk_size }, 0x1234);
        assert_eq!(back.e820_entries, 2);
    }

    #[test]
    fn bzimage_header_is_kept_and_loader_fields_overridden() {
        let mem = create_guest_memory(64).unwrap();
        let hdr = setup_header {
            version: 0x20f,
            initrd_addr_max: 0x37ff_ffff,
            type_of_loader: 0,
            ..Default::default()
        };
        let info = BootInfo {
            setup_header: Some(hdr),
            cmdline: (GuestAddress(CMDLINE_START), 5),
            initrd: None,
        };
        let p = build_boot_params(&mem, &info).unwrap();
        assert_eq!({ p.hdr.version }, 0x20f);
        assert_eq!({ p.hdr.type_of_loader }, 0xff);
        assert_eq!({ p.hdr.ramdisk_image }, 0);
        assert_eq!(initrd_addr_max(Some(&hdr)), 0x37ff_ffff);
        assert_eq!(initrd_addr_max(None), DEFAULT_INITRD_ADDR_MAX);
    }
}
