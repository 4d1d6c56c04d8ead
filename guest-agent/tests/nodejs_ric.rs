//! The agent in host mode running the official Node.js runtime interface
//! client (`aws-lambda-ric` 3.x from npm, on Node.js 22 from npm, in the
//! `nodejs22.x` runtime tree built from registry packages) as a managed
//! runtime, `node bin/index.mjs file.function` from the task root: the
//! client's JavaScript as published, its native HTTP addon replaced by
//! `images/runtime/nodejs22.x-rapid-client.cjs`. Covers Lambda's Node.js
//! contract: async and callback handlers, CommonJS `.js` and ES module
//! `.mjs` files, `context.tenantId` and the rest of the context, errors as
//! Lambda reports them (`errorType`, `errorMessage`, `trace`,
//! `Runtime.ImportModuleError`, `Runtime.HandlerNotFound`), console output
//! tagged with the tenant, the runtime's init time reported once.

mod common;

use common::{now_unix_ms, ok_json, start_runtime, Fixture};
use silo_proto::Outcome;

/// CommonJS handlers (`index.js`).
const INDEX_JS: &str = r#"
let calls = 0;

exports.whoami = async (event, context) => {
  calls += 1;
  console.log(`hello from ${context.tenantId}`);
  return {
    tenant_id: context.tenantId,
    request_id: context.awsRequestId,
    function_name: context.functionName,
    memory: context.memoryLimitInMB,
    arn: context.invokedFunctionArn,
    remaining_ms: context.getRemainingTimeInMillis(),
    calls,
    event,
    task_root: process.env.LAMBDA_TASK_ROOT,
    handler: process.env._HANDLER,
    execution_env: process.env.AWS_EXECUTION_ENV,
    cwd: process.cwd(),
    node: process.version,
  };
};

exports.callback = (event, context, callback) => {
  setTimeout(() => callback(null, { style: "callback", tenant_id: context.tenantId }), 10);
};

exports.fail = async (event, context) => {
  throw new TypeError(`tenant ${context.tenantId} asked to fail`);
};

exports.notAFunction = 42;
"#;

/// An ES module handler (`esm.mjs`).
const ESM_MJS: &str = r#"
import { platform } from "node:os";

export const handler = async (event, context) => ({
  module: "esm",
  platform: platform(),
  tenant_id: context.tenantId,
});
"#;

/// A module that fails to load (`broken.js`).
const BROKEN_JS: &str = "require('no-such-package');\nexports.handler = async () => 1;\n";

/// Starts the agent with the nodejs22.x runtime and `handler`.
fn start(name: &str, handler: &str) -> Fixture {
    start_runtime(
        "nodejs22.x",
        "noderic",
        name,
        "noderic",
        handler,
        &[
            ("index.js", INDEX_JS),
            ("esm.mjs", ESM_MJS),
            ("broken.js", BROKEN_JS),
        ],
    )
}

/// One invocation (its deadline 60 s from now): its outcome and the log
/// lines (tenant, line) that came with it.
fn invoke(
    f: &mut Fixture,
    tenant: &str,
    payload: &str,
) -> (Outcome, Vec<(Option<String>, String)>) {
    f.invoke(tenant, payload, now_unix_ms() + 60_000)
}

#[test]
fn aws_lambda_ric_serves_tenants_through_the_agent() {
    let mut f = start("serve", "index.whoami");
    let (o, logs) = invoke(&mut f, "tenant-A", r#"{"n":1}"#);
    let v = ok_json(&o);
    assert_eq!(v["tenant_id"], "tenant-A", "context.tenantId: {v}");
    assert_eq!(v["request_id"], "req-1");
    assert_eq!(v["event"]["n"], 1);
    assert_eq!(v["calls"], 1);
    assert_eq!(v["handler"], "index.whoami");
    assert_eq!(v["execution_env"], "AWS_Lambda_nodejs22.x");
    assert_eq!(v["function_name"], "noderic");
    assert_eq!(v["memory"], "128");
    assert_eq!(
        v["arn"],
        "arn:aws:lambda:us-east-1:000000000000:function:noderic"
    );
    let left = v["remaining_ms"].as_i64().unwrap();
    assert!(
        (1..=60_000).contains(&left),
        "getRemainingTimeInMillis: {left}"
    );
    assert!(v["node"].as_str().unwrap().starts_with("v22."), "{v}");
    assert_eq!(v["task_root"], v["cwd"], "runs from the task root");
    assert!(
        logs.iter().any(|(t, l)| l.contains("hello from tenant-A")
            && l.contains("req-1")
            && l.contains("INFO")
            && t.as_deref() == Some("tenant-A")),
        "console.log in Lambda's format, tagged with the tenant: {logs:?}"
    );
    assert!(
        logs.iter()
            .any(|(_, l)| l.starts_with("[silo] runtime init: nodejs22.x ready in ")),
        "the runtime's init time is reported with its first invoke: {logs:?}"
    );
    let (o, logs) = invoke(&mut f, "tenant-A", "{}");
    let v = ok_json(&o);
    assert_eq!(v["calls"], 2, "the runtime stays warm");
    assert_eq!(v["request_id"], "req-2");
    assert!(
        !logs.iter().any(|(_, l)| l.contains("runtime init")),
        "init is reported once: {logs:?}"
    );
}

#[test]
fn callback_and_es_module_handlers_answer() {
    let mut f = start("callback", "index.callback");
    let v = ok_json(&invoke(&mut f, "tenant-C", "{}").0);
    assert_eq!(v["style"], "callback");
    assert_eq!(v["tenant_id"], "tenant-C");

    let mut f = start("esm", "esm.handler");
    let v = ok_json(&invoke(&mut f, "tenant-E", "{}").0);
    assert_eq!(v["module"], "esm");
    assert_eq!(v["platform"], "linux");
    assert_eq!(v["tenant_id"], "tenant-E");
}

#[test]
fn aws_lambda_ric_errors_reach_the_host_as_lambda_reports_them() {
    let mut f = start("fail", "index.fail");
    let (o, _) = invoke(&mut f, "tenant-B", "{}");
    let Outcome::Err(e) = o else {
        panic!("expected an error: {o:?}")
    };
    assert_eq!(e.error_type, "TypeError");
    assert_eq!(e.error_message, "tenant tenant-B asked to fail");
    assert!(
        e.stack_trace.iter().any(|l| l.contains("index.js")),
        "the trace names the handler's file: {:?}",
        e.stack_trace
    );
    // A function error leaves the runtime up.
    let (o, _) = invoke(&mut f, "tenant-B", "{}");
    assert!(
        matches!(&o, Outcome::Err(e) if e.error_type == "TypeError"),
        "{o:?}"
    );

    let mut f = start("nohandler", "index.missing");
    let (o, _) = invoke(&mut f, "t", "{}");
    assert!(
        matches!(&o, Outcome::Err(e) if e.error_type == "Runtime.HandlerNotFound"
            && e.error_message.contains("index.missing")),
        "{o:?}"
    );
    let mut f = start("notfn", "index.notAFunction");
    let (o, _) = invoke(&mut f, "t", "{}");
    assert!(
        matches!(&o, Outcome::Err(e) if e.error_type == "Runtime.HandlerNotFound"),
        "{o:?}"
    );
    let mut f = start("nomodule", "nosuchfile.handler");
    let (o, _) = invoke(&mut f, "t", "{}");
    assert!(
        matches!(&o, Outcome::Err(e) if e.error_type == "Runtime.ImportModuleError"
            && e.error_message.contains("nosuchfile")),
        "{o:?}"
    );
    // Every invoke tries the init again, as Lambda does.
    let (o, _) = invoke(&mut f, "t", "{}");
    assert!(
        matches!(&o, Outcome::Err(e) if e.error_type == "Runtime.ImportModuleError"),
        "{o:?}"
    );
    let mut f = start("broken", "broken.handler");
    let (o, _) = invoke(&mut f, "t", "{}");
    assert!(
        matches!(&o, Outcome::Err(e) if e.error_type == "Runtime.ImportModuleError"
            && e.error_message.contains("no-such-package")),
        "{o:?}"
    );
}
