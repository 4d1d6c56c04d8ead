//! A real AWS SDK against the daemon: `tests/python/boto3_tenant_isolation.py`
//! (boto3 from PyPI; `.ci/run` installs it, else this test does) with `endpoint_url` pointing at
//! `silo serve`, which runs microVMs (in the KVM test host on these machines).

mod common;

use common::daemon::{config, TestDaemon, ADMIN, TENANT_A};

#[test]
fn boto3_creates_and_invokes_a_per_tenant_function() {
    // Installed by .ci/run; on a fresh machine this test installs it, so
    // the README's test command needs no other set-up.
    let has_boto3 = || {
        std::process::Command::new("python3")
            .args(["-c", "import boto3"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !has_boto3() {
        eprintln!("installing boto3 from PyPI");
        let _ = std::process::Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "boto3",
            ])
            .status();
    }
    assert!(
        has_boto3(),
        "boto3 is not installed and `python3 -m pip install boto3` failed"
    );
    let counter = silo_images::artifacts::counter_function().unwrap();
    let mut d = TestDaemon::with_vms(&config(""));
    let out = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/boto3_tenant_isolation.py"
        ))
        .env("SILO_ENDPOINT", &d.endpoint)
        .env("ADMIN_KEY", ADMIN.0)
        .env("ADMIN_SECRET", ADMIN.1)
        .env("TENANT_A_KEY", TENANT_A.0)
        .env("TENANT_A_SECRET", TENANT_A.1)
        .env("COUNTER_BINARY", &counter)
        .env_remove("AWS_PROFILE")
        .output()
        .unwrap();
    let logs = d.stop();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("BOTO3_OK"),
        "boto3 test failed:\n{stdout}\n{stderr}\ndaemon:\n{logs}"
    );
    assert!(stdout.contains("counts [1, 2, 1]"), "{stdout}");
}
