//! Per-tenant invocation metrics, rendered in the Prometheus text format for
//! `GET /metrics` together with the scheduler's live view.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

use silo_scheduler::Stats;

/// Upper bounds (seconds) of the duration histogram buckets.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Default, Clone)]
struct Series {
    invocations: u64,
    errors: u64,
    throttles: u64,
    cold_starts: u64,
    buckets: [u64; BUCKETS.len()],
    duration_sum: f64,
    duration_count: u64,
    /// When it was last counted in (the table's clock): of two series with
    /// as many invocations, the one counted in longer ago goes first.
    touched: u64,
}

/// How one invocation ended, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The function returned a response.
    Ok,
    /// The function (or its environment) failed.
    Error,
    /// Refused by a concurrency limit.
    Throttled,
}

/// Upper bounds (seconds) of the boot duration histogram buckets.
const BOOT_BUCKETS: [f64; 10] = [0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

#[derive(Default, Clone)]
struct BootHistogram {
    buckets: [u64; BOOT_BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Series {
    /// Adds `other`'s counts to these.
    fn absorb(&mut self, other: &Series) {
        self.invocations += other.invocations;
        self.errors += other.errors;
        self.throttles += other.throttles;
        self.cold_starts += other.cold_starts;
        for (b, o) in self.buckets.iter_mut().zip(other.buckets) {
            *b += o;
        }
        self.duration_sum += other.duration_sum;
        self.duration_count += other.duration_count;
    }
}

/// Tenants with a series of their own, across all functions, unless the
/// configuration says otherwise (`metrics_tenant_series`).
pub const DEFAULT_TENANT_SERIES: usize = 200;

/// The `tenant_id` label of the series that sums up a function's tenants
/// without a series of their own: parentheses are not allowed in tenant
/// ids, so no tenant's series can be mistaken for it.
pub const OTHER_TENANTS: &str = "(other)";

/// The series: at most `max_tenants` (function, tenant) ones; a function's
/// tenants beyond them are summed in its [`OTHER_TENANTS`] series.
#[derive(Default)]
struct Table {
    max_tenants: usize,
    /// By (function, tenant); tenant `""` for functions without tenant
    /// isolation (one per function: never evicted).
    series: BTreeMap<(String, String), Series>,
    /// Tenant series held in `series` (tenant not `""`).
    tenants: usize,
    /// Per function: what evicted tenants counted.
    other: BTreeMap<String, Series>,
    /// Counts calls of [`Table::entry`].
    clock: u64,
}

impl Table {
    /// The series of (`function`, `tenant`), made room for if new: when
    /// `max_tenants` tenant series exist, the one with the fewest
    /// invocations (of those, the one counted in longest ago) goes into its
    /// function's [`OTHER_TENANTS`] series. Heavy tenants keep theirs; the
    /// counts of every series only ever grow, summed over a function.
    fn entry(&mut self, function: &str, tenant: &str) -> &mut Series {
        self.clock += 1;
        let now = self.clock;
        let key = (function.to_string(), tenant.to_string());
        if !tenant.is_empty() && !self.series.contains_key(&key) {
            if self.tenants >= self.max_tenants {
                let victim = self
                    .series
                    .iter()
                    .filter(|((_, t), _)| !t.is_empty())
                    .min_by_key(|(_, s)| (s.invocations, s.touched))
                    .map(|(k, _)| k.clone());
                match victim {
                    Some(v) => {
                        let evicted = self.series.remove(&v).expect("victim present");
                        self.other.entry(v.0).or_default().absorb(&evicted);
                        self.tenants -= 1;
                    }
                    // No room at all (`max_tenants` 0): straight to `other`.
                    None => return self.other.entry(key.0).or_default(),
                }
            }
            self.tenants += 1;
        }
        let s = self.series.entry(key).or_default();
        s.touched = now;
        s
    }

    /// Every series to render, by (function, tenant label).
    fn rendered(&self) -> BTreeMap<(String, String), Series> {
        let mut all = self.series.clone();
        for (f, s) in &self.other {
            all.insert((f.clone(), OTHER_TENANTS.to_string()), s.clone());
        }
        all
    }
}

/// Counters keyed by (function, tenant); tenant `""` for functions without
/// tenant isolation. At most [`Metrics::with_tenant_series`] tenants (the
/// busiest) have series of their own, so that any number of tenants keeps
/// `/metrics` bounded; the others' counts go to [`OTHER_TENANTS`].
pub struct Metrics {
    series: Mutex<Table>,
    boots: Mutex<BootHistogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::with_tenant_series(DEFAULT_TENANT_SERIES)
    }
}

pub(crate) fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// Metrics keeping series of their own for at most `max_tenants`
    /// (function, tenant) pairs.
    pub fn with_tenant_series(max_tenants: usize) -> Self {
        Self {
            series: Mutex::new(Table {
                max_tenants,
                ..Table::default()
            }),
            boots: Mutex::new(BootHistogram::default()),
        }
    }

    /// Records one invocation.
    pub fn record(
        &self,
        function: &str,
        tenant: Option<&str>,
        ending: Ending,
        cold_start: bool,
        duration: Duration,
    ) {
        let mut m = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let s = m.entry(function, tenant.unwrap_or(""));
        s.invocations += 1;
        match ending {
            Ending::Ok => {}
            Ending::Error => s.errors += 1,
            Ending::Throttled => {
                s.throttles += 1;
                return;
            }
        }
        if cold_start {
            s.cold_starts += 1;
        }
        let secs = duration.as_secs_f64();
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                s.buckets[i] += 1;
            }
        }
        s.duration_sum += secs;
        s.duration_count += 1;
    }

    /// Records one environment boot (VMM start to agent ready).
    pub fn record_boot(&self, duration: Duration) {
        let mut h = self.boots.lock().unwrap_or_else(|p| p.into_inner());
        let secs = duration.as_secs_f64();
        for (i, le) in BOOT_BUCKETS.iter().enumerate() {
            if secs <= *le {
                h.buckets[i] += 1;
            }
        }
        h.sum += secs;
        h.count += 1;
    }

    /// The Prometheus text exposition of these counters and `stats`.
    pub fn render(&self, stats: &Stats) -> String {
        let m = self
            .series
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .rendered();
        let mut out = String::new();
        let label =
            |f: &str, t: &str| format!("function=\"{}\",tenant_id=\"{}\"", escape(f), escape(t));
        let counter = |out: &mut String, name: &str, help: &str, get: &dyn Fn(&Series) -> u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for ((f, t), s) in &m {
                let _ = writeln!(out, "{name}{{{}}} {}", label(f, t), get(s));
            }
        };
        counter(
            &mut out,
            "silo_invocations_total",
            "Invocations received, by tenant.",
            &|s| s.invocations,
        );
        counter(
            &mut out,
            "silo_invocation_errors_total",
            "Invocations that ended in a function or environment error.",
            &|s| s.errors,
        );
        counter(
            &mut out,
            "silo_throttles_total",
            "Invocations refused by a concurrency limit.",
            &|s| s.throttles,
        );
        counter(
            &mut out,
            "silo_cold_starts_total",
            "Execution environments (microVMs) created.",
            &|s| s.cold_starts,
        );
        let name = "silo_invocation_duration_seconds";
        let _ = writeln!(out, "# HELP {name} Invocation time through the scheduler, cold starts included.\n# TYPE {name} histogram");
        for ((f, t), s) in &m {
            let l = label(f, t);
            for (i, le) in BUCKETS.iter().enumerate() {
                let _ = writeln!(out, "{name}_bucket{{{l},le=\"{le}\"}} {}", s.buckets[i]);
            }
            let _ = writeln!(out, "{name}_bucket{{{l},le=\"+Inf\"}} {}", s.duration_count);
            let _ = writeln!(out, "{name}_sum{{{l}}} {}", s.duration_sum);
            let _ = writeln!(out, "{name}_count{{{l}}} {}", s.duration_count);
        }
        let _ = writeln!(out, "# HELP silo_environments Execution environments alive (busy, idle or booting).\n# TYPE silo_environments gauge");
        for (f, n) in sorted(&stats.environments) {
            let _ = writeln!(out, "silo_environments{{function=\"{}\"}} {n}", escape(f));
        }
        let _ = writeln!(
            out,
            "# HELP silo_in_flight Invocations running now.\n# TYPE silo_in_flight gauge"
        );
        for (f, n) in sorted(&stats.in_flight) {
            let _ = writeln!(out, "silo_in_flight{{function=\"{}\"}} {n}", escape(f));
        }
        let _ = writeln!(out, "# HELP silo_idle_environments Idle execution environments, by tenant.\n# TYPE silo_idle_environments gauge");
        let mut idle: BTreeMap<(String, String), usize> = BTreeMap::new();
        for (b, n) in &stats.idle {
            let t = b.tenant.as_ref().map(|t| t.as_str()).unwrap_or("");
            *idle
                .entry((b.function.name.clone(), t.to_string()))
                .or_default() += n;
        }
        for ((f, t), n) in idle {
            let _ = writeln!(out, "silo_idle_environments{{{}}} {n}", label(&f, &t));
        }
        let c = &stats.counters;
        for (name, help, v) in [
            (
                "silo_environments_destroyed_total",
                "Environments destroyed for any reason.",
                c.destroyed,
            ),
            (
                "silo_environment_failures_total",
                "Environments destroyed because they failed.",
                c.env_failures,
            ),
            (
                "silo_environments_evicted_total",
                "Idle environments evicted at the environment cap.",
                c.evictions,
            ),
            (
                "silo_memory_over_budget_total",
                "Paged-out idle environments taken back with no idle one left to evict: the host went over its memory budget.",
                c.memory_over_budget,
            ),
            (
                "silo_environments_reaped_total",
                "Idle environments reaped after the idle timeout.",
                c.reaped,
            ),
            (
                "silo_environment_boot_failures_total",
                "Environments that failed to boot (pooled ones: or to finish their runtime's init).",
                c.create_failures,
            ),
            (
                "silo_cold_start_handoffs_total",
                "Cold starts that waited for a boot slot and were served by an idle environment of their tenant instead.",
                c.warm_handoffs,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        for (name, help, v) in [
            (
                "silo_cold_starts_in_progress",
                "Environments booting now.",
                stats.booting,
            ),
            (
                "silo_cold_starts_peak",
                "Most environments ever booting at once.",
                stats.peak_booting,
            ),
            (
                "silo_cold_start_queue_depth",
                "Cold starts waiting for a boot slot now.",
                stats.queued,
            ),
            (
                "silo_cold_start_max_booting",
                "Environments allowed to boot at once.",
                stats.admission.max_booting,
            ),
            (
                "silo_cold_start_queue_capacity",
                "Cold starts allowed to wait for a boot slot.",
                stats.admission.queue_capacity,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        for (name, help, idx) in [
            (
                "silo_pool_size",
                "Environments a function keeps booted ahead of time, bound to no tenant.",
                0,
            ),
            ("silo_pool_ready", "Pooled environments ready now.", 1),
            ("silo_pool_booting", "Pooled environments booting now.", 2),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            let mut pools: Vec<_> = stats.pools.iter().collect();
            pools.sort();
            for (f, p) in pools {
                let v = [p.0, p.1, p.2][idx];
                let _ = writeln!(out, "{name}{{function=\"{}\"}} {v}", escape(f));
            }
        }
        for (name, help, v) in [
            (
                "silo_pool_boots_total",
                "Environments booted into pools.",
                c.pool_boots,
            ),
            (
                "silo_pool_takes_total",
                "Pooled environments bound to a new tenant's invoke.",
                c.pool_takes,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        let name = "silo_refusals_total";
        let _ = writeln!(
            out,
            "# HELP {name} Invocations refused (429), by reason.\n# TYPE {name} counter"
        );
        for r in silo_scheduler::ThrottleReason::ALL {
            let n = c.throttles_by_reason.get(&r).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}{{reason=\"{}\"}} {n}", r.as_str());
        }
        let h = self.boots.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let name = "silo_environment_boot_seconds";
        let _ = writeln!(out, "# HELP {name} Environment boot time, VMM start to agent ready (without any wait for a boot slot).\n# TYPE {name} histogram");
        for (i, le) in BOOT_BUCKETS.iter().enumerate() {
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {}", h.buckets[i]);
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(out, "{name}_sum {}", h.sum);
        let _ = writeln!(out, "{name}_count {}", h.count);
        out
    }
}

fn sorted<V: Copy>(m: &std::collections::HashMap<String, V>) -> Vec<(&String, V)> {
    let mut v: Vec<_> = m.iter().map(|(k, v)| (k, *v)).collect();
    v.sort_by(|a, b| a.0.cmp(b.0));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_per_tenant_series() {
        let m = Metrics::default();
        m.record(
            "f",
            Some("tenant-A"),
            Ending::Ok,
            true,
            Duration::from_millis(30),
        );
        m.record(
            "f",
            Some("tenant-A"),
            Ending::Error,
            false,
            Duration::from_millis(3),
        );
        m.record(
            "f",
            Some("tenant-\"B"),
            Ending::Throttled,
            false,
            Duration::ZERO,
        );
        let text = m.render(&Stats::default());
        assert!(
            text.contains("silo_invocations_total{function=\"f\",tenant_id=\"tenant-A\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("silo_invocation_errors_total{function=\"f\",tenant_id=\"tenant-A\"} 1")
        );
        assert!(text.contains("silo_cold_starts_total{function=\"f\",tenant_id=\"tenant-A\"} 1"));
        assert!(text.contains("silo_throttles_total{function=\"f\",tenant_id=\"tenant-\\\"B\"} 1"));
        assert!(text.contains("silo_invocation_duration_seconds_bucket{function=\"f\",tenant_id=\"tenant-A\",le=\"0.005\"} 1"));
        assert!(text.contains(
            "silo_invocation_duration_seconds_count{function=\"f\",tenant_id=\"tenant-A\"} 2"
        ));
    }

    /// Tenant ids are label values, escaped; whatever they hold (`../x`,
    /// spaces, a quote or backslash, were they ever allowed) stays inside
    /// its label.
    #[test]
    fn tenant_labels_are_escaped() {
        let m = Metrics::default();
        for t in ["../x", "tenant A", "a\"b\\c", "x\ny"] {
            m.record("f", Some(t), Ending::Ok, false, Duration::ZERO);
        }
        let text = m.render(&Stats::default());
        for line in [
            r#"silo_invocations_total{function="f",tenant_id="../x"} 1"#,
            r#"silo_invocations_total{function="f",tenant_id="tenant A"} 1"#,
            r#"silo_invocations_total{function="f",tenant_id="a\"b\\c"} 1"#,
            r#"silo_invocations_total{function="f",tenant_id="x\ny"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        // Every sample line is `name{labels} value`: nothing broke out.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            assert_eq!(l.matches('{').count(), l.matches('}').count(), "{l}");
            assert!(l.rsplit(' ').next().unwrap().parse::<f64>().is_ok(), "{l}");
        }
    }

    /// Issue 19, finding 7: 100,000 tenants (each invoking once, as a
    /// tenant-per-request client would) leave `/metrics` as long as
    /// `max_tenants` tenants do: the busy ones (every tenth invoke) keep
    /// their exact series, the rest are summed under `(other)`, and no
    /// invocation is lost.
    #[test]
    fn a_hundred_thousand_tenants_keep_the_text_bounded() {
        const N: usize = 50;
        let m = Metrics::with_tenant_series(N);
        let heavy: Vec<String> = (0..5).map(|i| format!("heavy-{i}")).collect();
        for i in 0..100_000u32 {
            if i % 10 == 0 {
                for h in &heavy {
                    m.record("f", Some(h), Ending::Ok, false, Duration::from_millis(2));
                }
            }
            let t = format!("tenant-{i}");
            m.record(
                "f",
                Some(&t),
                Ending::Ok,
                i % 7 == 0,
                Duration::from_millis(20),
            );
            m.record(
                "g",
                Some(&t),
                Ending::Error,
                false,
                Duration::from_millis(1),
            );
        }
        let text = m.render(&Stats::default());
        // The text of N tenant series plus an `(other)` per function.
        let full = Metrics::with_tenant_series(N);
        for i in 0..N + 2 {
            full.record(
                "f",
                Some(&format!("tenant-{i}")),
                Ending::Ok,
                true,
                Duration::ZERO,
            );
        }
        let bound = full.render(&Stats::default()).len() * 11 / 10;
        eprintln!(
            "{} bytes of /metrics for 100,000 tenants (bound {bound})",
            text.len()
        );
        assert!(
            text.len() <= bound,
            "{} bytes, more than {bound}",
            text.len()
        );
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("silo_invocations_total{"))
            .collect();
        assert!(series.len() <= N + 2, "{} series", series.len());
        for h in &heavy {
            let line = format!("silo_invocations_total{{function=\"f\",tenant_id=\"{h}\"}} 10000");
            assert!(
                series.contains(&line.as_str()),
                "{line} missing in {series:?}"
            );
        }
        let total = |f: &str| -> u64 {
            series
                .iter()
                .filter(|l| l.contains(&format!("function=\"{f}\"")))
                .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
                .sum()
        };
        assert_eq!(total("f"), 100_000 + 50_000);
        assert_eq!(total("g"), 100_000);
        assert!(text.contains("silo_invocation_errors_total{function=\"g\",tenant_id=\"(other)\"}"));
    }
}
