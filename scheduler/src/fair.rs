//! Fairness between tenants: the shares that hold across functions.
//!
//! - **Environments**: one tenant holds at most
//!   [`Admission::tenant_environments`] environments (busy, idle, booting or
//!   waiting to boot) across all functions; at its share a cold start first
//!   evicts the tenant's own least recently used idle environment, and with
//!   none idle is throttled ([`ThrottleReason::TenantEnvironments`]). A
//!   tenant's waiters hold reservations, so this also bounds its entries in
//!   the cold-start queue.
//! - **Boot slots and the cold-start queue**: a freed boot slot goes to the
//!   waiting invoke whose *party* (its tenant; a function without tenant
//!   isolation is a party of its own) has the fewest boots in progress,
//!   earliest arrival first among equals. A tenant arriving behind another
//!   tenant's backlog is served by the next slot that frees: it waits at
//!   most one boot. Pool boots come after every waiting invoke and take at
//!   most [`Admission::pool_boot_slots`].
//! - **Memory**: the guest memory of environments booting or booted
//!   (destroyed ones until their destruction ends) never exceeds
//!   [`Admission::memory_mib`]. A boot that would exceed it evicts the
//!   least recently used idle environment host-wide (pooled ones after
//!   idle ones) and waits for its destruction; with none to evict it waits
//!   in the queue until memory is freed (or its deadline passes).
//!   An idle environment its backend paged out is charged what it holds
//!   ([`crate::Environment::held_mib`], [`Scheduler::recharge_idle`]), so
//!   reclaim makes room for more environments; taken by an invocation it is
//!   charged its whole guest memory again, evicting least recently used
//!   idle environments if that goes over the budget (the invocation is
//!   never refused for it: with none idle left, as when many paged-out
//!   environments wake at once, the host stays over its budget until they
//!   end, counted in [`crate::Counters::memory_over_budget`]).
//! - **Concurrency**: functions without reserved concurrency draw on one
//!   host-wide pool of [`Admission::host_concurrency`] in-flight
//!   invocations ([`ThrottleReason::HostConcurrency`]); a reserved function
//!   has its own ([`ThrottleReason::FunctionConcurrency`]).

use std::collections::HashMap;

use crate::admission::Admission;
use crate::state::{Grant, Idle, State};
use crate::{Backend, Binding, Environment, Scheduler, TenantId};

/// Who a waiting cold start is queued for: its tenant, or a function
/// without tenant isolation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Party {
    /// A tenant, across functions.
    Tenant(TenantId),
    /// A function without tenant isolation.
    Function(String),
}

impl Party {
    /// The party of `binding`.
    pub(crate) fn of(binding: &Binding) -> Self {
        match &binding.tenant {
            Some(t) => Self::Tenant(t.clone()),
            None => Self::Function(binding.function.name.clone()),
        }
    }
}

/// Where an idle environment is: its binding and index in its list.
type Victim = (Binding, usize);

impl<E> State<E> {
    /// The least recently used idle environment among bindings `pick`
    /// accepts.
    pub(crate) fn lru_idle(&self, pick: impl Fn(&Binding) -> bool) -> Option<Victim> {
        self.idle
            .iter()
            .filter(|(b, _)| pick(b))
            .flat_map(|(b, v)| v.iter().enumerate().map(move |(i, e)| (e.last_used, b, i)))
            .min_by_key(|(t, _, _)| *t)
            .map(|(_, b, i)| (b.clone(), i))
    }

    /// Takes the idle environment at `victim` out of the counts, for
    /// destruction.
    pub(crate) fn evict(&mut self, victim: &Victim) -> Idle<E> {
        let (b, i) = victim;
        let idle = self.idle.get_mut(b).expect("victim binding").remove(*i);
        if self.idle.get(b).is_some_and(Vec::is_empty) {
            self.idle.remove(b);
        }
        self.env_leaving(&b.function.name, b.tenant.as_ref(), idle.mem);
        self.counters.evictions += 1;
        tracing::info!(function = %b.function.name, tenant_id = ?b.tenant.as_ref().map(TenantId::as_str).unwrap_or("-"), env_id = idle.id, "evicting least recently used idle environment");
        idle
    }

    /// Evicts one environment to free memory: the least recently used idle
    /// one host-wide, else the oldest pooled one.
    fn evict_for_memory(&mut self) -> Option<Idle<E>> {
        if let Some(v) = self.lru_idle(|_| true) {
            return Some(self.evict(&v));
        }
        let (key, i) = self
            .pools
            .iter()
            .flat_map(|(k, p)| {
                p.ready
                    .iter()
                    .enumerate()
                    .map(move |(i, e)| (e.last_used, k, i))
            })
            .min_by_key(|(t, _, _)| *t)
            .map(|(_, k, i)| (k.clone(), i))?;
        let idle = self.pools.get_mut(&key)?.ready.remove(i);
        self.env_leaving(&key.name, None, idle.mem);
        self.counters.evictions += 1;
        Some(idle)
    }

    /// Charges `idle`, taken by an invocation, its whole guest memory again.
    pub(crate) fn charge_in_full(&mut self, idle: &mut Idle<E>) {
        self.memory_used += idle.full.saturating_sub(idle.mem);
        idle.mem = idle.full;
    }

    /// Evicts least recently used idle (then pooled) environments while
    /// the memory charged, less what destructions under way free, is over
    /// `budget`; returns them for destruction.
    pub(crate) fn evict_over_budget(&mut self, budget: u64) -> Vec<Idle<E>> {
        let mut evicted = Vec::new();
        while self.memory_used.saturating_sub(self.memory_leaving) > budget {
            match self.evict_for_memory() {
                Some(idle) => evicted.push(idle),
                None => {
                    self.counters.memory_over_budget += 1;
                    break;
                }
            }
        }
        evicted
    }

    /// Boots one party has in progress.
    fn booting_of(&self, party: &Party) -> usize {
        self.party_booting.get(party).copied().unwrap_or(0)
    }

    /// The waiter the next free boot slot goes to: the invoke whose party
    /// has the fewest boots in progress; among equals, one whose binding
    /// has no environment busy that may be handed to it; then the earliest.
    /// Else a pool boot within the pool's share.
    fn next_waiter(&self, admission: &Admission) -> Option<usize> {
        let mut waiting: HashMap<&Binding, usize> = HashMap::new();
        for w in self.queue.iter().filter(|w| !w.pool) {
            *waiting.entry(&w.binding).or_default() += 1;
        }
        let has_env = |b: &Binding| {
            let busy = self
                .functions
                .get(&b.function.name)
                .and_then(|f| f.tenant_in_flight.get(&b.tenant))
                .copied()
                .unwrap_or(0) as usize;
            busy > waiting.get(b).copied().unwrap_or(0)
        };
        let invoke = self
            .queue
            .iter()
            .enumerate()
            .filter(|(_, w)| !w.pool)
            .min_by_key(|(_, w)| {
                (
                    self.booting_of(&Party::of(&w.binding)),
                    has_env(&w.binding),
                    w.ticket,
                )
            })
            .map(|(i, _)| i);
        invoke.or_else(|| {
            if self.pool_booting < admission.pool_boot_slots {
                self.queue.iter().position(|w| w.pool)
            } else {
                None
            }
        })
    }

    /// Gives free boot slots to waiters (see the module's documentation)
    /// while memory allows; returns the environments evicted to make room
    /// (the caller destroys them; their destruction dispatches again).
    pub(crate) fn dispatch(&mut self, admission: &Admission) -> Vec<Idle<E>> {
        let mut evicted = Vec::new();
        while self.booting < admission.max_booting {
            let Some(i) = self.next_waiter(admission) else {
                break;
            };
            let mem = self.queue[i].mem;
            if self.memory_used + mem > admission.memory_mib {
                // Room that destructions under way will free counts first.
                while self.memory_used.saturating_sub(self.memory_leaving) + mem
                    > admission.memory_mib
                {
                    match self.evict_for_memory() {
                        Some(idle) => evicted.push(idle),
                        None => break,
                    }
                }
                break;
            }
            let w = self.queue.remove(i).expect("index is in range");
            if w.tx.send(Grant::Boot).is_err() {
                continue; // its caller has gone
            }
            self.booting += 1;
            self.peak_booting = self.peak_booting.max(self.booting);
            self.memory_used += mem;
            if w.pool {
                self.pool_booting += 1;
            } else {
                self.counters.cold_starts += 1;
                *self.party_booting.entry(Party::of(&w.binding)).or_default() += 1;
            }
        }
        evicted
    }

    /// How many boots would come before (and including) the waiter
    /// `ticket`'s, served in turn by party: each party's waiters up to as
    /// many as this waiter's party has up to it.
    pub(crate) fn ahead_of(&self, ticket: u64, party: &Party) -> usize {
        let invokes = || self.queue.iter().filter(|w| !w.pool);
        let mine = invokes()
            .filter(|w| w.ticket <= ticket && &Party::of(&w.binding) == party)
            .count();
        let mut per_party: HashMap<Party, usize> = HashMap::new();
        for w in invokes() {
            *per_party.entry(Party::of(&w.binding)).or_default() += 1;
        }
        per_party.values().map(|n| (*n).min(mine)).sum()
    }

    /// A boot ended (`ok`: it created an environment, which keeps its
    /// memory); `party` is None for a pool boot.
    pub(crate) fn boot_ended(&mut self, party: Option<&Party>, mem: u64, ok: bool) {
        self.booting = self.booting.saturating_sub(1);
        match party {
            None => self.pool_booting = self.pool_booting.saturating_sub(1),
            Some(p) => {
                if let Some(n) = self.party_booting.get_mut(p) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.party_booting.remove(p);
                    }
                }
            }
        }
        if !ok {
            self.memory_used = self.memory_used.saturating_sub(mem);
            self.counters.create_failures += 1;
        }
    }
}

impl<B> Scheduler<B>
where
    B: Backend,
    B::Env: Environment<Request = B::Request, Response = B::Response>,
{
    /// Gives free boot slots to waiters and destroys what that evicted.
    pub(crate) fn dispatch(&self) {
        let evicted = self.lock().dispatch(&self.admission);
        for idle in evicted {
            self.destroy_later(idle.env, idle.mem);
        }
    }

    /// Destroys idle environments while the host is over its memory budget
    /// (an environment taken back from a paged-out charge).
    pub(crate) fn trim_to_budget(&self) {
        let evicted = self.lock().evict_over_budget(self.admission.memory_mib);
        for idle in evicted {
            self.destroy_later(idle.env, idle.mem);
        }
    }

    /// Charges every idle and pooled environment what its backend says it
    /// holds ([`Environment::held_mib`]: less than its guest memory once
    /// paged out), at least 1 MiB and at most its guest memory, then lets
    /// waiting cold starts use what that freed. Returns the MiB charged to
    /// idle environments now.
    pub fn recharge_idle(&self) -> u64 {
        let total = {
            let mut guard = self.lock();
            let st = &mut *guard;
            let mut total = 0;
            let mut used = st.memory_used;
            let envs = st
                .idle
                .values_mut()
                .flat_map(|v| v.iter_mut())
                .chain(st.pools.values_mut().flat_map(|p| p.ready.iter_mut()));
            for e in envs {
                let want = e.env.held_mib().map_or(e.full, |h| h.clamp(1, e.full));
                used = (used + want).saturating_sub(e.mem);
                e.mem = want;
                total += want;
            }
            st.memory_used = used;
            total
        };
        self.dispatch();
        total
    }

    /// Destroys `env` (already out of the counts, its `mem` leaving) in a
    /// task of its own; its memory is free, and waiters dispatched, once it
    /// is gone.
    pub(crate) fn destroy_later(&self, env: B::Env, mem: u64) {
        let this = self.clone();
        tokio::spawn(async move {
            env.destroy().await;
            this.lock().env_destroyed(mem);
            this.dispatch();
        });
    }

    /// Destroys `envs` (already out of the counts) one after the other.
    pub(crate) async fn destroy_all(&self, envs: Vec<(B::Env, u64)>) -> usize {
        let n = envs.len();
        for (env, mem) in envs {
            env.destroy().await;
            self.lock().env_destroyed(mem);
        }
        self.dispatch();
        n
    }
}
