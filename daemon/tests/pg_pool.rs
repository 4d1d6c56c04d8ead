//! A node's PostgreSQL connections are a pool (`cluster::pg::PgConn`),
//! against a real PostgreSQL (`pg/mod.rs`): a call blocked in the database
//! does not hold up the node's other calls (an Event accept, a heartbeat),
//! which a single shared connection would serialize behind it.

mod pg;

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use pg::PgServer;
use silo_daemon::cluster::pg::{PgConn, POOL_SIZE};

#[test]
fn a_call_blocked_in_the_database_does_not_hold_up_the_others() {
    let pg = PgServer::start();
    let db = Arc::new(PgConn::connect(&pg.url()).unwrap());
    // The test's own session holds an advisory lock; the node's first call
    // waits for it inside PostgreSQL, on one of the pool's connections.
    let mut holder = postgres::Client::connect(&pg.url(), postgres::NoTls).unwrap();
    holder
        .execute("SELECT pg_advisory_lock(4242)", &[])
        .unwrap();
    let (blocked_tx, blocked) = mpsc::channel();
    let waiter = {
        let db = db.clone();
        std::thread::spawn(move || {
            let r = db.with("waiting for the test's lock", |c| {
                c.execute("SELECT pg_advisory_lock(4242)", &[])?;
                c.execute("SELECT pg_advisory_unlock(4242)", &[])
            });
            blocked_tx.send(r.is_ok()).unwrap();
        })
    };
    // Wait until that call is really waiting on the lock.
    let mut waiting = false;
    for _ in 0..600 {
        let n: i64 = holder
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
                &[],
            )
            .unwrap()
            .get(0);
        if n == 1 {
            waiting = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(waiting, "the first call never reached the lock");
    // Meanwhile the node's other calls, up to the pool's size less the
    // blocked one, are answered (each on a connection of its own).
    let (done_tx, done) = mpsc::channel();
    for i in 0..POOL_SIZE.max(2) - 1 {
        let (db, done_tx) = (db.clone(), done_tx.clone());
        std::thread::spawn(move || {
            let r = db.with("a call beside the blocked one", |c| {
                c.query_one("SELECT $1::INT + 1", &[&(i as i32)])
                    .map(|r| r.get::<_, i32>(0))
            });
            let _ = done_tx.send((i, r.map_err(|e| e.to_string())));
        });
    }
    for _ in 0..POOL_SIZE.max(2) - 1 {
        let (i, r) = done
            .recv_timeout(Duration::from_secs(60))
            .expect("a call beside the blocked one never ended: serialized behind it");
        assert_eq!(r, Ok(i as i32 + 1), "call {i}");
    }
    assert!(
        blocked.try_recv().is_err(),
        "the first call was still waiting while the others ran"
    );
    holder
        .execute("SELECT pg_advisory_unlock(4242)", &[])
        .unwrap();
    assert_eq!(
        blocked.recv_timeout(Duration::from_secs(60)),
        Ok(true),
        "the blocked call ends once the lock is free"
    );
    waiter.join().unwrap();
}
