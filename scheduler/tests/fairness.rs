//! Fairness between tenants and functions, with the in-memory backend and
//! real delays: pool work's share of the boot slots, tenants' shares of
//! environments, boot slots and the cold-start queue, host memory
//! admission and the host-wide pool of unreserved functions.

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use silo_scheduler::memory_backend::MemoryBackend;
use silo_scheduler::{Admission, Limits, ScheduleError, Scheduler, TenantId, ThrottleReason};

mod common;
use common::{binding, req};

fn admission(max_booting: usize, queue_capacity: usize) -> Admission {
    Admission {
        max_booting,
        queue_capacity,
        ..Admission::default()
    }
}

/// Polls `cond` on the scheduler's stats for up to 20 s.
async fn until(
    s: &Scheduler<MemoryBackend>,
    what: &str,
    cond: impl Fn(&silo_scheduler::Stats) -> bool,
) {
    for _ in 0..2000 {
        if cond(&s.stats()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}: {:?}", s.stats());
}

#[tokio::test]
async fn slow_pool_boots_leave_a_boot_slot_to_cold_starts() {
    let backend = MemoryBackend::default();
    backend.create_ms.store(50, SeqCst);
    // Each pooled boot's init takes 30 s.
    backend.create_pooled_ms.store(30_000, SeqCst);
    let s = Scheduler::with_admission(backend.clone(), admission(2, 16));
    let pooled = binding("slow-init", "t").function;
    s.set_pool(&pooled, 8, &Limits::default()).await;
    until(&s, "a pool boot to start", |st| st.booting >= 1).await;
    // Another function's cold start boots now, not after a 30 s init.
    let other = binding("other", "tenant-B");
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        s.invoke(other.clone(), Limits::default(), req(&other, 0, false)),
    )
    .await
    .expect("the cold start waited for the pool's boots")
    .unwrap();
    assert!(r.cold_start);
    let st = s.stats();
    assert_eq!(st.booting, 1, "one pool boot at a time: {st:?}");
}

#[tokio::test]
async fn pool_boots_do_not_feed_the_cold_start_estimate() {
    let backend = MemoryBackend::default();
    backend.create_pooled_ms.store(200, SeqCst);
    let s = Scheduler::with_admission(backend.clone(), admission(2, 16));
    s.set_pool(&binding("f", "t").function, 1, &Limits::default())
        .await;
    until(&s, "the pool to fill", |st| st.pools["f"].1 == 1).await;
    assert_eq!(s.stats().counters.pool_boots, 1);
    assert_eq!(
        s.stats().boot_estimate,
        None,
        "a pool boot's init is not a cold start's boot"
    );
}

fn shares(
    max_booting: usize,
    memory_mib: u64,
    host_concurrency: u32,
    tenant_environments: u32,
) -> Admission {
    Admission {
        max_booting,
        queue_capacity: 256,
        pool_boot_slots: 1,
        memory_mib,
        host_concurrency,
        tenant_environments,
    }
}

#[tokio::test]
async fn a_tenant_flooding_64_functions_does_not_hold_up_another_tenants_first_cold_start() {
    const BOOT_MS: u64 = 1000;
    let backend = MemoryBackend::default();
    backend.create_ms.store(BOOT_MS, SeqCst);
    // Shares large enough that all of A's cold starts queue: the queue's
    // order is what is tested here.
    let s = Scheduler::with_admission(backend.clone(), shares(2, 1 << 30, 10_000, 10_000));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut flood = Vec::new();
    for i in 0..64 {
        let (s, stop) = (s.clone(), stop.clone());
        let a = binding(&format!("a{i}"), "tenant-A");
        // Every invoke fails, so every one of A's invokes is a cold start.
        flood.push(tokio::spawn(async move {
            while !stop.load(SeqCst) {
                let _ = s
                    .invoke(a.clone(), Limits::default(), req(&a, 0, true))
                    .await;
            }
        }));
    }
    until(&s, "A's backlog to queue", |st| st.queued >= 60).await;
    let b = binding("b", "tenant-B");
    let started = std::time::Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(30),
        s.invoke(b.clone(), Limits::default(), req(&b, 0, false)),
    )
    .await
    .expect("B's cold start was not served within 30 s")
    .unwrap();
    let waited = started.elapsed() - r.init_duration.unwrap();
    stop.store(true, SeqCst);
    eprintln!("tenant-B's first cold start waited {waited:?} for a boot slot");
    assert!(r.cold_start);
    assert!(
        waited < Duration::from_millis(2 * BOOT_MS),
        "B waited {waited:?} behind A's backlog for a boot slot (a boot takes {BOOT_MS} ms)"
    );
    for h in flood {
        h.abort();
    }
}

#[tokio::test]
async fn a_tenant_holds_its_share_of_environments_across_functions() {
    let backend = MemoryBackend::default();
    let s = Scheduler::with_admission(backend.clone(), shares(4, 1 << 30, 10_000, 4));
    let b = binding("b", "tenant-B");
    let rb = s
        .invoke(b.clone(), Limits::default(), req(&b, 0, false))
        .await
        .unwrap();
    // A loops over 10 functions: it keeps at most 4 environments, evicting
    // its own least recently used idle one, never B's.
    for i in 0..10 {
        let a = binding(&format!("a{i}"), "tenant-A");
        s.invoke(a.clone(), Limits::default(), req(&a, 0, false))
            .await
            .unwrap();
        let st = s.stats();
        let held = st.tenant_environments[&TenantId::parse("tenant-A").unwrap()];
        assert!(held <= 4, "tenant-A holds {held} environments: {st:?}");
    }
    let again = s
        .invoke(b.clone(), Limits::default(), req(&b, 0, false))
        .await
        .unwrap();
    assert_eq!(again.env_id, rb.env_id, "B's environment was not evicted");
    // With 4 busy, a fifth function's invoke is refused with the share.
    let busy: Vec<_> = (0..4)
        .map(|i| {
            let (s, a) = (s.clone(), binding(&format!("a{i}"), "tenant-A"));
            tokio::spawn(async move {
                s.invoke(a.clone(), Limits::default(), req(&a, 500, false))
                    .await
            })
        })
        .collect();
    until(&s, "A's 4 invokes to run", |st| {
        st.tenant_in_flight.values().sum::<u32>() == 4
    })
    .await;
    let a = binding("a9", "tenant-A");
    let e = s
        .invoke(a.clone(), Limits::default(), req(&a, 0, false))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ScheduleError::Throttled(ThrottleReason::TenantEnvironments)
        ),
        "{e}"
    );
    for h in busy {
        h.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn guest_memory_is_never_overcommitted_and_boots_wait_or_evict() {
    let backend = MemoryBackend::default();
    backend.create_ms.store(50, SeqCst);
    // Room for 3 guests of 128 MiB.
    let s = Scheduler::with_admission(backend.clone(), shares(4, 3 * 128, 10_000, 10_000));
    let watch = {
        let s = s.clone();
        tokio::spawn(async move {
            let mut peak = 0;
            for _ in 0..300 {
                peak = peak.max(s.stats().memory_used);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            peak
        })
    };
    // 6 tenants at once, each busy 200 ms: 3 boot, 3 wait for memory.
    let calls: Vec<_> = (0..6)
        .map(|i| {
            let (s, b) = (s.clone(), binding("f", &format!("t{i}")));
            tokio::spawn(async move {
                s.invoke(b.clone(), Limits::default(), req(&b, 200, false))
                    .await
            })
        })
        .collect();
    for c in calls {
        assert!(c.await.unwrap().unwrap().cold_start, "waited, not refused");
    }
    assert!(watch.await.unwrap() <= 3 * 128, "memory over the budget");
    let st = s.stats();
    assert!(st.memory_used <= 3 * 128, "{st:?}");
    assert!(st.counters.evictions >= 3, "idle ones made room: {st:?}");
    // A function bigger than the whole budget is refused at once.
    let big = Limits {
        memory_mib: 512,
        ..Limits::default()
    };
    let b = binding("big", "t0");
    let e = s
        .invoke(b.clone(), big, req(&b, 0, false))
        .await
        .unwrap_err();
    assert!(
        matches!(e, ScheduleError::Throttled(ThrottleReason::HostMemory)),
        "{e}"
    );
}

#[tokio::test]
async fn unreserved_functions_share_the_host_pool_and_reserved_ones_keep_theirs() {
    let s = Scheduler::with_admission(MemoryBackend::default(), shares(4, 1 << 30, 3, 10_000));
    let slow = |f: &str, t: &str, l: Limits| {
        let (s, b) = (s.clone(), binding(f, t));
        tokio::spawn(async move { s.invoke(b.clone(), l, req(&b, 400, false)).await })
    };
    let unreserved = Limits::default();
    let h: Vec<_> = (0..3)
        .map(|i| slow(&format!("u{i}"), "t", unreserved))
        .collect();
    until(&s, "3 in flight", |st| st.unreserved_in_flight == 3).await;
    let u = binding("u9", "other");
    let e = s
        .invoke(u.clone(), unreserved, req(&u, 0, false))
        .await
        .unwrap_err();
    assert!(
        matches!(e, ScheduleError::Throttled(ThrottleReason::HostConcurrency)),
        "{e}"
    );
    // A function with reserved concurrency 1 is not in the host's pool.
    let reserved = Limits {
        concurrency: 1,
        reserved: true,
        ..Limits::default()
    };
    let r1 = slow("r", "t", reserved);
    until(&s, "the reserved invoke", |st| {
        st.in_flight.get("r") == Some(&1)
    })
    .await;
    let r = binding("r", "t2");
    let e = s
        .invoke(r.clone(), reserved, req(&r, 0, false))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ScheduleError::Throttled(ThrottleReason::FunctionConcurrency)
        ),
        "{e}"
    );
    r1.await.unwrap().unwrap();
    for x in h {
        x.await.unwrap().unwrap();
    }
}
