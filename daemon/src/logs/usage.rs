//! Usage per (function, tenant), by UTC day: environments created,
//! invocations, GB-seconds of (billed) duration, errors and throttles, what
//! a SaaS operator bills its tenants on. Counted in memory by the invoke
//! path (a map update), saved to `<data_dir>/logs/usage.json` by the log
//! writer thread every few seconds and at shutdown, and dropped with the
//! function's log retention.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// One (function, tenant, day)'s counters, or a sum of them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Execution environments created (cold starts).
    pub environments: u64,
    /// Invocations that ran (answered with a result or a function error).
    pub invocations: u64,
    /// Billed duration times memory, in GB-seconds.
    pub gb_seconds: f64,
    /// Invocations that ended in an error.
    pub errors: u64,
    /// Invocations refused for concurrency or capacity.
    pub throttles: u64,
}

impl Usage {
    fn add(&mut self, o: &Usage) {
        self.environments += o.environments;
        self.invocations += o.invocations;
        self.gb_seconds += o.gb_seconds;
        self.errors += o.errors;
        self.throttles += o.throttles;
    }
}

/// How one invocation ended, for usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It ran and answered.
    Ok,
    /// It ran (or tried to) and failed.
    Error,
    /// It was refused before running.
    Throttled,
}

/// A key of the book: (function, tenant or "", UTC day number).
type Key = (String, String, u64);

/// The usage book.
#[derive(Debug)]
pub struct UsageBook {
    path: PathBuf,
    root: PathBuf,
    table: Mutex<BTreeMap<Key, Usage>>,
    dirty: AtomicBool,
}

#[derive(Serialize, Deserialize)]
struct Row {
    function: String,
    tenant: String,
    day: u64,
    usage: Usage,
}

const DAY_MS: u64 = 86_400_000;

impl UsageBook {
    /// The book kept under `root` (the log store's root), with what a
    /// previous run saved.
    pub fn open(root: PathBuf) -> Self {
        let path = root.join("usage.json");
        let rows: Vec<Row> = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let table = rows
            .into_iter()
            .map(|r| ((r.function, r.tenant, r.day), r.usage))
            .collect();
        Self {
            path,
            root,
            table: Mutex::new(table),
            dirty: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Key, Usage>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one invocation at `now_ms`.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        function: &str,
        tenant: Option<&str>,
        outcome: Outcome,
        cold: bool,
        duration: Option<Duration>,
        memory_mib: u32,
        now_ms: u64,
    ) {
        let mut u = Usage {
            environments: u64::from(cold),
            ..Usage::default()
        };
        match outcome {
            Outcome::Throttled => u.throttles = 1,
            o => {
                u.invocations = 1;
                u.errors = u64::from(o == Outcome::Error);
            }
        }
        if let Some(d) = duration {
            let billed_s = super::format::billed_ms(d) as f64 / 1000.0;
            u.gb_seconds = billed_s * f64::from(memory_mib) / 1024.0;
        }
        let key = (
            function.to_string(),
            tenant.unwrap_or("").to_string(),
            now_ms / DAY_MS,
        );
        self.lock().entry(key).or_default().add(&u);
        self.dirty.store(true, Ordering::Release);
    }

    /// The sums per tenant ("" for none) of `function` (all functions:
    /// `None`) between `from_ms` and `to_ms` (whole UTC days), for the
    /// tenants `allowed` lets through.
    pub fn query(
        &self,
        function: Option<&str>,
        allowed: &dyn Fn(&str) -> bool,
        from_ms: u64,
        to_ms: u64,
    ) -> BTreeMap<(String, String), Usage> {
        let mut out: BTreeMap<(String, String), Usage> = BTreeMap::new();
        for ((f, t, day), u) in self.lock().iter() {
            if function.is_some_and(|x| x != f)
                || !allowed(t)
                || *day < from_ms / DAY_MS
                || *day > to_ms / DAY_MS
            {
                continue;
            }
            out.entry((f.clone(), t.clone())).or_default().add(u);
        }
        out
    }

    /// Drops days past their function's log retention and saves the book
    /// if it changed.
    pub fn sweep_and_save(&self) {
        let now_day = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64
            / DAY_MS;
        let rows: Vec<Row> = {
            let mut t = self.lock();
            let before = t.len();
            let mut retention: BTreeMap<String, Option<u32>> = BTreeMap::new();
            t.retain(|(f, _, day), _| {
                let r = *retention
                    .entry(f.clone())
                    .or_insert_with(|| super::store::retention_days(&self.root, f));
                r.is_none_or(|days| day + u64::from(days) >= now_day)
            });
            if t.len() == before && !self.dirty.swap(false, Ordering::AcqRel) {
                return;
            }
            t.iter()
                .map(|((f, tn, d), u)| Row {
                    function: f.clone(),
                    tenant: tn.clone(),
                    day: *d,
                    usage: u.clone(),
                })
                .collect()
        };
        let tmp = self.path.with_extension("json.tmp");
        let ok = serde_json::to_vec(&rows)
            .ok()
            .and_then(|b| std::fs::write(&tmp, b).ok())
            .and_then(|()| std::fs::rename(&tmp, &self.path).ok());
        if ok.is_none() {
            self.dirty.store(true, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_sums_per_tenant_and_survives_a_reopen() {
        let dir = std::env::temp_dir().join(format!("silo-usage-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let book = UsageBook::open(dir.clone());
        let now = 1_765_000_000_000;
        let d = Some(Duration::from_millis(1000));
        book.record("f", Some("a"), Outcome::Ok, true, d, 1024, now);
        book.record("f", Some("a"), Outcome::Error, false, d, 1024, now);
        book.record("f", Some("b"), Outcome::Throttled, false, None, 1024, now);
        book.sweep_and_save();
        let again = UsageBook::open(dir.clone());
        let q = again.query(Some("f"), &|t| t == "a", now - DAY_MS, now);
        let a = &q[&("f".to_string(), "a".to_string())];
        assert_eq!((a.environments, a.invocations, a.errors), (1, 2, 1));
        assert!((a.gb_seconds - 2.0).abs() < 1e-9);
        assert_eq!(q.len(), 1);
        let all = again.query(None, &|_| true, 0, now);
        assert_eq!(all[&("f".to_string(), "b".to_string())].throttles, 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
