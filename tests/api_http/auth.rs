//! Authentication and tenant restrictions through real HTTP (issue 11).

use super::*;

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
