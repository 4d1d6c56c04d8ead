//! One microVM from configuration to its end: KVM VM, memory, kernel,
//! devices, vCPU threads, and a clean stop.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::boot::{cpuid, loader, mptable, params, regs};
use crate::device_manager::{MmioDeviceManager, VsockConfig};
use crate::devices::bus::Bus;
use crate::devices::i8042::{IgnoredPorts, I8042, I8042_LEN, I8042_PORT};
use crate::devices::serial::{SerialDevice, TimedWriter, COM1_IRQ, COM1_LEN, COM1_PORT};
use crate::kvm::{HostKvm, KvmError};
use crate::memory::{self, GuestMemory, CMDLINE_MAX_SIZE, CMDLINE_START, VIRTIO_MMIO_START};
use crate::timeline::Timeline;
use crate::vcpu::{Vcpu, VcpuStop};

/// Largest vCPU count (the guest kernel's CONFIG_NR_CPUS).
pub const MAX_VCPUS: u8 = 8;
/// First IRQ handed to virtio-mmio devices.
pub const VIRTIO_FIRST_IRQ: u32 = 5;
/// Kernel command line used when none is given.
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=-1 pci=off tsc=reliable no_timer_check quiet";

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
    /// Boot a standard kernel even on a PVM host (for experiments).
    pub allow_pvm: bool,
    /// Where to write the boot timeline (JSON) once the first KVM_RUN has
    /// happened, so a parent can read it while the VM runs.
    pub timeline_file: Option<PathBuf>,
}

impl VmConfig {
    /// A config with defaults: 128 MiB, 1 vCPU, serial on stdout, no vsock.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Self {
            kernel: kernel.into(),
            initrd: None,
            cmdline: DEFAULT_CMDLINE.to_string(),
            mem_mib: 128,
            vcpus: 1,
            serial: SerialOutput::Stdout,
            vsock: None,
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
    /// The command line is too long or has a NUL.
    #[error("kernel command line is invalid: {0}")]
    Cmdline(String),
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
    /// Device setup failed.
    #[error("device setup failed: {0}")]
    Device(String),
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

fn ioctl(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |source| VmmError::Ioctl { op, source }
}

/// Messages to the VMM's main thread.
#[derive(Debug, Clone)]
enum Event {
    /// The i8042 saw a reset.
    Reset,
    /// A vCPU thread ended.
    Vcpu(u8, VcpuStop),
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Boots the VM described by `cfg` and runs it until the guest resets or
/// shuts down. Every vCPU thread is joined before this returns.
pub fn run(cfg: &VmConfig) -> Result<VmReport, VmmError> {
    let mut timeline = Timeline::new();
    if !(1..=MAX_VCPUS).contains(&cfg.vcpus) {
        return Err(VmmError::Vcpus(cfg.vcpus));
    }
    let (kvm, kind) = crate::kvm::open()?;
    if kind == HostKvm::Pvm && !cfg.allow_pvm {
        return Err(VmmError::PvmHost(cfg.kernel.clone()));
    }
    let mem = memory::create_guest_memory(cfg.mem_mib)?;
    let vm = create_vm(&kvm, &mem)?;

    // Kernel, initrd, command line, zero page.
    let kernel = loader::load_kernel(&mem, &cfg.kernel)?;
    let initrd = match &cfg.initrd {
        Some(path) => Some(loader::load_initrd(
            &mem,
            path,
            kernel.end,
            params::initrd_addr_max(kernel.setup_header.as_ref()),
        )?),
        None => None,
    };

    // Devices.
    let (events_tx, events_rx) = mpsc::channel::<Event>();
    let first_serial = Arc::new(OnceLock::new());
    let mut pio = Bus::new();
    let mut mmio = Bus::new();
    let serial_irq =
        EventFd::new(libc::EFD_NONBLOCK).map_err(|e| VmmError::Device(e.to_string()))?;
    vm.register_irqfd(&serial_irq, COM1_IRQ)
        .map_err(ioctl("KVM_IRQFD (serial)"))?;
    let out = serial_writer(&cfg.serial)?;
    let add = |bus: &mut Bus, dev: crate::devices::bus::SharedDevice, base, len| {
        bus.insert(dev, base, len)
            .map_err(|e| VmmError::Device(e.to_string()))
    };
    add(
        &mut pio,
        Arc::new(Mutex::new(SerialDevice::new(
            serial_irq,
            TimedWriter::new(out, first_serial.clone()),
        ))),
        COM1_PORT,
        COM1_LEN,
    )?;
    add(
        &mut pio,
        Arc::new(Mutex::new(I8042::new(events_tx.clone(), Event::Reset))),
        I8042_PORT,
        I8042_LEN,
    )?;
    let ignored = Arc::new(Mutex::new(IgnoredPorts));
    for (base, len) in [
        (0x80, 1),
        (0xcf8, 8),
        (0x2f8, 8),
        (0x3e8, 8),
        (0x2e8, 8),
        (0x4d0, 2),
    ] {
        add(&mut pio, ignored.clone(), base, len)?;
    }
    let mut devices = MmioDeviceManager::new(VIRTIO_MMIO_START, VIRTIO_FIRST_IRQ);
    if let Some(vsock) = &cfg.vsock {
        devices
            .attach_vsock(&vm, &mem, &mut mmio, vsock)
            .map_err(|e| VmmError::Device(e.to_string()))?;
    }

    let mut cmdline = cfg.cmdline.trim().to_string();
    for arg in devices.kernel_cmdline_args() {
        cmdline.push(' ');
        cmdline.push_str(&arg);
    }
    let cmdline_len = write_cmdline(&mem, &cmdline)?;
    let boot_params = params::build_boot_params(
        &mem,
        &params::BootInfo {
            setup_header: kernel.setup_header,
            cmdline: (GuestAddress(CMDLINE_START), cmdline_len),
            initrd: initrd.map(|i| (i.addr, i.size)),
        },
    )?;
    params::write_boot_params(&mem, &boot_params)?;
    regs::write_boot_tables(&mem)?;
    mptable::write(&mem, cfg.vcpus).map_err(|e| VmmError::Device(e.to_string()))?;
    timeline.kernel_loaded = Some(Timeline::now());

    // vCPUs.
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(ioctl("KVM_GET_SUPPORTED_CPUID"))?;
    let tsc_deadline = kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer);
    let stop = Arc::new(AtomicBool::new(false));
    let first_run = Arc::new(OnceLock::new());
    let mut vcpus = Vec::with_capacity(cfg.vcpus as usize);
    for index in 0..cfg.vcpus {
        let fd = vm
            .create_vcpu(u64::from(index))
            .map_err(ioctl("KVM_CREATE_VCPU"))?;
        let mut cpuid = supported.clone();
        cpuid::filter_cpuid(&mut cpuid, index, cfg.vcpus);
        if tsc_deadline {
            cpuid::enable_tsc_deadline(&mut cpuid);
        }
        fd.set_cpuid2(&cpuid).map_err(ioctl("KVM_SET_CPUID2"))?;
        regs::setup_vcpu(&fd, kernel.entry, index == 0)?;
        vcpus.push(Vcpu::new(
            fd,
            index,
            pio.clone(),
            mmio.clone(),
            stop.clone(),
            first_run.clone(),
        ));
    }
    timeline.vm_created = Some(Timeline::now());

    register_signal_handler(SIGRTMIN(), kick_handler)
        .map_err(|e| VmmError::Device(format!("cannot install the vCPU kick signal: {e}")))?;
    let event_loop = devices
        .start()
        .map_err(|e| VmmError::Device(e.to_string()))?;
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    let mut spawn_error = None;
    for mut vcpu in vcpus {
        let tx = events_tx.clone();
        let index = threads.len() as u8;
        match std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || {
                let why = match crate::seccomp::install(crate::seccomp::ThreadKind::Vcpu) {
                    Ok(()) => vcpu.run(),
                    Err(e) => VcpuStop::Error(e.to_string()),
                };
                let _ = tx.send(Event::Vcpu(index, why));
            }) {
            Ok(h) => threads.push(h),
            Err(source) => {
                spawn_error = Some(VmmError::Thread {
                    what: format!("vcpu{index}"),
                    source,
                });
                break;
            }
        }
    }
    drop(events_tx);

    if let (Some(path), None) = (&cfg.timeline_file, &spawn_error) {
        // The boot vCPU enters KVM_RUN microseconds after its thread starts.
        let waited = Instant::now();
        while first_run.get().is_none() && waited.elapsed() < Duration::from_secs(1) {
            std::thread::sleep(Duration::from_micros(50));
        }
        let mut early = timeline.clone();
        early.first_kvm_run = first_run.get().map(|t| Timeline::since_start(*t));
        if let Err(e) = std::fs::write(path, early.to_json()) {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the timeline file");
        }
    }

    if spawn_error.is_none() {
        if !crate::seccomp::enabled() {
            tracing::warn!("seccomp filters are off (SILO_SECCOMP=off)");
        } else if let Err(e) = crate::seccomp::install(crate::seccomp::ThreadKind::Main) {
            spawn_error = Some(VmmError::Device(e.to_string()));
        }
    }

    let outcome = match spawn_error {
        Some(e) => Err(e),
        None => wait_for_end(&events_rx, &cfg.kernel),
    };
    stop_vcpus(&stop, threads);
    drop(event_loop);
    timeline.first_kvm_run = first_run.get().map(|t| Timeline::since_start(*t));
    timeline.first_serial_byte = first_serial.get().map(|t| Timeline::since_start(*t));
    timeline.vm_exit = Some(Timeline::now());
    tracing::info!(timeline = %timeline.to_json(), "VM ended");
    outcome.map(|exit| VmReport { exit, timeline })
}

fn create_vm(kvm: &Kvm, mem: &GuestMemory) -> Result<VmFd, VmmError> {
    let vm = kvm.create_vm().map_err(ioctl("KVM_CREATE_VM"))?;
    vm.set_tss_address(0xfffb_d000)
        .map_err(ioctl("KVM_SET_TSS_ADDR"))?;
    vm.set_identity_map_address(0xfffb_c000)
        .map_err(ioctl("KVM_SET_IDENTITY_MAP_ADDR"))?;
    vm.create_irq_chip().map_err(ioctl("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(ioctl("KVM_CREATE_PIT2"))?;
    for (slot, region) in mem.iter().enumerate() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|e| VmmError::Device(format!("guest memory has no host mapping: {e}")))?;
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping owned by `mem`, which outlives
        // the VM: `run` keeps it until every vCPU thread has been joined.
        unsafe { vm.set_user_memory_region(region) }
            .map_err(ioctl("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(vm)
}

fn serial_writer(out: &SerialOutput) -> Result<Box<dyn std::io::Write + Send>, VmmError> {
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

fn write_cmdline(mem: &GuestMemory, cmdline: &str) -> Result<usize, VmmError> {
    if cmdline.as_bytes().contains(&0) {
        return Err(VmmError::Cmdline("it contains a NUL byte".into()));
    }
    let len = cmdline.len() + 1;
    if len > CMDLINE_MAX_SIZE {
        return Err(VmmError::Cmdline(format!(
            "{len} bytes is longer than the {CMDLINE_MAX_SIZE}-byte limit"
        )));
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_START))
        .map_err(|e| VmmError::Cmdline(e.to_string()))?;
    Ok(len)
}

fn wait_for_end(
    events: &mpsc::Receiver<Event>,
    kernel: &std::path::Path,
) -> Result<VmExit, VmmError> {
    loop {
        match events.recv() {
            Ok(Event::Reset) | Ok(Event::Vcpu(_, VcpuStop::Reset)) => return Ok(VmExit::Reset),
            Ok(Event::Vcpu(_, VcpuStop::Shutdown)) => return Ok(VmExit::Shutdown),
            Ok(Event::Vcpu(i, VcpuStop::Error(e))) => {
                tracing::error!(vcpu = i, error = %e, kernel = %kernel.display(), "vCPU failed");
                return Err(VmmError::Guest(e));
            }
            // A halted or stopped vCPU alone does not end the VM.
            Ok(Event::Vcpu(_, _)) => {}
            Err(_) => return Err(VmmError::Guest("every vCPU thread ended".into())),
        }
    }
}

fn stop_vcpus(stop: &AtomicBool, threads: Vec<JoinHandle<()>>) {
    stop.store(true, Ordering::Release);
    let deadline = Instant::now() + Duration::from_secs(5);
    for t in threads {
        // Kick until the thread leaves KVM_RUN and sees the stop flag.
        while !t.is_finished() && Instant::now() < deadline {
            let _ = t.kill(SIGRTMIN());
            std::thread::sleep(Duration::from_millis(1));
        }
        if t.is_finished() {
            let _ = t.join();
        } else {
            tracing::warn!("a vCPU thread did not stop within 5 s");
        }
    }
}
