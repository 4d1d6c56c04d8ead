//! Guest memory: the x86_64 physical layout silo uses, and creation of
//! anonymous, `MAP_NORESERVE` guest RAM with vm-memory.
//!
//! RAM starts at 0. Sizes above [`MMIO_GAP_START`] are split around the
//! 32-bit MMIO gap (where virtio-mmio windows live) and continue at 4 GiB.
//!
//! Every RAM range is mapped at a host address aligned to 2 MiB, as its
//! guest-physical start is. KVM maps guest memory with huge pages only where
//! the host-virtual and guest-physical addresses are congruent modulo 2 MiB;
//! with transparent huge pages on the host this takes a boot from ~5,500
//! nested page faults to ~900 (measured in the KVM test host), and under
//! many concurrent boots each fault is what the vCPUs compete for.
//!
//! Shared read-only images (virtio-pmem, [`ImageMapping`]) sit above RAM, at
//! 4 GiB or higher, each at a 2 MiB-aligned host address mapped
//! `MAP_SHARED`/`PROT_READ` from the image file: every VM that maps the same
//! file reads the host's one page-cache copy of it.

use std::ops::Deref;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

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
    /// `madvise` on guest RAM failed (`--small-pages`).
    #[error("cannot advise guest memory: {0}")]
    Advise(#[source] std::io::Error),
    /// vm-memory rejected the region layout.
    #[error("invalid guest memory layout: {0}")]
    Layout(String),
    /// A pmem image could not be opened, inspected or mapped.
    #[error("pmem image {path}: cannot {what}: {source}")]
    Image {
        /// The image file.
        path: PathBuf,
        /// What failed (open, stat, map).
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// A pmem image is not a regular file, is empty or is too large.
    #[error("pmem image {path}: {reason}")]
    ImageUnusable {
        /// The image file.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
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

/// Alignment of guest RAM mappings in the host (a huge page).
pub const HOST_ALIGN: usize = 2 << 20;

/// One anonymous mapping owned by [`GuestRam`], unmapped on drop.
struct Mapping {
    addr: *mut libc::c_void,
    len: usize,
}

// SAFETY: a `Mapping` is only an address range owned by this process; it is
// never dereferenced through this type, only unmapped once, on drop.
unsafe impl Send for Mapping {}
// SAFETY: as above; shared references give no access to the memory.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of anonymous, private, unreserved memory with
    /// protection `prot` at a [`HOST_ALIGN`]-aligned address: over-map by the
    /// alignment and unmap the unaligned head and tail.
    fn aligned(len: usize, prot: libc::c_int) -> std::io::Result<Self> {
        let padded = len + HOST_ALIGN;
        // SAFETY: a fresh anonymous mapping (no MAP_FIXED): it cannot
        // overlap or alias anything the process owns.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                padded,
                prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let start = raw as usize;
        let aligned = (start + HOST_ALIGN - 1) & !(HOST_ALIGN - 1);
        let head = aligned - start;
        let tail = padded - head - len;
        // SAFETY: head and tail are the parts of the mapping just made that
        // lie outside [aligned, aligned + len); nothing refers to them.
        unsafe {
            if head > 0 {
                libc::munmap(raw, head);
            }
            if tail > 0 {
                libc::munmap((aligned + len) as *mut libc::c_void, tail);
            }
        }
        Ok(Self {
            addr: aligned as *mut libc::c_void,
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the range was mapped by `aligned` and is unmapped once;
        // `GuestRam` drops its mappings only after its `GuestMemory` view.
        unsafe {
            libc::munmap(self.addr, self.len);
        }
    }
}

/// Guest RAM: anonymous mappings aligned to 2 MiB and the vm-memory view
/// of them ([`GuestMemory`], through `Deref`). The mappings are unmapped when
/// this is dropped, so keep it alive while a vCPU or device may touch guest
/// memory; clones of the view do not keep the mappings alive.
pub struct GuestRam {
    memory: GuestMemory,
    _mappings: Vec<Mapping>,
}

impl GuestRam {
    /// The vm-memory view of guest RAM.
    pub fn memory(&self) -> &GuestMemory {
        &self.memory
    }

    /// Keeps the mappings for the rest of the process's life (for a VMM
    /// that could not join a thread still able to touch guest memory).
    pub fn leak(self) {
        std::mem::forget(self);
    }

    /// Backs guest RAM with 4 KiB host pages only (`MADV_NOHUGEPAGE`): the
    /// host then holds exactly the pages the guest touched, and a balloon
    /// can give back any whole free 4 KiB page, at the price of more and
    /// smaller nested page faults. Call before anything touches the memory.
    pub fn use_small_pages(&self) -> std::io::Result<()> {
        for m in &self._mappings {
            // SAFETY: an advice on a live mapping this value owns; it
            // changes how future faults are served, never the contents.
            if unsafe { libc::madvise(m.addr, m.len, libc::MADV_NOHUGEPAGE) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

impl Deref for GuestRam {
    type Target = GuestMemory;
    fn deref(&self) -> &GuestMemory {
        &self.memory
    }
}

/// Maps anonymous guest RAM (`MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE`,
/// 2 MiB-aligned): pages cost host memory only once the guest touches them.
pub fn create_guest_memory(mem_mib: u32) -> Result<GuestRam, MemoryError> {
    let mut regions = Vec::new();
    let mut mappings = Vec::new();
    for (start, len) in ram_ranges(mem_mib)? {
        let mapping =
            Mapping::aligned(len as usize, libc::PROT_READ | libc::PROT_WRITE).map_err(|e| {
                MemoryError::Mmap {
                    size: len,
                    source: vm_memory::mmap::MmapRegionError::Mmap(e),
                }
            })?;
        // SAFETY: `mapping` is a live mapping of exactly `len` bytes, owned
        // by the `GuestRam` returned here together with this view.
        let region = unsafe {
            MmapRegionBuilder::new(len as usize)
                .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE)
                .with_raw_mmap_pointer(mapping.addr.cast())
        }
        .build()
        .map_err(|source| MemoryError::Mmap { size: len, source })?;
        mappings.push(mapping);
        let region = GuestRegionMmap::new(region, GuestAddress(start))
            .ok_or_else(|| MemoryError::Layout(format!("region at {start:#x} overflows")))?;
        regions.push(region);
    }
    let memory =
        GuestMemory::from_regions(regions).map_err(|e| MemoryError::Layout(e.to_string()))?;
    Ok(GuestRam {
        memory,
        _mappings: mappings,
    })
}

/// Guest-physical alignment and size granularity of a pmem region: Linux
/// adds device memory (`ZONE_DEVICE`, which DAX needs) in 2 MiB subsections.
pub const PMEM_ALIGN: u64 = 2 << 20;
/// The first pmem region starts at a multiple of this, above RAM and at
/// 4 GiB or higher (never in the 32-bit MMIO gap).
pub const PMEM_FIRST_ALIGN: u64 = 1 << 30;
/// Further pmem regions start on a fresh Linux memory section (128 MiB), so
/// no two devices share one.
pub const PMEM_NEXT_ALIGN: u64 = 128 << 20;
/// Largest pmem image accepted.
pub const PMEM_MAX_SIZE: u64 = 64 << 30;

fn align_up(v: u64, align: u64) -> u64 {
    v.div_ceil(align) * align
}

/// Guest-physical `(start, len)` of one pmem region per image size in
/// `sizes`, for a VM with `mem_mib` of RAM: after RAM (at 4 GiB or higher,
/// 1 GiB-aligned), each region's length rounded up to [`PMEM_ALIGN`], each
/// next one on a fresh 128 MiB section.
pub fn pmem_layout(mem_mib: u32, sizes: &[u64]) -> Result<Vec<(u64, u64)>, MemoryError> {
    let ram_end = ram_ranges(mem_mib)?
        .last()
        .map(|&(s, l)| s + l)
        .unwrap_or(0);
    let mut next = align_up(ram_end.max(MMIO_GAP_END), PMEM_FIRST_ALIGN);
    let mut out = Vec::with_capacity(sizes.len());
    for &size in sizes {
        let len = align_up(size.max(1), PMEM_ALIGN);
        out.push((next, len));
        next = align_up(next + len, PMEM_NEXT_ALIGN);
    }
    Ok(out)
}

/// A host file mapped read-only and shared (`MAP_SHARED`, `PROT_READ`) at a
/// 2 MiB-aligned host address, for a read-only KVM memory slot. The mapping
/// is [`PMEM_ALIGN`]-rounded: past the file's last page it is anonymous,
/// read-only zero memory (nothing past the end of the file is ever touched,
/// so no access can fault with SIGBUS while the file keeps its size).
/// Unmapped on drop; the file itself is never written.
pub struct ImageMapping {
    mapping: Mapping,
    file_len: u64,
    path: PathBuf,
}

impl ImageMapping {
    /// Opens `path` read-only and maps it. Refuses anything but a non-empty
    /// regular file of at most [`PMEM_MAX_SIZE`] bytes.
    pub fn open(path: &Path) -> Result<Self, MemoryError> {
        let err = |what: &'static str| {
            let path = path.to_path_buf();
            move |source| MemoryError::Image { path, what, source }
        };
        let unusable = |reason: String| MemoryError::ImageUnusable {
            path: path.to_path_buf(),
            reason,
        };
        let file = std::fs::File::open(path).map_err(err("open it"))?;
        let meta = file.metadata().map_err(err("read its metadata"))?;
        if !meta.is_file() {
            return Err(unusable("not a regular file".into()));
        }
        let file_len = meta.len();
        if file_len == 0 {
            return Err(unusable("the file is empty".into()));
        }
        if file_len > PMEM_MAX_SIZE {
            return Err(unusable(format!(
                "{file_len} bytes is more than the {PMEM_MAX_SIZE}-byte limit"
            )));
        }
        let len = align_up(file_len, PMEM_ALIGN) as usize;
        let mapping = Mapping::aligned(len, libc::PROT_READ).map_err(err("reserve its mapping"))?;
        let page = 4096u64;
        let file_pages = align_up(file_len, page) as usize;
        // SAFETY: MAP_FIXED over the first `file_pages` bytes of `mapping`,
        // a range this process just reserved and owns (file_pages <= len);
        // nothing refers to it yet. The result is read-only and shared.
        let raw = unsafe {
            libc::mmap(
                mapping.addr,
                file_pages,
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_FIXED,
                file.as_raw_fd(),
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(err("map it")(std::io::Error::last_os_error()));
        }
        Ok(Self {
            mapping,
            file_len,
            path: path.to_path_buf(),
        })
    }

    /// Host address of the mapping (2 MiB-aligned).
    pub fn host_addr(&self) -> u64 {
        self.mapping.addr as u64
    }

    /// Length of the mapping: the file's size rounded up to [`PMEM_ALIGN`].
    pub fn len(&self) -> u64 {
        self.mapping.len as u64
    }

    /// Always false: empty files are refused.
    pub fn is_empty(&self) -> bool {
        self.mapping.len == 0
    }

    /// Size of the image file.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// The image file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The mapped bytes (the file, then zeros up to [`ImageMapping::len`]).
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is live and readable for `len` bytes for as
        // long as `self` is; it is only ever mapped read-only, so nothing in
        // this process writes it while the slice is borrowed.
        unsafe { std::slice::from_raw_parts(self.mapping.addr as *const u8, self.mapping.len) }
    }

    /// Keeps the mapping for the rest of the process's life (see
    /// [`GuestRam::leak`]).
    pub fn leak(self) {
        std::mem::forget(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

    #[test]
    fn pmem_regions_sit_above_ram_and_the_gap_aligned() {
        let l = pmem_layout(128, &[1, 3 * MIB, PMEM_ALIGN]).unwrap();
        assert_eq!(l[0], (MMIO_GAP_END, PMEM_ALIGN));
        assert_eq!(l[1], (MMIO_GAP_END + PMEM_NEXT_ALIGN, 4 * MIB));
        assert_eq!(l[2], (MMIO_GAP_END + 2 * PMEM_NEXT_ALIGN, PMEM_ALIGN));
        // RAM above the gap: 4 GiB + 1.5 GiB, so the first region is at 6 GiB.
        let l = pmem_layout(4608, &[5 * MIB]).unwrap();
        assert_eq!(l, vec![(6 << 30, 6 * MIB)]);
        for (start, len) in pmem_layout(4608, &[1, 2, 3]).unwrap() {
            assert_eq!(start % PMEM_ALIGN, 0);
            assert_eq!(len % PMEM_ALIGN, 0);
        }
    }

    #[test]
    fn an_image_is_mapped_read_only_2_mib_aligned_and_zero_padded() {
        let dir = std::env::temp_dir().join(format!("silo-image-map-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("img");
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8 + 1).collect();
        std::fs::write(&path, &data).unwrap();
        let m = ImageMapping::open(&path).unwrap();
        assert_eq!(m.host_addr() % HOST_ALIGN as u64, 0);
        assert_eq!((m.len(), m.file_len()), (PMEM_ALIGN, 5000));
        let bytes = m.as_slice();
        assert_eq!(&bytes[..5000], &data[..]);
        assert!(bytes[5000..].iter().all(|&b| b == 0));
        drop(m);
        // Empty files, directories and missing files are refused by name.
        std::fs::write(dir.join("empty"), b"").unwrap();
        for (p, want) in [
            (dir.join("empty"), "empty"),
            (dir.clone(), "not a regular file"),
            (dir.join("missing"), "cannot open"),
        ] {
            let e = ImageMapping::open(&p).err().unwrap().to_string();
            assert!(e.contains(want) && e.contains(&*p.to_string_lossy()), "{e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

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
    fn ram_is_mapped_at_2_mib_aligned_host_addresses() {
        for mib in [32, 128, 3 * 1024 + 512, 4096] {
            let ram = create_guest_memory(mib).unwrap();
            for region in ram.iter() {
                let host = ram.get_host_address(region.start_addr()).unwrap() as usize;
                assert_eq!(host % HOST_ALIGN, 0, "{mib} MiB: region at {host:#x}");
            }
        }
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
