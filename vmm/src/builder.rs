//! Assembling one microVM in named steps, from configuration to running
//! vCPUs: the KVM VM (irqchip, PIT, TSS), guest memory, kernel and initrd,
//! legacy devices (serial, i8042, ignored ports), virtio-mmio devices, pmem
//! images (read-only memory slots above RAM, each with its virtio-pmem
//! device), boot configuration (command line, zero page, boot tables, MP
//! table), vCPUs, then [`VmBuilder::start`], which returns a [`RunningVm`]
//! to wait on.
//!
//! [`VmBuilder::build`] runs every step in order; each step is public so a
//! caller (or a test) can assemble a VM differently, e.g. attach a second
//! virtio device with [`VmBuilder::attach_virtio_device`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use kvm_bindings::{kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_MEM_READONLY};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::boot::loader::{self, LoadedInitrd, LoadedKernel};
use crate::boot::{cpuid, mptable, params, regs};
use crate::device_manager::{DeviceError, MmioDeviceManager};
use crate::devices::bus::{Bus, SharedDevice};
use crate::devices::i8042::{IgnoredPorts, I8042, I8042_LEN, I8042_PORT};
use crate::devices::serial::{SerialDevice, TimedWriter, COM1_IRQ, COM1_LEN, COM1_PORT};
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::pmem::PmemRegionGuard;
use crate::devices::virtio::{Interrupt, VirtioDevice};
use crate::kvm::{HostKvm, KvmError};
use crate::memory::{self, GuestMemory, GuestRam, ImageMapping, CMDLINE_START, VIRTIO_MMIO_START};
use crate::timeline::Timeline;
use crate::vcpu::{Vcpu, VcpuStop};
use crate::vm::{VmConfig, VmmError, MAX_PMEM, MAX_VCPUS, VIRTIO_FIRST_IRQ};

mod running;
mod setup;

pub use running::RunningVm;
use running::StartGate;
use setup::{base_cmdline, create_kvm_vm, create_memory, serial_writer, write_cmdline};

/// Ports the guest probes that silo answers with all ones: POST code, PCI
/// config, COM2-COM4, the ELCR.
const IGNORED_PORTS: [(u64, u64); 6] = [
    (0x80, 1),
    (0xcf8, 8),
    (0x2f8, 8),
    (0x3e8, 8),
    (0x2e8, 8),
    (0x4d0, 2),
];

/// Logs (at debug level) that a build step finished, with the time since
/// the process started: where a cold start's host-side time goes.
fn step_done(step: &'static str) {
    tracing::debug!(
        since_process_start_us = Timeline::now().as_micros() as u64,
        "{step}"
    );
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

/// A VM being assembled. Created by [`VmBuilder::new`] with its KVM VM and
/// guest memory; the other steps fill it in.
pub struct VmBuilder<'a> {
    cfg: &'a VmConfig,
    timeline: Timeline,
    kvm: Kvm,
    vm: VmFd,
    mem: GuestRam,
    /// Read-only image mappings, given to KVM as memory slots by
    /// [`VmBuilder::attach_pmem_images`].
    images: Vec<ImageMapping>,
    /// Whether `attach_pmem_images` ran (it attaches each image once).
    pmem_attached: bool,
    /// Whether `attach_balloon` ran.
    balloon_attached: bool,
    /// Next free KVM memory slot number.
    next_slot: u32,
    pio: Bus,
    mmio: Bus,
    virtio: MmioDeviceManager,
    kernel: Option<LoadedKernel>,
    initrd: Option<LoadedInitrd>,
    booted: bool,
    vcpus: Vec<Vcpu>,
    events_tx: mpsc::Sender<Event>,
    events_rx: mpsc::Receiver<Event>,
    first_serial: Arc<OnceLock<Instant>>,
    first_run: Arc<OnceLock<Instant>>,
    stop: Arc<AtomicBool>,
}

impl<'a> VmBuilder<'a> {
    /// Checks `cfg`, maps the pmem images (so a bad image is refused before
    /// anything else), opens KVM, creates the KVM VM and its guest memory.
    pub fn new(cfg: &'a VmConfig) -> Result<Self, VmmError> {
        let timeline = Timeline::new();
        if !(1..=MAX_VCPUS).contains(&cfg.vcpus) {
            return Err(VmmError::Vcpus(cfg.vcpus));
        }
        if cfg.pmem.len() > MAX_PMEM {
            return Err(VmmError::TooManyPmem(cfg.pmem.len()));
        }
        let images = cfg
            .pmem
            .iter()
            .map(|p| ImageMapping::open(p))
            .collect::<Result<Vec<_>, _>>()?;
        let (kvm, kind) = crate::kvm::open()?;
        if kind == HostKvm::Pvm && !cfg.allow_pvm {
            return Err(VmmError::PvmHost(cfg.kernel.clone()));
        }
        let vm = create_kvm_vm(&kvm)?;
        let mem = create_memory(&vm, cfg.mem_mib)?;
        if cfg.small_pages {
            mem.use_small_pages().map_err(memory::MemoryError::Advise)?;
        }
        let next_slot = mem.num_regions() as u32;
        let (events_tx, events_rx) = mpsc::channel();
        Ok(Self {
            cfg,
            timeline,
            kvm,
            vm,
            mem,
            images,
            pmem_attached: false,
            balloon_attached: false,
            next_slot,
            pio: Bus::new(),
            mmio: Bus::new(),
            virtio: MmioDeviceManager::new(VIRTIO_MMIO_START, VIRTIO_FIRST_IRQ),
            kernel: None,
            initrd: None,
            booted: false,
            vcpus: Vec::new(),
            events_tx,
            events_rx,
            first_serial: Arc::new(OnceLock::new()),
            first_run: Arc::new(OnceLock::new()),
            stop: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Runs every remaining step in order and starts the VM.
    pub fn build(mut self) -> Result<RunningVm, VmmError> {
        step_done("VM and guest memory created");
        self.load_kernel()?;
        step_done("kernel and initrd loaded");
        self.attach_legacy_devices()?;
        self.attach_virtio_devices()?;
        self.attach_pmem_images()?;
        self.attach_balloon()?;
        step_done("devices attached");
        self.configure_boot()?;
        self.create_vcpus()?;
        step_done("boot configured, vCPUs created");
        self.start()
    }

    /// The guest memory (for tests and for devices built outside the builder).
    pub fn memory(&self) -> &GuestMemory {
        &self.mem
    }

    /// Loads the kernel and, if configured, the initrd.
    pub fn load_kernel(&mut self) -> Result<&mut Self, VmmError> {
        let kernel = loader::load_kernel(&self.mem, &self.cfg.kernel)?;
        self.initrd = match &self.cfg.initrd {
            Some(path) => Some(loader::load_initrd(
                &self.mem,
                path,
                kernel.end,
                params::initrd_addr_max(kernel.setup_header.as_ref()),
            )?),
            None => None,
        };
        self.kernel = Some(kernel);
        Ok(self)
    }

    /// Places the port I/O devices: the COM1 serial console, the i8042
    /// (whose reset ends the VM), and ports read as all ones.
    pub fn attach_legacy_devices(&mut self) -> Result<&mut Self, VmmError> {
        let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| VmmError::EventFd {
            what: "serial interrupt",
            source,
        })?;
        self.vm
            .register_irqfd(&serial_irq, COM1_IRQ)
            .map_err(ioctl("KVM_IRQFD (serial)"))?;
        let out = serial_writer(&self.cfg.serial)?;
        let serial =
            SerialDevice::new(serial_irq, TimedWriter::new(out, self.first_serial.clone()));
        self.add_pio(
            "the serial port",
            Arc::new(Mutex::new(serial)),
            COM1_PORT,
            COM1_LEN,
        )?;
        let i8042 = I8042::new(self.events_tx.clone(), Event::Reset, self.stop.clone());
        self.add_pio(
            "the i8042",
            Arc::new(Mutex::new(i8042)),
            I8042_PORT,
            I8042_LEN,
        )?;
        let ignored: SharedDevice = Arc::new(Mutex::new(IgnoredPorts));
        for (base, len) in IGNORED_PORTS {
            self.add_pio("an ignored port range", ignored.clone(), base, len)?;
        }
        Ok(self)
    }

    fn add_pio(
        &mut self,
        what: &'static str,
        dev: SharedDevice,
        base: u64,
        len: u64,
    ) -> Result<(), VmmError> {
        self.pio
            .insert(dev, base, len)
            .map_err(|source| VmmError::Bus { what, source })
    }

    /// Attaches the configured virtio devices (vsock and net, when
    /// configured).
    pub fn attach_virtio_devices(&mut self) -> Result<&mut Self, VmmError> {
        if let Some(vsock) = &self.cfg.vsock {
            self.virtio
                .attach_vsock(&self.vm, &self.mem, &mut self.mmio, vsock)?;
        }
        self.attach_net()?;
        Ok(self)
    }

    /// Attaches the virtio-net device on the configured tap (none without
    /// one: the guest then has no network interface at all).
    pub fn attach_net(&mut self) -> Result<&mut Self, VmmError> {
        if let Some(net) = &self.cfg.net {
            self.virtio
                .attach_net(&self.vm, &self.mem, &mut self.mmio, net)?;
        }
        Ok(self)
    }

    /// Attaches the virtio-balloon device with free page reporting, when
    /// configured. It comes after every other virtio device, so theirs keep
    /// their places (`virtio0`, ...) in the guest.
    pub fn attach_balloon(&mut self) -> Result<&mut Self, VmmError> {
        if self.cfg.balloon && !self.balloon_attached {
            self.balloon_attached = true;
            let granule = if self.cfg.small_pages {
                crate::devices::virtio::balloon::PAGE_SIZE
            } else {
                crate::devices::virtio::balloon::DISCARD_ALIGN
            };
            let stats = self.cfg.balloon_stats_file.as_deref();
            self.virtio
                .attach_balloon(&self.vm, &self.mem, &mut self.mmio, granule, stats)?;
        }
        Ok(self)
    }

    /// Gives each pmem image (mapped read-only and shared by
    /// [`VmBuilder::new`]) to KVM as a read-only memory slot above RAM (see
    /// [`memory::pmem_layout`]),
    /// puts a [`PmemRegionGuard`] on the MMIO bus over it (guest stores
    /// exit to the VMM and are discarded), and attaches its virtio-pmem
    /// device. Images appear in the guest in order (`/dev/pmem0`, ...).
    pub fn attach_pmem_images(&mut self) -> Result<&mut Self, VmmError> {
        if self.images.is_empty() || self.pmem_attached {
            return Ok(self);
        }
        if !self.kvm.check_extension(kvm_ioctls::Cap::ReadonlyMem) {
            return Err(KvmError::MissingCapability("KVM_CAP_READONLY_MEM").into());
        }
        self.pmem_attached = true;
        let sizes: Vec<u64> = self.images.iter().map(|i| i.file_len()).collect();
        let layout = memory::pmem_layout(self.cfg.mem_mib, &sizes)?;
        for (image, (start, len)) in self.images.iter().zip(layout) {
            debug_assert_eq!(len, image.len());
            let region = kvm_userspace_memory_region {
                slot: self.next_slot,
                guest_phys_addr: start,
                memory_size: len,
                userspace_addr: image.host_addr(),
                flags: KVM_MEM_READONLY,
            };
            // SAFETY: the range is a live read-only mapping owned by
            // `image`, kept in `self.images` and then in `RunningVm` until
            // every vCPU thread has been joined; KVM never writes through a
            // read-only slot.
            unsafe { self.vm.set_user_memory_region(region) }
                .map_err(ioctl("KVM_SET_USER_MEMORY_REGION (pmem, read-only)"))?;
            self.next_slot += 1;
            self.mmio
                .insert(
                    Arc::new(Mutex::new(PmemRegionGuard::new(start))),
                    start,
                    len,
                )
                .map_err(|source| VmmError::Bus {
                    what: "a pmem region",
                    source,
                })?;
            self.virtio
                .attach_pmem(&self.vm, &self.mem, &mut self.mmio, start, len)?;
            tracing::info!(
                image = %image.path().display(),
                bytes = image.file_len(),
                start,
                len,
                "pmem image mapped read-only"
            );
        }
        Ok(self)
    }

    /// Attaches one virtio device over virtio-mmio: window, IRQ, irqfd,
    /// ioeventfds, event loop and command line declaration. `build` makes
    /// the device given the interrupt it raises.
    pub fn attach_virtio_device<D, F>(
        &mut self,
        build: F,
    ) -> Result<Arc<Mutex<MmioTransport<D>>>, VmmError>
    where
        D: VirtioDevice + 'static,
        F: FnOnce(Interrupt) -> Result<D, DeviceError>,
    {
        Ok(self
            .virtio
            .attach_virtio_device(&self.vm, &self.mem, &mut self.mmio, build)?)
    }

    /// Writes the boot configuration: the kernel command line (with every
    /// virtio-mmio device declared), the zero page, the boot GDT and page
    /// tables, and the MP table. Needs [`VmBuilder::load_kernel`].
    pub fn configure_boot(&mut self) -> Result<&mut Self, VmmError> {
        let kernel = self.kernel.as_ref().ok_or(VmmError::BuildOrder {
            step: "configure_boot",
            needs: "load_kernel",
        })?;
        let mut cmdline = base_cmdline(&self.cfg.cmdline)?;
        self.virtio.declare_on(&mut cmdline)?;
        let cmdline_len = write_cmdline(&self.mem, &cmdline)?;
        let boot_params = params::build_boot_params(
            &self.mem,
            &params::BootInfo {
                setup_header: kernel.setup_header,
                cmdline: (GuestAddress(CMDLINE_START), cmdline_len),
                initrd: self.initrd.map(|i| (i.addr, i.size)),
            },
        )?;
        params::write_boot_params(&self.mem, &boot_params)?;
        regs::write_boot_tables(&self.mem)?;
        mptable::write(&self.mem, self.cfg.vcpus)?;
        self.booted = true;
        self.timeline.kernel_loaded = Some(Timeline::now());
        Ok(self)
    }

    /// Creates and configures the vCPUs (CPUID, registers, LAPIC). Needs
    /// [`VmBuilder::configure_boot`].
    pub fn create_vcpus(&mut self) -> Result<&mut Self, VmmError> {
        let entry = match (&self.kernel, self.booted) {
            (Some(k), true) => k.entry,
            _ => {
                return Err(VmmError::BuildOrder {
                    step: "create_vcpus",
                    needs: "configure_boot",
                })
            }
        };
        let supported = self
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(ioctl("KVM_GET_SUPPORTED_CPUID"))?;
        let tsc_deadline = self.kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer);
        let count = self.cfg.vcpus;
        for index in 0..count {
            let fd = self
                .vm
                .create_vcpu(u64::from(index))
                .map_err(ioctl("KVM_CREATE_VCPU"))?;
            let mut cpuid = supported.clone();
            cpuid::filter_cpuid(&mut cpuid, index, count);
            if tsc_deadline {
                cpuid::enable_tsc_deadline(&mut cpuid);
            }
            fd.set_cpuid2(&cpuid).map_err(ioctl("KVM_SET_CPUID2"))?;
            regs::setup_vcpu(&fd, entry, index == 0)?;
            self.vcpus.push(Vcpu::new(
                fd,
                index,
                self.pio.clone(),
                self.mmio.clone(),
                self.stop.clone(),
                self.first_run.clone(),
            ));
        }
        self.timeline.vm_created = Some(Timeline::now());
        Ok(self)
    }

    /// Starts the device event loop and one thread per vCPU, filters the
    /// calling (main) thread's system calls, lets the vCPUs into the guest
    /// and writes the early timeline file. Every thread runs under its
    /// seccomp filter before the guest's first instruction. Needs
    /// [`VmBuilder::create_vcpus`].
    pub fn start(self) -> Result<RunningVm, VmmError> {
        if self.vcpus.is_empty() {
            return Err(VmmError::BuildOrder {
                step: "start",
                needs: "create_vcpus",
            });
        }
        register_signal_handler(SIGRTMIN(), kick_handler).map_err(VmmError::KickSignal)?;
        let Self {
            cfg,
            timeline,
            vm,
            mem,
            images,
            virtio,
            vcpus,
            events_tx,
            events_rx,
            first_serial,
            first_run,
            stop,
            ..
        } = self;
        let event_loop = virtio.start()?;
        let mut running = RunningVm {
            timeline,
            kernel: cfg.kernel.clone(),
            threads: Vec::new(),
            stop,
            event_loop,
            events: events_rx,
            first_run,
            first_serial,
            _vm: vm,
            ram: Some(mem),
            images,
        };
        // Every vCPU thread filters itself, then waits at `gate` until the
        // main thread has seen every vCPU thread arrive and has filtered
        // itself too: no guest instruction runs before every thread of the
        // process is under its filter.
        let gate = Arc::new(StartGate::default());
        let mut failure = None;
        for mut vcpu in vcpus {
            let tx = events_tx.clone();
            let gate = gate.clone();
            let index = running.threads.len() as u8;
            let spawned = std::thread::Builder::new()
                .name(format!("vcpu{index}"))
                .spawn(move || {
                    let filtered = crate::seccomp::install(crate::seccomp::ThreadKind::Vcpu);
                    gate.arrive_and_wait();
                    let why = match filtered {
                        Ok(()) => vcpu.run(),
                        Err(e) => VcpuStop::Error(e.to_string()),
                    };
                    let _ = tx.send(Event::Vcpu(index, why));
                });
            match spawned {
                Ok(h) => running.threads.push(h),
                Err(source) => {
                    failure = Some(VmmError::Thread {
                        what: format!("vcpu{index}"),
                        source,
                    });
                    break;
                }
            }
        }
        drop(events_tx);
        let mut timeline_file = None;
        if failure.is_none() {
            // Opened now: the main thread's filter allows no open.
            if let Some(path) = &cfg.timeline_file {
                match std::fs::File::create(path) {
                    Ok(f) => timeline_file = Some((path, f)),
                    Err(e) => tracing::warn!(
                        path = %path.display(), error = %e, "cannot write the timeline file"
                    ),
                }
            }
            if !crate::seccomp::enabled() {
                tracing::warn!("seccomp filters are off (SILO_SECCOMP=off)");
            } else if let Err(e) = crate::seccomp::install(crate::seccomp::ThreadKind::Main) {
                failure = Some(e.into());
            }
        }
        // Each spawned vCPU thread arrives once its filter is installed (or
        // could not be: it then reports the error instead of running).
        gate.wait_for_arrivals(running.threads.len());
        if failure.is_some() {
            // The vCPUs leave at once, before their first KVM_RUN.
            running.stop.store(true, Ordering::Release);
        }
        gate.open();
        match failure {
            None => {
                if let Some((path, file)) = timeline_file {
                    running.write_early_timeline(path, file);
                }
                Ok(running)
            }
            Some(e) => {
                running.shut_down();
                Err(e)
            }
        }
    }
}
