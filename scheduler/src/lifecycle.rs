//! Environments' end of life: reaping idle ones, retiring functions and
//! versions, shutdown; and the snapshot for metrics.

use std::time::{Duration, Instant};

use crate::state::Idle;
use crate::{Backend, Binding, Environment, FunctionKey, Scheduler, Stats};

impl<B> Scheduler<B>
where
    B: Backend,
    B::Env: Environment<Request = B::Request, Response = B::Response>,
{
    /// Takes idle environments matching `pred` out of the counts, for
    /// destruction (with their memory).
    pub(crate) fn take_idle(
        &self,
        pred: impl Fn(&Binding, &Idle<B::Env>) -> bool,
    ) -> Vec<(B::Env, u64)> {
        let mut st = self.lock();
        let st = &mut *st;
        let mut taken = Vec::new();
        for (b, list) in st.idle.iter_mut() {
            let mut i = 0;
            while i < list.len() {
                if pred(b, &list[i]) {
                    taken.push((b.clone(), list.remove(i)));
                } else {
                    i += 1;
                }
            }
        }
        st.idle.retain(|_, v| !v.is_empty());
        taken
            .into_iter()
            .map(|(b, idle)| {
                st.env_leaving(&b.function.name, b.tenant.as_ref(), idle.mem);
                (idle.env, idle.mem)
            })
            .collect()
    }

    /// Takes pooled environments matching `pred` out of their pools (and
    /// out of the counts), for destruction (with their memory).
    pub(crate) fn take_pooled(
        &self,
        pred: impl Fn(&FunctionKey, &Idle<B::Env>) -> bool,
        drop_pools: impl Fn(&FunctionKey) -> bool,
    ) -> Vec<(B::Env, u64)> {
        let mut st = self.lock();
        let st = &mut *st;
        let mut taken = Vec::new();
        for (key, pool) in st.pools.iter_mut() {
            let mut i = 0;
            while i < pool.ready.len() {
                if pred(key, &pool.ready[i]) {
                    taken.push((key.name.clone(), pool.ready.remove(i)));
                } else {
                    i += 1;
                }
            }
        }
        st.pools.retain(|k, _| !drop_pools(k));
        taken
            .into_iter()
            .map(|(name, idle)| {
                st.env_leaving(&name, None, idle.mem);
                (idle.env, idle.mem)
            })
            .collect()
    }

    /// Destroys environments idle for longer than `idle_timeout`, pooled
    /// ones included (a pool drained this way refills on its function's
    /// next cold start).
    pub async fn reap_idle(&self, idle_timeout: Duration) -> usize {
        let now = Instant::now();
        let old = |e: &Idle<B::Env>| now.duration_since(e.last_used) >= idle_timeout;
        let mut envs = self.take_idle(|_, e| old(e));
        envs.extend(self.take_pooled(|_, e| old(e), |_| false));
        let n = self.destroy_all(envs).await;
        self.lock().counters.reaped += n as u64;
        n
    }

    /// DeleteFunction: idle and pooled environments go now, busy ones when
    /// they finish.
    pub async fn retire_function(&self, name: &str) -> usize {
        self.lock()
            .functions
            .entry(name.to_string())
            .or_default()
            .deleted = true;
        let mut envs = self.take_idle(|b, _| b.function.name == name);
        envs.extend(self.take_pooled(|k, _| k.name == name, |k| k.name == name));
        self.destroy_all(envs).await
    }

    /// UpdateFunctionCode: environments of other versions drain and go; a
    /// pool moves to the new version (and refills with it).
    pub async fn set_current_version(&self, key: &FunctionKey) -> usize {
        let carried = {
            let mut st = self.lock();
            st.functions
                .entry(key.name.clone())
                .or_default()
                .current_version = Some(key.version.clone());
            st.pools
                .iter()
                .find(|(k, _)| k.name == key.name && k.version != key.version)
                .map(|(_, p)| (p.target, p.cap, p.mem))
        };
        let stale = |k: &FunctionKey| k.name == key.name && k.version != key.version;
        let mut envs =
            self.take_idle(|b, _| b.function.name == key.name && b.function.version != key.version);
        envs.extend(self.take_pooled(|k, _| stale(k), stale));
        let n = self.destroy_all(envs).await;
        if let Some((target, cap, mem)) = carried {
            self.set_pool_with_cap(key, target, cap, mem);
        }
        n
    }

    /// Destroys every idle and pooled environment (daemon shutdown).
    pub async fn shutdown(&self) -> usize {
        let mut envs = self.take_idle(|_, _| true);
        envs.extend(self.take_pooled(|_, _| true, |_| true));
        self.destroy_all(envs).await
    }

    /// CreateFunction: `function` is the current version of a live function
    /// (a function deleted earlier under the same name comes back).
    pub fn activate(&self, function: &FunctionKey) {
        let mut st = self.lock();
        let f = st.functions.entry(function.name.clone()).or_default();
        f.deleted = false;
        f.current_version = Some(function.version.clone());
    }
    /// A snapshot for metrics.
    pub fn stats(&self) -> Stats {
        let st = self.lock();
        Stats {
            idle: st.idle.iter().map(|(b, v)| (b.clone(), v.len())).collect(),
            environments: st
                .functions
                .iter()
                .map(|(n, f)| (n.clone(), f.environments))
                .collect(),
            in_flight: st
                .functions
                .iter()
                .map(|(n, f)| (n.clone(), f.in_flight))
                .collect(),
            tenant_in_flight: st
                .functions
                .iter()
                .flat_map(|(n, f)| {
                    f.tenant_in_flight
                        .iter()
                        .map(move |(t, c)| ((n.clone(), t.clone()), *c))
                })
                .collect(),
            counters: st.counters.clone(),
            booting: st.booting,
            peak_booting: st.peak_booting,
            pool_booting: st.pool_booting,
            queued: st.queue.iter().filter(|w| !w.pool).count(),
            admission: self.admission,
            boot_estimate: st.boot_estimate.mean(),
            pools: st
                .pools
                .iter()
                .map(|(k, p)| (k.name.clone(), (p.target, p.ready.len(), p.filling)))
                .collect(),
            memory_used: st.memory_used,
            unreserved_in_flight: st.unreserved_in_flight,
            tenant_environments: st.tenant_envs.clone(),
        }
    }
}
