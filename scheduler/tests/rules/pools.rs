//! Pools of pre-booted VMs: taking, refilling, failing and shrinking.

use super::*;

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
