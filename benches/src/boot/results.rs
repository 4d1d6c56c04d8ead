//! What the measurements and the plot share: the phases of a function VM's
//! cold start, and quantiles.

/// The phases of a function VM's start, in the order they happen.
pub const PHASES: [&str; 7] = [
    "vmm_process_start_ms",
    "kernel_loaded_ms",
    "vm_created_ms",
    "first_kvm_run_ms",
    "guest_init_ms",
    "agent_ready_ms",
    "first_invocation_answered_ms",
];

/// The `p` quantile of sorted, non-empty `v` (nearest rank).
pub(super) fn quantile_sorted(v: &[f64], p: f64) -> f64 {
    v[((v.len() - 1) as f64 * p).round() as usize]
}
