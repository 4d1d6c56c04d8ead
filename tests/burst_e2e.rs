//! A burst of new tenants against `silo serve` with real microVMs (in the
//! KVM test host on these machines): 6 new tenants x 6 invokes, 12 in
//! flight, over real HTTP (SigV4-signed, `silo burst`, on the daemon's own
//! machine: QEMU's port forwarding resets connections when a dozen open at
//! once through it, which would measure the test rig, not silo). Every
//! invoke is answered by an environment of its own tenant or refused at once
//! with a 429 and a reason; never a 5xx, never an environment serving two
//! tenants; boots never exceed the admission limit, and the queue drains.

mod common;

use std::time::Duration;

use common::daemon::{script_create_function, script_files, script_start_daemon};
use common::{metric, run_with_kvm};
use serde_json::Value;

#[test]
fn a_burst_of_new_tenants_is_answered_or_refused_at_once() {
    // /metrics without a key only on the metrics address (a top-level key,
    // so before the tables).
    let config = format!(
        "metrics_listen = \"127.0.0.1:9413\"\n{}",
        common::daemon::config("[limits]\nconcurrency = 12\nper_tenant = 6\nmax_booting = 2\n")
    );
    let serve = script_start_daemon(9412, Some("info"));
    let create = script_create_function("counter", "--bootstrap counter", 30, "create.json");
    let script = format!(
        r#"set -u
{serve}{create}silo burst --name counter --shape 6x6@12 > burst.json; echo "BURST_EXIT $?"
echo BURST_JSON_BEGIN; cat burst.json; echo BURST_JSON_END
wget -qO- http://127.0.0.1:9413/metrics > metrics.txt
echo METRICS_BEGIN; cat metrics.txt; echo METRICS_END
kill -TERM $daemon; wait $daemon
echo DAEMON_LOG_BEGIN; cat daemon.log; echo DAEMON_LOG_END
"#
    );
    let run = run_with_kvm(script_files(config), &script, Duration::from_secs(600));
    let out = &run.output;
    let section = |begin: &str, end: &str| common::section(out, begin, end);
    let report: Value = serde_json::from_str(section("BURST_JSON_BEGIN", "BURST_JSON_END").trim())
        .unwrap_or_else(|e| panic!("burst report: {e}\n{out}"));
    let violations = report["violations"].as_array().unwrap();
    assert!(violations.is_empty(), "{violations:#?}\n{out}");
    assert!(out.contains("BURST_EXIT 0"), "{out}");
    assert_eq!(report["invokes"], 36);
    assert_eq!(report["failed"], 0);
    assert_eq!(
        report["answered"].as_u64().unwrap() + report["refused"].as_u64().unwrap(),
        36
    );
    // Refusals (if any) carry a reason this daemon gives.
    for (reason, _) in report["refusals_by_reason"].as_object().unwrap() {
        assert!(
            [
                "ColdStartQueueFull",
                "ColdStartDeadlineExceeded",
                "TenantConcurrentInvocationLimitExceeded",
                "ReservedFunctionConcurrentInvocationLimitExceeded",
                "ConcurrentInvocationLimitExceeded"
            ]
            .contains(&reason.as_str()),
            "{reason}"
        );
    }
    // Every tenant got answers, each from environments of its own.
    let records = report["records"].as_array().unwrap();
    for t in 0..6 {
        let tenant = format!("burst-{t}");
        assert!(
            records
                .iter()
                .any(|r| r["tenant"] == tenant.as_str() && r["outcome"] == "answered"),
            "{tenant} was never answered: {report}"
        );
    }
    // The daemon's view: never more than 2 boots at once, nothing left
    // booting or queued, every boot measured and none failed.
    let m = section("METRICS_BEGIN", "METRICS_END");
    assert_eq!(metric(&m, "silo_cold_start_max_booting "), Some(2.0), "{m}");
    let peak = metric(&m, "silo_cold_starts_peak ").expect("peak gauge");
    assert!((1.0..=2.0).contains(&peak), "{m}");
    assert_eq!(
        metric(&m, "silo_cold_starts_in_progress "),
        Some(0.0),
        "{m}"
    );
    assert_eq!(metric(&m, "silo_cold_start_queue_depth "), Some(0.0), "{m}");
    assert_eq!(
        metric(&m, "silo_environment_boot_failures_total "),
        Some(0.0),
        "{m}"
    );
    assert!(
        metric(&m, "silo_environment_boot_seconds_count ").unwrap()
            >= report["environments_created"].as_f64().unwrap(),
        "{m}"
    );
    // Refusals are logged with the tenant and the reason.
    let logs = section("DAEMON_LOG_BEGIN", "DAEMON_LOG_END");
    for l in logs.lines().filter(|l| l.contains("cold start refused")) {
        assert!(l.contains("tenant_id") && l.contains("reason"), "{l}");
    }
}

/// Issue 19, finding 4: with the DEFAULT limits (only the test rig's CPU
/// share setting), a burst of 6 new tenants x 6 invokes, 12 in flight, is
/// answered in full: the function has no reserved concurrency, so it draws
/// on the host-wide pool, and cold starts beyond the boot slots wait in the
/// admission queue instead of being refused.
#[test]
fn a_burst_against_default_limits_is_answered_in_full() {
    let config = format!(
        "metrics_listen = \"127.0.0.1:9415\"\n{}",
        common::daemon::config("")
    );
    let serve = script_start_daemon(9414, Some("info"));
    let create = script_create_function("counter", "--bootstrap counter", 30, "create.json");
    let script = format!(
        r#"set -u
{serve}{create}silo burst --name counter --shape 6x6@12 > burst.json; echo "BURST_EXIT $?"
echo BURST_JSON_BEGIN; cat burst.json; echo BURST_JSON_END
wget -qO- http://127.0.0.1:9415/metrics > metrics.txt
echo METRICS_BEGIN; grep -E '^silo_(cold_start|throttl|environments|host)' metrics.txt; echo METRICS_END
kill -TERM $daemon; wait $daemon
echo DAEMON_LOG_BEGIN; grep -E 'refused|admission|WARN|ERROR' daemon.log | tail -n 40; echo DAEMON_LOG_END
"#
    );
    let run = run_with_kvm(script_files(config), &script, Duration::from_secs(900));
    let out = &run.output;
    let report: Value =
        serde_json::from_str(common::section(out, "BURST_JSON_BEGIN", "BURST_JSON_END").trim())
            .unwrap_or_else(|e| panic!("burst report: {e}\n{out}"));
    let violations = report["violations"].as_array().unwrap();
    assert!(violations.is_empty(), "{violations:#?}\n{out}");
    assert_eq!(report["invokes"], 36);
    assert_eq!(
        (
            report["answered"].as_u64(),
            report["refused"].as_u64(),
            report["failed"].as_u64()
        ),
        (Some(36), Some(0), Some(0)),
        "refusals by reason: {}\n{out}",
        report["refusals_by_reason"]
    );
}
