//! Boot timeline: when each phase of a VM's start happened, in one clock
//! domain (CLOCK_MONOTONIC), so a parent process can line the VMM's phases up
//! with its own measurements.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

static PROCESS_START: OnceLock<(Instant, u64)> = OnceLock::new();

/// CLOCK_MONOTONIC now, in nanoseconds (the clock `Instant` uses on Linux).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we pass, which lives on
    // our stack for the duration of the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Records the process start; call first thing in `main`. Later calls keep
/// the first value.
pub fn mark_process_start() {
    PROCESS_START.get_or_init(|| (Instant::now(), monotonic_ns()));
}

fn process_start() -> (Instant, u64) {
    *PROCESS_START.get_or_init(|| (Instant::now(), monotonic_ns()))
}

/// Phases of one VM's start, as offsets from the process start.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    /// CLOCK_MONOTONIC at process start, in ns.
    pub process_start_monotonic_ns: u64,
    /// KVM VM, memory and vCPUs created.
    pub vm_created: Option<Duration>,
    /// Kernel and initrd loaded, zero page written.
    pub kernel_loaded: Option<Duration>,
    /// The boot vCPU entered KVM_RUN for the first time.
    pub first_kvm_run: Option<Duration>,
    /// The guest wrote its first serial byte.
    pub first_serial_byte: Option<Duration>,
    /// The VM ended.
    pub vm_exit: Option<Duration>,
}

impl Timeline {
    /// An empty timeline anchored at the process start.
    pub fn new() -> Self {
        Self {
            process_start_monotonic_ns: process_start().1,
            ..Self::default()
        }
    }

    /// Offset of `at` from the process start.
    pub fn since_start(at: Instant) -> Duration {
        at.saturating_duration_since(process_start().0)
    }

    /// Offset of now from the process start.
    pub fn now() -> Duration {
        Self::since_start(Instant::now())
    }

    /// One-line JSON, with each phase in microseconds since the process start.
    pub fn to_json(&self) -> String {
        let f = |d: Option<Duration>| d.map_or("null".to_string(), |d| d.as_micros().to_string());
        format!(
            "{{\"process_start_monotonic_ns\":{},\"vm_created_us\":{},\"kernel_loaded_us\":{},\"first_kvm_run_us\":{},\"first_serial_byte_us\":{},\"vm_exit_us\":{}}}",
            self.process_start_monotonic_ns,
            f(self.vm_created),
            f(self.kernel_loaded),
            f(self.first_kvm_run),
            f(self.first_serial_byte),
            f(self.vm_exit)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_every_phase() {
        mark_process_start();
        let mut t = Timeline::new();
        t.vm_created = Some(Duration::from_micros(1500));
        let j = t.to_json();
        for k in [
            "vm_created_us\":1500",
            "kernel_loaded_us\":null",
            "first_kvm_run_us",
            "vm_exit_us",
        ] {
            assert!(j.contains(k), "{j}");
        }
        assert!(monotonic_ns() >= t.process_start_monotonic_ns);
    }
}
