//! The scheduler's shared state: environments per function and binding,
//! the queue of cold starts waiting for a boot slot, counters and the
//! snapshot given to metrics.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::admission::{Admission, BootEstimate};
use crate::fair::Party;
use crate::pools::Pool;
use crate::{Binding, FunctionKey, TenantId, ThrottleReason};

pub(crate) struct Idle<E> {
    pub(crate) env: E,
    pub(crate) id: u64,
    pub(crate) last_used: Instant,
    /// Memory (MiB) it is charged in the host's budget: its guest memory,
    /// or less while idle and paged out ([`crate::Environment::held_mib`]).
    pub(crate) mem: u64,
    /// Its guest memory (MiB): its charge again once it is taken.
    pub(crate) full: u64,
}

impl<E> Idle<E> {
    /// An idle environment charged its whole guest memory `mem`.
    pub(crate) fn new(env: E, id: u64, mem: u64) -> Self {
        Self {
            env,
            id,
            last_used: std::time::Instant::now(),
            mem,
            full: mem,
        }
    }
}

#[derive(Default)]
pub(crate) struct FunctionState {
    pub(crate) current_version: Option<String>,
    pub(crate) deleted: bool,
    pub(crate) in_flight: u32,
    pub(crate) environments: u32,
    pub(crate) tenant_in_flight: HashMap<Option<TenantId>, u32>,
}

impl FunctionState {
    /// Whether pool boots of `version` are still wanted: the function is not
    /// deleted and `version` is its current one (or none is set yet).
    pub(crate) fn wants_pool_boots(&self, version: &str) -> bool {
        !self.deleted && self.current_version.as_deref().is_none_or(|v| v == version)
    }
}

/// Counters since start.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counters {
    /// Invocations accepted.
    pub invocations: u64,
    /// Environments created.
    pub cold_starts: u64,
    /// Invocations throttled.
    pub throttles: u64,
    /// Environments that failed and were destroyed.
    pub env_failures: u64,
    /// Idle environments evicted at the cap.
    pub evictions: u64,
    /// Idle environments reaped after the timeout.
    pub reaped: u64,
    /// Environments destroyed, for any reason.
    pub destroyed: u64,
    /// Invocations throttled, by reason.
    pub throttles_by_reason: HashMap<ThrottleReason, u64>,
    /// Cold starts that waited and were then served by an idle environment
    /// of their binding instead of a boot.
    pub warm_handoffs: u64,
    /// Environment creations that failed.
    pub create_failures: u64,
    /// Environments booted into pools.
    pub pool_boots: u64,
    /// Pooled environments taken by a new tenant's invoke.
    pub pool_takes: u64,
    /// Paged-out environments taken back while no idle environment was
    /// left to evict: the host went over its memory budget until they end.
    pub memory_over_budget: u64,
}

/// A point-in-time view for metrics.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Idle environments per binding.
    pub idle: HashMap<Binding, usize>,
    /// Environments (busy, idle or creating) per function name.
    pub environments: HashMap<String, u32>,
    /// In-flight invocations per function name.
    pub in_flight: HashMap<String, u32>,
    /// In-flight invocations per (function name, tenant).
    pub tenant_in_flight: HashMap<(String, Option<TenantId>), u32>,
    /// Counters.
    pub counters: Counters,
    /// Environments booting now.
    pub booting: usize,
    /// Of `booting`, pool boots.
    pub pool_booting: usize,
    /// Most environments ever booting at once.
    pub peak_booting: usize,
    /// Cold starts waiting for a boot slot now.
    pub queued: usize,
    /// The admission limits in force.
    pub admission: Admission,
    /// Current estimate of one boot's duration, once one was measured.
    pub boot_estimate: Option<Duration>,
    /// Guest memory (MiB) of environments booting or booted now (those
    /// being destroyed included).
    pub memory_used: u64,
    /// In-flight invocations of functions without reserved concurrency.
    pub unreserved_in_flight: u32,
    /// Environments (busy, idle, booting or waiting to boot) per tenant,
    /// across functions.
    pub tenant_environments: HashMap<TenantId, u32>,
    /// Pools per function name: (target size, ready, booting).
    pub pools: HashMap<String, (usize, usize, usize)>,
}

/// What a queued cold start receives.
pub(crate) enum Grant<E> {
    /// A boot slot: create the environment.
    Boot,
    /// An idle environment of the waiter's binding.
    Warm(Idle<E>),
}

pub(crate) struct Waiter<E> {
    pub(crate) ticket: u64,
    pub(crate) binding: Binding,
    pub(crate) tx: oneshot::Sender<Grant<E>>,
    /// A pool refill: served only when no invoke waits.
    pub(crate) pool: bool,
    /// Guest memory (MiB) its environment will take.
    pub(crate) mem: u64,
}

pub(crate) struct State<E> {
    pub(crate) functions: HashMap<String, FunctionState>,
    pub(crate) idle: HashMap<Binding, Vec<Idle<E>>>,
    pub(crate) next_id: u64,
    pub(crate) counters: Counters,
    pub(crate) booting: usize,
    pub(crate) peak_booting: usize,
    /// Of `booting`, pool boots.
    pub(crate) pool_booting: usize,
    pub(crate) queue: VecDeque<Waiter<E>>,
    pub(crate) next_ticket: u64,
    pub(crate) boot_estimate: BootEstimate,
    pub(crate) pools: HashMap<FunctionKey, Pool<E>>,
    /// Guest memory (MiB) of environments booting or booted.
    pub(crate) memory_used: u64,
    /// Of `memory_used`, environments being destroyed.
    pub(crate) memory_leaving: u64,
    /// In-flight invocations of functions without reserved concurrency.
    pub(crate) unreserved_in_flight: u32,
    /// Environments per tenant, across functions (see [`crate::fair`]).
    pub(crate) tenant_envs: HashMap<TenantId, u32>,
    /// Invokes' boots in progress per party (fair queueing).
    pub(crate) party_booting: HashMap<Party, usize>,
}

impl<E> State<E> {
    /// Puts a waiter for a boot slot at the end of the queue.
    pub(crate) fn enqueue(
        &mut self,
        binding: &Binding,
        pool: bool,
        mem: u64,
    ) -> (u64, oneshot::Receiver<Grant<E>>) {
        let (tx, rx) = oneshot::channel();
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.queue.push_back(Waiter {
            ticket,
            binding: binding.clone(),
            tx,
            pool,
            mem,
        });
        (ticket, rx)
    }

    /// A state with no environments.
    pub(crate) fn new() -> Self {
        Self {
            functions: HashMap::new(),
            idle: HashMap::new(),
            next_id: 1,
            counters: Counters::default(),
            booting: 0,
            peak_booting: 0,
            pool_booting: 0,
            queue: VecDeque::new(),
            next_ticket: 1,
            boot_estimate: BootEstimate::default(),
            pools: HashMap::new(),
            memory_used: 0,
            memory_leaving: 0,
            unreserved_in_flight: 0,
            tenant_envs: HashMap::new(),
            party_booting: HashMap::new(),
        }
    }

    /// One environment less for `function` and `tenant` (None: pooled or
    /// without tenant isolation), without memory: a reservation that never
    /// booted, or one served by an environment that already counts.
    pub(crate) fn reservation_dropped(&mut self, function: &str, tenant: Option<&TenantId>) {
        if let Some(f) = self.functions.get_mut(function) {
            f.environments = f.environments.saturating_sub(1);
        }
        if let Some(t) = tenant {
            if let Some(n) = self.tenant_envs.get_mut(t) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.tenant_envs.remove(t);
                }
            }
        }
    }

    /// An environment stops counting because it is being destroyed; its
    /// `mem` is freed when [`State::env_destroyed`] says it is gone.
    pub(crate) fn env_leaving(&mut self, function: &str, tenant: Option<&TenantId>, mem: u64) {
        self.reservation_dropped(function, tenant);
        self.memory_leaving += mem;
    }

    /// An environment that was leaving is destroyed: its memory is free.
    pub(crate) fn env_destroyed(&mut self, mem: u64) {
        self.memory_used = self.memory_used.saturating_sub(mem);
        self.memory_leaving = self.memory_leaving.saturating_sub(mem);
        self.counters.destroyed += 1;
    }
}

/// Hands `idle` to the first waiting invoke (not a pool refill) whose
/// binding `wanted` accepts, in arrival order; gives it back when no waiter
/// takes it (waiters whose caller has gone are dropped on the way).
pub(crate) fn hand_to_waiter<E>(
    queue: &mut VecDeque<Waiter<E>>,
    wanted: impl Fn(&Binding) -> bool,
    mut idle: Idle<E>,
) -> Option<Idle<E>> {
    while let Some(pos) = queue.iter().position(|w| !w.pool && wanted(&w.binding)) {
        let w = queue.remove(pos).expect("position is in range");
        match w.tx.send(Grant::Warm(idle)) {
            Ok(()) => return None,
            Err(Grant::Warm(back)) => idle = back,
            Err(Grant::Boot) => unreachable!("sent a warm grant"),
        }
    }
    Some(idle)
}

impl Counters {
    pub(crate) fn throttle(&mut self, reason: ThrottleReason) {
        self.throttles += 1;
        *self.throttles_by_reason.entry(reason).or_default() += 1;
    }
}
