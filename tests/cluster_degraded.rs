//! PostgreSQL down under a cluster (real PostgreSQL 15 stopped and started
//! again, two real `silo serve --registry` nodes, real HAProxy in front):
//! each node's `/readyz` stays 200 but says `"degraded": true` (registry
//! and event store out of touch), so HAProxy keeps routing to the nodes,
//! which serve the functions they hold from their cached state; once
//! PostgreSQL is back, each node is in touch again (`registry: true`), and
//! a change made then reaches the other node. No VM is needed.

mod cluster;
mod common;
#[path = "../daemon/tests/pg/mod.rs"]
mod pg;

use std::time::Duration;

use common::daemon::{config, scratch, TestDaemon};
use serde_json::{json, Value};
use silo_client::LambdaClient;

/// [`cluster::until`] within 30 s, polling every 50 ms.
fn until(what: &str, ok: impl Fn() -> bool) -> Duration {
    cluster::until(what, Duration::from_secs(30), Duration::from_millis(50), ok)
}

/// `/readyz`: status and body.
fn readyz(node: &TestDaemon) -> (u16, Value) {
    let r = LambdaClient::new(&node.endpoint, None)
        .request("GET", "/readyz", &[], b"")
        .unwrap();
    (r.status, r.json())
}

fn status(c: &LambdaClient, name: &str) -> u16 {
    c.request("GET", &format!("/2015-03-31/functions/{name}"), &[], b"")
        .map(|r| r.status)
        .unwrap_or(0)
}

#[test]
fn nodes_stay_routable_and_degraded_while_postgres_is_down() {
    let mut pg = pg::PgServer::start();
    let url = pg.url();
    let nodes: Vec<TestDaemon> = ["d1", "d2"]
        .iter()
        .map(|id| {
            TestDaemon::on_host(
                &config(""),
                &scratch(&format!("degraded-{id}")),
                &["--registry", &url, "--node-id", id, "--insecure-no-jail"],
            )
        })
        .collect();
    let check_ms = 200;
    let haproxy = cluster::Haproxy::start(
        &scratch("degraded-haproxy"),
        pg::free_port(),
        &nodes
            .iter()
            .map(|n| n.endpoint.trim_start_matches("http://").to_string())
            .collect::<Vec<_>>(),
        check_ms,
    );
    let through = haproxy.admin();
    let r = nodes[0]
        .admin()
        .create_function("held", &cluster::package(), true, json!({}))
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    until("the function reaches node 2", || {
        status(&nodes[1].admin(), "held") == 200
    });
    for n in &nodes {
        let (code, body) = readyz(n);
        assert_eq!(code, 200, "{body}");
        assert_ne!(body["degraded"], true, "{body}");
        assert_ne!(body["checks"]["registry"], false, "{body}");
    }
    until("HAProxy routes to the nodes", || {
        status(&through, "held") == 200
    });

    pg.stop();
    // Long enough for each node to notice (a heartbeat, 2 s) and for
    // HAProxy to mark a failing node down (2 failed checks), with room:
    // HAProxy still routes, the nodes answer from their cached state.
    std::thread::sleep(Duration::from_secs(3) + Duration::from_millis(u64::from(check_ms) * 5));
    for _ in 0..10 {
        let r = through
            .request("GET", "/2015-03-31/functions/held", &[], b"")
            .unwrap();
        assert_eq!(
            r.status,
            200,
            "through HAProxy while PostgreSQL is down: {}\n{}",
            r.text(),
            haproxy.log()
        );
        std::thread::sleep(Duration::from_millis(u64::from(check_ms)));
    }
    for n in &nodes {
        // The listener notices at once, the shared connection at its next
        // statement (a heartbeat within 2 s).
        let t = until("the node says it is degraded", || {
            let body = readyz(n).1;
            body["degraded"] == true && body["checks"]["event_store"] == false
        });
        let (code, body) = readyz(n);
        println!(
            "{}: {code} {body} ({t:?} after the check above)",
            n.endpoint
        );
        assert_eq!(code, 200, "a degraded node must stay routable: {body}");
        assert_eq!(body["ready"], true, "{body}");
        assert_eq!(body["checks"]["registry"], false, "{body}");
    }
    // A change needs PostgreSQL: refused, naming it.
    let r = through
        .create_function("refused", &cluster::package(), false, json!({}))
        .unwrap();
    assert!(r.status >= 500, "{} {}", r.status, r.text());
    assert!(r.text().contains("PostgreSQL"), "{}", r.text());

    pg.resume();
    for n in &nodes {
        let t = until("the node is in touch again", || {
            let (code, body) = readyz(n);
            code == 200 && body["degraded"] == false && body["checks"]["registry"] == true
        });
        println!("{}: in touch again {t:?} after the restart", n.endpoint);
    }
    let r = nodes[1]
        .admin()
        .create_function("after", &cluster::package(), false, json!({}))
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    until("a change made after the restart reaches node 1", || {
        status(&nodes[0].admin(), "after") == 200
    });
    // A node stops cleanly: its PostgreSQL connection is closed off the
    // async runtime (closing it on a runtime thread panicked).
    for mut n in nodes {
        let log = n.stop();
        assert!(!log.contains("panicked"), "{log}");
    }
}
