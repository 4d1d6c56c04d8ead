//! Execution environments backed by microVMs: each one is a `silo-vmm` child
//! process with a vsock device whose host side is a Unix socket in a private
//! directory. The guest agent connects to host port 1024, says hello, and
//! then serves invocations over silo-proto frames.
//!
//! Split by responsibility:
//!
//! - `spawn`: the VM's directory, the jail handoff and the VMM process
//!   ([`VmEnv::boot`]);
//! - `agent`: accepting the agent channel and checking its peer
//!   ([`accept_agent`]);
//! - `invoke`: invocations and the runtime's init over the channel
//!   ([`VmEnv::invoke`], [`VmEnv::await_init`]);
//! - `shutdown`: ending the VM and giving back its jail;
//! - `timeline`: the boot's phases in one clock domain;
//! - [`balloon`]: how guest memory is given back, the balloon's counters;
//! - [`guest_text`]: guest-controlled text bounded and escaped for logs
//!   and errors.
//!
//! The console and VMM log rings are [`crate::console`].

mod agent;
pub mod balloon;
mod guest_text;
mod invoke;
mod report;
mod shutdown;
mod spawn;
#[cfg(test)]
mod tests;
mod timeline;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::jail::{JailLease, JailMode};
use silo_proto::Outcome;
use tokio::net::UnixStream;
use tokio::process::Child;

use crate::console::Console;

pub use agent::{accept_agent, AcceptError, ExpectedVmm, RejectedPeer};
pub use balloon::{BalloonCounters, GuestMemoryMode};
pub use guest_text::{guest_text, guest_text_tail, GUEST_TEXT_MAX};
#[cfg(test)]
pub(crate) use spawn::new_vm_dir;
pub use spawn::vmm_binary;
pub use timeline::{BootReport, BootTimeline};

/// Bytes of log kept per invocation (Lambda's `LogType: Tail` returns 4 KB).
pub const LOG_TAIL: usize = 4096;

/// What the daemon waits beyond a function's timeout for the agent to take
/// the invoke and report (the agent enforces the timeout itself).
pub const RESULT_GRACE: Duration = Duration::from_secs(5);

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
    /// A managed runtime's read-only image (`--pmem`: the guest mounts it at
    /// /rt with DAX): this VM's tenant's copy unless the operator opted into
    /// `runtime_sharing = "host"` (see [`crate::runtime_copies`]).
    pub pmem: Option<PathBuf>,
    /// Bytes of the serial console kept in memory (0: console off); see
    /// [`crate::console`].
    pub console_bytes: usize,
    /// How guest memory is backed and given back (see [`balloon`]).
    pub memory: GuestMemoryMode,
}

/// Errors of a VM environment; any of them means the VM is gone or unusable.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// Setting up the VM's directory or socket failed.
    #[error("preparing the VM: {0}")]
    Setup(String),
    /// The host cannot jail VMMs (the reason) and the daemon was not
    /// started with `--insecure-no-jail`.
    #[error(
        "this host cannot jail microVMs ({0}); start the daemon with --insecure-no-jail to run \
         them unjailed"
    )]
    NoJail(String),
    /// The VMM process failed or the agent never said hello.
    #[error("the VM did not start: {0}")]
    Boot(String),
    /// The agent broke the protocol or the connection.
    #[error("the guest agent failed: {0}")]
    Protocol(String),
    /// The function's runtime exited or timed out; the VM is discarded.
    #[error("the function's runtime exited or timed out; its microVM is discarded")]
    FunctionCrashed(Box<InvokeResult>),
    /// The VMM exited (killed, say) during an invocation: its exit status.
    #[error("the microVM exited during the invocation ({0})")]
    VmmExited(String),
    /// No result before the deadline (plus grace).
    #[error("the invocation did not return before its deadline")]
    TimedOut,
    /// The runtime of a pre-booted environment could not finish its init.
    #[error("the function's runtime failed its init: {0}")]
    InitFailed(String),
    /// The VM's tenant's credentials (its function's tenant role) could not
    /// be had; the invoke was not sent.
    #[error(transparent)]
    Credentials(#[from] crate::creds::BrokerError),
}

impl EnvError {
    /// What an API caller is told: no host path, console or VMM log (those
    /// are logged, escaped and bounded); the function's own init error, as
    /// Lambda reports it.
    pub fn caller_message(&self) -> String {
        match self {
            Self::Setup(_) => "the execution environment could not be prepared".into(),
            // The reason may name host paths: it is in the daemon's log.
            Self::NoJail(_) => "this host cannot jail microVMs (the daemon's log says why); \
                                start the daemon with --insecure-no-jail to run them unjailed"
                .into(),
            Self::Boot(_) => "the execution environment's microVM did not start".into(),
            Self::Protocol(_) => "the execution environment's guest agent failed".into(),
            // Lambda's words for a runtime that died mid-invoke.
            Self::VmmExited(status) => format!("Runtime exited with error: {status}"),
            Self::FunctionCrashed(_)
            | Self::TimedOut
            | Self::InitFailed(_)
            | Self::Credentials(_) => self.to_string(),
        }
    }
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
    pub(super) net: Option<crate::net::VmNet>,
    /// Where the function's log goes, if kept ([`crate::logs`]).
    logs: Option<crate::logs::LogTap>,
    /// Pre-booted (its init done before any tenant took it): its first
    /// REPORT has no Init Duration.
    pooled: bool,
    /// The last invocation's REPORT, written after its answer.
    reports: report::Reports,
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

impl VmEnv {
    /// What the VM's balloon did so far (`None` before its first
    /// publication or if the file is unreadable).
    pub fn balloon_counters(&self) -> Option<BalloonCounters> {
        balloon::read_counters(&self.dir)
    }

    /// The VMM process's id (the jailer's, when jailed), while it runs.
    pub fn vmm_pid(&self) -> Option<u32> {
        self.child.id()
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

    /// Sends the function's log lines and platform records to `tap`.
    pub fn set_log_tap(&mut self, tap: crate::logs::LogTap) {
        self.logs = Some(tap);
    }

    /// The environment's log stream, if its log is kept.
    pub fn log_stream(&self) -> Option<&str> {
        self.logs.as_ref().map(|t| t.stream())
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
