//! The boot's phases, measured by the host and the VMM, in one clock domain.

use std::path::Path;
use std::time::Duration;

use silo_proto::BootTiming;

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
pub(super) fn read_small_regular_file(path: &Path, max: u64) -> Option<Vec<u8>> {
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
pub(super) fn read_timeline(
    path: &Path,
    spawn_ns: u64,
    ready: Duration,
    guest: &BootTiming,
) -> BootTimeline {
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

/// CLOCK_MONOTONIC now, in nanoseconds: the clock of the VMM's
/// `--timeline-file` (and of `Instant` on Linux), so that the spawn time
/// and the VMM's phases line up.
pub(super) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we pass, which lives on
    // our stack for the duration of the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
