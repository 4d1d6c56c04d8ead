//! Two `silo serve` nodes (real processes) on one real PostgreSQL
//! (`--registry`): a function created on one is served by the other; a
//! configuration change and a delete reach the other; while PostgreSQL is
//! down nodes serve their cached functions, and after it restarts a change
//! made then reaches every node; a node refuses a package whose hash does
//! not match; an unreachable database, or one whose schema is not this
//! silo's, stops `silo serve` at start. None of
//! this needs a VM (function images are built, not booted).

mod cluster;
mod common;
#[path = "../daemon/tests/pg/mod.rs"]
mod pg;

use std::time::Duration;

use common::daemon::{config, scratch, TestDaemon};
use serde_json::json;
use silo_client::LambdaClient;

fn node(pg: &pg::PgServer, id: &str) -> TestDaemon {
    let data = scratch(&format!("cluster-{id}"));
    cluster::registry_node(&config(""), &pg.url(), id, &data, &[])
}

/// [`cluster::until`] within 30 s, polling every 20 ms.
fn until(what: &str, ok: impl Fn() -> bool) -> Duration {
    cluster::until(what, Duration::from_secs(30), Duration::from_millis(20), ok)
}

fn status(c: &LambdaClient, name: &str) -> u16 {
    c.request("GET", &format!("/2015-03-31/functions/{name}"), &[], b"")
        .map(|r| r.status)
        .unwrap_or(0)
}

#[test]
fn functions_reach_every_node_through_postgres() {
    let mut pg = pg::PgServer::start();
    let mut n1 = node(&pg, "n1");
    let mut n2 = node(&pg, "n2");
    let (a1, a2) = (n1.admin(), n2.admin());

    let r = a1
        .create_function("shared", &cluster::package(), true, json!({}))
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    let t = until("the function reaches node 2", || {
        status(&a2, "shared") == 200
    });
    println!("created on node 1, visible on node 2 after {t:?}");
    let v = a2
        .request("GET", "/2015-03-31/functions/shared", &[], b"")
        .unwrap()
        .json();
    assert_eq!(
        v["Configuration"]["TenancyConfig"]["TenantIsolationMode"],
        "PER_TENANT"
    );

    // A configuration change on node 2 reaches node 1.
    let r = a2
        .request(
            "PUT",
            "/2017-10-31/functions/shared/concurrency",
            &[("content-type", "application/json")],
            br#"{"ReservedConcurrentExecutions": 3}"#,
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    until("the concurrency reaches node 1", || {
        a1.request("GET", "/2015-03-31/functions/shared", &[], b"")
            .map(|r| r.json()["Concurrency"]["ReservedConcurrentExecutions"] == 3)
            .unwrap_or(false)
    });

    // PostgreSQL goes away: both nodes still serve what they hold.
    pg.stop();
    assert_eq!(status(&a1, "shared"), 200);
    assert_eq!(status(&a2, "shared"), 200);
    pg.resume();
    // A change made once it is back reaches the other node (its
    // listener reconnected, or re-read everything when it did).
    until("node 1 writes again after the restart", || {
        a1.create_function("after", &cluster::package(), false, json!({}))
            .map(|r| r.status == 201)
            .unwrap_or(false)
    });
    until("a function made after the restart reaches node 2", || {
        status(&a2, "after") == 200
    });

    // A delete on node 1 reaches node 2.
    let r = a1
        .request("DELETE", "/2015-03-31/functions/shared", &[], b"")
        .unwrap();
    assert_eq!(r.status, 204, "{}", r.text());
    until("the delete reaches node 2", || status(&a2, "shared") == 404);

    // A package whose bytes do not match its hash is refused by a node
    // that has not cached it.
    let sha: String = {
        let mut c = postgres::Client::connect(&pg.url(), postgres::NoTls).unwrap();
        let row = c
            .query_one(
                "SELECT record->>'code_sha256' FROM silo_functions WHERE name = 'after'",
                &[],
            )
            .unwrap();
        let sha: String = row.get(0);
        c.execute(
            "UPDATE silo_code SET zip = 'not the package' WHERE sha256 = $1",
            &[&sha],
        )
        .unwrap();
        sha
    };
    let mut n3 = node(&pg, "n3");
    assert_eq!(
        status(&n3.admin(), "after"),
        404,
        "a tampered package was served"
    );
    let log = n3.stop();
    assert!(
        log.contains(&format!("the package stored under {sha} has SHA-256"))
            && log.contains("refused"),
        "{log}"
    );
    // Node 1 cached it when it was created: it still serves it.
    assert_eq!(status(&a1, "after"), 200);

    // Membership: the running nodes' heartbeats are there; n3, stopped,
    // left it.
    let mut c = postgres::Client::connect(&pg.url(), postgres::NoTls).unwrap();
    let nodes: Vec<String> = c
        .query("SELECT node FROM silo_nodes ORDER BY node", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(nodes, ["n1", "n2"]);
    n1.stop();
    n2.stop();
}

/// Runs `sql` in the database at `url`.
fn execute_in(url: &str, sql: &str) {
    let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
    c.batch_execute(sql).unwrap();
}

/// `silo serve --registry url`, expected to stop at start: its stderr.
fn serve_refused(url: &str) -> String {
    // Never booted: the registry is reached before any VM.
    let dummy = scratch("cluster-refused-images").join("file");
    std::fs::write(&dummy, b"").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_silo"))
        .args(["serve", "--allow-unauthenticated", "--insecure-no-jail"])
        .arg("--data-dir")
        .arg(scratch("cluster-refused"))
        .args(["--listen", "127.0.0.1:0"])
        .arg("--kernel")
        .arg(&dummy)
        .arg("--agent")
        .arg(&dummy)
        .args(["--registry", url])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "silo serve started: {err}");
    err
}

/// `silo serve --registry` on a database whose schema is not this silo's
/// (newer, or someone else's tables under silo's names) stops at start,
/// saying why.
#[test]
fn a_wrong_schema_stops_the_node_at_start() {
    let pg = pg::PgServer::start();
    let newer = pg.create_database("newer");
    execute_in(&newer, "CREATE TABLE silo_schema (version INTEGER PRIMARY KEY); INSERT INTO silo_schema VALUES (999)");
    let err = serve_refused(&newer);
    assert!(
        err.contains("schema is version 999, newer than this silo's"),
        "{err}"
    );
    let foreign = pg.create_database("not_silos");
    execute_in(&foreign, "CREATE TABLE silo_functions (id INTEGER)");
    let err = serve_refused(&foreign);
    assert!(
        err.contains("applying a schema migration") && err.contains("silo_functions"),
        "{err}"
    );
}

/// `silo serve --registry` with nothing listening there stops at start,
/// saying which database it could not reach.
#[test]
fn an_unreachable_registry_stops_the_node_at_start() {
    let port = pg::free_port();
    let err = serve_refused(&format!("postgres://silo:secret@127.0.0.1:{port}/silo"));
    assert!(
        err.contains(&format!("connecting (PostgreSQL 127.0.0.1:{port}/silo)")),
        "{err}"
    );
    assert!(!err.contains("secret"), "the password was printed: {err}");
}
