//! Execution environments backed by microVMs: each one is a `silo-vmm` child
//! process with a vsock device whose host side is a Unix socket in a private
//! directory. The guest agent connects to host port 1024, says hello, and
//! then serves invocations over silo-proto frames.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::jail::{JailLease, JailMode};
use silo_proto::asynchronous::{read_message, write_message};
use silo_proto::{BootTiming, ErrorInfo, LogStream, Message, Outcome, AGENT_PORT};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{UnixListener, UnixStream};
use tokio::process::{Child, Command};

use crate::console::Console;

/// Bytes of log kept per invocation (Lambda's `LogType: Tail` returns 4 KB).
pub const LOG_TAIL: usize = 4096;

/// What the daemon waits beyond a function's timeout for the agent to take
/// the invoke and report (the agent enforces the timeout itself).
pub const RESULT_GRACE: Duration = Duration::from_secs(5);

/// Bytes of console and VMM log tail logged when a failed VM ends.
const FAILURE_TAIL: usize = 2048;

/// How long the `Shutdown` frame may take to be written.
const SHUTDOWN_WRITE: Duration = Duration::from_secs(1);

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
    /// Whether and how the VMM is jailed.
    pub jail: JailMode,
    /// A managed runtime's read-only image, shared by every VM of that
    /// runtime (`--pmem`: the guest mounts it at /rt with DAX).
    pub pmem: Option<PathBuf>,
    /// Bytes of the serial console kept in memory (0: console off); see
    /// [`crate::console`].
    pub console_bytes: usize,
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
    /// The runtime of a pre-booted environment could not finish its init.
    #[error("the function's runtime failed its init: {0}")]
    InitFailed(String),
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

/// Reads at most `max` bytes of `path` if it is a regular file, never
/// following a symbolic link nor blocking on a FIFO: in a jail the VMM owns
/// its directory and could put either there.
fn read_small_regular_file(path: &Path, max: u64) -> Option<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut buf = Vec::new();
    f.take(max).read_to_end(&mut buf).ok()?;
    Some(buf)
}

/// Reads the VMM's timeline file and places every phase after `spawn_ns`.
fn read_timeline(path: &Path, spawn_ns: u64, ready: Duration, guest: &BootTiming) -> BootTimeline {
    let mut t = BootTimeline {
        agent_ready_ms: ready.as_secs_f64() * 1e3,
        ..BootTimeline::default()
    };
    let Some(v) = read_small_regular_file(path, 64 * 1024)
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
    /// An exchange with the agent failed or was cut off (possibly mid-frame):
    /// nothing more is written to it, and shutdown kills the VMM at once.
    broken: bool,
    /// The VM's jail (uid and cgroup), given back once the VMM is gone.
    jail: Option<JailLease>,
    /// The VM's console and VMM log rings.
    console: Console,
    /// Whom the VM serves (for log lines).
    label: VmLabel,
    /// Function output read while waiting for the runtime's init
    /// ([`VmEnv::await_init`]): the first invocation's log tail starts
    /// with it.
    init_tail: Vec<u8>,
    /// Boot measurements.
    pub boot: BootReport,
    /// The VM's network slot, given back when the VM is gone.
    net: Option<crate::net::VmNet>,
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

/// Whom a VM serves, for its log lines only (never part of a path or an
/// argument).
#[derive(Debug, Clone, Default)]
pub struct VmLabel {
    /// The function's name.
    pub function: String,
    /// The tenant the VM is bound to, if any.
    pub tenant_id: Option<String>,
}

/// A connection to a VM's agent socket that did not come from its VMM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedPeer {
    /// The connecting process (`SO_PEERCRED`), if the kernel told.
    pub pid: Option<i32>,
    /// Its user id, if the kernel told.
    pub uid: Option<u32>,
}

/// Who may connect to a VM's agent socket: the VMM process the daemon
/// spawned (or, jailed, the VMM it forked as pid 1 of its pid namespace),
/// and when jailed only with the VM's own uid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpectedVmm {
    /// The process the daemon spawned.
    pub pid: u32,
    /// The VM's jail uid, if jailed.
    pub uid: Option<u32>,
}

impl ExpectedVmm {
    fn admits(&self, peer: &RejectedPeer) -> bool {
        let Some(pid) = peer.pid.and_then(|p| u32::try_from(p).ok()) else {
            return false;
        };
        match self.uid {
            None => pid == self.pid,
            Some(uid) => {
                peer.uid == Some(uid) && (pid == self.pid || parent_pid(pid) == Some(self.pid))
            }
        }
    }
}

/// The parent of process `pid`, from `/proc/<pid>/status`.
fn parent_pid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// How many rejected peers an [`AcceptError::TimedOut`] lists (all are
/// counted).
const REJECTED_LISTED: usize = 8;

/// Why no agent connection from the expected VMM came.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The boot timeout passed without a connection from the VMM.
    #[error(
        "the guest agent did not connect from the VMM (pid {expected_pid}) within {waited:?}{}",
        rejected_summary(.rejected, *.rejected_total)
    )]
    TimedOut {
        /// The VMM's pid.
        expected_pid: u32,
        /// How long was waited.
        waited: Duration,
        /// The first rejected connections.
        rejected: Vec<RejectedPeer>,
        /// How many connections were rejected in all.
        rejected_total: usize,
    },
    /// Accepting on the agent socket failed.
    #[error("agent socket accept: {0}")]
    Accept(std::io::Error),
    /// The VMM connected but no frame came before the boot timeout.
    #[error("no hello from the agent within {0:?}")]
    NoHello(Duration),
    /// The VMM's connection broke or carried a malformed frame.
    #[error("agent hello: {0}")]
    Hello(silo_proto::ProtoError),
    /// The first frame was not a hello.
    #[error("expected hello, got {0}")]
    NotHello(String),
}

fn rejected_summary(rejected: &[RejectedPeer], total: usize) -> String {
    if total == 0 {
        return "; no other process connected".into();
    }
    let who: Vec<String> = rejected
        .iter()
        .map(|p| match (p.pid, p.uid) {
            (Some(pid), Some(uid)) => format!("pid {pid} uid {uid}"),
            (Some(pid), None) => format!("pid {pid}"),
            _ => "unknown peer".into(),
        })
        .collect();
    let more = if total > rejected.len() { ", ..." } else { "" };
    format!(
        "; refused {total} connection(s) from other processes ({}{more})",
        who.join(", ")
    )
}

/// Waits on a VM's agent socket `listener` for the connection of its VMM,
/// the process `expected_pid`, and reads the agent's hello from it, all
/// within `timeout`.
///
/// The agent channel is authenticated by the kernel: only a connection whose
/// peer (`SO_PEERCRED`, recorded at `connect`) is the VMM this daemon
/// spawned is accepted. Any other local process of the same user that
/// connects to the socket (say, a guest that escaped into another VM's VMM)
/// is logged with `label`'s function and tenant, closed before anything is
/// written to it, and waiting goes on.
pub async fn accept_agent(
    listener: &UnixListener,
    expected: ExpectedVmm,
    timeout: Duration,
    label: &VmLabel,
) -> Result<(UnixStream, BootTiming), AcceptError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut rejected = Vec::new();
    let mut rejected_total = 0usize;
    let mut conn = loop {
        let accepted = match tokio::time::timeout_at(deadline, listener.accept()).await {
            Ok(r) => r.map_err(AcceptError::Accept)?.0,
            Err(_) => {
                return Err(AcceptError::TimedOut {
                    expected_pid: expected.pid,
                    waited: timeout,
                    rejected,
                    rejected_total,
                })
            }
        };
        let cred = accepted.peer_cred();
        let peer = RejectedPeer {
            pid: cred.as_ref().ok().and_then(|c| c.pid()),
            uid: cred.as_ref().ok().map(|c| c.uid()),
        };
        if expected.admits(&peer) {
            break accepted;
        }
        // Closed before a byte is written to it: whatever it sent is unread.
        drop(accepted);
        tracing::warn!(
            function = %label.function,
            tenant_id = %label.tenant_id.as_deref().unwrap_or("-"),
            expected_pid = expected.pid,
            expected_uid = ?expected.uid,
            peer_pid = ?peer.pid,
            peer_uid = ?peer.uid,
            peer_cred_error = ?cred.as_ref().err().map(ToString::to_string),
            "refused a connection to a VM's agent socket from a process other than its VMM"
        );
        rejected_total += 1;
        if rejected.len() < REJECTED_LISTED {
            rejected.push(peer);
        }
    };
    let hello = tokio::time::timeout_at(deadline, read_message(&mut conn))
        .await
        .map_err(|_| AcceptError::NoHello(timeout))?
        .map_err(AcceptError::Hello)?;
    let Message::Hello { boot, .. } = hello else {
        return Err(AcceptError::NotHello(format!("{hello:?}")));
    };
    Ok((conn, boot))
}

/// Sends `msg` (an invoke for request `id`) over `conn` and reads frames
/// until its result, collecting the invocation's log lines into `tail`;
/// the write and the wait together must finish within `limit`, else
/// [`EnvError::TimedOut`].
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut S,
    msg: &Message,
    id: &str,
    limit: Duration,
    tail: &mut Vec<u8>,
) -> Result<Outcome, EnvError> {
    let run = async {
        write_message(conn, msg)
            .await
            .map_err(|e| EnvError::Protocol(format!("sending invoke: {e}")))?;
        loop {
            match read_message(conn).await {
                Ok(Message::Result {
                    request_id,
                    outcome,
                }) if request_id == id => return Ok(outcome),
                Ok(Message::Result { request_id, .. }) => {
                    return Err(EnvError::Protocol(format!(
                        "result for unknown request {request_id}"
                    )))
                }
                Ok(Message::Log { line, stream, .. }) => keep_log(tail, &line, stream),
                Ok(other) => {
                    return Err(EnvError::Protocol(format!("unexpected message {other:?}")))
                }
                Err(e) => return Err(EnvError::Protocol(format!("{e}"))),
            }
        }
    };
    tokio::time::timeout(limit, run)
        .await
        .map_err(|_| EnvError::TimedOut)?
}

/// Keeps a function output line (and the agent's own `[silo]` lines) in
/// `tail`, which holds at most about two [`LOG_TAIL`]s.
fn keep_log(tail: &mut Vec<u8>, line: &str, stream: LogStream) {
    if stream != LogStream::Agent || line.starts_with("[silo]") {
        tail.extend_from_slice(line.as_bytes());
        tail.push(b'\n');
        if tail.len() > 2 * LOG_TAIL {
            tail.drain(..tail.len() - LOG_TAIL);
        }
    }
}

/// Sends [`Message::AwaitInit`] over `conn` and reads frames until the
/// agent's [`Message::InitDone`], collecting output into `tail`; within
/// `limit`, else [`EnvError::TimedOut`]. `Ok(Some(..))`: the runtime cannot
/// serve.
async fn exchange_init<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut S,
    limit: Duration,
    tail: &mut Vec<u8>,
) -> Result<Option<ErrorInfo>, EnvError> {
    let run = async {
        write_message(conn, &Message::AwaitInit)
            .await
            .map_err(|e| EnvError::Protocol(format!("sending AwaitInit: {e}")))?;
        loop {
            match read_message(conn).await {
                Ok(Message::InitDone { error }) => return Ok(error),
                Ok(Message::Log { line, stream, .. }) => keep_log(tail, &line, stream),
                Ok(other) => {
                    return Err(EnvError::Protocol(format!(
                        "unexpected message while awaiting init: {other:?}"
                    )))
                }
                Err(e) => return Err(EnvError::Protocol(format!("{e}"))),
            }
        }
    };
    tokio::time::timeout(limit, run)
        .await
        .map_err(|_| EnvError::TimedOut)?
}

impl VmEnv {
    /// Boots a VM from `spec` under `run_dir` and waits for its agent.
    pub async fn boot(spec: &VmSpec, run_dir: &Path) -> Result<Self, EnvError> {
        Self::boot_for(spec, run_dir, &VmLabel::default()).await
    }

    /// [`VmEnv::boot`] for a VM of `label`'s function and tenant (named in
    /// the logs only: never in a path or an argument).
    pub async fn boot_for(
        spec: &VmSpec,
        run_dir: &Path,
        label: &VmLabel,
    ) -> Result<Self, EnvError> {
        Self::boot_networked(spec, run_dir, label, None).await
    }

    /// [`VmEnv::boot_for`] with a network from `network` (`[network]`;
    /// `None`: loopback only), per the function's egress policy.
    pub async fn boot_networked(
        spec: &VmSpec,
        run_dir: &Path,
        label: &VmLabel,
        network: Option<&std::sync::Arc<crate::net::Network>>,
    ) -> Result<Self, EnvError> {
        let dir = new_vm_dir(run_dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| EnvError::Setup(format!("{}: {e}", dir.display())))?;
        let lease = match &spec.jail {
            JailMode::Jailed(jailer) => Some(
                jailer
                    .lease(&dir, spec.mem_mib, spec.vcpus)
                    .map_err(|e| EnvError::Setup(format!("jail: {e}")))?,
            ),
            JailMode::Insecure => {
                tracing::warn!(
                    function = %label.function,
                    tenant_id = %label.tenant_id.as_deref().unwrap_or("-"),
                    "booting an UNJAILED microVM (--insecure-no-jail)"
                );
                None
            }
            JailMode::Unavailable(why) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(EnvError::Setup(format!(
                    "this host cannot jail microVMs ({why}); start the daemon with \
                     --insecure-no-jail to run them unjailed"
                )));
            }
        };
        // Its network (prepared ahead), before the VMM that joins it.
        let net = crate::net::attach(network, label, lease.as_ref().map(JailLease::id))
            .await
            .map_err(|e| EnvError::Setup(format!("network: {e}")))?;
        // Inside a jail the VM's directory is the VMM's `/`.
        let inside = |name: &str| match &lease {
            Some(_) => Path::new("/").join(name),
            None => dir.join(name),
        };
        let uds = dir.join("vsock");
        let agent_socket = PathBuf::from(format!("{}_{AGENT_PORT}", uds.display()));
        let listener = UnixListener::bind(&agent_socket)
            .map_err(|e| EnvError::Setup(format!("agent socket: {e}")))?;
        if let Some(lease) = &lease {
            let id = Some(lease.id());
            std::os::unix::fs::chown(&agent_socket, id, id)
                .map_err(|e| EnvError::Setup(format!("agent socket: {e}")))?;
        }
        let started = Instant::now();
        let mut cmd = Command::new(vmm_binary()?);
        if let Some(lease) = &lease {
            cmd.args(lease.vmm_args(&dir));
        }
        cmd.env_clear()
            .arg("--kernel")
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
            .arg(inside("vsock"))
            .arg("--serial")
            .arg(if spec.console_bytes > 0 {
                "stdout"
            } else {
                "off"
            })
            .arg("--timeline-file")
            .arg(inside("timeline.json"))
            .arg("--managed")
            .args(net.iter().flat_map(crate::net::VmNet::vmm_args))
            .args(
                spec.pmem
                    .iter()
                    .flat_map(|p| [std::ffi::OsStr::new("--pmem"), p.as_os_str()]),
            )
            .env("SILO_LOG", "warn")
            .stdin(Stdio::null())
            // Console and VMM log go to bounded rings (crate::console).
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
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
        let mut child = cmd
            .spawn()
            .map_err(|e| EnvError::Boot(format!("cannot start the VMM: {e}")))?;
        let console = Console::start(child.stdout.take(), child.stderr.take(), spec.console_bytes);
        let mut env_guard = Guard {
            child: Some(child),
            dir: Some(dir.clone()),
            jail: lease,
        };
        let expected = ExpectedVmm {
            pid: env_guard
                .child
                .as_ref()
                .and_then(Child::id)
                .ok_or_else(|| EnvError::Boot("the VMM exited at once".into()))?,
            uid: env_guard.jail.as_ref().map(JailLease::id),
        };
        // A VMM that exits before its agent connects (a bad flag, a jail
        // step that failed, a guest that died at once) fails the boot now,
        // not at the boot timeout.
        let accepted = {
            let child = env_guard.child.as_mut().expect("child");
            tokio::select! {
                r = accept_agent(&listener, expected, spec.boot_timeout, label) => Some(r),
                _ = child.wait() => None,
            }
        };
        let (conn, boot) = match accepted {
            Some(r) => r.map_err(|e| match e {
                AcceptError::TimedOut { .. } => {
                    EnvError::Boot(format!("{e}; console tail:\n{}", console.tail(20)))
                }
                e => EnvError::Boot(e.to_string()),
            })?,
            None => {
                let status = env_guard
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten())
                    .map_or_else(|| "unknown".into(), |s| s.to_string());
                // Its pipes are closed: the rings hold all it wrote.
                let mut console = console;
                console.finish(Duration::from_secs(1)).await;
                return Err(EnvError::Boot(format!(
                    "the VMM exited ({status}) before the guest agent connected; console tail:\n{}",
                    console.tail(20)
                )));
            }
        };
        let spawn_to_ready = started.elapsed();
        let timeline = read_timeline(&dir.join("timeline.json"), spawn_ns, spawn_to_ready, &boot);
        let (child, dir, jail) = env_guard.disarm();
        if let Some(lease) = &jail {
            if let Err(e) = lease.limit_cpu() {
                tracing::warn!(
                    function = %label.function,
                    tenant_id = %label.tenant_id.as_deref().unwrap_or("-"),
                    error = %e, "cannot apply the VM's CPU share"
                );
            }
        }
        Ok(Self {
            child,
            conn,
            dir,
            started,
            broken: false,
            jail,
            console,
            label: label.clone(),
            init_tail: Vec::new(),
            boot: BootReport {
                spawn_to_ready,
                guest: boot,
                timeline,
            },
            net,
        })
    }

    /// A VM environment from a VMM process and its already accepted agent
    /// connection (after the hello): for tests without a VM.
    #[cfg(test)]
    pub(crate) fn from_parts(child: Child, conn: UnixStream, dir: PathBuf) -> Self {
        let guest = BootTiming {
            kernel_uptime_at_agent_start_ns: 0,
            kernel_uptime_at_ready_ns: 0,
        };
        Self {
            child,
            conn,
            dir,
            started: Instant::now(),
            broken: false,
            jail: None,
            console: Console::start(None::<tokio::io::Empty>, None::<tokio::io::Empty>, 0),
            label: VmLabel::default(),
            init_tail: Vec::new(),
            boot: BootReport {
                spawn_to_ready: Duration::ZERO,
                guest,
                timeline: BootTimeline::default(),
            },
            net: None,
        }
    }

    /// For a pre-booted environment (bound to no tenant yet): returns once
    /// the function's runtime has finished its init (Lambda's init phase:
    /// it asked for its first invocation), within `limit`. A runtime that
    /// exits, reports an init error or does not finish in time fails it
    /// ([`EnvError::InitFailed`], [`EnvError::TimedOut`]); the environment
    /// must then be destroyed.
    pub async fn await_init(&mut self, limit: Duration) -> Result<(), EnvError> {
        if self.broken {
            return Err(EnvError::Protocol(
                "the agent channel failed earlier; the environment must be destroyed".into(),
            ));
        }
        let mut tail = std::mem::take(&mut self.init_tail);
        let r = exchange_init(&mut self.conn, limit, &mut tail).await;
        if tail.len() > LOG_TAIL {
            tail.drain(..tail.len() - LOG_TAIL);
        }
        let r = match r {
            Ok(None) => Ok(()),
            Ok(Some(e)) => Err(EnvError::InitFailed(format!(
                "{}: {}{}",
                e.error_type,
                e.error_message,
                if tail.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; its output ends with:\n{}",
                        String::from_utf8_lossy(&tail)
                    )
                }
            ))),
            Err(e) => Err(e),
        };
        self.init_tail = tail;
        if r.is_err() {
            self.broken = true;
        }
        r
    }

    /// Runs one invocation: sending it and waiting for its result together
    /// take at most `deadline` (the function's timeout) plus
    /// [`RESULT_GRACE`], else [`EnvError::TimedOut`]. After any error the
    /// channel is not written to again; the environment must be destroyed.
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
        if self.broken {
            return Err(EnvError::Protocol(
                "the agent channel failed earlier; the environment must be destroyed".into(),
            ));
        }
        let id = request_id.clone();
        let started = Instant::now();
        let mut tail: Vec<u8> = std::mem::take(&mut self.init_tail);
        // One deadline for the write and the wait: a guest that stops
        // reading cannot hold the invocation (and its slot) past it.
        let outcome = exchange(
            &mut self.conn,
            &msg,
            &id,
            deadline + RESULT_GRACE,
            &mut tail,
        )
        .await;
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                self.broken = true;
                return Err(e);
            }
        };
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
    /// A broken channel (a failed or timed-out exchange, a VMM gone) is not
    /// written to: the VMM is killed at once. The `Shutdown` frame itself is
    /// written under a short deadline, so a guest that stops reading cannot
    /// hold this either.
    pub async fn shutdown(mut self) {
        // Whether the VMM ended by itself before being asked (for the
        // failure report below).
        let exited_before = self.child.try_wait().ok().flatten();
        let asked = !self.broken
            && matches!(
                tokio::time::timeout(
                    SHUTDOWN_WRITE,
                    write_message(&mut self.conn, &Message::Shutdown)
                )
                .await,
                Ok(Ok(()))
            );
        if !asked
            || tokio::time::timeout(Duration::from_secs(5), self.child.wait())
                .await
                .is_err()
        {
            let _ = self.child.kill().await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(lease) = self.jail.take() {
            let _ = tokio::task::spawn_blocking(move || lease.release()).await;
        }
        if let Some(net) = self.net.take() {
            let _ = tokio::task::spawn_blocking(move || net.release()).await;
        }
        // The VMM is gone: what it wrote is in the rings within moments.
        self.console.finish(Duration::from_secs(1)).await;
        if let Some((total, kept)) = self.console.serial_stats() {
            tracing::info!(
                function = %self.label.function,
                tenant_id = self.label.tenant_id.as_deref().unwrap_or("-"),
                console_bytes_total = total,
                console_bytes_kept = kept,
                "microVM console at shutdown"
            );
        }
        if self.broken {
            // Guest-written bytes: the last few, escaped, once per failed VM.
            let tail = self.console.tail(20);
            let tail = &tail[tail.floor_char_boundary(tail.len().saturating_sub(FAILURE_TAIL))..];
            tracing::warn!(
                function = %self.label.function,
                tenant_id = self.label.tenant_id.as_deref().unwrap_or("-"),
                vmm_exited_before_shutdown = ?exited_before,
                console_tail = ?tail,
                "microVM ended after a failure; its console and VMM log end with"
            );
        }
    }

    /// The VM's console and VMM log rings.
    pub fn console(&self) -> &Console {
        &self.console
    }

    /// The VM's network, if it has one.
    pub fn network(&self) -> Option<&crate::net::VmNet> {
        self.net.as_ref()
    }
}

impl Drop for VmEnv {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
        // A jail lease still held is released on its own thread.
        drop(self.jail.take());
    }
}

/// Kills the VMM, removes its directory and gives back its jail unless
/// disarmed.
struct Guard {
    child: Option<Child>,
    dir: Option<PathBuf>,
    jail: Option<JailLease>,
}

impl Guard {
    fn disarm(&mut self) -> (Child, PathBuf, Option<JailLease>) {
        (
            self.child.take().expect("child"),
            self.dir.take().expect("dir"),
            self.jail.take(),
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
        drop(self.jail.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Child as StdChild, ChildStdin, ChildStdout};

    /// A stand-in for a process connecting to an agent socket: connects to
    /// `argv[1]` (after a line on stdin if `argv[3]` is `wait`), prints
    /// `connected`, sends the bytes of the file `argv[2]`, then reads until
    /// the daemon closes the connection and prints how many bytes it was
    /// sent.
    const PEER: &str = r#"
import socket, sys
path, frame, wait = sys.argv[1], sys.argv[2], sys.argv[3] == "wait"
if wait:
    sys.stdin.readline()
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(path)
print("connected", flush=True)
try:
    s.sendall(open(frame, "rb").read())
except OSError:
    pass  # already closed by the daemon
n = 0
while True:
    try:
        b = s.recv(65536)
    except ConnectionResetError:
        break  # closed with our hello unread
    if not b:
        break
    n += len(b)
print(n, flush=True)
"#;

    static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

    /// Held by each test that points `SILO_VMM` (process-wide) at a fake
    /// VMM, so that two such tests never swap fakes.
    static FAKE_VMM: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    /// A fresh private directory for one test.
    fn test_dir() -> PathBuf {
        let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("silo-vm-env-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn hello() -> Message {
        Message::Hello {
            agent_version: "test".into(),
            boot: BootTiming {
                kernel_uptime_at_agent_start_ns: 1,
                kernel_uptime_at_ready_ns: 2,
            },
        }
    }

    fn invoke_msg(payload: Vec<u8>) -> Message {
        Message::Invoke {
            request_id: "r-1".into(),
            tenant_id: Some("tenant-a".into()),
            deadline_unix_ms: 0,
            function_arn: "arn:aws:lambda:us-east-1:000000000000:function:f".into(),
            trace_id: String::new(),
            payload,
        }
    }

    /// A peer process (see [`PEER`]) sending a valid hello frame.
    struct Peer {
        child: StdChild,
        stdin: ChildStdin,
        stdout: BufReader<ChildStdout>,
    }

    impl Peer {
        fn spawn(socket: &Path, dir: &Path, wait: bool) -> Self {
            let frame = dir.join("hello.frame");
            std::fs::write(&frame, silo_proto::encode(&hello()).unwrap()).unwrap();
            let mut child = std::process::Command::new("python3")
                .arg("-c")
                .arg(PEER)
                .arg(socket)
                .arg(&frame)
                .arg(if wait { "wait" } else { "now" })
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("these tests need python3 on PATH");
            let stdin = child.stdin.take().unwrap();
            let stdout = BufReader::new(child.stdout.take().unwrap());
            Self {
                child,
                stdin,
                stdout,
            }
        }

        fn pid(&self) -> u32 {
            self.child.id()
        }

        fn go(&mut self) {
            self.stdin.write_all(b"go\n").unwrap();
            self.stdin.flush().unwrap();
        }

        /// The next line the peer printed (blocking; run off the runtime).
        fn line(&mut self) -> String {
            let mut l = String::new();
            self.stdout.read_line(&mut l).unwrap();
            l.trim().to_string()
        }
    }

    fn label() -> VmLabel {
        VmLabel {
            function: "f".into(),
            tenant_id: Some("tenant-a".into()),
        }
    }

    /// A foreign process that connects first and sends a valid hello is
    /// closed without being sent anything; the VMM's own connection, which
    /// comes after it, is the agent channel and the only one that ever gets
    /// an invoke.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_foreign_process_cannot_become_the_agent() {
        let dir = test_dir();
        let socket = dir.join("vsock_1024");
        let listener = UnixListener::bind(&socket).unwrap();
        // The "VMM": connects only when told to, after the intruder.
        let mut vmm = Peer::spawn(&socket, &dir, true);
        let vmm_pid = vmm.pid();
        let accept = tokio::spawn(async move {
            let r = accept_agent(
                &listener,
                ExpectedVmm {
                    pid: vmm_pid,
                    uid: None,
                },
                Duration::from_secs(20),
                &label(),
            )
            .await;
            (r, listener)
        });
        let mut intruder = Peer::spawn(&socket, &dir, false);
        let intruder = tokio::task::spawn_blocking(move || {
            assert_eq!(intruder.line(), "connected");
            intruder
        })
        .await
        .unwrap();
        vmm.go();
        let (accepted, _listener) = tokio::time::timeout(Duration::from_secs(20), accept)
            .await
            .expect("accept_agent returned")
            .unwrap();
        let (mut conn, boot) = accepted.expect("the VMM's connection is accepted");
        assert_eq!(boot.kernel_uptime_at_ready_ns, 2);
        assert_eq!(
            conn.peer_cred().unwrap().pid(),
            Some(vmm_pid as i32),
            "the agent channel is the VMM's connection"
        );
        let invoke = invoke_msg(b"secret payload".to_vec());
        let sent = silo_proto::encode(&invoke).unwrap().len();
        write_message(&mut conn, &invoke).await.unwrap();
        drop(conn);
        let (intruder_got, vmm_got) = tokio::task::spawn_blocking(move || {
            let (mut intruder, mut vmm) = (intruder, vmm);
            let got = (intruder.line(), {
                assert_eq!(vmm.line(), "connected");
                vmm.line()
            });
            let _ = intruder.child.wait();
            let _ = vmm.child.wait();
            got
        })
        .await
        .unwrap();
        assert_eq!(intruder_got, "0", "the intruder read EOF and nothing else");
        assert_eq!(vmm_got, sent.to_string(), "the VMM got the invoke");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A VMM that exits before its agent connects (here: one that refuses
    /// its flags) fails the boot at once, naming its exit status and what
    /// it printed, instead of at the boot timeout.
    #[tokio::test]
    async fn a_vmm_that_exits_early_fails_the_boot_at_once() {
        let dir = test_dir();
        let fake = dir.join("fake-vmm");
        std::fs::write(
            &fake,
            "#!/bin/sh\necho \"error: unexpected argument '--jail-root' found\" >&2\nexit 2\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let _vmm = FAKE_VMM.lock().await;
        std::env::set_var("SILO_VMM", &fake);
        let spec = VmSpec {
            kernel: dir.join("vmlinux"),
            initrd: dir.join("initrd"),
            mem_mib: 128,
            vcpus: 1,
            boot_timeout: Duration::from_secs(600),
            pmem: None,
            jail: JailMode::Insecure,
            console_bytes: 4096,
        };
        let r = tokio::time::timeout(
            Duration::from_secs(300),
            VmEnv::boot(&spec, &dir.join("run")),
        )
        .await
        .expect("the boot failed before the test's own limit");
        std::env::remove_var("SILO_VMM");
        let Err(EnvError::Boot(msg)) = r else {
            panic!("expected a boot error");
        };
        assert!(
            msg.contains("exited (exit status: 2) before the guest agent connected"),
            "{msg}"
        );
        assert!(msg.contains("unexpected argument '--jail-root'"), "{msg}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Jailed, the agent connects from the VMM the jailer forked (a child of
    /// the spawned process) with the VM's uid; a process outside that tree,
    /// or in it with another uid, is refused. Unjailed, only the spawned
    /// process itself.
    #[test]
    fn a_jailed_vmm_is_admitted_by_its_uid_and_process_tree() {
        let mut jailer = std::process::Command::new("sh")
            .args(["-c", "sleep 600 & echo $!; wait"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(jailer.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let vmm: i32 = line.trim().parse().unwrap();
        let spawned = jailer.id();
        let stranger = std::process::id() as i32;
        let peer = |pid: i32, uid: u32| RejectedPeer {
            pid: Some(pid),
            uid: Some(uid),
        };
        let jailed = ExpectedVmm {
            pid: spawned,
            uid: Some(1_000_000_007),
        };
        assert!(jailed.admits(&peer(vmm, 1_000_000_007)));
        assert!(jailed.admits(&peer(spawned as i32, 1_000_000_007)));
        assert!(
            !jailed.admits(&peer(vmm, 1_000_000_008)),
            "another VM's uid"
        );
        assert!(!jailed.admits(&peer(vmm, 0)), "the daemon's uid");
        assert!(
            !jailed.admits(&peer(stranger, 1_000_000_007)),
            "outside the tree"
        );
        assert!(!jailed.admits(&RejectedPeer {
            pid: None,
            uid: Some(1_000_000_007)
        }));
        let unjailed = ExpectedVmm {
            pid: spawned,
            uid: None,
        };
        assert!(unjailed.admits(&peer(spawned as i32, 0)));
        assert!(
            !unjailed.admits(&peer(vmm, 0)),
            "unjailed: the spawned process only"
        );
        let _ = std::process::Command::new("kill")
            .arg(vmm.to_string())
            .status();
        let _ = jailer.kill();
        let _ = jailer.wait();
    }

    /// Nothing but foreign connections until the boot timeout: a boot error
    /// that says so, and every intruder was closed without a byte.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_foreign_connections_fail_the_boot_and_say_so() {
        let dir = test_dir();
        let socket = dir.join("vsock_1024");
        let listener = UnixListener::bind(&socket).unwrap();
        // A VMM that never connects.
        let mut vmm = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .unwrap();
        let vmm_pid = vmm.id();
        let accept = tokio::spawn(async move {
            accept_agent(
                &listener,
                ExpectedVmm {
                    pid: vmm_pid,
                    uid: None,
                },
                Duration::from_secs(3),
                &label(),
            )
            .await
        });
        let mut intruder = Peer::spawn(&socket, &dir, false);
        let intruder_pid = intruder.pid();
        let r = tokio::time::timeout(Duration::from_secs(20), accept)
            .await
            .expect("accept_agent returned")
            .unwrap();
        let _ = vmm.kill();
        let _ = vmm.wait();
        let err = match r {
            Ok((conn, _)) => panic!(
                "a foreign connection was accepted as the agent (peer {:?})",
                conn.peer_cred().map(|c| c.pid())
            ),
            Err(e) => e,
        };
        let msg = err.to_string();
        match &err {
            AcceptError::TimedOut {
                expected_pid,
                rejected,
                rejected_total,
                ..
            } => {
                assert_eq!(*expected_pid, vmm_pid);
                assert_eq!(*rejected_total, 1);
                assert_eq!(rejected[0].pid, Some(intruder_pid as i32));
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert!(msg.contains(&format!("pid {vmm_pid}")), "{msg}");
        assert!(
            msg.contains("refused 1 connection(s) from other processes")
                && msg.contains(&format!("pid {intruder_pid}")),
            "{msg}"
        );
        let got = tokio::task::spawn_blocking(move || {
            assert_eq!(intruder.line(), "connected");
            let n = intruder.line();
            let _ = intruder.child.wait();
            n
        })
        .await
        .unwrap();
        assert_eq!(got, "0", "the intruder read EOF and nothing else");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A stand-in VMM process (`sleep 600`) and a VM environment over one
    /// end of a socket pair whose other end, returned, is the fake agent
    /// (its hello already read).
    async fn fake_vm() -> (VmEnv, UnixStream, i32) {
        let (mut host, mut guest) = UnixStream::pair().unwrap();
        write_message(&mut guest, &hello()).await.unwrap();
        assert!(matches!(
            read_message(&mut host).await.unwrap(),
            Message::Hello { .. }
        ));
        let child = Command::new("sleep")
            .arg("600")
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let pid = child.id().unwrap() as i32;
        (VmEnv::from_parts(child, host, test_dir()), guest, pid)
    }

    /// Whether process `pid` is gone (killed and reaped).
    fn gone(pid: i32) -> bool {
        // SAFETY: signal 0 only checks that the process exists.
        let r = unsafe { libc::kill(pid, 0) };
        r == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
    }

    /// A guest that says hello and then never reads: a 6 MB invoke with a
    /// 3 s timeout fills the socket buffer. The write shares the invoke's
    /// deadline, so the invoke ends `TimedOut` (reported as
    /// `Sandbox.Timedout`) in seconds instead of hanging with its slot, and
    /// destroying the environment then kills the VMM at once.
    #[tokio::test]
    async fn a_guest_that_stops_reading_times_out_and_its_vmm_is_killed() {
        let (mut env, _guest_never_reads, pid) = fake_vm().await;
        let dir = env.dir.clone();
        let r = tokio::time::timeout(
            Duration::from_secs(15),
            env.invoke(
                invoke_msg(vec![7; silo_proto::MAX_PAYLOAD]),
                Duration::from_secs(3),
            ),
        )
        .await
        .expect("the invoke hung past its deadline: the write to a non-reading guest is unbounded");
        assert!(matches!(r, Err(EnvError::TimedOut)), "{r:?}");
        tokio::time::timeout(Duration::from_secs(3), env.shutdown())
            .await
            .expect("destroying the environment hung");
        assert!(gone(pid), "the VMM (pid {pid}) is still there");
        assert!(!dir.exists());
    }

    /// The VMM is gone (its end of the channel closed): the invoke fails as
    /// a protocol error and destroying the environment kills the VMM
    /// process at once.
    #[tokio::test]
    async fn a_vmm_that_is_gone_fails_the_invoke_and_is_killed() {
        let (mut env, guest, pid) = fake_vm().await;
        drop(guest);
        let r = tokio::time::timeout(
            Duration::from_secs(15),
            env.invoke(invoke_msg(b"{}".to_vec()), Duration::from_secs(3)),
        )
        .await
        .expect("the invoke hung");
        assert!(matches!(r, Err(EnvError::Protocol(_))), "{r:?}");
        tokio::time::timeout(Duration::from_secs(3), env.shutdown())
            .await
            .expect("destroying the environment hung");
        assert!(gone(pid), "the VMM (pid {pid}) is still there");
    }

    /// A VMM that floods its console and logs an error, but whose guest
    /// never says hello: the boot fails naming the last console and VMM
    /// log lines, and the console kept is the ring's size, not the flood's.
    #[tokio::test]
    async fn a_boot_failure_reports_the_tail_of_a_flooded_console() {
        let dir = test_dir();
        let fake = dir.join("fake-vmm");
        std::fs::write(
            &fake,
            "#!/bin/sh\n\
             yes 'console flood line' | head -c 262144\n\
             echo 'the last console line'\n\
             echo 'vmm: the last log line' >&2\n\
             exec sleep 60\n",
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let _vmm = FAKE_VMM.lock().await;
        std::env::set_var("SILO_VMM", &fake);
        let spec = VmSpec {
            kernel: "/nonexistent/vmlinux".into(),
            initrd: "/nonexistent/initrd".into(),
            mem_mib: 128,
            vcpus: 1,
            boot_timeout: Duration::from_secs(10),
            console_bytes: 4096,
            pmem: None,
            jail: JailMode::Insecure,
        };
        let err = match VmEnv::boot(&spec, &dir).await {
            Ok(_) => panic!("a VM without an agent booted"),
            Err(e) => e.to_string(),
        };
        std::env::remove_var("SILO_VMM");
        assert!(err.contains("console tail"), "{err}");
        assert!(err.contains("the last console line"), "{err}");
        assert!(err.contains("vmm: the last log line"), "{err}");
        assert!(err.len() < 4096, "{} bytes of error", err.len());
        // No file holds the console: the VM's directory is gone, nothing
        // else was written under the run directory.
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("fake-vmm")]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
