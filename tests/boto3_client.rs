//! A real AWS SDK against the daemon: `tests/python/boto3_tenant_isolation.py`
//! (boto3 from PyPI; `.ci/run` installs it, else this test does) with `endpoint_url` pointing at
//! `silo serve`, which runs microVMs (in the KVM test host on these machines).

mod common;

use common::daemon::{config, ensure_boto3, TestDaemon, TENANT_A};

#[test]
fn boto3_creates_and_invokes_a_per_tenant_function() {
    ensure_boto3();
    let counter = silo_images::artifacts::counter_function().unwrap();
    let d = TestDaemon::with_vms(&config(""));
    let run = d.run_python_client(
        "boto3_tenant_isolation.py",
        &[
            ("TENANT_A_KEY", TENANT_A.0),
            ("TENANT_A_SECRET", TENANT_A.1),
            ("COUNTER_BINARY", counter.to_str().unwrap()),
        ],
    );
    let (stdout, stderr, logs) = (&run.stdout, &run.stderr, &run.daemon_log);
    assert!(
        run.success && stdout.contains("BOTO3_OK"),
        "boto3 test failed:\n{stdout}\n{stderr}\ndaemon:\n{logs}"
    );
    assert!(stdout.contains("counts [1, 2, 1]"), "{stdout}");
}
