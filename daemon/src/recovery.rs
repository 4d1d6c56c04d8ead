//! What a start reaps of an earlier run that did not stop cleanly (killed,
//! crashed, the host lost power), before anything is served:
//!
//! - VM cgroups under `jail.cgroup_parent`, with every process in them (the
//!   VMMs): [`JailMode::for_daemon`](crate::jail::JailMode::for_daemon);
//! - network namespaces and veths of VMs: [`crate::net::sweep`], when
//!   `[network]` is on;
//! - run directories (`run_dir`: one per VM, and the function images):
//!   [`reap_run_dir`];
//! - processes still running as a jail uid (a VMM outside any cgroup):
//!   [`reap_jail_uids`];
//! - queued events: read back from the event store, run again
//!   ([`crate::event_worker`]).
//!
//! Each step logs what it found; a start after a clean stop finds nothing.

use std::path::Path;

use crate::jail::JailSettings;

/// Removes the run directory an earlier run left (VM directories, sockets,
/// function images); returns how many entries it held.
pub fn reap_run_dir(run_dir: &Path) -> usize {
    let found = std::fs::read_dir(run_dir).map_or(0, |d| d.count());
    if found > 0 {
        tracing::warn!(
            run_dir = %run_dir.display(),
            entries = found,
            "run directory left by an earlier daemon: removing it"
        );
    }
    let _ = std::fs::remove_dir_all(run_dir);
    found
}

/// The real uid of process `pid`, from `/proc/<pid>/status`.
fn uid_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Processes running as a uid of `jail`'s range, as (pid, uid).
pub fn jail_uid_processes(jail: &JailSettings) -> Vec<(u32, u32)> {
    let range = jail.uid_base..jail.uid_base.saturating_add(jail.uid_count);
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, uid_of(pid)?)))
        .filter(|(_, uid)| range.contains(uid))
        .collect()
}

/// Kills every process still running as a jail uid (once the VM cgroups
/// are swept there should be none: a VMM always runs in its cgroup); such a
/// process would otherwise share its uid with a VM this daemon starts.
/// Returns how many there were. Only for a daemon that jails VMs: the
/// range is its own (one daemon per `jail.cgroup_parent` and uid range).
pub fn reap_jail_uids(jail: &JailSettings) -> usize {
    let found = jail_uid_processes(jail);
    if found.is_empty() {
        return 0;
    }
    tracing::warn!(
        processes = found.len(),
        pids = ?found.iter().map(|p| p.0).collect::<Vec<_>>(),
        uids = ?found.iter().map(|p| p.1).collect::<Vec<_>>(),
        "processes left running as jail uids by an earlier daemon: killing them"
    );
    for (pid, _) in &found {
        // SAFETY: kill(2) with a pid read from /proc and a plain signal; no
        // memory is involved.
        unsafe {
            libc::kill(*pid as libc::pid_t, libc::SIGKILL);
        }
    }
    found.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_left_run_directory_is_counted_and_removed() {
        let dir = std::env::temp_dir().join(format!("silo-reap-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("vm-1")).unwrap();
        std::fs::write(dir.join("vm-1/vsock"), b"").unwrap();
        std::fs::create_dir_all(dir.join("images")).unwrap();
        assert_eq!(reap_run_dir(&dir), 2);
        assert!(!dir.exists());
        assert_eq!(reap_run_dir(&dir), 0);
    }

    #[test]
    fn processes_are_found_by_their_uid() {
        // This test's own process runs as its user: a range around that
        // uid finds it, the default range (ids from 10^9) does not.
        // SAFETY: getuid(2) has no preconditions.
        let me = unsafe { libc::getuid() };
        let own = JailSettings {
            uid_base: me,
            uid_count: 1,
            ..JailSettings::default()
        };
        assert!(jail_uid_processes(&own)
            .iter()
            .any(|(pid, uid)| *pid == std::process::id() && *uid == me));
        assert!(!jail_uid_processes(&JailSettings::default())
            .iter()
            .any(|(pid, _)| *pid == std::process::id()));
    }
}
