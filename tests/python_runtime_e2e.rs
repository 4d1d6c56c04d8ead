//! The launch post's Python function on real microVMs, through boto3:
//! `tests/python/boto3_python_runtime.py` against `silo serve` (in the KVM
//! test host on these machines) with the `python3.11` runtime (Debian's
//! CPython and awslambdaric from PyPI, built here from the registries).

mod common;

use common::daemon::{config, TestDaemon, ADMIN};

fn ensure_boto3() {
    let has = || {
        std::process::Command::new("python3")
            .args(["-c", "import boto3, jmespath"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !has() {
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
        has(),
        "boto3 is not installed and `python3 -m pip install boto3` failed"
    );
}

/// Runs the boto3 script against a daemon delivering the runtime as
/// `delivery`; `scenario` "all" or "launch-post" (its first part only).
fn run_launch_post(delivery: &str, scenario: &str) {
    ensure_boto3();
    let mut d = TestDaemon::with_python(&config(""), delivery);
    let out = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/boto3_python_runtime.py"
        ))
        .env("SILO_ENDPOINT", &d.endpoint)
        .env("ADMIN_KEY", ADMIN.0)
        .env("ADMIN_SECRET", ADMIN.1)
        .env("SCENARIO", scenario)
        .env_remove("AWS_PROFILE")
        .output()
        .unwrap();
    let logs = d.stop();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    assert!(
        out.status.success() && stdout.contains("PYTHON_RUNTIME_OK"),
        "the Python runtime test failed:\n{stdout}\n{stderr}\ndaemon:\n{logs}"
    );
    assert!(stdout.contains("counts [1, 2, 1]"), "{stdout}");
}

/// The runtime as one read-only image shared by every VM (virtio-pmem,
/// mounted with DAX): the daemon's default.
#[test]
fn boto3_runs_the_launch_posts_python_function_per_tenant() {
    run_launch_post("pmem", "all");
}

/// The runtime copied into each VM's initramfs (the memory baseline).
#[test]
fn the_launch_post_runs_with_the_runtime_in_each_initramfs_too() {
    run_launch_post("initramfs", "launch-post");
}
