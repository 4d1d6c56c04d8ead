//! What the measurements and the plot share: the phases of a function VM's
//! cold start, quantiles and the statistics of samples.

use serde_json::{json, Value};

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

/// The `p` quantile of `v`, NaN when empty.
pub(super) fn quantile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    quantile_sorted(&v, p)
}

pub(crate) fn stats(mut v: Vec<f64>) -> Value {
    if v.is_empty() {
        return Value::Null;
    }
    v.sort_by(f64::total_cmp);
    let q = |p: f64| quantile_sorted(&v, p);
    json!({"n": v.len(), "min": v[0], "p50": q(0.5), "p95": q(0.95), "p99": q(0.99), "max": v[v.len() - 1]})
}

pub(crate) fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The median of `a` over the median of `b`; NaN unless `b`'s is positive.
pub(super) fn median_ratio(a: &[f64], b: &[f64]) -> f64 {
    let (a, b) = (median(a), median(b));
    if b > 0.0 {
        a / b
    } else {
        f64::NAN
    }
}
