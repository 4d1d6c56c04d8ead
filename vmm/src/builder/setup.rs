//! What the builder's steps make from the configuration before any device:
//! the KVM VM, guest memory given to KVM, the serial console's output and
//! the kernel command line written into guest memory.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use linux_loader::cmdline::Cmdline;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::ioctl;
use crate::memory::{self, GuestMemory, GuestRam, CMDLINE_MAX_SIZE, CMDLINE_START};
use crate::vm::{CmdlineError, SerialOutput, VmmError};

/// Guest address of the TSS KVM needs on Intel (three pages below 4 GiB).
const TSS_ADDRESS: u64 = 0xfffb_d000;
/// Guest address of the identity-map page KVM needs on Intel.
const IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// Creates the KVM VM: TSS and identity map pages, in-kernel irqchip
/// (PIC, IO-APIC, LAPICs) and PIT.
pub(super) fn create_kvm_vm(kvm: &Kvm) -> Result<VmFd, VmmError> {
    let vm = kvm.create_vm().map_err(ioctl("KVM_CREATE_VM"))?;
    vm.set_tss_address(TSS_ADDRESS as usize)
        .map_err(ioctl("KVM_SET_TSS_ADDR"))?;
    vm.set_identity_map_address(IDENTITY_MAP_ADDRESS)
        .map_err(ioctl("KVM_SET_IDENTITY_MAP_ADDR"))?;
    vm.create_irq_chip().map_err(ioctl("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(ioctl("KVM_CREATE_PIT2"))?;
    Ok(vm)
}

/// Maps guest RAM and gives each region to KVM as a memory slot.
pub(super) fn create_memory(vm: &VmFd, mem_mib: u32) -> Result<GuestRam, VmmError> {
    let mem = memory::create_guest_memory(mem_mib)?;
    for (slot, region) in mem.iter().enumerate() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(VmmError::HostMapping)?;
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping owned by `mem`, which outlives
        // the VM: the builder and then `RunningVm` keep it until every vCPU
        // thread has been joined.
        unsafe { vm.set_user_memory_region(region) }
            .map_err(ioctl("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(mem)
}

pub(super) fn serial_writer(
    out: &SerialOutput,
) -> Result<Box<dyn std::io::Write + Send>, VmmError> {
    Ok(match out {
        SerialOutput::Stdout => Box::new(std::io::stdout()),
        SerialOutput::Off => Box::new(std::io::sink()),
        SerialOutput::File(path) => {
            Box::new(
                std::fs::File::create(path).map_err(|source| VmmError::SerialFile {
                    path: path.clone(),
                    source,
                })?,
            )
        }
    })
}

/// The configured command line as a linux-loader [`Cmdline`].
pub(super) fn base_cmdline(raw: &str) -> Result<Cmdline, CmdlineError> {
    if raw.as_bytes().contains(&0) {
        return Err(CmdlineError::Nul);
    }
    let raw = raw.trim();
    if raw.len() + 1 > CMDLINE_MAX_SIZE {
        return Err(CmdlineError::TooLong {
            len: raw.len() + 1,
            max: CMDLINE_MAX_SIZE,
        });
    }
    Cmdline::try_from(raw, CMDLINE_MAX_SIZE).map_err(CmdlineError::Loader)
}

/// Writes `cmdline` (NUL-terminated) at [`CMDLINE_START`]; returns its
/// length including the NUL.
pub(super) fn write_cmdline(mem: &GuestMemory, cmdline: &Cmdline) -> Result<usize, CmdlineError> {
    let bytes = cmdline
        .as_cstring()
        .map_err(CmdlineError::Loader)?
        .into_bytes_with_nul();
    if bytes.len() > CMDLINE_MAX_SIZE {
        return Err(CmdlineError::TooLong {
            len: bytes.len(),
            max: CMDLINE_MAX_SIZE,
        });
    }
    mem.write_slice(&bytes, GuestAddress(CMDLINE_START))
        .map_err(CmdlineError::Write)?;
    Ok(bytes.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_keeps_the_old_limits_and_messages() {
        assert!(matches!(base_cmdline("a\0b"), Err(CmdlineError::Nul)));
        let long = "x".repeat(CMDLINE_MAX_SIZE);
        let e = base_cmdline(&long).unwrap_err().to_string();
        assert!(e.contains("4097 bytes"), "{e}");
        let c = base_cmdline("  console=ttyS0 quiet ").unwrap();
        assert_eq!(
            c.as_cstring().unwrap().to_str().unwrap(),
            "console=ttyS0 quiet"
        );
    }

    #[test]
    fn cmdline_is_written_nul_terminated() {
        let mem = memory::create_guest_memory(32).unwrap();
        let mut c = base_cmdline("console=ttyS0").unwrap();
        c.add_virtio_mmio_device(0x1000, GuestAddress(0xd000_0000), 5, None)
            .unwrap();
        let len = write_cmdline(&mem, &c).unwrap();
        let want = b"console=ttyS0 virtio_mmio.device=4K@0xd0000000:5\0";
        assert_eq!(len, want.len());
        let mut back = vec![0u8; len];
        mem.read_slice(&mut back, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&back, want);
    }
}
