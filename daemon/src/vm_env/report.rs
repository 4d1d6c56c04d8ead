//! An invocation's REPORT record, written after its answer: `Max Memory
//! Used` (the VMM's high-water mark of resident memory) is read from
//! `/proc` by a task the invocation leaves behind, not before the invoke
//! returns. The environment's next invocation, and its shutdown, wait for
//! that task first, so the records keep their order (END, REPORT, then the
//! next START) and the figure is read while the VMM still runs.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use super::VmEnv;
use crate::logs::{Platform, Report};

/// The REPORT still being written, and the VMM's pid once found.
#[derive(Debug, Default)]
pub(super) struct Reports {
    pending: Option<JoinHandle<()>>,
    /// The VMM's pid (the jailer's child when jailed): looked up once.
    vmm: Arc<OnceLock<u32>>,
}

impl VmEnv {
    /// Writes the REPORT of invocation `id` (which ended now) from a task:
    /// the caller's answer does not wait for `/proc`. Its time is the
    /// invocation's end, as if written at once.
    pub(super) fn report_later(
        &mut self,
        tenant: Option<String>,
        id: String,
        duration: Duration,
        init: Option<Duration>,
        status: &'static str,
    ) {
        let Some(tap) = self.logs.clone() else { return };
        let pid = self.child.id();
        let vmm = self.reports.vmm.clone();
        let ended = Instant::now();
        self.reports.pending = Some(tokio::spawn(async move {
            let memory_mib = tap.memory_mib();
            let max_memory_mib = pid.and_then(|pid| peak_memory_mib(pid, &vmm, memory_mib));
            tap.platform(
                tenant.as_deref(),
                Some(&id),
                ended.elapsed(),
                Platform::Report(Report {
                    duration,
                    memory_mib,
                    max_memory_mib,
                    init,
                    status,
                }),
            );
        }));
    }

    /// Waits until the last invocation's REPORT is written (the task is
    /// kept until then, so a caller cancelled meanwhile leaves it to the
    /// next one).
    pub(super) async fn report_written(&mut self) {
        if let Some(task) = &mut self.reports.pending {
            let _ = task.await;
            self.reports.pending = None;
        }
    }
}

/// The VM's peak memory in MiB (the VMM's high-water mark of resident
/// memory, at most `mem_mib`), for REPORT's Max Memory Used. `pid` is the
/// process the daemon spawned; a jailed VMM is its child, found once and
/// kept in `vmm`.
fn peak_memory_mib(pid: u32, vmm: &OnceLock<u32>, mem_mib: u32) -> Option<u64> {
    let vmm = match vmm.get() {
        Some(v) => *v,
        None => match std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
            // A jailed VMM is the only child; without a jail the spawned
            // process is the VMM and has none.
            Ok(c) => {
                let found = c.split_whitespace().next().and_then(|p| p.parse().ok());
                *vmm.get_or_init(|| found.unwrap_or(pid))
            }
            Err(_) => pid,
        },
    };
    let status = std::fs::read_to_string(format!("/proc/{vmm}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some((kb / 1024).min(u64::from(mem_mib)))
}
