//! One microVM's configuration, how it ends, and its errors; [`run`] boots
//! it through [`crate::builder::VmBuilder`] and waits for its end.

use std::path::PathBuf;

use crate::boot::{loader, mptable, params, regs};
use crate::device_manager::{DeviceError, VsockConfig};
use crate::devices::bus::BusError;
use crate::kvm::KvmError;
use crate::memory;
use crate::timeline::Timeline;

/// Largest vCPU count (the guest kernel's CONFIG_NR_CPUS).
pub const MAX_VCPUS: u8 = 8;
/// Most pmem images one VM may map.
pub const MAX_PMEM: usize = 8;
/// First IRQ handed to virtio-mmio devices.
pub const VIRTIO_FIRST_IRQ: u32 = 5;
/// Kernel command line used when none is given. `quiet`: the console is a
/// VM exit per byte. `pty.legacy_count=0`: no legacy BSD ptys (`/dev/ptyXX`,
/// 256 of them with the guest kernel's `CONFIG_LEGACY_PTY_COUNT`), whose
/// creation was the slowest initcall of the boot; Unix98 ptys (`/dev/ptmx`)
/// are unaffected. A kernel without legacy ptys ignores the parameter.
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=-1 pci=off tsc=reliable no_timer_check quiet pty.legacy_count=0";

/// Where the guest's serial console goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialOutput {
    /// The VMM's stdout.
    Stdout,
    /// A host file (created or truncated).
    File(PathBuf),
    /// Discarded.
    Off,
}

/// Everything needed to boot one VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Kernel image: ELF vmlinux or bzImage.
    pub kernel: PathBuf,
    /// Initial ramdisk (newc cpio), if any.
    pub initrd: Option<PathBuf>,
    /// Kernel command line (device declarations are appended).
    pub cmdline: String,
    /// Guest memory in MiB.
    pub mem_mib: u32,
    /// vCPU count.
    pub vcpus: u8,
    /// Serial console destination.
    pub serial: SerialOutput,
    /// Optional vsock device.
    pub vsock: Option<VsockConfig>,
    /// Optional virtio-net device on a tap.
    pub net: Option<crate::device_manager::NetConfig>,
    /// Read-only images shared through virtio-pmem, in order: the guest
    /// sees them as `/dev/pmem0`, `/dev/pmem1`, ...
    pub pmem: Vec<PathBuf>,
    /// A virtio-balloon device with free page reporting: pages the guest
    /// frees go back to the host (see `devices::virtio::balloon`).
    pub balloon: bool,
    /// Where the balloon publishes its counters (see
    /// `devices::virtio::balloon::stats_file`).
    pub balloon_stats_file: Option<PathBuf>,
    /// Back guest RAM with 4 KiB host pages (`MADV_NOHUGEPAGE`) instead of
    /// transparent huge pages; the balloon then gives back any whole free
    /// 4 KiB page the guest reports.
    pub small_pages: bool,
    /// Boot a standard kernel even on a PVM host (for experiments).
    pub allow_pvm: bool,
    /// Where to write the boot timeline (JSON) once the first KVM_RUN has
    /// happened, so a parent can read it while the VM runs.
    pub timeline_file: Option<PathBuf>,
}

impl VmConfig {
    /// A config with defaults: 128 MiB, 1 vCPU, serial on stdout, no vsock,
    /// no pmem images.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Self {
            kernel: kernel.into(),
            initrd: None,
            cmdline: DEFAULT_CMDLINE.to_string(),
            mem_mib: 128,
            vcpus: 1,
            serial: SerialOutput::Stdout,
            vsock: None,
            net: None,
            pmem: Vec::new(),
            balloon: false,
            balloon_stats_file: None,
            small_pages: false,
            allow_pvm: false,
            timeline_file: None,
        }
    }
}

/// How the VM ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmExit {
    /// The guest reset the machine (`reboot` with `reboot=k`): a clean end.
    Reset,
    /// Triple fault or shutdown (`reboot=t`): also a clean end.
    Shutdown,
}

/// The VM's end and its boot timeline.
#[derive(Debug, Clone)]
pub struct VmReport {
    /// How the VM ended.
    pub exit: VmExit,
    /// When each start-up phase happened.
    pub timeline: Timeline,
}

/// Errors running a VM; each names what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// KVM is missing or unusable.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// The host's KVM is PVM and cannot boot standard kernels.
    #[error(
        "this host's /dev/kvm is PVM-backed (module kvm_pvm, no VMX/SVM): it runs only \
         PVM-enabled guest kernels (CONFIG_PVM_GUEST), and {0} is a standard kernel. Run silo \
         on a host with hardware KVM, or inside the KVM test host (see images/README.md); \
         pass --allow-pvm to try anyway"
    )]
    PvmHost(PathBuf),
    /// vCPU count out of range.
    #[error("vCPU count {0} is out of range (1..={MAX_VCPUS})")]
    Vcpus(u8),
    /// Guest memory could not be created.
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    /// Kernel or initrd loading failed.
    #[error(transparent)]
    Load(#[from] loader::LoadError),
    /// The command line is too long, has a NUL, or could not be written.
    #[error("kernel command line is invalid: {0}")]
    Cmdline(#[from] CmdlineError),
    /// The zero page could not be written.
    #[error(transparent)]
    Params(#[from] params::ParamsError),
    /// vCPU register setup failed.
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    /// A KVM ioctl failed.
    #[error("KVM {op} failed: {source}")]
    Ioctl {
        /// Which operation.
        op: &'static str,
        /// The errno.
        source: kvm_ioctls::Error,
    },
    /// Guest memory has no host mapping to give KVM.
    #[error("guest memory has no host mapping: {0}")]
    HostMapping(#[source] vm_memory::GuestMemoryError),
    /// An eventfd for a legacy device could not be created.
    #[error("cannot create the {what} eventfd: {source}")]
    EventFd {
        /// Which device.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// A legacy device's port range overlaps another.
    #[error("cannot place {what} on the port I/O bus: {source}")]
    Bus {
        /// Which device.
        what: &'static str,
        /// The overlap.
        source: BusError,
    },
    /// Too many pmem images.
    #[error("{0} pmem images requested; at most {MAX_PMEM} are supported")]
    TooManyPmem(usize),
    /// A virtio device could not be created or wired.
    #[error("virtio device setup failed: {0}")]
    Virtio(#[from] DeviceError),
    /// The MP table could not be written.
    #[error(transparent)]
    MpTable(#[from] mptable::MpTableError),
    /// The signal used to kick vCPUs out of KVM_RUN could not be installed.
    #[error("cannot install the vCPU kick signal: {0}")]
    KickSignal(#[source] vmm_sys_util::errno::Error),
    /// The main thread's seccomp filter could not be installed.
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    /// A build step ran before the step it needs.
    #[error("VM build step `{step}` needs `{needs}` first")]
    BuildOrder {
        /// The step attempted.
        step: &'static str,
        /// The step it needs.
        needs: &'static str,
    },
    /// The serial output file could not be created.
    #[error("cannot open serial output {path}: {source}")]
    SerialFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A vCPU stopped with an error.
    #[error("the VM failed: {0}")]
    Guest(String),
    /// A thread could not be started.
    #[error("cannot start {what} thread: {source}")]
    Thread {
        /// Which thread.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

/// Why the kernel command line was refused.
#[derive(Debug, thiserror::Error)]
pub enum CmdlineError {
    /// It has a NUL byte.
    #[error("it contains a NUL byte")]
    Nul,
    /// It (with its terminating NUL) is longer than the boot protocol slot.
    #[error("{len} bytes is longer than the {max}-byte limit")]
    TooLong {
        /// Bytes including the NUL.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// linux-loader refused it (non-printable characters, bad quoting).
    #[error("{0}")]
    Loader(#[source] linux_loader::cmdline::Error),
    /// It could not be written into guest memory.
    #[error("{0}")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// Boots the VM described by `cfg` and runs it until the guest resets or
/// shuts down. Every vCPU thread is joined before this returns.
pub fn run(cfg: &VmConfig) -> Result<VmReport, VmmError> {
    crate::builder::VmBuilder::new(cfg)?.build()?.wait()
}
