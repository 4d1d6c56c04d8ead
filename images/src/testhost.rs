//! The KVM test host: a QEMU TCG machine whose emulated AMD CPU has SVM with
//! nested paging, so it gets a real, hardware-style `/dev/kvm` even where the
//! build machine's own KVM cannot boot standard guests (PVM hosts).
//!
//! A [`TestHost`] packs busybox, Debian's cloud kernel modules for KVM and
//! the caller's files into an initramfs, boots it, runs one shell command,
//! and returns the command's console output and exit code. QEMU is killed and
//! every temporary file removed on every path out, including timeouts.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use silo_initramfs::newc::NewcWriter;

use crate::{cache_dir, run_script, ImageError};

const BEGIN: &str = "SILO_TESTHOST_BEGIN";
const EXIT: &str = "SILO_TESTHOST_EXIT=";

/// Where [`TestHost::with_qemu`] puts QEMU inside the test host (on `PATH`).
pub const QEMU_IN_TEST_HOST: &str = "/usr/bin/qemu-system-x86_64";
/// QEMU on this host (Debian's `qemu-system-x86`).
const QEMU_HOST_PATH: &str = "/usr/bin/qemu-system-x86_64";
/// Firmware `-M microvm -kernel` loads from `/usr/share/qemu`: qboot and the
/// option ROM that boots the kernel over fw_cfg DMA.
const QEMU_MICROVM_FIRMWARE: [&str; 2] = ["bios-microvm.bin", "linuxboot_dma.bin"];

/// Set to keep the run directory (initramfs and `console.log`) for debugging.
pub const KEEP_ENV: &str = "SILO_TESTHOST_KEEP";
/// Set to echo the test host's whole console, boot included, to stderr.
pub const VERBOSE_ENV: &str = "SILO_TESTHOST_VERBOSE";
/// How many times a run that stalled in the emulator is run again (default 1).
pub const STALL_RETRIES_ENV: &str = "SILO_TESTHOST_STALL_RETRIES";

/// True when this host's `/dev/kvm` is hardware virtualization (Intel VMX or
/// AMD SVM) that this process can open: then real guests run directly.
/// False on PVM hosts and hosts without KVM: use a [`TestHost`].
pub fn hardware_kvm_usable() -> bool {
    let m = |n: &str| Path::new("/sys/module").join(n).exists();
    let hw = m("kvm_intel") || m("kvm_amd");
    hw && !m("kvm_pvm")
        && std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok()
}

/// What a command run in the test host produced.
#[derive(Debug, Clone)]
pub struct TestHostOutput {
    /// Console output of the command (its stdout and stderr, `\r` removed).
    pub output: String,
    /// The command's exit code.
    pub exit_code: i32,
    /// Everything the test host printed, for diagnostics.
    pub console: String,
    /// Wall time from QEMU start to the command starting.
    pub boot_time: Duration,
    /// Wall time of the whole run.
    pub total_time: Duration,
}

mod stall;

/// Console silence after which the harness asks QEMU's monitor whether the
/// test host stalled (see [`stall`]); asked again at this interval.
const STALL_CHECK: Duration = Duration::from_secs(60);

/// Errors running the test host.
#[derive(Debug, thiserror::Error)]
pub enum TestHostError {
    /// Preparing the image failed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Building `silo-vmm` from the source tree failed.
    #[error(transparent)]
    Artifact(#[from] crate::artifacts::ArtifactError),
    /// QEMU could not be started.
    #[error("cannot start qemu-system-x86_64: {0}")]
    Spawn(std::io::Error),
    /// The run took longer than its timeout; QEMU was killed.
    #[error("the test host did not finish within {timeout:?}; last console lines:\n{tail}")]
    Timeout {
        /// The limit.
        timeout: Duration,
        /// The end of the console output.
        tail: String,
    },
    /// The test host's CPU stayed halted with an interrupt pending that
    /// QEMU never delivered (see [`stall`]): an emulator fault, not the
    /// command's; QEMU was killed.
    #[error(
        "the test host stalled: its CPU stayed halted with interrupts enabled and an interrupt \
         pending in its local APIC that QEMU never delivered (a fault of the emulator's nested \
         SVM, not of the command); QEMU killed after {silent:?} without console output. CPU \
         state:\n{state}\nlast console lines:\n{tail}"
    )]
    Stalled {
        /// How long the console had been silent.
        silent: Duration,
        /// What the monitor showed.
        state: String,
        /// The end of the console output.
        tail: String,
    },
    /// QEMU ended without the command's exit marker.
    #[error("the test host ended without running the command to completion; last console lines:\n{tail}")]
    NoExitMarker {
        /// The end of the console output.
        tail: String,
    },
    /// A file the test host needs is not on this host.
    #[error("{} is missing ({hint})", path.display())]
    Missing {
        /// The file.
        path: PathBuf,
        /// How to get it.
        hint: &'static str,
    },
    /// `ldd` failed on a binary to include.
    #[error("cannot list the shared libraries of {path}: {reason}")]
    Ldd {
        /// The binary.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

enum Source {
    Host(PathBuf),
    Bytes(Vec<u8>),
}

/// Builds (if needed) the test host image (the Debian cloud kernel and its
/// KVM modules) and returns its directory.
pub fn image() -> Result<PathBuf, TestHostError> {
    Ok(run_script("testhost/fetch.sh", "KVM test host image")?)
}

/// The right to run a test host: one at a time per machine (all
/// processes), since the test host's emulated CPU keeps a host core busy and
/// two of them on a 2-core machine halve each other's speed and make every
/// timeout a guess. Held as an exclusive `flock` on
/// `$TMPDIR/silo-testhost-slot.lock`; released on drop (or when the process
/// dies).
pub struct HostSlot {
    _file: std::fs::File,
}

impl HostSlot {
    /// Waits for the slot, saying so on stderr when another run holds it.
    pub fn acquire() -> Result<Self, TestHostError> {
        // Machine-wide (not per cache directory): two checkouts or CI runs
        // on one machine share its cores too.
        let path = std::env::temp_dir().join("silo-testhost-slot.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(ImageError::io(format!("opening {}", path.display())))?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let waited = Instant::now();
            eprintln!("[testhost] waiting for another test host to finish (one at a time)");
            // SAFETY: as above; blocks until the holder releases it.
            if unsafe { libc::flock(fd, libc::LOCK_EX) } != 0 {
                return Err(ImageError::io(format!("locking {}", path.display()))(
                    std::io::Error::last_os_error(),
                )
                .into());
            }
            eprintln!("[testhost] slot free after {:.1?}", waited.elapsed());
        }
        Ok(Self { _file: file })
    }
}

/// A test host run being assembled: files to include, resources, timeout.
pub struct TestHost {
    files: Vec<(String, Source, u32)>,
    memory_mib: u32,
    cpus: u32,
    timeout: Duration,
    port_forwards: Vec<(u16, u16)>,
    netfilter: bool,
    slot: Option<HostSlot>,
    heartbeat: Option<Duration>,
}

impl Default for TestHost {
    fn default() -> Self {
        Self::new()
    }
}

static RUN_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Removes a run directory when dropped, unless asked to keep it.
struct RunDir {
    path: PathBuf,
    keep: bool,
}
impl Drop for RunDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("[testhost] kept {} ({KEEP_ENV})", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Kills and reaps QEMU when dropped.
struct KillOnDrop(Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl TestHost {
    /// A test host with 2 GiB, 1 CPU and a 10-minute timeout.
    pub fn new() -> Self {
        Self {
            files: Vec::new(),
            memory_mib: 2048,
            cpus: 1,
            timeout: Duration::from_secs(600),
            port_forwards: Vec::new(),
            netfilter: false,
            slot: None,
            heartbeat: None,
        }
    }

    /// Declares that the command prints a line at least every `every` while
    /// it runs (a heartbeat): once it has started, console silence for four
    /// heartbeats means the test host itself stopped (QEMU's TCG also
    /// stalls with its CPU spinning, which [`stall`] cannot see), and the
    /// run ends as [`TestHostError::Stalled`].
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = Some(every);
        self
    }

    /// Includes the host file `host` at `guest` with permission bits `mode`.
    pub fn file(mut self, host: impl Into<PathBuf>, guest: &str, mode: u32) -> Self {
        self.files
            .push((guest.to_string(), Source::Host(host.into()), mode));
        self
    }

    /// Includes `data` at `guest`.
    pub fn bytes(mut self, guest: &str, data: impl Into<Vec<u8>>, mode: u32) -> Self {
        self.files
            .push((guest.to_string(), Source::Bytes(data.into()), mode));
        self
    }

    /// Includes a dynamically linked binary at `guest` plus every shared
    /// library `ldd` lists, at the same absolute paths.
    pub fn binary_with_libs(
        mut self,
        host: impl AsRef<Path>,
        guest: &str,
    ) -> Result<Self, TestHostError> {
        let host = host.as_ref();
        if !host.is_file() {
            return Err(TestHostError::Missing {
                path: host.to_path_buf(),
                hint: "build or install it first",
            });
        }
        for lib in shared_libraries(host)? {
            let g = lib.to_string_lossy().to_string();
            if !self.files.iter().any(|(p, _, _)| *p == g) {
                self.files.push((g, Source::Host(lib), 0o755));
            }
        }
        self.files
            .push((guest.to_string(), Source::Host(host.to_path_buf()), 0o755));
        Ok(self)
    }

    /// Includes silo's two programs: `silo` (the daemon and CLI) at
    /// `/bin/silo` and the VMM (`$SILO_VMM`, else `silo-vmm` beside `silo`)
    /// at `/bin/silo-vmm`, where the daemon looks for it.
    pub fn silo_binaries(self, silo: impl AsRef<Path>) -> Result<Self, TestHostError> {
        let silo = silo.as_ref();
        let vmm = crate::artifacts::vmm_for(silo)?;
        if !vmm.is_file() {
            return Err(TestHostError::Missing {
                path: vmm,
                hint: "build it: cargo build -p silo-vmm (same profile as silo)",
            });
        }
        self.binary_with_libs(silo, "/bin/silo")?
            .binary_with_libs(vmm, "/bin/silo-vmm")
    }

    /// Runs in a [`HostSlot`] the caller already holds (so that the caller
    /// can start its own clocks only once the slot is theirs); without it,
    /// [`TestHost::run`] waits for the slot itself.
    pub fn in_slot(mut self, slot: HostSlot) -> Self {
        self.slot = Some(slot);
        self
    }

    /// Sets the test host's memory.
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    /// Sets the test host's CPU count.
    pub fn cpus(mut self, n: u32) -> Self {
        self.cpus = n.max(1);
        self
    }

    /// Sets the limit for the whole run.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Includes Debian's QEMU (`qemu-system-x86_64` with its shared
    /// libraries, at [`QEMU_IN_TEST_HOST`]) and the firmware `-M microvm`
    /// with `-kernel` loads, so a peer VMM runs inside the test host:
    /// `qemu-system-x86_64 -M microvm -enable-kvm -cpu host -nodefaults
    /// -no-user-config -display none -serial stdio -kernel K -initrd I`.
    pub fn with_qemu(self) -> Result<Self, TestHostError> {
        let mut host = self.binary_with_libs(QEMU_HOST_PATH, QEMU_IN_TEST_HOST)?;
        // QEMU finds its data directory relative to its own binary
        // (`../share/qemu`), so the binary sits in /usr/bin as on the host.
        for fw in QEMU_MICROVM_FIRMWARE {
            let path = Path::new("/usr/share/qemu").join(fw);
            if !path.exists() {
                return Err(TestHostError::Missing {
                    path,
                    hint: "apt-get install qemu-system-data",
                });
            }
            host = host.file(&path, &path.to_string_lossy(), 0o644);
        }
        Ok(host)
    }

    /// Makes the test host able to run silo's `[network]`: Debian's `nft`
    /// and iproute2's `ip` (from this host, with their shared libraries;
    /// `ip` at `/bin/ip` in place of busybox's), and the kernel modules
    /// `modules/nft.order` lists (veth and the nftables modules, in load
    /// order; and tun) loaded at boot. Tests without it start as before.
    pub fn with_netfilter(self) -> Result<Self, TestHostError> {
        let mut host = self;
        for (name, guest) in [("nft", "/bin/nft"), ("ip", "/bin/ip")] {
            let path = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
                .iter()
                .map(|d| Path::new(d).join(name))
                .find(|p| p.is_file())
                .ok_or(TestHostError::Missing {
                    path: PathBuf::from(format!("/usr/sbin/{name}")),
                    hint: "apt-get install nftables iproute2",
                })?;
            host = host.binary_with_libs(path, guest)?;
        }
        host.netfilter = true;
        Ok(host)
    }

    /// Forwards `127.0.0.1:host_port` on this host to `guest_port` in the
    /// test host (QEMU user-mode networking on a virtio-net NIC; the test
    /// host is `10.0.2.15/24`, gateway `10.0.2.2`). Until a server listens in
    /// the test host, connections are accepted and then closed at once, so
    /// clients should retry. [`TestHost::run`] blocks: call it on a thread.
    pub fn port_forward(mut self, host_port: u16, guest_port: u16) -> Self {
        self.port_forwards.push((host_port, guest_port));
        self
    }

    fn initramfs(&self, image: &Path, command: &str) -> Result<Vec<u8>, ImageError> {
        let io = |what: String| {
            move |e| ImageError::Io {
                context: what,
                source: e,
            }
        };
        let mut w = NewcWriter::new(Vec::with_capacity(64 << 20));
        for d in [
            "/dev",
            "/proc",
            "/sys",
            "/tmp",
            "/run",
            "/bin",
            "/sbin",
            "/usr/bin",
            "/usr/sbin",
            "/work",
        ] {
            w.dir(d, 0o755).map_err(io(format!("adding {d}")))?;
        }
        w.char_device("/dev/console", 0o600, 5, 1)
            .map_err(io("adding /dev/console".into()))?;
        let busybox = std::fs::read(crate::guest::BUSYBOX).map_err(ImageError::io(
            "reading /bin/busybox (apt-get install busybox-static)",
        ))?;
        w.file("/bin/busybox", 0o755, &busybox)
            .map_err(io("adding busybox".into()))?;
        let mut modules = vec!["irqbypass".to_string(), "kvm".into(), "kvm-amd".into()];
        if !self.port_forwards.is_empty() {
            let order = image.join("modules").join("net.order");
            let text = std::fs::read_to_string(&order)
                .map_err(ImageError::io(format!("reading {}", order.display())))?;
            modules.extend(text.split_whitespace().map(str::to_string));
            w.file("/modules/net.order", 0o644, text.as_bytes())
                .map_err(io("adding net.order".into()))?;
        }
        if self.netfilter {
            let order = image.join("modules").join("nft.order");
            let mut text = std::fs::read_to_string(&order)
                .map_err(ImageError::io(format!("reading {}", order.display())))?;
            if self.port_forwards.is_empty() {
                // The taps' /dev/net/tun (net.order loads it otherwise).
                text.insert_str(0, "tun\n");
            }
            modules.extend(text.split_whitespace().map(str::to_string));
            w.file("/modules/nft.order", 0o644, text.as_bytes())
                .map_err(io("adding nft.order".into()))?;
        }
        for m in &modules {
            let p = image.join("modules").join(format!("{m}.ko"));
            let data =
                std::fs::read(&p).map_err(ImageError::io(format!("reading {}", p.display())))?;
            w.file(&format!("/modules/{m}.ko"), 0o644, &data)
                .map_err(io(format!("adding module {m}")))?;
        }
        for (guest, src, mode) in &self.files {
            let data = match src {
                Source::Host(p) => {
                    std::fs::read(p).map_err(ImageError::io(format!("reading {}", p.display())))?
                }
                Source::Bytes(b) => b.clone(),
            };
            w.file(guest, *mode, &data)
                .map_err(io(format!("adding {guest}")))?;
        }
        w.file("/command.sh", 0o755, command.as_bytes())
            .map_err(io("adding the command".into()))?;
        w.file("/init", 0o755, INIT.as_bytes())
            .map_err(io("adding /init".into()))?;
        w.finish()
            .map_err(io("finishing the test host initramfs".into()))
    }

    /// Boots the test host and runs `command` (a `sh` script) in `/work`.
    ///
    /// Progress lines and the command's output go to stderr as they arrive,
    /// prefixed `[testhost]`. QEMU is killed and the run directory removed on
    /// every path out, including errors and timeouts (kept when
    /// `SILO_TESTHOST_KEEP` is set).
    ///
    /// A run the harness recognises as an emulator stall
    /// ([`TestHostError::Stalled`]: QEMU 7.2's TCG left the test host's CPU
    /// halted with an interrupt pending, see `images/README.md`) is run
    /// again from scratch, at most [`STALL_RETRIES_ENV`] times (default 1),
    /// saying so with the stall's evidence; any other failure is returned
    /// at once. The command runs whole each time in a fresh test host, so
    /// it must not depend on state a stalled attempt left outside it.
    pub fn run(&self, command: &str) -> Result<TestHostOutput, TestHostError> {
        let retries: u32 = std::env::var(STALL_RETRIES_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        let mut attempt = 0;
        loop {
            match self.run_once(command) {
                Err(e @ TestHostError::Stalled { .. }) if attempt < retries => {
                    attempt += 1;
                    eprintln!(
                        "[testhost] EMULATOR STALL (attempt {attempt} of {}), running the \
                         command again in a fresh test host: {e}",
                        retries + 1
                    );
                }
                other => return other,
            }
        }
    }

    /// One attempt of [`TestHost::run`], a stall returned as
    /// [`TestHostError::Stalled`] and not retried: for a caller that must
    /// redo more than the command when the emulator stalls (a daemon whose
    /// clients run outside the test host).
    pub fn run_once(&self, command: &str) -> Result<TestHostOutput, TestHostError> {
        let image = run_script("testhost/fetch.sh", "KVM test host image")?;
        let _slot = match self.slot {
            Some(_) => None,
            None => Some(HostSlot::acquire()?),
        };
        remove_stale_run_dirs();
        let run_dir = cache_dir().join(format!(
            "run-{}-{}",
            std::process::id(),
            RUN_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&run_dir)
            .map_err(ImageError::io(format!("creating {}", run_dir.display())))?;
        let _cleanup = RunDir {
            path: run_dir.clone(),
            keep: std::env::var_os(KEEP_ENV).is_some(),
        };
        let cpio_path = run_dir.join("testhost.cpio");
        let cpio = self.initramfs(&image, command)?;
        std::fs::write(&cpio_path, &cpio)
            .map_err(ImageError::io(format!("writing {}", cpio_path.display())))?;
        drop(cpio);
        let log_path = run_dir.join("console.log");
        let log = std::fs::File::create(&log_path)
            .map_err(ImageError::io(format!("creating {}", log_path.display())))?;
        self.boot(&image, &cpio_path, log)
    }

    /// The QEMU command line for one run.
    fn qemu_command(&self, image: &Path, cpio: &Path, monitor: &Path) -> Command {
        let mut cmd = Command::new("qemu-system-x86_64");
        let cpu = std::env::var("SILO_TESTHOST_CPU").unwrap_or_else(|_| "EPYC,+svm,+npt".into());
        cmd.args(["-accel", "tcg,thread=multi", "-M", "q35"])
            .args(["-cpu", &cpu])
            .args(["-m", &self.memory_mib.to_string()])
            .args(["-smp", &self.cpus.to_string()])
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .args(["-serial", "stdio", "-no-reboot"])
            .arg("-kernel")
            .arg(image.join("vmlinuz"))
            .arg("-initrd")
            .arg(cpio)
            .args([
                "-append",
                "console=ttyS0 quiet loglevel=1 panic=-1 rdinit=/init clocksource=hpet",
            ]);
        if !self.port_forwards.is_empty() {
            let mut netdev = String::from("user,id=net0");
            for (h, g) in &self.port_forwards {
                netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{h}-:{g}"));
            }
            // No option ROM: the test host boots its kernel directly.
            cmd.args(["-netdev", &netdev])
                .args(["-device", "virtio-net-pci,netdev=net0,romfile="]);
        }
        // QEMU's monitor on a Unix socket: the harness recognises a stalled
        // test host through it ([`stall`]), and so can a person
        // (`info registers`, `info lapic`).
        let mut arg = std::ffi::OsString::from("unix:");
        arg.push(monitor);
        arg.push(",server=on,wait=off");
        cmd.arg("-monitor").arg(arg);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Runs QEMU to the end of the command, streaming and logging its console.
    fn boot(
        &self,
        image: &Path,
        cpio: &Path,
        mut log: std::fs::File,
    ) -> Result<TestHostOutput, TestHostError> {
        let started = Instant::now();
        eprintln!(
            "[testhost] booting QEMU TCG test host (nested SVM, {} MiB, {} CPU{}); timeout {:?}",
            self.memory_mib,
            self.cpus,
            if self.port_forwards.is_empty() {
                ""
            } else {
                ", port forwarding"
            },
            self.timeout
        );
        // In the run directory (removed with it), unless that path is too
        // long for a Unix socket (108 bytes).
        let monitor = std::env::var_os("SILO_TESTHOST_MONITOR")
            .map(PathBuf::from)
            .unwrap_or_else(|| cpio.with_file_name("monitor.sock"));
        let monitor = if monitor.as_os_str().len() < 100 {
            monitor
        } else {
            std::env::temp_dir().join(format!("silo-testhost-{}.sock", std::process::id()))
        };
        let child = self
            .qemu_command(image, cpio, &monitor)
            .spawn()
            .map_err(TestHostError::Spawn)?;
        let mut child = KillOnDrop(child);
        let stdout = child.0.stdout.take().expect("piped stdout");
        let mut stderr = child.0.stderr.take().expect("piped stderr");
        let verbose = std::env::var_os(VERBOSE_ENV).is_some();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).split(b'\n') {
                let Ok(line) = line else { break };
                let line = String::from_utf8_lossy(&line).replace('\r', "");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let err_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });

        let deadline = started + self.timeout;
        let mut console = Vec::new();
        let mut begun_at = None;
        let mut exit_code = None;
        let mut last_line = Instant::now();
        let mut last_check = Instant::now();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.min(Duration::from_millis(500))) {
                Ok(line) => {
                    last_line = Instant::now();
                    let _ = writeln!(log, "{line}");
                    if line.starts_with(BEGIN) && begun_at.is_none() {
                        begun_at = Some(started.elapsed());
                        eprintln!(
                            "[testhost] up after {:.1?}; running the command",
                            started.elapsed()
                        );
                    } else if let Some(rc) = line.strip_prefix(EXIT) {
                        exit_code = rc.trim().parse::<i32>().ok();
                    } else if verbose || begun_at.is_some() {
                        eprintln!("[testhost] {line}");
                    } else if line.starts_with("[testhost] ") {
                        // The init's own notes (TSC calibration, a module
                        // that failed to load) before the command starts.
                        eprintln!("{line}");
                    }
                    console.push(line);
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if last_line.elapsed() >= STALL_CHECK && last_check.elapsed() >= STALL_CHECK {
                        last_check = Instant::now();
                        if let Some(state) = stall::stalled(&monitor) {
                            drop(child);
                            eprintln!("[testhost] stalled (QEMU did not deliver a pending interrupt); QEMU killed:\n{state}");
                            return Err(TestHostError::Stalled {
                                silent: last_line.elapsed(),
                                state,
                                tail: tail(&console),
                            });
                        }
                    }
                    if let Some(every) = self.heartbeat {
                        if begun_at.is_some() && last_line.elapsed() >= every * 4 {
                            drop(child);
                            let state = format!(
                                "no heartbeat for {:?} from a command that prints one every {every:?}: \
                                 the test host stopped running its timers",
                                last_line.elapsed()
                            );
                            eprintln!("[testhost] stalled ({state}); QEMU killed");
                            return Err(TestHostError::Stalled {
                                silent: last_line.elapsed(),
                                state,
                                tail: tail(&console),
                            });
                        }
                    }
                    if Instant::now() >= deadline {
                        drop(child);
                        eprintln!("[testhost] timed out after {:?}; QEMU killed", self.timeout);
                        return Err(TestHostError::Timeout {
                            timeout: self.timeout,
                            tail: tail(&console),
                        });
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        let _ = child.0.wait();
        let _ = reader.join();
        let qemu_err = err_reader.join().unwrap_or_default();
        let _ = writeln!(log, "--- qemu stderr ---\n{qemu_err}");
        let total_time = started.elapsed();
        let Some(exit_code) = exit_code else {
            let mut t = tail(&console);
            if !qemu_err.trim().is_empty() {
                t.push_str("\nqemu stderr: ");
                t.push_str(qemu_err.trim());
            }
            return Err(TestHostError::NoExitMarker { tail: t });
        };
        let begin = console
            .iter()
            .position(|l| l.starts_with(BEGIN))
            .map_or(0, |i| i + 1);
        let end = console
            .iter()
            .rposition(|l| l.starts_with(EXIT))
            .unwrap_or(console.len());
        let output = console[begin..end.max(begin)].join("\n");
        eprintln!("[testhost] command exited {exit_code} after {total_time:.1?}");
        Ok(TestHostOutput {
            output,
            exit_code,
            console: console.join("\n"),
            boot_time: begun_at.unwrap_or_default(),
            total_time,
        })
    }
}

/// Removes run directories left by test processes that were killed before
/// they could clean up (`run-<pid>-<n>` whose process is gone).
fn remove_stale_run_dirs() {
    let Ok(entries) = std::fs::read_dir(cache_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(pid) = name
            .strip_prefix("run-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new("/proc").join(pid.to_string()).exists() {
            tracing::debug!(dir = %e.path().display(), "removing a stale test host run directory");
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn tail(lines: &[String]) -> String {
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Shared libraries (and the loader) a dynamic binary needs, from `ldd`.
fn shared_libraries(bin: &Path) -> Result<Vec<PathBuf>, TestHostError> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .map_err(|e| TestHostError::Ldd {
            path: bin.to_path_buf(),
            reason: e.to_string(),
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // Static binaries make ldd fail with "not a dynamic executable".
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

/// The test host's `/init` (busybox `sh`).
const INIT: &str = include_str!("../testhost/init.sh");
