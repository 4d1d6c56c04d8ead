//! The agent channel: accepting the VMM's connection on a VM's agent socket
//! and checking its peer.

use std::time::Duration;

use silo_proto::asynchronous::read_message;
use silo_proto::{BootTiming, Message};
use tokio::net::{UnixListener, UnixStream};

use super::VmLabel;

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
    pub(super) fn admits(&self, peer: &RejectedPeer) -> bool {
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
            tenant_id = ?label.tenant_id.as_deref().unwrap_or("-"),
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
        return Err(AcceptError::NotHello(
            super::invoke::message_kind(&hello).to_string(),
        ));
    };
    Ok((conn, boot))
}
