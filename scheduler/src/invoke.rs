//! The invoke path: take a warm, pooled or new environment within the
//! limits, run the invocation, give the environment back.

use std::time::Instant;

use crate::admission::Admitted;
use crate::fair::Party;
use crate::state::{hand_to_waiter, Idle, State};
use crate::{
    Backend, Binding, Environment, InvokeReport, Limits, ScheduleError, Scheduler, ThrottleReason,
};

pub(crate) enum Slot<E> {
    Warm(Idle<E>),
    Pooled(Idle<E>),
    /// A reservation for a new environment; `evicted` idle environments
    /// made room for it (under the function's cap or the tenant's share).
    Cold {
        id: u64,
        evicted: Vec<Idle<E>>,
    },
}

/// How an invocation gives its environment back.
pub(crate) enum Release<E> {
    /// It served: keep it (idle) unless its version is retired.
    Idle { env: E, id: u64, mem: u64 },
    /// It failed and the caller destroys it.
    Failed { mem: u64 },
    /// No environment: a cold start refused or whose boot failed.
    Reservation,
}

impl<B> Scheduler<B>
where
    B: Backend,
    B::Env: Environment<Request = B::Request, Response = B::Response>,
{
    /// Runs `req` in an environment bound to `binding`, within `limits`.
    ///
    /// The work runs in its own task: if the caller goes away mid-invoke the
    /// environment still finishes and is kept or destroyed, never leaked.
    pub async fn invoke(
        &self,
        binding: Binding,
        limits: Limits,
        req: B::Request,
    ) -> Result<InvokeReport<B::Response>, ScheduleError<B::Error>> {
        let this = self.clone();
        tokio::spawn(async move { this.invoke_inner(binding, limits, req).await })
            .await
            .map_err(|e| ScheduleError::Internal(e.to_string()))?
    }

    pub(crate) async fn invoke_inner(
        &self,
        binding: Binding,
        limits: Limits,
        req: B::Request,
    ) -> Result<InvokeReport<B::Response>, ScheduleError<B::Error>> {
        let tenant = binding.tenant.as_ref().map(|t| t.as_str().to_string());
        let tenant_id = tenant.as_deref().unwrap_or("-");
        let deadline = Instant::now() + limits.init_deadline;
        let mem = u64::from(limits.memory_mib);
        let slot = self.acquire(&binding, &limits)?;
        let from_pool = matches!(slot, Slot::Pooled(_));
        // A cold start refills the pool at once (its own boot queues with
        // the refills). A pooled VM's refill waits until this invoke is
        // answered: a boot started now would compete for the CPU with the
        // very invoke the pool exists to make fast.
        if matches!(slot, Slot::Cold { .. }) {
            self.refill(&binding.function);
        }
        if matches!(slot, Slot::Warm(_) | Slot::Pooled(_)) {
            // Its full charge may have put the host over budget.
            self.trim_to_budget();
        }
        let (mut env, id, cold, init, mem) = match slot {
            Slot::Warm(idle) => (idle.env, idle.id, false, None, idle.mem),
            Slot::Pooled(idle) => {
                tracing::info!(function = %binding.function.name, tenant_id, env_id = idle.id, "pre-booted environment bound to this tenant");
                (idle.env, idle.id, false, None, idle.mem)
            }
            Slot::Cold { id, evicted } => {
                for old in evicted {
                    self.destroy_later(old.env, old.mem);
                }
                let started = Instant::now();
                match self.admit(&binding, mem, deadline).await {
                    Err(reason) => {
                        tracing::info!(function = %binding.function.name, tenant_id, reason = reason.as_str(), "cold start refused");
                        self.release(&binding, &limits, Release::Reservation);
                        return Err(ScheduleError::Throttled(reason));
                    }
                    Ok(Admitted::Warm(idle)) => {
                        tracing::info!(function = %binding.function.name, tenant_id, env_id = idle.id, waited_ms = started.elapsed().as_millis() as u64, "queued cold start served by an idle environment of its tenant");
                        (idle.env, idle.id, false, None, idle.mem)
                    }
                    Ok(Admitted::Boot) => {
                        let queued = started.elapsed();
                        let boot_started = Instant::now();
                        tracing::info!(function = %binding.function.name, tenant_id, env_id = id, queued_ms = queued.as_millis() as u64, "creating environment (cold start)");
                        let created = self.backend.create(&binding).await;
                        let took = created.is_ok().then(|| boot_started.elapsed());
                        self.boot_done(took, Some(&Party::of(&binding)), mem);
                        match created {
                            Ok(env) => (env, id, true, took, mem),
                            Err(e) => {
                                tracing::warn!(function = %binding.function.name, tenant_id, env_id = id, error = %e, "environment creation failed");
                                self.release(&binding, &limits, Release::Reservation);
                                return Err(ScheduleError::Create(e));
                            }
                        }
                    }
                }
            }
        };
        let result = env.invoke(req).await;
        if from_pool {
            self.refill(&binding.function);
        }
        match result {
            Ok(response) => {
                self.release(&binding, &limits, Release::Idle { env, id, mem });
                Ok(InvokeReport {
                    response,
                    cold_start: cold,
                    env_id: id,
                    init_duration: init,
                    from_pool,
                })
            }
            Err(e) => {
                tracing::warn!(function = %binding.function.name, tenant_id, env_id = id, error = %e, "environment failed; destroying it");
                self.lock().counters.env_failures += 1;
                self.release(&binding, &limits, Release::Failed { mem });
                env.destroy().await;
                self.lock().env_destroyed(mem);
                self.dispatch();
                Err(ScheduleError::Environment(e))
            }
        }
    }

    /// Takes an environment for `binding` within `limits` (see
    /// [`crate::fair`] for the shares), or a reservation for a new one.
    pub(crate) fn acquire(
        &self,
        binding: &Binding,
        limits: &Limits,
    ) -> Result<Slot<B::Env>, ScheduleError<B::Error>> {
        let mut st = self.lock();
        let st = &mut *st;
        let throttle = |st: &mut State<B::Env>, reason| {
            st.counters.throttle(reason);
            Err(ScheduleError::Throttled(reason))
        };
        let name = &binding.function.name;
        {
            let f = st.functions.entry(name.clone()).or_default();
            if f.current_version.as_deref() != Some(binding.function.version.as_str()) && !f.deleted
            {
                f.current_version = Some(binding.function.version.clone());
            }
            f.deleted = false;
        }
        let f = &st.functions[name];
        let tenant_now = f
            .tenant_in_flight
            .get(&binding.tenant)
            .copied()
            .unwrap_or(0);
        if limits.reserved && f.in_flight >= limits.concurrency {
            return throttle(st, ThrottleReason::FunctionConcurrency);
        }
        if !limits.reserved && st.unreserved_in_flight >= self.admission.host_concurrency {
            return throttle(st, ThrottleReason::HostConcurrency);
        }
        if tenant_now >= limits.per_tenant {
            return throttle(st, ThrottleReason::TenantConcurrency);
        }
        // Warm: the most recently used idle environment of this binding.
        if let Some(mut idle) = st.idle.get_mut(binding).and_then(Vec::pop) {
            begin(st, binding, limits);
            st.charge_in_full(&mut idle);
            return Ok(Slot::Warm(idle));
        }
        // The tenant's share across functions (see `crate::fair`).
        let at_share = binding.tenant.as_ref().is_some_and(|t| {
            st.tenant_envs.get(t).copied().unwrap_or(0) >= self.admission.tenant_environments
        });
        // A pre-booted environment of this function version, bound to no
        // tenant yet: it becomes this binding's for life (and counts in
        // its tenant's share, so not for a tenant at its share).
        if let Some(mut idle) = st
            .pools
            .get_mut(&binding.function)
            .filter(|_| !at_share)
            .and_then(|p| p.ready.pop())
        {
            begin(st, binding, limits);
            st.charge_in_full(&mut idle);
            if let Some(t) = &binding.tenant {
                *st.tenant_envs.entry(t.clone()).or_default() += 1;
            }
            st.counters.pool_takes += 1;
            return Ok(Slot::Pooled(idle));
        }
        // Cold. A function bigger than the host's memory never boots.
        if u64::from(limits.memory_mib) > self.admission.memory_mib {
            return throttle(st, ThrottleReason::HostMemory);
        }
        // At the tenant's share: evict its own least recently used idle
        // environment; none idle: throttled.
        let tenant_victim = if at_share {
            match st.lru_idle(|b| b.tenant == binding.tenant) {
                Some(v) => Some(v),
                None => return throttle(st, ThrottleReason::TenantEnvironments),
            }
        } else {
            None
        };
        // The function's cap: evict the LRU idle environment of any tenant
        // of this function (the tenant's victim may be one).
        let at_cap = st.functions[name].environments >= limits.env_cap();
        let covered = tenant_victim
            .as_ref()
            .is_some_and(|(b, _)| &b.function.name == name);
        let function_victim = if at_cap && !covered {
            match st.lru_idle(|b| &b.function.name == name) {
                Some(v) => Some(v),
                None => return throttle(st, ThrottleReason::EnvironmentCap),
            }
        } else {
            None
        };
        let mut evicted = Vec::new();
        if let Some(v) = tenant_victim {
            evicted.push(st.evict(&v));
        }
        if let Some(v) = function_victim {
            evicted.push(st.evict(&v));
        }
        st.functions
            .get_mut(name)
            .expect("entry made above")
            .environments += 1;
        if let Some(t) = &binding.tenant {
            *st.tenant_envs.entry(t.clone()).or_default() += 1;
        }
        begin(st, binding, limits);
        let id = st.next_id;
        st.next_id += 1;
        Ok(Slot::Cold { id, evicted })
    }

    /// Ends an invocation: the environment goes back to idle (or to a
    /// waiting cold start of its binding), or, if it failed or its function
    /// version is retired, leaves the counts (and is destroyed).
    pub(crate) fn release(&self, binding: &Binding, limits: &Limits, what: Release<B::Env>) {
        let mut to_destroy = None;
        let mut waiting = false;
        {
            let mut st = self.lock();
            let st = &mut *st;
            if !limits.reserved {
                st.unreserved_in_flight = st.unreserved_in_flight.saturating_sub(1);
            }
            let f = st
                .functions
                .entry(binding.function.name.clone())
                .or_default();
            f.in_flight = f.in_flight.saturating_sub(1);
            if let Some(n) = f.tenant_in_flight.get_mut(&binding.tenant) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    f.tenant_in_flight.remove(&binding.tenant);
                }
            }
            let retired = f.deleted
                || f.current_version.as_deref() != Some(binding.function.version.as_str());
            let name = &binding.function.name;
            let tenant = binding.tenant.as_ref();
            match what {
                Release::Idle { env, id, mem } if !retired => {
                    let idle = Idle::new(env, id, mem);
                    // A cold start of this binding waiting for a boot slot
                    // takes it instead, and gives back its reservation.
                    match hand_to_waiter(&mut st.queue, |b| b == binding, idle) {
                        None => {
                            st.reservation_dropped(name, tenant);
                            st.counters.warm_handoffs += 1;
                        }
                        Some(idle) => {
                            st.idle.entry(binding.clone()).or_default().push(idle);
                            // A boot waiting for memory may evict it.
                            waiting = !st.queue.is_empty();
                        }
                    }
                }
                Release::Idle { env, mem, .. } => {
                    st.env_leaving(name, tenant, mem);
                    to_destroy = Some((env, mem));
                }
                Release::Failed { mem } => st.env_leaving(name, tenant, mem),
                Release::Reservation => st.reservation_dropped(name, tenant),
            }
        }
        if let Some((env, mem)) = to_destroy {
            self.destroy_later(env, mem);
        }
        if waiting {
            self.dispatch();
        }
    }
}

/// Counts an accepted invocation of `binding` as in flight.
fn begin<E>(st: &mut State<E>, binding: &Binding, limits: &Limits) {
    let f = st
        .functions
        .entry(binding.function.name.clone())
        .or_default();
    f.in_flight += 1;
    *f.tenant_in_flight
        .entry(binding.tenant.clone())
        .or_default() += 1;
    if !limits.reserved {
        st.unreserved_in_flight += 1;
    }
    st.counters.invocations += 1;
}
