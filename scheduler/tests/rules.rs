//! The scheduler's rules, with the in-memory backend: targeted cases and
//! property tests over random concurrent workloads.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use proptest::prelude::*;
use silo_scheduler::memory_backend::MemoryBackend;
use silo_scheduler::{Admission, Binding, Limits, ScheduleError, Scheduler, ThrottleReason};
use std::sync::atomic::Ordering::SeqCst;

mod common;
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

/// Starts one invoke per binding, in this order, without waiting for any.
async fn burst(
    s: &Scheduler<MemoryBackend>,
    l: Limits,
    bindings: &[Binding],
    ms: u64,
) -> Vec<
    tokio::task::JoinHandle<
        Result<
            silo_scheduler::InvokeReport<(u64, u64)>,
            ScheduleError<silo_scheduler::memory_backend::MemError>,
        >,
    >,
> {
    let mut out = Vec::new();
    for b in bindings {
        let (s, b) = (s.clone(), b.clone());
        out.push(tokio::spawn(async move {
            let r = req(&b, ms, false);
            s.invoke(b, l, r).await
        }));
        // Let it reach the scheduler, so arrival order is this order.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    out
}

#[tokio::test]
async fn cold_starts_beyond_the_boot_slots_wait_in_arrival_order() {
    let backend = MemoryBackend::default();
    backend.create_ms.store(60, SeqCst);
    let s = Scheduler::with_admission(backend.clone(), admission(2, 16));
    let tenants: Vec<Binding> = (0..6).map(|i| binding("f", &format!("t{i}"))).collect();
    for h in burst(&s, Limits::default(), &tenants, 0).await {
        assert!(h.await.unwrap().unwrap().cold_start);
    }
    assert_eq!(
        backend.creating_max.load(SeqCst),
        2,
        "never more than 2 boots at once"
    );
    let created: Vec<Binding> = backend
        .journal
        .lock()
        .unwrap()
        .created
        .iter()
        .map(|(_, b)| b.clone())
        .collect();
    // Boots started in arrival order, two at a time: each pair finishes before the next.
    let mut pairs: Vec<Vec<Binding>> = created
        .chunks(2)
        .map(|c| {
            let mut v = c.to_vec();
            v.sort();
            v
        })
        .collect();
    for p in &mut pairs {
        p.sort();
    }
    let expected: Vec<Vec<Binding>> = tenants.chunks(2).map(|c| c.to_vec()).collect();
    assert_eq!(pairs, expected);
    let st = s.stats();
    assert_eq!((st.booting, st.queued, st.counters.cold_starts), (0, 0, 6));
    assert_eq!(st.peak_booting, 2);
}

#[tokio::test]
async fn a_full_queue_refuses_at_once_with_its_reason() {
    let backend = MemoryBackend::default();
    backend.create_ms.store(300, SeqCst);
    let s = Scheduler::with_admission(backend.clone(), admission(1, 2));
    let tenants: Vec<Binding> = (0..5).map(|i| binding("f", &format!("t{i}"))).collect();
    let handles = burst(&s, Limits::default(), &tenants, 0).await;
    let mut refused = 0;
    let mut served = 0;
    for h in handles {
        match h.await.unwrap() {
            Ok(_) => served += 1,
            Err(ScheduleError::Throttled(ThrottleReason::ColdStartQueueFull)) => refused += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(
        (served, refused),
        (3, 2),
        "one booting, two queued, two refused"
    );
    let st = s.stats();
    assert_eq!(
        st.counters.throttles_by_reason[&ThrottleReason::ColdStartQueueFull],
        2
    );
    assert_eq!(st.in_flight["f"], 0, "refusals released their slots");
    assert_eq!(
        st.environments["f"], 3,
        "refusals released their reservations"
    );
}

#[tokio::test]
async fn refusals_come_before_any_boot_ends() {
    let backend = MemoryBackend::default();
    backend.create_ms.store(400, SeqCst);
    let s = Scheduler::with_admission(backend.clone(), admission(1, 1));
    let tenants: Vec<Binding> = (0..4).map(|i| binding("f", &format!("t{i}"))).collect();
    let handles = burst(&s, Limits::default(), &tenants, 0).await;
    // The last two are refused while the first boot is still running.
    for h in handles.into_iter().skip(2) {
        let r = h.await.unwrap();
        assert!(matches!(
            r,
            Err(ScheduleError::Throttled(ThrottleReason::ColdStartQueueFull))
        ));
        assert!(
            backend.journal.lock().unwrap().created.is_empty(),
            "refused only after a boot ended"
        );
    }
}

#[tokio::test]
async fn a_cold_start_that_cannot_be_ready_by_its_deadline_is_refused_at_once() {
    let backend = MemoryBackend::default();
    backend.create_ms.store(200, SeqCst);
    let s = Scheduler::with_admission(backend.clone(), admission(1, 16));
    let warmup = binding("f", "warmup");
    s.invoke(warmup.clone(), Limits::default(), req(&warmup, 0, false))
        .await
        .unwrap();
    assert!(s.stats().boot_estimate.unwrap() >= Duration::from_millis(200));
    // A boot takes ~200 ms; the deadline allows one boot but not a wait for one.
    let l = Limits {
        init_deadline: Duration::from_millis(350),
        ..Limits::default()
    };
    let tenants: Vec<Binding> = (0..3).map(|i| binding("f", &format!("t{i}"))).collect();
    let handles = burst(&s, l, &tenants, 0).await;
    let results: Vec<_> = futures_join(handles.into_iter())
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    assert!(results[0].is_ok(), "the first boots at once");
    for r in &results[1..] {
        assert!(
            matches!(
                r,
                Err(ScheduleError::Throttled(ThrottleReason::ColdStartDeadline))
            ),
            "{r:?}"
        );
    }
    assert_eq!(
        backend.journal.lock().unwrap().created.len(),
        2,
        "no boot for the refused"
    );
}

#[tokio::test]
async fn one_slow_boot_does_not_refuse_every_later_cold_start() {
    // A boot slower than the init deadline once made the estimate refuse
    // every cold start, even with a free slot, and none ever came to
    // correct it.
    let backend = MemoryBackend::default();
    backend.create_ms.store(300, SeqCst);
    let s = Scheduler::with_admission(backend.clone(), admission(1, 16));
    let l = Limits {
        init_deadline: Duration::from_millis(200),
        ..Limits::default()
    };
    let a = binding("f", "slow");
    assert!(s.invoke(a.clone(), l, req(&a, 0, false)).await.is_ok());
    assert!(s.stats().boot_estimate.unwrap() > l.init_deadline);
    backend.create_ms.store(10, SeqCst);
    let b = binding("f", "next");
    let r = s.invoke(b.clone(), l, req(&b, 0, false)).await;
    assert!(r.is_ok_and(|r| r.cold_start), "a free slot boots");
    assert!(
        s.stats().boot_estimate.unwrap() < Duration::from_millis(300),
        "and the estimate recovers"
    );
}

#[tokio::test]
async fn a_waiting_cold_start_takes_an_idle_environment_of_its_own_tenant() {
    let backend = MemoryBackend::default();
    backend.create_ms.store(100, SeqCst);
    let s = Scheduler::with_admission(backend.clone(), admission(1, 16));
    let a = binding("f", "tenant-A");
    let b = binding("f", "tenant-B");
    // A boots; A again and B queue; A's environment is handed to the second A
    // when the first finishes, while B boots.
    let handles = burst(
        &s,
        Limits::default(),
        &[a.clone(), a.clone(), b.clone()],
        20,
    )
    .await;
    let r: Vec<_> = futures_join(handles.into_iter())
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect();
    assert!(r[0].cold_start && !r[1].cold_start && r[2].cold_start);
    assert_eq!(
        r[0].env_id, r[1].env_id,
        "the second A reused the first A's environment"
    );
    assert_eq!(
        r[1].response.1, 2,
        "and it was that environment's second invocation"
    );
    let st = s.stats();
    assert_eq!(st.counters.warm_handoffs, 1);
    assert_eq!(st.counters.cold_starts, 2);
    assert_eq!(st.environments["f"], 2);
}

#[tokio::test]
async fn warm_invokes_never_wait_behind_cold_boots() {
    let backend = MemoryBackend::default();
    let s = Scheduler::with_admission(backend.clone(), admission(1, 16));
    let a = binding("f", "tenant-A");
    s.invoke(a.clone(), Limits::default(), req(&a, 0, false))
        .await
        .unwrap();
    backend.create_ms.store(500, SeqCst);
    let cold: Vec<Binding> = (0..3).map(|i| binding("f", &format!("t{i}"))).collect();
    let handles = burst(&s, Limits::default(), &cold, 0).await;
    let r = s
        .invoke(a.clone(), Limits::default(), req(&a, 0, false))
        .await
        .unwrap();
    assert!(!r.cold_start);
    assert_eq!(
        backend.journal.lock().unwrap().created.len(),
        1,
        "the warm invoke ended before the first cold boot"
    );
    assert_eq!(s.stats().queued, 2);
    for h in handles {
        h.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn failed_boots_give_their_slot_to_the_next_waiter() {
    let backend = MemoryBackend::default();
    backend.create_ms.store(30, SeqCst);
    backend.fail_creates.store(true, SeqCst);
    let s = Scheduler::with_admission(backend.clone(), admission(1, 16));
    let tenants: Vec<Binding> = (0..3).map(|i| binding("f", &format!("t{i}"))).collect();
    for h in burst(&s, Limits::default(), &tenants, 0).await {
        assert!(matches!(h.await.unwrap(), Err(ScheduleError::Create(_))));
    }
    let st = s.stats();
    assert_eq!(
        (st.booting, st.queued, st.counters.create_failures),
        (0, 0, 3)
    );
    backend.fail_creates.store(false, SeqCst);
    let t = binding("f", "after");
    assert!(s
        .invoke(t.clone(), Limits::default(), req(&t, 0, false))
        .await
        .is_ok());
}

/// Waits (real time, bounded) until `cond` holds on the scheduler's stats.
async fn until(
    s: &Scheduler<MemoryBackend>,
    what: &str,
    cond: impl Fn(&silo_scheduler::Stats) -> bool,
) {
    for _ in 0..500 {
        if cond(&s.stats()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what}: never happened; stats {:?}", s.stats());
}

fn pool_ready(st: &silo_scheduler::Stats, f: &str) -> usize {
    st.pools.get(f).map_or(0, |p| p.1)
}

#[tokio::test]
async fn a_pool_serves_new_tenants_without_a_boot_and_refills() {
    let backend = MemoryBackend::default();
    backend.create_ms.store(30, SeqCst);
    let s = Scheduler::with_admission(backend.clone(), admission(1, 16));
    let a = binding("f", "tenant-A");
    s.set_pool(&a.function, 2, &Limits::default()).await;
    until(&s, "pool of 2 ready", |st| pool_ready(st, "f") == 2).await;
    assert_eq!(
        s.stats().counters.cold_starts,
        0,
        "pool boots are not cold starts"
    );
    let r = s
        .invoke(a.clone(), Limits::default(), req(&a, 0, false))
        .await
        .unwrap();
    assert!(!r.cold_start && r.from_pool, "{r:?}");
    assert_eq!(r.response.1, 1, "the pooled environment's first invocation");
    // The tenant's next invoke reuses it; the pool refills to 2.
    let r2 = s
        .invoke(a.clone(), Limits::default(), req(&a, 0, false))
        .await
        .unwrap();
    assert_eq!((r2.env_id, r2.from_pool), (r.env_id, false));
    until(&s, "pool refilled", |st| pool_ready(st, "f") == 2).await;
    let st = s.stats();
    assert_eq!((st.counters.pool_takes, st.counters.pool_boots), (1, 3));
    assert_eq!(st.environments["f"], 3);
    // Another tenant never gets A's environment, but a pooled one.
    let b = binding("f", "tenant-B");
    let rb = s
        .invoke(b.clone(), Limits::default(), req(&b, 0, false))
        .await
        .unwrap();
    assert!(rb.from_pool && rb.env_id != r.env_id);
}

/// The refill of a pooled VM starts once its first invoke is answered, so
/// that no boot competes with the invoke the pool exists to make fast.
#[tokio::test]
async fn a_taken_pool_vm_is_replaced_after_its_invoke_not_during_it() {
    let backend = MemoryBackend::default();
    backend.create_ms.store(10, SeqCst);
    let s = Scheduler::with_admission(backend.clone(), admission(1, 16));
    let a = binding("f", "tenant-A");
    s.set_pool(&a.function, 2, &Limits::default()).await;
    until(&s, "pool of 2 ready", |st| pool_ready(st, "f") == 2).await;
    let invoke = {
        let (s, a) = (s.clone(), a.clone());
        tokio::spawn(async move {
            s.invoke(a.clone(), Limits::default(), req(&a, 300, false))
                .await
        })
    };
    until(&s, "the pool VM taken", |st| pool_ready(st, "f") == 1).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let st = s.stats();
    assert_eq!(
        (st.pools["f"].2, st.counters.pool_boots),
        (0, 2),
        "no refill boot while the pooled invoke runs: {st:?}"
    );
    let r = invoke.await.unwrap().unwrap();
    assert!(r.from_pool, "{r:?}");
    until(&s, "pool refilled", |st| pool_ready(st, "f") == 2).await;
    assert_eq!(s.stats().counters.pool_boots, 3);
}

/// A pooled environment that fails to boot (or, with VMs, to finish its
/// runtime's init) is counted and not retried at once: a function whose
/// runtime cannot start must not boot VMs in a loop. Its next cold start
/// tries the pool again.
#[tokio::test]
async fn a_failed_pool_boot_is_counted_and_not_retried_in_a_loop() {
    let backend = MemoryBackend::default();
    backend.create_ms.store(5, SeqCst);
    backend.fail_creates.store(true, SeqCst);
    let s = Scheduler::with_admission(backend.clone(), admission(1, 16));
    let a = binding("f", "tenant-A");
    s.set_pool(&a.function, 1, &Limits::default()).await;
    until(&s, "the pool boot failed", |st| {
        st.counters.create_failures >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let st = s.stats();
    assert_eq!(
        (
            st.counters.create_failures,
            st.pools["f"].1,
            st.pools["f"].2
        ),
        (1, 0, 0),
        "one failure, nothing ready or booting: {st:?}"
    );
    // The function's next cold start (creations work again) refills it.
    backend.fail_creates.store(false, SeqCst);
    let r = s
        .invoke(a.clone(), Limits::default(), req(&a, 0, false))
        .await
        .unwrap();
    assert!(r.cold_start, "{r:?}");
    until(&s, "pool refilled", |st| pool_ready(st, "f") == 1).await;
}

/// A pool set back to 0 before its boots began boots nothing, and leaves
/// no empty pool behind (the property test below caught a slot still taken
/// after its pools were stopped: the boot began only then).
#[tokio::test]
async fn a_pool_shrunk_before_its_boot_begins_boots_nothing() {
    let backend = MemoryBackend::default();
    backend.create_ms.store(5, SeqCst);
    let s = Scheduler::with_admission(backend.clone(), admission(1, 16));
    let f = binding("f", "x").function;
    // One thread: the planned boot cannot start before this task yields.
    s.set_pool(&f, 1, &Limits::default()).await;
    s.set_pool(&f, 0, &Limits::default()).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let st = s.stats();
    assert_eq!(st.booting, 0, "{st:?}");
    assert!(st.pools.is_empty(), "no pool left: {st:?}");
    assert!(backend.journal.lock().unwrap().created.is_empty());
    assert_eq!(st.environments.get("f").copied().unwrap_or(0), 0, "{st:?}");
}

#[tokio::test]
async fn pool_boots_wait_behind_cold_starts_and_a_waiting_invoke_takes_a_fresh_one() {
    let backend = MemoryBackend::default();
    backend.create_ms.store(150, SeqCst);
    let s = Scheduler::with_admission(backend.clone(), admission(1, 16));
    let f = binding("f", "x").function;
    // The first pool boot takes the only slot; the second waits.
    s.set_pool(&f, 2, &Limits::default()).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    // A new tenant arrives while the pool is still booting: it waits for a
    // slot ahead of the second pool boot, and takes the first pooled VM the
    // moment it is ready.
    let t = binding("f", "tenant-T");
    let r = s
        .invoke(t.clone(), Limits::default(), req(&t, 0, false))
        .await
        .unwrap();
    assert!(!r.cold_start, "{r:?}");
    let created = backend.journal.lock().unwrap().created.clone();
    assert!(
        created[0].1.tenant.is_none(),
        "served by a pool boot: {created:?}"
    );
    until(&s, "pool refilled", |st| pool_ready(st, "f") == 2).await;
    assert_eq!(s.stats().counters.cold_starts, 0);
}

#[tokio::test]
async fn pools_count_against_the_cap_are_reaped_and_go_with_their_function() {
    let backend = MemoryBackend::default();
    let s = Scheduler::with_admission(backend.clone(), admission(2, 16));
    let l = Limits {
        concurrency: 2,
        env_cap_factor: 1.5,
        ..Limits::default()
    };
    let f = binding("f", "x").function;
    s.set_pool(&f, 10, &l).await;
    until(&s, "pool at the cap", |st| pool_ready(st, "f") == 3).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(s.stats().environments["f"], 3, "cap is ceil(1.5 x 2)");
    assert_eq!(
        s.reap_idle(Duration::ZERO).await,
        3,
        "idle pooled VMs are reaped"
    );
    assert_eq!(pool_ready(&s.stats(), "f"), 0);
    // The next cold start of the function refills it.
    let a = binding("f", "tenant-A");
    assert!(
        s.invoke(a.clone(), l, req(&a, 0, false))
            .await
            .unwrap()
            .cold_start
    );
    until(&s, "pool refilled after a cold start", |st| {
        pool_ready(st, "f") == 2
    })
    .await;
    // New code: the pool moves to the new version.
    let mut f2 = f.clone();
    f2.version = "v2".into();
    s.set_current_version(&f2).await;
    until(&s, "pool of the new version", |st| pool_ready(st, "f") >= 1).await;
    assert!(s.stats().pools.len() == 1);
    // DeleteFunction: the pool goes.
    s.retire_function("f").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(s.stats().pools.is_empty());
    // CreateFunction again under the same name: a new pool fills at once
    // (before any invoke).
    let mut f3 = f.clone();
    f3.version = "v3".into();
    s.activate(&f3);
    s.set_pool(&f3, 1, &l).await;
    until(&s, "pool of a re-created function", |st| {
        pool_ready(st, "f") == 1
    })
    .await;
    s.shutdown().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let j = backend.journal.lock().unwrap().clone();
    assert_eq!(j.created.len(), j.destroyed.len(), "nothing leaked: {j:?}");
}

#[derive(Debug, Clone)]
enum Op {
    Invoke { f: u8, t: u8, ms: u8, crash: bool },
    Reap,
    Retire(u8),
    Pool(u8, u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u8..2, 0u8..4, 0u8..20, proptest::bool::weighted(0.1))
            .prop_map(|(f, t, ms, crash)| Op::Invoke { f, t, ms, crash }),
        1 => Just(Op::Reap),
        1 => (0u8..2).prop_map(Op::Retire),
        1 => (0u8..2, 0u8..3).prop_map(|(f, n)| Op::Pool(f, n)),
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
                assert!(st.memory_used <= guests * 128, "{} MiB of guests over {} MiB", st.memory_used, guests * 128);
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
