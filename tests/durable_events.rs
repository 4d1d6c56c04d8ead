//! The durable Event queue through a real `silo serve` on this host (no VM
//! needs to boot: what is checked is what the daemon keeps): Lambda's
//! EventInvokeConfig operations, events accepted before a `kill -9` that
//! run after the restart and end in silo's failed-event store, and the
//! health endpoints. Events that succeed in real guests across `kill -9`
//! are in `tests/durable_e2e.rs`.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::daemon::{config, create_counter, scratch, TestDaemon, TENANT_A};
use serde_json::{json, Value};
use silo_client::{InvokeOptions, LambdaClient};

const CONFIG_PATH: &str = "/2019-09-25/functions/counter/event-invoke-config";

fn call(c: &LambdaClient, method: &str, path: &str, body: Value) -> (u16, Value) {
    let body = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    let r = c.request(method, path, &[], &body).unwrap();
    let v = if r.body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&r.body).unwrap_or(Value::Null)
    };
    (r.status, v)
}

#[test]
fn event_invoke_config_operations_are_lambdas() {
    let data = scratch("durable-config");
    let d = TestDaemon::on_host(&config(""), &data, &[]);
    let admin = d.admin();
    create_counter(&admin);
    // None set: 404, as Lambda.
    let (s, v) = call(&admin, "GET", CONFIG_PATH, Value::Null);
    assert_eq!(s, 404, "{v}");
    let (s, _) = call(&admin, "DELETE", CONFIG_PATH, Value::Null);
    assert_eq!(s, 404);
    // Put: fields left out take their defaults.
    let (s, v) = call(
        &admin,
        "PUT",
        CONFIG_PATH,
        json!({"MaximumRetryAttempts": 0}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (
            &v["MaximumRetryAttempts"],
            &v["MaximumEventAgeInSeconds"],
            v["FunctionArn"]
                .as_str()
                .unwrap()
                .ends_with(":function:counter:$LATEST"),
            v["LastModified"].is_f64()
        ),
        (&json!(0), &json!(21600), true, true),
        "{v}"
    );
    // Update (POST) changes only what it names.
    let (s, v) = call(
        &admin,
        "POST",
        CONFIG_PATH,
        json!({"MaximumEventAgeInSeconds": 60}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (&v["MaximumRetryAttempts"], &v["MaximumEventAgeInSeconds"]),
        (&json!(0), &json!(60))
    );
    let (s, v) = call(&admin, "GET", CONFIG_PATH, Value::Null);
    assert_eq!(
        (s, &v["MaximumEventAgeInSeconds"]),
        (200, &json!(60)),
        "{v}"
    );
    // Out of Lambda's ranges: 400 InvalidParameterValueException.
    for bad in [
        json!({"MaximumRetryAttempts": 3}),
        json!({"MaximumRetryAttempts": -1}),
        json!({"MaximumEventAgeInSeconds": 59}),
        json!({"MaximumEventAgeInSeconds": 21601}),
        json!({"DestinationConfig": {"OnFailure": {"Destination": "arn:aws:sqs:us-east-1:0:q"}}}),
    ] {
        let r = admin
            .request("PUT", CONFIG_PATH, &[], bad.to_string().as_bytes())
            .unwrap();
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        assert_eq!(r.error_type(), Some("InvalidParameterValueException"));
    }
    // Settings survive a restart (they are the function's record).
    drop(d);
    let d = TestDaemon::on_host(&config(""), &data, &[]);
    let admin = d.admin();
    let (s, v) = call(&admin, "GET", CONFIG_PATH, Value::Null);
    assert_eq!(
        (s, &v["MaximumEventAgeInSeconds"]),
        (200, &json!(60)),
        "{v}"
    );
    // Tenant keys may not read or change them.
    let tenant = d.client(TENANT_A);
    assert_eq!(call(&tenant, "GET", CONFIG_PATH, Value::Null).0, 403);
    assert_eq!(
        call(&tenant, "GET", "/silo/failed-events", Value::Null).0,
        403
    );
    let (s, _) = call(&admin, "DELETE", CONFIG_PATH, Value::Null);
    assert_eq!(s, 204);
    assert_eq!(call(&admin, "GET", CONFIG_PATH, Value::Null).0, 404);
    // Alive, and the body of /readyz names its checks (whether this host
    // can jail VMs decides its status).
    let anon = LambdaClient::new(&d.endpoint, None);
    assert_eq!(
        anon.request("GET", "/healthz", &[], b"").unwrap().status,
        200
    );
    let r = anon.request("GET", "/readyz", &[], b"").unwrap();
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["checks"]["event_store"], true, "{v}");
    assert_eq!(v["checks"]["kernel"], true, "{v}");
    assert_eq!(r.status == 200, v["ready"] == true, "{v}");
    drop(d);
    let _ = std::fs::remove_dir_all(&data);
}

/// Issue 23: events answered 202 survive a `kill -9` of the daemon. Each
/// asks the function to fail, so (here, or on a host whose VMs boot) each
/// ends, after its retries, in the failed-event store with its payload,
/// tenant and attempts; one removed through the API is gone.
#[test]
fn events_accepted_before_kill_9_run_after_the_restart() {
    let data = scratch("durable-kill");
    let cfg = config("[limits]\nevent_workers = 2\n");
    let mut d = TestDaemon::on_host(&cfg, &data, &[]);
    let admin = d.admin();
    create_counter(&admin);
    let (s, _) = call(
        &admin,
        "PUT",
        CONFIG_PATH,
        json!({"MaximumRetryAttempts": 1}),
    );
    assert_eq!(s, 200);
    let mut accepted: BTreeMap<String, (String, String)> = BTreeMap::new();
    for i in 0..24 {
        let tenant = format!("tenant-{}", i % 4);
        let payload = json!({"action": "fail", "n": i}).to_string();
        let r = admin
            .invoke(
                "counter",
                payload.as_bytes(),
                &InvokeOptions {
                    tenant: Some(tenant.clone()),
                    invocation_type: Some("Event".into()),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(r.status, 202, "{}", r.text());
        let id = r.header("x-amzn-requestid").unwrap().to_string();
        accepted.insert(id, (tenant, payload));
    }
    d.kill_hard();
    let d = TestDaemon::on_host(&cfg, &data, &[]);
    let admin = d.admin();
    let until = Instant::now() + Duration::from_secs(120);
    let failed = loop {
        let (s, v) = call(
            &admin,
            "GET",
            "/silo/failed-events?FunctionName=counter",
            Value::Null,
        );
        assert_eq!(s, 200, "{v}");
        let list = v["FailedEvents"].as_array().unwrap().clone();
        if list.len() >= accepted.len() {
            break list;
        }
        assert!(
            Instant::now() < until,
            "{} of {} accepted events ended after the restart: {v}",
            list.len(),
            accepted.len()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let mut seen = BTreeMap::new();
    for f in &failed {
        let id = f["RequestId"].as_str().unwrap().to_string();
        let (tenant, payload) = accepted
            .get(&id)
            .unwrap_or_else(|| panic!("{id} was never accepted: {f}"));
        assert_eq!(f["TenantId"].as_str(), Some(tenant.as_str()), "{f}");
        assert_eq!(f["Payload"].as_str(), Some(payload.as_str()), "{f}");
        assert_eq!(f["FunctionName"], "counter");
        // One attempt and MaximumRetryAttempts (1) more; before the kill
        // some may have had their first.
        assert_eq!(f["Attempts"], 2, "{f}");
        assert!(!f["Error"].as_str().unwrap().is_empty(), "{f}");
        assert!(
            seen.insert(id, f["Id"].as_i64().unwrap()).is_none(),
            "twice: {f}"
        );
    }
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        accepted.keys().collect::<Vec<_>>()
    );
    // One removed is gone; removing it again is a 404.
    let first = *seen.values().next().unwrap();
    let path = format!("/silo/failed-events/{first}");
    assert_eq!(call(&admin, "DELETE", &path, Value::Null).0, 204);
    assert_eq!(call(&admin, "DELETE", &path, Value::Null).0, 404);
    let (_, v) = call(&admin, "GET", "/silo/failed-events", Value::Null);
    assert_eq!(
        v["FailedEvents"].as_array().unwrap().len(),
        accepted.len() - 1
    );
    drop(d);
    let _ = std::fs::remove_dir_all(&data);
}

/// `--log-format json`: every line the daemon logs is one JSON object, and
/// an invocation's lines carry its tenant (quoted, as in text logs).
#[test]
fn json_logs_are_one_object_per_line() {
    let data = scratch("durable-json");
    let mut d = TestDaemon::on_host(&config(""), &data, &["--log-format", "json"]);
    let admin = d.admin();
    create_counter(&admin);
    let r = admin
        .invoke(
            "counter",
            b"{}",
            &InvokeOptions {
                tenant: Some("a b=c".into()),
                invocation_type: Some("Event".into()),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(r.status, 202, "{}", r.text());
    let logs = d.stop();
    let mut queued = None;
    // (cargo's lines, when the daemon builds its VMM program first, are
    // not the daemon's log)
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        let cargo = ["Blocking", "Compiling", "Finished", "Updating", "Locking"]
            .iter()
            .any(|w| line.trim_start().starts_with(w));
        if cargo {
            continue;
        }
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}\n{logs}"));
        if v["fields"]["message"] == "event invocation queued" {
            queued = Some(v);
        }
    }
    let q = queued.unwrap_or_else(|| panic!("no 'event invocation queued' line:\n{logs}"));
    assert_eq!(q["span"]["tenant_id"], "\"a b=c\"", "{q}");
    let _ = std::fs::remove_dir_all(&data);
}
