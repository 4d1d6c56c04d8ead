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

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use silo_proto::{read_message, write_message, AgentConfig, Message, Outcome};

struct Fixture {
    dir: PathBuf,
    agent: Child,
    conn: UnixStream,
    n: u32,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.agent.kill();
        let _ = self.agent.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

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
    let runtime = silo_images::runtime::runtime_image("nodejs22.x").expect("nodejs22.x runtime");
    let dir = std::env::temp_dir().join(format!("silo-noderic-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("task")).unwrap();
    std::fs::write(dir.join("task/index.js"), INDEX_JS).unwrap();
    std::fs::write(dir.join("task/esm.mjs"), ESM_MJS).unwrap();
    std::fs::write(dir.join("task/broken.js"), BROKEN_JS).unwrap();
    let config = AgentConfig {
        function_name: "noderic".into(),
        handler: handler.into(),
        timeout_s: 60,
        task_root: dir.join("task").display().to_string(),
        ..AgentConfig::default()
    };
    std::fs::write(dir.join("agent.json"), serde_json::to_vec(&config).unwrap()).unwrap();
    let sock = dir.join("agent.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let agent = Command::new(env!("CARGO_BIN_EXE_silo-guest-agent"))
        .arg("--host-mode")
        .arg("--config")
        .arg(dir.join("agent.json"))
        .arg("--connect-unix")
        .arg(&sock)
        .arg("--api-addr")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--runtime-root")
        .arg(runtime.tree())
        .spawn()
        .unwrap();
    let (mut conn, _) = listener.accept().unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let hello = read_message(&mut conn).unwrap();
    assert!(matches!(hello, Message::Hello { .. }), "{hello:?}");
    Fixture {
        dir,
        agent,
        conn,
        n: 0,
    }
}

/// One invocation: its outcome and the log lines (tenant, line) that came
/// with it.
fn invoke(
    f: &mut Fixture,
    tenant: &str,
    payload: &str,
) -> (Outcome, Vec<(Option<String>, String)>) {
    f.n += 1;
    let id = format!("req-{}", f.n);
    let deadline = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 60_000;
    write_message(
        &mut f.conn,
        &Message::Invoke {
            request_id: id.clone(),
            tenant_id: Some(tenant.into()),
            deadline_unix_ms: deadline,
            function_arn: "arn:aws:lambda:us-east-1:000000000000:function:noderic".into(),
            trace_id: "Root=1-00000000-000000000000000000000000".into(),
            payload: payload.as_bytes().to_vec(),
        },
    )
    .unwrap();
    let mut logs = Vec::new();
    loop {
        match read_message(&mut f.conn).unwrap() {
            Message::Result {
                request_id,
                outcome,
            } => {
                assert_eq!(request_id, id);
                return (outcome, logs);
            }
            Message::Log {
                line, tenant_id, ..
            } => logs.push((tenant_id, line)),
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn ok_json(o: &Outcome) -> serde_json::Value {
    match o {
        Outcome::Ok(b) => serde_json::from_slice(b).unwrap(),
        Outcome::Err(e) => panic!("function failed: {e:?}"),
    }
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
