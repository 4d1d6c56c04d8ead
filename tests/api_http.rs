//! The daemon's API through real HTTP: every error Lambda's API gives for bad
//! input, authentication and tenant restrictions, persistence across a
//! restart (and a hard kill), and the daemon serving on after each bad
//! request. None of these requests needs a VM, so the daemon runs here.

mod common;

use common::daemon::{config, free_port, scratch, TestDaemon, ADMIN, TENANT_A};
use serde_json::{json, Value};
use silo_client::{HttpResponse, InvokeOptions, LambdaClient};
use std::time::{Duration, Instant};

fn package() -> Vec<u8> {
    silo_initramfs::package::make_zip(&[("bootstrap", 0o755, b"#!/bin/sh\nexit 0\n")])
}

fn expect_error(r: &HttpResponse, status: u16, kind: &str, message_part: &str) {
    assert_eq!(r.status, status, "{} {:?}", r.text(), r.headers);
    assert_eq!(r.error_type(), Some(kind), "{}", r.text());
    let msg = r.json()["message"].as_str().unwrap_or("").to_string();
    assert!(
        msg.contains(message_part),
        "message {msg:?} lacks {message_part:?}"
    );
}

fn tenant(t: &str) -> InvokeOptions {
    InvokeOptions {
        tenant: Some(t.into()),
        ..Default::default()
    }
}

fn create(c: &LambdaClient, name: &str, per_tenant: bool) -> HttpResponse {
    c.create_function(name, &package(), per_tenant, json!({}))
        .unwrap()
}

#[test]
fn every_bad_request_gets_its_own_lambda_error_and_the_daemon_serves_on() {
    let data = scratch("api-data");
    let mut d = TestDaemon::on_host(&config(""), &data, &[]);
    let admin = d.admin();

    // CreateFunction: success and the fields SDKs read.
    let r = create(&admin, "iso", true);
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    assert_eq!(
        v["FunctionArn"],
        "arn:aws:lambda:us-east-1:000000000000:function:iso"
    );
    assert_eq!(v["State"], "Active");
    assert_eq!(v["TenancyConfig"]["TenantIsolationMode"], "PER_TENANT");
    assert_eq!(create(&admin, "plain", false).status, 201);

    // CreateFunction errors.
    expect_error(
        &create(&admin, "iso", true),
        409,
        "ResourceConflictException",
        "already exist",
    );
    let raw = |body: &[u8]| {
        admin
            .request(
                "POST",
                "/2015-03-31/functions",
                &[("content-type", "application/json")],
                body,
            )
            .unwrap()
    };
    expect_error(
        &raw(b"{not json"),
        400,
        "InvalidRequestContentException",
        "Could not parse request body into json",
    );
    let bad_zip = json!({"FunctionName": "z", "Runtime": "provided.al2023", "Role": "r",
        "Code": {"ZipFile": "bm90IGEgemlw"}});
    expect_error(
        &raw(bad_zip.to_string().as_bytes()),
        400,
        "InvalidParameterValueException",
        "Could not unzip uploaded file",
    );
    let r = admin
        .create_function(
            "nobootstrap",
            &silo_initramfs::package::make_zip(&[("main", 0o755, b"x")]),
            true,
            json!({}),
        )
        .unwrap();
    expect_error(&r, 400, "InvalidParameterValueException", "bootstrap");
    let r = admin
        .create_function("py", &package(), true, json!({"Runtime": "python3.12"}))
        .unwrap();
    expect_error(&r, 400, "InvalidParameterValueException", "python3.12");
    let r = admin
        .create_function(
            "js",
            &package(),
            true,
            json!({"Runtime": "nodejs22.x", "Handler": null}),
        )
        .unwrap();
    expect_error(&r, 400, "InvalidParameterValueException", "index.handler");
    let r = admin
        .create_function(
            "mode",
            &package(),
            false,
            json!({"TenancyConfig": {"TenantIsolationMode": "SHARED"}}),
        )
        .unwrap();
    expect_error(&r, 400, "InvalidParameterValueException", "PER_TENANT");
    let r = admin
        .create_function("bad name!", &package(), true, json!({}))
        .unwrap();
    expect_error(&r, 400, "InvalidParameterValueException", "functionName");
    let r = admin
        .create_function("mem", &package(), true, json!({"MemorySize": 64}))
        .unwrap();
    expect_error(&r, 400, "InvalidParameterValueException", "MemorySize");

    // Invoke errors.
    let inv = |name: &str, body: &[u8], o: &InvokeOptions| admin.invoke(name, body, o).unwrap();
    let none = InvokeOptions::default();
    expect_error(
        &inv("iso", b"{}", &none),
        400,
        "InvalidParameterValueException",
        "Add a valid tenant ID in your request and try again.",
    );
    expect_error(
        &inv("plain", b"{}", &tenant("tenant-A")),
        400,
        "InvalidParameterValueException",
        "does not use tenant isolation",
    );
    expect_error(
        &inv("iso", b"{}", &tenant("")),
        400,
        "InvalidParameterValueException",
        "empty",
    );
    expect_error(
        &inv("iso", b"{}", &tenant(&"t".repeat(257))),
        400,
        "InvalidParameterValueException",
        "256",
    );
    expect_error(
        &inv("iso", b"{}", &tenant("tenant|A")),
        400,
        "InvalidParameterValueException",
        "'|'",
    );
    expect_error(
        &inv("missing", b"{}", &tenant("tenant-A")),
        404,
        "ResourceNotFoundException",
        "Function not found",
    );
    expect_error(
        &inv("iso", b"{\"a\":", &tenant("tenant-A")),
        400,
        "InvalidRequestContentException",
        "json",
    );
    let big = vec![b' '; 6 * 1024 * 1024 + 10];
    expect_error(
        &inv("iso", &big, &tenant("tenant-A")),
        413,
        "RequestTooLargeException",
        "6291456",
    );
    let bad_type = InvokeOptions {
        invocation_type: Some("Later".into()),
        ..tenant("tenant-A")
    };
    expect_error(
        &inv("iso", b"{}", &bad_type),
        400,
        "InvalidParameterValueException",
        "Later",
    );
    let r = admin
        .request(
            "POST",
            "/2015-03-31/functions/iso/invocations?Qualifier=7",
            &[("x-amz-tenant-id", "t")],
            b"{}",
        )
        .unwrap();
    expect_error(&r, 404, "ResourceNotFoundException", "$LATEST");
    let dry = InvokeOptions {
        invocation_type: Some("DryRun".into()),
        ..tenant("tenant-A")
    };
    assert_eq!(inv("iso", b"{}", &dry).status, 204);

    // Throttling: reserved concurrency 0 refuses every invoke, as Lambda.
    let r = admin
        .request(
            "PUT",
            "/2017-10-31/functions/iso/concurrency",
            &[],
            br#"{"ReservedConcurrentExecutions": 0}"#,
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let r = inv("iso", b"{}", &tenant("tenant-A"));
    expect_error(&r, 429, "TooManyRequestsException", "Rate Exceeded");
    assert_eq!(
        r.json()["Reason"],
        "ReservedFunctionConcurrentInvocationLimitExceeded"
    );
    let r = admin
        .request("DELETE", "/2017-10-31/functions/iso/concurrency", &[], b"")
        .unwrap();
    assert_eq!(r.status, 204);

    // Tenancy is immutable.
    let r = admin
        .request(
            "PUT",
            "/2015-03-31/functions/iso/configuration",
            &[],
            br#"{"TenancyConfig": {"TenantIsolationMode": "PER_TENANT"}}"#,
        )
        .unwrap();
    expect_error(
        &r,
        400,
        "InvalidParameterValueException",
        "TenancyConfig cannot be changed",
    );

    // Authentication and tenant restrictions.
    let anon = LambdaClient::new(&d.endpoint, None);
    expect_error(
        &anon
            .request("GET", "/2015-03-31/functions", &[], b"")
            .unwrap(),
        403,
        "MissingAuthenticationTokenException",
        "Missing Authentication Token",
    );
    let forged = d.client((ADMIN.0, "not-the-secret"));
    expect_error(
        &forged
            .request("GET", "/2015-03-31/functions", &[], b"")
            .unwrap(),
        403,
        "InvalidSignatureException",
        "signature",
    );
    let stranger = d.client(("AKIDUNKNOWN", "x"));
    expect_error(
        &stranger
            .request("GET", "/2015-03-31/functions", &[], b"")
            .unwrap(),
        403,
        "UnrecognizedClientException",
        "security token",
    );
    let a = d.client(TENANT_A);
    expect_error(
        &a.invoke("iso", b"{}", &tenant("tenant-B")).unwrap(),
        403,
        "AccessDeniedException",
        "tenant-B",
    );
    expect_error(
        &create(&a, "mine", true),
        403,
        "AccessDeniedException",
        "CreateFunction",
    );
    let dry_a = InvokeOptions {
        invocation_type: Some("DryRun".into()),
        ..tenant("tenant-A")
    };
    assert_eq!(a.invoke("iso", b"{}", &dry_a).unwrap().status, 204);
    assert_eq!(
        a.request("GET", "/2015-03-31/functions/iso", &[], b"")
            .unwrap()
            .status,
        200
    );
    expect_error(
        &admin
            .request("GET", "/2015-03-31/nothing", &[], b"")
            .unwrap(),
        404,
        "UnknownOperationException",
        "/2015-03-31/nothing",
    );

    // Still serving; then a restart (graceful) and a hard kill lose nothing.
    let sha = admin
        .request("GET", "/2015-03-31/functions/iso", &[], b"")
        .unwrap()
        .json()["Configuration"]["CodeSha256"]
        .clone();
    let logs = d.stop();
    assert!(logs.contains("function created"), "{logs}");
    let mut d = TestDaemon::on_host(&config(""), &data, &[]);
    let r = d
        .admin()
        .request("GET", "/2015-03-31/functions/iso", &[], b"")
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["Configuration"]["CodeSha256"], sha);
    assert_eq!(
        r.json()["Configuration"]["TenancyConfig"]["TenantIsolationMode"],
        "PER_TENANT"
    );
    assert_eq!(create(&d.admin(), "after-restart", true).status, 201);
    d.kill_hard();
    // A record torn by hand is reported and skipped; the rest still load.
    std::fs::write(data.join("functions/torn.json"), b"{\"name\": \"torn\"").unwrap();
    let mut d = TestDaemon::on_host(&config(""), &data, &[]);
    let names: Vec<String> = d
        .admin()
        .request("GET", "/2015-03-31/functions/", &[], b"")
        .unwrap()
        .json()["Functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f: &Value| f["FunctionName"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["after-restart", "iso", "plain"]);
    let r = d
        .admin()
        .request("DELETE", "/2015-03-31/functions/plain", &[], b"")
        .unwrap();
    assert_eq!(r.status, 204);
    expect_error(
        &d.admin()
            .request("GET", "/2015-03-31/functions/plain", &[], b"")
            .unwrap(),
        404,
        "ResourceNotFoundException",
        "plain",
    );
    let logs = d.stop();
    assert!(
        logs.contains("torn.json"),
        "the torn record is reported:\n{logs}"
    );
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn bad_configuration_is_refused_with_the_field_named() {
    let dir = scratch("badcfg");
    let check = |toml: &str, args: &[&str], expect: &str| {
        std::fs::write(dir.join("c.toml"), toml).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_silo"))
            .arg("serve")
            .arg("--config")
            .arg(dir.join("c.toml"))
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains(expect), "{err:?} lacks {expect:?}");
    };
    check("listen = 9000\n", &[], "listen");
    check("[limits]\nconcurency = 3\n", &[], "concurency");
    check("", &[], "no credentials are configured");
    check(
        "[limits]\nper_tenant = 0\n",
        &["--allow-unauthenticated"],
        "per_tenant",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 11, item 1: a captured signed request cannot be replayed with
/// another body, and a date that is not ASCII is a 403, not a dead
/// connection.
#[test]
fn signatures_bind_the_body_and_bad_dates_are_refused() {
    let data = scratch("api-sig");
    let d = TestDaemon::on_host(&config(""), &data, &[]);
    let admin = d.admin();
    assert_eq!(create(&admin, "iso", true).status, 201);
    let anon = LambdaClient::new(&d.endpoint, None);
    let path = "/2015-03-31/functions/iso/invocations";
    let body = br#"{"amount": 1}"#;
    let hash = silo_aws::sigv4::payload_sha256(body);
    let given = [
        ("x-amz-tenant-id", "tenant-A"),
        ("x-amz-invocation-type", "DryRun"),
        ("x-amz-content-sha256", hash.as_str()),
    ];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let sig = admin.signature_headers("POST", path, &given, body, now);
    let mut captured: Vec<(&str, &str)> = given.to_vec();
    captured.extend(sig.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    assert_eq!(
        anon.request("POST", path, &captured, body).unwrap().status,
        204
    );
    let replayed = anon
        .request("POST", path, &captured, br#"{"amount": 1000000}"#)
        .unwrap();
    expect_error(
        &replayed,
        403,
        "InvalidSignatureException",
        "x-amz-content-sha256",
    );

    use std::io::{Read, Write};
    let addr = d.endpoint.trim_start_matches("http://").to_string();
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut raw = format!("GET /2015-03-31/functions HTTP/1.1\r\nHost: {addr}\r\n").into_bytes();
    // 16 bytes, the 9th not ASCII.
    raw.extend_from_slice(b"X-Amz-Date: 2026112\xff12300Z\r\n");
    raw.extend_from_slice(
        format!(
            "Authorization: AWS4-HMAC-SHA256 Credential={}/20261124/us-east-1/lambda/aws4_request, \
             SignedHeaders=host;x-amz-date, Signature={}\r\nConnection: close\r\n\r\n",
            ADMIN.0,
            "0".repeat(64)
        )
        .as_bytes(),
    );
    s.write_all(&raw).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer:?}");
    assert!(answer.contains("InvalidSignatureException"), "{answer}");
    assert!(answer.contains("X-Amz-Date"), "{answer}");
    // Still serving.
    assert_eq!(
        admin
            .request("GET", "/2015-03-31/functions/iso", &[], b"")
            .unwrap()
            .status,
        200
    );
    let _ = std::fs::remove_dir_all(&data);
}

/// Issue 11, item 4: with keys configured, `--allow-unauthenticated` does
/// not let unsigned callers or unknown keys in.
#[test]
fn allow_unauthenticated_has_no_effect_once_keys_are_configured() {
    let data = scratch("api-anon");
    let d = TestDaemon::on_host(&config(""), &data, &["--allow-unauthenticated"]);
    let anon = LambdaClient::new(&d.endpoint, None);
    expect_error(
        &anon
            .request("GET", "/2015-03-31/functions", &[], b"")
            .unwrap(),
        403,
        "MissingAuthenticationTokenException",
        "--allow-unauthenticated has no effect",
    );
    expect_error(
        &create(&anon, "mine", false),
        403,
        "MissingAuthenticationTokenException",
        "Missing Authentication Token",
    );
    let stranger = d.client(("AKIDUNKNOWN", "x"));
    expect_error(
        &stranger
            .request("GET", "/2015-03-31/functions", &[], b"")
            .unwrap(),
        403,
        "UnrecognizedClientException",
        "security token",
    );
    assert_eq!(
        d.admin()
            .request("GET", "/2015-03-31/functions", &[], b"")
            .unwrap()
            .status,
        200
    );
    let _ = std::fs::remove_dir_all(&data);
}

/// Issue 11, item 3: tenant keys read configurations without environment
/// variables; `/metrics` on the API port is for signed admin keys only, and
/// unauthenticated on `metrics_listen` when the operator sets one.
#[test]
fn tenant_keys_read_without_secrets_and_metrics_need_an_admin() {
    let data = scratch("api-read");
    let metrics_port = free_port();
    let cfg = format!(
        "metrics_listen = \"127.0.0.1:{metrics_port}\"\n{}",
        config("")
    );
    let d = TestDaemon::on_host(&cfg, &data, &[]);
    let admin = d.admin();
    let secret_env = json!({"Environment": {"Variables": {"DB_PASSWORD": "hunter2"}}});
    let r = admin
        .create_function("iso", &package(), true, secret_env.clone())
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(
        r.json()["Environment"]["Variables"]["DB_PASSWORD"],
        "hunter2"
    );
    let a = d.client(TENANT_A);
    let reads = [
        "/2015-03-31/functions/iso",
        "/2015-03-31/functions/iso/configuration",
        "/2015-03-31/functions/",
        "/2015-03-31/functions?MaxItems=5",
    ];
    for path in reads {
        let r = a.request("GET", path, &[], b"").unwrap();
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert!(!r.text().contains("hunter2"), "{path}: {}", r.text());
        assert!(!r.text().contains("DB_PASSWORD"), "{path}: {}", r.text());
        let r = admin.request("GET", path, &[], b"").unwrap();
        assert!(r.text().contains("hunter2"), "admin {path}: {}", r.text());
    }
    let conf = a
        .request("GET", "/2015-03-31/functions/iso", &[], b"")
        .unwrap()
        .json();
    assert_eq!(conf["Configuration"]["FunctionName"], "iso");
    assert!(conf["Configuration"]["Environment"]
        .get("Variables")
        .is_none());

    // Invoke as its own tenants only.
    let dry = |t: &str| InvokeOptions {
        invocation_type: Some("DryRun".into()),
        ..tenant(t)
    };
    assert_eq!(
        a.invoke("iso", b"{}", &dry("tenant-A")).unwrap().status,
        204
    );
    expect_error(
        &a.invoke("iso", b"{}", &dry("tenant-B")).unwrap(),
        403,
        "AccessDeniedException",
        "tenant-B",
    );

    // /metrics on the API port: signed admin keys only.
    let anon = LambdaClient::new(&d.endpoint, None);
    expect_error(
        &anon.request("GET", "/metrics", &[], b"").unwrap(),
        403,
        "MissingAuthenticationTokenException",
        "Missing Authentication Token",
    );
    expect_error(
        &a.request("GET", "/metrics", &[], b"").unwrap(),
        403,
        "AccessDeniedException",
        "metrics",
    );
    let m = admin.request("GET", "/metrics", &[], b"").unwrap();
    assert_eq!(m.status, 200, "{}", m.text());
    assert!(m.text().contains("silo_invocations_total"), "{}", m.text());
    // On metrics_listen: unauthenticated, /metrics and nothing else.
    let metrics = LambdaClient::new(&format!("http://127.0.0.1:{metrics_port}"), None);
    let m = metrics.request("GET", "/metrics", &[], b"").unwrap();
    assert_eq!(m.status, 200, "{}", m.text());
    assert!(
        m.text().contains("silo_cold_start_max_booting"),
        "{}",
        m.text()
    );
    assert_eq!(
        metrics
            .request("GET", "/2015-03-31/functions", &[], b"")
            .unwrap()
            .status,
        404
    );
    let _ = std::fs::remove_dir_all(&data);
}

/// Issue 11, item 5: tenant ids follow Lambda's rule (spaces allowed), and
/// an id like `../x` is only ever a value: a metrics label, a quoted log
/// field, never a path.
#[test]
fn tenant_ids_follow_lambdas_rule_and_never_reach_paths() {
    let data = scratch("api-tenant");
    let mut d = TestDaemon::on_host(&config(""), &data, &[]);
    let admin = d.admin();
    assert_eq!(create(&admin, "iso", true).status, 201);
    let dry = |t: &str| InvokeOptions {
        invocation_type: Some("DryRun".into()),
        ..tenant(t)
    };
    for t in ["tenant A", "../x", "org/42:user=7+x@y.z_w"] {
        let r = admin.invoke("iso", b"{}", &dry(t)).unwrap();
        assert_eq!(r.status, 204, "{t:?}: {}", r.text());
    }
    // Through the scheduler (refused there: reserved concurrency 0, so no
    // VM is needed) and into the metrics and the logs.
    let r = admin
        .request(
            "PUT",
            "/2017-10-31/functions/iso/concurrency",
            &[],
            br#"{"ReservedConcurrentExecutions": 0}"#,
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    for t in ["../x", "tenant A"] {
        let r = admin.invoke("iso", b"{}", &tenant(t)).unwrap();
        expect_error(&r, 429, "TooManyRequestsException", "Rate Exceeded");
    }
    let m = admin.request("GET", "/metrics", &[], b"").unwrap().text();
    for line in [
        r#"silo_throttles_total{function="iso",tenant_id="../x"} 1"#,
        r#"silo_throttles_total{function="iso",tenant_id="tenant A"} 1"#,
    ] {
        assert!(m.lines().any(|l| l == line), "{line} in\n{m}");
    }
    // Nothing in the data directory is named after a tenant.
    fn walk(dir: &std::path::Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            out.push(e.file_name().to_string_lossy().into_owned());
            if e.file_type().unwrap().is_dir() {
                walk(&e.path(), out);
            }
        }
    }
    let mut names = Vec::new();
    walk(&data, &mut names);
    for n in &names {
        assert!(n != "x" && !n.contains("tenant"), "{n} in {names:?}");
    }
    let logs = d.stop();
    for field in [r#"tenant_id="../x""#, r#"tenant_id="tenant A""#] {
        assert!(
            logs.lines()
                .any(|l| l.contains(field) && l.contains("invocation refused")),
            "no refusal logged with {field}:\n{logs}"
        );
    }
    let _ = std::fs::remove_dir_all(&data);
}

/// An answer read off a raw TCP connection.
#[derive(Debug)]
struct RawAnswer {
    status: u16,
    error_type: Option<String>,
    /// How long after the request's head was sent it came.
    after: std::time::Duration,
}

/// Sends `head` (and `body`, ignoring a connection closed while sending
/// it) on a new connection and reads the answer's head, waiting at most
/// `wait` for it.
fn raw_request(addr: &str, head: &str, body: &[u8], wait: Duration) -> Result<RawAnswer, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(wait)).unwrap();
    s.set_write_timeout(Some(wait)).unwrap();
    let sent = Instant::now();
    s.write_all(head.as_bytes()).map_err(|e| e.to_string())?;
    let _ = s.write_all(body);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) => {
                return Err(format!(
                    "closed without an answer after {:?}",
                    sent.elapsed()
                ))
            }
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("{e} after {:?}", sent.elapsed())),
        }
    }
    let text = String::from_utf8_lossy(&got).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {text:?}"))?;
    let error_type = text.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case("x-amzn-errortype")
            .then(|| v.trim().to_string())
    });
    Ok(RawAnswer {
        status,
        error_type,
        after: sent.elapsed(),
    })
}

/// How long until the daemon closes a connection on which `drip` sends one
/// byte per second (nothing if empty); `None` if still open after `give_up`.
fn closed_after(addr: &str, drip: &[u8], give_up: Duration) -> Option<Duration> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let start = Instant::now();
    let mut i = 0;
    let mut buf = [0u8; 1024];
    while start.elapsed() < give_up {
        if !drip.is_empty() {
            if s.write_all(&drip[i % drip.len()..][..1]).is_err() {
                return Some(start.elapsed());
            }
            i += 1;
        }
        match s.read(&mut buf) {
            // Closed, or an answer (e.g. 408) before closing: either way the
            // daemon gave up on this connection.
            Ok(_) => return Some(start.elapsed()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

/// Issue 11, item 2 (limits before authentication): oversized requests are
/// refused from their headers alone, unsigned ones before their body is
/// read, slow and idle connections are closed, oversized headers refused,
/// and signed clients are served all along with the daemon's memory flat.
#[test]
fn hostile_clients_are_refused_before_their_bodies_and_signed_clients_are_served() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let data = scratch("hostile-data");
    let d = TestDaemon::on_host(&config(""), &data, &[]);
    let admin = d.admin();
    assert_eq!(create(&admin, "victim", true).status, 201);
    let addr = d.endpoint.trim_start_matches("http://").to_string();
    let baseline = d.rss_kib().expect("the daemon's VmRSS");
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(baseline));

    // The daemon's memory, sampled while the attack runs.
    let pid = d.pid().unwrap();
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let status =
                    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                if let Some(kib) = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    // A signed client that must keep being served.
    let signed = {
        let (stop, admin) = (stop.clone(), d.admin());
        std::thread::spawn(move || {
            let mut answers = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = admin.request("GET", "/2015-03-31/functions/victim", &[], b"");
                answers.push((r.map(|r| r.status).map_err(|e| e.to_string()), t.elapsed()));
                std::thread::sleep(Duration::from_millis(50));
            }
            answers
        })
    };
    // Slow-loris: headers one byte a second, never finished; and a
    // connection that sends nothing at all.
    let loris: Vec<_> = [
        b"GET /2015-03-31/functions HTTP/1.1\r\nHost: silo\r\nX-Slow: ".to_vec(),
        Vec::new(),
    ]
    .into_iter()
    .map(|drip| {
        let addr = addr.clone();
        std::thread::spawn(move || closed_after(&addr, &drip, Duration::from_secs(25)))
    })
    .collect();

    // 200 unsigned requests at once, each announcing 70 MB to an operation
    // that takes far less: all refused at once.
    let routes = [
        "GET /2015-03-31/functions",
        "GET /2015-03-31/functions/victim",
        "DELETE /2015-03-31/functions/victim",
        "POST /2015-03-31/functions/victim/invocations",
        "PUT /2015-03-31/functions/victim/configuration",
    ];
    let big: Vec<_> = (0..200)
        .map(|i| {
            let (addr, route) = (addr.clone(), routes[i % routes.len()]);
            std::thread::spawn(move || {
                let head = format!(
                    "{route} HTTP/1.1\r\nHost: silo\r\nContent-Type: application/json\r\nContent-Length: 70000000\r\n\r\n"
                );
                (route, raw_request(&addr, &head, b"", Duration::from_secs(10)))
            })
        })
        .collect();
    for t in big {
        let (route, r) = t.join().unwrap();
        let r = r.unwrap_or_else(|e| panic!("{route}: {e}"));
        assert_eq!(r.status, 413, "{route}: {r:?}");
        assert_eq!(
            r.error_type.as_deref(),
            Some("RequestTooLargeException"),
            "{route}"
        );
        assert!(
            r.after < Duration::from_secs(3),
            "{route}: not at once: {r:?}"
        );
    }
    // Unsigned uploads within the size limit, bodies actually sent (8 MB to
    // CreateFunction, 1 MB to Invoke): refused before the body is read.
    let sent: Vec<_> = (0..80)
        .map(|i| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let (route, len) = if i % 2 == 0 {
                    ("POST /2015-03-31/functions", 8 << 20)
                } else {
                    ("POST /2015-03-31/functions/victim/invocations", 1 << 20)
                };
                let head = format!(
                    "{route} HTTP/1.1\r\nHost: silo\r\nX-Amz-Tenant-Id: t\r\nContent-Length: {len}\r\n\r\n"
                );
                raw_request(&addr, &head, &vec![b' '; len], Duration::from_secs(10))
            })
        })
        .collect();
    let mut refused = 0;
    for t in sent {
        // The daemon may close before the whole body is sent: then the
        // client sees a reset instead of the 403, which is fine.
        if let Ok(r) = t.join().unwrap() {
            assert_eq!(r.status, 403, "{r:?}");
            assert_eq!(
                r.error_type.as_deref(),
                Some("MissingAuthenticationTokenException")
            );
            refused += 1;
        }
    }
    eprintln!("{refused} of 80 unsigned uploads saw their 403 (the others a reset)");
    // Oversized headers: refused (431), not buffered.
    let r = raw_request(
        &addr,
        &format!(
            "GET /2015-03-31/functions HTTP/1.1\r\nHost: silo\r\nX-Big: {}\r\n\r\n",
            "a".repeat(64 * 1024)
        ),
        b"",
        Duration::from_secs(10),
    );
    assert!(
        matches!(&r, Ok(a) if a.status == 431) || r.is_err(),
        "64 KiB of headers: {r:?}"
    );

    for (i, t) in loris.into_iter().enumerate() {
        let closed = t.join().unwrap();
        assert!(
            closed.is_some_and(|c| c < Duration::from_secs(15)),
            "slow connection {i} still open or closed late: {closed:?}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let answers = signed.join().unwrap();
    assert!(answers.len() >= 10, "{answers:?}");
    for (r, took) in &answers {
        assert_eq!(r.as_ref().ok(), Some(&200), "{answers:?}");
        assert!(*took < Duration::from_secs(3), "{answers:?}");
    }
    let grew = peak.load(Ordering::Relaxed).saturating_sub(baseline);
    eprintln!("daemon VmRSS: {baseline} KiB before, grew by at most {grew} KiB");
    assert!(grew < 50 * 1024, "the daemon's memory grew by {grew} KiB");
    let _ = std::fs::remove_dir_all(&data);
}

/// Issue 11, item 6 (the Event queue is bounded): 5,000 Event invokes of a
/// function whose invokes are all throttled (reserved concurrency 0: each
/// accepted event is held for minutes of retries, the load that must stay
/// bounded) against a queue of 100: at most 100 are taken, the rest get
/// 429 TooManyRequestsException with a Reason, and the daemon's memory
/// stays flat.
#[test]
fn event_invokes_beyond_the_queue_are_refused_and_memory_stays_flat() {
    let data = scratch("evq-data");
    let d = TestDaemon::on_host(&config("[limits]\nevent_queue = 100\n"), &data, &[]);
    let admin = d.admin();
    assert_eq!(create(&admin, "held", false).status, 201);
    let r = admin
        .request(
            "PUT",
            "/2017-10-31/functions/held/concurrency",
            &[],
            br#"{"ReservedConcurrentExecutions": 0}"#,
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let before = d.rss_kib().unwrap();
    // 32 KiB of JSON each: 5,000 held would be 160 MB.
    let payload = format!("\"{}\"", "a".repeat(32 * 1024 - 2));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (c, payload) = (d.admin(), payload.clone());
            std::thread::spawn(move || {
                let event = InvokeOptions {
                    invocation_type: Some("Event".into()),
                    ..Default::default()
                };
                let (mut accepted, mut refused) = (0, 0);
                for _ in 0..1250 {
                    let r = c.invoke("held", payload.as_bytes(), &event).unwrap();
                    match r.status {
                        202 => accepted += 1,
                        429 => {
                            assert_eq!(r.error_type(), Some("TooManyRequestsException"));
                            assert!(r.json()["Reason"].is_string(), "{}", r.text());
                            refused += 1;
                        }
                        s => panic!("{s}: {}", r.text()),
                    }
                }
                (accepted, refused)
            })
        })
        .collect();
    let (mut accepted, mut refused) = (0, 0);
    for t in threads {
        let (a, r) = t.join().unwrap();
        accepted += a;
        refused += r;
    }
    let grew = d.rss_kib().unwrap().saturating_sub(before);
    eprintln!("{accepted} accepted, {refused} refused; VmRSS grew by {grew} KiB");
    assert!(refused >= 4900, "{accepted} accepted, {refused} refused");
    assert!(accepted <= 100, "{accepted} accepted");
    assert!(grew < 50 * 1024, "the daemon's memory grew by {grew} KiB");
    // The daemon still answers at once.
    let r = admin
        .request("GET", "/2015-03-31/functions/held", &[], b"")
        .unwrap();
    assert_eq!(r.status, 200);
    let _ = std::fs::remove_dir_all(&data);
}
