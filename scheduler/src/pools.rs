//! Pools: environments of a function version booted ahead of time and
//! bound to no tenant until a new tenant's first invoke takes one.

use std::collections::HashMap;
use std::time::Instant;

use crate::state::{hand_to_waiter, Grant, Idle};
use crate::{Backend, Binding, Environment, FunctionKey, Limits, Scheduler};

/// Pre-booted environments of one function version, bound to no tenant.
pub(crate) struct Pool<E> {
    /// Distinguishes this pool from an earlier one of the same key, so a
    /// boot started for a removed pool never lands in a new one.
    pub(crate) generation: u64,
    pub(crate) target: usize,
    /// Environment cap of the function when the pool was set.
    pub(crate) cap: u32,
    pub(crate) ready: Vec<Idle<E>>,
    pub(crate) filling: usize,
    /// Guest memory (MiB) of one of its environments.
    pub(crate) mem: u64,
}

/// Removes `key`'s pool once it is set to 0 and holds and boots nothing.
pub(crate) fn forget_if_empty<E>(pools: &mut HashMap<FunctionKey, Pool<E>>, key: &FunctionKey) {
    if pools
        .get(key)
        .is_some_and(|p| p.target == 0 && p.filling == 0 && p.ready.is_empty())
    {
        pools.remove(key);
    }
}

impl<B> Scheduler<B>
where
    B: Backend,
    B::Env: Environment<Request = B::Request, Response = B::Response>,
{
    /// Keeps `size` environments of `function` booted ahead of time and
    /// bound to no tenant (0 removes the pool and destroys what it holds).
    /// Pool boots wait for a boot slot behind invokes' cold starts, and
    /// never take the function past its environment cap under `limits`.
    pub async fn set_pool(&self, function: &FunctionKey, size: usize, limits: &Limits) -> usize {
        let surplus = {
            let mut st = self.lock();
            let st = &mut *st;
            let generation = st.next_ticket;
            st.next_ticket += 1;
            let pool = st.pools.entry(function.clone()).or_insert(Pool {
                generation,
                target: 0,
                cap: limits.env_cap(),
                ready: Vec::new(),
                filling: 0,
                mem: u64::from(limits.memory_mib),
            });
            pool.target = size;
            pool.cap = limits.env_cap();
            pool.mem = u64::from(limits.memory_mib);
            let extra = pool.ready.len().saturating_sub(size);
            let envs: Vec<Idle<B::Env>> = pool.ready.drain(..extra).collect();
            if size == 0 && pool.filling == 0 {
                st.pools.remove(function);
            }
            envs.into_iter()
                .map(|i| {
                    st.env_leaving(&function.name, None, i.mem);
                    (i.env, i.mem)
                })
                .collect()
        };
        let n = self.destroy_all(surplus).await;
        self.refill(function);
        n
    }

    pub(crate) fn set_pool_with_cap(
        &self,
        function: &FunctionKey,
        size: usize,
        cap: u32,
        mem: u64,
    ) {
        let mut st = self.lock();
        let generation = st.next_ticket;
        st.next_ticket += 1;
        st.pools.insert(
            function.clone(),
            Pool {
                generation,
                target: size,
                cap,
                ready: Vec::new(),
                filling: 0,
                mem,
            },
        );
        drop(st);
        self.refill(function);
    }

    /// Starts the boots a pool is short of (within the environment cap).
    pub(crate) fn refill(&self, key: &FunctionKey) {
        let n = {
            let mut st = self.lock();
            let st = &mut *st;
            let Some(pool) = st.pools.get_mut(key) else {
                return;
            };
            let f = st.functions.entry(key.name.clone()).or_default();
            if !f.wants_pool_boots(&key.version) {
                return;
            }
            let short = pool.target.saturating_sub(pool.ready.len() + pool.filling);
            let room = pool.cap.saturating_sub(f.environments) as usize;
            let n = short.min(room);
            pool.filling += n;
            f.environments += n as u32;
            (n, pool.generation)
        };
        let (n, generation) = n;
        for _ in 0..n {
            let this = self.clone();
            let key = key.clone();
            tokio::spawn(async move { this.fill_one(key, generation).await });
        }
    }

    /// Boots one environment into `key`'s pool, behind waiting invokes.
    pub(crate) async fn fill_one(&self, key: FunctionKey, generation: u64) {
        let binding = Binding {
            function: key.clone(),
            tenant: None,
        };
        let (rx, mem, evicted) = {
            let mut st = self.lock();
            let st = &mut *st;
            // The pool shrank, went away or lost its function version since
            // this boot was planned: give its reservation back, boot nothing.
            let f = st.functions.entry(key.name.clone()).or_default();
            let current = f.wants_pool_boots(&key.version);
            let pool = st
                .pools
                .get_mut(&key)
                .filter(|p| p.generation == generation);
            let wanted = current
                && pool
                    .as_ref()
                    .is_some_and(|p| p.ready.len() + p.filling <= p.target);
            let Some(pool) = pool.filter(|_| wanted) else {
                f.environments = f.environments.saturating_sub(1);
                if let Some(pool) = st
                    .pools
                    .get_mut(&key)
                    .filter(|p| p.generation == generation)
                {
                    pool.filling -= 1;
                }
                forget_if_empty(&mut st.pools, &key);
                return;
            };
            let mem = pool.mem;
            // Behind every waiting invoke, within the pool's share of the
            // slots (see `crate::fair`).
            let (_, rx) = st.enqueue(&binding, true, mem);
            let evicted = st.dispatch(&self.admission);
            (rx, mem, evicted)
        };
        for idle in evicted {
            self.destroy_later(idle.env, idle.mem);
        }
        let granted = matches!(rx.await, Ok(Grant::Boot));
        let mut failed = false;
        let (created, took) = if granted {
            let started = Instant::now();
            tracing::info!(function = %key.name, "booting a pooled environment (no tenant)");
            let r = self.backend.create_pooled(&key).await;
            let took = r.as_ref().ok().map(|_| started.elapsed());
            if let Err(e) = &r {
                // Counted by `boot_done`; not retried at once (see below).
                tracing::warn!(function = %key.name, error = %e, "a pooled environment failed to boot or init");
                failed = true;
            }
            (r.ok(), Some(took))
        } else {
            (None, None)
        };
        let leftover = {
            let mut st = self.lock();
            let st = &mut *st;
            let id = st.next_id;
            st.next_id += 1;
            let f = st.functions.entry(key.name.clone()).or_default();
            let current = f.wants_pool_boots(&key.version);
            let pool = st
                .pools
                .get_mut(&key)
                .filter(|p| p.generation == generation);
            match (created, pool) {
                (Some(env), Some(pool)) if current && pool.ready.len() < pool.target => {
                    pool.filling -= 1;
                    st.counters.pool_boots += 1;
                    let idle = Idle::new(env, id, mem);
                    // An invoke of this function waiting for a boot slot
                    // takes it at once, and gives back its reservation.
                    match hand_to_waiter(&mut st.queue, |b| b.function == key, idle) {
                        None => {
                            f.environments = f.environments.saturating_sub(1);
                            st.counters.pool_takes += 1;
                        }
                        Some(idle) => pool.ready.push(idle),
                    }
                    None
                }
                (env, pool) => {
                    if let Some(pool) = pool {
                        pool.filling -= 1;
                    }
                    f.environments = f.environments.saturating_sub(1);
                    if env.is_some() {
                        st.memory_leaving += mem;
                    }
                    forget_if_empty(&mut st.pools, &key);
                    env
                }
            }
        };
        // The slot is freed only now, after a waiting invoke had its chance
        // to take the new environment instead of a boot of its own.
        if let Some(took) = took {
            self.boot_done(took, None, mem);
        }
        match leftover {
            Some(env) => self.destroy_later(env, mem),
            // A failed boot is not retried at once (a function whose runtime
            // cannot start would boot VMs in a loop): the pool refills on
            // the function's next cold start.
            None if failed => {}
            // Taken at once, or ready: top the pool up again if it is short.
            None => self.refill(&key),
        }
    }
}
