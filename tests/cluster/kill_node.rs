//! The cluster e2e's last phase: one node killed (`kill -9`) under load,
//! in the same test-host boot.
//!
//! Sync invokes of three tenants go through HAProxy without pause (one
//! tenant of each node; each invoke sleeps a second so one is always in
//! flight), and Events of two more tenants
//! are accepted by that node just before it is killed (each sleeps 2 s, so
//! none can finish there first). Then:
//! - only the killed node's tenants see failures, each a retryable 5xx
//!   from HAProxy (502/503/504) or a connection error, and only until
//!   their first answer from another node; the other tenants never fail;
//! - each of the killed node's tenants is then served by one other node
//!   with one cold start (a fresh environment counting from 1), warm
//!   afterwards;
//! - every accepted Event runs (at least once) on another node once its
//!   lease lapsed: the function logs each request id it saw (`"record"`);
//! - the node restarts under the same id and rejoins: `/readyz` 200 and
//!   HAProxy routes one of its tenants back to it.
//!
//! One sync tenant per node: HAProxy's bounded load (`hash-balance-factor`
//! 150) gives each node `ceil(1.5 x (requests in flight + 1))` divided by
//! the nodes' count of slots (`chash_server_is_eligible`): with one or two
//! requests in flight that is one slot per node of three, so two tenants
//! of one node overlapping would spill one of them to another node (one
//! more cold start: seen with two tenants of the killed node). With one
//! tenant per node, no request ever finds its node's slots taken, before
//! the kill (the others are elsewhere) or after (2 of 5 slots each).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use silo_client::{InvokeOptions, LambdaClient};

use super::{common, NodeState, Nodes, NODES};

/// The nodes' Event lease (`[cluster] event_lease_s`): a killed node's
/// events run elsewhere this long after its last renewal (plus half of it,
/// the adoption period).
pub const EVENT_LEASE_S: u64 = 6;

/// The test host's node control: `/cgi-bin/node?kill=N` kills node N with
/// SIGKILL, `?start=N` starts it again; answers once done (the script's
/// control loop removes the request file).
pub const NODE_CGI: &[u8] = b"#!/bin/sh\n\
f=/tmp/$(echo \"$QUERY_STRING\" | tr -cd 'a-z0-9=' | sed 's/=/-n/')\n\
touch \"$f\"\n\
while [ -f \"$f\" ]; do sleep 0.1; done\n\
printf 'Content-Type: text/plain\\r\\n\\r\\ndone\\n'\n";

/// The test host script's loop until `/tmp/stop`: it carries out the
/// requests of [`NODE_CGI`] (`start N` is the script's function).
pub fn control_loop(nodes: usize) -> String {
    let list: Vec<String> = (1..=nodes).map(|n| n.to_string()).collect();
    format!(
        "i=0; while [ ! -f /tmp/stop ] && [ $i -lt 9000 ]; do\n\
         for n in {}; do\n\
         if [ -f /tmp/kill-n$n ]; then eval \"kill -9 \\$pid$n; wait \\$pid$n\"; echo \"NODE_KILLED n$n $?\"; rm -f /tmp/kill-n$n; fi\n\
         if [ -f /tmp/start-n$n ]; then start $n; echo \"NODE_STARTED n$n\"; rm -f /tmp/start-n$n; fi\n\
         done\n\
         sleep 0.1; i=$((i+1)); done\n",
        list.join(" ")
    )
}

impl Nodes {
    /// Kills node `i` (0-based) with SIGKILL.
    fn kill(&mut self, i: usize) {
        match self {
            Nodes::TestHost { control, .. } => {
                let c = LambdaClient::new(&format!("http://127.0.0.1:{control}"), None)
                    .with_timeout(Duration::from_secs(60));
                let r = c
                    .request("GET", &format!("/cgi-bin/node?kill={}", i + 1), &[], b"")
                    .expect("the node control CGI");
                assert!(r.text().contains("done"), "{}", r.text());
            }
            Nodes::Host(d) => d[i].kill_hard(),
        }
    }

    /// Starts node `i` (0-based) again, same id and data directory.
    fn start_again(&mut self, i: usize, pg_port: u16) {
        match self {
            Nodes::TestHost { control, .. } => {
                let c = LambdaClient::new(&format!("http://127.0.0.1:{control}"), None)
                    .with_timeout(Duration::from_secs(60));
                let r = c
                    .request("GET", &format!("/cgi-bin/node?start={}", i + 1), &[], b"")
                    .expect("the node control CGI");
                assert!(r.text().contains("done"), "{}", r.text());
            }
            Nodes::Host(d) => {
                let url = format!("postgres://silo@127.0.0.1:{pg_port}/postgres");
                let id = format!("n{}", i + 1);
                let data = d[i].data_dir.clone();
                d[i] = common::daemon::TestDaemon::on_host(
                    &crate::nodes::node_config(i + 1),
                    &data,
                    &["--registry", &url, "--node-id", &id],
                );
            }
        }
    }
}

/// One sync invoke's outcome, as a load thread saw it.
struct Outcome {
    at: Instant,
    /// HTTP status, or 0 for a connection error.
    status: u16,
    env: String,
    count: u64,
    cold: bool,
    detail: String,
}

fn sleep_invoke(c: &LambdaClient, tenant: &str) -> Outcome {
    let r = c.invoke(
        "counter",
        br#"{"action":"sleep","ms":1000}"#,
        &InvokeOptions {
            tenant: Some(tenant.into()),
            invocation_type: None,
            log_tail: false,
        },
    );
    let at = Instant::now();
    match r {
        Ok(r) if r.status == 200 && r.header("x-amz-function-error").is_none() => {
            let v = r.json();
            assert_eq!(v["tenant_id"], tenant, "{v}");
            Outcome {
                at,
                status: 200,
                env: r
                    .header("x-silo-environment-id")
                    .unwrap_or_default()
                    .to_string(),
                count: v["count"].as_u64().unwrap_or(0),
                cold: r.header("x-silo-cold-start") == Some("true"),
                detail: String::new(),
            }
        }
        Ok(r) => Outcome {
            at,
            status: r.status,
            env: String::new(),
            count: 0,
            cold: false,
            detail: r.text().chars().take(300).collect(),
        },
        Err(e) => Outcome {
            at,
            status: 0,
            env: String::new(),
            count: 0,
            cold: false,
            detail: e.to_string(),
        },
    }
}

/// Every `saw request <id> ...` line in node `admin`'s counter logs (empty
/// if the node does not answer).
fn seen_requests(admin: &LambdaClient) -> Vec<String> {
    let mut out = Vec::new();
    let mut token: Option<Value> = None;
    loop {
        let mut input = json!({"logGroupName": "/aws/lambda/counter"});
        if let Some(t) = &token {
            input["nextToken"] = t.clone();
        }
        let Ok(r) = admin.logs("FilterLogEvents", &input) else {
            return out;
        };
        if r.status != 200 {
            return out;
        }
        let v = r.json();
        for e in v["events"].as_array().into_iter().flatten() {
            if let Some(id) = e["message"]
                .as_str()
                .and_then(|m| m.split("saw request ").nth(1))
                .and_then(|rest| rest.split_whitespace().next())
            {
                out.push(id.to_string());
            }
        }
        match v.get("nextToken") {
            Some(t) if !t.is_null() && token.as_ref() != Some(t) => token = Some(t.clone()),
            _ => return out,
        }
    }
}

/// The phase (see the module's documentation). `states`: where each
/// tenant's environment is (every tenant is on one node).
pub fn kill_one_under_load(
    nodes: &mut Nodes,
    pg_port: u16,
    admins: &[LambdaClient],
    through: &LambdaClient,
    states: &[NodeState],
) {
    let phase = Instant::now();
    let home = |t: &str| (0..NODES).find(|i| states[*i].invocations.contains_key(t));
    // The victim: the node with the fewest tenants among those with two.
    let victim = (0..NODES)
        .filter(|i| !states[*i].invocations.is_empty())
        .min_by_key(|i| states[*i].invocations.len())
        .expect("a node with a tenant");
    let mut load: Vec<String> = states[victim].invocations.keys().take(1).cloned().collect();
    let moving: BTreeSet<String> = load.iter().cloned().collect();
    for i in (0..NODES).filter(|i| *i != victim) {
        load.push(
            states[i]
                .invocations
                .keys()
                .next()
                .expect("every node has a tenant")
                .clone(),
        );
    }
    println!(
        "killing node {} under load; sync tenants {load:?} (moving: {moving:?})",
        victim + 1
    );

    let stop = Arc::new(AtomicBool::new(false));
    let outcomes: Arc<Mutex<BTreeMap<String, Vec<Outcome>>>> = Arc::default();
    let threads: Vec<_> = load
        .iter()
        .map(|t| {
            let (stop, outcomes, through, t) =
                (stop.clone(), outcomes.clone(), through.clone(), t.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let o = sleep_invoke(&through, &t);
                    if o.status != 200 {
                        // As a client would: no busy loop on a failure.
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    outcomes
                        .lock()
                        .unwrap()
                        .entry(t.clone())
                        .or_default()
                        .push(o);
                }
            })
        })
        .collect();
    let count_ok = |t: &str, after: Option<Instant>| {
        outcomes.lock().unwrap().get(t).map_or(0, |v| {
            v.iter()
                .filter(|o| o.status == 200 && after.is_none_or(|a| o.at > a))
                .count()
        })
    };
    // Every tenant answered under load before the kill.
    let warm = Instant::now();
    while load.iter().any(|t| count_ok(t, None) == 0) {
        assert!(
            warm.elapsed() < Duration::from_secs(120),
            "the load did not get going"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Events accepted by the node about to die (its own tenants or not:
    // the Event queue is the cluster's).
    let mut accepted = BTreeMap::new();
    for e in 0..2 {
        let tenant = format!("ev{e}");
        let r = admins[victim]
            .invoke(
                "counter",
                br#"{"record":true,"action":"sleep","ms":2000}"#,
                &InvokeOptions {
                    tenant: Some(tenant.clone()),
                    invocation_type: Some("Event".into()),
                    log_tail: false,
                },
            )
            .expect("an Event invoke");
        assert_eq!(r.status, 202, "{}", r.text());
        let id = r
            .header("x-amzn-requestid")
            .expect("request id")
            .to_string();
        accepted.insert(id, tenant);
    }
    // Answers between these two instants may still come from the node
    // before it died.
    let kill_sent = Instant::now();
    nodes.kill(victim);
    let killed = Instant::now();
    println!(
        "node {} killed {:.1?} after the events were accepted",
        victim + 1,
        killed - kill_sent
    );

    // The moved tenants are served again, every event ran.
    let survivors: Vec<usize> = (0..NODES).filter(|i| *i != victim).collect();
    let mut served_again = None;
    let mut all_seen = None;
    let waited = Instant::now();
    while served_again.is_none() || all_seen.is_none() {
        assert!(
            waited.elapsed() < Duration::from_secs(240),
            "240 s after the kill: moved tenants served again {served_again:?}, events seen {all_seen:?}"
        );
        if served_again.is_none() && moving.iter().all(|t| count_ok(t, Some(killed)) >= 3) {
            served_again = Some(killed.elapsed());
        }
        if all_seen.is_none() {
            let seen: BTreeSet<String> = survivors
                .iter()
                .flat_map(|i| seen_requests(&admins[*i]))
                .collect();
            if accepted.keys().all(|id| seen.contains(id)) {
                all_seen = Some(killed.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("a load thread");
    }
    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());

    // Failures: the moved tenants only, retryable, and only until their
    // first answer from another node.
    let mut failed = 0;
    let mut last_failure = Duration::ZERO;
    for (t, v) in &outcomes {
        // The environment it had before the kill.
        let before = v
            .iter()
            .rfind(|o| o.status == 200 && o.at <= kill_sent)
            .map(|o| o.env.clone())
            .expect("answered before the kill");
        let elsewhere = |o: &Outcome| {
            o.status == 200 && o.at > kill_sent && (o.env != before || !moving.contains(t))
        };
        let first_after = v.iter().position(elsewhere);
        for (n, o) in v.iter().enumerate() {
            if o.status == 200 {
                continue;
            }
            assert!(
                moving.contains(t),
                "{t} (node {:?}, not killed) failed: {} {}",
                home(t).map(|i| i + 1),
                o.status,
                o.detail
            );
            assert!(
                matches!(o.status, 0 | 502 | 503 | 504),
                "{t}: not a retryable failure: {} {}",
                o.status,
                o.detail
            );
            assert!(o.at > kill_sent, "{t} failed before the kill: {}", o.detail);
            assert!(
                first_after.is_some_and(|f| n < f),
                "{t} failed after another node served it: {} {}",
                o.status,
                o.detail
            );
            failed += 1;
            last_failure = last_failure.max(o.at - kill_sent);
        }
        // Served elsewhere: one cold start in a fresh environment, warm
        // there afterwards.
        let after: Vec<&Outcome> = v.iter().filter(|o| elsewhere(o)).collect();
        if moving.contains(t) {
            assert!(
                !v.iter()
                    .any(|o| o.status == 200 && o.at > killed && o.env == before),
                "{t}: answered by the killed node's environment after the kill"
            );
            let first = after.first().expect("served after the kill");
            assert!(
                first.cold && first.count == 1,
                "{t}: first answer elsewhere was not a cold start in a fresh environment"
            );
            for (k, o) in after.iter().enumerate().skip(1) {
                assert!(!o.cold, "{t}: another cold start after moving");
                assert_eq!(o.env, first.env, "{t} moved again");
                assert_eq!(o.count, k as u64 + 1, "{t}: the environment's count");
            }
        } else {
            assert!(
                after.iter().all(|o| !o.cold),
                "{t}: a cold start but its node lives"
            );
        }
    }
    assert!(failed >= 1, "no invoke was in flight on the killed node");
    let served_again = served_again.unwrap();
    println!(
        "kill: {failed} sync invokes failed (all retryable 5xx of the killed node's tenants, the last {last_failure:.1?} after the kill); \
         its tenants served elsewhere (3 answers each) {served_again:.1?} after the kill; \
         {} accepted events all seen on the others {:.1?} after the kill",
        accepted.len(),
        all_seen.unwrap()
    );
    // A moved tenant lives on exactly one survivor.
    for t in &moving {
        let on: Vec<usize> = survivors
            .iter()
            .copied()
            .filter(|i| {
                super::node_state(&admins[*i])
                    .invocations
                    .contains_key(t.as_str())
            })
            .collect();
        assert_eq!(on.len(), 1, "{t} on nodes {on:?} after the kill");
    }

    // Restarted, it rejoins: ready, and HAProxy routes a tenant of its
    // back to it (one cold start there).
    let restarted = Instant::now();
    nodes.start_again(victim, pg_port);
    let direct =
        LambdaClient::new(&nodes.endpoints()[victim], None).with_timeout(Duration::from_secs(10));
    while !direct
        .request("GET", "/readyz", &[], b"")
        .is_ok_and(|r| r.status == 200)
    {
        assert!(
            restarted.elapsed() < Duration::from_secs(300),
            "the restarted node is not ready"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let ready = restarted.elapsed();
    let back = moving.iter().next().unwrap();
    loop {
        let o = sleep_invoke(through, back);
        assert_eq!(o.status, 200, "{back}: {}", o.detail);
        if super::node_state(&admins[victim])
            .invocations
            .contains_key(back.as_str())
        {
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(300),
            "HAProxy does not route {back} to the restarted node"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // Every accepted event, wherever it ran: at least once.
    let seen: Vec<String> = admins.iter().flat_map(seen_requests).collect();
    let runs: Vec<usize> = accepted
        .keys()
        .map(|id| seen.iter().filter(|s| *s == id).count())
        .collect();
    assert!(runs.iter().all(|n| *n >= 1), "{accepted:?}: runs {runs:?}");
    println!(
        "restarted node ready {ready:.1?} after its start, routed to again {:.1?}; event runs {runs:?}; kill phase took {:.1?}",
        restarted.elapsed(),
        phase.elapsed()
    );
}
