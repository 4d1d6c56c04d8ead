//! The daemon's API through real HTTP: every error Lambda's API gives for bad
//! input, authentication and tenant restrictions, persistence across a
//! restart (and a hard kill), and the daemon serving on after each bad
//! request. None of these requests needs a VM, so the daemon runs here.

#[path = "../common/mod.rs"]
mod common;

mod auth;
mod limits;

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
