//! The agent in host mode against a function built on the official
//! `lambda_runtime` crate (functions/counter): a runtime client we did not
//! write. The test plays the host over a real Unix socket with silo-proto.

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use silo_proto::{read_message, write_message, AgentConfig, Message, Outcome};

struct Fixture {
    dir: PathBuf,
    agent: Child,
    conn: UnixStream,
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

fn start(name: &str, timeout_s: u32) -> (Fixture, Message) {
    let function = silo_images::artifacts::counter_function().expect("build the counter function");
    let dir = std::env::temp_dir().join(format!("silo-agent-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("task")).unwrap();
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    std::fs::copy(&function, dir.join("task/bootstrap")).unwrap();
    let mut config = AgentConfig {
        function_name: "counter".into(),
        timeout_s,
        task_root: dir.join("task").display().to_string(),
        ..AgentConfig::default()
    };
    config
        .environment
        .insert("TMPDIR".into(), dir.join("tmp").display().to_string());
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
        .spawn()
        .unwrap();
    let (mut conn, _) = listener.accept().unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let hello = read_message(&mut conn).unwrap();
    (Fixture { dir, agent, conn }, hello)
}

fn invoke(f: &mut Fixture, tenant: &str, payload: &str, budget_ms: u64) -> (Outcome, Vec<String>) {
    let deadline = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + budget_ms;
    let id = format!("req-{}", deadline);
    write_message(
        &mut f.conn,
        &Message::Invoke {
            request_id: id.clone(),
            tenant_id: Some(tenant.into()),
            deadline_unix_ms: deadline,
            function_arn: "arn:aws:lambda:us-east-1:000000000000:function:counter".into(),
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
            } => {
                if !line.starts_with("[silo]") {
                    assert_eq!(
                        tenant_id.as_deref(),
                        Some(tenant),
                        "log line tagged with the tenant"
                    );
                }
                logs.push(line);
            }
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

fn err_type(o: &Outcome) -> String {
    match o {
        Outcome::Err(e) => e.error_type.clone(),
        Outcome::Ok(b) => panic!("expected an error, got {}", String::from_utf8_lossy(b)),
    }
}

#[test]
fn hello_then_invocations_see_tenant_and_keep_state() {
    let (mut f, hello) = start("state", 5);
    assert!(matches!(hello, Message::Hello { .. }));
    let (o, logs) = invoke(&mut f, "tenant-A", "{}", 5000);
    let v = ok_json(&o);
    assert_eq!(
        v["tenant_id"], "tenant-A",
        "the function sees its tenant id"
    );
    assert_eq!(v["count"], 1);
    let (o2, logs2) = invoke(&mut f, "tenant-A", "{}", 5000);
    let all: Vec<&String> = logs.iter().chain(&logs2).collect();
    assert!(
        all.iter().any(|l| l.contains("count 1")),
        "function stdout forwarded: {all:?}"
    );
    let v = ok_json(&o2);
    assert_eq!(
        (v["count"].as_u64(), v["in_memory_count"].as_u64()),
        (Some(2), Some(2))
    );
    // One environment, one tenant: another tenant is refused.
    assert_eq!(
        err_type(&invoke(&mut f, "tenant-B", "{}", 5000).0),
        "Silo.TenantMismatch"
    );
}

#[test]
fn function_error_crash_and_timeout_are_reported_and_recovered() {
    let (mut f, _) = start("faults", 1);
    let (o, _) = invoke(&mut f, "t", r#"{"action":"fail"}"#, 5000);
    assert!(
        matches!(&o, Outcome::Err(e) if e.error_message.contains("asked to fail")),
        "{o:?}"
    );
    let (o, _) = invoke(&mut f, "t", r#"{"action":"crash"}"#, 5000);
    assert_eq!(err_type(&o), "Runtime.ExitError");
    assert!(
        matches!(&o, Outcome::Err(e) if e.error_message.contains("exit status 7")),
        "{o:?}"
    );
    // The runtime restarts; /tmp survived, memory did not.
    let v = ok_json(&invoke(&mut f, "t", "{}", 5000).0);
    assert_eq!(
        (v["count"].as_u64(), v["in_memory_count"].as_u64()),
        (Some(1), Some(1))
    );
    let (o, _) = invoke(&mut f, "t", r#"{"action":"sleep","ms":60000}"#, 1000);
    assert_eq!(err_type(&o), "Sandbox.Timedout");
    let v = ok_json(&invoke(&mut f, "t", "{}", 5000).0);
    assert_eq!(v["count"], 2);
}

#[test]
fn flooding_stdout_is_bounded_and_results_still_arrive() {
    let (mut f, _) = start("flood", 30);
    let (o, logs) = invoke(&mut f, "t", r#"{"action":"flood","lines":200000}"#, 30000);
    let v = ok_json(&o);
    assert_eq!(v["count"], 1);
    assert!(logs.len() < 200_000, "lines were dropped, not all buffered");
    let v = ok_json(&invoke(&mut f, "t", "{}", 5000).0);
    assert_eq!(v["count"], 2);
}
