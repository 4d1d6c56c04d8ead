//! The agent in host mode running the official Python runtime interface
//! client (`awslambdaric` 4.x from PyPI, in the `python3.11` runtime tree
//! built from registry packages) as a managed runtime, `python3.11 -m
//! awslambdaric module.function` from the task root: a client we did not
//! write. awslambdaric's native client dies with SIGSEGV when the `next`
//! response has no `Content-Type`; these tests fail if the agent stops
//! sending one. Also: the tenant id in `context.tenant_id`, errors as
//! Lambda reports them (`errorType`, `errorMessage`, `stackTrace`,
//! `Runtime.ImportModuleError`, `Runtime.HandlerNotFound`), log lines tagged
//! with the tenant, the runtime's init time reported once.

mod common;

use common::{ok_json, start_runtime, Fixture};
use silo_proto::Outcome;

const HANDLERS: &str = r#"
import json
import logging
import os

logger = logging.getLogger()
logger.setLevel(logging.INFO)
calls = 0

def whoami(event, context):
    global calls
    calls += 1
    print(f"hello from {context.tenant_id}")
    logger.info("tenant %s call %d", context.tenant_id, calls)
    return {
        "tenant_id": context.tenant_id,
        "request_id": context.aws_request_id,
        "calls": calls,
        "event": event,
        "task_root": os.environ["LAMBDA_TASK_ROOT"],
        "handler": os.environ["_HANDLER"],
        "execution_env": os.environ["AWS_EXECUTION_ENV"],
        "function_name": os.environ["AWS_LAMBDA_FUNCTION_NAME"],
        "memory": os.environ["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"],
        "cwd": os.getcwd(),
    }

def fail(event, context):
    raise ValueError("tenant " + context.tenant_id + " asked to fail")
"#;

/// Starts the agent with the python3.11 runtime and `handler`.
fn start(name: &str, handler: &str) -> Fixture {
    start_runtime(
        "python3.11",
        "ric",
        name,
        "ric",
        handler,
        &[("handlers.py", HANDLERS)],
    )
}

/// One invocation (its deadline far away): its outcome and the log lines
/// that came with it.
fn invoke(
    f: &mut Fixture,
    tenant: &str,
    payload: &str,
) -> (Outcome, Vec<(Option<String>, String)>) {
    f.invoke(tenant, payload, u64::MAX / 2)
}

#[test]
fn awslambdaric_serves_tenants_through_the_agent() {
    let mut f = start("serve", "handlers.whoami");
    let (o, logs) = invoke(&mut f, "tenant-A", r#"{"n":1}"#);
    let v = ok_json(&o);
    assert_eq!(v["tenant_id"], "tenant-A", "context.tenant_id: {v}");
    assert_eq!(v["request_id"], "req-1");
    assert_eq!(v["event"]["n"], 1);
    assert_eq!(v["calls"], 1);
    assert_eq!(v["handler"], "handlers.whoami");
    assert_eq!(v["execution_env"], "AWS_Lambda_python3.11");
    assert_eq!(v["function_name"], "ric");
    assert_eq!(v["memory"], "128");
    assert_eq!(v["task_root"], v["cwd"], "runs from the task root");
    assert!(
        logs.iter()
            .any(|(t, l)| l.contains("hello from tenant-A") && t.as_deref() == Some("tenant-A")),
        "print() output tagged with the tenant: {logs:?}"
    );
    assert!(
        logs.iter()
            .any(|(_, l)| l.contains("tenant tenant-A call 1") && l.contains("req-1")),
        "logging output in Lambda's format with the request id: {logs:?}"
    );
    assert!(
        logs.iter()
            .any(|(_, l)| l.starts_with("[silo] runtime init: python3.11 ready in ")),
        "the runtime's init time is reported with its first invoke: {logs:?}"
    );
    let (o, logs) = invoke(&mut f, "tenant-A", "{}");
    assert_eq!(ok_json(&o)["calls"], 2, "the runtime stays warm");
    assert!(
        !logs.iter().any(|(_, l)| l.contains("runtime init")),
        "init is reported once: {logs:?}"
    );
}

#[test]
fn awslambdaric_errors_reach_the_host_as_lambda_reports_them() {
    let mut f = start("fail", "handlers.fail");
    let (o, _) = invoke(&mut f, "tenant-B", "{}");
    let Outcome::Err(e) = o else {
        panic!("expected an error: {o:?}")
    };
    assert_eq!(e.error_type, "ValueError");
    assert_eq!(e.error_message, "tenant tenant-B asked to fail");
    assert!(
        e.stack_trace.iter().any(|l| l.contains("handlers.py")),
        "the stack trace names the handler's file: {:?}",
        e.stack_trace
    );
    // A function error leaves the runtime up.
    let (o, _) = invoke(&mut f, "tenant-B", "{}");
    assert!(
        matches!(&o, Outcome::Err(e) if e.error_type == "ValueError"),
        "{o:?}"
    );

    let mut f = start("nohandler", "handlers.missing");
    let (o, _) = invoke(&mut f, "t", "{}");
    assert!(
        matches!(&o, Outcome::Err(e) if e.error_type == "Runtime.HandlerNotFound"
            && e.error_message.contains("missing")),
        "{o:?}"
    );
    let mut f = start("nomodule", "nosuchmodule.handler");
    let (o, _) = invoke(&mut f, "t", "{}");
    assert!(
        matches!(&o, Outcome::Err(e) if e.error_type == "Runtime.ImportModuleError"
            && e.error_message.contains("nosuchmodule")),
        "{o:?}"
    );
    // Every invoke tries the init again, as Lambda does.
    let (o, _) = invoke(&mut f, "t", "{}");
    assert!(
        matches!(&o, Outcome::Err(e) if e.error_type == "Runtime.ImportModuleError"),
        "{o:?}"
    );
}
