//! A burst of new tenants against `silo serve` with real microVMs (in the
//! KVM test host on these machines): 6 new tenants x 6 invokes, 12 in
//! flight, over real HTTP. Every invoke is answered by an environment of its
//! own tenant or refused at once with a 429 and a reason; never a 5xx, never
//! an environment serving two tenants; boots never exceed the admission
//! limit, and the queue drains.

mod common;

use common::daemon::{config, TestDaemon};
use serde_json::json;
use silo_client::burst::{self, BurstShape, Outcome};

fn metric(text: &str, line_prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn a_burst_of_new_tenants_is_answered_or_refused_at_once() {
    let mut d = TestDaemon::with_vms(&config(
        "[limits]\nconcurrency = 12\nper_tenant = 6\nmax_booting = 2\n",
    ));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scenario(&d)));
    let logs = d.stop();
    if let Err(e) = result {
        eprintln!("daemon and test host output:\n{logs}");
        std::panic::resume_unwind(e);
    }
    for l in logs.lines().filter(|l| l.contains("cold start refused")) {
        assert!(l.contains("tenant_id") && l.contains("reason"), "{l}");
    }
}

fn scenario(d: &TestDaemon) {
    let admin = d.admin();
    let counter = std::fs::read(silo_images::artifacts::counter_function().unwrap()).unwrap();
    let zip = silo_initramfs::package::make_zip(&[("bootstrap", 0o755, &counter)]);
    let r = admin
        .create_function("counter", &zip, true, json!({"Timeout": 30}))
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());

    let shape: BurstShape = "6x6@12".parse().unwrap();
    let report = burst::run(&admin, "counter", "burst", shape);
    let summary = report.to_json();
    eprintln!(
        "burst {shape}: answered {} refused {} failed {} in {:.1} s; environments {}; first invoke {}",
        summary["answered"],
        summary["refused"],
        summary["failed"],
        report.wall.as_secs_f64(),
        summary["environments_created"],
        summary["first_invoke_ms"]
    );
    let violations = report.violations();
    assert!(violations.is_empty(), "{violations:#?}");
    assert_eq!(report.records.len(), 36);
    // Refusals (if any) carry a reason this daemon gives for admission.
    for r in &report.records {
        if let Outcome::Refused { reason } = &r.outcome {
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
    }
    // Every tenant got at least one answer.
    for t in 0..shape.tenants {
        let tenant = format!("burst-{t}");
        assert!(
            report
                .records
                .iter()
                .any(|r| r.tenant == tenant && matches!(r.outcome, Outcome::Answered { .. })),
            "{tenant} was never answered"
        );
    }

    // The daemon's view: never more than 2 boots at once, nothing left
    // booting or queued, every boot measured.
    let m = admin.request("GET", "/metrics", &[], b"").unwrap().text();
    assert_eq!(metric(&m, "silo_cold_start_max_booting "), Some(2.0), "{m}");
    assert!(
        metric(&m, "silo_cold_starts_peak ").unwrap_or(f64::MAX) <= 2.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "silo_cold_starts_in_progress "),
        Some(0.0),
        "{m}"
    );
    assert_eq!(metric(&m, "silo_cold_start_queue_depth "), Some(0.0), "{m}");
    assert_eq!(
        metric(&m, "silo_environment_boot_seconds_count "),
        Some(summary["environments_created"].as_f64().unwrap()),
        "{m}"
    );
    assert_eq!(
        metric(&m, "silo_environment_boot_failures_total "),
        Some(0.0),
        "{m}"
    );
}
