//! `[limits]`: scheduling, admission, shares between tenants, the Event
//! queue and the HTTP server's limits.

use serde::Deserialize;

/// Scheduling limits.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// In-flight invocations, host-wide, of the functions without reserved
    /// concurrency (one shared pool, as Lambda's unreserved account
    /// concurrency); 0 means sized from the host's memory and CPUs.
    pub concurrency: u32,
    /// Guest memory (MiB) of microVMs booting or booted, host-wide; a boot
    /// that would exceed it evicts an idle VM or waits. 0 means three
    /// quarters of the host's memory.
    pub memory_mib: u64,
    /// Environments one tenant may hold across all functions; 0 means a
    /// quarter of the host-wide concurrency, at least `per_tenant`.
    pub tenant_environments: u32,
    /// In-flight invocations of one tenant of one function.
    pub per_tenant: u32,
    /// Seconds an idle environment is kept.
    pub idle_timeout_s: u64,
    /// Asynchronous invocations queued at most (waiting, running or
    /// waiting to be retried); more are refused with a 429.
    pub event_queue: usize,
    /// Of [`event_queue`](Self::event_queue), the most one tenant (or one
    /// function without tenant isolation) may hold.
    pub event_queue_per_tenant: usize,
    /// Asynchronous invocations running at once; one tenant gets at most
    /// half of them (at least one).
    pub event_workers: usize,
    /// MicroVMs booting at once, host-wide; 0 means one per host CPU.
    pub max_booting: usize,
    /// Cold starts waiting for a boot slot, at most; more are refused (429).
    pub cold_start_queue: usize,
    /// Of the boot slots, the most that pool boots (which hold theirs
    /// through the runtime's init) may take at once; 0 means half of
    /// `max_booting`, at least 1.
    pub pool_boot_slots: usize,
    /// Seconds within which a cold start's environment must be ready after
    /// its invoke arrived (waiting for a boot slot included). A cold start
    /// that could not make it is refused at once with a 429.
    pub init_timeout_s: u64,
    /// Open HTTP connections at most; further connections wait in the
    /// listen backlog until one closes.
    pub max_connections: usize,
    /// Seconds within which a request's line and headers must arrive, from
    /// the connection's start or the end of its previous response; also how
    /// long an idle keep-alive connection is kept.
    pub header_read_timeout_s: u64,
    /// Seconds within which a request's body must arrive once its handler
    /// starts reading it (408 otherwise).
    pub body_read_timeout_s: u64,
    /// Bytes of request line and headers at most (431 otherwise).
    pub max_header_bytes: usize,
}

impl LimitsConfig {
    /// The scheduler's cold-start admission limits.
    pub fn admission(&self) -> silo_scheduler::Admission {
        let host = silo_scheduler::Admission::for_host();
        let max_booting = if self.max_booting == 0 {
            host.max_booting
        } else {
            self.max_booting
        };
        let or = |v: u64, auto: u64| if v == 0 { auto } else { v };
        let memory_mib = or(self.memory_mib, host.memory_mib);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let host_concurrency = or(
            u64::from(self.concurrency),
            u64::from(silo_scheduler::Admission::concurrency_for(memory_mib, cpus)),
        ) as u32;
        let tenant_environments = or(
            u64::from(self.tenant_environments),
            u64::from((host_concurrency / 4).max(self.per_tenant)),
        ) as u32;
        silo_scheduler::Admission {
            max_booting,
            queue_capacity: self.cold_start_queue,
            memory_mib,
            host_concurrency,
            tenant_environments,
            pool_boot_slots: if self.pool_boot_slots == 0 {
                (max_booting / 2).max(1)
            } else {
                self.pool_boot_slots.min(max_booting)
            },
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            concurrency: 0,
            memory_mib: 0,
            tenant_environments: 0,
            per_tenant: 8,
            idle_timeout_s: 300,
            event_queue: 1000,
            max_booting: 0,
            cold_start_queue: 256,
            pool_boot_slots: 0,
            init_timeout_s: 120,
            event_queue_per_tenant: 100,
            event_workers: 4,
            max_connections: 512,
            header_read_timeout_s: 10,
            body_read_timeout_s: 60,
            max_header_bytes: 16 * 1024,
        }
    }
}
