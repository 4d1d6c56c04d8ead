//! Host memory each live VM really holds, summed per function for
//! `/metrics` (issue 25): a jailed VM's cgroup `memory.current` (guest RAM
//! the guest touched and the host still holds, its page tables, its share
//! of page cache charged to it), else the VMM process's `Pss` from
//! `/proc/<pid>/smaps_rollup`; and its balloon's counters.
//!
//! Each VM registers when booted and is removed when its
//! [`Registration`] drops (the environment is destroyed); it is marked
//! busy while it runs an invocation, so the figures split idle from busy.
//! Reading happens only when `/metrics` is rendered.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::vm_env::BalloonCounters;

/// Where a VM's held memory is read.
#[derive(Debug, Clone)]
pub enum MemorySource {
    /// The VM's cgroup directory (`memory.current`).
    Cgroup(PathBuf),
    /// The VMM process (`smaps_rollup` `Pss`), unjailed VMs.
    Pid(u32),
    /// Nothing to read (the VMM is gone).
    None,
}

impl MemorySource {
    /// Bytes held now, if readable.
    pub fn held_bytes(&self) -> Option<u64> {
        match self {
            MemorySource::Cgroup(dir) => std::fs::read_to_string(dir.join("memory.current"))
                .ok()?
                .trim()
                .parse()
                .ok(),
            MemorySource::Pid(pid) => {
                let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
                text.lines().find_map(|l| {
                    let kib: u64 = l
                        .strip_prefix("Pss:")?
                        .trim()
                        .strip_suffix("kB")?
                        .trim()
                        .parse()
                        .ok()?;
                    Some(kib * 1024)
                })
            }
            MemorySource::None => None,
        }
    }

    /// Bytes of the VM in the host's swap (its cgroup's
    /// `memory.swap.current`: idle reclaim), 0 when not jailed.
    pub fn swapped_bytes(&self) -> u64 {
        match self {
            MemorySource::Cgroup(dir) => std::fs::read_to_string(dir.join("memory.swap.current"))
                .ok()
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or(0),
            _ => 0,
        }
    }
}

struct Entry {
    function: String,
    source: MemorySource,
    dir: PathBuf,
    busy: Arc<AtomicBool>,
    idle: Arc<Mutex<IdleSince>>,
}

/// Since when a VM is idle, and whether idle reclaim (`crate::vm_reclaim`)
/// already paged it out in this idle period.
struct IdleSince {
    since: Instant,
    reclaimed: bool,
    /// What the VM held once paged out (bytes), until it is busy again.
    held_after_reclaim: Option<u64>,
}

/// A VM idle reclaim paged out: where to record what it holds since.
pub struct Reclaimed(Arc<Mutex<IdleSince>>);

impl Reclaimed {
    /// Records that the VM holds `bytes` of host memory now (unless an
    /// invocation took it meanwhile).
    pub fn record(&self, bytes: u64) {
        let mut idle = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if idle.reclaimed {
            idle.held_after_reclaim = Some(bytes);
        }
    }
}

/// The live VMs, for `/metrics`.
#[derive(Default)]
pub struct MemoryRegistry {
    next: AtomicU64,
    vms: Mutex<HashMap<u64, Entry>>,
}

/// One VM's place in the registry; removes it on drop.
pub struct Registration {
    registry: Arc<MemoryRegistry>,
    id: u64,
    busy: Arc<AtomicBool>,
    idle: Arc<Mutex<IdleSince>>,
}

impl Registration {
    /// Marks the VM busy (running an invocation) or idle; idle from now.
    pub fn set_busy(&self, busy: bool) {
        self.busy.store(busy, Ordering::Relaxed);
        *self.idle.lock().unwrap_or_else(|p| p.into_inner()) = IdleSince {
            since: Instant::now(),
            reclaimed: false,
            held_after_reclaim: None,
        };
    }

    /// Host memory (MiB, rounded up) the VM holds since idle reclaim paged
    /// it out; `None` if it was not paged out since it last ran.
    pub fn held_mib(&self) -> Option<u64> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.held_after_reclaim.map(|b| b.div_ceil(1 << 20))
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry
            .vms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

/// Per function and state: VMs, bytes held, balloon counters summed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// VMs counted.
    pub vms: u64,
    /// Bytes they hold.
    pub bytes: u64,
    /// Bytes of theirs in the host's swap (idle reclaim).
    pub swapped: u64,
    /// Their balloons' counters, summed.
    pub balloon: BalloonCounters,
}

impl MemoryRegistry {
    /// Registers a live VM of `function`, its memory read from `source`
    /// and its balloon's counters from its directory `dir`.
    pub fn register(
        self: &Arc<Self>,
        function: &str,
        source: MemorySource,
        dir: PathBuf,
    ) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let busy = Arc::new(AtomicBool::new(false));
        let idle = Arc::new(Mutex::new(IdleSince {
            since: Instant::now(),
            reclaimed: false,
            held_after_reclaim: None,
        }));
        self.vms.lock().unwrap_or_else(|p| p.into_inner()).insert(
            id,
            Entry {
                function: function.to_string(),
                source,
                dir,
                busy: busy.clone(),
                idle: idle.clone(),
            },
        );
        Registration {
            registry: self.clone(),
            id,
            busy,
            idle,
        }
    }

    /// The jailed VMs idle for at least `after` and not reclaimed since
    /// they went idle: (function, cgroup, where to record what it holds
    /// afterwards), each marked reclaimed.
    pub fn due_for_reclaim(&self, after: Duration) -> Vec<(String, PathBuf, Reclaimed)> {
        let vms = self.vms.lock().unwrap_or_else(|p| p.into_inner());
        let mut due = Vec::new();
        for e in vms.values() {
            let MemorySource::Cgroup(cgroup) = &e.source else {
                continue;
            };
            if e.busy.load(Ordering::Relaxed) {
                continue;
            }
            let mut idle = e.idle.lock().unwrap_or_else(|p| p.into_inner());
            if !idle.reclaimed && idle.since.elapsed() >= after {
                idle.reclaimed = true;
                due.push((
                    e.function.clone(),
                    cgroup.clone(),
                    Reclaimed(e.idle.clone()),
                ));
            }
        }
        due
    }

    /// Reads every VM now: per (function, "idle" or "busy").
    pub fn held(&self) -> BTreeMap<(String, &'static str), Held> {
        let vms: Vec<(String, MemorySource, PathBuf, bool)> = self
            .vms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|e| {
                let busy = e.busy.load(Ordering::Relaxed);
                (e.function.clone(), e.source.clone(), e.dir.clone(), busy)
            })
            .collect();
        let mut out: BTreeMap<(String, &'static str), Held> = BTreeMap::new();
        for (function, source, dir, busy) in vms {
            let h = out
                .entry((function, if busy { "busy" } else { "idle" }))
                .or_default();
            h.vms += 1;
            h.bytes += source.held_bytes().unwrap_or(0);
            h.swapped += source.swapped_bytes();
            if let Some(c) = crate::vm_env::balloon::read_counters(&dir) {
                let b = &mut h.balloon;
                b.reports += c.reports;
                b.pages_reported += c.pages_reported;
                b.discarded_bytes += c.discarded_bytes;
            }
        }
        out
    }

    /// The Prometheus text: memory held and balloon activity per function
    /// and state.
    pub fn render(&self) -> String {
        let held = self.held();
        let mut out = String::new();
        let esc = crate::metrics::escape;
        for (name, kind, help, get) in [
            (
                "silo_memory_held_bytes",
                "gauge",
                "Host memory held by live VMs (cgroup memory.current, else VMM Pss), by function and state.",
                (|h: &Held| h.bytes) as fn(&Held) -> u64,
            ),
            (
                "silo_memory_swapped_bytes",
                "gauge",
                "Bytes of live VMs in the host's swap (cgroup memory.swap.current: idle reclaim), by function and state.",
                |h: &Held| h.swapped,
            ),
            (
                "silo_memory_vms",
                "gauge",
                "Live VMs counted in silo_memory_held_bytes.",
                |h: &Held| h.vms,
            ),
            (
                "silo_balloon_reports",
                "gauge",
                "Free page reports the live VMs' balloons served.",
                |h: &Held| h.balloon.reports,
            ),
            (
                "silo_balloon_pages_reported",
                "gauge",
                "4 KiB pages the live VMs' guests reported free.",
                |h: &Held| h.balloon.pages_reported,
            ),
            (
                "silo_balloon_discarded_bytes",
                "gauge",
                "Bytes the live VMs' balloons gave back to the host.",
                |h: &Held| h.balloon.discarded_bytes,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for ((f, state), h) in &held {
                let _ = writeln!(
                    out,
                    "{name}{{function=\"{}\",state=\"{state}\"}} {}",
                    esc(f),
                    get(h)
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_per_function_and_state_and_forgets_dropped_vms() {
        let r = Arc::new(MemoryRegistry::default());
        let me = std::process::id();
        let dir = std::env::temp_dir();
        let a = r.register("f\"1", MemorySource::Pid(me), dir.clone());
        let b = r.register("f\"1", MemorySource::Pid(me), dir.clone());
        let _c = r.register("g", MemorySource::None, dir.clone());
        b.set_busy(true);
        let held = r.held();
        let idle = held[&("f\"1".to_string(), "idle")];
        assert_eq!(idle.vms, 1);
        assert!(idle.bytes > 0, "this process's Pss: {idle:?}");
        assert_eq!(held[&("f\"1".to_string(), "busy")].vms, 1);
        assert_eq!(
            held[&("g".to_string(), "idle")],
            Held {
                vms: 1,
                ..Held::default()
            }
        );
        let text = r.render();
        assert!(
            text.contains("silo_memory_vms{function=\"f\\\"1\",state=\"busy\"} 1"),
            "{text}"
        );
        drop(a);
        drop(b);
        let held = r.held();
        assert_eq!(held.len(), 1, "{held:?}");
    }

    #[test]
    fn a_cgroups_swap_is_counted() {
        let dir = std::env::temp_dir().join(format!("silo-swapped-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("memory.current"), "1048576\n").unwrap();
        std::fs::write(dir.join("memory.swap.current"), "4194304\n").unwrap();
        let r = Arc::new(MemoryRegistry::default());
        let _a = r.register("f", MemorySource::Cgroup(dir.clone()), dir.clone());
        let h = r.held()[&("f".to_string(), "idle")];
        assert_eq!((h.bytes, h.swapped), (1 << 20, 4 << 20));
        assert!(
            r.render()
                .contains("silo_memory_swapped_bytes{function=\"f\",state=\"idle\"} 4194304"),
            "{}",
            r.render()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_jailed_vms_idle_past_the_threshold_are_due_once_per_idle_period() {
        let r = Arc::new(MemoryRegistry::default());
        let dir = std::env::temp_dir();
        let jailed = r.register("f", MemorySource::Cgroup("/cg/a".into()), dir.clone());
        let _unjailed = r.register("f", MemorySource::Pid(1), dir.clone());
        let busy = r.register("g", MemorySource::Cgroup("/cg/b".into()), dir.clone());
        busy.set_busy(true);
        assert!(r.due_for_reclaim(Duration::from_secs(3600)).is_empty());
        let due = r.due_for_reclaim(Duration::ZERO);
        assert_eq!(due.len(), 1);
        assert_eq!(
            (due[0].0.as_str(), &due[0].1),
            ("f", &PathBuf::from("/cg/a"))
        );
        // What it holds once paged out is its charge until it runs again.
        assert_eq!(jailed.held_mib(), None);
        due[0].2.record(10 << 20 | 1);
        assert_eq!(jailed.held_mib(), Some(11), "MiB, rounded up");
        assert!(
            r.due_for_reclaim(Duration::ZERO).is_empty(),
            "once per idle period"
        );
        jailed.set_busy(true);
        assert_eq!(jailed.held_mib(), None, "taken: its whole memory");
        due[0].2.record(1 << 20);
        assert_eq!(jailed.held_mib(), None, "a late record is ignored");
        jailed.set_busy(false);
        assert_eq!(
            r.due_for_reclaim(Duration::ZERO).len(),
            1,
            "idle again after an invoke"
        );
    }
}
