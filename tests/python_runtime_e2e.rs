//! The launch post's Python function on real microVMs, through boto3:
//! `tests/python/boto3_python_runtime.py` against `silo serve` (in the KVM
//! test host on these machines) with the `python3.11` runtime (Debian's
//! CPython and awslambdaric from PyPI, built here from the registries).

mod common;

use common::daemon::{config, ensure_boto3, TestDaemon};

/// Runs the boto3 script against a daemon delivering the runtime as
/// `delivery`; `scenario` "all" or "launch-post" (its first part only).
fn run_launch_post(delivery: &str, scenario: &str) {
    ensure_boto3();
    let d = TestDaemon::with_python(&config(""), delivery);
    let run = d.run_python_client("boto3_python_runtime.py", &[("SCENARIO", scenario)]);
    let (stdout, stderr, logs) = (&run.stdout, &run.stderr, &run.daemon_log);
    eprintln!("{stdout}");
    assert!(
        run.success && stdout.contains("PYTHON_RUNTIME_OK"),
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
