//! The CloudWatch Logs subset over real HTTP, without VMs: a daemon
//! started on a data directory whose log store already holds tenant-A's,
//! tenant-B's and a tenant-less function's events (as an earlier run left
//! them). A tenant key reads only tenant-A's events whatever it asks: by
//! stream name, by crafted filter patterns, with a token pointing into
//! tenant-B's events; an admin key reads everything; a request signed for
//! the wrong service is refused. `tests/logs_e2e.rs` does the same with
//! real guests and boto3.

mod common;

use std::path::Path;

use common::daemon::{config, scratch, TestDaemon, TENANT_A};
use serde_json::{json, Value};
use silo_client::LambdaClient;
use silo_daemon::logs::store::{segment_path, tenant_key, Stored};

const STREAM_A: &str = "2026/12/07/[$LATEST]aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const STREAM_B: &str = "2026/12/07/[$LATEST]bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

/// Writes `n` events of `tenant` on `stream` into function `f`'s log.
fn seed(data: &Path, f: &str, tenant: Option<&str>, stream: &str, n: u64) {
    let dir = data.join("logs").join(f).join(tenant_key(tenant));
    std::fs::create_dir_all(&dir).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut text = Vec::new();
    for i in 0..n {
        let s = Stored {
            t: now - 60_000 + i,
            i: now - 60_000 + i,
            s: stream.into(),
            n: tenant.map(str::to_string),
            m: json!({"level": "INFO", "message": format!("line {i} of {}", tenant.unwrap_or("nobody")),
                      "tenantId": tenant.unwrap_or("nobody")})
            .to_string(),
        };
        serde_json::to_writer(&mut text, &s).unwrap();
        text.push(b'\n');
    }
    std::fs::write(segment_path(&dir, 1), text).unwrap();
}

fn call(c: &LambdaClient, op: &str, input: Value) -> (u16, Value) {
    let r = c.logs(op, &input).unwrap();
    (r.status, r.json())
}

fn messages(v: &Value) -> Vec<String> {
    v["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no events in {v}"))
        .iter()
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_tenant_key_reads_only_its_own_tenants_events_whatever_it_asks() {
    let data = scratch("logs-api");
    seed(&data, "printer", Some("tenant-A"), STREAM_A, 5);
    seed(&data, "printer", Some("tenant-B"), STREAM_B, 7);
    seed(&data, "plain", None, STREAM_B, 3);
    // Usage an earlier run saved, of today (UTC day number).
    let day = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 86_400;
    let row = |tenant: &str, n: u64| {
        json!({"function": "counter", "tenant": tenant, "day": day, "usage": {
            "environments": 1, "invocations": n, "gb_seconds": 0.25 * n as f64, "errors": 0, "throttles": 0}})
    };
    std::fs::write(
        data.join("logs").join("usage.json"),
        json!([row("tenant-A", 3), row("tenant-B", 4)]).to_string(),
    )
    .unwrap();
    let d = TestDaemon::on_host(&config(""), &data, &[]);
    let admin = d.admin();
    let tenant = d.client(TENANT_A);
    let group = json!("/aws/lambda/printer");

    let (s, all) = call(&admin, "FilterLogEvents", json!({"logGroupName": group}));
    assert_eq!(s, 200, "{all}");
    assert_eq!(messages(&all).len(), 12, "{all}");
    let (_, b) = call(
        &admin,
        "FilterLogEvents",
        json!({"logGroupName": group, "filterPattern": "{ $.tenantId = \"tenant-B\" }"}),
    );
    assert_eq!(messages(&b).len(), 7, "{b}");

    let only_a = |v: &Value| {
        let m = messages(v);
        assert!(
            m.iter().all(|m| m.contains("of tenant-A")),
            "another tenant's event: {m:?}"
        );
        m.len()
    };
    for input in [
        json!({"logGroupName": group}),
        json!({"logGroupName": group, "logStreamNames": [STREAM_B]}),
        json!({"logGroupName": group, "filterPattern": "{ $.tenantId = \"tenant-B\" }"}),
        json!({"logGroupName": group, "filterPattern": "{ $.tenantId != \"tenant-A\" }"}),
        json!({"logGroupName": group, "filterPattern": "{ $.tenantId = * }"}),
        json!({"logGroupName": group, "filterPattern": "{ $.tenantId = \"tenant-A\" || $.tenantId = \"tenant-B\" }"}),
        json!({"logGroupName": group, "filterPattern": "tenant-B"}),
        json!({"logGroupName": group, "filterPattern": "?tenant-A ?tenant-B"}),
        // A token pointing before tenant-B's first event.
        json!({"logGroupName": group, "nextToken": format!("0_{}_0_0", tenant_key(Some("tenant-B")))}),
        json!({"logGroupName": "/aws/lambda/plain"}),
    ] {
        let (s, v) = call(&tenant, "FilterLogEvents", input.clone());
        assert_eq!(s, 200, "{input}: {v}");
        assert!(only_a(&v) <= 5, "{input}");
    }
    let (_, v) = call(&tenant, "FilterLogEvents", json!({"logGroupName": group}));
    assert_eq!(only_a(&v), 5);
    for head in [true, false] {
        let (s, v) = call(
            &tenant,
            "GetLogEvents",
            json!({"logGroupName": group, "logStreamName": STREAM_B, "startFromHead": head}),
        );
        assert_eq!(s, 200, "{v}");
        assert!(messages(&v).is_empty(), "{v}");
    }
    let (_, v) = call(
        &tenant,
        "GetLogEvents",
        json!({"logGroupName": group, "logStreamName": STREAM_A, "startFromHead": true}),
    );
    assert_eq!(only_a(&v), 5);
    let (_, v) = call(
        &tenant,
        "DescribeLogStreams",
        json!({"logGroupName": group}),
    );
    let names: Vec<&str> = v["logStreams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["logStreamName"].as_str().unwrap())
        .collect();
    assert_eq!(names, [STREAM_A], "{v}");
    let (_, v) = call(&tenant, "DescribeLogGroups", json!({}));
    let groups: Vec<&str> = v["logGroups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["logGroupName"].as_str().unwrap())
        .collect();
    assert_eq!(groups, ["/aws/lambda/printer"], "{v}");
    let (s, v) = call(
        &tenant,
        "PutRetentionPolicy",
        json!({"logGroupName": group, "retentionInDays": 1}),
    );
    assert_eq!(s, 403, "{v}");
    // The JSON 1.1 error shape the SDKs' logs clients read.
    assert_eq!(v["__type"], "AccessDeniedException", "{v}");
    let (s, v) = call(
        &admin,
        "FilterLogEvents",
        json!({"logGroupName": "/aws/lambda/nothing"}),
    );
    assert_eq!(s, 404, "{v}");
    assert_eq!(v["__type"], "ResourceNotFoundException", "{v}");
    let (s, v) = call(
        &admin,
        "PutRetentionPolicy",
        json!({"logGroupName": group, "retentionInDays": 7}),
    );
    assert_eq!(s, 200, "{v}");

    // A logs operation signed for `lambda` is refused.
    let r = admin
        .request(
            "POST",
            "/",
            &[
                ("content-type", "application/x-amz-json-1.1"),
                ("x-amz-target", "Logs_20140328.FilterLogEvents"),
            ],
            json!({"logGroupName": group}).to_string().as_bytes(),
        )
        .unwrap();
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("'logs'"), "{}", r.text());

    // `silo logs` with the tenant key: tenant-A's lines, escaped.
    let out = common::cli::run_ok(common::cli::silo_signed(&d.endpoint, TENANT_A).args([
        "logs",
        "--function",
        "printer",
        "--tenant",
        "tenant-B",
    ]));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "", "tenant-B's lines");
    let out = common::cli::silo_signed(&d.endpoint, TENANT_A)
        .args(["logs", "--function", "printer"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 5, "{text}");
    assert!(
        text.lines()
            .all(|l| l.contains(STREAM_A) && l.contains("of tenant-A")),
        "{text}"
    );

    // `silo usage`: the admin sees both tenants, tenant-A's key its own.
    common::daemon::create_counter(&admin);
    let usage = |key: (&str, &str)| {
        let out = common::cli::run_ok(common::cli::silo_signed(&d.endpoint, key).args([
            "usage",
            "--function",
            "counter",
        ]));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let all = usage(common::daemon::ADMIN);
    assert!(
        all.contains("tenant-A") && all.contains("tenant-B"),
        "{all}"
    );
    let own = usage(TENANT_A);
    assert!(
        own.contains("tenant-A") && !own.contains("tenant-B"),
        "{own}"
    );
    assert!(
        own.lines().any(|l| l.split_whitespace().collect::<Vec<_>>()
            == ["counter", "tenant-A", "1", "3", "0.750", "0", "0"]),
        "{own}"
    );
    drop(d);
    let _ = std::fs::remove_dir_all(&data);
}
