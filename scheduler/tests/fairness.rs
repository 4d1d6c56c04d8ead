//! Fairness between tenants and functions, with the in-memory backend and
//! real delays: pool work's share of the boot slots, tenants' shares of
//! environments, boot slots and the cold-start queue, host memory
//! admission and the host-wide pool of unreserved functions.

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use silo_scheduler::memory_backend::{MemRequest, MemoryBackend};
use silo_scheduler::{Admission, Binding, FunctionKey, Limits, Scheduler, TenantId};

fn binding(f: &str, t: &str) -> Binding {
    Binding {
        function: FunctionKey {
            name: f.into(),
            version: "v1".into(),
        },
        tenant: Some(TenantId::parse(t).unwrap()),
    }
}

fn req(b: &Binding, ms: u64, crash: bool) -> MemRequest {
    MemRequest {
        binding: b.clone(),
        delay: Duration::from_millis(ms),
        crash,
    }
}

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
