//! The cluster end to end, with real jailed microVMs: real PostgreSQL
//! (`initdb`, on loopback), three `silo serve --registry` nodes in ONE KVM
//! test host boot (or on this host with hardware KVM), and real HAProxy
//! (configured by `silo cluster haproxy-config`) in front of them. The
//! test host reaches PostgreSQL at QEMU's host alias (10.0.2.2 is this
//! host's loopback); HAProxy reaches the nodes through forwarded ports.
//!
//! Checks: a function created through node 1 reaches every node and is
//! invokable through HAProxy; 100 invokes of one tenant land on one node and
//! reuse one warm environment; 20 tenants spread over all three nodes;
//! no environment on any node serves two tenants (the counter's count in
//! the environment's `/tmp` starts at 1 for every environment, and each
//! node holds as many environments as tenants it served). Prints the warm
//! p50 through HAProxy against direct to the node. Then PostgreSQL is
//! restarted under load: warm invokes through HAProxy keep succeeding and a
//! change made as it comes back reaches every node. Last, one node is
//! killed under load and restarted (`cluster/kill_node.rs`).

mod cluster;
mod common;
#[path = "cluster/kill_node.rs"]
mod kill_node;
#[path = "cluster/nodes.rs"]
mod nodes;
#[path = "../daemon/tests/pg/mod.rs"]
mod pg;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::daemon::{free_port, scratch, ADMIN};
use nodes::{describe, Nodes, NODES};
use silo_client::{HttpResponse, InvokeOptions, LambdaClient};
use silo_images::testhost::TestHostError;

/// Tenants spread over the nodes (each one cold start): with `solo`, the
/// issue's 20 tenants (the hash, deterministic for these names, put 9/7/4
/// on the nodes; nodes admit 1400 MiB of guests for that).
const SPREAD_TENANTS: usize = 19;

fn signed(endpoint: &str) -> LambdaClient {
    common::cli::signed_client(endpoint, ADMIN).with_timeout(Duration::from_secs(180))
}

/// One invoke's answer, as the counter reports it.
struct Answer {
    env: String,
    count: u64,
    cold: bool,
}

fn answer(r: &HttpResponse, tenant: &str) -> Answer {
    assert_eq!(r.status, 200, "{tenant}: {}", r.text());
    assert!(r.header("x-amz-function-error").is_none(), "{}", r.text());
    let v = r.json();
    assert_eq!(v["tenant_id"], tenant, "{v}");
    Answer {
        env: r
            .header("x-silo-environment-id")
            .expect("X-Silo-Environment-Id")
            .to_string(),
        count: v["count"].as_u64().expect("count"),
        cold: r.header("x-silo-cold-start") == Some("true"),
    }
}

fn invoke(c: &LambdaClient, tenant: &str) -> Result<HttpResponse, silo_client::ClientError> {
    c.invoke(
        "counter",
        b"{}",
        &InvokeOptions {
            tenant: Some(tenant.into()),
            invocation_type: None,
            log_tail: false,
        },
    )
}

/// `silo_invocations_total`, `silo_cold_starts_total` (by tenant) and
/// `silo_environments` of the counter on the node behind `admin`.
struct NodeState {
    invocations: BTreeMap<String, u64>,
    cold_starts: BTreeMap<String, u64>,
    environments: u64,
}

fn node_state(admin: &LambdaClient) -> NodeState {
    let m = admin.request("GET", "/metrics", &[], b"").unwrap();
    assert_eq!(m.status, 200, "{}", m.text());
    let text = m.text();
    let by_tenant = |name: &str| -> BTreeMap<String, u64> {
        let prefix = format!("{name}{{function=\"counter\",tenant_id=\"");
        text.lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .filter_map(|rest| {
                let (tenant, v) = rest.split_once("\"} ")?;
                Some((tenant.to_string(), v.trim().parse().ok()?))
            })
            .filter(|(_, v)| *v > 0)
            .collect()
    };
    NodeState {
        invocations: by_tenant("silo_invocations_total"),
        cold_starts: by_tenant("silo_cold_starts_total"),
        environments: common::metric(&text, "silo_environments{function=\"counter\"}")
            .unwrap_or(0.0) as u64,
    }
}

fn scenario(nodes: &mut Nodes, pg: &mut pg::PgServer) {
    let endpoints = nodes.endpoints();
    let admins: Vec<LambdaClient> = endpoints.iter().map(|e| signed(e)).collect();
    let dir = scratch("cluster-e2e-haproxy");
    let haproxy = cluster::Haproxy::start(
        &dir,
        free_port(),
        &endpoints
            .iter()
            .map(|e| e.trim_start_matches("http://").to_string())
            .collect::<Vec<_>>(),
        300,
    );
    let through = signed(&haproxy.endpoint);

    // Created through node 1; every node holds it.
    let created = Instant::now();
    common::daemon::create_counter(&admins[0]);
    for (i, a) in admins.iter().enumerate() {
        while a
            .request("GET", "/2015-03-31/functions/counter", &[], b"")
            .map(|r| r.status)
            .unwrap_or(0)
            != 200
        {
            assert!(
                created.elapsed() < Duration::from_secs(30),
                "the function did not reach node {}",
                i + 1
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    println!(
        "created through node 1, on every node after {:?}",
        created.elapsed()
    );

    // One tenant, 100 invokes through HAProxy: one node, one environment.
    let mut first = None;
    let start = Instant::now();
    while first.is_none() {
        match invoke(&through, "solo") {
            Ok(r) if r.status == 200 => first = Some(answer(&r, "solo")),
            // HAProxy may not have seen the nodes up yet (2 checks).
            Ok(r) if r.status == 503 && start.elapsed() < Duration::from_secs(30) => {
                std::thread::sleep(Duration::from_millis(200))
            }
            other => panic!(
                "first invoke through HAProxy: {:?}\n{}",
                other.map(|r| (r.status, r.text())),
                haproxy.log()
            ),
        }
    }
    let first = first.unwrap();
    println!(
        "first invoke through HAProxy (a cold start) answered {:.1?} after the create",
        created.elapsed()
    );
    assert!(first.cold);
    assert_eq!(first.count, 1);
    for n in 2..=100 {
        let a = answer(&invoke(&through, "solo").unwrap(), "solo");
        assert!(!a.cold, "invoke {n} of one tenant was a cold start");
        assert_eq!(a.env, first.env, "invoke {n} ran in another environment");
        assert_eq!(a.count, n, "invoke {n}: the environment's count");
    }
    let states: Vec<NodeState> = admins.iter().map(node_state).collect();
    let solo_on: Vec<usize> = (0..NODES)
        .filter(|i| states[*i].invocations.contains_key("solo"))
        .collect();
    assert_eq!(solo_on.len(), 1, "one tenant on nodes {solo_on:?}");
    let home = solo_on[0];
    assert_eq!(states[home].invocations["solo"], 100);
    assert_eq!(states[home].cold_starts["solo"], 1);

    // Warm p50 through HAProxy against direct to the tenant's node,
    // interleaved.
    let (mut direct, mut via) = (Vec::new(), Vec::new());
    for _ in 0..50 {
        for (c, into) in [(&admins[home], &mut direct), (&through, &mut via)] {
            let t = Instant::now();
            let a = answer(&invoke(c, "solo").unwrap(), "solo");
            into.push(t.elapsed().as_secs_f64() * 1000.0);
            assert!(!a.cold);
        }
    }
    let (d, h) = (cluster::p50(&mut direct), cluster::p50(&mut via));
    println!(
        "warm invoke p50: direct to the node {d:.2} ms, through HAProxy {h:.2} ms ({:.2}x)",
        h / d
    );

    // Tenants spread: each one cold start on its node, then warm there.
    let tenants: Vec<String> = (0..SPREAD_TENANTS).map(|t| format!("t{t}")).collect();
    let mut envs: BTreeMap<String, (String, BTreeSet<u64>)> = BTreeMap::new();
    let spread = Instant::now();
    for round in 1..=2u64 {
        for t in &tenants {
            let a = answer(&invoke(&through, t).unwrap(), t);
            assert_eq!(a.cold, round == 1, "{t}, invoke {round}");
            assert_eq!(a.count, round, "{t}: a fresh environment counts from 1");
            let e = envs
                .entry(t.clone())
                .or_insert_with(|| (a.env.clone(), BTreeSet::new()));
            assert_eq!(e.0, a.env, "{t} changed environments");
            e.1.insert(a.count);
        }
    }
    println!(
        "{SPREAD_TENANTS} tenants, 2 invokes each, in {:.1?}",
        spread.elapsed()
    );
    let states: Vec<NodeState> = admins.iter().map(node_state).collect();
    let mut per_node = Vec::new();
    for (i, s) in states.iter().enumerate() {
        // Every environment was made for one tenant's first invoke, and no
        // tenant's first invoke on this node found one to reuse: as many
        // environments as tenants served here, one cold start each.
        assert_eq!(
            s.environments,
            s.cold_starts.len() as u64,
            "node {}: {} environments for tenants {:?}",
            i + 1,
            s.environments,
            s.cold_starts
        );
        for (t, n) in &s.cold_starts {
            assert_eq!(*n, 1, "node {}: {t} cold-started {n} times", i + 1);
        }
        assert_eq!(
            s.invocations.keys().collect::<Vec<_>>(),
            s.cold_starts.keys().collect::<Vec<_>>()
        );
        per_node.push(s.invocations.len());
    }
    let mut placement = Vec::new();
    for t in &tenants {
        let on: Vec<usize> = (0..NODES)
            .filter(|i| states[*i].invocations.contains_key(t))
            .collect();
        assert_eq!(on.len(), 1, "{t} on nodes {on:?}");
        placement.push(format!("{t}:n{}", on[0] + 1));
    }
    println!("tenants per node (solo included): {per_node:?}; {placement:?}");
    assert!(
        per_node.iter().all(|n| *n > 0),
        "not every node got a tenant: {per_node:?}"
    );

    postgres_restart_under_load(pg, &endpoints, &admins, &through, &tenants);
    kill_node::kill_one_under_load(nodes, pg.port(), &admins, &through, &states);
}

/// PostgreSQL stopped and started again while warm invokes of every tenant
/// go through HAProxy: none fails and none is a cold start (the nodes serve
/// from their cached state and stay routable, `/readyz` degraded); a change
/// made through node 1 as soon as PostgreSQL is back (before the other
/// nodes' listeners reconnected: their NOTIFY is lost) reaches every node
/// by the re-read that follows the reconnect.
fn postgres_restart_under_load(
    pg: &mut pg::PgServer,
    endpoints: &[String],
    admins: &[LambdaClient],
    through: &LambdaClient,
    tenants: &[String],
) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let stop = Arc::new(AtomicBool::new(false));
    let down = Arc::new(AtomicBool::new(false));
    let during = Arc::new(AtomicU64::new(0));
    let load = {
        let (stop, down, during) = (stop.clone(), down.clone(), during.clone());
        let through = through.clone();
        let mut tenants = tenants.to_vec();
        tenants.push("solo".into());
        std::thread::spawn(move || {
            let mut n = 0u64;
            // Latencies (ms) with PostgreSQL up and down.
            let (mut up_ms, mut down_ms) = (Vec::new(), Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let t = &tenants[n as usize % tenants.len()];
                let was_down = down.load(Ordering::Relaxed);
                let sent = Instant::now();
                let r = invoke(&through, t).expect("an invoke through HAProxy");
                let a = answer(&r, t);
                assert!(!a.cold, "{t}: a cold start while PostgreSQL restarted");
                let ms = sent.elapsed().as_secs_f64() * 1000.0;
                if was_down && down.load(Ordering::Relaxed) {
                    during.fetch_add(1, Ordering::Relaxed);
                    down_ms.push(ms);
                } else {
                    up_ms.push(ms);
                }
                n += 1;
            }
            (n, up_ms, down_ms)
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    pg.stop();
    down.store(true, Ordering::Relaxed);
    // Each node notices within a heartbeat (2 s); HAProxy would drop a
    // node whose check fails twice (0.3 s apart): the load goes on.
    let stopped = Instant::now();
    for e in endpoints {
        loop {
            let r = LambdaClient::new(e, None)
                .request("GET", "/readyz", &[], b"")
                .unwrap();
            if r.json()["degraded"] == true {
                assert_eq!(r.status, 200, "{}", r.text());
                break;
            }
            assert!(
                stopped.elapsed() < Duration::from_secs(30),
                "{e}: not degraded 30 s after PostgreSQL stopped"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // PostgreSQL stays down until a few invokes ran entirely meanwhile
    // (each takes tenths of a second in the test host; seconds when the
    // machine is loaded).
    let waited = Instant::now();
    while during.load(Ordering::Relaxed) < 3 {
        assert!(
            waited.elapsed() < Duration::from_secs(120) && !load.is_finished(),
            "the load stopped while PostgreSQL was down"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    pg.resume();
    down.store(false, Ordering::Relaxed);
    let back = Instant::now();
    loop {
        let r = admins[0]
            .request(
                "PUT",
                "/2017-10-31/functions/counter/concurrency",
                &[("content-type", "application/json")],
                br#"{"ReservedConcurrentExecutions": 50}"#,
            )
            .unwrap();
        if r.status == 200 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(30),
            "node 1 cannot write after the restart: {}",
            r.text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for (i, a) in admins.iter().enumerate() {
        while a
            .request("GET", "/2015-03-31/functions/counter", &[], b"")
            .map(|r| r.json()["Concurrency"]["ReservedConcurrentExecutions"] != 50)
            .unwrap_or(true)
        {
            assert!(
                back.elapsed() < Duration::from_secs(60),
                "the change made after the restart did not reach node {}",
                i + 1
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    println!(
        "PostgreSQL restarted: a change made at once reached every node {:?} after it was back",
        back.elapsed()
    );
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let (total, mut up_ms, mut down_ms) = load.join().expect("the load thread failed (see above)");
    let during = during.load(Ordering::Relaxed);
    println!("warm invokes under load: {total}, of which {during} while PostgreSQL was down; none failed");
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    if !down_ms.is_empty() && !up_ms.is_empty() {
        println!(
            "  latency (ms) PostgreSQL up: p50 {:.1} max {:.1}; down: p50 {:.1} max {:.1}",
            cluster::p50(&mut up_ms),
            max(&up_ms),
            cluster::p50(&mut down_ms),
            max(&down_ms)
        );
    }
    assert!(during > 0, "no invoke ran while PostgreSQL was down");
}

#[test]
fn three_nodes_with_vms_behind_haproxy_keep_tenants_apart() {
    // A stalled test host (QEMU TCG) fails the scenario's requests here
    // before the harness could retry inside (the test host runs one attempt,
    // `TestHost::run_once`); so the whole run is retried here, once, and
    // only for a stall.
    for attempt in 1..=2 {
        let mut pg = pg::PgServer::start();
        let started = Instant::now();
        let mut nodes = Nodes::start(pg.port());
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            scenario(&mut nodes, &mut pg)
        }));
        let out = nodes.stop();
        match (result, &out) {
            (Ok(()), _) => {
                println!("cluster run took {:.1?}", started.elapsed());
                return;
            }
            (Err(_), Err(TestHostError::Stalled { .. })) if attempt == 1 => {
                eprintln!(
                    "EMULATOR STALL during the scenario: running it again in a fresh test host"
                );
            }
            (Err(e), _) => {
                eprintln!("nodes' output:\n{}", describe(&out));
                std::panic::resume_unwind(e);
            }
        }
    }
}
