//! A Node.js function's `console.log` read back through boto3's `logs`
//! client in Lambda's Text and JSON formats (`tests/python/boto3_logs_nodejs.py`),
//! against `silo serve` with the `nodejs22.x` runtime (in the KVM test host
//! on these machines). One test-host boot; `tests/logs_e2e.rs` covers the
//! rest with Python functions.

mod common;

use common::daemon::{config, ensure_boto3, TestDaemon};

#[test]
fn boto3_reads_a_nodejs_functions_console_log_in_both_formats() {
    ensure_boto3();
    let d = TestDaemon::with_runtime("nodejs22.x", &config(""), "pmem");
    let run = d.run_python_client("boto3_logs_nodejs.py", &[]);
    let (stdout, stderr, logs) = (&run.stdout, &run.stderr, &run.daemon_log);
    eprintln!("{stdout}");
    assert!(
        run.success && stdout.contains("NODEJS_LOGS_OK"),
        "boto3_logs_nodejs.py failed:\n{stdout}\n{stderr}\ndaemon:\n{logs}"
    );
}
