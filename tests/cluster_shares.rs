//! Reserved concurrency split across a cluster's live nodes (real
//! PostgreSQL 15, three real `silo serve --registry` processes, no VM):
//! each node's GetFunction shows the share it enforces (`Concurrency`'s
//! `SiloNodeShare`, the figure its scheduler admits invocations by); the
//! shares sum to the reservation; a node killed (`kill -9`) or stopped
//! makes the survivors' shares grow once its heartbeat expires, and its
//! return splits again; a reservation below the node count leaves every
//! node one; zero throttles on every node; a node cut off from PostgreSQL
//! keeps its last share.

mod cluster;
mod common;
#[path = "../daemon/tests/pg/mod.rs"]
mod pg;

use std::time::Duration;

use common::daemon::{config, scratch, TestDaemon};
use serde_json::json;
use silo_client::LambdaClient;

/// [`cluster::until`] within 60 s, polling every 100 ms.
fn until(what: &str, ok: impl Fn() -> bool) -> Duration {
    cluster::until(
        what,
        Duration::from_secs(60),
        Duration::from_millis(100),
        ok,
    )
}

fn node_at(pg: &pg::PgServer, id: &str, data: &std::path::Path) -> TestDaemon {
    cluster::registry_node(&config(""), &pg.url(), id, data, &[])
}

/// (reservation, this node's share, live nodes) as node `c` shows them.
fn shown(c: &LambdaClient) -> Option<(u64, u64, u64)> {
    let r = c
        .request("GET", "/2015-03-31/functions/capped", &[], b"")
        .ok()?;
    if r.status != 200 {
        return None;
    }
    let v = r.json();
    let c = &v["Concurrency"];
    Some((
        c["ReservedConcurrentExecutions"].as_u64()?,
        c["SiloNodeShare"].as_u64()?,
        c["SiloLiveNodes"].as_u64()?,
    ))
}

fn reserve(c: &LambdaClient, n: u32) {
    let r = c
        .request(
            "PUT",
            "/2017-10-31/functions/capped/concurrency",
            &[("content-type", "application/json")],
            format!(r#"{{"ReservedConcurrentExecutions": {n}}}"#).as_bytes(),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Waits until the nodes `clients` (in node-id order) show `reserved`
/// split as `shares` among `shares.len()` live nodes.
fn until_split(what: &str, clients: &[&LambdaClient], reserved: u64, shares: &[u64]) -> Duration {
    let live = shares.len() as u64;
    until(what, || {
        clients
            .iter()
            .zip(shares)
            .all(|(c, s)| shown(c) == Some((reserved, *s, live)))
    })
}

#[test]
fn reserved_concurrency_is_split_across_live_nodes_and_re_split_on_membership_changes() {
    let mut pg = pg::PgServer::start();
    let dirs: Vec<_> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| scratch(&format!("shares-{n}")))
        .collect();
    let mut n1 = node_at(&pg, "n1", &dirs[0]);
    let mut n2 = node_at(&pg, "n2", &dirs[1]);
    let mut n3 = node_at(&pg, "n3", &dirs[2]);
    let (a1, a2, a3) = (n1.admin(), n2.admin(), n3.admin());

    let r = a1
        .create_function("capped", &cluster::package(), true, json!({}))
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    reserve(&a1, 5);
    let t = until_split(
        "5 split 2+2+1 over 3 nodes",
        &[&a1, &a2, &a3],
        5,
        &[2, 2, 1],
    );
    println!("split over 3 nodes after {t:?}");

    // kill -9 of n3: the survivors take its part once its heartbeat expires.
    n3.kill_hard();
    let t = until_split("n3 killed: 3+2 over 2 nodes", &[&a1, &a2], 5, &[3, 2]);
    println!("n3 killed: re-split after {t:?}");

    // n3 back (same id, same data directory): split in three again.
    let mut n3 = node_at(&pg, "n3", &dirs[2]);
    let a3 = n3.admin();
    let t = until_split("n3 back: 2+2+1", &[&a1, &a2, &a3], 5, &[2, 2, 1]);
    println!("n3 back: re-split after {t:?}");

    // A reservation below the node count: each node admits one, so the
    // function stays invokable through every node.
    reserve(&a2, 1);
    until_split("1 over 3 nodes: one each", &[&a1, &a2, &a3], 1, &[1, 1, 1]);

    // Zero: every node throttles the function (no VM is booted to say so).
    reserve(&a2, 0);
    until_split("0 over 3 nodes", &[&a1, &a2, &a3], 0, &[0, 0, 0]);
    for c in [&a1, &a2, &a3] {
        let r = c
            .request(
                "POST",
                "/2015-03-31/functions/capped/invocations",
                &[("x-amz-tenant-id", "t1")],
                b"{}",
            )
            .unwrap();
        assert_eq!(r.status, 429, "{}", r.text());
        assert!(
            r.text()
                .contains("ReservedFunctionConcurrentInvocationLimitExceeded"),
            "{}",
            r.text()
        );
    }

    // n1 stopped (SIGTERM): n2 is now first by id.
    reserve(&a2, 5);
    until_split("5 again", &[&a1, &a2, &a3], 5, &[2, 2, 1]);
    n1.stop();
    let t = until_split("n1 stopped: 3+2", &[&a2, &a3], 5, &[3, 2]);
    println!("n1 stopped: re-split after {t:?}");

    // PostgreSQL away for longer than a heartbeat's expiry: each node keeps
    // the share it had (its membership cannot be read).
    pg.stop();
    std::thread::sleep(Duration::from_secs(10));
    assert_eq!(shown(&a2), Some((5, 3, 2)));
    assert_eq!(shown(&a3), Some((5, 2, 2)));
    pg.resume();
    until_split("PostgreSQL back: 3+2", &[&a2, &a3], 5, &[3, 2]);
    n2.stop();
    n3.stop();
}
