//! Function logs that carry the tenant, with real clients and real guests:
//! `tests/python/boto3_logs.py` drives boto3's `logs` client and the AWS
//! CLI against `silo serve` (in the KVM test host on these machines) with
//! Python functions in both log formats, a tenant flooding one function's
//! log, and a tenant key trying to read the other tenant's events. Then,
//! here: usage per tenant through the API extension, the log pipeline's
//! counters in `/metrics`, and a daemon restart that keeps what was
//! written (the same boto3 reads, after). One test-host boot.

mod common;

use std::process::Command;

use common::daemon::{config, ensure_boto3, ensure_from_pypi, TestDaemon, TENANT_A};
use serde_json::Value;

/// The log store's bounds in this test: tenant-B's flood (8,000 lines of
/// ~100 bytes, ~1.6 MB stored) is several times its share.
const MAX_FUNCTION_BYTES: u64 = 1 << 20;
const MAX_TENANT_BYTES: u64 = 256 << 10;

/// The AWS CLI (`.ci/run` installs it from PyPI; else this does).
fn ensure_awscli() {
    ensure_from_pypi("the AWS CLI", "awscli", || {
        Command::new("aws")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
}

fn count_a(stdout: &str) -> u64 {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("COUNT_A "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no COUNT_A in {stdout}"))
}

/// The usage rows of `function` as `client` may read them, by tenant.
fn usage(
    client: &silo_client::LambdaClient,
    function: &str,
    query: &str,
) -> std::collections::BTreeMap<String, Value> {
    let r = client
        .request(
            "GET",
            &format!("/2015-03-31/functions/{function}/usage{query}"),
            &[],
            b"",
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["Tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["TenantId"].as_str().unwrap_or("").to_string(), t.clone()))
        .collect()
}

#[test]
fn boto3_and_the_aws_cli_read_each_tenants_function_logs() {
    ensure_boto3();
    ensure_awscli();
    let cfg = config(&format!(
        "[logs]\nmax_function_bytes = {MAX_FUNCTION_BYTES}\nmax_tenant_bytes = {MAX_TENANT_BYTES}\n"
    ));
    let d = TestDaemon::with_python(&cfg, "pmem");
    let max = MAX_FUNCTION_BYTES.to_string();
    let env = |phase: &'static str| {
        vec![
            ("TENANT_A_KEY", TENANT_A.0),
            ("TENANT_A_SECRET", TENANT_A.1),
            ("MAX_FUNCTION_BYTES", max.as_str()),
            ("PHASE", phase),
        ]
    };
    // (On a panic, run_scenario prints the daemon's log.)
    d.run_scenario(|d| {
        let write = d.python_client("boto3_logs.py", &env("write"));
        eprintln!("{}", write.stdout);
        assert!(
            write.success && write.stdout.contains("LOGS_WRITE_OK"),
            "boto3_logs.py (write) failed:\n{}\n{}",
            write.stdout,
            write.stderr
        );
        let before = count_a(&write.stdout);

        let admin = d.admin();
        let u = usage(&admin, "printer", "");
        assert_eq!(u["tenant-A"]["Invocations"], 3, "{u:?}");
        assert_eq!(u["tenant-A"]["EnvironmentsCreated"], 1, "{u:?}");
        assert_eq!(u["tenant-B"]["Invocations"], 2, "{u:?}");
        assert!(u["tenant-A"]["GBSeconds"].as_f64().unwrap() > 0.0, "{u:?}");
        let tenant_a = d.client(TENANT_A);
        let own = usage(&tenant_a, "printer", "");
        assert_eq!(own.keys().collect::<Vec<_>>(), ["tenant-A"], "{own:?}");
        assert!(usage(&tenant_a, "printer", "?tenant=tenant-B").is_empty());
        let metrics = admin.request("GET", "/metrics", &[], b"").unwrap().text();
        for series in [
            "silo_log_events_written_total",
            "silo_log_events_dropped_total",
            "silo_log_segments_evicted_total",
        ] {
            assert!(metrics.contains(series), "{series} missing:\n{metrics}");
        }

        d.restart();
        let after = d.python_client("boto3_logs.py", &env("after-restart"));
        let u_after = usage(&d.admin(), "printer", "");
        assert!(
            after.success && after.stdout.contains("LOGS_RESTART_OK"),
            "boto3_logs.py (after restart) failed:\n{}\n{}",
            after.stdout,
            after.stderr
        );
        assert_eq!(
            count_a(&after.stdout),
            before,
            "tenant-A's events changed over a restart"
        );
        assert_eq!(u_after["tenant-A"]["Invocations"], 3, "{u_after:?}");
    });
}
