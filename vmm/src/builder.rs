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
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_MEM_READONLY,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VmFd};
use linux_loader::cmdline::Cmdline;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::boot::loader::{self, LoadedInitrd, LoadedKernel};
use crate::boot::{cpuid, mptable, params, regs};
use crate::device_manager::{DeviceError, EventLoopHandle, MmioDeviceManager};
use crate::devices::bus::{Bus, SharedDevice};
use crate::devices::i8042::{IgnoredPorts, I8042, I8042_LEN, I8042_PORT};
use crate::devices::serial::{SerialDevice, TimedWriter, COM1_IRQ, COM1_LEN, COM1_PORT};
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::pmem::PmemRegionGuard;
use crate::devices::virtio::{Interrupt, VirtioDevice};
use crate::kvm::{HostKvm, KvmError};
use crate::memory::{
    self, GuestMemory, GuestRam, ImageMapping, CMDLINE_MAX_SIZE, CMDLINE_START, VIRTIO_MMIO_START,
};
use crate::timeline::Timeline;
use crate::vcpu::{Vcpu, VcpuStop};
use crate::vm::{
    CmdlineError, SerialOutput, VmConfig, VmExit, VmReport, VmmError, MAX_PMEM, MAX_VCPUS,
    VIRTIO_FIRST_IRQ,
};

/// Guest address of the TSS KVM needs on Intel (three pages below 4 GiB).
const TSS_ADDRESS: u64 = 0xfffb_d000;
/// Guest address of the identity-map page KVM needs on Intel.
const IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;
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

/// Holds the vCPU threads before their first `KVM_RUN`: each arrives once
/// it has filtered itself; the main thread waits for every arrival, filters
/// itself, then opens the gate.
#[derive(Default)]
struct StartGate {
    /// vCPU threads arrived, and whether the gate is open.
    state: Mutex<(usize, bool)>,
    changed: Condvar,
}

impl StartGate {
    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, bool)> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Called by a vCPU thread: counts it in and blocks until the gate is
    /// open.
    fn arrive_and_wait(&self) {
        let mut state = self.lock();
        state.0 += 1;
        self.changed.notify_all();
        while !state.1 {
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Blocks until `n` vCPU threads have arrived.
    fn wait_for_arrivals(&self, n: usize) {
        let mut state = self.lock();
        while state.0 < n {
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Lets every arrived (and later) vCPU thread through.
    fn open(&self) {
        self.lock().1 = true;
        self.changed.notify_all();
    }
}

/// A VM whose vCPUs run. [`RunningVm::wait`] returns when the guest resets
/// or shuts down; dropping it without waiting stops the VM too.
pub struct RunningVm {
    timeline: Timeline,
    kernel: std::path::PathBuf,
    threads: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    event_loop: Option<EventLoopHandle>,
    events: mpsc::Receiver<Event>,
    first_run: Arc<OnceLock<Instant>>,
    first_serial: Arc<OnceLock<Instant>>,
    // Declared last: dropped after the vCPU threads were joined above.
    _vm: VmFd,
    /// Guest RAM; `None` once leaked because a vCPU thread could not be
    /// joined (it might still touch guest memory).
    ram: Option<GuestRam>,
    /// The pmem images' mappings, kept (or leaked) with the RAM.
    images: Vec<ImageMapping>,
}

impl RunningVm {
    /// Waits for the VM's end, stops every vCPU and the device loop, and
    /// reports how it ended with its boot timeline.
    pub fn wait(mut self) -> Result<VmReport, VmmError> {
        let outcome = wait_for_end(&self.events, &self.kernel);
        let timeline = self.shut_down();
        outcome.map(|exit| VmReport { exit, timeline })
    }

    /// The boot vCPU enters KVM_RUN microseconds after its thread is let
    /// through: wait for it (up to 1 s) and write the phases so far to
    /// `file`, opened at `path` before the main thread's seccomp filter.
    fn write_early_timeline(&self, path: &std::path::Path, mut file: std::fs::File) {
        use std::io::Write;
        let waited = Instant::now();
        while self.first_run.get().is_none() && waited.elapsed() < Duration::from_secs(1) {
            std::thread::sleep(Duration::from_micros(50));
        }
        let mut early = self.timeline.clone();
        early.first_kvm_run = self.first_run.get().map(|t| Timeline::since_start(*t));
        if let Err(e) = file.write_all(early.to_json().as_bytes()) {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the timeline file");
        }
    }

    /// Stops and joins the vCPUs, stops the device loop, completes and logs
    /// the timeline. Idempotent.
    fn shut_down(&mut self) -> Timeline {
        if self.timeline.vm_exit.is_none() {
            if !stop_vcpus(&self.stop, std::mem::take(&mut self.threads)) {
                if let Some(ram) = self.ram.take() {
                    ram.leak();
                }
                for image in std::mem::take(&mut self.images) {
                    image.leak();
                }
            }
            drop(self.event_loop.take());
            self.timeline.first_kvm_run = self.first_run.get().map(|t| Timeline::since_start(*t));
            self.timeline.first_serial_byte =
                self.first_serial.get().map(|t| Timeline::since_start(*t));
            self.timeline.vm_exit = Some(Timeline::now());
            tracing::info!(timeline = %self.timeline.to_json(), "VM ended");
        }
        self.timeline.clone()
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// Creates the KVM VM: TSS and identity map pages, in-kernel irqchip
/// (PIC, IO-APIC, LAPICs) and PIT.
fn create_kvm_vm(kvm: &Kvm) -> Result<VmFd, VmmError> {
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
fn create_memory(vm: &VmFd, mem_mib: u32) -> Result<GuestRam, VmmError> {
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

/// The configured command line as a linux-loader [`Cmdline`].
fn base_cmdline(raw: &str) -> Result<Cmdline, CmdlineError> {
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
fn write_cmdline(mem: &GuestMemory, cmdline: &Cmdline) -> Result<usize, CmdlineError> {
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

/// Stops and joins the vCPU threads; `false` if one could not be joined.
fn stop_vcpus(stop: &AtomicBool, threads: Vec<JoinHandle<()>>) -> bool {
    stop.store(true, Ordering::Release);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut all = true;
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
            all = false;
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The main thread gets past `wait_for_arrivals` only once every vCPU
    /// thread arrived, and no vCPU thread gets past the gate before `open`.
    #[test]
    fn start_gate_holds_vcpus_until_opened() {
        use std::sync::atomic::AtomicUsize;
        let gate = Arc::new(StartGate::default());
        let passed = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let (gate, passed) = (gate.clone(), passed.clone());
                std::thread::spawn(move || {
                    gate.arrive_and_wait();
                    passed.fetch_add(1, Ordering::SeqCst);
                })
            })
            .collect();
        gate.wait_for_arrivals(3);
        assert_eq!(gate.lock().0, 3);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(
            passed.load(Ordering::SeqCst),
            0,
            "a vCPU passed a closed gate"
        );
        gate.open();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(passed.load(Ordering::SeqCst), 3);
    }

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
