//! The KVM test host: a QEMU TCG machine whose emulated AMD CPU has SVM with
//! nested paging, so it gets a real, hardware-style `/dev/kvm` even where the
//! build machine's own KVM cannot boot standard guests (PVM hosts).
//!
//! A [`TestHost`] packs busybox, Debian's cloud kernel modules for KVM and
//! the caller's files into an initramfs, boots it, runs one shell command,
//! and returns the command's console output and exit code. QEMU is killed and
//! every temporary file removed on every path out, including timeouts.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::{cache_dir, run_script, ImageError};

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

mod initramfs;
mod qemu;
mod slot;
mod stall;
mod swap;
pub use swap::{swap_files, zram_swap_script, ZRAM_DISKSIZE};

use initramfs::shared_libraries;
pub use slot::HostSlot;

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
    /// The test host stopped making progress through a fault of the
    /// emulator, not of the command (see [`stall`]): its CPU stayed halted
    /// with an interrupt pending that QEMU never delivered, or a command's
    /// console heartbeat stopped; QEMU was killed.
    #[error(
        "the test host stalled: {how} (a fault of the emulator's nested SVM, not of the \
         command); QEMU killed after {silent:?} without console output. CPU state:\n{state}\n\
         last console lines:\n{tail}"
    )]
    Stalled {
        /// What was seen: a halted CPU with an undelivered interrupt, or a
        /// heartbeat that stopped.
        how: &'static str,
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
    /// again from scratch, at most [`STALL_RETRIES_ENV`] times (default 2: a 7-minute run in CI met two stalls in a row),
    /// saying so with the stall's evidence; any other failure is returned
    /// at once. The command runs whole each time in a fresh test host, so
    /// it must not depend on state a stalled attempt left outside it.
    pub fn run(&self, command: &str) -> Result<TestHostOutput, TestHostError> {
        let retries: u32 = std::env::var(STALL_RETRIES_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2);
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
