//! The scheduler's rules, with the in-memory backend: targeted cases and
//! property tests over random concurrent workloads.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use proptest::prelude::*;
use silo_scheduler::memory_backend::MemoryBackend;
use silo_scheduler::{Admission, Binding, Limits, ScheduleError, Scheduler, ThrottleReason};
use std::sync::atomic::Ordering::SeqCst;

#[path = "../common/mod.rs"]
mod common;

mod admission;
mod memory;
mod pools;
use common::{binding, req};

fn limits(concurrency: u32, per_tenant: u32) -> Limits {
    Limits {
        concurrency,
        reserved: true,
        per_tenant,
        ..Limits::default()
    }
}

#[tokio::test]
async fn same_tenant_reuses_warm_other_tenant_gets_its_own() {
    let backend = MemoryBackend::default();
    let s = Scheduler::new(backend.clone());
    let a = binding("f", "tenant-A");
    let b = binding("f", "tenant-B");
    let r1 = s
        .invoke(a.clone(), Limits::default(), req(&a, 0, false))
        .await
        .unwrap();
    let r2 = s
        .invoke(a.clone(), Limits::default(), req(&a, 0, false))
        .await
        .unwrap();
    let r3 = s
        .invoke(b.clone(), Limits::default(), req(&b, 0, false))
        .await
        .unwrap();
    assert!(r1.cold_start && !r2.cold_start && r3.cold_start);
    assert_eq!(r1.env_id, r2.env_id);
    assert_ne!(r1.env_id, r3.env_id);
    assert_eq!(
        (r1.response.1, r2.response.1, r3.response.1),
        (1, 2, 1),
        "counters 1, 2, 1"
    );
}

#[tokio::test]
async fn parallel_invokes_of_one_tenant_scale_out() {
    let s = Scheduler::new(MemoryBackend::default());
    let a = binding("f", "t");
    let calls = (0..4).map(|_| {
        let (s, a) = (s.clone(), a.clone());
        async move {
            s.invoke(a.clone(), Limits::default(), req(&a, 50, false))
                .await
        }
    });
    let reports = futures_join(calls).await;
    let ids: HashSet<u64> = reports.iter().map(|r| r.as_ref().unwrap().env_id).collect();
    assert_eq!(ids.len(), 4, "one invocation per environment at a time");
}

async fn futures_join<F>(fs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = fs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn tenant_ceiling_and_function_concurrency_throttle() {
    let s = Scheduler::new(MemoryBackend::default());
    let a = binding("f", "noisy");
    let l = limits(3, 2);
    let slow = |b: &Binding| {
        let (s, b) = (s.clone(), b.clone());
        tokio::spawn(async move { s.invoke(b.clone(), l, req(&b, 300, false)).await })
    };
    let h1 = slow(&a);
    let h2 = slow(&a);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let e = s.invoke(a.clone(), l, req(&a, 0, false)).await.unwrap_err();
    assert!(
        matches!(
            e,
            ScheduleError::Throttled(ThrottleReason::TenantConcurrency)
        ),
        "{e}"
    );
    let b = binding("f", "quiet");
    let h3 = slow(&b);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let e = s.invoke(b.clone(), l, req(&b, 0, false)).await.unwrap_err();
    assert!(
        matches!(
            e,
            ScheduleError::Throttled(ThrottleReason::FunctionConcurrency)
        ),
        "{e}"
    );
    for h in [h1, h2, h3] {
        h.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn at_the_cap_the_lru_idle_environment_of_any_tenant_is_evicted() {
    let backend = MemoryBackend::default();
    let s = Scheduler::new(backend.clone());
    let l = Limits {
        concurrency: 1,
        per_tenant: 1,
        env_cap_factor: 2.0,
        ..Limits::default()
    };
    let (a, b, c) = (binding("f", "a"), binding("f", "b"), binding("f", "c"));
    let ra = s.invoke(a.clone(), l, req(&a, 0, false)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    s.invoke(b.clone(), l, req(&b, 0, false)).await.unwrap();
    // Cap is 2: tenant c evicts a's environment (least recently used).
    s.invoke(c.clone(), l, req(&c, 0, false)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(backend.journal.lock().unwrap().destroyed, vec![ra.env_id]);
    assert_eq!(s.stats().counters.evictions, 1);
}

#[tokio::test]
async fn a_crash_destroys_only_that_environment() {
    let backend = MemoryBackend::default();
    let s = Scheduler::new(backend.clone());
    let (a, b) = (binding("f", "a"), binding("f", "b"));
    let rb = s
        .invoke(b.clone(), Limits::default(), req(&b, 0, false))
        .await
        .unwrap();
    let ra = s
        .invoke(a.clone(), Limits::default(), req(&a, 0, false))
        .await
        .unwrap();
    assert!(s
        .invoke(a.clone(), Limits::default(), req(&a, 0, true))
        .await
        .is_err());
    assert_eq!(backend.journal.lock().unwrap().destroyed, vec![ra.env_id]);
    let again = s
        .invoke(b.clone(), Limits::default(), req(&b, 0, false))
        .await
        .unwrap();
    assert_eq!(
        again.env_id, rb.env_id,
        "the other tenant keeps its warm environment"
    );
    assert!(
        s.invoke(a.clone(), Limits::default(), req(&a, 0, false))
            .await
            .unwrap()
            .cold_start
    );
}

#[tokio::test]
async fn failed_creation_releases_its_reservation() {
    let backend = MemoryBackend::default();
    let s = Scheduler::new(backend.clone());
    let a = binding("f", "a");
    backend
        .fail_creates
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let l = limits(1, 1);
    assert!(matches!(
        s.invoke(a.clone(), l, req(&a, 0, false)).await,
        Err(ScheduleError::Create(_))
    ));
    backend
        .fail_creates
        .store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(
        s.invoke(a.clone(), l, req(&a, 0, false)).await.is_ok(),
        "no slot leaked"
    );
}

#[tokio::test]
async fn reaping_retiring_and_new_code_destroy_idle_environments() {
    let backend = MemoryBackend::default();
    let s = Scheduler::new(backend.clone());
    let (a, g) = (binding("f", "a"), binding("g", "a"));
    s.invoke(a.clone(), Limits::default(), req(&a, 0, false))
        .await
        .unwrap();
    s.invoke(g.clone(), Limits::default(), req(&g, 0, false))
        .await
        .unwrap();
    assert_eq!(s.reap_idle(Duration::from_secs(3600)).await, 0);
    let mut a2 = a.clone();
    a2.function.version = "v2".into();
    assert_eq!(
        s.set_current_version(&a2.function).await,
        1,
        "old code drains"
    );
    assert!(
        s.invoke(a2.clone(), Limits::default(), req(&a2, 0, false))
            .await
            .unwrap()
            .cold_start
    );
    assert_eq!(s.retire_function("f").await, 1);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(s.reap_idle(Duration::ZERO).await, 1, "g reaped");
    let j = backend.journal.lock().unwrap().clone();
    assert_eq!(j.created.len(), j.destroyed.len(), "nothing leaked");
}

fn admission(max_booting: usize, queue_capacity: usize) -> Admission {
    Admission {
        max_booting,
        queue_capacity,
        pool_boot_slots: (max_booting / 2).max(1),
        memory_mib: 1 << 40,
        host_concurrency: 100_000,
        tenant_environments: 100_000,
    }
}

#[derive(Debug, Clone)]
enum Op {
    Invoke {
        f: u8,
        t: u8,
        ms: u8,
        crash: bool,
    },
    Reap,
    Retire(u8),
    Pool(u8, u8),
    /// The `n`th environment created so far (if any) says it holds `mib`
    /// while idle (paged out); then idle charges are recomputed.
    PageOut {
        n: u8,
        mib: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u8..2, 0u8..4, 0u8..20, proptest::bool::weighted(0.1))
            .prop_map(|(f, t, ms, crash)| Op::Invoke { f, t, ms, crash }),
        1 => Just(Op::Reap),
        1 => (0u8..2).prop_map(Op::Retire),
        1 => (0u8..2, 0u8..3).prop_map(|(f, n)| Op::Pool(f, n)),
        1 => (0u8..8, 1u8..128).prop_map(|(n, mib)| Op::PageOut { n, mib }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn isolation_caps_and_no_leaks_under_random_load(ops in proptest::collection::vec(op(), 1..40), slots in 1usize..3, queue in 1usize..4, boot_ms in 0u64..15, share in 1u32..4, guests in 1u64..6, host in 1u32..5) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let backend = MemoryBackend::default();
            backend.create_ms.store(boot_ms, SeqCst);
            // Tenants' shares, host memory for `guests` guests and a host
            // pool of `host` in flight for the unreserved function f1.
            let adm = Admission { memory_mib: guests * 128, host_concurrency: host, tenant_environments: share, ..admission(slots, queue) };
            let s = Scheduler::with_admission(backend.clone(), adm);
            let l = Limits { concurrency: 3, reserved: true, per_tenant: 2, env_cap_factor: 1.5, idle_timeout: Duration::ZERO, ..Limits::default() };
            let limits_of = move |f: u8| Limits { reserved: f == 0, ..l };
            let mut handles = Vec::new();
            for o in ops {
                match o {
                    Op::Invoke { f, t, ms, crash } => {
                        let b = binding(&format!("f{f}"), &format!("t{t}"));
                        let s2 = s.clone();
                        handles.push(tokio::spawn(async move {
                            s2.invoke(b.clone(), limits_of(f), req(&b, u64::from(ms), crash)).await.map(|_| ())
                        }));
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    Op::Reap => { s.reap_idle(Duration::ZERO).await; }
                    Op::Retire(f) => { s.retire_function(&format!("f{f}")).await; }
                    Op::Pool(f, n) => {
                        let key = binding(&format!("f{f}"), "t0").function;
                        s.set_pool(&key, usize::from(n), &l).await;
                    }
                    Op::PageOut { n, mib } => {
                        let id = backend.journal.lock().unwrap().created.get(usize::from(n)).map(|c| c.0);
                        if let Some(id) = id {
                            backend.held.lock().unwrap().insert(id, u64::from(mib));
                        }
                        s.recharge_idle();
                    }
                }
                let st = s.stats();
                for (name, n) in &st.environments {
                    assert!(*n <= l.env_cap(), "{name}: {n} environments over the cap");
                }
                // Reserved concurrency holds for f0; f1 draws on the host pool.
                assert!(st.in_flight.get("f0").copied().unwrap_or(0) <= l.concurrency, "f0 in flight over its reserved concurrency");
                assert!(st.unreserved_in_flight <= host, "{} unreserved in flight over the host's {host}", st.unreserved_in_flight);
                for (tenant, n) in &st.tenant_environments {
                    assert!(*n <= share, "{tenant:?} holds {n} environments over its share of {share}");
                }
                // Over only when paged-out environments were taken back
                // with none idle left to evict (counted).
                assert!(st.memory_used <= guests * 128 || st.counters.memory_over_budget > 0, "{} MiB of guests over {} MiB", st.memory_used, guests * 128);
                for ((name, tenant), n) in &st.tenant_in_flight {
                    assert!(*n <= l.per_tenant, "{name}/{tenant:?}: {n} in flight over the tenant ceiling");
                }
                assert!(st.booting <= slots, "{} booting over {slots} slots", st.booting);
                assert!(st.pool_booting <= (slots / 2).max(1), "{} pool boots over their share of {slots} slots", st.pool_booting);
                assert!(st.queued <= queue, "{} queued over a queue of {queue}", st.queued);
            }
            for h in handles {
                let _ = h.await.unwrap();
            }
            // Pool boots run in the background: stop pools, let boots end.
            for f in 0..2u8 {
                s.set_pool(&binding(&format!("f{f}"), "t0").function, 0, &l).await;
            }
            // A planned boot may not have begun yet: wait for the pools to
            // be gone too, not only for no boot to be running.
            for _ in 0..400 {
                let st = s.stats();
                if st.booting == 0 && st.pools.is_empty() { break; }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let st = s.stats();
            assert_eq!((st.booting, st.queued), (0, 0), "slots and queue drained");
            assert!(st.pools.is_empty(), "pools stopped: {:?}", st.pools);
            s.shutdown().await;
            // Environments are destroyed by tasks of their own: give them
            // time on a loaded machine (the checks below say what is wrong).
            for _ in 0..400 {
                let j = backend.journal.lock().unwrap().clone();
                if j.destroyed.len() >= j.created.len() && s.stats().memory_used == 0 { break; }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let j = backend.journal.lock().unwrap().clone();
            assert_eq!(s.stats().memory_used, 0, "memory freed with the environments");
            // Isolation: every request an environment served was for its own
            // binding. Pooled environments (created bound to no tenant) are
            // bound by their first invocation: of their function version,
            // and never served anyone before it.
            let created: HashMap<u64, Binding> = j.created.iter().cloned().collect();
            let mut bound: HashMap<u64, Binding> = HashMap::new();
            for (env, b) in &j.served {
                let c = &created[env];
                assert_eq!(&c.function, &b.function, "environment {env} served another function");
                if c.tenant.is_some() {
                    assert_eq!(c, b, "environment {env} served another binding");
                }
                let first = bound.entry(*env).or_insert_with(|| b.clone());
                assert_eq!(first, b, "environment {env} served two tenants");
            }
            let bound: HashMap<u64, Binding> = created;
            assert!(backend.creating_max.load(SeqCst) as usize <= slots, "more boots at once than slots");
            // No leaks, no double destroys.
            let destroyed: HashSet<u64> = j.destroyed.iter().copied().collect();
            assert_eq!(destroyed.len(), j.destroyed.len(), "an environment was destroyed twice");
            assert_eq!(destroyed, bound.keys().copied().collect::<HashSet<_>>(), "leaked environments");
        });
    }
}
