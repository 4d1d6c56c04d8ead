//! Idle reclaim (issue 25): once a jailed VM has been idle for
//! `jail.idle_reclaim_after_s`, the daemon asks the kernel to reclaim its
//! cgroup (`memory.reclaim`): the guest RAM it does not touch while idle
//! (most of it) goes to the host's swap (zram: compressed in host RAM), so
//! a long-idle environment holds a few MiB, and its next invoke faults the
//! pages it needs back in (a page-in, not a cold start). Only the VM's own
//! cgroup is reclaimed, so only its own pages move; nothing is shared
//! between VMs. Off by default (see docs/DAEMON.md).

use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::vm_memory::MemoryRegistry;

/// Why the host cannot page idle VMs out.
#[derive(Debug, thiserror::Error)]
pub enum ReclaimSetupError {
    /// No swap device or file is active (`/proc/swaps`).
    #[error(
        "jail.idle_reclaim_after_s is set but this host has no active swap (/proc/swaps lists \
         none): turn on a zram swap (modprobe zram; echo 4G > /sys/block/zram0/disksize; \
         mkswap /dev/zram0; swapon /dev/zram0) or a swap device, or set it to 0"
    )]
    NoSwap,
    /// The cgroup v2 file the daemon needs is missing.
    #[error(
        "jail.idle_reclaim_after_s is set but {0} is missing: it needs cgroup v2 with the memory \
         controller and swap accounting (Linux 5.19 or later for memory.reclaim)"
    )]
    NoCgroupFile(String),
    /// Reading `/proc/swaps` failed.
    #[error("/proc/swaps: {0}")]
    Io(#[from] std::io::Error),
}

/// Checks that this host can page VMs out of `cgroup_parent`'s children:
/// an active swap, and cgroup v2's `memory.reclaim` and `memory.swap.max`
/// (read in `cgroup_parent`, whose memory controller the jail enabled).
pub fn check_host(cgroup_parent: &Path) -> Result<(), ReclaimSetupError> {
    let swaps = std::fs::read_to_string("/proc/swaps")?;
    if swaps.lines().skip(1).all(|l| l.trim().is_empty()) {
        return Err(ReclaimSetupError::NoSwap);
    }
    for f in ["memory.reclaim", "memory.swap.max"] {
        let p = cgroup_parent.join(f);
        if !p.exists() {
            return Err(ReclaimSetupError::NoCgroupFile(p.display().to_string()));
        }
    }
    Ok(())
}

/// Reclaims what the kernel can of `cgroup` (asks for all it holds,
/// `memory.current`; what the VM touches right now stays). Returns the
/// bytes it holds afterwards (`memory.current`) and those in swap
/// (`memory.swap.current`).
pub fn reclaim(cgroup: &Path) -> std::io::Result<(u64, u64)> {
    let read = |f: &str| -> std::io::Result<u64> {
        std::fs::read_to_string(cgroup.join(f))?
            .trim()
            .parse()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    };
    let current = read("memory.current")?;
    match std::fs::write(cgroup.join("memory.reclaim"), current.to_string()) {
        Ok(()) => {}
        // EAGAIN: less than asked could be reclaimed (what the VM uses).
        Err(e) if e.raw_os_error() == Some(nix::libc::EAGAIN) => {}
        Err(e) => return Err(e),
    }
    Ok((read("memory.current")?, read("memory.swap.current")?))
}

/// Host memory per byte swapped out: for a zram swap, its pool's size over
/// the data it holds (every zram device `/proc/swaps` lists), at most 1
/// (a pool holding little data is mostly its own overhead); 0 for swap on
/// a disk (swapped pages then cost no memory).
pub fn zram_ratio() -> f64 {
    let Ok(swaps) = std::fs::read_to_string("/proc/swaps") else {
        return 0.0;
    };
    let (mut orig, mut used) = (0u64, 0u64);
    for dev in swaps
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
    {
        let Some(name) = dev.strip_prefix("/dev/").filter(|n| n.starts_with("zram")) else {
            continue;
        };
        // mm_stat: orig_data_size compr_data_size mem_used_total ...
        let stat =
            std::fs::read_to_string(format!("/sys/block/{name}/mm_stat")).unwrap_or_default();
        let f: Vec<u64> = stat
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if let (Some(o), Some(u)) = (f.first(), f.get(2)) {
            orig += o;
            used += u;
        }
    }
    if orig == 0 {
        // Nothing compressed yet: count swapped bytes in full (safe side)
        // if a zram device exists, else as on a disk.
        return if swaps.contains("/dev/zram") {
            1.0
        } else {
            0.0
        };
    }
    (used as f64 / orig as f64).min(1.0)
}

/// How often idle VMs are looked at: a quarter of the threshold, between
/// 1 and 30 s.
fn period(after: Duration) -> Duration {
    (after / 4).clamp(Duration::from_secs(1), Duration::from_secs(30))
}

/// Starts the thread that reclaims each VM of `registry` once it has been
/// idle for `after` (again after each invoke); it ends with the registry.
pub fn spawn(registry: &Arc<MemoryRegistry>, after: Duration) {
    let weak: Weak<MemoryRegistry> = Arc::downgrade(registry);
    let spawned = std::thread::Builder::new()
        .name("idle-reclaim".into())
        .spawn(move || loop {
            std::thread::sleep(period(after));
            let Some(registry) = weak.upgrade() else {
                return;
            };
            for (function, cgroup, reclaimed) in registry.due_for_reclaim(after) {
                let started = std::time::Instant::now();
                match reclaim(&cgroup) {
                    Ok((held, swapped)) => {
                        // Its charge in the host's memory budget: what it
                        // holds in RAM, and its share of a compressed swap
                        // (the pool's ratio read now that its pages are in).
                        let charged = held + (swapped as f64 * zram_ratio()) as u64;
                        reclaimed.record(charged);
                        tracing::info!(
                            function = %function,
                            held_bytes = held,
                            swapped_bytes = swapped,
                            charged_bytes = charged,
                            took_ms = started.elapsed().as_millis() as u64,
                            "idle VM reclaimed"
                        )
                    }
                    Err(e) => tracing::warn!(
                        function = %function,
                        cgroup = %cgroup.display(),
                        error = %e,
                        "idle reclaim failed"
                    ),
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the idle reclaim thread");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn period_is_a_quarter_of_the_threshold_within_bounds() {
        assert_eq!(period(Duration::from_secs(20)), Duration::from_secs(5));
        assert_eq!(period(Duration::from_secs(2)), Duration::from_secs(1));
        assert_eq!(period(Duration::from_secs(3600)), Duration::from_secs(30));
    }

    #[test]
    fn a_missing_cgroup_file_is_named() {
        let dir = std::env::temp_dir().join(format!("silo-reclaim-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        match check_host(&dir) {
            // This machine may have no swap at all: that is named first.
            Err(ReclaimSetupError::NoSwap) => {}
            Err(ReclaimSetupError::NoCgroupFile(f)) => {
                assert!(f.ends_with("memory.reclaim"), "{f}")
            }
            other => panic!("{other:?}"),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
