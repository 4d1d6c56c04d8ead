//! `silo cluster haproxy-config` prints a configuration Debian's HAProxy
//! (2.6) accepts (`haproxy -c`), with the routing the cluster relies on.

use std::process::Command;

#[test]
fn the_printed_haproxy_configuration_is_valid() {
    let out = common::cli::run_ok(
        Command::new(env!("CARGO_BIN_EXE_silo"))
            .args(["cluster", "haproxy-config", "--listen", "127.0.0.1:19000"])
            .args(["--node", "127.0.0.1:19001", "--node", "10.0.0.2:9000"])
            .args(["--node", "localhost:19003"]),
    );
    let cfg = String::from_utf8(out.stdout).unwrap();
    for line in [
        "balance hash var(txn.silo_key)",
        "hash-type consistent",
        "# No hash-balance-factor",
        "timeout check 5s",
        "http-check send meth GET uri /readyz",
        "server node3 localhost:19003",
    ] {
        assert!(cfg.contains(line), "{line:?} missing:\n{cfg}");
    }
    let dir = std::env::temp_dir().join(format!("silo-haproxy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("haproxy.cfg");
    std::fs::write(&file, &cfg).unwrap();
    let check = Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(&file)
        .output()
        .expect("haproxy is not installed: apt-get install haproxy");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        check.status.success(),
        "haproxy -c refused it:\n{said}\n{cfg}"
    );
    // The checker would warn about, e.g., an unknown keyword it ignores.
    assert!(!said.contains("[WARNING]"), "{said}");
    // Bad input is refused, not printed.
    let bad = Command::new(env!("CARGO_BIN_EXE_silo"))
        .args(["cluster", "haproxy-config", "--node", "no-port"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not host:port"));
    let _ = std::fs::remove_dir_all(&dir);
}

mod cluster;
mod common;
#[path = "../daemon/tests/pg/mod.rs"]
mod pg;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::daemon::{config, scratch, TestDaemon};
use silo_client::InvokeOptions;

/// Real HAProxy (configured by `silo cluster haproxy-config`) in front of
/// three `silo serve` nodes on one real PostgreSQL. Which node took a
/// request is read from the shared Event queue: an accepted event is
/// claimed by the node that accepted it. The function's reserved
/// concurrency is 0, so no event runs (no VM is needed) and each stays
/// claimed by its node. Checks: a function created on node 1 is invokable
/// through HAProxy (SigV4 signed for HAProxy's address, verified by the
/// node); one tenant's invokes land on one node; tenants spread; after a
/// kill -9 of one node only its tenants move.
#[test]
fn haproxy_routes_tenants_to_nodes_and_only_a_dead_nodes_tenants_move() {
    let pg = pg::PgServer::start();
    let cfg = config("[cluster]\nevent_lease_s = 3600\n");
    let url = pg.url();
    let mut nodes: Vec<TestDaemon> = ["n1", "n2", "n3"]
        .iter()
        .map(|id| {
            TestDaemon::on_host(
                &cfg,
                &scratch(&format!("haproxy-{id}")),
                &["--registry", &url, "--node-id", id, "--insecure-no-jail"],
            )
        })
        .collect();
    let node_ids: BTreeMap<String, &str> = nodes
        .iter()
        .zip(["n1", "n2", "n3"])
        .map(|(d, id)| (d.endpoint.trim_start_matches("http://").to_string(), id))
        .collect();
    let haproxy = cluster::Haproxy::start(
        &scratch("haproxy-run"),
        pg::free_port(),
        &node_ids.keys().cloned().collect::<Vec<_>>(),
        300,
    );

    let admin1 = nodes[0].admin();
    let r = admin1
        .create_function("routed", &cluster::package(), true, serde_json::json!({}))
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    let r = admin1
        .request(
            "PUT",
            "/2017-10-31/functions/routed/concurrency",
            &[("content-type", "application/json")],
            br#"{"ReservedConcurrentExecutions": 0}"#,
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let through = haproxy.admin();
    let event = |tenant: &str, n: usize| {
        through.invoke(
            "routed",
            format!("{{\"tenant\":\"{tenant}\",\"n\":{n}}}").as_bytes(),
            &InvokeOptions {
                tenant: Some(tenant.into()),
                invocation_type: Some("Event".into()),
                log_tail: false,
            },
        )
    };
    // Every node holds the function and HAProxy sees every node up.
    let start = Instant::now();
    let mut sent = 0;
    for t in 0..20 {
        let tenant = format!("tenant-{t}");
        for n in 0..5 {
            loop {
                let r = event(&tenant, n);
                if r.as_ref().is_ok_and(|r| r.status == 202) {
                    sent += 1;
                    break;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "no 202 through HAProxy in 60 s: {:?}\n{}",
                    r.map(|r| (r.status, r.text())),
                    haproxy.log()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    assert_eq!(sent, 100);
    let placement = |since_ms: i64| -> BTreeMap<String, BTreeSet<String>> {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for row in c
            .query(
                "SELECT tenant, claimed_by FROM silo_events WHERE accepted_unix_ms >= $1",
                &[&since_ms],
            )
            .unwrap()
        {
            m.entry(row.get(0)).or_default().insert(row.get(1));
        }
        m
    };
    let before = placement(0);
    assert_eq!(before.len(), 20);
    for (tenant, on) in &before {
        assert_eq!(on.len(), 1, "{tenant} landed on {on:?}");
    }
    let used: BTreeSet<&String> = before.values().flatten().collect();
    println!("20 tenants over nodes: {:?}", count(&before));
    assert!(used.len() >= 2, "all tenants on one node: {used:?}");

    // kill -9 the node holding the most tenants.
    let counts = count(&before);
    let victim = counts.iter().max_by_key(|(_, n)| **n).unwrap().0.clone();
    let idx = ["n1", "n2", "n3"]
        .iter()
        .position(|n| **n == *victim)
        .unwrap();
    nodes[idx].kill_hard();
    let killed_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    // Each tenant again, until accepted (requests routed to the dead node
    // fail until HAProxy's checks mark it down, or are redispatched).
    let start = Instant::now();
    for t in 0..20 {
        let tenant = format!("tenant-{t}");
        loop {
            if event(&tenant, 99).is_ok_and(|r| r.status == 202) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{tenant}: no 202 after the kill"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let after = placement(killed_ms);
    assert_eq!(after.len(), 20);
    for (tenant, on) in &after {
        let was = before[tenant].iter().next().unwrap();
        let now = on.iter().next().unwrap();
        assert_eq!(on.len(), 1);
        assert_ne!(now, &victim, "{tenant} still on the dead node");
        if was != &victim {
            assert_eq!(now, was, "{tenant} moved although its node lives");
        }
    }
    println!("after killing {victim}: {:?}", count(&after));
    drop(haproxy);
    for (i, n) in nodes.iter_mut().enumerate() {
        if i != idx {
            n.stop();
        }
    }
}

fn count(m: &BTreeMap<String, BTreeSet<String>>) -> BTreeMap<String, usize> {
    let mut c = BTreeMap::new();
    for on in m.values() {
        for n in on {
            *c.entry(n.clone()).or_default() += 1;
        }
    }
    c
}

/// The bounded load `silo cluster haproxy-config` prints keeps a tenant on
/// its node while that node holds the only request in flight (as when it
/// runs one cold start): with `hash-balance-factor 150` HAProxy counted
/// the node as over 1.5x the average and sent the tenant's next requests
/// to another node, where each would cold-start. The long request is a
/// real one through HAProxy whose body is still coming; which node took
/// each Event is read from the shared queue (reserved concurrency 0: no
/// VM, each event stays claimed by its node).
#[test]
fn one_long_request_on_a_node_does_not_move_its_tenants() {
    use std::io::{Read, Write};
    let pg = pg::PgServer::start();
    let cfg = config("[cluster]\nevent_lease_s = 3600\n");
    let url = pg.url();
    let mut nodes: Vec<TestDaemon> = ["n1", "n2", "n3"]
        .iter()
        .map(|id| {
            TestDaemon::on_host(
                &cfg,
                &scratch(&format!("haproxy-hold-{id}")),
                &["--registry", &url, "--node-id", id, "--insecure-no-jail"],
            )
        })
        .collect();
    let endpoints: Vec<String> = nodes
        .iter()
        .map(|d| d.endpoint.trim_start_matches("http://").to_string())
        .collect();
    let front = pg::free_port();
    let haproxy = cluster::Haproxy::start(&scratch("haproxy-hold-run"), front, &endpoints, 300);
    let admin1 = nodes[0].admin();
    let r = admin1
        .create_function("routed", &cluster::package(), true, serde_json::json!({}))
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    let r = admin1
        .request(
            "PUT",
            "/2017-10-31/functions/routed/concurrency",
            &[("content-type", "application/json")],
            br#"{"ReservedConcurrentExecutions": 0}"#,
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let through = haproxy.admin();
    let event = || {
        through.invoke(
            "routed",
            b"{}",
            &InvokeOptions {
                tenant: Some("held".into()),
                invocation_type: Some("Event".into()),
                log_tail: false,
            },
        )
    };
    let claimed = || -> Vec<String> {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        c.query(
            "SELECT claimed_by FROM silo_events WHERE tenant = 'held' ORDER BY accepted_unix_ms",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
    };
    // The tenant's node: where its first accepted event went (every node
    // up in HAProxy and holding the function first).
    let start = Instant::now();
    while !event().is_ok_and(|r| r.status == 202) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no 202 through HAProxy in 60 s\n{}",
            haproxy.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let home = claimed()[0].clone();
    // One long request of the same key, its body never finished: HAProxy
    // has passed its headers to the tenant's node and counts it in flight.
    // Signed (the node verifies before it runs anything, after the body).
    let path = "/2015-03-31/functions/routed/invocations";
    let body = [b' '; 1000];
    let given = [
        ("x-amz-tenant-id", "held"),
        ("content-type", "application/json"),
    ];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut head =
        format!("POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{front}\r\nContent-Length: 1000\r\n");
    for (n, v) in given {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    for (n, v) in through.signature_headers("POST", path, &given, &body, now) {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n ");
    let mut held = std::net::TcpStream::connect(("127.0.0.1", front)).unwrap();
    held.write_all(head.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    for n in 0..10 {
        let r = event().unwrap();
        assert_eq!(r.status, 202, "event {n}: {}", r.text());
    }
    // Still in flight: no answer came back on it.
    held.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    assert!(
        matches!(held.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the long request ended early: {:?}",
        String::from_utf8_lossy(&buf)
    );
    let on = claimed();
    assert_eq!(on.len(), 11);
    assert!(
        on.iter().all(|n| *n == home),
        "the tenant's events left its node {home} while it held one request: {on:?}\n{}",
        haproxy.log()
    );
    drop(held);
    drop(haproxy);
    for n in nodes.iter_mut() {
        n.stop();
    }
}
