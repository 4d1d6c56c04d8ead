//! Execution environments backed by microVMs: each one is a `silo-vmm` child
//! process with a vsock device whose host side is a Unix socket in a private
//! directory. The guest agent connects to host port 1024, says hello, and
//! then serves invocations over silo-proto frames.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use silo_proto::asynchronous::{read_message, write_message};
use silo_proto::{BootTiming, LogStream, Message, Outcome, AGENT_PORT};
use tokio::net::{UnixListener, UnixStream};
use tokio::process::{Child, Command};

/// Bytes of log kept per invocation (Lambda's `LogType: Tail` returns 4 KB).
pub const LOG_TAIL: usize = 4096;

/// What a VM is booted from.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// Guest kernel.
    pub kernel: PathBuf,
    /// Initramfs with the agent and the function.
    pub initrd: PathBuf,
    /// Guest memory.
    pub mem_mib: u32,
    /// vCPUs.
    pub vcpus: u8,
    /// How long to wait for the agent's hello.
    pub boot_timeout: Duration,
}

/// Errors of a VM environment; any of them means the VM is gone or unusable.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// Setting up the VM's directory or socket failed.
    #[error("preparing the VM: {0}")]
    Setup(String),
    /// The VMM process failed or the agent never said hello.
    #[error("the VM did not start: {0}")]
    Boot(String),
    /// The agent broke the protocol or the connection.
    #[error("the guest agent failed: {0}")]
    Protocol(String),
    /// The function's runtime exited or timed out; the VM is discarded.
    #[error("the function's runtime exited or timed out; its microVM is discarded")]
    FunctionCrashed(Box<InvokeResult>),
    /// No result before the deadline (plus grace).
    #[error("the invocation did not return before its deadline")]
    TimedOut,
}

/// Phases of one VM's start, measured by the host.
#[derive(Debug, Clone, Copy)]
pub struct BootReport {
    /// From spawning the VMM to the agent's hello.
    pub spawn_to_ready: Duration,
    /// The guest's own clock.
    pub guest: BootTiming,
    /// Every phase in one clock domain (the host's CLOCK_MONOTONIC).
    pub timeline: BootTimeline,
}

/// A VM's start, phase by phase, in milliseconds since the host spawned its
/// VMM process: host-side phases from CLOCK_MONOTONIC readings in the VMM
/// and here; the guest's init placed before the hello's arrival by the
/// guest-measured time from init to hello. `None` where the VMM's timeline
/// file could not be read.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct BootTimeline {
    /// The VMM process started (`main`).
    pub vmm_process_start_ms: Option<f64>,
    /// Kernel and initrd loaded into guest memory.
    pub kernel_loaded_ms: Option<f64>,
    /// KVM VM and vCPUs created, devices set up.
    pub vm_created_ms: Option<f64>,
    /// The boot vCPU's first KVM_RUN.
    pub first_kvm_run_ms: Option<f64>,
    /// The guest kernel started init (the agent, PID 1).
    pub guest_init_ms: Option<f64>,
    /// The agent's hello arrived over vsock: the environment is ready.
    pub agent_ready_ms: f64,
    /// The first invocation's result arrived (set after it).
    pub first_invocation_answered_ms: Option<f64>,
}

/// Reads the VMM's timeline file and places every phase after `spawn_ns`.
fn read_timeline(path: &Path, spawn_ns: u64, ready: Duration, guest: &BootTiming) -> BootTimeline {
    let mut t = BootTimeline {
        agent_ready_ms: ready.as_secs_f64() * 1e3,
        ..BootTimeline::default()
    };
    let Some(v) = std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
    else {
        return t;
    };
    let Some(start_ns) = v["process_start_monotonic_ns"].as_u64() else {
        return t;
    };
    let base_ms = (start_ns as f64 - spawn_ns as f64) / 1e6;
    let at = |k: &str| v[k].as_f64().map(|us| base_ms + us / 1e3);
    t.vmm_process_start_ms = Some(base_ms);
    t.kernel_loaded_ms = at("kernel_loaded_us");
    t.vm_created_ms = at("vm_created_us");
    t.first_kvm_run_ms = at("first_kvm_run_us");
    // Anchored to the hello's arrival and placed back by the guest-measured
    // interval from init to hello (tens of ms): only the guest clock's rate
    // over that short interval matters, not its offset, which under nested
    // emulation is off by a second.
    let init_to_ready_ms = guest
        .kernel_uptime_at_ready_ns
        .saturating_sub(guest.kernel_uptime_at_agent_start_ns) as f64
        / 1e6;
    t.guest_init_ms =
        Some((t.agent_ready_ms - init_to_ready_ms).max(t.first_kvm_run_ms.unwrap_or(0.0)));
    t
}

/// The result of one invocation.
#[derive(Debug, Clone)]
pub struct InvokeResult {
    /// Response payload or function error.
    pub outcome: Outcome,
    /// The last [`LOG_TAIL`] bytes of the invocation's output.
    pub log_tail: Vec<u8>,
    /// Round trip from sending the invoke to the result.
    pub duration: Duration,
}

/// A running VM with its agent connected.
pub struct VmEnv {
    child: Child,
    conn: UnixStream,
    dir: PathBuf,
    started: Instant,
    /// Boot measurements.
    pub boot: BootReport,
}

static NEXT_VM: AtomicU64 = AtomicU64::new(0);

/// CLOCK_MONOTONIC now, in nanoseconds: the clock of the VMM's
/// `--timeline-file` (and of `Instant` on Linux), so that the spawn time
/// and the VMM's phases line up.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we pass, which lives on
    // our stack for the duration of the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Where the VMM program is: `$SILO_VMM` if set, else `silo-vmm` beside
/// this executable (as `cargo build` and `cargo install` place them).
pub fn vmm_binary() -> Result<PathBuf, EnvError> {
    if let Some(p) = std::env::var_os("SILO_VMM") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(EnvError::Setup(format!(
                "SILO_VMM={} is not a file",
                p.display()
            )))
        };
    }
    let exe = std::env::current_exe()
        .map_err(|e| EnvError::Setup(format!("cannot find this executable: {e}")))?;
    let vmm = exe.with_file_name("silo-vmm");
    if vmm.is_file() {
        Ok(vmm)
    } else {
        Err(EnvError::Setup(format!(
            "the VMM program {} is missing: build it with `cargo build --release -p silo-vmm` \
             (or `cargo install --path vmm`) so that it sits beside {}, or set SILO_VMM",
            vmm.display(),
            exe.display()
        )))
    }
}

/// A new VM's directory under `run_dir`: `vm-<daemon pid>-<counter>`. Built
/// from numbers only: nothing from the request (tenant id, function name)
/// ever becomes part of a VM's paths.
pub(crate) fn new_vm_dir(run_dir: &Path) -> PathBuf {
    let n = NEXT_VM.fetch_add(1, Ordering::Relaxed);
    run_dir.join(format!("vm-{}-{n}", std::process::id()))
}

impl VmEnv {
    /// Boots a VM from `spec` under `run_dir` and waits for its agent.
    pub async fn boot(spec: &VmSpec, run_dir: &Path) -> Result<Self, EnvError> {
        let dir = new_vm_dir(run_dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| EnvError::Setup(format!("{}: {e}", dir.display())))?;
        let uds = dir.join("vsock");
        let listener = UnixListener::bind(format!("{}_{AGENT_PORT}", uds.display()))
            .map_err(|e| EnvError::Setup(format!("agent socket: {e}")))?;
        let started = Instant::now();
        let mut cmd = Command::new(vmm_binary()?);
        cmd.arg("--kernel")
            .arg(&spec.kernel)
            .arg("--initrd")
            .arg(&spec.initrd)
            .arg("--mem-mib")
            .arg(spec.mem_mib.to_string())
            .arg("--vcpus")
            .arg(spec.vcpus.to_string())
            .arg("--vsock-cid")
            .arg("3")
            .arg("--vsock-uds")
            .arg(&uds)
            .arg("--serial")
            .arg(format!("file:{}", dir.join("console.log").display()))
            .arg("--timeline-file")
            .arg(dir.join("timeline.json"))
            .env("SILO_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("vmm.log"))
                    .map_err(|e| EnvError::Setup(e.to_string()))?,
            ))
            .kill_on_drop(true);
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: between fork and exec only async-signal-safe calls are
        // made (prctl, getppid); no allocation, no locks. A VMM must not
        // outlive the daemon that owns it, even if the daemon is SIGKILLed.
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::getppid() != parent {
                    return Err(std::io::Error::other("the parent exited"));
                }
                Ok(())
            });
        }
        let spawn_ns = monotonic_ns();
        let child = cmd
            .spawn()
            .map_err(|e| EnvError::Boot(format!("cannot start the VMM: {e}")))?;
        let mut env_guard = Guard {
            child: Some(child),
            dir: Some(dir.clone()),
        };
        let accept = tokio::time::timeout(spec.boot_timeout, listener.accept());
        let mut conn = match accept.await {
            Ok(Ok((c, _))) => c,
            Ok(Err(e)) => return Err(EnvError::Boot(format!("agent socket accept: {e}"))),
            Err(_) => {
                let tail = console_tail(&dir);
                return Err(EnvError::Boot(format!(
                    "the guest agent did not connect within {:?}; console tail:\n{tail}",
                    spec.boot_timeout
                )));
            }
        };
        let hello = tokio::time::timeout(spec.boot_timeout, read_message(&mut conn))
            .await
            .map_err(|_| EnvError::Boot("no hello from the agent".into()))?
            .map_err(|e| EnvError::Boot(format!("agent hello: {e}")))?;
        let Message::Hello { boot, .. } = hello else {
            return Err(EnvError::Boot(format!("expected hello, got {hello:?}")));
        };
        let spawn_to_ready = started.elapsed();
        let timeline = read_timeline(&dir.join("timeline.json"), spawn_ns, spawn_to_ready, &boot);
        let (child, dir) = env_guard.disarm();
        Ok(Self {
            child,
            conn,
            dir,
            started,
            boot: BootReport {
                spawn_to_ready,
                guest: boot,
                timeline,
            },
        })
    }

    /// Runs one invocation; waits until `deadline_unix_ms` plus a grace period.
    pub async fn invoke(
        &mut self,
        msg: Message,
        deadline: Duration,
    ) -> Result<InvokeResult, EnvError> {
        let Message::Invoke { request_id, .. } = &msg else {
            return Err(EnvError::Protocol(
                "invoke() takes an Invoke message".into(),
            ));
        };
        let id = request_id.clone();
        let started = Instant::now();
        write_message(&mut self.conn, &msg)
            .await
            .map_err(|e| EnvError::Protocol(format!("sending invoke: {e}")))?;
        let mut tail: Vec<u8> = Vec::new();
        let wait = async {
            loop {
                match read_message(&mut self.conn).await {
                    Ok(Message::Result {
                        request_id,
                        outcome,
                    }) if request_id == id => return Ok(outcome),
                    Ok(Message::Result { request_id, .. }) => {
                        return Err(EnvError::Protocol(format!(
                            "result for unknown request {request_id}"
                        )))
                    }
                    Ok(Message::Log { line, stream, .. }) => {
                        if stream != LogStream::Agent || line.starts_with("[silo]") {
                            tail.extend_from_slice(line.as_bytes());
                            tail.push(b'\n');
                            if tail.len() > 2 * LOG_TAIL {
                                tail.drain(..tail.len() - LOG_TAIL);
                            }
                        }
                    }
                    Ok(other) => {
                        return Err(EnvError::Protocol(format!("unexpected message {other:?}")))
                    }
                    Err(e) => return Err(EnvError::Protocol(format!("{e}"))),
                }
            }
        };
        // The agent enforces the deadline itself; the grace covers its report.
        let outcome = tokio::time::timeout(deadline + Duration::from_secs(5), wait)
            .await
            .map_err(|_| EnvError::TimedOut)??;
        if tail.len() > LOG_TAIL {
            tail.drain(..tail.len() - LOG_TAIL);
        }
        if self.boot.timeline.first_invocation_answered_ms.is_none() {
            self.boot.timeline.first_invocation_answered_ms =
                Some(self.started.elapsed().as_secs_f64() * 1e3);
        }
        Ok(InvokeResult {
            outcome,
            log_tail: tail,
            duration: started.elapsed(),
        })
    }

    /// The VMM's resident memory minus the guest RAM pages it has touched,
    /// in KiB (the way Firecracker states its overhead), from /proc smaps.
    pub fn vmm_memory_overhead_kib(&self, mem_mib: u32) -> Option<u64> {
        let pid = self.child.id()?;
        let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
        let (mut total, mut guest) = (0u64, 0u64);
        let mut in_guest = false;
        for line in smaps.lines() {
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next()) {
                (Some("Size:"), Some(kb)) => {
                    in_guest = kb.parse::<u64>().ok() == Some(u64::from(mem_mib) * 1024)
                }
                (Some("Rss:"), Some(kb)) => {
                    let kb: u64 = kb.parse().ok()?;
                    total += kb;
                    if in_guest {
                        guest += kb;
                    }
                }
                _ => {}
            }
        }
        Some(total - guest)
    }

    /// Asks the agent to end the VM, then makes sure the VMM is gone and its
    /// directory removed.
    pub async fn shutdown(mut self) {
        let _ = write_message(&mut self.conn, &Message::Shutdown).await;
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for VmEnv {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Kills the VMM and removes its directory unless disarmed.
struct Guard {
    child: Option<Child>,
    dir: Option<PathBuf>,
}

impl Guard {
    fn disarm(&mut self) -> (Child, PathBuf) {
        (
            self.child.take().expect("child"),
            self.dir.take().expect("dir"),
        )
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.start_kill();
        }
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn console_tail(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("console.log")).unwrap_or_default()
        + &std::fs::read_to_string(dir.join("vmm.log")).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
