//! Host memory charged by what idle environments really hold
//! ([`silo_scheduler::Environment::held_mib`], `Scheduler::recharge_idle`).

use super::*;

/// Waits (real time, bounded) until the journal shows `n` destructions.
async fn destroyed(backend: &MemoryBackend, n: usize) -> Vec<u64> {
    for _ in 0..500 {
        let d = backend.journal.lock().unwrap().destroyed.clone();
        if d.len() >= n {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    backend.journal.lock().unwrap().destroyed.clone()
}

/// Two idle environments fill a host of 256 MiB. Charged their guest
/// memory, a third tenant's cold start evicts one; paged out (10 MiB each)
/// and recharged, it boots beside them. Taken back by its tenant, a paged
/// out environment is charged in full again: the least recently used idle
/// one makes room, and the invocation is served warm.
#[tokio::test]
async fn paged_out_idle_environments_make_room_and_are_charged_in_full_when_taken() {
    let backend = MemoryBackend::default();
    let adm = Admission {
        memory_mib: 256,
        ..admission(2, 16)
    };
    let s = Scheduler::with_admission(backend.clone(), adm);
    let l = Limits {
        env_cap_factor: 10.0,
        ..limits(10, 10)
    };
    let (a, b, c) = (binding("f", "a"), binding("f", "b"), binding("f", "c"));
    let ra = s.invoke(a.clone(), l, req(&a, 0, false)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let rb = s.invoke(b.clone(), l, req(&b, 0, false)).await.unwrap();
    assert_eq!(s.stats().memory_used, 256);
    // Nothing paged out: recharging changes nothing.
    assert_eq!(s.recharge_idle(), 256);
    assert_eq!(s.stats().memory_used, 256);
    // Both paged out to 10 MiB.
    {
        let mut held = backend.held.lock().unwrap();
        held.insert(ra.env_id, 10);
        held.insert(rb.env_id, 10);
    }
    assert_eq!(s.recharge_idle(), 20);
    assert_eq!(s.stats().memory_used, 20);
    let rc = s.invoke(c.clone(), l, req(&c, 0, false)).await.unwrap();
    assert!(rc.cold_start);
    assert_eq!(s.stats().counters.evictions, 0, "no room had to be made");
    assert_eq!(s.stats().memory_used, 148);
    // Tenant a comes back: warm, on its own environment, charged 128 again
    // (276 > 256): b's, the least recently used idle one, is evicted.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let ra2 = s.invoke(a.clone(), l, req(&a, 0, false)).await.unwrap();
    assert!(!ra2.cold_start);
    assert_eq!(ra2.env_id, ra.env_id);
    assert_eq!(ra2.response.1, 2, "its state kept");
    assert_eq!(destroyed(&backend, 1).await, vec![rb.env_id]);
    assert_eq!(s.stats().counters.evictions, 1);
    assert!(s.stats().memory_used <= 256, "{}", s.stats().memory_used);
}
