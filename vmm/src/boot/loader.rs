//! Loading the kernel (ELF `vmlinux` or `bzImage`, told apart by content)
//! and the initrd into guest memory.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::memory::{GuestMemory, HIMEM_START, MMIO_GAP_START};

/// The kernel formats silo boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// An uncompressed ELF `vmlinux`, entered at its 64-bit ELF entry point.
    Elf,
    /// A `bzImage`, entered at the 64-bit entry of its protected-mode code.
    BzImage,
}

/// Errors loading the kernel or initrd; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is neither an ELF nor a bzImage.
    #[error("{path} is not a Linux kernel (neither an ELF vmlinux nor a bzImage)")]
    NotAKernel {
        /// The file.
        path: PathBuf,
    },
    /// linux-loader rejected the image (truncated, bad headers, does not fit).
    #[error("cannot load kernel {path} ({format:?}): {source}")]
    Kernel {
        /// The file.
        path: PathBuf,
        /// The detected format.
        format: KernelFormat,
        /// The loader's error.
        source: linux_loader::loader::Error,
    },
    /// The initrd does not fit in guest memory below its address limit.
    #[error(
        "initrd {path} ({size} bytes) does not fit in guest memory between the kernel end \
         {kernel_end:#x} and {limit:#x}; give the VM more memory or use a smaller initrd"
    )]
    InitrdTooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// Where the kernel ends.
        kernel_end: u64,
        /// Highest address the initrd may end at.
        limit: u64,
    },
    /// Writing into guest memory failed.
    #[error("cannot write {what} into guest memory: {source}")]
    GuestMemory {
        /// What was being written.
        what: &'static str,
        /// The error.
        source: vm_memory::GuestMemoryError,
    },
}

/// Where the kernel went and how to enter it.
#[derive(Debug, Clone)]
pub struct LoadedKernel {
    /// Detected format.
    pub format: KernelFormat,
    /// Guest address of the 64-bit entry point.
    pub entry: GuestAddress,
    /// First guest address after the loaded image.
    pub end: u64,
    /// The bzImage's setup header, when it has one.
    pub setup_header: Option<setup_header>,
}

/// Where the initrd went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedInitrd {
    /// Guest address of the first byte.
    pub addr: GuestAddress,
    /// Size in bytes.
    pub size: u64,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LoadError + '_ {
    move |source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Tells the kernel format from the file's first bytes.
pub fn detect_format(header: &[u8]) -> Option<KernelFormat> {
    if header.len() >= 4 && header[..4] == *b"\x7fELF" {
        return Some(KernelFormat::Elf);
    }
    // bzImage: "HdrS" magic at 0x202 and the 0xAA55 boot flag at 0x1fe.
    if header.len() >= 0x206
        && header[0x202..0x206] == *b"HdrS"
        && header[0x1fe..0x200] == [0x55, 0xaa]
    {
        return Some(KernelFormat::BzImage);
    }
    None
}

/// Loads the kernel at `path` into `mem`.
pub fn load_kernel(mem: &GuestMemory, path: &Path) -> Result<LoadedKernel, LoadError> {
    let mut file = File::open(path).map_err(io_err(path))?;
    let mut header = vec![0u8; 0x400];
    let n = read_up_to(&mut file, &mut header).map_err(io_err(path))?;
    header.truncate(n);
    let format = detect_format(&header).ok_or_else(|| LoadError::NotAKernel {
        path: path.to_path_buf(),
    })?;
    file.seek(SeekFrom::Start(0)).map_err(io_err(path))?;
    let himem = Some(GuestAddress(HIMEM_START));
    let result = match format {
        KernelFormat::Elf => Elf::load(mem, None, &mut file, himem),
        KernelFormat::BzImage => BzImage::load(mem, None, &mut file, himem),
    }
    .map_err(|source| LoadError::Kernel {
        path: path.to_path_buf(),
        format,
        source,
    })?;
    let entry = match format {
        KernelFormat::Elf => result.kernel_load,
        // The 64-bit entry (startup_64) sits 0x200 into the protected-mode code.
        KernelFormat::BzImage => result.kernel_load.unchecked_add(0x200),
    };
    Ok(LoadedKernel {
        format,
        entry,
        end: result.kernel_end,
        setup_header: result.setup_header,
    })
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut total = 0;
    while total < buf.len() {
        match file.read(&mut buf[total..])? {
            0 => break,
            n => total += n,
        }
    }
    Ok(total)
}

/// Highest guest address (exclusive) RAM reaches below the 32-bit MMIO gap.
pub fn low_ram_end(mem: &GuestMemory) -> u64 {
    mem.iter()
        .map(|r| r.start_addr().raw_value() + r.len())
        .filter(|&end| end <= MMIO_GAP_START)
        .max()
        .unwrap_or(0)
}

/// Chooses the initrd address: the highest page-aligned spot that ends below
/// both low RAM's end and `addr_max` (the kernel's `initrd_addr_max`), and
/// starts after the kernel, as the boot protocol recommends.
pub fn place_initrd(size: u64, kernel_end: u64, ram_end: u64, addr_max: u64) -> Option<u64> {
    const PAGE: u64 = 4096;
    let limit = ram_end.min(addr_max.saturating_add(1));
    let start = limit.checked_sub(size)? & !(PAGE - 1);
    let kernel_end_aligned = kernel_end.checked_add(PAGE - 1)? & !(PAGE - 1);
    (size > 0 && start >= kernel_end_aligned).then_some(start)
}

/// Loads the initrd at `path` high in low memory (see [`place_initrd`]).
pub fn load_initrd(
    mem: &GuestMemory,
    path: &Path,
    kernel_end: u64,
    addr_max: u64,
) -> Result<LoadedInitrd, LoadError> {
    let mut file = File::open(path).map_err(io_err(path))?;
    let size = file.metadata().map_err(io_err(path))?.len();
    let limit = low_ram_end(mem).min(addr_max.saturating_add(1));
    let addr = place_initrd(size, kernel_end, low_ram_end(mem), addr_max).ok_or_else(|| {
        LoadError::InitrdTooLarge {
            path: path.to_path_buf(),
            size,
            kernel_end,
            limit,
        }
    })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|source| LoadError::GuestMemory {
            what: "initrd",
            source,
        })?;
    Ok(LoadedInitrd {
        addr: GuestAddress(addr),
        size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_formats_by_content() {
        assert_eq!(detect_format(b"\x7fELF\x02\x01"), Some(KernelFormat::Elf));
        let mut bz = vec![0u8; 0x400];
        bz[0x1fe] = 0x55;
        bz[0x1ff] = 0xaa;
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(detect_format(&bz), Some(KernelFormat::BzImage));
        assert_eq!(detect_format(b"#!/bin/sh\necho hi\n"), None);
        assert_eq!(detect_format(&[]), None);
    }

    #[test]
    fn initrd_goes_high_and_page_aligned() {
        let mib = 1 << 20;
        let at = place_initrd(10 * mib + 5, 20 * mib, 128 * mib, 0x37ff_ffff).unwrap();
        assert_eq!(at % 4096, 0);
        assert!(at + 10 * mib + 5 <= 128 * mib);
        assert!(at >= 20 * mib);
        // initrd_addr_max below RAM end caps the placement
        let at = place_initrd(mib, 0, 2048 * mib, 0x37ff_ffff).unwrap();
        assert!(at + mib <= 0x3800_0000);
    }

    #[test]
    fn initrd_that_does_not_fit_is_refused() {
        let mib = 1 << 20;
        assert_eq!(place_initrd(100 * mib, 30 * mib, 128 * mib, u64::MAX), None);
        assert_eq!(place_initrd(0, 0, 128 * mib, u64::MAX), None);
        assert_eq!(place_initrd(u64::MAX, 0, 128 * mib, u64::MAX), None);
    }

    #[test]
    fn missing_and_non_kernel_files_are_named() {
        let mem = crate::memory::create_guest_memory(64).unwrap();
        let e = load_kernel(&mem, Path::new("/nonexistent/vmlinux")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/vmlinux"), "{e}");
        let dir = std::env::temp_dir().join(format!("silo-loader-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let text = dir.join("notes.txt");
        std::fs::write(&text, "not a kernel").unwrap();
        let e = load_kernel(&mem, &text).unwrap_err();
        assert!(matches!(e, LoadError::NotAKernel { .. }), "{e}");
        assert!(e.to_string().contains("notes.txt"));
        // A truncated ELF: the magic is there, the rest is not.
        let trunc = dir.join("vmlinux-truncated");
        std::fs::write(&trunc, b"\x7fELF\x02\x01\x01\x00").unwrap();
        let e = load_kernel(&mem, &trunc).unwrap_err();
        assert!(matches!(e, LoadError::Kernel { .. }), "{e}");
        assert!(e.to_string().contains("vmlinux-truncated"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn initrd_too_large_for_memory_is_named() {
        let mem = crate::memory::create_guest_memory(32).unwrap();
        let dir = std::env::temp_dir().join(format!("silo-initrd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let big = dir.join("big.cpio");
        let f = File::create(&big).unwrap();
        f.set_len(40 << 20).unwrap();
        let e = load_initrd(&mem, &big, 16 << 20, u64::MAX).unwrap_err();
        assert!(matches!(e, LoadError::InitrdTooLarge { .. }));
        assert!(e.to_string().contains("big.cpio"), "{e}");
        let small = dir.join("small.cpio");
        std::fs::write(&small, b"070701hello").unwrap();
        let l = load_initrd(&mem, &small, 16 << 20, u64::MAX).unwrap();
        let mut back = [0u8; 11];
        mem.read_slice(&mut back, l.addr).unwrap();
        assert_eq!(&back, b"070701hello");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
