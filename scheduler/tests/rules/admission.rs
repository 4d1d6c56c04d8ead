//! Cold-start admission: boot slots, the arrival-order queue, deadlines
//! and refusals.

use super::*;

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
