//! Pre-booted environments with real microVMs (in the KVM test host on
//! these machines): a function with a pool of 2 keeps two VMs booted and
//! bound to no tenant; a new tenant's first invoke takes one (no boot on its
//! path, its counter starts at 1: the VM served no one before), keeps it for
//! life, and the pool refills; a pool of 0 means cold starts again; a VM
//! whose runtime fails its init never enters the pool.

mod common;

use std::time::{Duration, Instant};

use common::daemon::{config, create_counter, TestDaemon};
use serde_json::{json, Value};
use silo_client::{InvokeOptions, LambdaClient};

const POOL: &str = "/2015-03-31/functions/counter/pool";

fn pool(c: &LambdaClient) -> Value {
    let r = c.request("GET", POOL, &[], b"").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn wait_ready(c: &LambdaClient, n: u64) {
    let until = Instant::now() + Duration::from_secs(300);
    while pool(c)["Ready"].as_u64() != Some(n) {
        assert!(
            Instant::now() < until,
            "pool never had {n} ready: {}",
            pool(c)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Invokes as `tenant`: (count, cold, pooled, environment id).
fn invoke(c: &LambdaClient, tenant: &str) -> (u64, bool, bool, String) {
    let opts = InvokeOptions {
        tenant: Some(tenant.into()),
        ..Default::default()
    };
    let r = c.invoke("counter", b"{}", &opts).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["tenant_id"], tenant);
    (
        r.json()["count"].as_u64().unwrap(),
        r.header("x-silo-cold-start") == Some("true"),
        r.header("x-silo-pooled") == Some("true"),
        r.header("x-silo-environment-id").unwrap().to_string(),
    )
}

#[test]
fn new_tenants_take_pre_booted_environments() {
    let logs =
        TestDaemon::with_vms(&config("[pools]\ncounter = 2\n")).run_scenario(|d| scenario(d));
    assert!(
        logs.contains("pre-booted environment bound to this tenant"),
        "{logs}"
    );
}

fn scenario(d: &TestDaemon) {
    let admin = d.admin();
    create_counter(&admin);
    assert_eq!(pool(&admin)["PoolSize"], 2);
    wait_ready(&admin, 2);

    // A new tenant takes a pooled VM: no boot, a fresh counter.
    let (n, cold, pooled, env_a) = invoke(&admin, "pool-A");
    assert_eq!((n, cold, pooled), (1, false, true));
    // It is now that tenant's for life.
    let (n, cold, pooled, env) = invoke(&admin, "pool-A");
    assert_eq!(
        (n, cold, pooled, env.as_str()),
        (2, false, false, env_a.as_str())
    );
    // Another new tenant gets the other one, never A's.
    let (n, _, pooled, env_b) = invoke(&admin, "pool-B");
    assert_eq!((n, pooled), (1, true));
    assert_ne!(env_a, env_b);
    // The pool refills to 2 in the background.
    wait_ready(&admin, 2);
    let m = admin.request("GET", "/metrics", &[], b"").unwrap().text();
    assert!(m.contains("silo_pool_takes_total 2"), "{m}");
    assert!(
        m.contains(r#"silo_pool_ready{function="counter"} 2"#),
        "{m}"
    );

    // PoolSize 0 (through the API): the pooled VMs go; new tenants boot.
    let r = admin
        .request("PUT", POOL, &[], br#"{"PoolSize": 0}"#)
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    wait_ready(&admin, 0);
    let (n, cold, pooled, _) = invoke(&admin, "pool-C");
    assert_eq!((n, cold, pooled), (1, true, false));
    // Bad sizes are refused, naming the field.
    let r = admin
        .request("PUT", POOL, &[], br#"{"PoolSize": 1000}"#)
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("PoolSize"), "{}", r.text());

    // A pooled VM enters the pool only once its runtime finished its init:
    // one whose runtime exits during init is destroyed, and new tenants of
    // that function get cold starts (and Lambda's Runtime.ExitError).
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static (apt busybox-static)");
    let zip = silo_initramfs::package::make_zip(&[
        (
            "bootstrap",
            0o755,
            b"#!/var/task/busybox sh\necho cannot start >&2\nexit 3\n",
        ),
        ("busybox", 0o755, &busybox),
    ]);
    let r = admin
        .create_function("broken", &zip, true, json!({"Timeout": 30}))
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    let broken_pool = "/2015-03-31/functions/broken/pool";
    let r = admin
        .request("PUT", broken_pool, &[], br#"{"PoolSize": 1}"#)
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let until = Instant::now() + Duration::from_secs(300);
    loop {
        let m = admin.request("GET", "/metrics", &[], b"").unwrap().text();
        if m.contains("silo_environment_boot_failures_total 1\n") {
            break;
        }
        assert!(
            Instant::now() < until,
            "the broken function's pooled VM never failed its init: {m}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let r = admin.request("GET", broken_pool, &[], b"").unwrap();
    assert_eq!(r.json()["Ready"], 0, "{}", r.text());
    let opts = InvokeOptions {
        tenant: Some("pool-D".into()),
        ..Default::default()
    };
    let r = admin.invoke("broken", b"{}", &opts).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_ne!(r.header("x-silo-pooled"), Some("true"), "{}", r.text());
    assert!(r.text().contains("Runtime.ExitError"), "{}", r.text());
}
