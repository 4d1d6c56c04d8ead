//! The invoke path: take a warm, pooled or new environment within the
//! limits, run the invocation, give the environment back.

use std::time::Instant;

use crate::admission::Admitted;
use crate::state::{hand_to_waiter, Idle};
use crate::{
    Backend, Binding, Environment, InvokeReport, Limits, ScheduleError, Scheduler, TenantId,
    ThrottleReason,
};

pub(crate) enum Slot<E> {
    Warm(Idle<E>),
    Pooled(Idle<E>),
    Cold { id: u64, evicted: Option<E> },
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
        let slot = self.acquire(&binding, &limits)?;
        let from_pool = matches!(slot, Slot::Pooled(_));
        // A cold start refills the pool at once (its own boot queues with
        // the refills). A pooled VM's refill waits until this invoke is
        // answered: a boot started now would compete for the CPU with the
        // very invoke the pool exists to make fast.
        if matches!(slot, Slot::Cold { .. }) {
            self.refill(&binding.function);
        }
        let (mut env, id, cold, init) = match slot {
            Slot::Warm(idle) => (idle.env, idle.id, false, None),
            Slot::Pooled(idle) => {
                tracing::info!(function = %binding.function.name, tenant_id, env_id = idle.id, "pre-booted environment bound to this tenant");
                (idle.env, idle.id, false, None)
            }
            Slot::Cold { id, evicted } => {
                if let Some(old) = evicted {
                    self.destroy_later(old);
                }
                let started = Instant::now();
                match self.admit(&binding, deadline).await {
                    Err(reason) => {
                        tracing::info!(function = %binding.function.name, tenant_id, reason = reason.as_str(), "cold start refused");
                        self.release(&binding, None, true);
                        return Err(ScheduleError::Throttled(reason));
                    }
                    Ok(Admitted::Warm(idle)) => {
                        tracing::info!(function = %binding.function.name, tenant_id, env_id = idle.id, waited_ms = started.elapsed().as_millis() as u64, "queued cold start served by an idle environment of its tenant");
                        (idle.env, idle.id, false, None)
                    }
                    Ok(Admitted::Boot) => {
                        let queued = started.elapsed();
                        let boot_started = Instant::now();
                        tracing::info!(function = %binding.function.name, tenant_id, env_id = id, queued_ms = queued.as_millis() as u64, "creating environment (cold start)");
                        let created = self.backend.create(&binding).await;
                        self.boot_done(created.is_ok().then(|| boot_started.elapsed()), false);
                        match created {
                            Ok(env) => (env, id, true, Some(boot_started.elapsed())),
                            Err(e) => {
                                tracing::warn!(function = %binding.function.name, tenant_id, env_id = id, error = %e, "environment creation failed");
                                self.release(&binding, None, true);
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
                self.release(&binding, Some((env, id)), false);
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
                self.release(&binding, None, true);
                env.destroy().await;
                self.lock().counters.destroyed += 1;
                Err(ScheduleError::Environment(e))
            }
        }
    }

    pub(crate) fn acquire(
        &self,
        binding: &Binding,
        limits: &Limits,
    ) -> Result<Slot<B::Env>, ScheduleError<B::Error>> {
        let mut st = self.lock();
        let st = &mut *st;
        let f = st
            .functions
            .entry(binding.function.name.clone())
            .or_default();
        if f.current_version.as_deref() != Some(binding.function.version.as_str()) && !f.deleted {
            f.current_version = Some(binding.function.version.clone());
        }
        f.deleted = false;
        let tenant_now = f
            .tenant_in_flight
            .get(&binding.tenant)
            .copied()
            .unwrap_or(0);
        let throttle = if f.in_flight >= limits.concurrency {
            Some(ThrottleReason::FunctionConcurrency)
        } else if tenant_now >= limits.per_tenant {
            Some(ThrottleReason::TenantConcurrency)
        } else {
            None
        };
        if let Some(reason) = throttle {
            st.counters.throttle(reason);
            return Err(ScheduleError::Throttled(reason));
        }
        // Warm: the most recently used idle environment of this binding.
        if let Some(idle) = st.idle.get_mut(binding).and_then(Vec::pop) {
            f.in_flight += 1;
            *f.tenant_in_flight
                .entry(binding.tenant.clone())
                .or_default() += 1;
            st.counters.invocations += 1;
            return Ok(Slot::Warm(idle));
        }
        // A pre-booted environment of this function version, bound to no
        // tenant yet: it becomes this binding's for life.
        if let Some(idle) = st
            .pools
            .get_mut(&binding.function)
            .and_then(|p| p.ready.pop())
        {
            f.in_flight += 1;
            *f.tenant_in_flight
                .entry(binding.tenant.clone())
                .or_default() += 1;
            st.counters.invocations += 1;
            st.counters.pool_takes += 1;
            return Ok(Slot::Pooled(idle));
        }
        // Cold: make room under the cap by evicting the LRU idle environment
        // of any tenant of this function.
        let mut evicted = None;
        if f.environments >= limits.env_cap() {
            let victim = st
                .idle
                .iter()
                .filter(|(b, v)| b.function.name == binding.function.name && !v.is_empty())
                .flat_map(|(b, v)| {
                    v.iter()
                        .enumerate()
                        .map(move |(i, e)| (e.last_used, b.clone(), i))
                })
                .min_by_key(|(t, _, _)| *t);
            match victim {
                Some((_, b, i)) => {
                    let e = st.idle.get_mut(&b).expect("victim binding").remove(i);
                    tracing::info!(function = %b.function.name, tenant_id = %b.tenant.as_ref().map(TenantId::as_str).unwrap_or("-"), env_id = e.id, "evicting least recently used idle environment");
                    evicted = Some(e.env);
                    f.environments -= 1;
                    st.counters.evictions += 1;
                }
                None => {
                    st.counters.throttle(ThrottleReason::EnvironmentCap);
                    return Err(ScheduleError::Throttled(ThrottleReason::EnvironmentCap));
                }
            }
        }
        f.environments += 1;
        f.in_flight += 1;
        *f.tenant_in_flight
            .entry(binding.tenant.clone())
            .or_default() += 1;
        let id = st.next_id;
        st.next_id += 1;
        st.counters.invocations += 1;
        Ok(Slot::Cold { id, evicted })
    }

    /// Ends an invocation: the environment goes back to idle, or, if it
    /// failed (`None`) or its function version is retired, is dropped from
    /// the count (the caller or a task destroys it).
    pub(crate) fn release(&self, binding: &Binding, env: Option<(B::Env, u64)>, _failed: bool) {
        let mut to_destroy = None;
        {
            let mut st = self.lock();
            let st = &mut *st;
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
            match env {
                Some((env, id)) if !retired => {
                    let idle = Idle {
                        env,
                        id,
                        last_used: Instant::now(),
                    };
                    // A cold start of this binding waiting for a boot slot
                    // takes it instead, and gives back its reservation.
                    match hand_to_waiter(&mut st.queue, |b| b == binding, idle) {
                        None => {
                            f.environments = f.environments.saturating_sub(1);
                            st.counters.warm_handoffs += 1;
                            return;
                        }
                        Some(idle) => st.idle.entry(binding.clone()).or_default().push(idle),
                    }
                }
                Some((env, _)) => {
                    f.environments = f.environments.saturating_sub(1);
                    to_destroy = Some(env);
                }
                None => f.environments = f.environments.saturating_sub(1),
            }
        }
        if let Some(env) = to_destroy {
            self.destroy_later(env);
        }
    }

    pub(crate) fn destroy_later(&self, env: B::Env) {
        let this = self.clone();
        tokio::spawn(async move {
            env.destroy().await;
            this.lock().counters.destroyed += 1;
        });
    }
}
