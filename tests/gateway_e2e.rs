//! The HTTP gateway with real guests (in the KVM test host on these
//! machines; one boot for this file): a Python function behind `ANY
//! /orders/{proxy+}` returns what it sees. Two tenants' tokens reach two
//! different environments of the one function, each seeing the tenant of
//! its token (`context.tenant_id`, the claims) and never a tenant header
//! the client sent; a burst from one tenant gets 429s while the other
//! tenant is served. Also measured, never asserted: warm invoke latency
//! through the gateway (JWT verified from cache) against a signed Lambda
//! API invoke of the same environment.

mod common;

use std::time::{Duration, Instant};

use common::daemon::{config, free_port, scratch, TestDaemon};
use common::jwt::{self, claims, gateway_config, Signer};
use serde_json::{json, Value};
use silo_client::{HttpResponse, InvokeOptions, LambdaClient};
use silo_images::testhost::hardware_kvm_usable;

/// Returns what the function sees, and an id drawn once per environment.
const APP: &str = r#"
import json, uuid
ENV = str(uuid.uuid4())

def handler(event, context):
    ctx = event.get("requestContext", {})
    seen = {
        "tenant": context.tenant_id,
        "env": ENV,
        "version": event.get("version"),
        "routeKey": event.get("routeKey"),
        "pathParameters": event.get("pathParameters"),
        "claims": ctx.get("authorizer", {}).get("jwt", {}).get("claims"),
        "headers": event.get("headers"),
    }
    return {"statusCode": 200, "headers": {"content-type": "application/json"},
            "cookies": ["env=" + ENV], "body": json.dumps(seen)}
"#;

fn gw_call(gw: &LambdaClient, token: &str, extra: &[(&str, &str)]) -> HttpResponse {
    let auth = format!("Bearer {token}");
    let mut h = vec![("authorization", auth.as_str())];
    h.extend_from_slice(extra);
    gw.request("POST", "/orders/42/items", &h, b"{\"n\":1}")
        .unwrap()
}

fn seen(r: &HttpResponse) -> Value {
    assert_eq!(r.status, 200, "{} {:?}", r.text(), r.headers);
    serde_json::from_slice(&r.body).unwrap()
}

fn p50(mut ms: Vec<f64>) -> f64 {
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    ms[ms.len() / 2]
}

#[test]
fn tenants_reach_their_own_environments_through_the_gateway_and_bursts_are_contained() {
    let started = Instant::now();
    let signer = Signer::ec("e2e-key");
    let dir = scratch("gateway-e2e");
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, jwt::jwks(&[&signer])).unwrap();
    let gw_port = free_port();
    let (listen, jwks_at, files) = if hardware_kvm_usable() {
        (
            format!("127.0.0.1:{gw_port}"),
            jwks.display().to_string(),
            Vec::new(),
        )
    } else {
        (
            "0.0.0.0:9100".to_string(),
            "/work/jwks.json".to_string(),
            vec![(jwks.clone(), "/work/jwks.json".to_string())],
        )
    };
    // One request per second per tenant, no burst above it: a burst is
    // refused at once whatever the guests' speed.
    let cfg = config(&gateway_config(
        &listen,
        &format!("jwks_file = \"{jwks_at}\""),
        1,
        1,
        60,
    ));
    let d = TestDaemon::with_runtime_forwarding(
        "python3.11",
        &cfg,
        "pmem",
        files,
        false,
        &[(gw_port, 9100)],
    );
    let mut figures = String::new();
    d.run_scenario(|d| {
        let admin = d.admin();
        let zip = silo_initramfs::package::make_zip(&[("app.py", 0o644, APP.as_bytes())]);
        let r = admin
            .create_function(
                "orders",
                &zip,
                true,
                json!({"Runtime": "python3.11", "Handler": "app.handler", "Timeout": 60}),
            )
            .unwrap();
        assert_eq!(r.status, 201, "{}", r.text());
        let route = json!({
            "RouteKey": "ANY /orders/{proxy+}",
            "FunctionName": "orders",
            "Authorizer": "main",
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
        let gw = LambdaClient::new(&format!("http://127.0.0.1:{gw_port}"), None);
        let a = signer.token(&claims("tenant-A"));
        let b = signer.token(&claims("tenant-B"));

        // Each tenant's token reaches its own environment.
        let sa = seen(&gw_call(&gw, &a, &[]));
        let sb = seen(&gw_call(&gw, &b, &[]));
        assert_eq!(sa["tenant"], "tenant-A", "{sa}");
        assert_eq!(sb["tenant"], "tenant-B", "{sb}");
        assert_eq!(sa["claims"]["tenant_id"], "tenant-A", "{sa}");
        assert_eq!(sa["version"], "2.0");
        assert_eq!(sa["routeKey"], "ANY /orders/{proxy+}");
        assert_eq!(sa["pathParameters"], json!({"proxy": "42/items"}));
        assert_ne!(sa["env"], sb["env"], "two tenants shared an environment");

        // A client naming another tenant in headers (any case, any
        // spelling) is still tenant-A, in tenant-A's environment, and the
        // function sees none of those headers.
        std::thread::sleep(Duration::from_millis(1100));
        let spoof = gw_call(
            &gw,
            &a,
            &[
                ("X-Amz-Tenant-Id", "tenant-B"),
                ("x-amzn-tenant-id", "tenant-B"),
                ("Lambda-Runtime-Aws-Tenant-Id", "tenant-B"),
                ("X-Tenant-Id", "tenant-B"),
            ],
        );
        let ss = seen(&spoof);
        assert_eq!(ss["tenant"], "tenant-A", "{ss}");
        assert_eq!(ss["env"], sa["env"], "{ss}");
        let names: Vec<&String> = ss["headers"].as_object().unwrap().keys().collect();
        assert!(
            names.iter().all(|n| !n.contains("tenant")),
            "the function saw {names:?}"
        );
        assert_eq!(
            spoof.header("set-cookie").map(|c| c.to_string()),
            Some(format!("env={}", sa["env"].as_str().unwrap()))
        );

        // Warm latency, gateway against the signed Lambda API, same
        // environment (tenant-B's), one per second (the rate limit); the
        // API invoke carries an event of the gateway's shape and size, so
        // the function does the same work for both.
        let (mut via_gw, mut via_api) = (Vec::new(), Vec::new());
        let event = json!({
            "version": "2.0",
            "routeKey": "ANY /orders/{proxy+}",
            "pathParameters": sb["pathParameters"],
            "headers": sb["headers"],
            "requestContext": {"authorizer": {"jwt": {"claims": sb["claims"]}}},
            "body": "{\"n\":1}",
        })
        .to_string();
        let opts = InvokeOptions {
            tenant: Some("tenant-B".into()),
            ..Default::default()
        };
        for _ in 0..7 {
            std::thread::sleep(Duration::from_millis(1050));
            let t = Instant::now();
            let s = seen(&gw_call(&gw, &b, &[]));
            via_gw.push(t.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(s["env"], sb["env"]);
            let t = Instant::now();
            let r = admin.invoke("orders", event.as_bytes(), &opts).unwrap();
            via_api.push(t.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(r.status, 200, "{}", r.text());
        }
        figures = format!(
            "warm p50: gateway {:.1} ms, signed Lambda API {:.1} ms",
            p50(via_gw),
            p50(via_api)
        );

        // tenant-A bursts (three connections at once, four requests each);
        // tenant-B is served meanwhile. Connections are opened one at a
        // time first: the test host's port forwarding (slirp) resets
        // connections that arrive together, whatever the daemon does.
        let endpoint = format!("http://127.0.0.1:{gw_port}");
        let clients: Vec<LambdaClient> = (0..3)
            .map(|_| {
                let c = LambdaClient::new(&endpoint, None);
                let s = gw_call(&c, &a, &[]).status;
                assert!(s == 200 || s == 429, "{s}");
                c
            })
            .collect();
        std::thread::sleep(Duration::from_millis(1100));
        let burst_started = Instant::now();
        let burst: Vec<_> = clients
            .into_iter()
            .map(|c| {
                let a = a.clone();
                std::thread::spawn(move || {
                    (0..4)
                        .map(|_| gw_call(&c, &a, &[]).status)
                        .collect::<Vec<u16>>()
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        let rb = gw_call(&gw, &b, &[]);
        let statuses: Vec<u16> = burst.into_iter().flat_map(|t| t.join().unwrap()).collect();
        let elapsed = burst_started.elapsed().as_secs();
        assert_eq!(seen(&rb)["tenant"], "tenant-B");
        assert!(
            statuses.iter().all(|s| *s == 200 || *s == 429),
            "{statuses:?}"
        );
        let served = statuses.iter().filter(|s| **s == 200).count() as u64;
        assert!(
            served < 12 && served <= 1 + (elapsed + 1),
            "tenant-A's burst of 12 (1 request/s, no burst) in {elapsed} s: {statuses:?}"
        );
    });
    eprintln!(
        "GATEWAY_E2E {figures}; whole test {:.0} s",
        started.elapsed().as_secs_f64()
    );
}
