//! The HTTP gateway through real HTTP, without guests: the routes API
//! (admin only, persisted), and every token the gateway must refuse
//! refused with API Gateway's answer before any function runs: forged,
//! expired, not yet valid, wrong audience, wrong issuer, `alg: none`, HS256
//! signed with the public key, unknown `kid` (refetching the JWKS at most
//! once per interval), a tenant claim that is missing, not a string or
//! not a tenant id; key rotation; per-tenant rate limits; a CORS
//! preflight. Accepted tokens reach the function's invoke, which answers
//! 503 here: the function has reserved concurrency 0, so no VM is needed.

mod common;

use std::time::{Duration, Instant};

use common::daemon::{config, free_port, scratch, TestDaemon, TENANT_A};
use common::jwt::{self, claims, gateway_config, unsigned, JwksServer, Signer};
use serde_json::{json, Value};
use silo_client::{HttpResponse, LambdaClient};

fn package() -> Vec<u8> {
    silo_initramfs::package::make_zip(&[("bootstrap", 0o755, b"#!/bin/sh\nexit 0\n")])
}

/// A per-tenant function `orders` whose every invoke is throttled (no VM),
/// behind `ANY /orders/{proxy+}` with the `main` authorizer and CORS.
fn set_up(d: &TestDaemon) {
    let admin = d.admin();
    let r = admin
        .create_function("orders", &package(), true, json!({}))
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    let r = admin
        .request(
            "PUT",
            "/2017-10-31/functions/orders/concurrency",
            &[],
            br#"{"ReservedConcurrentExecutions": 0}"#,
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let route = json!({
        "RouteKey": "ANY /orders/{proxy+}",
        "FunctionName": "orders",
        "Authorizer": "main",
        "AuthorizationScopes": ["orders"],
        "Cors": {
            "AllowOrigins": ["https://app.example"],
            "AllowMethods": ["GET", "POST"],
            "AllowHeaders": ["authorization", "content-type"],
            "MaxAge": 600
        }
    });
    let r = admin
        .request(
            "PUT",
            "/2015-03-31/gateway/routes/orders",
            &[],
            route.to_string().as_bytes(),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}

fn call(gw: &LambdaClient, token: Option<&str>, extra: &[(&str, &str)]) -> HttpResponse {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut h: Vec<(&str, &str)> = extra.to_vec();
    if let Some(a) = &auth {
        h.push(("authorization", a));
    }
    gw.request("POST", "/orders/1/items", &h, b"{}").unwrap()
}

fn expect(r: &HttpResponse, status: u16, message: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {} {:?}", r.text(), r.headers);
    assert_eq!(r.json(), json!({ "message": message }), "{what}");
    assert!(r.header("apigw-requestid").is_some(), "{what}");
}

/// Accepted: the token passed and the invoke was attempted (503: the
/// function's reserved concurrency is 0).
fn accepted(r: &HttpResponse, what: &str) {
    expect(r, 503, "Service Unavailable", what);
}

#[test]
fn tokens_are_verified_and_every_bad_one_fails_closed() {
    let good = Signer::rsa("rsa-1");
    let ec = Signer::ec("ec-1");
    let stranger = Signer::rsa("rsa-1"); // same kid, other key
    let server = JwksServer::start(jwt::jwks(&[&good, &ec]));
    let gw_port = free_port();
    let cfg = config(&gateway_config(
        &format!("127.0.0.1:{gw_port}"),
        &format!("jwks_url = \"{}\"\nallow_http_jwks = true", server.url),
        1000,
        1000,
        2,
    ));
    let data = scratch("gateway-data");
    let d = TestDaemon::on_host(&cfg, &data, &[]);
    set_up(&d);
    let gw = LambdaClient::new(&format!("http://127.0.0.1:{gw_port}"), None);

    // Accepted: RS256 and ES256 tokens of the JWKS's keys.
    accepted(
        &call(&gw, Some(&good.token(&claims("tenant-A"))), &[]),
        "RS256",
    );
    accepted(
        &call(&gw, Some(&ec.token(&claims("tenant-A"))), &[]),
        "ES256",
    );
    // The token without "Bearer ", as API Gateway accepts it.
    let r = gw
        .request(
            "POST",
            "/orders/1",
            &[("authorization", &good.token(&claims("tenant-A")))],
            b"",
        )
        .unwrap();
    accepted(&r, "bare token");

    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = claims("tenant-A");
        f(&mut c);
        c
    };
    let unauthorized: Vec<(&str, String)> = vec![
        ("no token", String::new()),
        ("garbage", "not.a.token".into()),
        (
            "forged: another key under the JWKS's kid",
            stranger.token(&claims("tenant-A")),
        ),
        (
            "expired",
            good.token(&with(&|c| c["exp"] = json!(jwt::now() - 600))),
        ),
        (
            "not yet valid",
            good.token(&with(&|c| c["nbf"] = json!(jwt::now() + 600))),
        ),
        (
            "no exp",
            good.token(&with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            })),
        ),
        (
            "wrong audience",
            good.token(&with(&|c| c["aud"] = json!("another-api"))),
        ),
        (
            "wrong issuer",
            good.token(&with(&|c| c["iss"] = json!("https://evil.example/"))),
        ),
        ("alg none", unsigned("none", "rsa-1", &claims("tenant-A"))),
        ("alg None", unsigned("None", "rsa-1", &claims("tenant-A"))),
        (
            "HS256 signed with the RSA public key",
            good.hs256_with_public_key(&claims("tenant-A")),
        ),
        (
            "HS256 signed with the EC public key",
            ec.hs256_with_public_key(&claims("tenant-A")),
        ),
        (
            "an EC token naming the RSA key's kid",
            ec.token_as("rsa-1", &claims("tenant-A")),
        ),
    ];
    for (what, token) in &unauthorized {
        let t = (!token.is_empty()).then_some(token.as_str());
        let r = call(&gw, t, &[]);
        expect(&r, 401, "Unauthorized", what);
        assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{what}");
    }
    let forbidden: Vec<(&str, String)> = vec![
        (
            "no tenant claim",
            good.token(&with(&|c| {
                c.as_object_mut().unwrap().remove("tenant_id");
            })),
        ),
        (
            "a tenant claim that is a number",
            good.token(&with(&|c| c["tenant_id"] = json!(42))),
        ),
        (
            "a tenant claim that is a list",
            good.token(&with(&|c| c["tenant_id"] = json!(["tenant-A", "tenant-B"]))),
        ),
        (
            "a tenant claim that breaks the pattern",
            good.token(&with(&|c| c["tenant_id"] = json!("tenant|B"))),
        ),
        (
            "a tenant claim that is too long",
            good.token(&with(&|c| c["tenant_id"] = json!("t".repeat(300)))),
        ),
        (
            "without the route's scope",
            good.token(&with(&|c| c["scope"] = json!("profile"))),
        ),
    ];
    for (what, token) in &forbidden {
        expect(&call(&gw, Some(token), &[]), 403, "Forbidden", what);
    }

    // Refused before their bodies are read, requests with bodies still
    // get their answers (the body is drained, not left to reset the
    // connection under the client), on a reused connection too.
    let big = vec![b'x'; 900 * 1024];
    for i in 0..10 {
        let r = gw
            .request("POST", "/orders/1", &[("content-type", "text/plain")], &big)
            .unwrap_or_else(|e| panic!("refused request {i} with a body: {e:?}"));
        expect(&r, 401, "Unauthorized", "a body without a token");
    }

    // Unknown kid: refused; within the refresh interval the JWKS is
    // fetched at most once however many such tokens arrive.
    let rogue = Signer::rsa("rogue");
    let before = server.fetches();
    let started = Instant::now();
    for _ in 0..20 {
        expect(
            &call(&gw, Some(&rogue.token(&claims("tenant-A"))), &[]),
            401,
            "Unauthorized",
            "unknown kid",
        );
    }
    let intervals = started.elapsed().as_secs() / 2 + 1;
    let fetched = server.fetches() - before;
    assert!(
        fetched as u64 <= intervals,
        "{fetched} JWKS fetches for 20 unknown-kid tokens in {:?} (interval 2 s)",
        started.elapsed()
    );

    // Rotation: the issuer publishes a new key and drops the old one.
    let next = Signer::ec("ec-2");
    server.set(jwt::jwks(&[&next]));
    std::thread::sleep(Duration::from_millis(2100));
    accepted(
        &call(&gw, Some(&next.token(&claims("tenant-A"))), &[]),
        "rotated key",
    );
    expect(
        &call(&gw, Some(&good.token(&claims("tenant-A"))), &[]),
        401,
        "Unauthorized",
        "the dropped key",
    );

    // Not a route: 404 in API Gateway's shape; a route's preflight is
    // answered without a token.
    expect(
        &gw.request("GET", "/nothing", &[], b"").unwrap(),
        404,
        "Not Found",
        "no route",
    );
    let r = gw
        .request(
            "OPTIONS",
            "/orders/7",
            &[
                ("origin", "https://app.example"),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "authorization"),
            ],
            b"",
        )
        .unwrap();
    assert_eq!(r.status, 204, "{:?}", r.headers);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(r.header("access-control-allow-methods"), Some("GET,POST"));
    assert_eq!(r.header("access-control-max-age"), Some("600"));
    let r = gw
        .request(
            "OPTIONS",
            "/orders/7",
            &[
                ("origin", "https://evil.example"),
                ("access-control-request-method", "POST"),
            ],
            b"",
        )
        .unwrap();
    assert_eq!(r.header("access-control-allow-origin"), None);
    // A refused request from an allowed origin still carries CORS headers
    // (the browser can read the 401).
    let r = call(&gw, None, &[("origin", "https://app.example")]);
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example")
    );
}

#[test]
fn routes_are_admin_only_checked_and_kept_across_a_restart() {
    let signer = Signer::ec("k");
    let dir = scratch("gateway-jwks");
    let jwks_path = dir.join("jwks.json");
    std::fs::write(&jwks_path, jwt::jwks(&[&signer])).unwrap();
    let gw_port = free_port();
    let cfg = config(&gateway_config(
        &format!("127.0.0.1:{gw_port}"),
        &format!("jwks_file = \"{}\"", jwks_path.display()),
        1000,
        1000,
        60,
    ));
    let data = scratch("gateway-data");
    let mut d = TestDaemon::on_host(&cfg, &data, &[]);
    set_up(&d);
    let admin = d.admin();
    let put = |c: &LambdaClient, id: &str, body: Value| {
        c.request(
            "PUT",
            &format!("/2015-03-31/gateway/routes/{id}"),
            &[],
            body.to_string().as_bytes(),
        )
        .unwrap()
    };
    // A tenant key may not touch routes.
    let r = put(
        &d.client(TENANT_A),
        "x",
        json!({"RouteKey": "GET /x", "FunctionName": "orders", "Authorizer": "main"}),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    let r = d
        .client(TENANT_A)
        .request("GET", "/2015-03-31/gateway/routes", &[], b"")
        .unwrap();
    assert_eq!(r.status, 403, "{}", r.text());
    // A per-tenant function's route needs an authorizer naming tenants.
    for (body, what) in [
        (
            json!({"RouteKey": "GET /x", "FunctionName": "orders"}),
            "tenant_claim",
        ),
        (
            json!({"RouteKey": "GET /x", "FunctionName": "orders", "Authorizer": "nope"}),
            "nope",
        ),
        (
            json!({"RouteKey": "GET x", "FunctionName": "orders", "Authorizer": "main"}),
            "RouteKey",
        ),
        (
            json!({"RouteKey": "GET /x", "FunctionName": "missing", "Authorizer": "main"}),
            "missing",
        ),
    ] {
        let r = put(&admin, "x", body.clone());
        assert!(
            r.status == 400 || r.status == 404,
            "{body}: {} {}",
            r.status,
            r.text()
        );
        assert!(r.text().contains(what), "{body}: {}", r.text());
    }
    // Two routes may not share a key.
    let r = put(
        &admin,
        "dup",
        json!({"RouteKey": "ANY /orders/{proxy+}", "FunctionName": "orders", "Authorizer": "main"}),
    );
    assert_eq!(r.status, 409, "{}", r.text());
    // The JWKS file serves as the URL does.
    let gw = LambdaClient::new(&format!("http://127.0.0.1:{gw_port}"), None);
    accepted(
        &call(&gw, Some(&signer.token(&claims("tenant-B"))), &[]),
        "file JWKS",
    );

    // Kept across a restart; deleted for good.
    d.stop();
    let d = TestDaemon::on_host(&cfg, &data, &[]);
    let admin = d.admin();
    let r = admin
        .request("GET", "/2015-03-31/gateway/routes", &[], b"")
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["Routes"][0]["RouteKey"], "ANY /orders/{proxy+}");
    assert_eq!(r.json()["Routes"][0]["Cors"]["MaxAge"], 600);
    accepted(
        &call(&gw, Some(&signer.token(&claims("tenant-B"))), &[]),
        "after restart",
    );
    let r = admin
        .request("DELETE", "/2015-03-31/gateway/routes/orders", &[], b"")
        .unwrap();
    assert_eq!(r.status, 204, "{}", r.text());
    expect(
        &call(&gw, Some(&signer.token(&claims("tenant-B"))), &[]),
        404,
        "Not Found",
        "deleted route",
    );
}

#[test]
fn one_tenants_burst_gets_429s_and_another_tenant_is_still_served() {
    let signer = Signer::ec("k");
    let dir = scratch("gateway-jwks");
    let jwks_path = dir.join("jwks.json");
    std::fs::write(&jwks_path, jwt::jwks(&[&signer])).unwrap();
    let gw_port = free_port();
    let (rps, burst) = (1u64, 3u64);
    let cfg = config(&gateway_config(
        &format!("127.0.0.1:{gw_port}"),
        &format!("jwks_file = \"{}\"", jwks_path.display()),
        rps as u32,
        burst as u32,
        60,
    ));
    let data = scratch("gateway-data");
    let d = TestDaemon::on_host(&cfg, &data, &[]);
    set_up(&d);
    let gw = LambdaClient::new(&format!("http://127.0.0.1:{gw_port}"), None);
    let a = signer.token(&claims("tenant-A"));
    let b = signer.token(&claims("tenant-B"));
    let started = Instant::now();
    let statuses: Vec<u16> = (0..20).map(|_| call(&gw, Some(&a), &[]).status).collect();
    let elapsed = started.elapsed().as_secs();
    let served = statuses.iter().filter(|s| **s == 503).count() as u64;
    let limited = statuses.iter().filter(|s| **s == 429).count() as u64;
    assert_eq!(served + limited, 20, "{statuses:?}");
    assert!(
        served <= burst + rps * (elapsed + 1),
        "{served} of tenant-A's 20 served in {elapsed} s: {statuses:?}"
    );
    assert!(limited > 0, "{statuses:?}");
    expect(
        &call(&gw, Some(&a), &[]),
        429,
        "Too Many Requests",
        "tenant-A",
    );
    accepted(
        &call(&gw, Some(&b), &[]),
        "tenant-B beside tenant-A's burst",
    );
}
