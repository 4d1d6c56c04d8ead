//! The launch post's counter function in Node.js on real microVMs, through
//! boto3: `tests/python/boto3_nodejs_runtime.py` against `silo serve` (in
//! the KVM test host on these machines) with the `nodejs22.x` runtime
//! (Node.js 22 and the official `aws-lambda-ric` from npm, built here from
//! the registries). Each test boots at most two VMs, one after another.

mod common;

use common::daemon::{config, ensure_boto3, TestDaemon};

/// Runs scenario `scenario` of the boto3 script against a daemon delivering
/// the runtime as `delivery`, its functions with `memory_mib`; returns the
/// script's output.
fn run(delivery: &str, scenario: &str, memory_mib: u32) -> String {
    ensure_boto3();
    let d = TestDaemon::with_runtime("nodejs22.x", &config(""), delivery);
    let run = d.run_python_client(
        "boto3_nodejs_runtime.py",
        &[
            ("SCENARIO", scenario),
            ("FUNCTION_MEMORY", &memory_mib.to_string()),
            ("DELIVERY", delivery),
        ],
    );
    let (stdout, stderr, logs) = (&run.stdout, &run.stderr, &run.daemon_log);
    eprintln!("{stdout}");
    assert!(
        run.success && stdout.contains("NODEJS_RUNTIME_OK"),
        "the Node.js runtime test ({scenario}) failed:\n{stdout}\n{stderr}\ndaemon:\n{logs}"
    );
    run.stdout
}

/// The counter, tenant-A, tenant-A, tenant-B: counts 1, 2, 1, the tenant in
/// its log lines; the runtime shared by the VMs as one read-only image.
#[test]
fn boto3_runs_the_nodejs_counter_per_tenant() {
    let out = run("pmem", "counter", 256);
    assert!(out.contains("counts [1, 2, 1]"), "{out}");
}

/// Init errors as Lambda reports them: Runtime.ImportModuleError and
/// Runtime.HandlerNotFound.
#[test]
fn nodejs_init_errors_are_reported_as_lambda_does() {
    run("pmem", "errors", 256);
}

/// An ES module handler (`index.mjs`), with the runtime copied into the
/// VM's initramfs (108 MiB unpacked in guest RAM): refused at 256 MiB with
/// the memory that is enough, then run with that memory.
#[test]
fn an_es_module_handler_runs_with_the_runtime_in_the_initramfs() {
    run("initramfs", "esm", 512);
}

/// Errors named `错误` (by `e.name` and by a class so named), `Érreur` and
/// `bad\nname`: each an `Unhandled` function error of that type from the
/// handler, not the function's timeout (the stand-in client sends the name
/// in a header as UTF-8 bytes, or without it when it cannot, and never
/// leaves a failed POST unreported).
#[test]
fn errors_named_outside_latin1_are_reported_not_timed_out() {
    run("pmem", "error_names", 256);
}
