//! The PostgreSQL event queue of a cluster against a real PostgreSQL
//! (started per test from Debian's binaries, see `pg/mod.rs`): claims
//! never overlap while nodes live, a dead node's events are adopted once
//! its lease lapses, a restarted server is reconnected, and a database
//! that is unreachable or not silo's is refused at start with a clear
//! error.

mod pg;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pg::PgServer;
use silo_daemon::cluster::pg::PgConn;
use silo_daemon::event_store::{EventId, EventStore, NewEvent, PgEventStore};

fn event(n: u32) -> NewEvent {
    NewEvent {
        request_id: format!("req-{n}"),
        function: "f".into(),
        tenant: Some(format!("tenant-{}", n % 5)),
        payload: format!("{{\"n\":{n}}}").into_bytes(),
        accepted_unix_ms: 1_000 + u64::from(n),
    }
}

fn store(url: &str, node: &str, lease: Duration) -> PgEventStore {
    PgEventStore::open(Arc::new(PgConn::connect(url).unwrap()), node, lease)
}

/// Two nodes accept events and adopt in a loop at once: each event is
/// held by exactly one of them; after a restart a node takes its own back.
#[test]
fn two_live_nodes_never_hold_one_event() {
    let pg = PgServer::start();
    let lease = Duration::from_secs(60);
    let a = Arc::new(store(&pg.url(), "node-a", lease));
    let b = Arc::new(store(&pg.url(), "node-b", lease));
    let mut held_a: Vec<EventId> = (0..50).map(|n| a.accept(&event(n)).unwrap()).collect();
    let mut held_b: Vec<EventId> = (50..100).map(|n| b.accept(&event(n)).unwrap()).collect();
    // Both adopt concurrently while the other accepts more: nothing is
    // adoptable while both live and renew.
    let (ta, tb) = (a.clone(), b.clone());
    let adopt_a = std::thread::spawn(move || {
        (0..30)
            .flat_map(|_| ta.adopt().unwrap())
            .map(|e| e.id)
            .collect::<Vec<_>>()
    });
    let adopt_b = std::thread::spawn(move || {
        (0..30)
            .flat_map(|_| tb.adopt().unwrap())
            .map(|e| e.id)
            .collect::<Vec<_>>()
    });
    held_a.extend((100..120).map(|n| a.accept(&event(n)).unwrap()));
    held_b.extend((120..140).map(|n| b.accept(&event(n)).unwrap()));
    assert_eq!(adopt_a.join().unwrap(), Vec::<EventId>::new());
    assert_eq!(adopt_b.join().unwrap(), Vec::<EventId>::new());
    let a_set: BTreeSet<_> = held_a.iter().copied().collect();
    let b_set: BTreeSet<_> = held_b.iter().copied().collect();
    assert!(a_set.is_disjoint(&b_set));
    assert_eq!(a_set.len() + b_set.len(), 140);
    // A restart of node a (same node id) takes back exactly its own.
    drop(a);
    let a = store(&pg.url(), "node-a", lease);
    let (pending, bad) = a.pending().unwrap();
    assert!(bad.is_empty());
    assert_eq!(pending.iter().map(|e| e.id).collect::<BTreeSet<_>>(), a_set);
    assert_eq!(pending[0].event, event(0));
    // Done and given-up events are gone for every node.
    a.done(held_a[0]).unwrap();
    a.record_errors(held_a[1], 2).unwrap();
    a.give_up(held_a[2], "Unhandled: boom", 3, 5_000).unwrap();
    let (pending, _) = a.pending().unwrap();
    assert_eq!(pending.len(), a_set.len() - 2);
    assert_eq!(pending[0].errors, 2);
    let failed = b.failed(Some("f")).unwrap();
    assert_eq!(
        failed
            .iter()
            .map(|f| (f.id, f.attempts, f.error.as_str()))
            .collect::<Vec<_>>(),
        [(held_a[2], 3, "Unhandled: boom")]
    );
    assert!(b.failed(Some("other")).unwrap().is_empty());
    assert!(b.remove_failed(held_a[2]).unwrap());
    assert!(!a.remove_failed(held_a[2]).unwrap());
    b.check().unwrap();
}

/// A node dies (stops renewing: its process is gone): its events stay
/// its own until the lease lapses, then the two live nodes, adopting
/// concurrently, take each exactly once.
#[test]
fn a_dead_nodes_events_are_adopted_once_its_lease_lapses() {
    let pg = PgServer::start();
    let lease = Duration::from_secs(3);
    let dead = store(&pg.url(), "node-dead", lease);
    let orphans: BTreeSet<EventId> = (0..60).map(|n| dead.accept(&event(n)).unwrap()).collect();
    let died = Instant::now();
    drop(dead);
    let a = Arc::new(store(&pg.url(), "node-a", lease));
    let b = Arc::new(store(&pg.url(), "node-b", lease));
    let own = a.accept(&event(99)).unwrap();
    let adopt = |s: Arc<PgEventStore>| {
        std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut early = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline && got.len() < 60 {
                let before = died.elapsed();
                let ids: Vec<EventId> = s.adopt().unwrap().iter().map(|e| e.id).collect();
                if before < Duration::from_secs(2) {
                    early.extend(ids.iter().copied());
                }
                got.extend(ids);
                std::thread::sleep(Duration::from_millis(20));
                if died.elapsed() > lease * 4 {
                    break;
                }
            }
            (got, early)
        })
    };
    let (ja, jb) = (adopt(a.clone()), adopt(b.clone()));
    let (got_a, early_a) = ja.join().unwrap();
    let (got_b, early_b) = jb.join().unwrap();
    assert!(
        early_a.is_empty() && early_b.is_empty(),
        "adopted before the lease lapsed"
    );
    let set_a: BTreeSet<_> = got_a.iter().copied().collect();
    let set_b: BTreeSet<_> = got_b.iter().copied().collect();
    assert_eq!(set_a.len(), got_a.len(), "node a adopted one event twice");
    assert_eq!(set_b.len(), got_b.len(), "node b adopted one event twice");
    assert!(set_a.is_disjoint(&set_b), "both nodes adopted one event");
    assert_eq!(
        set_a.union(&set_b).copied().collect::<BTreeSet<_>>(),
        orphans
    );
    assert!(!set_a.contains(&own) && !set_b.contains(&own));
}

/// The server restarts (fast shutdown: connections cut): the next calls
/// reconnect and what was accepted before is still there.
#[test]
fn a_restarted_postgres_is_reconnected() {
    let mut pg = PgServer::start();
    let a = store(&pg.url(), "node-a", Duration::from_secs(60));
    let first = a.accept(&event(1)).unwrap();
    pg.stop();
    let err = a.accept(&event(2)).unwrap_err().to_string();
    assert!(err.contains("PostgreSQL 127.0.0.1:"), "{err}");
    pg.resume();
    let second = a.accept(&event(3)).unwrap();
    a.check().unwrap();
    let (pending, _) = a.pending().unwrap();
    assert_eq!(
        pending.iter().map(|e| e.id).collect::<Vec<_>>(),
        [first, second]
    );
}

/// Bad databases are refused at start, saying why.
#[test]
fn unreachable_or_foreign_databases_are_refused_clearly() {
    let port = pg::free_port();
    let err = PgConn::connect(&format!("postgres://silo@127.0.0.1:{port}/silo"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.starts_with(&format!("connecting (PostgreSQL 127.0.0.1:{port}/silo): ")),
        "{err}"
    );
    let pg = PgServer::start();
    // A schema newer than this build.
    let newer = pg.create_database("newer");
    PgConn::connect(&newer).unwrap();
    pg.execute("SELECT 1"); // the server is fine
    {
        let mut c = postgres::Client::connect(&newer, postgres::NoTls).unwrap();
        c.batch_execute("INSERT INTO silo_schema (version) VALUES (999)")
            .unwrap();
    }
    let err = PgConn::connect(&newer).err().unwrap().to_string();
    assert!(
        err.contains("schema is version 999, newer than this silo's"),
        "{err}"
    );
    // Someone else's table under silo's name.
    let foreign = pg.create_database("not_silos");
    {
        let mut c = postgres::Client::connect(&foreign, postgres::NoTls).unwrap();
        c.batch_execute("CREATE TABLE silo_events (id INT)")
            .unwrap();
    }
    let err = PgConn::connect(&foreign).err().unwrap().to_string();
    assert!(
        err.contains("applying a schema migration") && err.contains("silo_events"),
        "{err}"
    );
    // A table changed behind silo's back after migrating.
    let changed = pg.create_database("changed");
    PgConn::connect(&changed).unwrap();
    {
        let mut c = postgres::Client::connect(&changed, postgres::NoTls).unwrap();
        c.batch_execute("ALTER TABLE silo_events DROP COLUMN lease_until")
            .unwrap();
    }
    let err = PgConn::connect(&changed).err().unwrap().to_string();
    assert!(
        err.contains("tables are not silo's") && err.contains("lease_until"),
        "{err}"
    );
}
