//! The test harness itself: a daemon whose KVM test host stalls under a
//! running scenario is made again in a fresh test host and the scenario
//! runs again, so QEMU 7.2's TCG stall (see `images/README.md`) never fails
//! a daemon test, and a scenario that failed for any other reason still
//! fails it.
//!
//! The stall is the one the harness recognises by silence: the daemon's
//! test host prints a console heartbeat, and four missed heartbeats end the
//! run as a stall (the stall that leaves the CPU spinning looks exactly
//! so). The first attempt here stops that heartbeat (`kill -STOP`) and
//! waits for the harness to kill the test host under it, as a real stall
//! does mid-request.

mod common;

use std::time::{Duration, Instant};

use common::daemon::{config, create_counter, scratch, TestDaemon, TENANT_A};
use silo_client::InvokeOptions;
use silo_images::testhost::hardware_kvm_usable;

/// A CGI script for the daemon's test host that stops its console heartbeat.
const STOP_HEARTBEAT: &str = "#!/bin/sh\nkill -STOP $(cat /tmp/heartbeat.pid)\n\
    printf 'Content-Type: text/plain\\r\\n\\r\\nstopped\\n'\n";

#[test]
fn a_stall_under_a_scenario_runs_daemon_and_scenario_again() {
    if hardware_kvm_usable() {
        eprintln!("hardware KVM: the daemon runs here, with no test host to stall; skipped");
        return;
    }
    let cgi = scratch("stall-cgi").join("stop-heartbeat");
    std::fs::write(&cgi, STOP_HEARTBEAT).unwrap();
    let d = TestDaemon::with_vms_files(&config(""), vec![(cgi, "/work/cgi/stop-heartbeat".into())]);
    let mut attempts = 0;
    let mut endpoints = Vec::new();
    d.run_scenario(|d| {
        attempts += 1;
        endpoints.push(d.endpoint.clone());
        let admin = d.admin();
        create_counter(&admin);
        if attempts == 1 {
            assert_eq!(d.cgi("stop-heartbeat", "").as_deref(), Some("stopped\n"));
            // Four missed 10 s heartbeats: the harness kills QEMU, and this
            // client loses its daemon (as a real stall's client does).
            let until = Instant::now() + Duration::from_secs(180);
            while admin.request("GET", "/metrics", &[], b"").is_ok() {
                assert!(
                    Instant::now() < until,
                    "the harness never ended the silent test host"
                );
                std::thread::sleep(Duration::from_secs(1));
            }
            panic!("the daemon went away under the scenario (expected on the first attempt)");
        }
        // The second attempt: a fresh daemon (the function created again,
        // its counter from 1) serves a real microVM.
        let r = d
            .client(TENANT_A)
            .invoke(
                "counter",
                b"{}",
                &InvokeOptions {
                    tenant: Some("tenant-A".into()),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["count"], 1, "{}", r.text());
    });
    assert_eq!(attempts, 2, "the scenario ran once per test host");
    assert_ne!(
        endpoints[0], endpoints[1],
        "the second attempt had a new test host"
    );
}
