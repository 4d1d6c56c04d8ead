//! `silo serve` end to end with real microVMs (in the KVM test host on these
//! machines): the demo flow through the HTTP API, invokes of several
//! tenants, a crashing function that takes only its own VM down, a
//! log tail, an Event invocation, throttling at the reserved concurrency,
//! a tenant-restricted key, metrics, new code, a timeout in a function
//! without tenant isolation, and DeleteFunction destroying VMs.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use base64::Engine;
use common::daemon::{config, create_counter, TestDaemon, TENANT_A};
use common::metric;
use serde_json::{json, Value};
use silo_client::{HttpResponse, InvokeOptions, LambdaClient};

fn tenant(t: &str) -> InvokeOptions {
    InvokeOptions {
        tenant: Some(t.into()),
        ..Default::default()
    }
}

/// Invokes and returns (count, cold, environment id).
fn count(c: &LambdaClient, t: &str, payload: Value) -> (u64, bool, String, HttpResponse) {
    let r = c
        .invoke("counter", payload.to_string().as_bytes(), &tenant(t))
        .unwrap();
    assert_eq!(r.status, 200, "{t}: {} {:?}", r.text(), r.headers);
    assert_eq!(r.header("x-amz-function-error"), None, "{t}: {}", r.text());
    let v = r.json();
    assert_eq!(v["tenant_id"], t, "the function saw its tenant");
    (
        v["count"].as_u64().unwrap(),
        r.header("x-silo-cold-start") == Some("true"),
        r.header("x-silo-environment-id").unwrap().to_string(),
        r,
    )
}

/// The value of `counter`'s metric `name` for `tenant`.
fn tenant_metric(text: &str, name: &str, tenant: &str) -> Option<f64> {
    metric(
        text,
        &format!(r#"{name}{{function="counter",tenant_id="{tenant}"}}"#),
    )
}

#[test]
fn tenants_get_their_own_microvms_through_the_http_api() {
    let d = TestDaemon::with_vms(&config("[limits]\nconcurrency = 6\nper_tenant = 2\n"));
    let logs = d.run_scenario(|d| scenario(d));
    // Every log line about an invocation carries its tenant.
    for l in logs.lines().filter(|l| l.contains("invocation answered")) {
        assert!(l.contains("tenant_id"), "{l}");
    }
    assert!(
        logs.contains("DAEMON_EXIT 0") || !logs.contains("DAEMON_EXIT"),
        "{logs}"
    );
}

fn scenario(d: &TestDaemon) {
    let admin = d.admin();
    let zip = create_counter(&admin);

    // The demo flow: A, A, B reads 1, 2, 1; A's second call is warm.
    let (a1, a1_cold, a_env, _) = count(&admin, "tenant-A", json!({}));
    let (a2, a2_cold, a_env2, _) = count(&admin, "tenant-A", json!({}));
    let (b1, b1_cold, b_env, _) = count(&admin, "tenant-B", json!({}));
    assert_eq!((a1, a2, b1), (1, 2, 1));
    assert_eq!((a1_cold, a2_cold, b1_cold), (true, false, true));
    assert_eq!(a_env, a_env2);
    assert_ne!(a_env, b_env);
    // Opaque per (function, tenant) (issue 19, finding 7): not the host-wide
    // number that counts every tenant's cold starts.
    for id in [&a_env, &b_env] {
        assert!(
            id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "X-Silo-Environment-Id {id:?} is not opaque"
        );
    }

    // Three more tenants, two invokes each: each gets its own environment.
    // (Invokes in flight at once, many tenants at a time, are in
    // `burst_e2e`, whose client runs beside the daemon: QEMU's port
    // forwarding, which this test goes through, resets connections when
    // several open at once while the test host's CPU is saturated.)
    let mut env_tenant: HashMap<String, &str> = HashMap::new();
    env_tenant.insert(a_env.clone(), "tenant-A");
    env_tenant.insert(b_env.clone(), "tenant-B");
    for t in ["tenant-C", "tenant-D", "tenant-E"] {
        for expected in 1..=2 {
            let (n, _, env, _) = count(&admin, t, json!({"action": "sleep", "ms": 300}));
            assert_eq!(n, expected, "{t}");
            let owner = env_tenant.entry(env.clone()).or_insert(t);
            assert_eq!(*owner, t, "environment {env} served two tenants");
        }
    }

    // A crash kills that tenant's VM only: tenant-A stays warm; tenant-C
    // gets a fresh VM whose counter starts again.
    let r = admin
        .invoke("counter", br#"{"action":"crash"}"#, &tenant("tenant-C"))
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-amz-function-error"), Some("Unhandled"));
    assert_eq!(r.json()["errorType"], "Runtime.ExitError", "{}", r.text());
    let (a3, a3_cold, a_env3, _) = count(&admin, "tenant-A", json!({}));
    assert_eq!((a3, a3_cold, a_env3.as_str()), (3, false, a_env.as_str()));
    let (_, _, c_env, _) = count(&admin, "tenant-C", json!({}));
    assert!(!env_tenant.contains_key(&c_env) || env_tenant[&c_env] == "tenant-C");

    // A function error is reported as such; the VM stays.
    let r = admin
        .invoke("counter", br#"{"action":"fail"}"#, &tenant("tenant-B"))
        .unwrap();
    assert_eq!(r.header("x-amz-function-error"), Some("Unhandled"));
    let (b2, b2_cold, _, _) = count(&admin, "tenant-B", json!({}));
    assert_eq!((b2, b2_cold), (2, false));

    // Log tail: START, the function's own line, END and REPORT.
    let log_tail = InvokeOptions {
        log_tail: true,
        ..tenant("tenant-B")
    };
    let r = admin.invoke("counter", b"{}", &log_tail).unwrap();
    let tail = base64::engine::general_purpose::STANDARD
        .decode(r.header("x-amz-log-result").expect("X-Amz-Log-Result"))
        .unwrap();
    let tail = String::from_utf8_lossy(&tail);
    for part in [
        "START RequestId:",
        "count 3",
        "END RequestId:",
        "REPORT RequestId:",
    ] {
        assert!(tail.contains(part), "{part:?} not in the log tail:\n{tail}");
    }

    // A key restricted to tenant-A invokes as tenant-A, warm.
    let (a4, a4_cold, _, _) = count(&d.client(TENANT_A), "tenant-A", json!({}));
    assert_eq!((a4, a4_cold), (4, false));

    // Event: accepted at once, run in tenant-F's own VM.
    let event = InvokeOptions {
        invocation_type: Some("Event".into()),
        ..tenant("tenant-F")
    };
    let r = admin.invoke("counter", b"{}", &event).unwrap();
    assert_eq!(r.status, 202, "{}", r.text());
    let until = Instant::now() + Duration::from_secs(180);
    let f_done = r#"silo_invocations_total{function="counter",tenant_id="tenant-F"} 1"#;
    let f_cold = r#"silo_cold_starts_total{function="counter",tenant_id="tenant-F"} 1"#;
    loop {
        let m = admin.request("GET", "/metrics", &[], b"").unwrap().text();
        let idle = tenant_metric(&m, "silo_idle_environments", "tenant-F");
        if m.contains(f_done) && m.contains(f_cold) && idle == Some(1.0) {
            break;
        }
        assert!(
            Instant::now() < until,
            "the Event invocation never ran:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let (f2, f2_cold, _, _) = count(&admin, "tenant-F", json!({}));
    assert_eq!((f2, f2_cold), (2, false));

    // Reserved concurrency 1: a second invoke while one runs is throttled.
    let r = admin
        .request(
            "PUT",
            "/2017-10-31/functions/counter/concurrency",
            &[],
            br#"{"ReservedConcurrentExecutions": 1}"#,
        )
        .unwrap();
    assert_eq!(r.status, 200);
    let c = admin.clone();
    let slow =
        std::thread::spawn(move || count(&c, "tenant-A", json!({"action": "sleep", "ms": 4000})));
    let until = Instant::now() + Duration::from_secs(60);
    let mut throttled = None;
    while Instant::now() < until && !slow.is_finished() {
        let m = admin.request("GET", "/metrics", &[], b"").unwrap().text();
        if metric(&m, r#"silo_in_flight{function="counter"}"#) == Some(1.0) {
            throttled = Some(admin.invoke("counter", b"{}", &tenant("tenant-B")).unwrap());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let throttled = throttled.expect("saw the slow invocation in flight");
    assert_eq!(throttled.status, 429, "{}", throttled.text());
    assert_eq!(throttled.error_type(), Some("TooManyRequestsException"));
    assert_eq!(slow.join().unwrap().0, 5);

    // Metrics: per-tenant invocations and cold starts, live environments.
    let m = admin.request("GET", "/metrics", &[], b"").unwrap().text();
    assert_eq!(
        tenant_metric(&m, "silo_cold_starts_total", "tenant-A"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        tenant_metric(&m, "silo_invocations_total", "tenant-A"),
        Some(5.0),
        "{m}"
    );
    assert!(
        tenant_metric(&m, "silo_invocation_errors_total", "tenant-C") >= Some(1.0),
        "{m}"
    );
    assert!(
        tenant_metric(&m, "silo_throttles_total", "tenant-B") >= Some(1.0),
        "{m}"
    );
    let live = metric(&m, r#"silo_environments{function="counter"}"#).unwrap();
    let tenants: HashSet<&str> = ["A", "B", "C", "D", "E", "F"].into_iter().collect();
    assert!(live >= tenants.len() as f64, "{m}");

    // UpdateFunctionCode: new code means new VMs; tenant-A's next invoke is
    // cold in a fresh VM, and its counter starts again.
    let counter = std::fs::read(silo_images::artifacts::counter_function().unwrap()).unwrap();
    let zip2 = silo_initramfs::package::make_zip(&[
        ("bootstrap", 0o755, &counter),
        ("VERSION", 0o644, b"2"),
    ]);
    let body = json!({ "ZipFile": base64::engine::general_purpose::STANDARD.encode(&zip2) });
    let r = admin
        .request(
            "PUT",
            "/2015-03-31/functions/counter/code",
            &[],
            body.to_string().as_bytes(),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let (n, cold, env, _) = count(&admin, "tenant-A", json!({}));
    assert_eq!((n, cold), (1, true));
    assert_ne!(env, a_env);

    // A function without tenant isolation, and a timeout: the runtime is
    // killed, reported as Sandbox.Timedout, and its VM replaced.
    let r = admin
        .create_function("short", &zip, false, json!({"Timeout": 1}))
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    let none = InvokeOptions::default();
    let r = admin.invoke("short", b"{}", &none).unwrap();
    assert_eq!(
        (r.status, r.json()["count"].as_u64()),
        (200, Some(1)),
        "{}",
        r.text()
    );
    let r = admin
        .invoke("short", br#"{"action":"sleep","ms":5000}"#, &none)
        .unwrap();
    assert_eq!(
        r.header("x-amz-function-error"),
        Some("Unhandled"),
        "{}",
        r.text()
    );
    assert_eq!(r.json()["errorType"], "Sandbox.Timedout", "{}", r.text());
    let r = admin.invoke("short", b"{}", &none).unwrap();
    assert_eq!(r.header("x-silo-cold-start"), Some("true"), "{}", r.text());
    assert_eq!(r.json()["count"], 1, "a fresh VM: {}", r.text());

    // DeleteFunction destroys every environment.
    let r = admin
        .request("DELETE", "/2015-03-31/functions/counter", &[], b"")
        .unwrap();
    assert_eq!(r.status, 204);
    let m = admin.request("GET", "/metrics", &[], b"").unwrap().text();
    assert_eq!(
        metric(&m, r#"silo_environments{function="counter"}"#),
        Some(0.0),
        "{m}"
    );
    let r = admin.invoke("counter", b"{}", &tenant("tenant-A")).unwrap();
    assert_eq!(r.status, 404);
}

/// The README's main command: `silo demo` prints the counters 1, 2, 1 with
/// each call's cold/warm status (moving into the test host where needed).
#[test]
fn demo_command_shows_tenant_isolation() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_silo"))
        .arg("demo")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| {
            l.trim_start_matches("[testhost] ")
                .split_whitespace()
                .collect()
        })
        .filter(|w: &Vec<&str>| {
            w.len() == 6 && w[0].parse::<u32>().is_ok() && w[1].starts_with("tenant-")
        })
        .collect();
    let summary: Vec<(&str, &str, &str)> = rows.iter().map(|w| (w[1], w[3], w[4])).collect();
    // The launch post's Python function, then the Rust custom runtime.
    let one_run = [
        ("tenant-A", "cold", "1"),
        ("tenant-A", "warm", "2"),
        ("tenant-B", "cold", "1"),
    ];
    assert_eq!(summary, [one_run, one_run].concat(), "{text}");
    assert!(
        text.contains("CreateFunction tenant-counter (python3.11"),
        "{text}"
    );
    // Four environments: one per tenant per function, none shared.
    let envs: std::collections::BTreeSet<&str> = rows.iter().map(|w| w[2]).collect();
    assert_eq!(envs.len(), 4, "{text}");
}
