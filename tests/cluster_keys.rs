//! Settings kept in the cluster's registry beside functions (real
//! PostgreSQL 15, two real `silo serve --registry` processes, real SigV4
//! clients over HTTP, no VM): an access key created through node 1 signs
//! requests on node 2; revoked through node 1, node 2 refuses it; an
//! administrator key made on node 2 works on node 1; a revocation whose
//! notification is lost takes effect at the listeners' re-read after they
//! reconnect; an egress policy and a
//! pool size set on node 1 are node 2's; a single host refuses the key API
//! (its keys are its configuration's).

mod cluster;
mod common;
#[path = "../daemon/tests/pg/mod.rs"]
mod pg;

use std::time::Duration;

use common::cli::signed_client;
use common::daemon::{config, scratch, TestDaemon};
use serde_json::{json, Value};
use silo_client::LambdaClient;

fn node(pg: &pg::PgServer, id: &str) -> TestDaemon {
    let data = scratch(&format!("keys-{id}"));
    cluster::registry_node(&config(""), &pg.url(), id, &data, &[])
}

/// [`cluster::until`] within 30 s, polling every 10 ms.
fn until(what: &str, ok: impl Fn() -> bool) -> Duration {
    cluster::until(what, Duration::from_secs(30), Duration::from_millis(10), ok)
}

fn call(c: &LambdaClient, method: &str, path: &str, body: &Value) -> (u16, Value) {
    let body = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    let r = c
        .request(method, path, &[("content-type", "application/json")], &body)
        .unwrap();
    let v = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    (r.status, v)
}

fn new_key(admin: &LambdaClient, input: Value) -> (String, String) {
    let (s, v) = call(admin, "POST", "/silo/access-keys", &input);
    assert_eq!(s, 201, "{v}");
    (
        v["AccessKeyId"].as_str().unwrap().to_string(),
        v["SecretAccessKey"].as_str().unwrap().to_string(),
    )
}

#[test]
fn keys_egress_and_pools_set_on_one_node_hold_on_the_other() {
    let pg = pg::PgServer::start();
    let n1 = node(&pg, "n1");
    let n2 = node(&pg, "n2");
    let (a1, a2) = (n1.admin(), n2.admin());

    // A tenant key created through node 1 signs requests on node 2.
    let (id, secret) = new_key(&a1, json!({ "Tenants": ["t1"] }));
    let on2 = signed_client(&n2.endpoint, (&id, &secret));
    let t = until("the key created on node 1 works on node 2", || {
        call(&on2, "GET", "/2015-03-31/functions", &Value::Null).0 == 200
    });
    println!("key created on node 1, accepted by node 2 after {t:?}");
    // It is a tenant key there too: no key management, no changes.
    let (s, v) = call(&on2, "POST", "/silo/access-keys", &json!({}));
    assert_eq!(s, 403, "{v}");
    // Tenant ids follow Lambda's rule, as in the configuration: a bad one
    // is refused by name, and no key is made.
    for bad in [
        json!({ "Tenants": [] }),
        json!({ "Tenants": ["a#b"] }),
        json!({ "Tenants": [""] }),
    ] {
        let (s, v) = call(&a1, "POST", "/silo/access-keys", &bad);
        assert_eq!(s, 400, "{bad}: {v}");
        assert!(v.to_string().contains("Tenants"), "{v}");
    }

    // An administrator key made on node 2 works on node 1.
    let (admin_id, admin_secret) = new_key(&a2, json!({}));
    let admin_on1 = signed_client(&n1.endpoint, (&admin_id, &admin_secret));
    until("node 2's admin key works on node 1", || {
        call(&admin_on1, "GET", "/silo/access-keys", &Value::Null).0 == 200
    });
    let r = admin_on1
        .create_function("shared", &cluster::package(), true, json!({}))
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    let (_, listed) = call(&a1, "GET", "/silo/access-keys", &Value::Null);
    let listed = listed["AccessKeys"].as_array().unwrap().clone();
    for k in [&id, &admin_id] {
        assert!(
            listed
                .iter()
                .any(|e| e["AccessKeyId"] == k.as_str() && e["Source"] == "registry"),
            "{listed:?}"
        );
    }
    assert!(
        !serde_json::to_string(&listed).unwrap().contains(&secret),
        "a secret was listed"
    );

    // Revoked through node 1: node 2 refuses it.
    let (s, v) = call(
        &a1,
        "DELETE",
        &format!("/silo/access-keys/{id}"),
        &Value::Null,
    );
    assert_eq!(s, 204, "{v}");
    let t = until("the key revoked on node 1 is refused by node 2", || {
        call(&on2, "GET", "/2015-03-31/functions", &Value::Null).0 == 403
    });
    println!("key revoked on node 1, refused by node 2 after {t:?}");
    let on1 = signed_client(&n1.endpoint, (&id, &secret));
    assert_eq!(
        call(&on1, "GET", "/2015-03-31/functions", &Value::Null).0,
        403
    );
    // A configured key cannot be revoked through the API.
    let (s, v) = call(
        &a1,
        "DELETE",
        &format!("/silo/access-keys/{}", common::daemon::ADMIN.0),
        &Value::Null,
    );
    assert_eq!(s, 409, "{v}");

    // A revocation whose notification is lost (the row removed without
    // NOTIFY) takes effect when the listeners reconnect: each node re-reads
    // every key then. Until then the nodes' copies still hold the key.
    pg.execute(&format!(
        "DELETE FROM silo_keys WHERE access_key_id = '{admin_id}'"
    ));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        call(&admin_on1, "GET", "/silo/access-keys", &Value::Null).0,
        200,
        "the key went without a notification or a re-read"
    );
    pg.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = 'silo' AND query LIKE 'LISTEN%'",
    );
    let t = until("a re-read after reconnecting drops the key", || {
        call(&admin_on1, "GET", "/silo/access-keys", &Value::Null).0 == 403
    });
    println!("listeners cut: key dropped by the re-read after {t:?}");

    // An egress policy set through node 1 is node 2's (stored with the
    // function; node 2's network layer gets it for the VMs it boots).
    let policy = json!({ "Allow": ["192.0.2.10/32:443"] });
    let (s, v) = call(
        &a1,
        "PUT",
        "/2015-03-31/functions/shared/network",
        &json!({ "Egress": policy }),
    );
    assert_eq!(s, 200, "{v}");
    until("the egress policy reaches node 2", || {
        let (s, v) = call(
            &a2,
            "GET",
            "/2015-03-31/functions/shared/network",
            &Value::Null,
        );
        s == 200 && v["Egress"] == policy && v["Source"] == "api"
    });

    // A pool size set through node 1 is node 2's.
    let (s, v) = call(
        &a1,
        "PUT",
        "/2015-03-31/functions/shared/pool",
        &json!({ "PoolSize": 1 }),
    );
    assert_eq!(s, 200, "{v}");
    until("the pool size reaches node 2", || {
        let (s, v) = call(
            &a2,
            "GET",
            "/2015-03-31/functions/shared/pool",
            &Value::Null,
        );
        s == 200 && v["PoolSize"] == 1
    });
    let (s, v) = call(
        &a1,
        "DELETE",
        "/2015-03-31/functions/shared/pool",
        &Value::Null,
    );
    assert_eq!(s, 204, "{v}");
    until("the pool's removal reaches node 2", || {
        let (s, v) = call(
            &a2,
            "GET",
            "/2015-03-31/functions/shared/pool",
            &Value::Null,
        );
        s == 200 && v["PoolSize"] == 0
    });
}

/// One host keeps its keys in its configuration: the key API says so.
#[test]
fn a_single_host_refuses_the_key_api() {
    let d = TestDaemon::on_host(&config(""), &scratch("keys-single"), &[]);
    let (s, v) = call(&d.admin(), "POST", "/silo/access-keys", &json!({}));
    assert_eq!(s, 400, "{v}");
    assert!(v.to_string().contains("--registry"), "{v}");
}
